//! The snapshot's rows, fetched one batch ahead of the encoder.
//!
//! A task of its own owns the [`Snapshot`] for the length of one stream attempt: it runs the
//! cursor's `FETCH`es and decodes the rows while the previous batch is encoded, hashed and
//! uploaded, and hands each batch over through a channel that holds one. So at most three
//! batches are in memory at once (one being encoded, one waiting, one being fetched), whatever
//! the size of the export. [`Batches::finish`] gives the snapshot back for a retry: the task
//! stops at its next hand-over, never inside a `FETCH`, so the connection is left between
//! statements and the cursor can be declared again.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::csv::ContactRow;
use super::custom_fields::CustomFields;
use super::selection::Selection;
use super::snapshot::Snapshot;

/// Batches waiting for the encoder, beyond the one it holds.
const AHEAD: usize = 1;

/// The batches of one ordered scan.
pub struct Batches {
    rx: mpsc::Receiver<Result<Vec<ContactRow<CustomFields>>, diesel::result::Error>>,
    task: JoinHandle<Snapshot>,
}

impl Batches {
    /// Opens the cursor on `snapshot` (closing one a failed attempt left open) and starts
    /// fetching batches of `batch_size` rows.
    pub fn start(mut snapshot: Snapshot, selection: &Selection, batch_size: usize) -> Batches {
        let (tx, rx) = mpsc::channel(AHEAD);
        let selection = selection.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = snapshot.open_cursor(&selection).await {
                let _ = tx.send(Err(e)).await;
                return snapshot;
            }
            loop {
                // Nobody is waiting any more: stop before the next FETCH, not during one.
                if tx.is_closed() {
                    break;
                }
                let batch = snapshot.fetch(batch_size).await;
                let last = match &batch {
                    Ok(rows) => rows.is_empty(),
                    Err(_) => true,
                };
                if tx.send(batch).await.is_err() || last {
                    break;
                }
            }
            snapshot
        });
        Batches { rx, task }
    }

    /// The next batch; an empty one at the end of the scan.
    pub async fn next(&mut self) -> Result<Vec<ContactRow<CustomFields>>, diesel::result::Error> {
        match self.rx.recv().await {
            Some(batch) => batch,
            // The task ended without a last batch: it panicked (`finish` reports it).
            None => Err(diesel::result::Error::QueryBuilderError(
                "the batch fetcher stopped".into(),
            )),
        }
    }

    /// Stops fetching and gives the snapshot back; `None` if the fetching task panicked, in
    /// which case the snapshot is gone and a retry needs a fresh one.
    pub async fn finish(self) -> Option<Snapshot> {
        let Batches { rx, task } = self;
        drop(rx);
        match task.await {
            Ok(snapshot) => Some(snapshot),
            Err(e) => {
                tracing::error!(error = %e, "the batch fetcher failed");
                None
            }
        }
    }
}
