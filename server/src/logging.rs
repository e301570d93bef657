//! Log output of the binaries: `tracing` to stderr (stdout carries results and ready lines),
//! filtered by `RUST_LOG` when it is set.

/// Installs the subscriber; `default` is the filter without `RUST_LOG` (e.g. `info`).
pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
}
