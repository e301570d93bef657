//! One function per subcommand.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::CommandFactory;
use contact_export_client::{
    ClientError, ClientTls, CreateExportRequest, CsvOptions, Export, ExportClient, ExportStatus,
    LineEnding, Saved, TagMatch, is_terminal, target_path,
};
use futures::StreamExt;

use super::args::{Cli, Command, CreateArgs, Delimiter, DownloadArgs, ListArgs};
use super::output::{download_json, print_export, print_exports, short_status};
use super::progress::{BytesBar, RowsBar};
use super::save::PendingFile;

/// Connects and runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let tls = client_tls(&cli)?;
    let Some(token) = cli.token else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the API token is required: pass --token or set EXPORT_TOKEN",
            )
            .exit();
    };
    let client = ExportClient::connect_with(&cli.addr, token, tls)
        .await
        .map_err(|err| match err {
            ClientError::Transport(_) => {
                anyhow::Error::new(err).context(format!("cannot connect to {}", cli.addr))
            }
            err => err.into(),
        })?;
    let json = cli.json;
    match cli.command {
        Command::Create(args) => create(&client, args, json).await,
        Command::Get { id } => {
            print_export(&client.get(id).await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::List(args) => list(&client, args, json).await,
        Command::Watch { id } => watch(&client, &id, json).await,
        Command::Download(args) => download(&client, args, json).await,
        Command::Cancel { id } => {
            print_export(&client.cancel(id).await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { id } => {
            print_export(&client.delete(id).await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Url { id, expire_in } => {
            let url = client.download_url(id, expire_in).await?;
            if json {
                println!("{}", super::output::url_json(&url));
            } else {
                println!("{}", url.url);
                if let Some(at) = url.expire_time {
                    eprintln!("valid until {at}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The TLS settings from `--ca-cert`, `--client-cert`/`--client-key` and `--tls-server-name`.
fn client_tls(cli: &Cli) -> anyhow::Result<ClientTls> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
    };
    let identity = match (&cli.client_cert, &cli.client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((read("--client-cert", cert)?, read("--client-key", key)?)),
        _ => Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--client-cert and --client-key go together (or EXPORT_CLIENT_CERT and \
                 EXPORT_CLIENT_KEY)",
            )
            .exit(),
    };
    Ok(ClientTls {
        ca_pem: match &cli.ca_cert {
            Some(path) => Some(read("--ca-cert", path)?),
            None => None,
        },
        identity,
        domain: cli.tls_server_name.clone(),
    })
}

async fn create(client: &ExportClient, args: CreateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let csv_options = csv_options(&args);
    let request = CreateExportRequest {
        tag_ids: args.tags,
        filename: args.filename.unwrap_or_default(),
        request_id: args.request_id.unwrap_or_default(),
        csv_options,
        notify_url: args.notify_url.unwrap_or_default(),
        format: args.format.to_proto().into(),
        compression: args.compression.to_proto().into(),
        columns: args.columns,
        include_other_custom_fields: args.other_custom_fields,
        tag_match: if args.all_tags {
            TagMatch::All
        } else {
            TagMatch::Any
        }
        .into(),
        exclude_tag_ids: args.exclude_tags,
        created_after: args.created_after,
        created_before: args.created_before,
        subscribed_only: args.subscribed_only,
        validate_only: args.dry_run,
    };
    let export = client.create(request).await?;
    if args.dry_run || (!args.watch && args.download.is_none()) {
        print_export(&export, json);
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        eprintln!("created export {}", export.id);
    }
    let watched = watch(client, &export.id, json).await?;
    match args.download {
        Some(output) if watched == ExitCode::SUCCESS => {
            save_file(client, &export.id, &output, json).await
        }
        _ => Ok(watched),
    }
}

/// The CSV options of `create`; none (the server's defaults) when no flag asks for others.
fn csv_options(args: &CreateArgs) -> Option<CsvOptions> {
    let defaults = !args.no_formula_neutralization
        && args.delimiter == Delimiter::Comma
        && !args.bom
        && !args.crlf;
    (!defaults).then(|| CsvOptions {
        disable_formula_neutralization: args.no_formula_neutralization,
        delimiter: args.delimiter.to_proto().into(),
        include_bom: args.bom,
        line_ending: if args.crlf {
            LineEnding::Crlf
        } else {
            LineEnding::Lf
        }
        .into(),
    })
}

async fn list(client: &ExportClient, args: ListArgs, json: bool) -> anyhow::Result<ExitCode> {
    if args.all {
        print_exports(&client.list_all().await?, json);
        return Ok(ExitCode::SUCCESS);
    }
    let page = client
        .list(
            args.page_size.unwrap_or(0),
            args.page_token.unwrap_or_default(),
        )
        .await?;
    print_exports(&page.exports, json);
    if !page.next_page_token.is_empty() {
        eprintln!("next page: --page-token {}", page.next_page_token);
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows the export with a progress bar (or JSON lines) and prints its final state.
async fn watch(client: &ExportClient, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let bar = RowsBar::new();
    let followed = follow(client, id, json, &bar).await;
    bar.clear();
    let last = match followed? {
        Some(export) if is_terminal(export.status()) => export,
        // The stream ended early (e.g. the server restarted): ask once more.
        _ => client.get(id).await?,
    };
    if !json {
        print_export(&last, false);
    }
    match last.status() {
        ExportStatus::Completed => Ok(ExitCode::SUCCESS),
        status if is_terminal(status) => {
            let why = match last.error_message.as_str() {
                "" => "no reason given",
                message => message,
            };
            eprintln!("error: export {} {}: {why}", last.id, short_status(status));
            Ok(ExitCode::from(1))
        }
        status => bail!(
            "the watch ended while the export was still {}",
            short_status(status)
        ),
    }
}

async fn follow(
    client: &ExportClient,
    id: &str,
    json: bool,
    bar: &RowsBar,
) -> anyhow::Result<Option<Export>> {
    let mut updates = client.watch(id).await?;
    let mut last = None;
    while let Some(export) = updates.next().await {
        let export = export?;
        if json {
            print_export(&export, true);
        }
        bar.update(&export);
        last = Some(export);
    }
    Ok(last)
}

/// A whole file is saved resumably and verified; a byte range goes to a temporary file beside
/// the target, renamed once complete.
async fn download(
    client: &ExportClient,
    args: DownloadArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if args.offset == 0 && args.limit == 0 {
        return save_file(client, &args.id, &args.output, json).await;
    }
    let offset = i64::try_from(args.offset).context("--offset is too large")?;
    let limit = i64::try_from(args.limit).context("--limit is too large")?;
    let download = client.download(args.id, offset, limit).await?;
    let metadata = download.metadata.clone();
    let target = target_path(&args.output, &metadata.filename);
    let mut pending = PendingFile::create(&target)
        .with_context(|| format!("cannot create a file next to {}", target.display()))?;

    let bar = BytesBar::new(download.expected_len());
    let written = tokio::select! {
        written = download.write_to(pending.file(), |done, total| bar.set(done, total)) => written,
        _ = tokio::signal::ctrl_c() => {
            bar.clear();
            bail!("interrupted; nothing was written to {}", target.display());
        }
    };
    bar.clear();
    let written = written?; // on error `pending` is dropped and the partial file removed
    let target = pending
        .commit()
        .await
        .with_context(|| format!("cannot move the download to {}", target.display()))?;

    if json {
        println!("{}", download_json(&metadata, &target, written, None));
    } else {
        println!("{}: {written} bytes", target.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The whole file into `output`: resumed from an earlier partial file, verified, renamed into
/// place; Ctrl-C keeps what arrived for the next run.
async fn save_file(
    client: &ExportClient,
    id: &str,
    output: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bar = BytesBar::new(0);
    let saved = tokio::select! {
        saved = client.download_file(id, output, |done, total| bar.set(done, total)) => saved,
        _ = tokio::signal::ctrl_c() => {
            bar.clear();
            bail!(
                "interrupted; what arrived is kept beside {}: run the same command again to \
                 resume",
                output.display()
            );
        }
    };
    bar.clear();
    let saved = saved?;
    if json {
        println!(
            "{}",
            download_json(
                &saved.metadata,
                &saved.path,
                saved.received,
                Some(saved.how)
            )
        );
        return Ok(ExitCode::SUCCESS);
    }
    let how = match saved.how {
        Saved::Downloaded => String::new(),
        Saved::Resumed { from } => format!(" (resumed at byte {from})"),
        Saved::Restarted { discarded } => format!(
            " (the {discarded} bytes already on disk were not the start of this file: \
             downloaded again from byte 0)"
        ),
        Saved::AlreadyComplete => " (already complete: nothing downloaded)".to_owned(),
    };
    println!(
        "{}: {} bytes, sha256 verified{how}",
        saved.path.display(),
        saved.metadata.size_bytes
    );
    Ok(ExitCode::SUCCESS)
}
