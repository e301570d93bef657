//! `/metrics`: scraped over plain HTTP while an export runs (held at a storage gate), after it
//! completes, and after storage made one fail.

use std::collections::HashMap;
use std::net::SocketAddr;

use contact_export_client::ExportStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::failing_storage::WriteFaults;
use super::faults::{file_mailer, wait_for_job_done};
use super::fixture::Contact;
use super::harness::{AppOptions, TestApp, within};
use super::{all_contacts, download_all, run_export};

const STEPS: [&str; 4] = [
    "resolve-tag-filter",
    "resolve-export-metadata",
    "stream-export",
    "send-notification",
];
const STATUSES: [&str; 6] = [
    "pending",
    "processing",
    "completed",
    "failed",
    "cancelled",
    "expired",
];

/// An HTTP/1.0 GET on a fresh connection: (status code, headers, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("metrics endpoint");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    within("the HTTP response", stream.read_to_string(&mut response))
        .await
        .expect("reading the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, head.to_owned(), body.to_owned())
}

/// The samples of one scrape, by series (`name{labels}`).
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.text))
    }

    fn exports(&self, status: &str) -> f64 {
        self.value(&format!("contact_export_exports{{status=\"{status}\"}}"))
    }

    fn per_step(&self, name: &str, step: &str) -> f64 {
        self.value(&format!("{name}{{step=\"{step}\"}}"))
    }
}

/// The text of one scrape of `app`'s `/metrics`.
pub async fn scrape_text(app: &TestApp) -> String {
    scrape(app).await.text
}

async fn scrape(app: &TestApp) -> Scrape {
    let addr = app.metrics_addr.expect("the app serves metrics");
    let (code, head, text) = get(addr, "/metrics").await;
    assert_eq!(code, 200, "{head}\n{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect();
    Scrape { text, samples }
}

fn contacts(n: u32) -> Vec<Contact> {
    (1..=n).map(Contact::numbered).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_the_running_export_and_afterwards_what_it_wrote() {
    let faults = WriteFaults::hold_writes(256);
    // A replica that can mail, so that the job runs to its end here.
    let mail_dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(AppOptions {
        storage: faults.operator(),
        metrics: true,
        mailer: Some(file_mailer(&mail_dir)),
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &contacts(40)).await;

    let idle = scrape(&app).await;
    for status in STATUSES {
        assert_eq!(idle.exports(status), 0.0, "{status}");
    }
    assert_eq!(idle.value("contact_export_queue_depth"), 0.0);
    assert_eq!(idle.value("contact_export_running_jobs"), 0.0);
    assert_eq!(idle.value("contact_export_database_up"), 1.0);

    let created = app.ws.client.create(all_contacts()).await.unwrap();
    within("a part upload to wait at the gate", faults.write_waiting()).await;
    let running = scrape(&app).await;
    assert_eq!(running.value("contact_export_running_jobs"), 1.0);
    assert_eq!(running.exports("processing"), 1.0);
    assert_eq!(running.exports("pending"), 0.0);
    assert_eq!(
        running.value("contact_export_queue_depth"),
        0.0,
        "a leased job is not waiting"
    );
    faults.open();

    let done = within("the export to finish", app.ws.client.wait(&created.id))
        .await
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    // The notification step runs after COMPLETED.
    wait_for_job_done(&app.db, created.id.parse().unwrap()).await;
    let file = download_all(&app.ws.client, &done.id).await;
    assert_eq!(file.len() as i64, done.size_bytes);

    let after = scrape(&app).await;
    assert_eq!(after.exports("completed"), 1.0);
    assert_eq!(after.exports("processing"), 0.0);
    assert_eq!(after.value("contact_export_rows_exported_total"), 40.0);
    assert_eq!(
        after.value("contact_export_bytes_written_total"),
        file.len() as f64
    );
    for step in STEPS {
        let count = "contact_export_step_duration_seconds_count";
        assert_eq!(after.per_step(count, step), 1.0, "{step}");
        assert_eq!(
            after.value(&format!(
                "contact_export_step_duration_seconds_bucket{{le=\"+Inf\",step=\"{step}\"}}"
            )),
            1.0,
            "{step}"
        );
        assert_eq!(
            after.per_step("contact_export_step_retries_total", step),
            0.0
        );
        assert_eq!(
            after.per_step("contact_export_step_failures_total", step),
            0.0
        );
    }
    assert!(
        after.per_step("contact_export_step_duration_seconds_sum", "stream-export") > 0.0,
        "{}",
        after.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_storage_failed_an_export_shows_its_retries_and_failures() {
    let faults = WriteFaults::fail_always();
    let app = TestApp::spawn_with(AppOptions {
        storage: faults.operator(),
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &contacts(10)).await;

    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Failed, "{done:?}");

    let after = scrape(&app).await;
    assert_eq!(after.exports("failed"), 1.0);
    let stream = |name: &str| after.per_step(name, "stream-export");
    assert_eq!(stream("contact_export_step_retries_total"), 2.0);
    assert_eq!(
        stream("contact_export_step_failures_total"),
        3.0,
        "every attempt failed"
    );
    assert_eq!(stream("contact_export_step_duration_seconds_count"), 3.0);
    for step in ["resolve-tag-filter", "resolve-export-metadata"] {
        assert_eq!(
            after.per_step("contact_export_step_failures_total", step),
            0.0
        );
        assert_eq!(
            after.per_step("contact_export_step_duration_seconds_count", step),
            1.0,
            "a write failure does not redo {step}"
        );
    }
    assert_eq!(
        after.per_step(
            "contact_export_step_duration_seconds_count",
            "send-notification"
        ),
        0.0,
        "a failed export notifies nobody"
    );

    let addr = app.metrics_addr.unwrap();
    for path in ["/", "/metricsx", "/metrics/x"] {
        assert_eq!(get(addr, path).await.0, 404, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_no_worker_took_is_queued() {
    // An API-only replica: nothing ever claims the job.
    let app = TestApp::spawn_with(AppOptions {
        workers: 0,
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    app.ws.client.create(all_contacts()).await.unwrap();
    app.ws.client.create(all_contacts()).await.unwrap();

    let queued = scrape(&app).await;
    assert_eq!(queued.exports("pending"), 2.0);
    assert_eq!(queued.value("contact_export_queue_depth"), 2.0);
    assert_eq!(queued.value("contact_export_running_jobs"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_metrics_endpoint_unless_asked_for() {
    let app = TestApp::spawn().await;
    assert_eq!(app.metrics_addr, None);
}
