//! Progress bars on stderr, drawn only when stderr is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use contact_export_client::Export;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::short_status;

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

fn bar(len: Option<u64>, template: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(len, draw_target()).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Rows of an export: `processed_rows / total_rows`, with the step and status as message.
pub struct RowsBar(ProgressBar);

impl RowsBar {
    pub fn new() -> Self {
        Self(bar(
            None,
            "{spinner} [{elapsed_precise}] [{wide_bar}] {human_pos}/{human_len} rows \
             {per_sec} eta {eta}  {msg}",
        ))
    }

    /// Shows the export's latest state.
    pub fn update(&self, export: &Export) {
        if export.total_rows > 0 {
            self.0.set_length(export.total_rows as u64);
        }
        self.0.set_position(export.processed_rows.max(0) as u64);
        let step = match export.current_step.as_str() {
            "" => "waiting",
            step => step,
        };
        self.0
            .set_message(format!("{step} ({})", short_status(export.status())));
    }

    pub fn clear(&self) {
        self.0.finish_and_clear();
    }
}

/// Bytes of a download.
pub struct BytesBar(ProgressBar);

impl BytesBar {
    pub fn new(total: u64) -> Self {
        Self(bar(
            Some(total),
            "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ))
    }

    /// `bytes` of `total` (the total becomes known with the first chunk).
    pub fn set(&self, bytes: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(bytes);
    }

    pub fn clear(&self) {
        self.0.finish_and_clear();
    }
}
