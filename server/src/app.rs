//! The assembled service: gRPC (with health and reflection), the worker pool and the
//! notification listener, built from [`Settings`] and run until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use opendal::Operator;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::{ExportApi, ExportServiceServer};
use crate::db::{self, DbError, PgPool, Target};
use crate::events::{Events, Listener};
use crate::janitor::{self, JanitorConfig};
use crate::mail::Mailer;
use crate::metrics::{self, Metrics};
use crate::pipeline::{FaultHooks, PipelineContext, RetryPolicy};
use crate::tls::TlsSettings;
use crate::webhook::WebhookConfig;
use crate::worker::{self, WorkerConfig};

/// Everything the service needs, already parsed.
pub struct Settings {
    pub database_url: String,
    pub storage: Operator,
    /// `None`: no notification mail.
    pub mailer: Option<Mailer>,
    /// Port 0 picks a free port (see [`Application::local_addr`]).
    pub listen: SocketAddr,
    /// Where to serve Prometheus metrics at `/metrics`; `None`: nowhere. Port 0 picks a free
    /// port (see [`Application::metrics_addr`]).
    pub metrics_listen: Option<SocketAddr>,
    pub worker: WorkerConfig,
    pub batch_size: usize,
    pub retry: RetryPolicy,
    /// A workspace's cap on exports pending or processing (across replicas).
    pub max_queued_exports: u32,
    /// `None`: plaintext gRPC.
    pub tls: Option<TlsSettings>,
    /// How long a shutdown may take: streams end and jobs are handed back at once, and
    /// whatever still runs after this is abandoned (its lease runs out elsewhere).
    pub shutdown_timeout: Duration,
    /// Faults on purpose for tests of the real binary; none in production.
    pub hooks: FaultHooks,
    /// Retention and clean-up.
    pub janitor: JanitorConfig,
    /// The callers' webhooks: allowed prefixes and the signing secret (off by default).
    pub webhooks: WebhookConfig,
}

/// Requests larger than this are refused: the largest legitimate one (1,000 tag ids) is ~40 KiB.
const MAX_REQUEST_BYTES: usize = 256 << 10;

/// Connections of the jobs' pool a running job may hold at its peak: one for the progress
/// written beside the stream (and the step records), one for a lease renewal that falls at the
/// same moment. The snapshot's connection, which also runs the metadata query, is outside the
/// pool.
const CONNECTIONS_PER_JOB: usize = 2;
/// Connections of the jobs' pool beside the jobs': claims and the sweep.
const CONNECTIONS_FOR_QUEUE: usize = 2;
/// Connections of the gRPC handlers' pool, whatever the number of workers. The handlers have
/// a pool of their own, so that a burst of calls cannot starve a job's writes or heartbeat.
const CONNECTIONS_FOR_API: usize = 10;
/// How often the health service looks whether the database answers.
const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe that takes longer than this counts as "cannot reach the database".
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors starting or running the service.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics endpoint: cannot listen on {addr}: {source}")]
    MetricsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("webhooks: {0}")]
    Webhooks(String),
}

/// A bound, connected service, ready to run.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    settings: Settings,
    /// The gRPC handlers' pool.
    pool: PgPool,
    /// The jobs' pool: their writes, heartbeats, claims.
    jobs_pool: PgPool,
    /// One connection for the health probe.
    health_pool: PgPool,
    /// The database, as every connection reaches it.
    target: Target,
    events: Events,
    notifications: Listener,
    metrics: Metrics,
    /// The bound metrics endpoint and its address, when asked for.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
}

impl Application {
    /// Binds the listener, builds the pool and starts listening for notifications, so that once
    /// this returns the service can take calls and no change goes unheard.
    pub async fn build(settings: Settings) -> Result<Application, AppError> {
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| AppError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| AppError::Bind {
            addr: settings.listen,
            source,
        })?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(
                bind(addr)
                    .await
                    .map_err(|source| AppError::MetricsBind { addr, source })?,
            ),
            None => None,
        };
        // A session frozen inside a transaction (a stalled process) holds its row locks;
        // PostgreSQL ends it once it has been idle in the transaction for a lease.
        let target = Target::parse(&settings.database_url, Some(settings.worker.lease))
            .map_err(DbError::from)?;
        let pool = db::pool(&target, CONNECTIONS_FOR_API)?;
        let jobs_pool = db::pool(
            &target,
            settings.worker.workers * CONNECTIONS_PER_JOB + CONNECTIONS_FOR_QUEUE,
        )?;
        let health_pool = db::pool(&target, 1)?;
        let notifications = Events::listen(&settings.database_url).await?;
        Ok(Application {
            listener,
            local_addr,
            settings,
            pool,
            jobs_pool,
            health_pool,
            target,
            events: Events::default(),
            notifications,
            metrics: Metrics::default(),
            metrics_listener,
        })
    }

    /// The bound address of the metrics endpoint, if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The bound address (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves; then stops claiming and taking calls, ends open
    /// streams with UNAVAILABLE, hands running jobs back to the queue at their next batch and
    /// returns, within the settings' shutdown timeout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let stop = CancellationToken::new();
        let Settings {
            database_url,
            storage,
            mailer,
            worker: worker_config,
            batch_size,
            retry,
            tls,
            max_queued_exports,
            shutdown_timeout,
            hooks,
            janitor,
            webhooks,
            ..
        } = self.settings;
        let delivery = webhooks
            .delivery()
            .map_err(|e| AppError::Webhooks(e.to_string()))?
            .map(std::sync::Arc::new);
        // Before anything is spawned: an error here leaves nothing running.
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            server = server.tls_config(tls.server_config())?;
        }

        let listener_task = tokio::spawn(self.events.clone().run(
            database_url.clone(),
            self.notifications,
            stop.clone(),
        ));
        // This replica's name in the leases it holds and the steps it runs.
        let worker_id = format!("exportd-{}", uuid::Uuid::new_v4().simple());
        let context = PipelineContext {
            pool: self.jobs_pool.clone(),
            database: self.target.clone(),
            storage: storage.clone(),
            mailer,
            events: self.events.clone(),
            batch_size,
            retry,
            metrics: self.metrics.clone(),
            worker_id: worker_id.clone(),
            // Waiting longer than a lease for the database is pointless: by then another
            // replica may hold the job.
            db_patience: worker_config.lease,
            hooks,
            retention: janitor.retention,
            webhooks: delivery,
        };
        let workers = tokio::spawn(worker::run(context, worker_config, stop.clone()));
        let janitor_task = tokio::spawn(janitor::run(
            self.jobs_pool.clone(),
            storage.clone(),
            self.metrics.clone(),
            janitor,
            stop.clone(),
        ));
        let metrics_task = self.metrics_listener.map(|(listener, addr)| {
            tracing::info!(%addr, "serving metrics at /metrics");
            tokio::spawn(metrics::http::serve(
                listener,
                self.metrics.clone(),
                self.pool.clone(),
                stop.clone(),
            ))
        });

        let api = ExportApi::new(
            self.pool.clone(),
            storage,
            self.events.clone(),
            max_queued_exports,
            stop.clone(),
            self.metrics.clone(),
            webhooks.allow.clone(),
        );
        let export_service =
            ExportServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES);
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut health = HealthProbe {
            health,
            pool: self.health_pool.clone(),
            serving: None,
        };
        // The first status is told before the server takes calls, so that a Check never finds
        // the service unknown (NOT_FOUND) just after start.
        health.probe().await;
        let health_task = tokio::spawn(report_health(health, stop.clone()));
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(contact_export::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Both versions: grpcurl 1.8 speaks only v1alpha.
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        tracing::info!(addr = %self.local_addr, tls = tls.is_some(), %worker_id, "serving");
        let serve = server
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(export_service)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.listener),
                stop.clone().cancelled_owned(),
            );
        let mut serve = std::pin::pin!(serve);
        let stopped_by_itself = tokio::select! {
            // The server stopped by itself: a failure.
            served = &mut serve => Some(served),
            _ = shutdown => {
                tracing::info!(timeout_s = shutdown_timeout.as_secs_f64(), "shutting down");
                None
            }
        };
        // Streams end and workers hand their jobs back, so the server drains quickly.
        stop.cancel();
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        let served = match stopped_by_itself {
            Some(served) => served,
            None => tokio::time::timeout_at(deadline, &mut serve)
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!("calls were still open at the shutdown timeout; dropped");
                    Ok(())
                }),
        };
        let workers_abort = workers.abort_handle();
        if tokio::time::timeout_at(deadline, workers).await.is_err() {
            tracing::warn!(
                "jobs were still running at the shutdown timeout; abandoned (their leases run out)"
            );
            workers_abort.abort();
        }
        let _ = tokio::time::timeout_at(deadline, listener_task).await;
        let _ = tokio::time::timeout_at(deadline, janitor_task).await;
        let _ = health_task.await;
        if let Some(task) = metrics_task
            && let Ok(Ok(Err(e))) = tokio::time::timeout_at(deadline, task).await
        {
            tracing::warn!(error = %e, "the metrics endpoint failed");
        }
        served?;
        Ok(())
    }
}

/// What the health service was last told, and how to ask again.
struct HealthProbe {
    health: tonic_health::server::HealthReporter,
    pool: PgPool,
    /// `None` before the first probe.
    serving: Option<bool>,
}

impl HealthProbe {
    /// Pings the database and tells the health service when the answer changed: SERVING
    /// while the database answers, NOT_SERVING while it does not (so that a load balancer
    /// drains this replica: every call would fail).
    async fn probe(&mut self) {
        let up = tokio::time::timeout(HEALTH_PROBE_TIMEOUT, db::ping(&self.pool))
            .await
            .is_ok_and(|r| r.is_ok());
        if self.serving == Some(up) {
            return;
        }
        if up {
            if self.serving == Some(false) {
                tracing::info!("the database answers again: health is SERVING");
            }
            self.tell(true).await;
        } else {
            tracing::warn!("the database does not answer: health is NOT_SERVING");
            self.tell(false).await;
        }
        self.serving = Some(up);
    }

    /// Sets the status of the export service and of the server as a whole (`""`).
    async fn tell(&self, serving: bool) {
        let status = if serving {
            self.health
                .set_serving::<ExportServiceServer<ExportApi>>()
                .await;
            tonic_health::ServingStatus::Serving
        } else {
            self.health
                .set_not_serving::<ExportServiceServer<ExportApi>>()
                .await;
            tonic_health::ServingStatus::NotServing
        };
        self.health.set_service_status("", status).await;
    }
}

/// Probes every [`HEALTH_PROBE_EVERY`] until `stop`; NOT_SERVING once the service stops.
async fn report_health(mut probe: HealthProbe, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEALTH_PROBE_EVERY) => {}
        }
        probe.probe().await;
    }
    probe.tell(false).await;
}

/// A listener on `addr` and the address it got (the real port when asked for port 0).
async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
