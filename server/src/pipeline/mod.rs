//! The `process-export` job.
//!
//! Four named steps run in order, each persisted in `export_steps` with a typed output:
//!
//! 1. [`steps::resolve_tag_filter`]: whether the tags and filters select anybody; nobody
//!    short-circuits to a file of no rows.
//! 2. [`steps::resolve_export_metadata`]: custom-field keys and row count, in one pass inside
//!    one [`snapshot::Snapshot`] that the stream then reads too.
//! 3. [`steps::stream_export`]: one ordered binary `COPY` of that snapshot, received a batch
//!    ahead ([`batches`]), read in place ([`copy_rows`]) by the encoder of the export's
//!    [`format`] (CSV, JSON Lines, XLSX) and its compressor into a storage writer.
//! 4. [`steps::send_notification`]: mail the requester when the workspace wants it.
//!
//! The [`runner`] owns everything around the steps: memoisation (a succeeded step is not run
//! again, but for metadata whose snapshot died with its worker), retries, status and
//! [`progress`], cancellation and the final status, every write through the claim's fenced
//! [`crate::queue::JobWriter`]. Nothing here knows about gRPC.

pub mod batches;
pub mod copy_rows;
pub mod custom_fields;
pub mod format;
pub mod hooks;
pub mod interrupts;
pub mod preview;
pub mod progress;
pub mod runner;
pub mod selection;
pub mod snapshot;
pub mod step;
pub mod steps;

use std::time::Duration;

use opendal::Operator;

use crate::db::{PgPool, Target};
use crate::events::Events;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::queue::{Claim, JobWriter};
pub use hooks::FaultHooks;
pub use interrupts::Interrupts;

/// What every job needs from the outside world.
#[derive(Clone)]
pub struct PipelineContext {
    /// The jobs' own pool (not the API's, so that calls cannot starve a job's writes).
    pub pool: PgPool,
    /// The database, for the snapshot's dedicated connection.
    pub database: Target,
    pub storage: Operator,
    /// `None`: notifications are not configured, the step records a skip.
    pub mailer: Option<Mailer>,
    pub events: Events,
    /// Rows per batch of the stream.
    pub batch_size: usize,
    pub retry: RetryPolicy,
    /// This replica's counters: rows and bytes written, step attempts, retries, failures.
    pub metrics: Metrics,
    /// This replica's name, recorded as the worker of each step.
    pub worker_id: String,
    /// How long a job's writes (and a new snapshot) keep trying while the database cannot
    /// be reached.
    pub db_patience: Duration,
    /// Faults on purpose, for tests of the real binary; none in production.
    pub hooks: FaultHooks,
    /// How long a COMPLETED export's file is kept.
    pub retention: Duration,
    /// The sender of the callers' webhooks; `None`: this replica sends none (jobs with one due
    /// are left to a replica that can).
    pub webhooks: Option<std::sync::Arc<crate::webhook::Delivery>>,
}

impl PipelineContext {
    /// The fenced writer of a claimed job.
    pub fn job_writer(&self, claim: &Claim) -> JobWriter {
        JobWriter::new(
            self.pool.clone(),
            self.events.clone(),
            claim.fence,
            &self.worker_id,
        )
        .with_patience(self.db_patience)
    }
}

/// How the runner retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries of `stream-export` inside one run of the job (the "up to 2").
    pub stream_retries: u32,
    /// Failed attempts of a step across all runs (a crash counts, a hand-back or a lost lease
    /// does not) before the export is failed rather than tried again.
    pub max_failures: i32,
    /// Claims of one job before it is failed: a job whose workers keep dying without a trace
    /// (killed, not panicking) must not loop forever.
    pub max_claims: i64,
    /// Delay before the first retry; doubled for each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            stream_retries: 2,
            max_failures: 6,
            max_claims: 100,
            backoff: Duration::from_millis(500),
        }
    }
}
