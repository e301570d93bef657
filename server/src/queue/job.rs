//! [`JobWriter`]: every write of a claimed job, each checked against the claim's fence.
//!
//! A claim's fence is the job's `lease_generation` as the claim set it. Every write here
//! either is an `UPDATE exports … WHERE id = $id AND lease_generation = $generation` (the row
//! lock and the re-check of the condition make it atomic against a newer claim), or runs in a
//! transaction that first locks the export's row under that condition. A write that finds
//! another generation fails with [`JobError::Fenced`]: the job is someone else's now, and the
//! writer's runner must stop at once without touching anything more.
//!
//! A lost database connection is retried with backoff for up to [`JobWriter::patience`]:
//! an outage of a few seconds delays a job, it does not fail it or make it wait for its
//! lease to run out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::dsl::{case_when, sql};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz};
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use super::Fence;
use super::claim::interval;
use super::steps::{StepName, StepStatus};
use crate::db::schema::{export_steps, exports};
use crate::db::{DbError, PgPool};
use crate::events::Events;
use crate::exports::{ExportRecord, ExportStatus};

/// Why a job write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A newer claim holds the job: this writer's runner must stop.
    #[error("the job was claimed again (this claim's generation {0} is no longer current)")]
    Fenced(i64),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for JobError {
    fn from(e: diesel::result::Error) -> Self {
        JobError::Db(DbError::Query(e))
    }
}

/// How the error of a step begins when its worker crashed (see [`JobWriter::crashed`]).
pub const CRASHED: &str = "the worker crashed";

/// What a progress write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressWrite {
    Written,
    /// The caller asked to cancel: the count was left as it was.
    Cancelled,
}

/// How the completion of a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// COMPLETED, pointing at the file.
    Completed,
    /// A cancel was requested before: nothing was written, the caller ends the export
    /// CANCELLED and removes the file.
    Cancelled,
}

/// What a step's start found in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepStart {
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// Failed attempts before this one.
    pub failures: i32,
}

/// Runs `$body` with `$c`, a pooled connection; a lost connection (or an unreachable
/// database) is retried with backoff until the writer's patience has passed. Anything else is
/// returned at once. (A macro, not a function taking an async closure: such a closure's
/// future is not provably `Send` in the spawned tasks that call these writes.)
macro_rules! retrying {
    ($self:ident, |$c:ident| $body:expr) => {{
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let result: Result<_, JobError> = match $self.pool.get().await {
                Ok(mut conn) => {
                    let $c: &mut AsyncPgConnection = &mut conn;
                    async { $body }.await
                }
                Err(e) => Err(JobError::Db(DbError::from(e))),
            };
            match result {
                Err(JobError::Db(e)) if e.is_transient() && started.elapsed() < $self.patience => {
                    tracing::debug!(error = %e, "job write failed on a lost connection; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                other => break other,
            }
        }
    }};
}

/// Runs `$body` with `$c` inside a transaction that first locks the export's row as this
/// claim's, so that no newer claim can commit until it ends; `$cancel` is the export's
/// `cancel_requested`. `Err(Fenced)` when the row is another claim's.
macro_rules! fenced_transaction {
    ($self:ident, |$c:ident, $cancel:ident| $body:expr) => {{
        let (id, generation) = ($self.fence.export_id, $self.fence.generation);
        let result = retrying!($self, |conn| {
            Ok(conn
                .transaction(async |$c| {
                    let cancel: Option<bool> = exports::table
                        .filter(exports::id.eq(id))
                        .filter(exports::lease_generation.eq(generation))
                        .select(exports::cancel_requested)
                        .for_update()
                        .first($c)
                        .await
                        .optional()?;
                    match cancel {
                        None => Ok(None),
                        Some($cancel) => {
                            let result: Result<_, diesel::result::Error> = async { $body }.await;
                            result.map(Some)
                        }
                    }
                })
                .await?)
        });
        result.and_then(|r| r.ok_or(JobError::Fenced(generation)))
    }};
}

/// The fenced writes of one claimed job.
#[derive(Clone)]
pub struct JobWriter {
    pool: PgPool,
    events: Events,
    fence: Fence,
    /// This replica's name, recorded as the worker of each step.
    worker: String,
    /// How long a write keeps retrying a lost connection.
    patience: Duration,
    /// The step this run started last and has not ended (for [`JobWriter::crashed`]).
    running: Arc<Mutex<Option<StepName>>>,
}

/// Builds the fenced update of this job's export.
macro_rules! fenced {
    ($self:ident) => {
        diesel::update(exports::table)
            .filter(exports::id.eq($self.fence.export_id))
            .filter(exports::lease_generation.eq($self.fence.generation))
    };
}

/// Whether the export is COMPLETED already (the notification runs after that).
fn is_completed() -> diesel::dsl::Eq<exports::status, &'static str> {
    exports::status.eq(ExportStatus::Completed.as_str())
}

/// First pause after a lost connection; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl JobWriter {
    pub fn new(pool: PgPool, events: Events, fence: Fence, worker: &str) -> Self {
        JobWriter {
            pool,
            events,
            fence,
            worker: worker.to_owned(),
            patience: Duration::from_secs(30),
            running: Arc::default(),
        }
    }

    /// The same writer retrying a lost connection for `patience` at most.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    pub fn fence(&self) -> Fence {
        self.fence
    }

    /// How long a write keeps retrying a lost connection.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// `Err(Fenced)` unless one row was updated; then tells this replica's watchers.
    fn changed(&self, updated: usize) -> Result<(), JobError> {
        if updated == 0 {
            return Err(JobError::Fenced(self.fence.generation));
        }
        self.events.publish(self.fence.export_id);
        Ok(())
    }

    /// Renews the lease for `lease` from now.
    pub async fn renew(&self, lease: Duration) -> Result<(), JobError> {
        let n = retrying!(self, |c| {
            // A lease handed back (no owner) is not renewed, even by a renewal that was
            // already on its way when the run released it.
            Ok(fenced!(self)
                .filter(exports::job_done.eq(false))
                .filter(exports::lease_owner.is_not_null())
                .set(
                    exports::lease_expires_at.eq(sql::<Nullable<Timestamptz>>(&format!(
                        "now() + interval '{}'",
                        interval(lease)
                    ))),
                )
                .execute(c)
                .await?)
        })?;
        // Not shown to watchers: a renewal changes nothing they see.
        if n == 0 {
            return Err(JobError::Fenced(self.fence.generation));
        }
        Ok(())
    }

    /// The job started (or resumed) here.
    pub async fn processing(&self) -> Result<(), JobError> {
        let n = retrying!(self, |c| {
            Ok(fenced!(self)
                .set((
                    // A job resumed only for its notification is COMPLETED already.
                    exports::status.eq(sql::<Text>(
                        "CASE WHEN status = 'pending' THEN 'processing' ELSE status END",
                    )),
                    exports::started_at
                        .eq(sql::<Nullable<Timestamptz>>("coalesce(started_at, now())")),
                    exports::updated_at.eq(Utc::now()),
                ))
                .execute(c)
                .await?)
        })?;
        self.changed(n)
    }

    /// Whether the caller asked to cancel (checked between steps).
    pub async fn cancel_requested(&self) -> Result<bool, JobError> {
        let cancel: Option<bool> = retrying!(self, |c| {
            Ok(exports::table
                .filter(exports::id.eq(self.fence.export_id))
                .filter(exports::lease_generation.eq(self.fence.generation))
                .select(exports::cancel_requested)
                .first(c)
                .await
                .optional()?)
        })?;
        cancel.ok_or(JobError::Fenced(self.fence.generation))
    }

    /// A step begins: it becomes the export's current step (but on a COMPLETED export, whose
    /// watchers were told that state was final) and its record counts the attempt.
    pub async fn step_started(&self, step: StepName) -> Result<StepStart, JobError> {
        let (n, start) = retrying!(self, |c| {
            let (id, generation, worker) =
                (self.fence.export_id, self.fence.generation, &self.worker);
            Ok(c.transaction(async |c| {
                let n = diesel::update(exports::table)
                    .filter(exports::id.eq(id))
                    .filter(exports::lease_generation.eq(generation))
                    .set((
                        exports::current_step.eq(case_when(is_completed(), exports::current_step)
                            .otherwise(step.as_str())),
                        exports::updated_at
                            .eq(case_when(is_completed(), exports::updated_at)
                                .otherwise(Utc::now())),
                    ))
                    .execute(c)
                    .await?;
                if n == 0 {
                    return Ok::<_, diesel::result::Error>((0, None));
                }
                let (attempts, failures): (i32, i32) = diesel::insert_into(export_steps::table)
                    .values((
                        export_steps::export_id.eq(id),
                        export_steps::step.eq(step.as_str()),
                        export_steps::status.eq(StepStatus::Running.as_str()),
                        export_steps::attempts.eq(1),
                        export_steps::worker.eq(worker),
                    ))
                    .on_conflict((export_steps::export_id, export_steps::step))
                    .do_update()
                    .set((
                        export_steps::status.eq(StepStatus::Running.as_str()),
                        export_steps::attempts.eq(export_steps::attempts + 1),
                        export_steps::worker.eq(excluded(export_steps::worker)),
                        export_steps::error.eq(None::<String>),
                        export_steps::started_at.eq(Utc::now()),
                        export_steps::finished_at.eq(None::<chrono::DateTime<Utc>>),
                    ))
                    .returning((export_steps::attempts, export_steps::failures))
                    .get_result(c)
                    .await?;
                Ok((n, Some(StepStart { attempts, failures })))
            })
            .await?)
        })?;
        self.changed(n)?;
        *self.running.lock().expect("running step lock") = Some(step);
        start.ok_or(JobError::Fenced(self.fence.generation))
    }

    /// A step ended well: `Succeeded` or `Skipped`, with its output.
    pub async fn step_finished(
        &self,
        step: StepName,
        status: StepStatus,
        output: &serde_json::Value,
    ) -> Result<(), JobError> {
        let id = self.fence.export_id;
        fenced_transaction!(self, |c, _cancel| {
            finish_step(c, id, step, status, Some(output), None, false).await
        })?;
        self.step_ended(step);
        Ok(())
    }

    /// `step` is no longer running in this run.
    fn step_ended(&self, step: StepName) {
        let mut running = self.running.lock().expect("running step lock");
        if *running == Some(step) {
            *running = None;
        }
    }

    /// The `send-webhook` step told the caller of `event` (delivered or given up): its record,
    /// and the webhook no longer due, unless a later end is due by now.
    pub async fn webhook_sent(
        &self,
        event: &str,
        output: &serde_json::Value,
    ) -> Result<(), JobError> {
        let id = self.fence.export_id;
        let step = StepName::SendWebhook;
        fenced_transaction!(self, |c, _cancel| {
            finish_step(
                c,
                id,
                step,
                StepStatus::Succeeded,
                Some(output),
                None,
                false,
            )
            .await?;
            diesel::update(exports::table.find(id))
                .filter(exports::webhook_due.eq(event))
                .set(exports::webhook_due.eq(None::<String>))
                .execute(c)
                .await
                .map(|_| ())
        })?;
        self.step_ended(step);
        Ok(())
    }

    /// A step's attempt failed (counted towards its cap); `error` is for operators.
    pub async fn step_failed(&self, step: StepName, error: &str) -> Result<(), JobError> {
        let id = self.fence.export_id;
        fenced_transaction!(self, |c, _cancel| {
            finish_step(c, id, step, StepStatus::Failed, None, Some(error), true).await
        })?;
        self.step_ended(step);
        Ok(())
    }

    /// The number of rows the file will hold.
    pub async fn total_rows(&self, total: i64) -> Result<(), JobError> {
        let n = retrying!(self, |c| {
            Ok(fenced!(self)
                .set((
                    exports::total_rows.eq(total),
                    exports::updated_at.eq(Utc::now()),
                ))
                .execute(c)
                .await?)
        })?;
        self.changed(n)
    }

    /// A stream attempt begins: counts it and starts its progress from zero.
    pub async fn start_attempt(&self) -> Result<i32, JobError> {
        let attempt: Option<i32> = retrying!(self, |c| {
            Ok(fenced!(self)
                .set((
                    exports::attempt.eq(exports::attempt + 1),
                    exports::processed_rows.eq(0),
                    exports::updated_at.eq(Utc::now()),
                ))
                .returning(exports::attempt)
                .get_result(c)
                .await
                .optional()?)
        })?;
        self.changed(attempt.is_some() as usize)?;
        Ok(attempt.unwrap_or_default())
    }

    /// Progress of the running stream attempt, and whether the caller asked to cancel
    /// meanwhile. Once a cancel is requested the count no longer moves: the export ends
    /// CANCELLED where it was.
    ///
    /// The counter is not worth a disk flush each: `synchronous_commit = off` for this one
    /// transaction (the file, not the counter, is the truth).
    pub async fn write_progress(&self, processed: i64) -> Result<ProgressWrite, JobError> {
        let (id, generation) = (self.fence.export_id, self.fence.generation);
        let cancel: Option<bool> = retrying!(self, |c| {
            Ok(c.transaction(async |c| {
                c.batch_execute("SET LOCAL synchronous_commit = off")
                    .await?;
                diesel::update(exports::table)
                    .filter(exports::id.eq(id))
                    .filter(exports::lease_generation.eq(generation))
                    .set((
                        exports::processed_rows.eq(case_when(
                            exports::cancel_requested,
                            exports::processed_rows,
                        )
                        .otherwise(processed)),
                        exports::updated_at.eq(case_when(
                            exports::cancel_requested,
                            exports::updated_at,
                        )
                        .otherwise(Utc::now())),
                    ))
                    .returning(exports::cancel_requested)
                    .get_result::<bool>(c)
                    .await
                    .optional()
            })
            .await?)
        })?;
        match cancel {
            None => Err(JobError::Fenced(generation)),
            Some(true) => Ok(ProgressWrite::Cancelled),
            Some(false) => {
                self.events.publish(id);
                Ok(ProgressWrite::Written)
            }
        }
    }

    /// The file is written: records `step` succeeded with `output` and makes the export
    /// COMPLETED, pointing at `storage_key`, in one transaction; or, when a cancel was
    /// requested before, neither ([`Completion::Cancelled`]). A cancel accepted before this
    /// commits always wins: the export never shows a file its caller cancelled.
    pub async fn complete(
        &self,
        step: StepName,
        output: &serde_json::Value,
        file: &CompletedFile<'_>,
    ) -> Result<Completion, JobError> {
        let id = self.fence.export_id;
        let completion = fenced_transaction!(self, |c, cancel| {
            if cancel {
                return Ok(Completion::Cancelled);
            }
            finish_step(
                c,
                id,
                step,
                StepStatus::Succeeded,
                Some(output),
                None,
                false,
            )
            .await?;
            diesel::update(exports::table)
                .filter(exports::id.eq(id))
                .set((
                    exports::status.eq(ExportStatus::Completed.as_str()),
                    exports::processed_rows.eq(file.rows),
                    exports::storage_key.eq(file.storage_key),
                    exports::size_bytes.eq(file.size_bytes),
                    exports::sha256.eq(file.sha256),
                    exports::error_message.eq(None::<String>),
                    exports::updated_at.eq(Utc::now()),
                    exports::finished_at.eq(Utc::now()),
                    exports::expires_at.eq(file.expires_at),
                    exports::webhook_due.eq(sql::<Nullable<Text>>(
                        "CASE WHEN notify_url IS NULL THEN NULL ELSE 'completed' END",
                    )),
                ))
                .execute(c)
                .await?;
            Ok(Completion::Completed)
        })?;
        if completion == Completion::Completed {
            self.step_ended(step);
            self.events.publish(id);
        }
        Ok(completion)
    }

    /// Ends the export FAILED or CANCELLED, and with it the job, unless the caller's webhook is
    /// still to be told (then the run keeps its lease and goes on to it): returns whether a
    /// webhook is due. A COMPLETED export stays as callers saw it (a failure after its file,
    /// of the mail say, changes nothing visible): only its job ends, or its webhook follows.
    pub async fn end(&self, status: ExportStatus, message: &str) -> Result<bool, JobError> {
        #[derive(diesel::QueryableByName)]
        struct Ended {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            job_done: bool,
        }
        let (id, generation) = (self.fence.export_id, self.fence.generation);
        let ended: Option<Ended> = retrying!(self, |c| {
            // Every expression reads the row as it was before this update.
            Ok(diesel::sql_query(
                "UPDATE exports SET \
                   status = CASE WHEN status = 'completed' THEN status ELSE $3 END, \
                   error_message = CASE WHEN status = 'completed' THEN error_message ELSE $4 END, \
                   webhook_due = CASE WHEN status = 'completed' THEN webhook_due \
                                      WHEN notify_url IS NOT NULL THEN $3 END, \
                   job_done = (CASE WHEN status = 'completed' THEN webhook_due \
                                    ELSE notify_url END) IS NULL, \
                   lease_owner = CASE WHEN (CASE WHEN status = 'completed' THEN webhook_due \
                                    ELSE notify_url END) IS NULL THEN NULL ELSE lease_owner END, \
                   lease_expires_at = CASE WHEN (CASE WHEN status = 'completed' THEN webhook_due \
                                    ELSE notify_url END) IS NULL THEN NULL ELSE lease_expires_at END, \
                   needs_mailer = false, \
                   updated_at = CASE WHEN status = 'completed' THEN updated_at ELSE now() END, \
                   finished_at = CASE WHEN status = 'completed' THEN finished_at ELSE now() END \
                 WHERE id = $1 AND lease_generation = $2 \
                 RETURNING job_done",
            )
            .bind::<diesel::sql_types::Uuid, _>(id)
            .bind::<diesel::sql_types::BigInt, _>(generation)
            .bind::<Text, _>(status.as_str())
            .bind::<Text, _>(message)
            .get_result(c)
            .await
            .optional()?)
        })?;
        let Some(Ended { job_done }) = ended else {
            return Err(JobError::Fenced(generation));
        };
        self.events.publish(id);
        Ok(!job_done)
    }

    /// The export as it is now (for the webhook's event, which tells its latest state).
    pub async fn current(&self) -> Result<ExportRecord, JobError> {
        let id = self.fence.export_id;
        retrying!(self, |c| {
            Ok(exports::table
                .find(id)
                .select(ExportRecord::as_select())
                .first(c)
                .await?)
        })
    }

    /// The webhook of a finished export waits for a replica that can send webhooks.
    pub async fn await_webhooks(&self) -> Result<(), JobError> {
        self.release_with(false, false).await
    }

    /// Every step has run: the job is done and its lease released.
    pub async fn job_done(&self) -> Result<(), JobError> {
        self.release_with(true, false).await
    }

    /// The job needs a replica that can send mail: released for one of those to claim.
    pub async fn await_mailer(&self) -> Result<(), JobError> {
        self.release_with(false, true).await
    }

    /// Gives the job back unfinished (shutdown, a crash), so that any replica takes it at
    /// once. Not a failed attempt.
    pub async fn release(&self) -> Result<(), JobError> {
        self.release_with(false, false).await
    }

    async fn release_with(&self, done: bool, needs_mailer: bool) -> Result<(), JobError> {
        let n = retrying!(self, |c| {
            // A job that is done stays done; done, it owes no webhook.
            Ok(fenced!(self)
                .filter(exports::job_done.eq(false))
                .set((
                    exports::webhook_due.eq(sql::<Nullable<Text>>(if done {
                        "NULL"
                    } else {
                        "webhook_due"
                    })),
                    exports::job_done.eq(done),
                    exports::needs_mailer.eq(needs_mailer),
                    exports::lease_owner.eq(None::<String>),
                    exports::lease_expires_at.eq(None::<chrono::DateTime<Utc>>),
                ))
                .execute(c)
                .await?)
        })?;
        self.changed(n)
    }

    /// The job's task panicked: the step this run was running failed (counted towards its
    /// cap) with `error`, and the job goes back to the queue.
    pub async fn crashed(&self, error: &str) -> Result<(), JobError> {
        let id = self.fence.export_id;
        let running = *self.running.lock().expect("running step lock");
        let Some(step) = running else {
            return self.release().await;
        };
        fenced_transaction!(self, |c, _cancel| {
            diesel::update(export_steps::table)
                .filter(export_steps::export_id.eq(id))
                .filter(export_steps::step.eq(step.as_str()))
                .filter(export_steps::status.eq(StepStatus::Running.as_str()))
                .set((
                    export_steps::status.eq(StepStatus::Failed.as_str()),
                    export_steps::failures.eq(export_steps::failures + 1),
                    export_steps::error.eq(error),
                    export_steps::finished_at.eq(Utc::now()),
                ))
                .execute(c)
                .await
        })?;
        self.release().await
    }
}

/// Where the file of a completed export is, and what it holds.
#[derive(Debug, Clone, Copy)]
pub struct CompletedFile<'a> {
    pub storage_key: &'a str,
    pub size_bytes: i64,
    pub sha256: &'a str,
    pub rows: i64,
    /// When retention is to remove it.
    pub expires_at: chrono::DateTime<Utc>,
}

/// Records how a step's attempt ended.
async fn finish_step(
    c: &mut AsyncPgConnection,
    id: crate::ids::ExportId,
    step: StepName,
    status: StepStatus,
    output: Option<&serde_json::Value>,
    error: Option<&str>,
    failed: bool,
) -> Result<(), diesel::result::Error> {
    let failures = i32::from(failed);
    diesel::insert_into(export_steps::table)
        .values((
            export_steps::export_id.eq(id),
            export_steps::step.eq(step.as_str()),
            export_steps::status.eq(status.as_str()),
            export_steps::output.eq(output),
            export_steps::error.eq(error),
            export_steps::failures.eq(failures),
            export_steps::finished_at.eq(Utc::now()),
        ))
        .on_conflict((export_steps::export_id, export_steps::step))
        .do_update()
        .set((
            export_steps::status.eq(status.as_str()),
            export_steps::output.eq(output),
            export_steps::error.eq(error),
            export_steps::failures.eq(export_steps::failures + failures),
            export_steps::finished_at.eq(Utc::now()),
        ))
        .execute(c)
        .await
        .map(|_| ())
}
