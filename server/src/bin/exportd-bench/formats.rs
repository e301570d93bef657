//! The format × compression matrix: a full export of the main workspace in each format and
//! compression asked for (`--formats`, `--compressions`), each in a fresh `exportd` with a
//! `TMPDIR` of its own, so that its peak RSS and its peak temporary disk belong to that one
//! export. Each file is then downloaded and checked ([`verify`]) before its figures count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use contact_export_client::{self as client, CreateExportRequest};

use crate::measure::{self, ExportRun};
use crate::report::{self, Fmt, Grid};
use crate::selection::Selection;
use crate::service::{Exportd, ExportdConfig};
use crate::tmp_usage::{self, TmpSampler};
use crate::verify::{self, Verified};

/// A file format the benchmark exports in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
    Xlsx,
}

/// A compression the benchmark exports with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub format: Format,
    pub compression: Compression,
}

impl Case {
    /// Every format with every compression, formats first.
    pub fn matrix(formats: &[Format], compressions: &[Compression]) -> Vec<Case> {
        formats
            .iter()
            .flat_map(|&format| {
                compressions.iter().map(move |&compression| Case {
                    format,
                    compression,
                })
            })
            .collect()
    }

    fn format_name(self) -> &'static str {
        match self.format {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Xlsx => "xlsx",
        }
    }

    fn compression_name(self) -> &'static str {
        match self.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The name of the downloaded file, extension included.
    fn file_name(self) -> String {
        let suffix = match self.compression {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        };
        format!("format-{}{suffix}", self.format_name())
    }

    /// The folder name of this case's `TMPDIR`.
    pub fn label(self) -> String {
        format!("{}-{}", self.format_name(), self.compression_name())
    }

    fn request(self) -> CreateExportRequest {
        CreateExportRequest {
            format: match self.format {
                Format::Csv => client::ExportFormat::Csv,
                Format::Jsonl => client::ExportFormat::Jsonl,
                Format::Xlsx => client::ExportFormat::Xlsx,
            } as i32,
            compression: match self.compression {
                Compression::None => client::Compression::None,
                Compression::Gzip => client::Compression::Gzip,
                Compression::Zstd => client::Compression::Zstd,
            } as i32,
            ..Selection::default().request()
        }
    }
}

/// One case measured once.
pub struct CaseRun {
    pub export: ExportRun,
    /// CPU time `exportd` used during the export.
    pub cpu: Duration,
    /// `exportd`'s peak RSS, its process having run this export only.
    pub rss: u64,
    /// The most bytes seen under `exportd`'s `TMPDIR` during the export.
    pub tmp_peak: u64,
    pub verified: Verified,
}

/// Runs `case` in a fresh `exportd` started with `config`: times the export, samples its
/// `TMPDIR`, reads its peak RSS, then downloads the file into `out`, checks it and removes
/// the download (the stored object stays).
pub async fn measure(
    case: Case,
    config: ExportdConfig,
    database_url: &str,
    out: &Path,
) -> anyhow::Result<CaseRun> {
    let tmp_dir = config.tmp_dir.clone();
    let service = Exportd::start(config).await?;
    let outcome = async {
        let cpu_before = service.cpu_time()?;
        let sampler = TmpSampler::start(service.pid(), tmp_dir.clone());
        let export = measure::export(service.client(), database_url, case.request()).await;
        let tmp_peak = sampler.finish()?;
        let export = export?;
        let rss = service.peak_rss()?;
        let cpu = service.cpu_time()? - cpu_before;
        let file = out.join(case.file_name());
        measure::download(service.client(), &export, &file).await?;
        let verified = check(case, file.clone(), export.rows).await?;
        std::fs::remove_file(&file)?;
        anyhow::Ok(CaseRun {
            export,
            cpu,
            rss,
            tmp_peak,
            verified,
        })
    }
    .await;
    let stopped = service.stop().await;
    let run = outcome?;
    stopped?;
    // The process is gone, and with it its anonymous files: whatever is left it forgot.
    let left = tmp_usage::bytes_in_use(None, &tmp_dir)?;
    if left > 0 {
        eprint!("(exportd left {left} bytes in {}) ", tmp_dir.display());
    }
    Ok(run)
}

async fn check(case: Case, file: PathBuf, rows: i64) -> anyhow::Result<Verified> {
    tokio::task::spawn_blocking(move || verify::check(&file, case.format, case.compression, rows))
        .await?
}

/// The matrix's figures: one row per case, medians over the runs (`runs[r][i]` is run `r`'s
/// measurement of `cases[i]`).
pub fn grid(cases: &[Case], runs: &[&[CaseRun]]) -> Grid {
    let median = |i: usize, f: &dyn Fn(&CaseRun) -> f64| {
        report::median(&runs.iter().map(|run| f(&run[i])).collect::<Vec<_>>())
    };
    let wall = |run: &CaseRun| run.export.wall.as_secs_f64();
    let csv_wall = cases
        .iter()
        .position(|&c| c.format == Format::Csv && c.compression == Compression::None)
        .map_or(f64::NAN, |i| median(i, &wall));
    let mut grid = Grid::new(
        &[
            "format",
            "compression",
            "wall",
            "/ csv",
            "s per 1M rows",
            "file MB",
            "exportd CPU",
            "peak RSS MiB",
            "peak TMPDIR MB",
            "checked (last run)",
        ],
        2,
    );
    for (i, &case) in cases.iter().enumerate() {
        let last = &runs[runs.len() - 1][i];
        grid.row(vec![
            case.format_name().to_owned(),
            case.compression_name().to_owned(),
            Fmt::Seconds.show(median(i, &wall)),
            Fmt::Ratio.show(median(i, &wall) / csv_wall),
            Fmt::Seconds.show(median(i, &|r| wall(r) / r.export.rows as f64 * 1e6)),
            Fmt::Decimal.show(median(i, &|r| r.export.bytes as f64 / 1e6)),
            Fmt::Seconds.show(median(i, &|r| r.cpu.as_secs_f64())),
            Fmt::Decimal.show(median(i, &|r| report::mib(r.rss))),
            Fmt::Decimal.show(median(i, &|r| r.tmp_peak as f64 / 1e6)),
            match last.verified {
                Verified::Rows(rows) => format!("{} rows", report::thousands(rows)),
                Verified::Zip(bytes) => format!("ZIP, {:.1} MB", bytes as f64 / 1e6),
            },
        ]);
    }
    grid
}
