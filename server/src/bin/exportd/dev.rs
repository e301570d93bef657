//! `exportd dev`: the service on its embedded default. A private PostgreSQL under the data
//! folder with the CRM fixture schema and a seeded demo workspace, files and mail in that
//! folder too, and one `ready …` line on stdout once it takes calls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use contact_export_devkit::fixture;
use contact_export_devkit::postgres::Cluster;
use contact_export_server::app::{Application, Settings};
use contact_export_server::auth::{self, Principal};
use contact_export_server::config::{JobArgs, storage_operator};
use contact_export_server::db;
use contact_export_server::janitor::JanitorConfig;
use contact_export_server::mail::Mailer;
use contact_export_server::pipeline::RetryPolicy;
use contact_export_server::tls::{TlsArgs, TlsSettings};
use contact_export_server::webhook::{WebhookArgs, WebhookConfig};
use diesel_async::SimpleAsyncConnection;

/// The database `dev` creates in its cluster.
pub const DEV_DATABASE: &str = "exportd";

/// Flags of `exportd dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Folder for the database cluster, export files and mail; reused by the next `dev`.
    #[arg(long, env = "EXPORTD_DATA_DIR", default_value = "./.exportd")]
    pub data_dir: PathBuf,
    /// gRPC listen address.
    #[arg(long, env = "EXPORTD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (plain HTTP). Unset: no endpoint.
    #[arg(long, env = "EXPORTD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where files go, as `serve --storage` takes it (`s3://…`, `vercel-blob://`…). Unset:
    /// the `files` folder of the data folder.
    #[arg(long, env = "EXPORTD_STORAGE", value_name = "URI")]
    pub storage: Option<String>,
    /// Contacts to seed in the demo workspace (only when the data folder is new).
    #[arg(long, default_value_t = 10_000)]
    pub seed_contacts: u64,
    #[command(flatten)]
    pub jobs: JobArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// Runs `dev` until Ctrl-C or SIGTERM.
pub async fn run(
    args: DevArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // Checked before PostgreSQL starts, so a wrong path fails at once.
    let tls = args.tls.settings()?;
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let cluster_dir = data_dir.clone();
    let mut cluster = tokio::task::spawn_blocking(move || Cluster::start(&cluster_dir)).await??;
    let result = serve(&args, tls, &data_dir, &cluster, shutdown).await;
    // Stop PostgreSQL whatever happened above, then report.
    let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    result?;
    stopped?;
    Ok(())
}

async fn serve(
    args: &DevArgs,
    tls: Option<TlsSettings>,
    data_dir: &Path,
    cluster: &Cluster,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let database_url = cluster.url(DEV_DATABASE);
    let mut admin = db::connect(&cluster.url("postgres")).await?;
    fixture::create_database(&mut admin, DEV_DATABASE).await?;
    drop(admin);
    let mut conn = db::connect(&database_url).await?;
    conn.batch_execute(fixture::CRM_SCHEMA).await?;
    db::migrate(&database_url).await?;
    let demo = fixture::seed_demo(&mut conn, args.seed_contacts).await?;
    if demo.seeded {
        tracing::info!(contacts = args.seed_contacts, "seeded the demo workspace");
    } else {
        tracing::info!("reusing the data of an earlier run (not seeding again)");
    }
    let token = auth::create_token(
        &mut conn,
        Principal {
            workspace_id: demo.workspace_id.into(),
            user_id: demo.user_id.into(),
        },
        "exportd dev",
        None,
    )
    .await?;
    drop(conn);

    let mail_dir = data_dir.join("mail");
    std::fs::create_dir_all(&mail_dir)?;
    let settings = Settings {
        database_url: database_url.clone(),
        storage: match &args.storage {
            Some(uri) => storage_operator(uri)?,
            None => storage_operator(&format!("fs://{}", data_dir.join("files").display()))?,
        },
        mailer: Some(Mailer::from_url(
            &format!("file://{}", mail_dir.display()),
            "Contact Export <exports@localhost>",
        )?),
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        worker: args.jobs.worker_config(),
        batch_size: args.jobs.batch_size as usize,
        retry: RetryPolicy::default(),
        tls,
        max_queued_exports: args.jobs.max_queued_exports,
        shutdown_timeout: args.jobs.shutdown_timeout,
        hooks: args.jobs.hooks()?,
        janitor: JanitorConfig::new(args.jobs.retention),
        webhooks: WebhookConfig::from_args(&args.webhooks)?,
    };
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let app = Application::build(settings).await?;
    // The one line scripts wait for; everything else goes to stderr.
    println!(
        "ready grpc={scheme}://{} token={token} database={database_url}",
        app.local_addr()
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    app.run_until_stopped(shutdown).await?;
    Ok(())
}
