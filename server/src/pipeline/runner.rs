//! Runs one claimed export through its steps: memoisation, retries, status and failure.

use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::PipelineContext;
use super::csv::CsvOptions;
use super::job_state::JobState;
use super::selection::Selection;
use super::snapshot::Snapshot;
use super::step::{self, FailureKind, StepError};
use super::step_store::{self, StepRecord};
use super::steps::resolve_export_metadata::{self, ExportMetadata};
use super::steps::resolve_tag_filter::{self, TagFilter};
use super::steps::send_notification;
use super::steps::stream_export::{self, StoredFile, StreamInput};
use crate::db::DbError;
use crate::exports::{ExportRecord, ExportStatus};
use crate::storage;

/// What can stop a running job from outside, checked between batches.
#[derive(Debug, Clone)]
pub struct Interrupts {
    /// The worker's heartbeat found the lease gone: another worker owns the job.
    pub lease_lost: CancellationToken,
    /// The process is shutting down.
    pub shutdown: CancellationToken,
}

impl Interrupts {
    /// `Err` once either has fired.
    pub fn check(&self) -> Result<(), StepError> {
        if self.lease_lost.is_cancelled() {
            Err(StepError::LeaseLost)
        } else if self.shutdown.is_cancelled() {
            Err(StepError::Shutdown)
        } else {
            Ok(())
        }
    }

    async fn sleep(&self, delay: std::time::Duration) -> Result<(), StepError> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.lease_lost.cancelled() => Err(StepError::LeaseLost),
            _ = self.shutdown.cancelled() => Err(StepError::Shutdown),
        }
    }
}

/// Runs `export` (already leased by `worker`) to its end, or until interrupted. Failures are
/// logged here, once, and recorded on the export.
pub async fn run(
    ctx: &PipelineContext,
    export: &ExportRecord,
    worker: &str,
    interrupts: &Interrupts,
) {
    let state = JobState::new(ctx, export.id, worker);
    let outcome = match run_steps(ctx, export, &state, worker, interrupts).await {
        Ok(()) => return,
        Err(StepError::LeaseLost) => {
            tracing::warn!(export_id = %export.id, "lease lost; another worker continues the job");
            return;
        }
        Err(StepError::Shutdown) => {
            tracing::info!(export_id = %export.id, "shutting down; job released");
            state.release().await
        }
        Err(StepError::Cancelled) => {
            tracing::info!(export_id = %export.id, "export cancelled");
            state
                .end(ExportStatus::Cancelled, "cancelled by request")
                .await
        }
        Err(StepError::Failed { public, source, .. }) => {
            tracing::error!(export_id = %export.id, error = %public, cause = %source, "export failed");
            state.end(ExportStatus::Failed, &public).await
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(export_id = %export.id, error = %e, "could not record the job's end; its lease will expire");
    }
}

async fn run_steps(
    ctx: &PipelineContext,
    export: &ExportRecord,
    state: &JobState<'_>,
    worker: &str,
    interrupts: &Interrupts,
) -> Result<(), StepError> {
    let records: HashMap<String, StepRecord> = {
        let mut conn = ctx.pool.get().await.map_err(DbError::from)?;
        step_store::load(&mut conn, export.id)
            .await?
            .into_iter()
            .map(|r| (r.step.clone(), r))
            .collect()
    };
    let memo = Memo {
        ctx,
        state,
        worker,
        records: &records,
    };
    let selection = Selection {
        workspace_id: export.workspace_id,
        tag_ids: export.tag_ids.clone(),
    };

    let stored = match memo.done::<StoredFile>(step::STREAM_EXPORT) {
        // Resumed after the file was written (say, a crash before the notification).
        Some(stored) => stored,
        None => {
            state.check_cancelled().await?;
            state.processing().await?;
            let filter = memo
                .run(step::RESOLVE_TAG_FILTER, async {
                    let mut conn = ctx.pool.get().await.map_err(DbError::from)?;
                    resolve_tag_filter::run(&mut conn, &selection).await
                })
                .await?;
            let stored =
                stream_with_retries(ctx, export, state, &memo, &selection, &filter, interrupts)
                    .await?;
            memo.record(step::STREAM_EXPORT, "succeeded", Some(&stored), None)
                .await?;
            stored
        }
    };
    // Idempotent: a resumed job whose export is already COMPLETED sets the same values again.
    state
        .completed(
            stored.rows,
            &stored.storage_key,
            stored.size_bytes,
            &stored.sha256,
        )
        .await?;

    if memo
        .done::<send_notification::Notification>(step::SEND_NOTIFICATION)
        .is_none()
    {
        // A finished export stays finished: a failed mail is logged and recorded, nothing more.
        let sent = memo
            .run(step::SEND_NOTIFICATION, async {
                let mut conn = ctx.pool.get().await.map_err(DbError::from)?;
                send_notification::run(&mut conn, ctx.mailer.as_ref(), export, stored.rows).await
            })
            .await;
        if let Err(StepError::Failed { public, source, .. }) = &sent {
            tracing::error!(export_id = %export.id, error = %public, cause = %source, "notification not sent");
        } else {
            sent?;
        }
    }
    state.job_done().await
}

/// Metadata in a fresh snapshot, then the stream, retried as the policy allows.
async fn stream_with_retries(
    ctx: &PipelineContext,
    export: &ExportRecord,
    state: &JobState<'_>,
    memo: &Memo<'_>,
    selection: &Selection,
    filter: &TagFilter,
    interrupts: &Interrupts,
) -> Result<StoredFile, StepError> {
    let stored = export.options();
    let options = CsvOptions {
        neutralize_formulas: stored.neutralize_formulas,
        delimiter: stored.delimiter,
        include_bom: stored.include_bom,
        line_ending: stored.line_ending,
    };
    let storage_key = storage::object_key(export.workspace_id, export.id);
    let (mut snapshot, mut metadata) = if filter.matches_nothing() {
        let empty = ExportMetadata::default();
        memo.record(step::RESOLVE_EXPORT_METADATA, "skipped", Some(&empty), None)
            .await?;
        state.total_rows(0).await?;
        (None, empty)
    } else {
        let (snapshot, metadata) = fresh_metadata(ctx, state, memo, selection).await?;
        (Some(snapshot), metadata)
    };

    let mut retries_left = ctx.retry.stream_retries;
    let mut backoff = ctx.retry.backoff;
    loop {
        interrupts.check()?;
        state.step(step::STREAM_EXPORT).await?;
        let attempts = memo.start(step::STREAM_EXPORT).await?;
        if attempts > ctx.retry.max_total_stream_attempts {
            let error = StepError::failed(
                FailureKind::Fatal,
                format!("gave up after {} attempts", attempts - 1),
                "the stream step kept failing or its workers kept dying",
            );
            memo.record_failure(step::STREAM_EXPORT, &error).await?;
            return Err(error);
        }
        state.start_attempt().await?;
        let input = StreamInput {
            snapshot: &mut snapshot,
            selection,
            metadata: &metadata,
            options,
            storage_key: &storage_key,
        };
        let started = Instant::now();
        let attempt = stream_export::run(ctx, state, interrupts, input).await;
        observe(ctx, step::STREAM_EXPORT, started, &attempt);
        let error = match attempt {
            Ok(stored) => return Ok(stored),
            Err(error) => error,
        };
        memo.record_failure(step::STREAM_EXPORT, &error).await?;
        let StepError::Failed {
            kind,
            public,
            source,
        } = &error
        else {
            return Err(error);
        };
        if *kind == FailureKind::Fatal || retries_left == 0 {
            return Err(error);
        }
        tracing::warn!(export_id = %export.id, error = %public, cause = %source, retries_left, "stream attempt failed; retrying");
        retries_left -= 1;
        ctx.metrics.step_retried(step::STREAM_EXPORT);
        interrupts.sleep(backoff).await?;
        backoff *= 2;
        if !filter.matches_nothing() && (*kind == FailureKind::Read || snapshot.is_none()) {
            // The snapshot's transaction may have died with the error (or the snapshot with
            // the task that read it): read from a new one.
            let (fresh, recomputed) = fresh_metadata(ctx, state, memo, selection).await?;
            snapshot = Some(fresh);
            metadata = recomputed;
        }
    }
}

/// Opens a snapshot and computes its metadata. Always recomputed, even when an earlier run
/// recorded the step as succeeded: that output described a snapshot that died with its worker.
async fn fresh_metadata(
    ctx: &PipelineContext,
    state: &JobState<'_>,
    memo: &Memo<'_>,
    selection: &Selection,
) -> Result<(Snapshot, ExportMetadata), StepError> {
    state.step(step::RESOLVE_EXPORT_METADATA).await?;
    memo.start(step::RESOLVE_EXPORT_METADATA).await?;
    let started = Instant::now();
    let result = async {
        let snapshot = Snapshot::open(&ctx.database_url).await?;
        let metadata = resolve_export_metadata::run(&snapshot, selection).await?;
        Ok((snapshot, metadata))
    }
    .await;
    observe(ctx, step::RESOLVE_EXPORT_METADATA, started, &result);
    match result {
        Ok((snapshot, metadata)) => {
            memo.record(
                step::RESOLVE_EXPORT_METADATA,
                "succeeded",
                Some(&metadata),
                None,
            )
            .await?;
            state.total_rows(metadata.total_rows).await?;
            Ok((snapshot, metadata))
        }
        Err(error) => {
            memo.record_failure(step::RESOLVE_EXPORT_METADATA, &error)
                .await?;
            Err(error)
        }
    }
}

/// Counts one attempt of a step in this replica's metrics.
fn observe<T>(ctx: &PipelineContext, name: &str, started: Instant, result: &Result<T, StepError>) {
    let failed = matches!(result, Err(StepError::Failed { .. }));
    ctx.metrics.step_attempt(name, started.elapsed(), failed);
}

/// The persisted steps of one export.
struct Memo<'a> {
    ctx: &'a PipelineContext,
    state: &'a JobState<'a>,
    worker: &'a str,
    records: &'a HashMap<String, StepRecord>,
}

impl Memo<'_> {
    /// The output of a step that succeeded in an earlier run.
    fn done<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.records
            .get(name)
            .and_then(StepRecord::succeeded_output)
    }

    /// Runs a step unless it succeeded before, and records how it ended.
    async fn run<T, F>(&self, name: &str, step: F) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, StepError>>,
    {
        if let Some(output) = self.done(name) {
            return Ok(output);
        }
        self.state.step(name).await?;
        self.start(name).await?;
        let started = Instant::now();
        let result = step.await;
        observe(self.ctx, name, started, &result);
        match result {
            Ok(output) => {
                self.record(name, "succeeded", Some(&output), None).await?;
                Ok(output)
            }
            Err(error) => {
                self.record_failure(name, &error).await?;
                Err(error)
            }
        }
    }

    async fn start(&self, name: &str) -> Result<i32, StepError> {
        let mut conn = self.ctx.pool.get().await.map_err(DbError::from)?;
        Ok(step_store::start(&mut conn, self.state.export_id, name, self.worker).await?)
    }

    async fn record<T: Serialize>(
        &self,
        name: &str,
        status: &str,
        output: Option<&T>,
        error: Option<&str>,
    ) -> Result<(), StepError> {
        let mut conn = self.ctx.pool.get().await.map_err(DbError::from)?;
        step_store::finish(&mut conn, self.state.export_id, name, status, output, error).await?;
        Ok(())
    }

    /// Records a failed attempt with its full cause (this table is for operators, not callers).
    async fn record_failure(&self, name: &str, error: &StepError) -> Result<(), StepError> {
        if matches!(error, StepError::LeaseLost) {
            // The job is another worker's now: its records are not ours to write.
            return Ok(());
        }
        let text = error.to_string();
        self.record::<()>(name, "failed", None, Some(&text)).await
    }
}
