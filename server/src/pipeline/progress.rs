//! Progress of a stream attempt, written beside the stream rather than in its path.
//!
//! The stream hands each batch's row count to [`Progress::report`], which never waits: a task
//! of its own writes the latest count to the export (guarded by the lease, as every job write
//! is) whenever it changed, and so tells watchers. A batch that ends while the previous write
//! is still on its way is folded into the next write: a watcher sees every batch while the
//! database keeps up, and the newest count when it does not. Each write also reads
//! `cancel_requested`; a cancel, a lost lease or a failed write is left for the stream to pick
//! up at its next batch boundary with [`Progress::check`]. [`Progress::finish`] writes the
//! final count before the caller goes on to COMPLETED, and is the last check: a cancel that
//! arrives after the last batch still stops the file from being committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::step::StepError;
use crate::queue::{JobError, JobWriter, ProgressWrite};

/// Why the stream must stop, as the progress task found out.
#[derive(Debug, Clone)]
enum Stop {
    Cancelled,
    LeaseLost,
    /// Writing progress failed; the text of the error.
    Failed(String),
}

impl Stop {
    fn to_error(&self) -> StepError {
        match self {
            Stop::Cancelled => StepError::Cancelled,
            Stop::LeaseLost => StepError::LeaseLost,
            Stop::Failed(cause) => StepError::read(cause.clone()),
        }
    }
}

/// The progress writer of one stream attempt.
pub struct Progress {
    rows: Option<watch::Sender<i64>>,
    stop: Arc<Mutex<Option<Stop>>>,
    /// Set when the attempt ends early: nothing more is written.
    abandoned: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the writer of the job's progress. The attempt starts from zero rows (see
    /// [`JobWriter::start_attempt`]).
    pub fn spawn(job: &JobWriter) -> Progress {
        let (rows, mut latest) = watch::channel(0i64);
        let stop = Arc::new(Mutex::new(None));
        let abandoned = Arc::new(AtomicBool::new(false));
        let (job, found, quit) = (job.clone(), stop.clone(), abandoned.clone());
        let task = tokio::spawn(async move {
            let mut written = 0i64;
            // `changed` returns the last value still unseen after the sender is dropped, then
            // an error: the final count is always written.
            while latest.changed().await.is_ok() {
                let processed = *latest.borrow_and_update();
                if quit.load(Ordering::Acquire) {
                    return;
                }
                if processed == written {
                    continue;
                }
                let outcome = match job.write_progress(processed).await {
                    Ok(ProgressWrite::Written) => {
                        written = processed;
                        continue;
                    }
                    Ok(ProgressWrite::Cancelled) => Stop::Cancelled,
                    Err(JobError::Fenced(_)) => Stop::LeaseLost,
                    Err(e) => Stop::Failed(e.to_string()),
                };
                *found.lock().expect("progress lock") = Some(outcome);
                return;
            }
        });
        Progress {
            rows: Some(rows),
            stop,
            abandoned,
            task: Some(task),
        }
    }

    /// Rows written so far in this attempt; returns at once.
    pub fn report(&self, processed: i64) {
        if let Some(rows) = &self.rows {
            rows.send_replace(processed);
        }
    }

    /// `Err` once a write found the export cancelled, the lease lost, or failed.
    pub fn check(&self) -> Result<(), StepError> {
        match &*self.stop.lock().expect("progress lock") {
            None => Ok(()),
            Some(stop) => Err(stop.to_error()),
        }
    }

    /// Writes `processed` as the final count and waits for it: `Ok` when it is recorded and
    /// nobody cancelled the export meanwhile.
    pub async fn finish(mut self, processed: i64) -> Result<(), StepError> {
        self.report(processed);
        self.join().await?;
        match self.stop.lock().expect("progress lock").take() {
            None => Ok(()),
            Some(stop) => Err(stop.to_error()),
        }
    }

    /// The attempt ended early: no further write, and a write on its way is waited for, so
    /// that it cannot land after the next attempt has reset the count.
    pub async fn abandon(mut self) {
        self.abandoned.store(true, Ordering::Release);
        if let Err(e) = self.join().await {
            tracing::warn!(error = %e, "progress writer ended abnormally");
        }
    }

    async fn join(&mut self) -> Result<(), StepError> {
        self.rows = None;
        match self.task.take() {
            Some(task) => task.await.map_err(|e| StepError::read(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for Progress {
    /// Dropped without `finish` or `abandon` (the attempt's future was dropped): stop writing.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
