//! Log output of the binaries: `tracing` to stderr (stdout carries results and ready lines),
//! filtered by `RUST_LOG` when it is set, as text for people or JSON lines for a log pipeline.
//! A job's lines carry its span (`job{export_id generation}` and `step{step attempt}`), so
//! every line of a job says which export, step and attempt it is about.

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, spans as a prefix.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields`, `target`, `span` and `spans`.
    Json,
}

/// Installs the subscriber; `default` is the filter without `RUST_LOG` (e.g. `info`).
pub fn init(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
