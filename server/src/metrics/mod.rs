//! Prometheus metrics (`prometheus-client`): what this replica did (counters, a histogram
//! and a gauge) and what the shared database holds (read when scraped).
//!
//! [`Metrics`] is a cheap handle that the worker and the pipeline record into; nothing here
//! knows about HTTP, which [`http`] adds on top. The database's two gauges come from an async
//! query at scrape time: each scrape reads them first, then builds a registry of that moment
//! (this replica's metrics, shared, and the database's, if they could be read) and encodes it.

mod database;
pub mod http;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::db::PgPool;
use crate::queue::StepName;
use database::{DatabaseGauges, read_database};

/// The `Content-Type` of what [`Metrics::render`] writes: OpenMetrics 1.0, which Prometheus
/// asks for and reads (names, labels and types as in the 0.0.4 text format).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the step duration buckets: from a quick query to a long stream.
const DURATION_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A scrape gives up on the database after this long and reports what this replica knows.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// This replica's metrics. Clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    running_jobs: Gauge,
    rows_exported: Counter,
    bytes_written: Counter,
    step_duration: Family<StepLabel, Histogram>,
    step_retries: Family<StepLabel, Counter>,
    step_failures: Family<StepLabel, Counter>,
    exports_expired: Counter,
    objects_deleted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let inner = Inner {
            running_jobs: Gauge::default(),
            rows_exported: Counter::default(),
            bytes_written: Counter::default(),
            step_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            step_retries: Family::default(),
            step_failures: Family::default(),
            exports_expired: Counter::default(),
            objects_deleted: Counter::default(),
        };
        // Every step has its series from the start, at zero.
        for step in StepName::ALL {
            let label = StepLabel {
                step: step.as_str(),
            };
            let _ = inner.step_duration.get_or_create(&label);
            let _ = inner.step_retries.get_or_create(&label);
            let _ = inner.step_failures.get_or_create(&label);
        }
        Metrics {
            inner: Arc::new(inner),
        }
    }
}

impl Metrics {
    /// Counts a job as running until the returned guard is dropped (also by a panic).
    pub fn job_running(&self) -> RunningJob {
        self.inner.running_jobs.inc();
        RunningJob {
            inner: self.inner.clone(),
        }
    }

    /// Bytes of an export file written to storage.
    pub fn bytes_written(&self, bytes: usize) {
        self.inner.bytes_written.inc_by(bytes as u64);
    }

    /// Rows of an export written to storage.
    pub fn rows_exported(&self, rows: usize) {
        self.inner.rows_exported.inc_by(rows as u64);
    }

    /// One attempt of `step` ran for `elapsed`; `failed` when it ended in a real failure
    /// (not a cancellation, a shutdown or a lost lease).
    pub fn step_attempt(&self, step: StepName, elapsed: Duration, failed: bool) {
        let label = StepLabel {
            step: step.as_str(),
        };
        self.inner
            .step_duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        if failed {
            self.inner.step_failures.get_or_create(&label).inc();
        }
    }

    /// The janitor marked `n` exports EXPIRED.
    pub fn exports_expired(&self, n: usize) {
        self.inner.exports_expired.inc_by(n as u64);
    }

    /// The janitor (or a run) removed `n` objects from storage.
    pub fn objects_deleted(&self, n: usize) {
        self.inner.objects_deleted.inc_by(n as u64);
    }

    /// The runner tries `step` again after a failed attempt.
    pub fn step_retried(&self, step: StepName) {
        let label = StepLabel {
            step: step.as_str(),
        };
        self.inner.step_retries.get_or_create(&label).inc();
    }

    /// The exposition of every metric, with the database's gauges read now. If the database
    /// cannot be read, they are left out and `contact_export_database_up` says so: a scrape
    /// still shows what this replica is doing.
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
        let inner = &*self.inner;
        let mut registry = Registry::default();
        if let Some(db) = database {
            let exports = Family::<StatusLabel, Gauge>::default();
            for (status, count) in &db.exports_by_status {
                exports
                    .get_or_create(&StatusLabel {
                        status: status.clone(),
                    })
                    .set(*count);
            }
            registry.register(
                "contact_export_exports",
                "Exports by status, across all workspaces (read from the database)",
                exports,
            );
            let depth = Gauge::<i64>::default();
            depth.set(db.queue_depth);
            registry.register(
                "contact_export_queue_depth",
                "Jobs a worker could claim now: not done and not leased (read from the database)",
                depth,
            );
        }
        let up = Gauge::<i64>::default();
        up.set(i64::from(database.is_some()));
        registry.register(
            "contact_export_database_up",
            "1 if this scrape read the database's gauges, 0 if they are missing from it",
            up,
        );
        registry.register(
            "contact_export_running_jobs",
            "Jobs this replica runs now",
            inner.running_jobs.clone(),
        );
        registry.register(
            "contact_export_rows_exported",
            "CSV rows this replica wrote to storage, by every attempt",
            inner.rows_exported.clone(),
        );
        registry.register(
            "contact_export_bytes_written",
            "CSV bytes this replica wrote to storage, by every attempt",
            inner.bytes_written.clone(),
        );
        registry.register(
            "contact_export_step_duration_seconds",
            "Duration of each attempt of a pipeline step on this replica",
            inner.step_duration.clone(),
        );
        registry.register(
            "contact_export_step_retries",
            "Retries of a pipeline step after a failed attempt, on this replica",
            inner.step_retries.clone(),
        );
        registry.register(
            "contact_export_step_failures",
            "Failed attempts of a pipeline step on this replica (cancellations excluded)",
            inner.step_failures.clone(),
        );
        registry.register(
            "contact_export_expired_exports",
            "Exports this replica's janitor marked EXPIRED (their files past retention)",
            inner.exports_expired.clone(),
        );
        registry.register(
            "contact_export_deleted_objects",
            "Objects this replica's janitor removed from storage: of expired and deleted exports, and of attempts that did not win",
            inner.objects_deleted.clone(),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing into a String cannot fail");
        out
    }
}

/// Decrements the running jobs when dropped.
pub struct RunningJob {
    inner: Arc<Inner>,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.inner.running_jobs.dec();
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
                    r#"contact_export_step_duration_seconds_{suffix}{{le="{le}",step="stream-export"}}"#
                )
            };
            sample(&text, &series).to_owned()
        };
        assert_eq!(stream("bucket", "0.025"), "0");
        assert_eq!(stream("bucket", "0.05"), "1");
        assert_eq!(stream("bucket", "2.5"), "2");
        assert_eq!(stream("bucket", "600.0"), "2");
        assert_eq!(stream("bucket", "+Inf"), "3");
        assert_eq!(stream("count", ""), "3");
        let sum: f64 = stream("sum", "").parse().unwrap();
        assert!((sum - 3602.03).abs() < 1e-6, "{sum}");
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
                        || ["_bucket", "_sum", "_count", "_total"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(family))),
                    "{line} comes before its TYPE"
                );
            }
        }
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics ends its exposition: {text}"
        );
    }
}
