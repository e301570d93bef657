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
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Migrate { database_url } => {
            db::migrate(&database_url).await.context("migrating")?;
            tracing::info!("migrations applied");
        }
        Command::Dev(args) => dev::run(args, shutdown_signal()).await?,
        Command::Token(command) => {
            tokens::run(command, &mut std::io::stdout(), &mut std::io::stderr()).await?
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
