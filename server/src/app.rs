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
use crate::db::{self, DbError, PgPool};
use crate::events::{Events, Listener};
use crate::mail::Mailer;
use crate::metrics::{self, Metrics};
use crate::pipeline::{PipelineContext, RetryPolicy};
use crate::tls::TlsSettings;
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
}

/// Requests larger than this are refused: the largest legitimate one (1,000 tag ids) is ~40 KiB.
const MAX_REQUEST_BYTES: usize = 256 << 10;

/// Pooled connections a running job may hold at its peak: one for the progress written beside
/// the stream (and the step records), one for a lease renewal that falls at the same moment.
/// The snapshot's connection, which also runs the metadata query, is outside the pool.
const CONNECTIONS_PER_JOB: usize = 2;
/// Connections kept for the gRPC handlers, whatever the number of workers.
const CONNECTIONS_FOR_API: usize = 10;

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
}

/// A bound, connected service, ready to run.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    settings: Settings,
    pool: PgPool,
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
        let pool = db::pool(
            &settings.database_url,
            settings.worker.workers * CONNECTIONS_PER_JOB + CONNECTIONS_FOR_API,
        )?;
        let notifications = Events::listen(&settings.database_url).await?;
        Ok(Application {
            listener,
            local_addr,
            settings,
            pool,
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

    /// Serves until `shutdown` resolves; then stops taking calls, ends open streams, hands
    /// running jobs back to the queue and returns.
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
            ..
        } = self.settings;
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
        let context = PipelineContext {
            pool: self.pool.clone(),
            database_url,
            storage: storage.clone(),
            mailer,
            events: self.events.clone(),
            batch_size,
            retry,
            metrics: self.metrics.clone(),
        };
        let workers = tokio::spawn(worker::run(context, worker_config, stop.clone()));
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
        );
        let export_service =
            ExportServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ExportServiceServer<ExportApi>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(contact_export::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Both versions: grpcurl 1.8 speaks only v1alpha.
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        tracing::info!(addr = %self.local_addr, tls = tls.is_some(), "serving");
        let stop_on_signal = stop.clone();
        let served = server
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(export_service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), async move {
                shutdown.await;
                tracing::info!("shutting down");
                // Streams end and workers release their jobs, so the server drains quickly.
                stop_on_signal.cancel();
            })
            .await;
        stop.cancel();
        let _ = workers.await;
        let _ = listener_task.await;
        if let Some(task) = metrics_task
            && let Ok(Err(e)) = task.await
        {
            tracing::warn!(error = %e, "the metrics endpoint failed");
        }
        served?;
        Ok(())
    }
}

/// A listener on `addr` and the address it got (the real port when asked for port 0).
async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
