//! `exportd`: run the Contact Export service (`serve`), migrate its tables (`migrate`), manage
//! API tokens (`token`), or run everything locally on an embedded PostgreSQL (`dev`).

mod dev;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use contact_export_server::app::Application;
use contact_export_server::config::ServeArgs;
use contact_export_server::db;
use contact_export_server::logging::LogFormat;
use contact_export_server::tokens::{self, TokenCommand};

use crate::dev::DevArgs;

#[derive(Parser)]
#[command(
    name = "exportd",
    version,
    about = "Contact Export: contacts to CSV as durable background jobs, over gRPC"
)]
struct Cli {
    /// Log lines on stderr as `text` or `json` (one object per line, with the job's export,
    /// step and attempt in its spans).
    #[arg(long, global = true, env = "EXPORTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC and run export jobs against an existing database.
    Serve(ServeArgs),
    /// Create or update Contact Export's own tables (never the CRM's).
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Everything on this machine: private PostgreSQL, demo data, local files and mail.
    Dev(DevArgs),
    /// Issue, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr: stdout carries `dev`'s ready line.
    contact_export_server::logging::init("info", cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            tracing::info!(config = ?args, "starting");
            let settings = args.settings()?;
            let mut shutdown = std::pin::pin!(shutdown_signal()?);
            // A signal while it connects and migrates stops it there.
            let app = tokio::select! {
                app = Application::build(settings) => app?,
                () = &mut shutdown => {
                    tracing::info!("stopped before serving");
                    return Ok(());
                }
            };
            app.run_until_stopped(shutdown).await?;
        }
        Command::Migrate { database_url } => {
            db::migrate(&database_url).await.context("migrating")?;
            tracing::info!("migrations applied");
        }
        // A signal while PostgreSQL starts is kept: `dev` stops it cleanly once it has started.
        Command::Dev(args) => dev::run(args, shutdown_signal()?).await?,
        Command::Token(command) => {
            tokens::run(command, &mut std::io::stdout(), &mut std::io::stderr()).await?
        }
    }
    Ok(())
}

/// Ctrl-C (SIGINT) or SIGTERM. The handlers are installed by this call, not when the future
/// is first polled: a signal that arrives while the service starts, or just after `dev`'s
/// ready line, stops it cleanly instead of killing it (`tokio::signal::ctrl_c` installs its
/// handler only once polled).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
