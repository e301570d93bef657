//! The measurements: an export through the service, `psql \copy` of the same rows, and a
//! download against a plain file copy.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use contact_export_client::{CreateExportRequest, ExportClient, ExportStatus, is_terminal};
use diesel::QueryableByName;
use diesel::sql_query;
use diesel::sql_types::{Double, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use futures::StreamExt as _;
use tokio::process::Command;
use uuid::Uuid;

use contact_export_server::db;

use crate::selection::Selection;

/// One export through the service, as a watcher saw it.
pub struct ExportRun {
    pub id: String,
    /// Where the file is under the storage root.
    pub object_key: String,
    /// From the `CreateExport` call until the watcher received COMPLETED.
    pub wall: Duration,
    pub rows: i64,
    pub bytes: i64,
    /// Seconds from the export's creation until a worker started it (server clock).
    pub pickup: f64,
    /// Seconds per pipeline step, from `export_steps` (server clock).
    pub steps: Vec<(String, Option<f64>)>,
    /// For each progress message the watcher received: receive time − `update_time`, in ms.
    pub lags_ms: Vec<f64>,
}

impl ExportRun {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.wall.as_secs_f64()
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }

    /// Seconds `step` took; NaN (shown as `-`) when it did not run or did not finish.
    pub fn step(&self, step: &str) -> f64 {
        self.steps
            .iter()
            .find(|(name, _)| name == step)
            .and_then(|(_, seconds)| *seconds)
            .unwrap_or(f64::NAN)
    }

    /// The `p`-th percentile (nearest rank) of the watch lag in ms; NaN without messages.
    pub fn lag_percentile(&self, p: f64) -> f64 {
        crate::report::percentile(&self.lags_ms, p)
    }
}

/// Creates the export `request` asks for in the client's workspace, watches it to the end
/// and measures it. Fails unless it ends COMPLETED.
pub async fn export(
    client: &ExportClient,
    database_url: &str,
    request: CreateExportRequest,
) -> anyhow::Result<ExportRun> {
    let started = Instant::now();
    let created = client.create(request).await?;
    let mut watch = client.watch(created.id.clone()).await?;
    let mut lags_ms = Vec::new();
    let mut first = true;
    let mut end = None;
    while let Some(message) = watch.next().await {
        let received = SystemTime::now();
        let export = message?;
        // The first message is the state when the watch began, not a change pushed to us:
        // its age says nothing about how fast changes arrive.
        if !first
            && export.status() == ExportStatus::Processing
            && export.processed_rows > 0
            && let Some(update_time) = export.update_time
        {
            lags_ms.push(lag_ms(update_time, received)?);
        }
        first = false;
        if is_terminal(export.status()) {
            end = Some((export, started.elapsed()));
            break;
        }
    }
    let Some((export, wall)) = end else {
        bail!(
            "the watch of export {} ended before the export did",
            created.id
        );
    };
    if export.status() != ExportStatus::Completed {
        bail!(
            "export {} ended {}: {}",
            export.id,
            export.status().as_str_name(),
            export.error_message
        );
    }
    let pickup = match (export.create_time, export.start_time) {
        (Some(create), Some(start)) => seconds_between(create, start),
        _ => f64::NAN,
    };
    let id: Uuid = export.id.parse().context("the export id is not a UUID")?;
    Ok(ExportRun {
        object_key: storage_key(database_url, id).await?,
        steps: step_times(database_url, id).await?,
        id: export.id,
        wall,
        rows: export.processed_rows,
        bytes: export.size_bytes,
        pickup,
        lags_ms,
    })
}

fn lag_ms(update_time: prost_types::Timestamp, received: SystemTime) -> anyhow::Result<f64> {
    let updated = SystemTime::try_from(update_time).context("update_time out of range")?;
    // Same machine, same clock; a negative lag would be clock adjustment during the run.
    Ok(match received.duration_since(updated) {
        Ok(lag) => lag.as_secs_f64() * 1e3,
        Err(ahead) => -ahead.duration().as_secs_f64() * 1e3,
    })
}

fn seconds_between(from: prost_types::Timestamp, to: prost_types::Timestamp) -> f64 {
    (to.seconds - from.seconds) as f64 + f64::from(to.nanos - from.nanos) / 1e9
}

/// The key of the object a COMPLETED export points at.
async fn storage_key(database_url: &str, id: Uuid) -> anyhow::Result<String> {
    #[derive(QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        storage_key: String,
    }
    let mut conn = db::connect(database_url).await?;
    let Key { storage_key } = sql_query("SELECT storage_key FROM exports WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .get_result(&mut conn)
        .await?;
    Ok(storage_key)
}

/// How long each pipeline step of export `id` took, as the runner recorded it.
async fn step_times(database_url: &str, id: Uuid) -> anyhow::Result<Vec<(String, Option<f64>)>> {
    #[derive(QueryableByName)]
    struct StepTime {
        #[diesel(sql_type = Text)]
        step: String,
        #[diesel(sql_type = Nullable<Double>)]
        seconds: Option<f64>,
    }
    let mut conn = db::connect(database_url).await?;
    let steps: Vec<StepTime> = sql_query(
        "SELECT step, EXTRACT(EPOCH FROM finished_at - started_at)::float8 AS seconds \
         FROM export_steps WHERE export_id = $1 ORDER BY started_at",
    )
    .bind::<SqlUuid, _>(id)
    .load(&mut conn)
    .await?;
    Ok(steps.into_iter().map(|s| (s.step, s.seconds)).collect())
}

/// `psql \copy` of one selection into a file.
pub struct CopyRun {
    /// From starting `psql` until it exited (connection included, a few ms).
    pub wall: Duration,
    pub rows: i64,
    pub bytes: u64,
}

impl CopyRun {
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }
}

/// `psql` from `pg_config --bindir`, else from PATH.
pub fn find_psql() -> anyhow::Result<PathBuf> {
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("psql"))
        .filter(|psql| psql.is_file());
    if let Some(psql) = from_pg_config {
        return Ok(psql);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("psql"))
        .find(|psql| psql.is_file())
        .context("psql not found (neither in `pg_config --bindir` nor on PATH); install the PostgreSQL client")
}

/// The `\copy` counterpart of an export: the same fixed columns, then each custom key as
/// `custom_fields->>'key'` in the export's column order, the same contacts (`selection`'s
/// conditions), in the same order.
///
/// Values keep PostgreSQL's own text forms (`t`/`f`, `2025-01-01 00:00:00.123456+00` with
/// `PGTZ=UTC`): converting them to the export's forms in SQL would slow the bar down, and the
/// bar is COPY as PostgreSQL writes it. One line: `\copy` reads the rest of its line.
pub fn copy_query(workspace_id: Uuid, keys: &[String], selection: &Selection) -> String {
    let mut sql = String::from(
        "SELECT c.email, c.first_name, c.last_name, c.phone, c.company, c.notes, \
         c.is_unsubscribed, c.created_at",
    );
    for key in keys {
        sql.push_str(&format!(
            ", c.custom_fields->>{} AS {}",
            sql_literal(key),
            sql_identifier(key)
        ));
    }
    sql.push_str(&format!(
        " FROM contacts c WHERE {} ORDER BY c.id",
        selection.conditions(workspace_id)
    ));
    sql
}

fn sql_literal(text: &str) -> String {
    // Line breaks would end the `\copy` line: spell them as escapes.
    if text.contains(['\n', '\r', '\\']) {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r")
            .replace('\'', "''");
        format!("E'{escaped}'")
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

fn sql_identifier(text: &str) -> String {
    // A header is only a label here; line breaks in it are not worth carrying over.
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("\"{}\"", flat.replace('"', "\"\""))
}

/// Runs `\copy (query) TO 'out' WITH (FORMAT csv, HEADER)` and times it.
pub async fn psql_copy(
    psql: &Path,
    database_url: &str,
    query: &str,
    out: &Path,
) -> anyhow::Result<CopyRun> {
    let target = out.to_str().context("the output path is not UTF-8")?;
    let meta = format!(
        "\\copy ({query}) TO '{}' WITH (FORMAT csv, HEADER)",
        target.replace('\'', "''")
    );
    let started = Instant::now();
    let output = Command::new(psql)
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database_url,
            "-c",
            &meta,
        ])
        .env("PGTZ", "UTC")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", psql.display()))?;
    let wall = started.elapsed();
    if !output.status.success() {
        bail!(
            "psql \\copy failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    // psql reports `COPY <rows>`.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("COPY "))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("psql printed no row count: {stdout:?}"))?;
    let bytes = std::fs::metadata(out)?.len();
    Ok(CopyRun { wall, rows, bytes })
}

/// The export and its `\copy` must hold the same rows, or the ratio compares different work.
pub fn same_rows(label: &str, export: &ExportRun, copy: &CopyRun) -> anyhow::Result<()> {
    ensure!(
        export.rows == copy.rows,
        "{label}: the export has {} rows but \\copy {}: the benchmark's selections disagree",
        export.rows,
        copy.rows
    );
    Ok(())
}

/// Writes every dirty page to disk (untimed). The steps before leave hundreds of MB of CSV
/// to write back; without this, whichever timed write happens to run during that writeback
/// pays for it, and the download-to-copy ratio measures the kernel's flush timing.
pub async fn settle_writeback() -> anyhow::Result<()> {
    // SAFETY: `sync` takes no arguments and cannot fail.
    tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await?;
    Ok(())
}

/// Downloads the export's file through `DownloadExport` (the client checks size and SHA-256).
pub async fn download(
    client: &ExportClient,
    export: &ExportRun,
    out: &Path,
) -> anyhow::Result<Duration> {
    let mut file = tokio::fs::File::create(out).await?;
    let started = Instant::now();
    let metadata = client
        .download_to(export.id.clone(), &mut file, |_, _| {})
        .await?;
    let took = started.elapsed();
    ensure!(
        metadata.size_bytes == export.bytes,
        "downloaded {} bytes, the export says {}",
        metadata.size_bytes,
        export.bytes
    );
    Ok(took)
}

/// `std::fs::copy` of the object as the storage holds it: the floor for moving its bytes.
pub async fn disk_copy(from: &Path, to: &Path) -> anyhow::Result<Duration> {
    let (from, to) = (from.to_owned(), to.to_owned());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        Ok(started.elapsed())
    })
    .await?
}
