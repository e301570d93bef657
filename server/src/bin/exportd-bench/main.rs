//! `exportd-bench`: how fast, how lean and how live an export is, through the real service.
//!
//! It starts a throwaway PostgreSQL, seeds a realistic CRM (see [`seed`]), then repeats, for
//! each of `--runs` runs and on the same data:
//!
//! - a full export, a tag-filtered export and a combined-filter export (tags all-of and
//!   excluded, a created range, subscribed only) through a fresh `exportd serve` child over
//!   gRPC, timed from `CreateExport` until a watcher sees COMPLETED, with the watcher's lag
//!   per progress message and the child's peak RSS;
//! - `psql \copy` of the same selection and columns, as the bar to compare against;
//! - `DownloadExport` of the full file against a plain copy of the same object on disk;
//! - a full export of a workspace a tenth the size, in another fresh `exportd`, so that the
//!   two peak RSS figures compare a small and a large export;
//! - a full export in every format and compression ([`formats`]), each in a fresh `exportd`,
//!   with its peak RSS and peak temporary disk, its file downloaded and checked.
//!
//! and prints median, min and max of every measurement ([`report`]). Build both binaries
//! first, so that the `exportd` beside this one is current:
//!
//! ```text
//! cargo build --release -p contact-export-server
//! cargo run --release -p contact-export-server --bin exportd-bench -- --contacts 1000000
//! ```

mod formats;
mod measure;
mod report;
mod seed;
mod selection;
mod service;
mod tmp_usage;
mod verify;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use contact_export_devkit::postgres::Cluster;

use crate::formats::{Case, CaseRun};
use crate::measure::{CopyRun, ExportRun};
use crate::report::{Fmt, Table, mib};
use crate::seed::Dataset;
use crate::selection::Selection;
use crate::service::{Exportd, ExportdConfig};

/// The database the bench creates in its cluster.
const DATABASE: &str = "bench";

#[derive(Parser)]
#[command(
    name = "exportd-bench",
    about = "Benchmark Contact Export against psql \\copy on a throwaway PostgreSQL"
)]
struct Args {
    /// Contacts in the main workspace; a second workspace gets a tenth as many (at least 1).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(10..))]
    contacts: u64,
    /// How many times each measurement is taken.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Work in this folder and keep it afterwards (cluster, files, logs, the last run's CSVs).
    /// A later run on the same folder reuses its seeded data when `--contacts` matches.
    #[arg(long)]
    keep_dir: Option<PathBuf>,
    /// `--workers` of each `exportd`.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// `--batch-size` of each `exportd` (default: exportd's own).
    #[arg(long)]
    batch_size: Option<u32>,
    /// The `exportd` binary to measure (default: the one beside this binary).
    #[arg(long)]
    exportd: Option<PathBuf>,
    /// The formats of the format × compression matrix (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["csv", "jsonl", "xlsx"])]
    formats: Vec<formats::Format>,
    /// The compressions of the format × compression matrix (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["none", "gzip", "zstd"])]
    compressions: Vec<formats::Compression>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Our own progress goes to stderr, the results to stdout; library logs only when asked.
    contact_export_server::logging::init("warn", contact_export_server::logging::LogFormat::Text);
    let args = Args::parse();

    let exportd = match &args.exportd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("exportd"),
    };
    if !exportd.is_file() {
        bail!(
            "{} not found: build both binaries with `cargo build --release -p \
             contact-export-server` (or pass --exportd PATH)",
            exportd.display()
        );
    }
    let psql = measure::find_psql()?;
    let load_at_start = report::load_average();

    let (work_dir, keep) = match &args.keep_dir {
        Some(dir) => (dir.clone(), true),
        None => (
            std::env::temp_dir().join(format!("exportd-bench-{}", std::process::id())),
            false,
        ),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let work_dir = std::fs::canonicalize(&work_dir)?;
    eprintln!("working in {}", work_dir.display());

    let cluster_dir = work_dir.join("pg");
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&cluster_dir))
        .await?
        .context("starting the throwaway PostgreSQL")?;
    eprintln!("PostgreSQL log: {}", cluster.log_path().display());

    let bench = Bench {
        args: &args,
        exportd: &exportd,
        psql: &psql,
        work_dir: &work_dir,
        database_url: cluster.url(DATABASE),
        load_at_start,
    };
    let result = bench.run(&cluster).await;

    // Clean up whatever happened; on failure the logs stay for a post-mortem.
    let log_path = cluster.log_path().to_owned();
    let stopped = tokio::task::spawn_blocking(move || {
        if keep {
            let mut cluster = cluster;
            cluster.stop()
        } else {
            cluster.destroy()
        }
    })
    .await?;
    match &result {
        Ok(()) if !keep => {
            let _ = std::fs::remove_dir_all(&work_dir);
        }
        Ok(()) => eprintln!("kept {}", work_dir.display()),
        Err(_) => {
            if !keep {
                // The files are large and useless for a post-mortem; the logs are what matters.
                let _ = std::fs::remove_dir_all(work_dir.join("files"));
                let _ = std::fs::remove_dir_all(work_dir.join("out"));
                let _ = std::fs::remove_dir_all(work_dir.join("tmp"));
            }
            eprintln!(
                "failed; logs kept: {} and {}",
                log_path.display(),
                work_dir.join("exportd.log").display()
            );
        }
    }
    result?;
    stopped.context("stopping PostgreSQL")?;
    Ok(())
}

/// Everything a run needs, borrowed from `main`.
struct Bench<'a> {
    args: &'a Args,
    exportd: &'a Path,
    psql: &'a Path,
    work_dir: &'a Path,
    database_url: String,
    load_at_start: String,
}

/// One run's figures.
struct RunResult {
    large: LargeRun,
    small: ExportRun,
    rss_small: u64,
    /// One per case of [`Bench::cases`], in its order.
    formats: Vec<CaseRun>,
}

/// What one run measures on the N-row workspace, in one `exportd`.
struct LargeRun {
    full: ExportRun,
    full_copy: CopyRun,
    tagged: Filtered,
    combined: Filtered,
    download: Duration,
    disk_copy: Duration,
    rss_large: u64,
    /// CPU time `exportd` used during the full export.
    full_cpu: Duration,
}

/// A filtered export, `\copy` of the same rows, and the CPU time `exportd` used for it.
struct Filtered {
    export: ExportRun,
    copy: CopyRun,
    cpu: Duration,
}

impl Bench<'_> {
    async fn run(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let started = Instant::now();
        let data = seed::prepare(
            &cluster.url("postgres"),
            &self.database_url,
            self.args.contacts,
        )
        .await?;
        match data.seed_time {
            Some(took) => eprintln!(
                "seeded {} + {} contacts in {:.1} s",
                data.contacts,
                data.second_contacts,
                took.as_secs_f64()
            ),
            None => eprintln!("reusing the data seeded by an earlier run"),
        }

        let mut runs = Vec::new();
        for run in 1..=self.args.runs {
            runs.push(self.one_run(run, &data).await?);
        }
        self.print(&data, &runs);
        eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The configuration of a fresh `exportd` for `token`, with an empty `TMPDIR` of its own
    /// (`tmp/<name>` in the work folder).
    fn exportd_config(&self, token: &str, name: &str) -> anyhow::Result<ExportdConfig> {
        let tmp_dir = self.work_dir.join("tmp").join(name);
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir)
            .with_context(|| format!("creating {}", tmp_dir.display()))?;
        Ok(ExportdConfig {
            binary: self.exportd.to_owned(),
            database_url: self.database_url.clone(),
            storage_root: self.work_dir.join("files"),
            workers: self.args.workers,
            batch_size: self.args.batch_size,
            tmp_dir,
            log: self.work_dir.join("exportd.log"),
            token: token.to_owned(),
        })
    }

    /// The format × compression matrix's cases, as the flags ask.
    fn cases(&self) -> Vec<Case> {
        Case::matrix(&self.args.formats, &self.args.compressions)
    }

    /// An export of `selection` and `psql \copy` of the same rows into `out/copy-<name>.csv`,
    /// which must agree on the row count; `label` names them on stderr.
    async fn filtered(
        &self,
        service: &Exportd,
        data: &Dataset,
        run: u32,
        label: &str,
        selection: &Selection,
    ) -> anyhow::Result<Filtered> {
        let runs = self.args.runs;
        eprint!("run {run}/{runs}: {label} export… ");
        let cpu_before = service.cpu_time()?;
        let export =
            measure::export(service.client(), &self.database_url, selection.request()).await?;
        let cpu = service.cpu_time()? - cpu_before;
        eprintln!("{:.2} s", export.wall.as_secs_f64());

        eprint!("run {run}/{runs}: psql \\copy, {label}… ");
        let copy = measure::psql_copy(
            self.psql,
            &self.database_url,
            &measure::copy_query(data.demo.workspace_id, &data.keys, selection),
            &self.work_dir.join("out").join(format!("copy-{label}.csv")),
        )
        .await?;
        eprintln!("{:.2} s", copy.wall.as_secs_f64());
        measure::same_rows(label, &export, &copy)?;
        Ok(Filtered { export, copy, cpu })
    }

    /// One run of every measurement. Service and `\copy` alternate, so that a noisy
    /// neighbour on a shared machine disturbs both sides of a ratio alike.
    async fn one_run(&self, run: u32, data: &Dataset) -> anyhow::Result<RunResult> {
        let runs = self.args.runs;
        // The previous run's files go now, not at its end: the last run's stay for `--keep-dir`.
        let out = self.work_dir.join("out");
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(self.work_dir.join("files"));
        let _ = std::fs::remove_dir_all(self.work_dir.join("tmp"));
        std::fs::create_dir_all(&out)?;

        // A fresh process per run: its VmHWM then covers this run's full export and nothing
        // before it.
        let service = Exportd::start(self.exportd_config(&data.demo.token, "large")?).await?;
        let client = service.client().clone();
        let outcome = async {
            eprint!("run {run}/{runs}: full export… ");
            let cpu_before = service.cpu_time()?;
            let full = measure::export(&client, &self.database_url, Selection::default().request())
                .await?;
            let rss_large = service.peak_rss()?;
            let full_cpu = service.cpu_time()? - cpu_before;
            eprintln!("{:.2} s", full.wall.as_secs_f64());

            eprint!("run {run}/{runs}: psql \\copy, full… ");
            let full_copy = measure::psql_copy(
                self.psql,
                &self.database_url,
                &measure::copy_query(data.demo.workspace_id, &data.keys, &Selection::default()),
                &out.join("copy-full.csv"),
            )
            .await?;
            eprintln!("{:.2} s", full_copy.wall.as_secs_f64());
            measure::same_rows("full", &full, &full_copy)?;

            let tagged = self
                .filtered(&service, data, run, "tag-filtered", &data.tag_filter)
                .await?;
            let combined = self
                .filtered(&service, data, run, "combined-filter", &data.combined)
                .await?;

            eprint!("run {run}/{runs}: download vs disk copy… ");
            measure::settle_writeback().await?;
            let download =
                measure::download(&client, &full, &out.join("downloaded-full.csv")).await?;
            measure::settle_writeback().await?;
            let object = self.work_dir.join("files").join(&full.object_key);
            let disk_copy = measure::disk_copy(&object, &out.join("copied-full.csv")).await?;
            eprintln!(
                "{:.2} s vs {:.2} s",
                download.as_secs_f64(),
                disk_copy.as_secs_f64()
            );
            anyhow::Ok(LargeRun {
                full,
                full_copy,
                tagged,
                combined,
                download,
                disk_copy,
                rss_large,
                full_cpu,
            })
        }
        .await;
        let stopped = service.stop().await;
        let large = outcome?;
        stopped?;

        eprint!(
            "run {run}/{runs}: {}-row export in a fresh exportd (peak RSS)… ",
            report::thousands(data.second_contacts as i64)
        );
        let service = Exportd::start(self.exportd_config(&data.second.token, "small")?).await?;
        let small = async {
            let small = measure::export(
                service.client(),
                &self.database_url,
                Selection::default().request(),
            )
            .await?;
            anyhow::Ok((small, service.peak_rss()?))
        }
        .await;
        let stopped = service.stop().await;
        let (small, rss_small) = small?;
        stopped?;
        eprintln!("{:.2} s", small.wall.as_secs_f64());

        let mut formats = Vec::new();
        for case in self.cases() {
            eprint!(
                "run {run}/{runs}: {} export in a fresh exportd… ",
                case.label()
            );
            let config = self.exportd_config(&data.demo.token, &case.label())?;
            let measured = formats::measure(case, config, &self.database_url, &out).await?;
            eprintln!(
                "{:.2} s, {:.1} MB, checked",
                measured.export.wall.as_secs_f64(),
                measured.export.bytes as f64 / 1e6
            );
            formats.push(measured);
        }

        Ok(RunResult {
            large,
            small,
            rss_small,
            formats,
        })
    }

    fn print(&self, data: &Dataset, runs: &[RunResult]) {
        let command: Vec<String> = std::env::args().collect();
        println!();
        println!("command:  {}", command.join(" "));
        println!("exportd:  {}", self.exportd.display());
        for line in report::machine_facts(&data.server_version, &self.load_at_start) {
            println!("{line}");
        }
        println!(
            "data:     {} contacts ({} custom-field keys; tag filter [{}] matches {} = {:.0}%), \
             second workspace {} contacts",
            report::thousands(data.contacts as i64),
            data.keys.len(),
            data.tag_names.join(", "),
            report::thousands(data.tag_matches),
            100.0 * data.tag_matches as f64 / data.contacts as f64,
            report::thousands(data.second_contacts as i64),
        );
        println!(
            "          combined filter [{}] matches {} = {:.1}%",
            data.combined_label,
            report::thousands(data.combined_matches),
            100.0 * data.combined_matches as f64 / data.contacts as f64,
        );
        println!(
            "service:  --workers {} --batch-size {}; {} run(s); MB = 10^6 bytes",
            self.args.workers,
            self.args
                .batch_size
                .map_or_else(|| "(default)".to_owned(), |b| b.to_string()),
            runs.len()
        );
        println!();

        let table = results_table(data, runs);
        table.print();
        println!();
        let cases = self.cases();
        if !cases.is_empty() {
            println!(
                "format × compression, full export of {} rows, each in a fresh exportd (medians; \
                 peak TMPDIR: bytes of the files under exportd's TMPDIR, unlinked ones included, \
                 sampled every 50 ms)",
                report::thousands(runs[0].large.full.rows)
            );
            let per_run: Vec<&[CaseRun]> = runs.iter().map(|r| r.formats.as_slice()).collect();
            formats::grid(&cases, &per_run).print();
            println!();
        }
        table.print_targets(&targets(runs));
    }
}

/// The table of every measurement, one value per run.
fn results_table(data: &Dataset, runs: &[RunResult]) -> Table {
    let per_run = |f: &dyn Fn(&RunResult) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let secs = |d: Duration| d.as_secs_f64();
    let mut t = Table::default();

    let full_rows = report::thousands(runs[0].large.full.rows);
    t.section(&format!(
        "full export, {full_rows} rows (CreateExport → COMPLETED seen)"
    ));
    t.row(
        "wall time",
        Fmt::Seconds,
        per_run(&|r| secs(r.large.full.wall)),
    );
    t.row(
        "rows/s",
        Fmt::Rate,
        per_run(&|r| r.large.full.rows_per_sec()),
    );
    t.row("MB/s", Fmt::Rate, per_run(&|r| r.large.full.mb_per_sec()));
    t.row(
        "file size, MB",
        Fmt::Decimal,
        per_run(&|r| r.large.full.bytes as f64 / 1e6),
    );
    t.row(
        "  pickup (create → start)",
        Fmt::Seconds,
        per_run(&|r| r.large.full.pickup),
    );
    for step in ["resolve-export-metadata", "stream-export"] {
        t.row(
            &format!("  step {step}"),
            Fmt::Seconds,
            per_run(&|r| r.large.full.step(step)),
        );
    }
    t.row(
        "  CPU time of exportd",
        Fmt::Seconds,
        per_run(&|r| secs(r.large.full_cpu)),
    );
    t.section("psql \\copy, full (same rows and columns)");
    t.row(
        "wall time",
        Fmt::Seconds,
        per_run(&|r| secs(r.large.full_copy.wall)),
    );
    t.row(
        "MB/s",
        Fmt::Rate,
        per_run(&|r| r.large.full_copy.mb_per_sec()),
    );
    t.row(
        "export / \\copy",
        Fmt::Ratio,
        per_run(&|r| secs(r.large.full.wall) / secs(r.large.full_copy.wall)),
    );

    let tag_names = data.tag_names.join(" or ");
    filtered_sections(
        &mut t,
        runs,
        &|r| &r.large.tagged,
        &format!("tag-filtered export, {{rows}} rows (tags: {tag_names})"),
        "psql \\copy, tag-filtered (EXISTS on contact_tags)",
    );
    filtered_sections(
        &mut t,
        runs,
        &|r| &r.large.combined,
        &format!(
            "combined-filter export, {{rows}} rows ({})",
            data.combined_label
        ),
        "psql \\copy, combined filter (EXISTS per tag, NOT EXISTS, range, NOT is_unsubscribed)",
    );

    t.section("download of the full file");
    t.row(
        "DownloadExport (client, SHA-256 checked)",
        Fmt::Seconds,
        per_run(&|r| secs(r.large.download)),
    );
    t.row(
        "  MB/s",
        Fmt::Rate,
        per_run(&|r| r.large.full.bytes as f64 / 1e6 / secs(r.large.download)),
    );
    t.row(
        "std::fs::copy of the object",
        Fmt::Seconds,
        per_run(&|r| secs(r.large.disk_copy)),
    );
    t.row(
        "download / copy",
        Fmt::Ratio,
        per_run(&|r| secs(r.large.download) / secs(r.large.disk_copy)),
    );

    let small_rows = report::thousands(runs[0].small.rows);
    t.section("peak RSS of exportd (VmHWM of a fresh process per export)");
    t.row(
        &format!("{full_rows}-row export, MiB"),
        Fmt::Decimal,
        per_run(&|r| mib(r.large.rss_large)),
    );
    t.row(
        &format!("{small_rows}-row export, MiB"),
        Fmt::Decimal,
        per_run(&|r| mib(r.rss_small)),
    );
    t.row(
        "large / small",
        Fmt::Ratio,
        per_run(&|r| r.large.rss_large as f64 / r.rss_small as f64),
    );
    t.row(
        &format!("  ({small_rows}-row export wall time)"),
        Fmt::Seconds,
        per_run(&|r| secs(r.small.wall)),
    );

    t.section("watch lag during the full export (receive − update_time)");
    t.row(
        "median, ms",
        Fmt::Decimal,
        per_run(&|r| r.large.full.lag_percentile(50.0)),
    );
    t.row(
        "p99, ms",
        Fmt::Decimal,
        per_run(&|r| r.large.full.lag_percentile(99.0)),
    );
    t.row(
        "max, ms",
        Fmt::Decimal,
        per_run(&|r| r.large.full.lag_percentile(100.0)),
    );
    t.row(
        "progress messages seen",
        Fmt::Count,
        per_run(&|r| r.large.full.lags_ms.len() as f64),
    );
    t
}

/// The sections of a filtered export and its `\copy`; `{rows}` in `title` becomes the row count.
fn filtered_sections(
    t: &mut Table,
    runs: &[RunResult],
    pick: &dyn Fn(&RunResult) -> &Filtered,
    title: &str,
    copy_title: &str,
) {
    let per_run = |f: &dyn Fn(&Filtered) -> f64| runs.iter().map(|r| f(pick(r))).collect();
    let secs = |d: Duration| d.as_secs_f64();
    let rows = report::thousands(pick(&runs[0]).export.rows);
    t.section(&title.replace("{rows}", &rows));
    t.row("wall time", Fmt::Seconds, per_run(&|f| secs(f.export.wall)));
    t.row("rows/s", Fmt::Rate, per_run(&|f| f.export.rows_per_sec()));
    t.row("MB/s", Fmt::Rate, per_run(&|f| f.export.mb_per_sec()));
    t.row(
        "  pickup (create → start)",
        Fmt::Seconds,
        per_run(&|f| f.export.pickup),
    );
    for step in [
        "resolve-tag-filter",
        "resolve-export-metadata",
        "stream-export",
    ] {
        t.row(
            &format!("  step {step}"),
            Fmt::Seconds,
            per_run(&|f| f.export.step(step)),
        );
    }
    t.row(
        "  CPU time of exportd",
        Fmt::Seconds,
        per_run(&|f| secs(f.cpu)),
    );
    t.section(copy_title);
    t.row("wall time", Fmt::Seconds, per_run(&|f| secs(f.copy.wall)));
    t.row(
        "export / \\copy",
        Fmt::Ratio,
        per_run(&|f| secs(f.export.wall) / secs(f.copy.wall)),
    );
}

/// The issue's targets, judged on the medians.
fn targets(runs: &[RunResult]) -> Vec<report::Target> {
    let median =
        |f: &dyn Fn(&RunResult) -> f64| report::median(&runs.iter().map(f).collect::<Vec<_>>());
    let secs = |d: Duration| d.as_secs_f64();
    vec![
        report::Target::at_most(
            "full export / \\copy",
            median(&|r| secs(r.large.full.wall) / secs(r.large.full_copy.wall)),
            1.5,
            Fmt::Ratio,
        ),
        report::Target::at_most(
            "tag-filtered export / \\copy",
            median(&|r| secs(r.large.tagged.export.wall) / secs(r.large.tagged.copy.wall)),
            2.0,
            Fmt::Ratio,
        ),
        report::Target::at_most(
            "peak RSS of the large export, MiB",
            median(&|r| mib(r.large.rss_large)),
            100.0,
            Fmt::Decimal,
        ),
        report::Target::at_most(
            "peak RSS large / small",
            median(&|r| r.large.rss_large as f64 / r.rss_small as f64),
            1.2,
            Fmt::Ratio,
        ),
        report::Target::below(
            "watch lag p99, ms",
            median(&|r| r.large.full.lag_percentile(99.0)),
            250.0,
            Fmt::Decimal,
        ),
        report::Target::at_most(
            "download / disk copy",
            median(&|r| secs(r.large.download) / secs(r.large.disk_copy)),
            3.0,
            Fmt::Ratio,
        ),
    ]
}
