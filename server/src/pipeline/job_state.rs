//! The export row as the running job sees it: status, step and progress writes, each guarded by
//! the job's lease so that a worker that lost its lease can never overwrite its successor.

use chrono::Utc;
use diesel::dsl::{case_when, sql};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use uuid::Uuid;

use super::PipelineContext;
use super::step::StepError;
use crate::db::schema::exports;
use crate::exports::ExportStatus;

/// Whether the export is COMPLETED already (when the notification runs, or a job resumes).
fn is_completed() -> diesel::dsl::Eq<exports::status, &'static str> {
    exports::status.eq(ExportStatus::Completed.as_str())
}

/// What a progress write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressWrite {
    Written,
    /// The caller asked to cancel: the count was left as it was.
    Cancelled,
    /// Another worker holds the job now.
    LeaseLost,
}

/// Writes to one export on behalf of the worker holding its lease.
pub struct JobState<'a> {
    ctx: &'a PipelineContext,
    pub export_id: Uuid,
    worker: &'a str,
}

/// Builds the guarded update of this export.
macro_rules! guarded {
    ($self:ident) => {
        diesel::update(exports::table)
            .filter(exports::id.eq($self.export_id))
            .filter(exports::lease_owner.eq($self.worker))
    };
}

impl<'a> JobState<'a> {
    pub fn new(ctx: &'a PipelineContext, export_id: Uuid, worker: &'a str) -> Self {
        JobState {
            ctx,
            export_id,
            worker,
        }
    }

    /// The worker whose lease guards the writes.
    pub fn worker(&self) -> &str {
        self.worker
    }

    async fn conn(&self) -> Result<crate::db::PooledConn, StepError> {
        Ok(self
            .ctx
            .pool
            .get()
            .await
            .map_err(crate::db::DbError::from)?)
    }

    /// Tells this replica's watchers at once; other replicas hear the trigger's NOTIFY.
    fn changed(&self, updated: usize) -> Result<(), StepError> {
        if updated == 0 {
            return Err(StepError::LeaseLost);
        }
        self.ctx.events.publish(self.export_id);
        Ok(())
    }

    /// The job started (or resumed) on this worker.
    pub async fn processing(&self) -> Result<(), StepError> {
        let now = Utc::now();
        let n = guarded!(self)
            .set((
                // A job resumed only for its notification is COMPLETED already: keep that.
                exports::status.eq(sql::<Text>(
                    "CASE WHEN status = 'pending' THEN 'processing' ELSE status END",
                )),
                exports::started_at.eq(sql::<Nullable<Timestamptz>>("coalesce(started_at, now())")),
                exports::updated_at.eq(now),
            ))
            .execute(&mut self.conn().await?)
            .await?;
        self.changed(n)
    }

    /// A step begins. The notification runs after COMPLETED: watchers were told that state was
    /// final, so on a COMPLETED export nothing visible changes (the update still checks the
    /// lease).
    pub async fn step(&self, name: &str) -> Result<(), StepError> {
        let n = guarded!(self)
            .set((
                exports::current_step
                    .eq(case_when(is_completed(), exports::current_step).otherwise(name)),
                exports::updated_at
                    .eq(case_when(is_completed(), exports::updated_at).otherwise(Utc::now())),
            ))
            .execute(&mut self.conn().await?)
            .await?;
        self.changed(n)
    }

    /// The number of rows the file will hold.
    pub async fn total_rows(&self, total: i64) -> Result<(), StepError> {
        let n = guarded!(self)
            .set((
                exports::total_rows.eq(total),
                exports::updated_at.eq(Utc::now()),
            ))
            .execute(&mut self.conn().await?)
            .await?;
        self.changed(n)
    }

    /// A stream attempt begins: counts it and starts its progress from zero.
    pub async fn start_attempt(&self) -> Result<i32, StepError> {
        let attempt: Option<i32> = guarded!(self)
            .set((
                exports::attempt.eq(exports::attempt + 1),
                exports::processed_rows.eq(0),
                exports::updated_at.eq(Utc::now()),
            ))
            .returning(exports::attempt)
            .get_result(&mut self.conn().await?)
            .await
            .optional()?;
        self.changed(attempt.is_some() as usize)?;
        Ok(attempt.unwrap_or_default())
    }

    /// Progress of the running stream attempt (see [`super::progress`], which calls this off
    /// the stream's path), and whether the caller asked to cancel meanwhile. Once a cancel is
    /// requested the count no longer moves: the export ends CANCELLED where it was.
    ///
    /// The counter is not worth a disk flush each: `synchronous_commit = off` for this one
    /// transaction (the file, not the counter, is the truth).
    pub async fn write_progress(&self, processed: i64) -> Result<ProgressWrite, StepError> {
        let mut conn = self.conn().await?;
        let id = self.export_id;
        let worker = self.worker.to_owned();
        let cancel: Option<bool> = conn
            .transaction(async |c| {
                c.batch_execute("SET LOCAL synchronous_commit = off")
                    .await?;
                diesel::update(exports::table)
                    .filter(exports::id.eq(id))
                    .filter(exports::lease_owner.eq(worker))
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
            .await?;
        Ok(match cancel {
            None => ProgressWrite::LeaseLost,
            Some(true) => ProgressWrite::Cancelled,
            Some(false) => {
                self.ctx.events.publish(id);
                ProgressWrite::Written
            }
        })
    }

    /// Whether the caller asked to cancel (checked between steps).
    pub async fn check_cancelled(&self) -> Result<(), StepError> {
        let cancel: Option<bool> = exports::table
            .filter(exports::id.eq(self.export_id))
            .filter(exports::lease_owner.eq(self.worker))
            .select(exports::cancel_requested)
            .first(&mut self.conn().await?)
            .await
            .optional()?;
        match cancel {
            None => Err(StepError::LeaseLost),
            Some(true) => Err(StepError::Cancelled),
            Some(false) => Ok(()),
        }
    }

    /// The file is written: COMPLETED (the notification may still follow).
    pub async fn completed(
        &self,
        rows: i64,
        storage_key: &str,
        size_bytes: i64,
        sha256: &str,
    ) -> Result<(), StepError> {
        let now = Utc::now();
        let n = guarded!(self)
            .set((
                exports::status.eq(ExportStatus::Completed.as_str()),
                exports::processed_rows.eq(rows),
                exports::storage_key.eq(storage_key),
                exports::size_bytes.eq(size_bytes),
                exports::sha256.eq(sha256),
                exports::error_message.eq(None::<String>),
                // A resumed job sets the same values again: that is no change to show.
                exports::updated_at
                    .eq(case_when(is_completed(), exports::updated_at).otherwise(now)),
                exports::finished_at
                    .eq(sql::<Nullable<Timestamptz>>("coalesce(finished_at, now())")),
            ))
            .execute(&mut self.conn().await?)
            .await?;
        self.changed(n)
    }

    /// Ends the export in a terminal status other than COMPLETED, and its job with it.
    pub async fn end(&self, status: ExportStatus, message: &str) -> Result<(), StepError> {
        let now = Utc::now();
        let n = guarded!(self)
            .set((
                exports::status.eq(status.as_str()),
                exports::error_message.eq(message),
                exports::job_done.eq(true),
                exports::lease_owner.eq(None::<String>),
                exports::lease_expires_at.eq(None::<chrono::DateTime<Utc>>),
                exports::updated_at.eq(now),
                exports::finished_at.eq(now),
            ))
            .execute(&mut self.conn().await?)
            .await?;
        self.changed(n)
    }

    /// Every step has run: the job is done and its lease released.
    pub async fn job_done(&self) -> Result<(), StepError> {
        let n = guarded!(self)
            .set((
                exports::job_done.eq(true),
                exports::lease_owner.eq(None::<String>),
                exports::lease_expires_at.eq(None::<chrono::DateTime<Utc>>),
            ))
            .execute(&mut self.conn().await?)
            .await?;
        self.changed(n)
    }

    /// Gives the job back unfinished (shutdown), so that another worker takes it at once.
    pub async fn release(&self) -> Result<(), StepError> {
        let n = guarded!(self)
            .set((
                exports::lease_owner.eq(None::<String>),
                exports::lease_expires_at.eq(None::<chrono::DateTime<Utc>>),
            ))
            .execute(&mut self.conn().await?)
            .await?;
        self.changed(n)
    }
}
