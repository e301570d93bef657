//! Runs one claimed export through its steps: memoisation, retries, status and failure.
//!
//! Every write goes through the claim's [`JobWriter`], so every write is fenced: once another
//! worker claims the job, the next write fails and this run stops without touching anything
//! more. What counts towards the cap on attempts is a failure; a lease handed back (shutdown)
//! or taken over (a stall) is not one.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use super::PipelineContext;
use super::interrupts::Interrupts;
use super::selection::Selection;
use super::snapshot::Snapshot;
use super::step::{FailureKind, StepError};
use super::steps::resolve_export_metadata::{self, ExportMetadata};
use super::steps::resolve_tag_filter::{self, TagFilter};
use super::steps::send_notification::{self, Notification};
use super::steps::stream_export::{self, StoredFile, StreamInput};
use crate::db::DbError;
use crate::exports::{ExportOptions, ExportRecord, ExportStatus};
use crate::queue::{
    Claim, CompletedFile, Completion, JobError, JobWriter, StepName, StepRecord, StepStatus,
};
use crate::storage;
use crate::webhook::{EventType, ExportEventData, WebhookEvent};

/// How a run ended, for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The job is done (COMPLETED and notified, FAILED or CANCELLED).
    Done,
    /// Handed back (shutdown) or waiting for a replica that can mail.
    Released,
    /// Another worker claimed it: nothing more was written.
    TakenOver,
    /// Its end could not be recorded (the database stayed away): its lease will run out.
    Abandoned,
}

/// Runs the claimed export to its end, or until interrupted. Failures are logged here, once,
/// and recorded on the export.
/// `job` is the claim's writer (see [`PipelineContext::job_writer`]).
pub async fn run(
    ctx: &PipelineContext,
    claim: &Claim,
    job: &JobWriter,
    interrupts: &Interrupts,
) -> RunEnd {
    let export = &claim.export;
    let mut run = Run {
        ctx,
        export,
        job,
        interrupts,
        records: HashMap::new(),
    };
    let ended = match run.steps().await {
        Ok(end) => return end,
        Err(StepError::Cancelled) => {
            tracing::info!("export cancelled");
            job.end(ExportStatus::Cancelled, "cancelled by request")
                .await
        }
        Err(StepError::Failed { public, source, .. }) => {
            tracing::error!(error = %public, cause = %source, "export failed");
            job.end(ExportStatus::Failed, &public).await
        }
        Err(other) => return interrupted(job, other).await,
    };
    match ended {
        Ok(false) => {
            sweep(ctx, claim, None).await;
            RunEnd::Done
        }
        // The caller's webhook is still to be told of the end.
        Ok(true) => match run.after_end().await {
            Ok(end) => end,
            Err(e) => interrupted(job, e).await,
        },
        Err(e) => not_recorded(e),
    }
}

/// A run that stops without an end of its own: taken over, handed back, or unsure of what it
/// recorded (a failure after the end, which the next run takes up).
async fn interrupted(job: &JobWriter, e: StepError) -> RunEnd {
    match e {
        StepError::LeaseLost => {
            tracing::warn!("the job was claimed again elsewhere; this run stops");
            RunEnd::TakenOver
        }
        StepError::Shutdown => {
            tracing::info!("shutting down; job handed back");
            match job.release().await {
                Ok(()) => RunEnd::Released,
                Err(e) => not_recorded(e),
            }
        }
        StepError::Unrecorded(why) => {
            tracing::warn!(error = %why, "the run cannot tell what it recorded; it stops and leaves the job to its lease");
            RunEnd::Abandoned
        }
        StepError::Cancelled | StepError::Failed { .. } => {
            tracing::warn!(error = %e, "the job stops after its export ended; a later run finishes it");
            RunEnd::Abandoned
        }
    }
}

fn not_recorded(e: JobError) -> RunEnd {
    match e {
        JobError::Fenced(_) => RunEnd::TakenOver,
        JobError::Db(e) => {
            tracing::warn!(error = %e, "could not record the job's end; its lease will run out");
            RunEnd::Abandoned
        }
    }
}

/// Removes the objects of the export's attempts that did not win, now that its job is done.
/// A failure is left to the worker's periodic sweep.
pub async fn sweep(ctx: &PipelineContext, claim: &Claim, keep: Option<&str>) {
    let export = &claim.export;
    let swept = async {
        storage::sweep_strays(
            &ctx.storage,
            export.workspace_id,
            export.id,
            claim.fence.generation,
            None,
            keep,
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut conn = ctx.pool.get().await.map_err(|e| e.to_string())?;
        crate::queue::sweep::swept(&mut conn, export.id)
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = swept.await {
        tracing::warn!(error = %e, "sweeping the export's stray objects failed; the periodic sweep retries");
    }
}

/// One run of one claimed export.
struct Run<'a> {
    ctx: &'a PipelineContext,
    export: &'a ExportRecord,
    job: &'a JobWriter,
    interrupts: &'a Interrupts,
    /// The step records as this run found them.
    records: HashMap<StepName, StepRecord>,
}

impl Run<'_> {
    async fn steps(&mut self) -> Result<RunEnd, StepError> {
        self.records = self.patiently(|| self.load_records()).await?;
        // An export that ended without a file, whose webhook was not told yet (unless runs of
        // it kept stopping: then it is left untold, and the export as it ended).
        if matches!(
            self.export.status,
            ExportStatus::Failed | ExportStatus::Cancelled | ExportStatus::Expired
        ) {
            if self.job.fence().generation > self.ctx.retry.max_claims {
                tracing::warn!("the claim cap was reached; the webhook of this end is not sent");
                self.job.job_done().await?;
                return Ok(RunEnd::Done);
            }
            return self.after_end().await;
        }
        if self.job.fence().generation > self.ctx.retry.max_claims {
            return Err(StepError::failed(
                FailureKind::Fatal,
                format!(
                    "gave up after {} runs that did not finish (their workers kept stopping)",
                    self.ctx.retry.max_claims
                ),
                "the claim cap was reached",
            ));
        }
        let options = self.export.options().map_err(|e| {
            StepError::failed(
                FailureKind::Fatal,
                "the export's stored options cannot be read",
                e,
            )
        })?;
        let selection = Selection {
            workspace_id: self.export.workspace_id,
            tag_ids: self.export.tag_ids.clone(),
            filter: options.filter.clone(),
        };
        let stored = match self.done::<StoredFile>(StepName::StreamExport)? {
            // Resumed after the file was written (a crash before the notification).
            Some(stored) => stored,
            None => {
                if self.job.cancel_requested().await? {
                    return Err(StepError::Cancelled);
                }
                self.job.processing().await?;
                let filter = self
                    .memo(
                        StepName::ResolveTagFilter,
                        self.patiently(|| async {
                            let mut conn = self.ctx.pool.get().await.map_err(DbError::from)?;
                            resolve_tag_filter::run(&mut conn, &selection).await
                        }),
                    )
                    .await?;
                self.stream_with_retries(&selection, &filter, &options)
                    .await?
            }
        };
        // The file is the export's now: nothing that follows may fail the export.
        match self.after_file(&stored).await {
            Err(StepError::Failed { public, source, .. }) => {
                tracing::warn!(error = %public, cause = %source, "the job could not finish after its file was written; a later run resumes it");
                Ok(RunEnd::Abandoned)
            }
            other => other,
        }
    }

    /// The caller's webhook and the notification (unless sent already), then the end of the
    /// job.
    async fn after_file(&self, stored: &StoredFile) -> Result<RunEnd, StepError> {
        if self.webhook().await? == RunEnd::Released {
            return Ok(RunEnd::Released);
        }
        if self
            .done::<Notification>(StepName::SendNotification)?
            .is_none()
            && self.notify(stored.rows).await? == RunEnd::Released
        {
            return Ok(RunEnd::Released);
        }
        self.finish_job(Some(&stored.storage_key)).await
    }

    /// After an export ended without a file: its webhook, then the end of the job.
    async fn after_end(&self) -> Result<RunEnd, StepError> {
        if self.webhook().await? == RunEnd::Released {
            return Ok(RunEnd::Released);
        }
        self.finish_job(None).await
    }

    /// Ends the job, then sweeps the objects of other claims (all of them but `keep`, the
    /// export's file).
    async fn finish_job(&self, keep: Option<&str>) -> Result<RunEnd, StepError> {
        self.job.job_done().await?;
        let claim = Claim {
            export: self.export.clone(),
            fence: self.job.fence(),
        };
        sweep(self.ctx, &claim, keep).await;
        Ok(RunEnd::Done)
    }

    /// The caller's webhook, when one is due: once per end it is told of, recorded, and never
    /// a failure of the export (a delivery that gave up is recorded and logged). A replica
    /// that cannot send webhooks leaves it to one that can.
    async fn webhook(&self) -> Result<RunEnd, StepError> {
        let export = self.job.current().await?;
        let (Some(due), Some(url)) = (export.webhook_due.clone(), export.notify_url.clone()) else {
            return Ok(RunEnd::Done);
        };
        let Some(event_type) = EventType::for_status(&due) else {
            tracing::warn!(due, "no webhook event for this end; none sent");
            return Ok(RunEnd::Done);
        };
        let step = StepName::SendWebhook;
        if self
            .done::<WebhookSent>(step)?
            .is_some_and(|sent| sent.event == due)
        {
            return Ok(RunEnd::Done);
        }
        let Some(delivery) = &self.ctx.webhooks else {
            tracing::info!("no webhook sender here; the job waits for a replica with one");
            self.job.await_webhooks().await?;
            return Ok(RunEnd::Released);
        };
        // When the end happened, as recorded: every delivery of this event is the same bytes.
        let timestamp = match event_type {
            EventType::ExportExpired => export.updated_at,
            _ => export.finished_at.unwrap_or(export.updated_at),
        };
        let event = WebhookEvent {
            event_type,
            timestamp,
            data: ExportEventData {
                export_id: export.id,
                workspace_id: export.workspace_id,
                status: event_type.status().to_owned(),
                total_rows: export.total_rows,
                processed_rows: export.processed_rows,
                size_bytes: export.size_bytes,
                sha256: export.sha256.clone(),
                error_message: export.error_message.clone(),
                filename: export.filename.clone(),
            },
        };
        let sent = async {
            // Interrupted, the next run sends it again (under the same webhook-id).
            let outcome = self.interrupts.race(delivery.deliver(&url, &event)).await?;
            if !outcome.is_delivered() {
                tracing::warn!(%outcome, "the webhook was not delivered");
            }
            Ok(WebhookSent {
                event: due.clone(),
                webhook_id: event.webhook_id(),
                delivered: outcome.is_delivered(),
                attempts: outcome.attempts(),
                outcome: outcome.to_string(),
            })
        };
        let sent = self.attempt(step, sent, |_| None).await?;
        self.job.webhook_sent(&due, &to_json(&sent)).await?;
        Ok(RunEnd::Done)
    }

    /// Runs `read` again, with backoff, while it fails because the database went away, for
    /// as long as the job's writes would wait.
    async fn patiently<T, F, Fut>(&self, mut read: F) -> Result<T, StepError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match read().await {
                Err(e) if e.is_transient() && started.elapsed() < self.job.patience() => {
                    tracing::debug!(error = %e, "a read failed on a lost connection; retrying");
                    self.interrupts.sleep(backoff).await?;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn load_records(&self) -> Result<HashMap<StepName, StepRecord>, StepError> {
        let mut conn = self.ctx.pool.get().await.map_err(DbError::from)?;
        Ok(crate::queue::steps::load(&mut conn, self.export.id).await?)
    }

    /// The output of a step that succeeded (or was skipped) in an earlier run.
    fn done<T: DeserializeOwned>(&self, step: StepName) -> Result<Option<T>, StepError> {
        match self.records.get(&step) {
            Some(record) => Ok(record.done_output()?),
            None => Ok(None),
        }
    }

    /// Failed attempts of `step` so far.
    fn failures(&self, step: StepName) -> i32 {
        self.records.get(&step).map_or(0, |r| r.failures)
    }

    /// Runs a step unless it succeeded before, and records how it ended.
    async fn memo<T, F>(&self, step: StepName, run: F) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, StepError>>,
    {
        if let Some(output) = self.done(step)? {
            return Ok(output);
        }
        self.attempt(step, run, |output| {
            Some((StepStatus::Succeeded, to_json(output)))
        })
        .await
    }

    /// One attempt of `step`, recorded, timed and logged. `record` says how a success is
    /// recorded: a status and output, or `None` when the step's run recorded it itself.
    async fn attempt<T, F>(
        &self,
        step: StepName,
        run: F,
        record: impl FnOnce(&T) -> Option<(StepStatus, serde_json::Value)>,
    ) -> Result<T, StepError>
    where
        F: Future<Output = Result<T, StepError>>,
    {
        let failures = self.failures(step);
        if failures >= self.ctx.retry.max_failures {
            return Err(self.gave_up(step, failures));
        }
        let start = self.job.step_started(step).await?;
        let span = tracing::info_span!("step", step = %step, attempt = start.attempts);
        async {
            self.ctx.hooks.before_step(step);
            let started = Instant::now();
            let result = run.await;
            self.observe(step, started, &result);
            match result {
                Ok(output) => {
                    if let Some((status, json)) = record(&output) {
                        self.job.step_finished(step, status, &json).await?;
                    }
                    Ok(output)
                }
                Err(error) => {
                    self.record_failure(step, &error).await?;
                    Err(error)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Records a failed attempt with its full cause (this table is for operators, not
    /// callers). Interruptions are not failures: the step stays `running` until a run
    /// finishes it.
    async fn record_failure(&self, step: StepName, error: &StepError) -> Result<(), StepError> {
        if matches!(error, StepError::Failed { .. }) {
            self.job.step_failed(step, &error.to_string()).await?;
        }
        Ok(())
    }

    /// Counts one attempt of a step in this replica's metrics and logs its end, once.
    fn observe<T>(&self, step: StepName, started: Instant, result: &Result<T, StepError>) {
        let elapsed = started.elapsed();
        let failed = matches!(result, Err(StepError::Failed { .. }));
        self.ctx.metrics.step_attempt(step, elapsed, failed);
        let outcome = match result {
            Ok(_) => "succeeded",
            Err(StepError::Failed { .. }) => "failed",
            Err(StepError::Cancelled) => "cancelled",
            Err(StepError::LeaseLost) => "taken over",
            Err(StepError::Shutdown) => "handed back",
            Err(StepError::Unrecorded(_)) => "unknown",
        };
        tracing::info!(
            duration_ms = elapsed.as_millis() as u64,
            outcome,
            "step ended"
        );
    }

    /// Metadata in a fresh snapshot, then the stream, retried as the policy allows; returns
    /// once the export is COMPLETED.
    async fn stream_with_retries(
        &self,
        selection: &Selection,
        filter: &TagFilter,
        options: &ExportOptions,
    ) -> Result<StoredFile, StepError> {
        let fence = self.job.fence();
        let storage_key =
            storage::attempt_key(self.export.workspace_id, self.export.id, fence.generation);
        let (mut snapshot, mut metadata) = if filter.matches_nothing() {
            let empty = ExportMetadata::default();
            self.job
                .step_started(StepName::ResolveExportMetadata)
                .await?;
            self.job
                .step_finished(
                    StepName::ResolveExportMetadata,
                    StepStatus::Skipped,
                    &to_json(&empty),
                )
                .await?;
            self.job.total_rows(0).await?;
            (None, empty)
        } else {
            let (snapshot, metadata) = self.fresh_metadata(selection).await?;
            (Some(snapshot), metadata)
        };

        let step = StepName::StreamExport;
        let mut failures = self.failures(step);
        let mut retries_left = self.ctx.retry.stream_retries;
        let mut backoff = self.ctx.retry.backoff;
        loop {
            self.interrupts.check()?;
            if failures >= self.ctx.retry.max_failures {
                return Err(self.gave_up(step, failures));
            }
            let attempt = async {
                let input = StreamInput {
                    snapshot: &mut snapshot,
                    selection,
                    metadata: &metadata,
                    options,
                    storage_key: &storage_key,
                    filename: &self.export.filename,
                };
                self.job.start_attempt().await?;
                stream_export::run(self.ctx, self.job, self.interrupts, input).await
            };
            // The completion records the step's success, in the transaction that makes the
            // export COMPLETED.
            let attempt = attempt_then_complete(self, attempt, &storage_key);
            let error = match self.attempt(step, attempt, |_| None).await {
                Ok(stored) => return Ok(stored),
                Err(error) => error,
            };
            let StepError::Failed {
                kind,
                public,
                source,
            } = &error
            else {
                return Err(error);
            };
            failures += 1;
            if *kind == FailureKind::Fatal || retries_left == 0 {
                return Err(error);
            }
            tracing::warn!(error = %public, cause = %source, retries_left, "stream attempt failed; retrying");
            retries_left -= 1;
            self.ctx.metrics.step_retried(step);
            self.interrupts.sleep(backoff).await?;
            backoff *= 2;
            if !filter.matches_nothing() && (*kind == FailureKind::Read || snapshot.is_none()) {
                // The snapshot's transaction may have died with the error (or the snapshot with
                // the task that read it): read from a new one.
                let (fresh, recomputed) = self.fresh_metadata(selection).await?;
                snapshot = Some(fresh);
                metadata = recomputed;
            }
        }
    }

    /// The failure of a step that reached its cap of failed attempts.
    fn gave_up(&self, step: StepName, failures: i32) -> StepError {
        let last = self
            .records
            .get(&step)
            .and_then(|r| r.error.clone())
            .unwrap_or_default();
        let why = if last.starts_with(crate::queue::CRASHED) {
            ": its worker crashed"
        } else {
            ""
        };
        StepError::failed(
            FailureKind::Fatal,
            format!("gave up after {failures} failed attempts of step {step}{why}"),
            format!("the last attempt: {last}"),
        )
    }

    /// Opens a snapshot and computes its metadata. Always recomputed, even when an earlier
    /// run recorded the step as succeeded: that output described a snapshot that died with
    /// its worker.
    async fn fresh_metadata(
        &self,
        selection: &Selection,
    ) -> Result<(Snapshot, ExportMetadata), StepError> {
        let (snapshot, metadata) = self
            .attempt(
                StepName::ResolveExportMetadata,
                // A connection lost before or during the query: a new snapshot, once the
                // database is back.
                self.patiently(|| async {
                    let snapshot = Snapshot::open(&self.ctx.database)
                        .await
                        .map_err(StepError::read)?;
                    let metadata = resolve_export_metadata::run(&snapshot, selection).await?;
                    Ok((snapshot, metadata))
                }),
                |(_, metadata)| Some((StepStatus::Succeeded, to_json(metadata))),
            )
            .await?;
        self.job.total_rows(metadata.total_rows).await?;
        Ok((snapshot, metadata))
    }

    /// The notification step, unless the workspace wants none. A replica without a mail
    /// transport does not record it: it leaves the job to a replica that has one.
    async fn notify(&self, rows: i64) -> Result<RunEnd, StepError> {
        let step = StepName::SendNotification;
        let recipient = {
            let mut conn = self.ctx.pool.get().await.map_err(DbError::from)?;
            send_notification::recipient(&mut conn, self.export).await?
        };
        let sent = match recipient {
            Err(skipped) => {
                self.attempt(step, async { Ok(skipped) }, |skipped| {
                    Some((StepStatus::Skipped, to_json(skipped)))
                })
                .await
            }
            Ok(to) => match &self.ctx.mailer {
                None => {
                    tracing::info!("no mail transport here; the job waits for a replica with one");
                    self.job.await_mailer().await?;
                    return Ok(RunEnd::Released);
                }
                Some(mailer) => {
                    let sent = send_notification::send(mailer, self.export, to, rows);
                    self.attempt(step, sent, |sent| {
                        Some((StepStatus::Succeeded, to_json(sent)))
                    })
                    .await
                }
            },
        };
        match sent {
            Ok(_) => Ok(RunEnd::Done),
            // A finished export stays finished: a failed mail is logged and recorded, nothing
            // more.
            Err(StepError::Failed { public, source, .. }) => {
                tracing::error!(error = %public, cause = %source, "notification not sent");
                Ok(RunEnd::Done)
            }
            Err(interrupted) => Err(interrupted),
        }
    }
}

/// The stream attempt, then the completion that makes its file the export's. An attempt
/// whose file cannot become the export's (a cancel came first, or another claim holds the job)
/// removes its own object.
async fn attempt_then_complete(
    run: &Run<'_>,
    attempt: impl Future<Output = Result<StoredFile, StepError>>,
    storage_key: &str,
) -> Result<StoredFile, StepError> {
    let stored = attempt.await?;
    let file = CompletedFile {
        storage_key: &stored.storage_key,
        size_bytes: stored.size_bytes,
        sha256: &stored.sha256,
        rows: stored.rows,
        expires_at: chrono::Utc::now()
            + chrono::TimeDelta::from_std(run.ctx.retention).unwrap_or(chrono::TimeDelta::MAX),
    };
    let lost = match run
        .job
        .complete(StepName::StreamExport, &to_json(&stored), &file)
        .await
    {
        Ok(Completion::Completed) => return Ok(stored),
        Ok(Completion::Cancelled) => StepError::Cancelled,
        Err(JobError::Fenced(_)) => StepError::LeaseLost,
        // Whether the completion committed is unknown: nothing more is written in this run
        // (the next run reads what was recorded); the object stays, and the sweep at the
        // job's end removes it unless the export points at it.
        Err(JobError::Db(e)) => return Err(StepError::Unrecorded(e.to_string())),
    };
    if let Err(e) = run.ctx.storage.delete(storage_key).await {
        tracing::warn!(error = %e, key = storage_key, "removing the attempt's object failed; the sweep retries");
    }
    Err(lost)
}

/// The recorded output of `send-webhook`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct WebhookSent {
    /// The end it told of (`completed`, `failed`…).
    event: String,
    webhook_id: String,
    /// Whether the receiver answered 2xx (if not, every try within the time allowed failed).
    delivered: bool,
    attempts: u32,
    outcome: String,
}

fn to_json<T: Serialize>(output: &T) -> serde_json::Value {
    serde_json::to_value(output).expect("step outputs serialise")
}
