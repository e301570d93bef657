//! Every statement about jobs. An export's row is its job: it is claimable while not done and
//! not leased; a worker claims it with `FOR UPDATE SKIP LOCKED` and holds it under a lease that
//! its heartbeat renews; a job whose lease runs out is claimed again by any replica.
//!
//! Each claim increments the job's `lease_generation`, and the claim's [`Fence`] (export id and
//! generation) guards every write of the job's run: progress, step records, status and
//! completion all go through one [`JobWriter`], whose writes fail with
//! [`JobError::Fenced`] once a newer claim holds the job. A stale worker (frozen, partitioned,
//! or just slow) therefore cannot change an export that another worker runs or finished.
//!
//! - [`claim`]: claiming (with the fair share per workspace), queue depth, status counts.
//! - [`job`]: [`JobWriter`], the fenced writes of one claimed job.
//! - [`steps`]: the persisted step records and their names.
//! - [`sweep`]: finished jobs whose stray objects are still to remove.
//! - [`lifecycle`]: retention (COMPLETED → EXPIRED) and the release of idempotency keys.

pub mod claim;
pub mod job;
pub mod lifecycle;
pub mod steps;
pub mod sweep;

pub use claim::{Claim, ClaimPolicy, claim, queue_depth, status_counts};
pub use job::{CRASHED, CompletedFile, Completion, JobError, JobWriter, ProgressWrite, StepStart};
pub use steps::{StepName, StepRecord, StepStatus, UnreadableOutput};

/// One claim of one job: the job's generation as that claim set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub export_id: crate::ids::ExportId,
    pub generation: i64,
}
