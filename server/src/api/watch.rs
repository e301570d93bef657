//! WatchExport: the current state, then one message per visible change, until a terminal
//! status.

use std::time::Duration;

use crate::ids::ExportId;
use contact_export::v1::Export;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{ExportApi, ResponseStream, convert};
use crate::auth::Principal;
use crate::db::DbError;
use crate::exports::{ExportRecord, repo};

/// A watcher re-reads at least this often even without a notification, so that a notification
/// lost with a dropped `LISTEN` connection delays it but never stalls it.
const REREAD_EVERY: Duration = Duration::from_secs(5);

/// A read that failed because the database went away is tried again after this long.
const RETRY_READ_AFTER: Duration = Duration::from_millis(500);

/// Messages buffered for a slow watcher. Changes beyond it are coalesced: the watcher gets the
/// newest state when it catches up, never an unbounded backlog.
const BUFFER: usize = 4;

impl ExportApi {
    pub(super) async fn watch(
        &self,
        principal: Principal,
        id: ExportId,
    ) -> Result<Response<ResponseStream<Export>>, Status> {
        // Subscribe before the first read: a change between the two is then not missed.
        let mut changes = self.events.subscribe(id);
        let shared = self.shared_reads.of(principal.workspace_id, id);
        let first = repo::get(&mut *self.conn().await?, principal.workspace_id, id).await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            let mut record: ExportRecord = first;
            let mut last: Option<Export> = None;
            let mut retry_read = false;
            loop {
                let message = convert::export_to_proto(&record);
                if last.as_ref() != Some(&message) {
                    // Waiting here is the back-pressure: while the watcher is slow, changes
                    // pile up as one pending wake-up, not as messages.
                    if tx.send(Ok(message.clone())).await.is_err() {
                        return;
                    }
                    last = Some(message);
                }
                if record.status.is_terminal() {
                    return;
                }
                // A change is read once for all of this export's watchers here; the periodic
                // re-read (and a read tried again after a failure) is each watcher's own.
                let change = if retry_read {
                    None
                } else {
                    tokio::select! {
                        change = changes.changed() => Some(change),
                        _ = tokio::time::sleep(REREAD_EVERY) => None,
                        _ = tx.closed() => return,
                        _ = api.shutdown.cancelled() => {
                            let _ = tx.send(Err(shutting_down())).await;
                            return;
                        }
                    }
                };
                retry_read = false;
                let read = async || {
                    let mut conn = api.pool.get().await.map_err(DbError::from)?;
                    repo::get(&mut conn, principal.workspace_id, id).await
                };
                let read = match change {
                    Some(change) => shared.at_least(change, read).await,
                    None => read().await,
                };
                match read {
                    Ok(r) => record = r,
                    // The database went away (a restart, a failover): the stream stays open
                    // and the read is tried again shortly.
                    Err(e) if e.is_transient() => {
                        tracing::debug!(error = %e, "watch: reading the export failed; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY_READ_AFTER) => {}
                            _ = tx.closed() => return,
                            _ = api.shutdown.cancelled() => {
                                let _ = tx.send(Err(shutting_down())).await;
                                return;
                            }
                        }
                        retry_read = true;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn shutting_down() -> Status {
    Status::unavailable("server shutting down; watch again")
}
