//! The `process-export` job.
//!
//! Four named steps run in order, each persisted in `export_steps` with a typed output:
//!
//! 1. [`steps::resolve_tag_filter`]: which contacts the tags select; none short-circuits to a
//!    header-only file.
//! 2. [`steps::resolve_export_metadata`]: custom-field keys and row count, in one pass inside
//!    one [`snapshot::Snapshot`] that the stream then reads too.
//! 3. [`steps::stream_export`]: one ordered binary `COPY` of that snapshot, received a batch
//!    ahead ([`batches`]), read in place ([`copy_rows`]) by the [`csv`] encoder into a
//!    storage writer.
//! 4. [`steps::send_notification`]: mail the requester when the workspace wants it.
//!
//! The [`runner`] owns everything around the steps: memoisation (a succeeded step is not run
//! again, but for metadata whose snapshot died with its worker), retries, status and progress
//! ([`job_state`]), cancellation and the final status. Nothing here knows about gRPC.

pub mod batches;
pub mod copy_rows;
pub mod csv;
pub mod custom_fields;
pub mod job_state;
pub mod progress;
pub mod runner;
pub mod selection;
pub mod snapshot;
pub mod step;
pub mod step_store;
pub mod steps;

use std::time::Duration;

use opendal::Operator;

use crate::db::PgPool;
use crate::events::Events;
use crate::mail::Mailer;
use crate::metrics::Metrics;

/// What every job needs from the outside world.
#[derive(Clone)]
pub struct PipelineContext {
    pub pool: PgPool,
    /// For the snapshot's dedicated connection.
    pub database_url: String,
    pub storage: Operator,
    /// `None`: notifications are not configured, the step records a skip.
    pub mailer: Option<Mailer>,
    pub events: Events,
    /// Rows per batch of the stream.
    pub batch_size: usize,
    pub retry: RetryPolicy,
    /// This replica's counters: rows and bytes written, step attempts, retries, failures.
    pub metrics: Metrics,
}

/// How the runner retries the stream step.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries of `stream-export` inside one run of the job (the "up to 2").
    pub stream_retries: u32,
    /// Attempts of `stream-export` across all runs (worker crashes included) before the export
    /// is failed rather than tried again: a job that kills its worker must not loop forever.
    pub max_total_stream_attempts: i32,
    /// Delay before the first retry; doubled for each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            stream_retries: 2,
            max_total_stream_attempts: 6,
            backoff: Duration::from_millis(500),
        }
    }
}
