//! Prometheus metrics: what this replica did (counters, a histogram and a gauge kept in atomics)
//! and what the shared database holds (read when scraped).
//!
//! [`Metrics`] is a cheap handle that the worker and the pipeline record into; nothing here
//! knows about HTTP, which [`http`] adds on top. The registry is hand-written rather than
//! `prometheus-client`: the set of series is small and fixed (four steps, six statuses), and
//! two of the gauges come from an async database query at scrape time, which fits a render
//! function better than that crate's synchronous collectors.

mod database;
pub mod http;
mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::db::PgPool;
use crate::queue::StepName;
use database::{DatabaseGauges, read_database};

/// Upper bounds (seconds) of the step duration buckets: from a quick query to a long stream.
const DURATION_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A scrape gives up on the database after this long and reports what this replica knows.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// This replica's metrics. Clones share one registry.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    running_jobs: AtomicI64,
    rows_exported: AtomicU64,
    bytes_written: AtomicU64,
    /// Indexed like [`StepName::ALL`].
    steps: [StepMetrics; StepName::ALL.len()],
}

#[derive(Default)]
struct StepMetrics {
    duration: Histogram,
    retries: AtomicU64,
    failures: AtomicU64,
}

/// Per-bucket (not cumulative) counts, the last one for observations above every bound, so
/// that the count and the `+Inf` bucket, both derived from them, always agree.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a job as running until the returned guard is dropped (also by a panic).
    pub fn job_running(&self) -> RunningJob {
        self.registry.running_jobs.fetch_add(1, Ordering::Relaxed);
        RunningJob {
            registry: self.registry.clone(),
        }
    }

    /// Bytes handed to the storage writer, by any attempt (also one that is later aborted).
    pub fn bytes_written(&self, bytes: usize) {
        self.registry
            .bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Rows handed to the storage writer, by any attempt (also one that is later aborted).
    pub fn rows_exported(&self, rows: usize) {
        self.registry
            .rows_exported
            .fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// One attempt of `step` ran for `elapsed`; `failed` when it ended in a real failure
    /// (not a cancellation, a shutdown or a lost lease).
    pub fn step_attempt(&self, step: StepName, elapsed: Duration, failed: bool) {
        let metrics = self.step(step);
        metrics.duration.observe(elapsed);
        if failed {
            metrics.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The runner tries `step` again after a failed attempt.
    pub fn step_retried(&self, step: StepName) {
        self.step(step).retries.fetch_add(1, Ordering::Relaxed);
    }

    fn step(&self, step: StepName) -> &StepMetrics {
        &self.registry.steps[step.index()]
    }

    /// The text exposition of every metric, with the database's gauges read now. If the
    /// database cannot be read, they are left out and `contact_export_database_up` says so: a
    /// scrape still shows what this replica is doing.
    pub async fn render(&self, pool: &PgPool) -> String {
        let database = match tokio::time::timeout(DATABASE_TIMEOUT, read_database(pool)).await {
            Ok(Ok(gauges)) => Some(gauges),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: reading the database failed");
                None
            }
            Err(_) => {
                tracing::warn!(timeout = ?DATABASE_TIMEOUT, "metrics: reading the database timed out");
                None
            }
        };
        self.encode(database.as_ref())
    }

    fn encode(&self, database: Option<&DatabaseGauges>) -> String {
        let r = &*self.registry;
        let mut out = text::Encoder::default();
        if let Some(db) = database {
            out.family(
                "contact_export_exports",
                "gauge",
                "Exports by status, across all workspaces (read from the database).",
            );
            for (status, count) in &db.exports_by_status {
                out.sample("contact_export_exports", &[("status", status)], *count);
            }
            out.family(
                "contact_export_queue_depth",
                "gauge",
                "Jobs a worker could claim now: not done and not leased (read from the database).",
            );
            out.sample("contact_export_queue_depth", &[], db.queue_depth);
        }
        out.family(
            "contact_export_database_up",
            "gauge",
            "1 if this scrape read the database's gauges, 0 if they are missing from it.",
        );
        out.sample(
            "contact_export_database_up",
            &[],
            i64::from(database.is_some()),
        );
        out.family(
            "contact_export_running_jobs",
            "gauge",
            "Jobs this replica runs now.",
        );
        out.sample(
            "contact_export_running_jobs",
            &[],
            r.running_jobs.load(Ordering::Relaxed),
        );
        out.family(
            "contact_export_rows_exported_total",
            "counter",
            "CSV rows this replica wrote to storage, by every attempt.",
        );
        out.sample(
            "contact_export_rows_exported_total",
            &[],
            r.rows_exported.load(Ordering::Relaxed),
        );
        out.family(
            "contact_export_bytes_written_total",
            "counter",
            "CSV bytes this replica wrote to storage, by every attempt.",
        );
        out.sample(
            "contact_export_bytes_written_total",
            &[],
            r.bytes_written.load(Ordering::Relaxed),
        );

        out.family(
            "contact_export_step_duration_seconds",
            "histogram",
            "Duration of each attempt of a pipeline step on this replica.",
        );
        for (name, metrics) in StepName::ALL.iter().map(|s| s.as_str()).zip(&r.steps) {
            let counts: Vec<u64> = metrics
                .duration
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            let sum = metrics.duration.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            out.histogram(
                "contact_export_step_duration_seconds",
                ("step", name),
                &DURATION_BUCKETS,
                &counts,
                sum,
            );
        }
        out.family(
            "contact_export_step_retries_total",
            "counter",
            "Retries of a pipeline step after a failed attempt, on this replica.",
        );
        for (name, metrics) in StepName::ALL.iter().map(|s| s.as_str()).zip(&r.steps) {
            out.sample(
                "contact_export_step_retries_total",
                &[("step", name)],
                metrics.retries.load(Ordering::Relaxed),
            );
        }
        out.family(
            "contact_export_step_failures_total",
            "counter",
            "Failed attempts of a pipeline step on this replica (cancellations excluded).",
        );
        for (name, metrics) in StepName::ALL.iter().map(|s| s.as_str()).zip(&r.steps) {
            out.sample(
                "contact_export_step_failures_total",
                &[("step", name)],
                metrics.failures.load(Ordering::Relaxed),
            );
        }
        out.finish()
    }
}

/// Decrements the running jobs when dropped.
pub struct RunningJob {
    registry: Arc<Registry>,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.registry.running_jobs.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let metrics = Metrics::default();
        let running = metrics.job_running();
        metrics.rows_exported(7);
        metrics.bytes_written(100);
        metrics.bytes_written(23);
        metrics.step_attempt(StepName::StreamExport, Duration::from_millis(30), true);
        metrics.step_attempt(StepName::StreamExport, Duration::from_secs(2), false);
        metrics.step_attempt(StepName::StreamExport, Duration::from_secs(3600), false);
        metrics.step_retried(StepName::StreamExport);
        let db = DatabaseGauges {
            exports_by_status: [("pending".to_owned(), 2), ("failed".to_owned(), 1)]
                .into_iter()
                .collect(),
            queue_depth: 2,
        };
        let text = metrics.encode(Some(&db));

        assert_eq!(sample(&text, "contact_export_running_jobs"), "1");
        assert_eq!(sample(&text, "contact_export_rows_exported_total"), "7");
        assert_eq!(sample(&text, "contact_export_bytes_written_total"), "123");
        assert_eq!(sample(&text, "contact_export_queue_depth"), "2");
        assert_eq!(sample(&text, "contact_export_database_up"), "1");
        assert_eq!(
            sample(&text, r#"contact_export_exports{status="pending"}"#),
            "2"
        );
        let stream = |suffix: &str, le: &str| {
            let series = if le.is_empty() {
                format!(r#"contact_export_step_duration_seconds_{suffix}{{step="stream-export"}}"#)
            } else {
                format!(
                    r#"contact_export_step_duration_seconds_{suffix}{{step="stream-export",le="{le}"}}"#
                )
            };
            sample(&text, &series).to_owned()
        };
        assert_eq!(stream("bucket", "0.025"), "0");
        assert_eq!(stream("bucket", "0.05"), "1");
        assert_eq!(stream("bucket", "2.5"), "2");
        assert_eq!(stream("bucket", "600"), "2");
        assert_eq!(stream("bucket", "+Inf"), "3");
        assert_eq!(stream("count", ""), "3");
        assert_eq!(stream("sum", ""), "3602.03");
        assert_eq!(
            sample(
                &text,
                r#"contact_export_step_retries_total{step="stream-export"}"#
            ),
            "1"
        );
        assert_eq!(
            sample(
                &text,
                r#"contact_export_step_failures_total{step="stream-export"}"#
            ),
            "1"
        );
        assert_eq!(
            sample(
                &text,
                r#"contact_export_step_duration_seconds_count{step="send-notification"}"#
            ),
            "0"
        );

        drop(running);
        let text = metrics.encode(None);
        assert_eq!(sample(&text, "contact_export_running_jobs"), "0");
        assert_eq!(sample(&text, "contact_export_database_up"), "0");
        assert!(!text.contains("contact_export_exports"), "{text}");
        assert!(!text.contains("contact_export_queue_depth"), "{text}");
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = Metrics::default().encode(None);
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.iter().any(|family| name == family
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(family))),
                    "{line} comes before its TYPE"
                );
            }
        }
        assert!(text.ends_with('\n'));
    }
}
