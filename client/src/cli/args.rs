//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use contact_export_client::CsvDelimiter;

/// Talk to a Contact Export server: create exports of the CRM's contacts (CSV, JSON Lines or
/// XLSX), follow them, download them.
#[derive(Debug, Parser)]
// The connection flags are every subcommand's: listed after the subcommand's own.
#[command(name = "exportctl", version, next_display_order = 1000)]
#[command(
    after_help = "Exit codes: 0 ok; 1 the export ended FAILED, CANCELLED or EXPIRED; \
                        2 RPC error or bad usage; 3 other error (connection, file, checksum)."
)]
pub struct Cli {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "EXPORT_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,

    /// API token, sent as `authorization: Bearer <token>` (required).
    // Optional for clap (a global argument cannot be required), checked in `run`.
    #[arg(long, global = true, env = "EXPORT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print one JSON object per line (exports, or the file metadata) instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// PEM CA certificate(s) to trust for an `https://` address instead of the built-in roots.
    #[arg(long, global = true, env = "EXPORT_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate for servers that require one (mutual TLS); with --client-key.
    #[arg(long, global = true, env = "EXPORT_CLIENT_CERT", value_name = "PATH")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "EXPORT_CLIENT_KEY", value_name = "PATH")]
    pub client_key: Option<PathBuf>,

    /// Name the server's certificate must carry, when it is not the address's host (e.g.
    /// `localhost` for `https://127.0.0.1:50051`).
    #[arg(
        long,
        global = true,
        env = "EXPORT_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Queue a new export and print it.
    Create(CreateArgs),
    /// Show one export.
    Get {
        /// Export id.
        id: String,
    },
    /// List exports, newest first.
    List(ListArgs),
    /// Follow an export until it ends; exit 1 unless it COMPLETED.
    Watch {
        /// Export id.
        id: String,
    },
    /// Download a finished export's file: written beside the target, verified, then renamed
    /// into place; an interrupted download goes on where it stopped when run again.
    Download(DownloadArgs),
    /// Ask the server to cancel an export.
    Cancel {
        /// Export id.
        id: String,
    },
    /// Delete a finished export: its file is removed, the export shows DELETED.
    Delete {
        /// Export id.
        id: String,
    },
    /// Print a signed URL that serves the file straight from the object store (for stores
    /// that can sign one).
    Url {
        /// Export id.
        id: String,
        /// How long the URL works (`15m`, `2h`; at most 24 h).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expire_in: Option<std::time::Duration>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Export only contacts with at least one of these tags (repeatable; all of them with
    /// --all-tags).
    #[arg(long = "tag", value_name = "ID")]
    pub tags: Vec<String>,
    /// Only contacts with every --tag, not any of them.
    #[arg(long)]
    pub all_tags: bool,
    /// Leave out contacts with this tag (repeatable).
    #[arg(long = "exclude-tag", value_name = "ID")]
    pub exclude_tags: Vec<String>,
    /// Only contacts created at or after this instant (RFC 3339, e.g. 2024-01-01T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub created_after: Option<prost_types::Timestamp>,
    /// Only contacts created before this instant (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub created_before: Option<prost_types::Timestamp>,
    /// Leave out unsubscribed contacts.
    #[arg(long)]
    pub subscribed_only: bool,
    /// The file's format.
    #[arg(long, value_enum, value_name = "F", default_value_t = Format::Csv)]
    pub format: Format,
    /// Compress the file.
    #[arg(long, value_enum, value_name = "C", default_value_t = Compress::None)]
    pub compression: Compress,
    /// The columns to write, in order (repeatable, or comma-separated): a fixed column
    /// (`email`, `first_name`, …, `created_at`) or `custom_fields.KEY`. Default: all.
    #[arg(long = "column", value_name = "NAME", value_delimiter = ',')]
    pub columns: Vec<String>,
    /// With --column: then every other custom field.
    #[arg(long, requires = "columns")]
    pub other_custom_fields: bool,
    /// Check the request and show the export it would create (how many contacts match now,
    /// the file's headers) without creating it.
    #[arg(long, conflicts_with_all = ["watch", "download"])]
    pub dry_run: bool,
    /// File name (the server sanitises it and appends the format's extension).
    #[arg(long, value_name = "F")]
    pub filename: Option<String>,
    /// Idempotency key: repeating it returns the first export instead of a new one.
    #[arg(long, value_name = "R")]
    pub request_id: Option<String>,
    /// Leave cells starting with `=`, `+`, `-`, `@` as they are (unsafe in spreadsheets).
    #[arg(long)]
    pub no_formula_neutralization: bool,
    /// Field delimiter of the file.
    #[arg(long, value_enum, value_name = "D", default_value_t = Delimiter::Comma)]
    pub delimiter: Delimiter,
    /// Start the file with a UTF-8 byte order mark (lets Excel read it as UTF-8).
    #[arg(long)]
    pub bom: bool,
    /// End records with CRLF instead of LF.
    #[arg(long)]
    pub crlf: bool,
    /// Then follow it like `watch`.
    #[arg(long)]
    pub watch: bool,
    /// Then, once it COMPLETED, download it like `download -o FILE` (implies --watch).
    #[arg(long, value_name = "FILE")]
    pub download: Option<PathBuf>,
    /// POST a signed event to this URL when the export ends (the server must allow it).
    #[arg(long, value_name = "URL")]
    pub notify_url: Option<String>,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// CSV (`.csv`), shaped by the CSV flags.
    Csv,
    /// JSON Lines (`.jsonl`).
    Jsonl,
    /// An Excel workbook (`.xlsx`).
    Xlsx,
}

impl Format {
    pub fn to_proto(self) -> contact_export_client::ExportFormat {
        use contact_export_client::ExportFormat;
        match self {
            Format::Csv => ExportFormat::Csv,
            Format::Jsonl => ExportFormat::Jsonl,
            Format::Xlsx => ExportFormat::Xlsx,
        }
    }
}

/// `--compression` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    /// As written.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

impl Compress {
    pub fn to_proto(self) -> contact_export_client::Compression {
        use contact_export_client::Compression;
        match self {
            Compress::None => Compression::None,
            Compress::Gzip => Compression::Gzip,
            Compress::Zstd => Compression::Zstd,
        }
    }
}

/// An RFC 3339 instant as a protobuf timestamp.
fn parse_instant(text: &str) -> Result<prost_types::Timestamp, String> {
    text.parse::<prost_types::Timestamp>()
        .map_err(|_| format!("{text:?} is not an RFC 3339 instant such as 2024-01-01T00:00:00Z"))
}

/// `--delimiter` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Delimiter {
    /// `,`
    Comma,
    /// `;`
    Semicolon,
    /// A tab character.
    Tab,
    /// `|`
    Pipe,
}

impl Delimiter {
    pub fn to_proto(self) -> CsvDelimiter {
        match self {
            Delimiter::Comma => CsvDelimiter::Comma,
            Delimiter::Semicolon => CsvDelimiter::Semicolon,
            Delimiter::Tab => CsvDelimiter::Tab,
            Delimiter::Pipe => CsvDelimiter::Pipe,
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Exports per page (server default when omitted).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Start at this page (the `next page` token printed by the previous call).
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Follow page tokens and list everything.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Export id.
    pub id: String,
    /// Target file, or a directory to save under the export's file name. The file is
    /// readable by its owner only.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// First byte to download (a byte range is neither resumed nor checksummed).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: u64,
    /// At most this many bytes (0: to the end). The SHA-256 is only checked for a whole file.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "exportctl",
            "create",
            "--tag",
            "a",
            "--tag",
            "b",
            "--token",
            "t",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.token.as_deref(), Some("t"));
        assert!(cli.json);
        match cli.command {
            Command::Create(args) => assert_eq!(args.tags, ["a", "b"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv_options_of_create() {
        let create = |args: &[&str]| match Cli::try_parse_from(
            ["exportctl", "create"].iter().chain(args).copied(),
        ) {
            Ok(Cli {
                command: Command::Create(args),
                ..
            }) => Ok(args),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let defaults = create(&[]).unwrap();
        assert_eq!(
            (defaults.delimiter, defaults.bom, defaults.crlf),
            (Delimiter::Comma, false, false)
        );
        let all = create(&["--delimiter", "semicolon", "--bom", "--crlf"]).unwrap();
        assert_eq!(
            (all.delimiter, all.bom, all.crlf),
            (Delimiter::Semicolon, true, true)
        );
        for (name, proto) in [
            ("comma", CsvDelimiter::Comma),
            ("semicolon", CsvDelimiter::Semicolon),
            ("tab", CsvDelimiter::Tab),
            ("pipe", CsvDelimiter::Pipe),
        ] {
            assert_eq!(
                create(&["--delimiter", name]).unwrap().delimiter.to_proto(),
                proto
            );
        }
        assert!(create(&["--delimiter", ";"]).is_err());
    }

    #[test]
    fn create_can_download_in_the_same_command() {
        let cli = Cli::try_parse_from(["exportctl", "create", "--download", "out.csv"]).unwrap();
        match cli.command {
            Command::Create(args) => {
                assert_eq!(args.download, Some(PathBuf::from("out.csv")));
                assert!(!args.watch, "--download implies --watch without setting it");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_options_are_global() {
        let cli = Cli::try_parse_from([
            "exportctl",
            "get",
            "id",
            "--ca-cert",
            "ca.pem",
            "--client-cert",
            "c.pem",
            "--client-key",
            "k.pem",
            "--tls-server-name",
            "localhost",
        ])
        .unwrap();
        assert_eq!(cli.ca_cert, Some(PathBuf::from("ca.pem")));
        assert_eq!(cli.client_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(cli.client_key, Some(PathBuf::from("k.pem")));
        assert_eq!(cli.tls_server_name.as_deref(), Some("localhost"));
    }

    #[test]
    fn download_needs_an_output() {
        assert!(Cli::try_parse_from(["exportctl", "download", "id"]).is_err());
        let cli = Cli::try_parse_from([
            "exportctl",
            "download",
            "id",
            "-o",
            "x.csv",
            "--offset",
            "10",
            "--limit",
            "5",
        ])
        .unwrap();
        match cli.command {
            Command::Download(args) => assert_eq!((args.offset, args.limit), (10, 5)),
            other => panic!("{other:?}"),
        }
    }
}
