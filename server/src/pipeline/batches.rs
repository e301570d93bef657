//! The snapshot's rows, received one batch ahead of the encoder.
//!
//! A task of its own owns the [`Snapshot`] for the length of one stream attempt: it starts the
//! snapshot's `COPY` and gathers its messages (one row each) into batches while the previous
//! batch is encoded, hashed and uploaded, handing each over through a channel that holds one.
//! So at most three batches are in memory at once (one being encoded, one waiting, one being
//! gathered), whatever the size of the export; the `COPY` itself waits on the socket when
//! the encoder falls behind. [`Batches::finish`] gives the snapshot back for a retry.

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::copy_rows::{self, RowBatch, RowError};
use super::selection::Selection;
use super::snapshot::Snapshot;

/// Batches waiting for the encoder, beyond the one it holds.
const AHEAD: usize = 1;

/// Why no batch came.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database failed (or the connection did): the snapshot may be gone.
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    /// The data is not the `COPY` the stream asked for.
    #[error(transparent)]
    Row(#[from] RowError),
    /// The gathering task ended without a last batch (it panicked: `finish` reports it).
    #[error("the batch fetcher stopped")]
    Stopped,
}

/// The batches of one ordered scan.
pub struct Batches {
    rx: mpsc::Receiver<Result<RowBatch, ReadError>>,
    task: JoinHandle<Snapshot>,
}

impl Batches {
    /// Starts the `COPY` on `snapshot` and gathers batches of `batch_size` messages.
    pub fn start(snapshot: Snapshot, selection: &Selection, batch_size: usize) -> Batches {
        let (tx, rx) = mpsc::channel(AHEAD);
        let selection = selection.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = gather(&snapshot, &selection, batch_size, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
            snapshot
        });
        Batches { rx, task }
    }

    /// The next batch; an empty one at the end of the scan.
    pub async fn next(&mut self) -> Result<RowBatch, ReadError> {
        self.rx.recv().await.unwrap_or(Err(ReadError::Stopped))
    }

    /// Stops gathering and gives the snapshot back; `None` if the gathering task panicked, in
    /// which case the snapshot is gone and a retry needs a fresh one. A `COPY` cut short is
    /// read to its end by the connection before the snapshot runs another statement.
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

/// Sends the batches of the whole scan, then an empty one; stops early (without error) when
/// nobody receives any more.
async fn gather(
    snapshot: &Snapshot,
    selection: &Selection,
    batch_size: usize,
    tx: &mpsc::Sender<Result<RowBatch, ReadError>>,
) -> Result<(), ReadError> {
    let stream = snapshot.copy_rows(selection).await?;
    let mut stream = std::pin::pin!(stream);
    let mut first = true;
    loop {
        let mut batch = RowBatch::with_capacity(batch_size);
        let mut ended = false;
        while batch.len() < batch_size {
            match stream.next().await {
                Some(message) => {
                    let message = message?;
                    if first {
                        first = false;
                        batch.push(copy_rows::strip_header(message)?);
                    } else {
                        batch.push(message);
                    }
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
            return Ok(());
        }
        if ended {
            let _ = tx.send(Ok(RowBatch::default())).await;
            return Ok(());
        }
    }
}
