//! The worker pool: claims jobs from PostgreSQL and runs them, a bounded number at a time.
//!
//! A job is an `exports` row whose job is not done. A worker claims one with
//! `FOR UPDATE SKIP LOCKED` (replicas never block on each other) and holds it under a lease
//! that a heartbeat renews; if the worker dies, the lease expires and any replica claims the job
//! again, and the runner resumes it at the first step that did not finish.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::db::schema::exports;
use crate::db::{DbError, PooledConn};
use crate::exports::ExportRecord;
use crate::pipeline::PipelineContext;
use crate::pipeline::runner::{self, Interrupts};

/// How the pool claims and holds jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once by this replica.
    pub workers: usize,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// How often an idle pool looks for jobs whose lease expired (new jobs wake it at once).
    pub poll_interval: Duration,
    /// This replica's name in `lease_owner`.
    pub worker_id: String,
}

impl WorkerConfig {
    /// Defaults for `workers` slots (0: this replica serves the API only): a 30 s lease
    /// renewed every 10 s.
    pub fn new(workers: usize) -> Self {
        WorkerConfig {
            workers,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            worker_id: format!("exportd-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

/// Claims and runs jobs until `shutdown`; then interrupts running jobs (they release their
/// lease so another replica resumes them) and waits for them.
pub async fn run(ctx: PipelineContext, config: WorkerConfig, shutdown: CancellationToken) {
    let ctx = Arc::new(ctx);
    let slots = Arc::new(Semaphore::new(config.workers));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        // Register interest before looking, so a job queued during the look is not missed.
        let queued = ctx.events.job_queued();
        match claim(&ctx, &config).await {
            Ok(Some(export)) => {
                let (ctx, config, shutdown) = (ctx.clone(), config.clone(), shutdown.clone());
                running.spawn(async move {
                    run_one(&ctx, &config, export, shutdown).await;
                    drop(permit);
                });
                // A freed slot may find more work at once; so may another idle pool.
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "claiming a job failed"),
        }
        drop(permit);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = queued => {}
            _ = tokio::time::sleep(config.poll_interval) => {}
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// Runs one claimed job with a heartbeat beside it.
async fn run_one(
    ctx: &PipelineContext,
    config: &WorkerConfig,
    export: ExportRecord,
    shutdown: CancellationToken,
) {
    let interrupts = Interrupts {
        lease_lost: CancellationToken::new(),
        shutdown,
    };
    let heartbeat = tokio::spawn(heartbeat(
        ctx.clone(),
        config.clone(),
        export.id,
        interrupts.lease_lost.clone(),
    ));
    tracing::info!(export_id = %export.id, "job claimed");
    let _running = ctx.metrics.job_running();
    runner::run(ctx, &export, &config.worker_id, &interrupts).await;
    heartbeat.abort();
}

/// Renews the lease every third of its length; fires `lost` when the row is no longer ours.
async fn heartbeat(
    ctx: PipelineContext,
    config: WorkerConfig,
    export_id: uuid::Uuid,
    lost: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        match renew(&ctx, &config, export_id).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            // A passing database error: the lease has two more renewals before it expires.
            Err(e) => tracing::warn!(export_id = %export_id, error = %e, "lease renewal failed"),
        }
    }
}

fn lease_interval(lease: Duration) -> String {
    format!("{} milliseconds", lease.as_millis())
}

async fn renew(
    ctx: &PipelineContext,
    config: &WorkerConfig,
    export_id: uuid::Uuid,
) -> Result<bool, DbError> {
    let mut conn = ctx.pool.get().await?;
    let n = diesel::sql_query(
        "UPDATE exports SET lease_expires_at = now() + $1::interval \
         WHERE id = $2 AND lease_owner = $3 AND NOT job_done",
    )
    .bind::<Text, _>(lease_interval(config.lease))
    .bind::<diesel::sql_types::Uuid, _>(export_id)
    .bind::<Text, _>(&config.worker_id)
    .execute(&mut conn)
    .await?;
    Ok(n == 1)
}

/// The jobs a worker may claim now: not done, and not leased or with a lease run out.
macro_rules! claimable {
    () => {
        "NOT job_done AND (lease_expires_at IS NULL OR lease_expires_at < now())"
    };
}

/// Claims the oldest claimable job, if any.
pub async fn claim(
    ctx: &PipelineContext,
    config: &WorkerConfig,
) -> Result<Option<ExportRecord>, DbError> {
    let mut conn = ctx.pool.get().await?;
    let claimed: Option<ClaimedId> = diesel::sql_query(concat!(
        "UPDATE exports SET lease_owner = $1, lease_expires_at = now() + $2::interval \
         WHERE id = (SELECT id FROM exports WHERE ",
        claimable!(),
        " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING id",
    ))
    .bind::<Text, _>(&config.worker_id)
    .bind::<Text, _>(lease_interval(config.lease))
    .get_result(&mut conn)
    .await
    .optional()?;
    let Some(ClaimedId { id }) = claimed else {
        return Ok(None);
    };
    let record = exports::table
        .find(id)
        .select(ExportRecord::as_select())
        .first(&mut conn)
        .await?;
    Ok(Some(record))
}

/// How many jobs wait for a worker, across all replicas.
pub async fn queue_depth(conn: &mut PooledConn) -> Result<i64, DbError> {
    let QueueDepth { depth } = diesel::sql_query(concat!(
        "SELECT count(*) AS depth FROM exports WHERE ",
        claimable!()
    ))
    .get_result(conn)
    .await?;
    Ok(depth)
}

#[derive(diesel::QueryableByName)]
struct QueueDepth {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    depth: i64,
}

#[derive(diesel::QueryableByName)]
struct ClaimedId {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: uuid::Uuid,
}
