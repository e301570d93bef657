//! Change notifications: one `LISTEN` connection per process, fanned out in memory.
//!
//! Every insert or update of `exports` fires `NOTIFY export_changed, '<id>'` (a trigger, see
//! `migrations/`), and a new or released job fires `export_queued`. Watchers of an export hold a
//! [`tokio::sync::watch`] receiver of the number of its latest change (numbers grow across the
//! process): it coalesces bursts for a slow watcher and never buffers more than one pending
//! change, and lets watchers of the same change share one read of the row. The runner also
//! publishes its own changes directly, so a watcher on the same replica does not wait for the
//! round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel_async::RunQueryDsl;
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ids::ExportId;

const CHANGED: &str = "export_changed";
const QUEUED: &str = "export_queued";

/// The in-process hub. Cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per export, the number of its latest change.
    watchers: Mutex<HashMap<ExportId, watch::Sender<u64>>>,
    /// Numbers changes across all exports, so that they only grow, even for an export whose
    /// watchers all left and came back (its channel is then a new one).
    last_change: AtomicU64,
    queued: Notify,
}

/// A watcher's handle on one export's changes; unsubscribes when dropped.
pub struct Subscription {
    events: Events,
    id: ExportId,
    rx: watch::Receiver<u64>,
}

impl Subscription {
    /// Waits for the next change (or returns at once if one came since the last call); returns
    /// the change's number, which grows with every change of this export in this process and
    /// is the same for every subscriber.
    pub async fn changed(&mut self) -> u64 {
        // The sender lives in the map as long as any subscription does, so this cannot fail;
        // if it ever did, returning lets the caller re-read rather than hang.
        let _ = self.rx.changed().await;
        *self.rx.borrow_and_update()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watchers = self.events.inner.watchers.lock().expect("watchers lock");
        if let Some(tx) = watchers.get(&self.id)
            && tx.receiver_count() <= 1
        {
            watchers.remove(&self.id);
        }
    }
}

impl Events {
    /// Subscribes to changes of one export.
    pub fn subscribe(&self, id: ExportId) -> Subscription {
        let mut watchers = self.inner.watchers.lock().expect("watchers lock");
        let rx = watchers
            .entry(id)
            .or_insert_with(|| {
                watch::channel(AtomicU64::load(&self.inner.last_change, Ordering::SeqCst)).0
            })
            .subscribe();
        Subscription {
            events: self.clone(),
            id,
            rx,
        }
    }

    /// Tells this process's watchers of `id` that it changed.
    pub fn publish(&self, id: ExportId) {
        if let Some(tx) = self.inner.watchers.lock().expect("watchers lock").get(&id) {
            let change = self.next_change();
            tx.send_modify(|n| *n = (*n).max(change));
        }
    }

    fn publish_all(&self) {
        let change = self.next_change();
        for tx in self.inner.watchers.lock().expect("watchers lock").values() {
            tx.send_modify(|n| *n = (*n).max(change));
        }
    }

    fn next_change(&self) -> u64 {
        self.inner.last_change.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Resolves when a job may have become claimable.
    pub async fn job_queued(&self) {
        self.inner.queued.notified().await;
    }

    /// Wakes one idle worker.
    pub fn wake_worker(&self) {
        self.inner.queued.notify_one();
    }

    /// Connects and `LISTEN`s once; the caller then runs [`Events::run`] with the connection, so
    /// that the service starts serving only once notifications flow.
    pub async fn listen(database_url: &str) -> Result<Listener, crate::db::DbError> {
        let mut conn = crate::db::connect(database_url).await?;
        diesel::sql_query(format!("LISTEN {CHANGED}"))
            .execute(&mut conn)
            .await?;
        diesel::sql_query(format!("LISTEN {QUEUED}"))
            .execute(&mut conn)
            .await?;
        Ok(Listener { conn })
    }

    /// Forwards notifications until `stop`; reconnects after a lost connection, and then tells
    /// every watcher and a worker to re-read, since notifications may have been missed.
    pub async fn run(self, database_url: String, mut listener: Listener, stop: CancellationToken) {
        loop {
            if self.forward(&mut listener, &stop).await == Forwarded::Stopped {
                return;
            }
            listener = loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                match Events::listen(&database_url).await {
                    Ok(l) => break l,
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN again yet"),
                }
            };
            self.publish_all();
            self.wake_worker();
        }
    }

    /// Forwards notifications until `stop` or until the connection fails.
    async fn forward(&self, listener: &mut Listener, stop: &CancellationToken) -> Forwarded {
        let mut stream = std::pin::pin!(listener.conn.notifications_stream());
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Forwarded::Stopped,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(n)) if n.channel == CHANGED => {
                    if let Ok(id) = Uuid::parse_str(&n.payload) {
                        self.publish(ExportId(id));
                    }
                }
                Some(Ok(_)) => self.wake_worker(),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "notification connection failed; reconnecting");
                    return Forwarded::Lost;
                }
                None => return Forwarded::Lost,
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Forwarded {
    Stopped,
    Lost,
}

/// A connection that is `LISTEN`ing; see [`Events::listen`].
pub struct Listener {
    conn: diesel_async::AsyncPgConnection,
}
