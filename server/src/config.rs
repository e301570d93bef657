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
    /// `vercel-blob://` (or `vercel-blob:///prefix`; the token from `BLOB_READ_WRITE_TOKEN`),
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
        // The user of a `vercel-blob://` URI could only be a token (which is refused).
        if url.scheme() == VERCEL_BLOB_SCHEME && !url.username().is_empty() {
            let _ = url.set_username("***");
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
    if let Some((scheme, rest)) = text.split_once("://") {
        // Not a URI the url crate reads (`vercel-blob://token@/`, `postgres://u:pw@/db`): hide
        // whatever user info it has.
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some((user_info, host)) = rest[..authority_end].rsplit_once('@') {
            let user_info = match user_info.split_once(':') {
                Some((user, _)) if scheme != VERCEL_BLOB_SCHEME => format!("{user}:***"),
                _ => "***".to_owned(),
            };
            return format!("{scheme}://{user_info}@{host}{}", &rest[authority_end..]);
        }
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
    /// `uri` without its secrets ([`redact_url`]).
    #[error("--storage {uri:?}: {source}")]
    Storage { uri: String, source: opendal::Error },
    /// A `vercel-blob://` URI or token that cannot be used; the message never holds the token.
    #[error("--storage vercel-blob://…: {0}")]
    VercelBlob(String),
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

/// The scheme of Vercel Blob storage URIs.
const VERCEL_BLOB_SCHEME: &str = "vercel-blob";

/// The environment variable that holds the read-write token of a `vercel-blob://` store (the
/// name Vercel gives it); the only place the token is read from.
pub const VERCEL_BLOB_TOKEN_ENV: &str = "BLOB_READ_WRITE_TOKEN";

/// Builds the storage operator. `fs://` paths may be relative to the working directory and are
/// created when missing.
///
/// `vercel-blob://` is the Vercel Blob store that the token in `BLOB_READ_WRITE_TOKEN` belongs
/// to (the token names the store, so the URI has no host); `vercel-blob:///prefix` puts every
/// key under `prefix/`. The URI holds nothing else: a token in it (as its user, or a `token`
/// query parameter) is refused, so that it never shows in process listings, shell history or
/// logs.
pub fn storage_operator(uri: &str) -> Result<opendal::Operator, ConfigError> {
    storage_operator_with_env(uri, |name| std::env::var_os(name))
}

/// [`storage_operator`] with the environment given (the unit tests' own).
fn storage_operator_with_env(
    uri: &str,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<opendal::Operator, ConfigError> {
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
        None if is_vercel_blob(uri) => {
            let root = vercel_blob_root(uri)?;
            let token = vercel_blob_token(env(VERCEL_BLOB_TOKEN_ENV))?;
            crate::storage::vercel_blob_operator(&root, &token)
        }
        None => crate::storage::operator_from_uri(uri),
    };
    op.map_err(|source| ConfigError::Storage {
        uri: redact_url(uri),
        source,
    })
}

fn is_vercel_blob(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(VERCEL_BLOB_SCHEME))
}

/// The root of a `vercel-blob://` URI: `/` or `/prefix`, percent-decoded.
fn vercel_blob_root(uri: &str) -> Result<String, ConfigError> {
    let refused = |reason: &str| Err(ConfigError::VercelBlob(reason.to_owned()));
    let token_refused = || {
        refused(&format!(
            "a token in the URI is refused (it would show in process listings and logs): \
             set {VERCEL_BLOB_TOKEN_ENV} instead"
        ))
    };
    let shape = "write `vercel-blob://`, or `vercel-blob:///prefix` for a root prefix";
    let Some((_, rest)) = uri.split_once("://") else {
        return refused(shape);
    };
    // Looked at before parsing: `vercel-blob://token@/` is no URI the url crate reads.
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return token_refused();
    }
    let Ok(url) = url::Url::parse(uri) else {
        return refused(shape);
    };
    if url.host_str().is_some_and(|host| !host.is_empty()) || url.port().is_some() {
        return refused(&format!(
            "the URI names no host (the store is the one the token of {VERCEL_BLOB_TOKEN_ENV} \
             belongs to): {shape}"
        ));
    }
    if let Some(key) = url.query_pairs().map(|(key, _)| key).next() {
        if key.to_ascii_lowercase().contains("token") {
            return token_refused();
        }
        return refused(&format!("unknown option {key:?}: {shape}"));
    }
    if url.fragment().is_some() {
        return refused(shape);
    }
    let root = percent_encoding::percent_decode_str(url.path())
        .decode_utf8()
        .map_err(|_| ConfigError::VercelBlob("the prefix is not UTF-8".to_owned()))?;
    Ok(if root.is_empty() {
        "/".to_owned()
    } else {
        root.into_owned()
    })
}

/// The token of `BLOB_READ_WRITE_TOKEN`, checked (never echoed).
fn vercel_blob_token(value: Option<std::ffi::OsString>) -> Result<String, ConfigError> {
    let missing = format!(
        "{VERCEL_BLOB_TOKEN_ENV} is not set: it holds the read-write token of the Blob store \
         (Vercel: the store's settings, or `vercel env pull`)"
    );
    let value = value.ok_or_else(|| ConfigError::VercelBlob(missing))?;
    let token = value.into_string().map_err(|_| {
        ConfigError::VercelBlob(format!("{VERCEL_BLOB_TOKEN_ENV} is not valid UTF-8"))
    })?;
    if token.is_empty() {
        return Err(ConfigError::VercelBlob(format!(
            "{VERCEL_BLOB_TOKEN_ENV} is empty"
        )));
    }
    // It goes into an HTTP header as it is.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::VercelBlob(format!(
            "{VERCEL_BLOB_TOKEN_ENV} holds spaces, line breaks or other characters that no \
             token has"
        )));
    }
    Ok(token)
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
    fn redacts_tokens_of_vercel_blob_uris_and_user_info_the_url_crate_cannot_read() {
        assert_eq!(
            redact_url("vercel-blob://vercel_blob_rw_x@/p"),
            "vercel-blob://***@/p"
        );
        assert_eq!(
            redact_url("vercel-blob://vercel_blob_rw_x@host/p"),
            "vercel-blob://***@host/p"
        );
        assert_eq!(
            redact_url("vercel-blob://u:vercel_blob_rw_x@/p"),
            "vercel-blob://***@/p"
        );
        assert_eq!(
            redact_url("vercel-blob:///p?token=vercel_blob_rw_x"),
            "vercel-blob:///p?token=***"
        );
        assert_eq!(redact_url("vercel-blob:///p"), "vercel-blob:///p");
        assert_eq!(redact_url("postgres://u:pw@/db"), "postgres://u:***@/db");
    }

    /// The environment of a test: `BLOB_READ_WRITE_TOKEN` set to `token`, or unset.
    fn env_with(token: Option<&str>) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let token = token.map(std::ffi::OsString::from);
        move |name| {
            assert_eq!(name, VERCEL_BLOB_TOKEN_ENV, "the only variable it reads");
            token.clone()
        }
    }

    fn vercel_blob_error(uri: &str, token: Option<&str>) -> String {
        match storage_operator_with_env(uri, env_with(token)) {
            Ok(op) => panic!("{uri} was accepted: {op:?}"),
            Err(e) => e.to_string(),
        }
    }

    const TOKEN: &str = "vercel_blob_rw_store_hunter2";

    #[test]
    fn a_vercel_blob_uri_holds_at_most_a_root_prefix() {
        for (uri, root) in [
            ("vercel-blob://", "/"),
            ("vercel-blob:///", "/"),
            ("vercel-blob:///exports", "/exports/"),
            ("vercel-blob:///exports/prod/", "/exports/prod/"),
            ("vercel-blob:///my%20exports", "/my exports/"),
            ("VERCEL-BLOB:///exports", "/exports/"),
        ] {
            let op = storage_operator_with_env(uri, env_with(Some(TOKEN)))
                .unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(op.info().scheme(), "vercel-blob", "{uri}");
            assert_eq!(op.info().root(), root, "{uri}");
            let debug = format!("{op:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
        }
        for uri in [
            "vercel-blob://store/exports",
            "vercel-blob://:443/",
            "vercel-blob:///exports?region=iad1",
            "vercel-blob:///exports#x",
            "vercel-blob:/exports",
        ] {
            let error = vercel_blob_error(uri, Some(TOKEN));
            assert!(error.contains("vercel-blob:///prefix"), "{uri}: {error}");
        }
    }

    #[test]
    fn a_token_in_a_vercel_blob_uri_is_refused_without_showing_it() {
        for uri in [
            "vercel-blob://vercel_blob_rw_store_hunter2@/",
            "vercel-blob://vercel_blob_rw_store_hunter2@host/exports",
            "vercel-blob://user:vercel_blob_rw_store_hunter2@/",
            "vercel-blob:///exports?token=vercel_blob_rw_store_hunter2",
            "vercel-blob:///?TOKEN=vercel_blob_rw_store_hunter2",
        ] {
            // Refused even with the variable set: the URI is no place for a secret.
            for env in [Some(TOKEN), None] {
                let error = vercel_blob_error(uri, env);
                assert!(
                    error.contains("a token in the URI is refused")
                        && error.contains("BLOB_READ_WRITE_TOKEN"),
                    "{uri}: {error}"
                );
                assert!(!error.contains("hunter2"), "{error}");
            }
        }
    }

    #[test]
    fn the_vercel_blob_token_comes_from_blob_read_write_token() {
        let error = vercel_blob_error("vercel-blob://", None);
        assert_eq!(
            error,
            "--storage vercel-blob://…: BLOB_READ_WRITE_TOKEN is not set: it holds the \
             read-write token of the Blob store (Vercel: the store's settings, or `vercel env pull`)"
        );
        let error = vercel_blob_error("vercel-blob:///exports", Some(""));
        assert!(error.ends_with("BLOB_READ_WRITE_TOKEN is empty"), "{error}");
        for bad in ["vercel_blob_rw_hunter2\n", " vercel_blob_rw_hunter2", "a b"] {
            let error = vercel_blob_error("vercel-blob://", Some(bad));
            assert!(
                error.contains("BLOB_READ_WRITE_TOKEN holds spaces"),
                "{bad:?}: {error}"
            );
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn the_start_up_log_shows_no_vercel_blob_token() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        for storage in [
            "vercel-blob://vercel_blob_rw_store_hunter2@/",
            "vercel-blob:///exports?token=vercel_blob_rw_store_hunter2",
        ] {
            let cli = <Cli as clap::Parser>::try_parse_from([
                "exportd",
                "--database-url",
                "postgres://db/crm",
                "--storage",
                storage,
            ])
            .unwrap();
            let logged = format!("{:?}", cli.serve);
            assert!(!logged.contains("hunter2"), "{logged}");
            assert!(logged.contains("vercel-blob://"), "{logged}");
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
