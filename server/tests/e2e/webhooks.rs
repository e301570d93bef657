//! A caller's `notify_url`, end to end: the service tells a real HTTP receiver on 127.0.0.1
//! (`peers/webhook_receiver.rs`, which checks every signature itself) of each end of an export
//! (completed, failed, cancelled, expired) once, retries a receiver that fails, never lets a
//! webhook change the export, refuses URLs outside the operator's prefixes when the export is
//! created, and leaves a webhook that is due to a replica that can send it.

use std::time::{Duration, Instant};

use contact_export_client::{CreateExportRequest, ExportStatus};
use contact_export_server::janitor::JanitorConfig;
use contact_export_server::pipeline::FaultHooks;
use contact_export_server::webhook::{AllowList, RetryPolicy, WebhookConfig, WebhookSecret};
use diesel::sql_types::{Bool, Nullable, Text};
use diesel_async::RunQueryDsl;
use rustix::process::Signal;
use tonic::Code;
use uuid::Uuid;

use super::exportd::{Exportd, Replica};
use super::faults::wait_for_job_done;
use super::fixture::{Contact, Workspace, insert_unexportable};
use super::harness::{AppOptions, TestApp, TestDb, within};
use super::webhook_receiver::{self, Answer, Receiver, Seen, seen};
use super::{all_contacts, run_export};

pub const SECRET: &str = "whsec_8oBvV0vUqvZ6Ckyy8mhdwxXH0b3cjL4R";

/// Webhooks allowed to URLs under `prefix` only, tried quickly.
pub fn webhooks_to(prefix: &str, max_retry_time: Duration) -> WebhookConfig {
    WebhookConfig {
        allow: AllowList::new([prefix]).unwrap(),
        secret: Some(WebhookSecret::parse(SECRET).unwrap()),
        retry: RetryPolicy {
            per_try_timeout: Duration::from_secs(2),
            max_retry_time,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(1),
        },
    }
}

fn notifying(base: &str) -> CreateExportRequest {
    CreateExportRequest {
        notify_url: format!("{base}hooks/export"),
        ..CreateExportRequest::default()
    }
}

/// Waits until the receiver has seen `n` requests, and returns them.
async fn wait_for_requests(receiver: &Receiver, n: usize) -> Vec<Seen> {
    within("the webhook requests", async {
        loop {
            let got = seen(receiver);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn body(request: &Seen) -> serde_json::Value {
    serde_json::from_slice(&request.body).expect("the body is JSON")
}

#[derive(Debug, diesel::QueryableByName)]
struct WebhookRecord {
    #[diesel(sql_type = Nullable<Text>)]
    webhook_due: Option<String>,
    #[diesel(sql_type = Bool)]
    job_done: bool,
    #[diesel(sql_type = Nullable<Text>)]
    status: Option<String>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Jsonb>)]
    output: Option<serde_json::Value>,
}

/// The export's webhook bookkeeping and its `send-webhook` step record.
async fn webhook_record(db: &TestDb, id: &str) -> WebhookRecord {
    diesel::sql_query(
        "SELECT e.webhook_due, e.job_done, s.status, s.output FROM exports e \
         LEFT JOIN export_steps s ON s.export_id = e.id AND s.step = 'send-webhook' \
         WHERE e.id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id.parse::<Uuid>().unwrap())
    .get_result(&mut db.conn().await)
    .await
    .unwrap()
}

/// Waits until the export's webhook is told (delivered or given up) and returns its record.
/// (The job itself may go on to the mail, which these tests leave to a replica with SMTP.)
async fn wait_for_webhook_told(db: &TestDb, id: &str) -> WebhookRecord {
    within("the webhook to be told", async {
        loop {
            let record = webhook_record(db, id).await;
            if record.webhook_due.is_none() && record.status.as_deref() == Some("succeeded") {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_of_an_export_is_told_once_in_a_signed_event() {
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(204)]).await;
    let app = TestApp::spawn_with(AppOptions {
        webhooks: webhooks_to(&base, Duration::from_secs(5)),
        janitor: JanitorConfig {
            retention: Duration::from_secs(2),
            interval: Duration::from_millis(100),
        },
        batch_size: 50,
        hooks: FaultHooks {
            batch_delay: Some(Duration::from_millis(30)),
            ..FaultHooks::default()
        },
        ..AppOptions::default()
    })
    .await;
    let contacts: Vec<Contact> = (1..=300).map(Contact::numbered).collect();
    app.ws.insert(&app.db, &contacts).await;

    // Completed, then (retention is 2 s) expired.
    let done = run_export(&app.ws.client, notifying(&base)).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    assert_eq!(done.notify_url, format!("{base}hooks/export"));
    let requests = wait_for_requests(&receiver, 1).await;
    let completed = &requests[0];
    assert!(completed.signature_valid, "{completed:?}");
    assert_eq!(completed.content_type, "application/json");
    assert!((chrono::Utc::now().timestamp() - completed.timestamp).abs() < 60);
    assert_eq!(
        completed.id,
        format!("msg_{}_completed", done.id.replace('-', ""))
    );
    let event = body(completed);
    assert_eq!(event["type"], "export.completed");
    assert_eq!(event["data"]["export_id"], done.id);
    assert_eq!(event["data"]["workspace_id"], app.ws.id.to_string());
    assert_eq!(event["data"]["status"], "completed");
    assert_eq!(event["data"]["total_rows"], 300);
    assert_eq!(event["data"]["sha256"], done.sha256);
    assert_eq!(event["data"]["size_bytes"], done.size_bytes);
    let record = wait_for_webhook_told(&app.db, &done.id).await;
    let output = record.output.unwrap();
    assert_eq!(output["delivered"], true, "{output}");
    assert_eq!(output["attempts"], 1, "{output}");

    let requests = wait_for_requests(&receiver, 2).await;
    let expired = &requests[1];
    assert!(expired.signature_valid);
    assert_eq!(body(expired)["type"], "export.expired");
    assert_eq!(body(expired)["data"]["export_id"], done.id);
    assert_ne!(expired.id, completed.id, "each event has its own id");
    // Expired, the export owes no mail any more: its job is done.
    wait_for_job_done(&app.db, done.id.parse().unwrap()).await;

    // Cancelled mid-stream.
    let running = app.ws.client.create(notifying(&base)).await.unwrap();
    super::replicas::wait_for_rows(&app.ws.client, &running.id, 50).await;
    app.ws.client.cancel(&running.id).await.unwrap();
    let cancelled = within("the cancel", app.ws.client.wait(&running.id))
        .await
        .unwrap();
    assert_eq!(cancelled.status(), ExportStatus::Cancelled);
    let requests = wait_for_requests(&receiver, 3).await;
    assert_eq!(body(&requests[2])["type"], "export.cancelled");
    assert_eq!(body(&requests[2])["data"]["export_id"], running.id);
    assert!(requests[2].signature_valid);
    wait_for_job_done(&app.db, running.id.parse().unwrap()).await;

    // Failed: a contact that cannot be exported.
    insert_unexportable(&app.db, app.ws.id).await;
    let failed = run_export(&app.ws.client, notifying(&base)).await;
    assert_eq!(failed.status(), ExportStatus::Failed);
    let requests = wait_for_requests(&receiver, 4).await;
    let event = body(&requests[3]);
    assert_eq!(event["type"], "export.failed");
    assert_eq!(event["data"]["error_message"], failed.error_message);
    assert!(requests[3].signature_valid);
    wait_for_job_done(&app.db, failed.id.parse().unwrap()).await;

    // An export without a notify_url tells nobody; nothing more came for the others.
    let quiet = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(webhook_record(&app.db, &quiet.id).await.webhook_due, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = seen(&receiver).iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids.len(), 4, "one request per end: {ids:?}");
    assert!(
        ids.iter()
            .all(|id| !id.contains(&quiet.id.replace('-', "")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_the_same_id_and_never_changes_the_export() {
    let (base, receiver) = webhook_receiver::receiver(
        SECRET,
        vec![
            Answer::Status(500),
            Answer::Status(503),
            Answer::Slow(Duration::from_secs(5)),
            Answer::Status(200),
        ],
    )
    .await;
    let app = TestApp::spawn_with(AppOptions {
        webhooks: webhooks_to(&base, Duration::from_secs(30)),
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &[Contact::numbered(1)]).await;
    let done = run_export(&app.ws.client, notifying(&base)).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let record = wait_for_webhook_told(&app.db, &done.id).await;
    let requests = seen(&receiver);
    assert_eq!(requests.len(), 4, "two errors, a timeout, then 200");
    assert!(requests.iter().all(|r| r.id == requests[0].id), "one id");
    assert!(
        requests.iter().all(|r| r.signature_valid),
        "each try signed"
    );
    assert!(
        requests.windows(2).all(|w| w[0].body == w[1].body),
        "the same event every try"
    );
    let output = record.output.unwrap();
    assert_eq!(output["delivered"], true, "{output}");
    assert_eq!(output["attempts"], 4, "{output}");

    // A receiver that never takes it: given up, recorded, the export as it was.
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(502)]).await;
    let app = TestApp::spawn_with(AppOptions {
        webhooks: webhooks_to(&base, Duration::from_millis(600)),
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &[Contact::numbered(1)]).await;
    let done = run_export(&app.ws.client, notifying(&base)).await;
    let record = wait_for_webhook_told(&app.db, &done.id).await;
    assert!(seen(&receiver).len() >= 2, "retried until the time was up");
    let output = record.output.unwrap();
    assert_eq!(output["delivered"], false, "{output}");
    assert!(
        output["outcome"].as_str().unwrap().contains("502"),
        "{output}"
    );
    let after = app.ws.client.get(&done.id).await.unwrap();
    assert_eq!(after.status(), ExportStatus::Completed);
    assert_eq!(after.error_message, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_url_outside_the_allowed_prefixes_is_refused_naming_the_field() {
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(200)]).await;
    let app = TestApp::spawn_with(AppOptions {
        webhooks: webhooks_to(&format!("{base}hooks/"), Duration::from_secs(5)),
        ..AppOptions::default()
    })
    .await;
    for (url, why) in [
        ("https://hooks.example.com/x".to_owned(), "another host"),
        (
            format!("{base}hooks/../elsewhere"),
            "a path that leaves the prefix",
        ),
        (format!("{base}elsewhere"), "a path beside the prefix"),
        ("not a url".to_owned(), "not a URL"),
        (
            base.replace("127.0.0.1", "localhost"),
            "another name for the allowed address",
        ),
    ] {
        let status = app
            .ws
            .client
            .create(CreateExportRequest {
                notify_url: url.clone(),
                ..Default::default()
            })
            .await
            .expect_err(why);
        assert_eq!(status.code(), Code::InvalidArgument, "{why}: {status:?}");
        assert!(
            status.message().starts_with("notify_url: "),
            "{why}: {status:?}"
        );
    }
    assert!(
        app.ws.client.list_all().await.unwrap().is_empty(),
        "none made"
    );
    assert_eq!(*receiver.elsewhere.lock().unwrap(), 0);

    // Where the operator allows no webhooks, every notify_url is refused.
    let closed = TestApp::spawn().await;
    let status = closed
        .ws
        .client
        .create(notifying(&base))
        .await
        .expect_err("webhooks are off");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("notify_url"), "{status:?}");
    assert!(seen(&receiver).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_webhooks_leaves_the_webhook_to_one_with_them() {
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(200)]).await;
    // The front door checks the URL; the only worker cannot send webhooks.
    let front = TestApp::spawn_with(AppOptions {
        webhooks: webhooks_to(&base, Duration::from_secs(5)),
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let worker = front.replica(AppOptions::default()).await;
    front.ws.insert(&front.db, &[Contact::numbered(1)]).await;
    let done = run_export(&front.ws.client, notifying(&base)).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    within("the job to wait for a webhook sender", async {
        loop {
            let record = webhook_record(&front.db, &done.id).await;
            if record.webhook_due.as_deref() == Some("completed") && !record.job_done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(seen(&receiver).is_empty(), "nobody could send it");
    assert!(!webhook_record(&front.db, &done.id).await.job_done);

    // A replica that can send it does, once.
    let sender = front
        .replica(AppOptions {
            webhooks: webhooks_to(&base, Duration::from_secs(5)),
            ..AppOptions::default()
        })
        .await;
    let requests = wait_for_requests(&receiver, 1).await;
    assert!(requests[0].signature_valid);
    assert_eq!(body(&requests[0])["data"]["export_id"], done.id);
    wait_for_webhook_told(&front.db, &done.id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen(&receiver).len(), 1);
    drop((worker, sender));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pending_export_tells_its_webhook() {
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(200)]).await;
    let front = TestApp::spawn_with(AppOptions {
        webhooks: webhooks_to(&base, Duration::from_secs(5)),
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let pending = front.ws.client.create(notifying(&base)).await.unwrap();
    front.ws.client.cancel(&pending.id).await.unwrap();
    let cancelled = front.ws.client.get(&pending.id).await.unwrap();
    assert_eq!(cancelled.status(), ExportStatus::Cancelled);
    let _worker = front
        .replica(AppOptions {
            webhooks: webhooks_to(&base, Duration::from_secs(5)),
            ..AppOptions::default()
        })
        .await;
    let requests = wait_for_requests(&receiver, 1).await;
    assert_eq!(body(&requests[0])["type"], "export.cancelled");
    assert_eq!(body(&requests[0])["data"]["status"], "cancelled");
    wait_for_job_done(&front.db, pending.id.parse().unwrap()).await;
    let after = front.ws.client.get(&pending.id).await.unwrap();
    assert_eq!(
        after.status(),
        ExportStatus::Cancelled,
        "the webhook changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_its_webhook_is_in_flight_is_followed_by_one_that_sends_it_again() {
    // The first try hangs (the receiver answers after 30 s); the one after it is taken.
    let (base, receiver) = webhook_receiver::receiver(
        SECRET,
        vec![Answer::Slow(Duration::from_secs(30)), Answer::Status(200)],
    )
    .await;
    let db = TestDb::new().await;
    let storage = tempfile::tempdir().unwrap();
    let mut replica = Replica::new(&db.url, storage.path());
    replica.webhooks = Some((SECRET.to_owned(), base.clone()));
    let mut first = Exportd::start(&replica).await;
    let ws = Workspace::create(&db, first.addr, false).await;
    super::replicas::seed(&db, ws.id, 10).await;
    let done = run_export(&ws.client, notifying(&base)).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let hung = wait_for_requests(&receiver, 1).await;
    first.signal(Signal::KILL);
    first.exited(Duration::from_secs(10)).await.expect("killed");
    let killed = Instant::now();

    let _second = Exportd::start(&replica).await;
    let record = wait_for_webhook_told(&db, &done.id).await;
    eprintln!(
        "kill -9 mid-webhook: told again {:.1} s after the kill (lease 3 s)",
        killed.elapsed().as_secs_f64()
    );
    let requests = seen(&receiver);
    assert_eq!(requests.len(), 2, "the hung try, then one more");
    assert_eq!(
        requests[1].id, hung[0].id,
        "the same webhook-id: receivers dedupe"
    );
    assert_eq!(requests[1].body, hung[0].body, "the same event");
    assert!(requests[1].signature_valid);
    let output = record.output.unwrap();
    assert_eq!(output["delivered"], true, "{output}");
    wait_for_job_done(&db, done.id.parse().unwrap()).await;
}
