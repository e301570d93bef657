//! The worker pool: claims jobs ([`crate::queue`]) and runs them, a bounded number at a time.
//!
//! Each job runs as a task of its own with a heartbeat beside it that renews the claim's
//! lease. The heartbeat stops with the job however it ends, a panic included: a panicking job
//! is logged with its export, its failure recorded (it counts towards the step's cap) and its
//! lease given back, so that it is retried at once rather than left PROCESSING. A heartbeat
//! that finds the job claimed again interrupts the run at its next batch.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::pipeline::runner::{self, RunEnd};
use crate::pipeline::{Interrupts, PipelineContext};
use crate::queue::{self, Claim, ClaimPolicy, JobError, JobWriter};

/// How often an idle pool looks for expired leases, at most: a lease that runs out announces
/// nothing, so a dead worker's job waits up to this long after its lease (see
/// [`WorkerConfig::with_lease`]).
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How the pool claims and holds jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once by this replica.
    pub workers: usize,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// How often an idle pool looks for jobs whose lease expired (new jobs wake it at once).
    pub poll_interval: Duration,
    /// Jobs of one workspace running at once across all replicas.
    pub max_running_per_workspace: u32,
}

impl WorkerConfig {
    /// The same with a lease of `lease`, looked for at least three times per lease once it
    /// ran out (so a short lease is taken over soon after it ends).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.poll_interval = POLL_INTERVAL.min(lease / 3);
        self
    }

    /// Defaults for `workers` slots (0: this replica serves the API only): a 30 s lease
    /// renewed every 10 s, two jobs per workspace at once.
    pub fn new(workers: usize) -> Self {
        WorkerConfig {
            workers,
            lease: Duration::from_secs(30),
            poll_interval: POLL_INTERVAL,
            max_running_per_workspace: 2,
        }
    }
}

/// Claims and runs jobs until `shutdown`; then interrupts running jobs (they hand their
/// lease back so that another replica resumes them at once) and waits for them.
pub async fn run(ctx: PipelineContext, config: WorkerConfig, shutdown: CancellationToken) {
    if config.workers == 0 {
        return;
    }
    let ctx = Arc::new(ctx);
    let policy = ClaimPolicy {
        worker_id: ctx.worker_id.clone(),
        lease: config.lease,
        can_mail: ctx.mailer.is_some(),
        max_running_per_workspace: config.max_running_per_workspace,
        can_webhook: ctx.webhooks.is_some(),
    };
    let slots = Arc::new(Semaphore::new(config.workers));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        // Register interest before looking, so a job queued during the look is not missed.
        let queued = ctx.events.job_queued();
        match claim(&ctx, &policy).await {
            Ok(Some(claim)) => {
                let (ctx, config, shutdown) = (ctx.clone(), config.clone(), shutdown.clone());
                running.spawn(async move {
                    run_one(ctx, &config, claim, shutdown).await;
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

async fn claim(ctx: &PipelineContext, policy: &ClaimPolicy) -> Result<Option<Claim>, String> {
    let mut conn = ctx.pool.get().await.map_err(|e| e.to_string())?;
    queue::claim(&mut conn, policy)
        .await
        .map_err(|e| e.to_string())
}

/// Runs one claimed job as a task of its own, with a heartbeat beside it.
async fn run_one(
    ctx: Arc<PipelineContext>,
    config: &WorkerConfig,
    claim: Claim,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!(
        "job",
        export_id = %claim.export.id,
        generation = claim.fence.generation
    );
    let job = ctx.job_writer(&claim);
    let interrupts = Interrupts {
        lease_lost: CancellationToken::new(),
        shutdown,
    };
    // Aborted when this function returns, whatever the job did.
    let _heartbeat = AbortOnDrop(tokio::spawn(
        heartbeat(job.clone(), config.lease, interrupts.lease_lost.clone())
            .instrument(span.clone()),
    ));
    let _running = ctx.metrics.job_running();
    span.in_scope(|| tracing::info!("job claimed"));
    let task = {
        let (ctx, claim, job) = (ctx.clone(), claim.clone(), job.clone());
        tokio::spawn(
            async move { runner::run(&ctx, &claim, &job, &interrupts).await }
                .instrument(span.clone()),
        )
    };
    let panic = match task.await {
        Ok(RunEnd::Done | RunEnd::Released | RunEnd::TakenOver | RunEnd::Abandoned) => return,
        Err(e) if e.is_panic() => panic_message(e.into_panic()),
        Err(e) => e.to_string(),
    };
    async {
        tracing::error!(panic = %panic, "the job's task panicked; it goes back to the queue");
        // Not straight back: a job that crashes at once every time would spin.
        tokio::time::sleep(ctx.retry.backoff).await;
        let error = format!("{}: {panic}", queue::CRASHED);
        match job.crashed(&error).await {
            Ok(()) | Err(JobError::Fenced(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not record the crash; its lease will run out")
            }
        }
    }
    .instrument(span)
    .await;
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "unknown panic".to_owned(), |m| (*m).to_owned()),
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease every third of its length; fires `lost` when the job was claimed again.
/// A failed renewal (the database away) is tried again at the next tick: a lease has two
/// more before it runs out, and a renewal after it ran out still succeeds while nobody else
/// claimed the job.
async fn heartbeat(job: JobWriter, lease: Duration, lost: CancellationToken) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match job.renew(lease).await {
            Ok(()) => {}
            Err(JobError::Fenced(_)) => {
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
    }
}
