//! `exportd` configuration: flags with environment fallbacks, read once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::Settings;
use crate::janitor::JanitorConfig;
use crate::mail::Mailer;
use crate::pipeline::{FaultHooks, RetryPolicy};
use crate::tls::TlsArgs;
use crate::webhook::{WebhookArgs, WebhookConfig};
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
    #[command(flatten)]
    pub webhooks: WebhookArgs,
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
    /// How long a COMPLETED export's file is kept; then it is removed and the export EXPIRED.
    /// `7d`, `36h`…
    #[arg(long, env = "EXPORTD_RETENTION", default_value = "7d", value_parser = positive_duration)]
    pub retention: Duration,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
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
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

/// A connection string without its secrets, for logs: the password of a URI's user info,
/// the values of query parameters that may hold keys (`password`, `secret_access_key`,
/// `token`…), and the same in a libpq `key=value` string (`host=db password='s e c'`).
pub fn redact_url(text: &str) -> String {
    if text.contains("://")
        && let Ok(mut url) = url::Url::parse(text)
    {
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let value = if is_secret(&key) {
                        "***".to_owned()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return url.to_string();
    }
    let mut out = Vec::new();
    for (key, value) in libpq_pairs(text) {
        match key {
            Some(key) if is_secret(key) => out.push(format!("{key}=***")),
            Some(key) => out.push(format!("{key}={value}")),
            None => out.push(value.to_owned()),
        }
    }
    out.join(" ")
}

/// Whether a parameter's name says that its value is a secret.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "key", "token", "credential"]
        .iter()
        .any(|word| key.contains(word))
}

/// The `key=value` pairs of a libpq connection string (values may be single-quoted, with
/// spaces); a piece without `=` comes as `(None, piece)`.
fn libpq_pairs(text: &str) -> Vec<(Option<&str>, &str)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let Some(after) = rest[key_end..].trim_start().strip_prefix('=') else {
            pairs.push((None, key));
            rest = rest[key_end..].trim_start();
            continue;
        };
        let after = after.trim_start();
        let end = if let Some(quoted) = after.strip_prefix('\'') {
            // Up to the closing quote that is not escaped.
            let mut escaped = false;
            let close = quoted
                .char_indices()
                .find(|&(_, c)| {
                    let close = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close
                })
                .map_or(quoted.len(), |(i, _)| i + 1);
            (close + 1).min(after.len())
        } else {
            after.find(char::is_whitespace).unwrap_or(after.len())
        };
        pairs.push((Some(key), &after[..end]));
        rest = after[end..].trim_start();
    }
    pairs
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
    #[error(transparent)]
    Webhooks(#[from] crate::webhook::WebhookConfigError),
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
            janitor: JanitorConfig::new(self.jobs.retention),
            webhooks: WebhookConfig::from_args(&self.webhooks)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_keys_of_uris() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(
            redact_url("s3://b/p?region=eu&secret_access_key=x&endpoint=http://e"),
            "s3://b/p?region=eu&secret_access_key=***&endpoint=http%3A%2F%2Fe"
        );
        assert_eq!(
            redact_url("postgres://h/db?password=pw&sslmode=require"),
            "postgres://h/db?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("fs://./exports"), "fs://./exports");
    }

    #[test]
    fn the_start_up_log_shows_no_database_password() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        for url in [
            "postgres://exportd:hunter2@db/crm",
            "host=db user=exportd password=hunter2 dbname=crm",
        ] {
            let cli =
                <Cli as clap::Parser>::try_parse_from(["exportd", "--database-url", url]).unwrap();
            let logged = format!("{:?}", cli.serve);
            assert!(!logged.contains("hunter2"), "{logged}");
            assert!(
                logged.contains("exportd"),
                "the rest stays readable: {logged}"
            );
        }
    }

    #[test]
    fn redacts_passwords_of_libpq_key_value_strings() {
        assert_eq!(
            redact_url("host=db port=5432 user=u password=secret dbname=crm"),
            "host=db port=5432 user=u password=*** dbname=crm"
        );
        let quoted = redact_url("host=db password='s e \\'c' dbname = crm");
        assert_eq!(quoted, "host=db password=*** dbname=crm");
    }
}
