//! One database read per change of a watched export, whatever the number of its watchers.
//!
//! Every watcher of an export in this process wakes on the same change (see
//! [`crate::events`]), each knowing the change's number. The first to take the export's
//! [`SharedRead`] reads the row and leaves it there with that number; the others find a
//! record read after their change was published and take it instead of reading again. So N
//! dashboards following one export cost one primary-key read per batch, not N.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use crate::ids::{ExportId, WorkspaceId};

/// The last record read for one export and the number of the change it is at least as new as.
pub struct SharedRead<T> {
    last: tokio::sync::Mutex<Option<(u64, T)>>,
}

impl<T: Clone> SharedRead<T> {
    /// A record at least as new as change `change`: the one already read when it is, otherwise
    /// `read()`'s, which is kept for the watchers that wake on the same change. Callers that
    /// arrive while a read is running wait for it instead of reading too.
    pub async fn at_least<E, F>(&self, change: u64, read: impl FnOnce() -> F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut last = self.last.lock().await;
        if let Some((read_at, record)) = &*last
            && *read_at >= change
        {
            return Ok(record.clone());
        }
        let record = read().await?;
        *last = Some((change, record.clone()));
        Ok(record)
    }
}

/// An export: its workspace and its id.
type ExportKey = (WorkspaceId, ExportId);

/// The [`SharedRead`]s of the exports being watched in this process; each lives as long as a
/// watcher holds it.
pub struct SharedReads<T> {
    exports: Arc<Mutex<HashMap<ExportKey, Weak<SharedRead<T>>>>>,
}

impl<T> Clone for SharedReads<T> {
    fn clone(&self) -> Self {
        SharedReads {
            exports: self.exports.clone(),
        }
    }
}

impl<T> Default for SharedReads<T> {
    fn default() -> Self {
        SharedReads {
            exports: Arc::default(),
        }
    }
}

impl<T> SharedReads<T> {
    /// The shared read of export `id` of `workspace_id`, created for the first watcher.
    pub fn of(&self, workspace_id: WorkspaceId, id: ExportId) -> Arc<SharedRead<T>> {
        let mut exports = self.exports.lock().expect("shared reads lock");
        // Entries whose watchers are all gone go the next time anyone starts watching.
        exports.retain(|_, shared| shared.strong_count() > 0);
        if let Some(shared) = exports.get(&(workspace_id, id)).and_then(Weak::upgrade) {
            return shared;
        }
        let shared = Arc::new(SharedRead {
            last: tokio::sync::Mutex::new(None),
        });
        exports.insert((workspace_id, id), Arc::downgrade(&shared));
        shared
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use uuid::Uuid;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_of_one_change_share_one_read() {
        let reads: SharedReads<u64> = SharedReads::default();
        let (ws, id) = (Uuid::new_v4().into(), Uuid::new_v4().into());
        let count = Arc::new(AtomicUsize::new(0));
        let read = |value: u64| {
            let count = count.clone();
            move || async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok::<_, ()>(value)
            }
        };

        // Held throughout, as a watcher that stays would (the entry lives while one does).
        let shared = reads.of(ws, id);
        // Twenty watchers wake on change 1 at once: one read, everyone gets its record.
        let watchers: Vec<_> = (0..20)
            .map(|_| {
                let shared = reads.of(ws, id);
                let read = read(100);
                tokio::spawn(async move { shared.at_least(1, read).await })
            })
            .collect();
        for watcher in watchers {
            assert_eq!(watcher.await.unwrap(), Ok(100));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);

        // A later change reads again; an older or equal one does not.
        assert_eq!(shared.at_least(1, read(999)).await, Ok(100));
        assert_eq!(shared.at_least(2, read(200)).await, Ok(200));
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // A failed read is not kept: the next caller reads.
        assert_eq!(shared.at_least(3, || async { Err(()) }).await, Err(()));
        assert_eq!(shared.at_least(3, read(300)).await, Ok(300));

        // Another export, or the same id in another workspace, has a read of its own.
        assert!(!Arc::ptr_eq(&shared, &reads.of(ws, Uuid::new_v4().into())));
        assert!(!Arc::ptr_eq(&shared, &reads.of(Uuid::new_v4().into(), id)));
        assert!(Arc::ptr_eq(&shared, &reads.of(ws, id)));
    }

    #[test]
    fn an_export_nobody_watches_is_forgotten() {
        let reads: SharedReads<u64> = SharedReads::default();
        let first = reads.of(Uuid::nil().into(), Uuid::nil().into());
        let weak = Arc::downgrade(&first);
        drop(first);
        let _other = reads.of(Uuid::max().into(), Uuid::max().into());
        assert!(weak.upgrade().is_none());
        assert_eq!(reads.exports.lock().unwrap().len(), 1);
    }
}
