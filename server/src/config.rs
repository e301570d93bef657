//! `exportd` configuration: flags with environment fallbacks, read once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::Settings;
use crate::mail::Mailer;
use crate::pipeline::{FaultHooks, RetryPolicy};
use crate::tls::TlsArgs;
use crate::worker::WorkerConfig;

/// Flags of `exportd serve`.
#[derive(Clone, clap::Args)]
pub struct ServeArgs {
    /// PostgreSQL URL (libpq URI) of the database holding the CRM tables and ours.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Where files go: `fs:///path` (or a relative `fs://./exports`), `s3://bucket/prefix?region=…&endpoint=…`,
    /// `memory://`, or any other OpenDAL URI.
    #[arg(long, env = "EXPORTD_STORAGE", default_value = "fs://./exports")]
    pub storage: String,
    /// Mail for "export ready" notifications: `smtp://[user:pass@]host:port` (`?tls=required` for
    /// STARTTLS), `smtps://…`, or `file:///folder`. Unset: no notifications.
    #[arg(long, env = "EXPORTD_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// Sender of notifications.
    #[arg(
        long,
        env = "EXPORTD_MAIL_FROM",
        default_value = "Contact Export <exports@localhost>"
    )]
    pub mail_from: String,
    /// gRPC listen address.
    #[arg(long, env = "EXPORTD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (plain HTTP). Unset: no endpoint.
    #[arg(long, env = "EXPORTD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub jobs: JobArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Flags that shape the job runner (shared by `serve` and `dev`).
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Exports this replica runs at once (0: it serves the API and runs no jobs).
    #[arg(long, env = "EXPORTD_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Contacts per batch: at most three batches are in memory at a time and progress is
    /// written per batch.
    #[arg(long, env = "EXPORTD_BATCH_SIZE", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Seconds a job's lease lasts without renewal; a dead worker's job is resumed after it.
    #[arg(long, env = "EXPORTD_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    pub lease_seconds: u64,
    /// Exports one workspace may have pending or processing at once, across all replicas;
    /// CreateExport beyond it is RESOURCE_EXHAUSTED.
    #[arg(long, env = "EXPORTD_MAX_QUEUED_EXPORTS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queued_exports: u32,
    /// Exports of one workspace running at once, across all replicas; the others wait PENDING,
    /// so that one workspace's queue cannot starve the rest.
    #[arg(long, env = "EXPORTD_MAX_RUNNING_PER_WORKSPACE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_running_per_workspace: u32,
    /// How long a shutdown (SIGTERM, Ctrl-C) may take: streams end and running jobs are handed
    /// back at once; what still runs after this is abandoned. `30s`, `2m`…
    #[arg(long, env = "EXPORTD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

impl JobArgs {
    pub fn worker_config(&self) -> WorkerConfig {
        let mut config =
            WorkerConfig::new(self.workers).with_lease(Duration::from_secs(self.lease_seconds));
        config.max_running_per_workspace = self.max_running_per_workspace;
        config
    }

    /// The faults of `EXPORTD_TEST_FAULTS`, for tests of the real binary (none when unset).
    pub fn hooks(&self) -> Result<FaultHooks, ConfigError> {
        let hooks = FaultHooks::from_env().map_err(ConfigError::Hooks)?;
        if !hooks.is_empty() {
            tracing::warn!(?hooks, "test faults are on: never in production");
        }
        Ok(hooks)
    }
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("database_url", &redact_url(&self.database_url))
            .field("storage", &redact_url(&self.storage))
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("mail_from", &self.mail_from)
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("jobs", &self.jobs)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A URL without its password or query (which may hold keys), for logs.
pub fn redact_url(url: &str) -> String {
    let without_query = url.split('?').next().unwrap_or(url);
    match (without_query.find("://"), without_query.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &without_query[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}{user}:***{}",
                &without_query[..scheme_end + 3],
                &without_query[at..]
            )
        }
        _ => without_query.to_owned(),
    }
}

/// Errors in the configuration, each naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--storage {uri:?}: {source}")]
    Storage { uri: String, source: opendal::Error },
    #[error("--storage {uri:?}: cannot create the folder: {source}")]
    StorageFolder { uri: String, source: std::io::Error },
    #[error("--smtp-url: {0}")]
    Mail(#[from] crate::mail::MailError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Hooks(String),
}

/// Builds the storage operator. `fs://` paths may be relative to the working directory and are
/// created when missing.
pub fn storage_operator(uri: &str) -> Result<opendal::Operator, ConfigError> {
    let fs_path = uri
        .strip_prefix("fs://")
        .or_else(|| uri.strip_prefix("file://"));
    let op = match fs_path {
        Some(path) => {
            let root =
                absolute_folder(Path::new(path)).map_err(|source| ConfigError::StorageFolder {
                    uri: uri.to_owned(),
                    source,
                })?;
            crate::storage::fs_operator(&root)
        }
        None => crate::storage::operator_from_uri(uri),
    };
    op.map_err(|source| ConfigError::Storage {
        uri: uri.to_owned(),
        source,
    })
}

fn absolute_folder(path: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(path)?;
    std::fs::canonicalize(path)
}

impl ServeArgs {
    /// Turns flags into the application's settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        // First: a wrong TLS path fails before anything is created.
        let tls = self.tls.settings()?;
        let mailer = match &self.smtp_url {
            Some(url) => Some(Mailer::from_url(url, &self.mail_from)?),
            None => None,
        };
        Ok(Settings {
            database_url: self.database_url.clone(),
            storage: storage_operator(&self.storage)?,
            mailer,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            worker: self.jobs.worker_config(),
            batch_size: self.jobs.batch_size as usize,
            retry: RetryPolicy::default(),
            tls,
            max_queued_exports: self.jobs.max_queued_exports,
            shutdown_timeout: self.jobs.shutdown_timeout,
            hooks: self.jobs.hooks()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_queries() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("s3://b/p?secret_access_key=x"), "s3://b/p");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
