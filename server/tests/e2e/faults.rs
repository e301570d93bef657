//! When things break: storage that refuses writes, a worker that died mid-job, a caller who
//! cancels a running export. Real PostgreSQL and real OpenDAL throughout; the faults come from
//! our own storage layer ([`super::failing_storage`]) and from rows a dead worker left behind.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use contact_export_client::{Export, ExportClient, ExportStatus};
use contact_export_server::mail::Mailer;
use contact_export_server::storage::attempt_key;
use diesel::sql_types::{Bool, Int4, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::Code;
use uuid::Uuid;

use super::expected::expected_csv;
use super::failing_storage::WriteFaults;
use super::fixture::Contact;
use super::harness::{AppOptions, TestApp, TestDb, objects_of, within};
use super::{all_contacts, download_all, run_export};

/// What the caller reads when the file could not be written: no storage internals.
const WRITE_FAILED: &str = "writing the export file to storage failed";

/// The time a dead worker's rows say things happened; a resumed job must not rewrite it.
const DEAD_WORKER_TIME: &str = "2024-01-01T00:00:00Z";

fn dead_worker_time() -> DateTime<Utc> {
    DEAD_WORKER_TIME.parse().unwrap()
}

fn contacts_with_custom_fields(n: u32) -> Vec<Contact> {
    (1..=n)
        .map(|i| {
            let c = Contact::numbered(i);
            match i % 3 {
                0 => c.with_custom(json!({"plan": "gold", "seats": i})),
                1 => c.with_custom(json!({"region": "emea"})),
                _ => c,
            }
        })
        .collect()
}

fn id_of(export: &Export) -> Uuid {
    export.id.parse().expect("export ids are UUIDs")
}

/// One `export_steps` row.
#[derive(Debug, Clone, diesel::QueryableByName)]
struct StepRow {
    #[diesel(sql_type = Text)]
    step: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Jsonb>)]
    output: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    worker: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    started_at: DateTime<Utc>,
}

/// The recorded steps of an export, by name.
async fn steps(db: &TestDb, export_id: Uuid) -> HashMap<String, StepRow> {
    let rows: Vec<StepRow> = diesel::sql_query(
        "SELECT step, status, attempts, output, error, worker, started_at \
         FROM export_steps WHERE export_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(export_id)
    .load(&mut db.conn().await)
    .await
    .expect("reading export_steps");
    rows.into_iter().map(|r| (r.step.clone(), r)).collect()
}

#[derive(diesel::QueryableByName)]
struct JobDone {
    #[diesel(sql_type = Bool)]
    job_done: bool,
}

/// Waits until the export's job has run every step (the notification runs after COMPLETED,
/// which the API already reports), woken by the same NOTIFY the service uses.
pub async fn wait_for_job_done(db: &TestDb, export_id: Uuid) {
    let mut listener = db.conn().await;
    diesel::sql_query("LISTEN export_changed")
        .execute(&mut listener)
        .await
        .expect("LISTEN");
    let mut conn = db.conn().await;
    let mut changes = std::pin::pin!(listener.notifications_stream());
    within("the job to run its last step", async {
        loop {
            let JobDone { job_done } =
                diesel::sql_query("SELECT job_done FROM exports WHERE id = $1")
                    .bind::<diesel::sql_types::Uuid, _>(export_id)
                    .get_result(&mut conn)
                    .await
                    .expect("reading the export");
            if job_done {
                return;
            }
            changes
                .next()
                .await
                .expect("a LISTEN stream never ends")
                .expect("a notification");
        }
    })
    .await;
}

async fn assert_no_object(app: &TestApp, workspace_id: Uuid, export_id: Uuid) {
    let left = objects_of(&app.storage, workspace_id, export_id).await;
    assert!(
        left.is_empty(),
        "no object of the export may remain: {left:?}"
    );
}

async fn assert_download_refused(client: &ExportClient, id: &str) {
    let Err(err) = client.download(id, 0, 0).await else {
        panic!("an unfinished export cannot be downloaded");
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_is_aborted_and_the_second_attempt_writes_the_whole_file() {
    // The file is far below the 8 MiB part size: the refused call is the upload at close.
    let faults = WriteFaults::fail_first(1);
    let app = TestApp::spawn_with(AppOptions {
        storage: faults.operator(),
        ..AppOptions::default()
    })
    .await;
    let contacts = contacts_with_custom_fields(20);
    app.ws.insert(&app.db, &contacts).await;

    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.attempt, 2);
    assert_eq!(done.error_message, "");
    assert_eq!((done.total_rows, done.processed_rows), (20, 20));
    let file = download_all(&app.ws.client, &done.id).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    assert_eq!(file, expected_csv(&refs, true));

    assert_eq!(faults.refused(), 1);
    assert_eq!(
        faults.aborted(),
        1,
        "the failed attempt's writer must be aborted, not left open"
    );
    assert_eq!(faults.closed(), 1);
    let steps = steps(&app.db, id_of(&done)).await;
    let stream = &steps["stream-export"];
    assert_eq!(
        (stream.status.as_str(), stream.attempts),
        ("succeeded", 2),
        "{stream:?}"
    );
    assert_eq!(stream.error, None, "a success clears the earlier error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_refused_mid_stream_is_aborted_and_the_retry_starts_the_file_over() {
    // Parts of 200 bytes: the first part goes up (and fails) while the first batch is written.
    let faults = WriteFaults::fail_first_part(1, 200);
    let app = TestApp::spawn_with(AppOptions {
        storage: faults.operator(),
        ..AppOptions::default()
    })
    .await;
    let contacts = contacts_with_custom_fields(30);
    app.ws.insert(&app.db, &contacts).await;

    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.attempt, 2);
    assert_eq!((done.total_rows, done.processed_rows), (30, 30));
    let file = download_all(&app.ws.client, &done.id).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    assert_eq!(
        file,
        expected_csv(&refs, true),
        "no byte of the failed attempt may survive in the file"
    );
    assert_eq!(done.size_bytes as usize, file.len());
    assert_eq!(
        (faults.refused(), faults.aborted(), faults.closed()),
        (1, 1, 1)
    );
    let steps = steps(&app.db, id_of(&done)).await;
    assert_eq!(steps["stream-export"].attempts, 2);
    assert_eq!(steps["stream-export"].status, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_that_keeps_failing_fails_the_export_after_two_retries_and_leaves_no_object() {
    let faults = WriteFaults::fail_always();
    let app = TestApp::spawn_with(AppOptions {
        storage: faults.operator(),
        ..AppOptions::default()
    })
    .await;
    app.ws
        .insert(&app.db, &contacts_with_custom_fields(10))
        .await;

    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_message, WRITE_FAILED,
        "no storage internals leak"
    );
    assert_eq!(done.attempt, 3, "one attempt and two retries");
    assert_eq!((done.size_bytes, done.sha256.as_str()), (0, ""));
    assert!(done.finish_time.is_some());
    assert_eq!(app.ws.client.get(&done.id).await.unwrap(), done);

    assert_eq!(faults.refused(), 3);
    assert_eq!(
        faults.aborted(),
        3,
        "every failed attempt aborts its upload"
    );
    assert_eq!(faults.closed(), 0);
    assert_no_object(&app, app.ws.id, id_of(&done)).await;
    assert_download_refused(&app.ws.client, &done.id).await;

    let steps = steps(&app.db, id_of(&done)).await;
    let stream = &steps["stream-export"];
    assert_eq!((stream.status.as_str(), stream.attempts), ("failed", 3));
    // The operator's record keeps the cause the caller does not see.
    let error = stream.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with(WRITE_FAILED) && error.contains("injected fault"),
        "{error}"
    );
    assert!(
        !steps.contains_key("send-notification"),
        "a failed export notifies nobody"
    );
}

/// Makes `export_id` look like a job that `dead-worker` claimed and then died with: its lease
/// has run out, and `steps` are the rows it wrote.
async fn leave_dead_worker_rows(
    db: &TestDb,
    export_id: Uuid,
    export_update: &str,
    steps: &[(&str, &str, Option<serde_json::Value>)],
) {
    let mut conn = db.conn().await;
    let n = diesel::sql_query(format!(
        "UPDATE exports SET lease_owner = 'dead-worker', lease_generation = 1, \
         lease_expires_at = now() - interval '1 second', current_step = 'stream-export', \
         attempt = 1, started_at = '{DEAD_WORKER_TIME}', {export_update} WHERE id = $1"
    ))
    .bind::<diesel::sql_types::Uuid, _>(export_id)
    .execute(&mut conn)
    .await
    .expect("claiming the export as the dead worker");
    assert_eq!(n, 1);
    for (step, status, output) in steps {
        diesel::sql_query(format!(
            "INSERT INTO export_steps (export_id, step, status, attempts, output, worker, \
             started_at, finished_at) VALUES ($1, $2, $3, 1, $4, 'dead-worker', \
             '{DEAD_WORKER_TIME}', CASE WHEN $3 = 'running' THEN NULL \
             ELSE '{DEAD_WORKER_TIME}'::timestamptz END)"
        ))
        .bind::<diesel::sql_types::Uuid, _>(export_id)
        .bind::<Text, _>(*step)
        .bind::<Text, _>(*status)
        .bind::<Nullable<Jsonb>, _>(output)
        .execute(&mut conn)
        .await
        .expect("the dead worker's step rows");
    }
}

/// A mailer writing `.eml` files into `dir`.
pub fn file_mailer(dir: &tempfile::TempDir) -> Mailer {
    Mailer::from_url(
        &format!("file://{}", dir.path().display()),
        "exports@example.com",
    )
    .expect("file mailer")
}

/// The mails written into `dir`.
fn mails(dir: &tempfile::TempDir) -> Vec<String> {
    std::fs::read_dir(dir.path())
        .expect("mail folder")
        .map(|e| e.expect("mail entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| std::fs::read_to_string(p).expect("mail file"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_died_mid_stream_resumes_elsewhere_with_fresh_metadata() {
    // An API-only replica takes the request; no worker of its own ever touches the job.
    let api = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let contacts = contacts_with_custom_fields(20);
    api.ws.insert(&api.db, &contacts).await;
    let created = api.ws.client.create(all_contacts()).await.unwrap();
    let export_id = id_of(&created);
    // The dead worker had resolved the filter, counted from its snapshot (now gone, and with it
    // a custom key that no longer exists) and was 14 rows into the stream.
    leave_dead_worker_rows(
        &api.db,
        export_id,
        "status = 'processing', total_rows = 999, processed_rows = 14",
        &[
            (
                "resolve-tag-filter",
                "succeeded",
                Some(json!({"tag_ids": [], "matched_contacts": null})),
            ),
            (
                "resolve-export-metadata",
                "succeeded",
                Some(json!({"total_rows": 999, "custom_keys": ["stale"]})),
            ),
            ("stream-export", "running", None),
        ],
    )
    .await;
    let (workspace_id, token) = (api.ws.id, api.ws.token.clone());
    let db = api.stop().await;

    // Another replica starts on the same database and finds the expired lease.
    let mail_dir = tempfile::tempdir().unwrap();
    let worker = TestApp::spawn_on(
        db,
        AppOptions {
            mailer: Some(file_mailer(&mail_dir)),
            ..AppOptions::default()
        },
    )
    .await;
    let client = worker.client_with_token(&token).await;
    let done = within("the resumed export", client.wait(&created.id))
        .await
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.attempt, 2, "the dead worker's attempt counts");
    assert_eq!((done.total_rows, done.processed_rows), (20, 20));
    let file = download_all(&client, &done.id).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    assert_eq!(file, expected_csv(&refs, true));
    assert!(!file.lines().next().unwrap().contains("stale"));
    assert_eq!(
        done.start_time.map(|t| t.seconds),
        Some(dead_worker_time().timestamp()),
        "the export started when the dead worker started it"
    );

    wait_for_job_done(&worker.db, export_id).await;
    let steps = steps(&worker.db, export_id).await;
    let filter = &steps["resolve-tag-filter"];
    assert_eq!(
        (
            filter.status.as_str(),
            filter.attempts,
            filter.worker.as_deref(),
            filter.started_at
        ),
        ("succeeded", 1, Some("dead-worker"), dead_worker_time()),
        "a succeeded step is not run again"
    );
    let metadata = &steps["resolve-export-metadata"];
    assert_eq!(metadata.status, "succeeded");
    assert_eq!(metadata.attempts, 2, "recomputed in a fresh snapshot");
    assert_ne!(metadata.worker.as_deref(), Some("dead-worker"));
    assert_eq!(
        metadata.output,
        Some(json!({"total_rows": 20, "custom_keys": ["plan", "region", "seats"]}))
    );
    let stream = &steps["stream-export"];
    assert_eq!((stream.status.as_str(), stream.attempts), ("succeeded", 2));
    assert_eq!(
        stream.output.as_ref().unwrap()["storage_key"],
        json!(attempt_key(workspace_id.into(), export_id.into(), 2)),
        "the second claim's own object"
    );
    let notification = &steps["send-notification"];
    assert_eq!(
        (notification.status.as_str(), notification.attempts),
        ("succeeded", 1)
    );
    assert_eq!(notification.output.as_ref().unwrap()["outcome"], "sent");
    let mails = mails(&mail_dir);
    assert_eq!(mails.len(), 1, "one mail per export");
    assert!(mails[0].contains(&created.id), "{}", mails[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_died_after_the_file_was_written_only_sends_the_notification() {
    let api = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let contacts = contacts_with_custom_fields(5);
    api.ws.insert(&api.db, &contacts).await;
    let created = api.ws.client.create(all_contacts()).await.unwrap();
    let export_id = id_of(&created);

    // The dead worker wrote the file, marked the export COMPLETED and died before the mail.
    let refs: Vec<&Contact> = contacts.iter().collect();
    let file = expected_csv(&refs, true);
    let key = attempt_key(api.ws.id.into(), export_id.into(), 1);
    api.storage.write(&key, file.clone()).await.unwrap();
    let sha256 = hex::encode(Sha256::digest(file.as_bytes()));
    let stored = json!({
        "storage_key": key, "size_bytes": file.len(), "sha256": sha256, "rows": 5
    });
    leave_dead_worker_rows(
        &api.db,
        export_id,
        &format!(
            "status = 'completed', total_rows = 5, processed_rows = 5, storage_key = '{key}', \
             size_bytes = {}, sha256 = '{sha256}', finished_at = '{DEAD_WORKER_TIME}'",
            file.len()
        ),
        &[
            (
                "resolve-tag-filter",
                "succeeded",
                Some(json!({"tag_ids": [], "matched_contacts": null})),
            ),
            (
                "resolve-export-metadata",
                "succeeded",
                Some(json!({"total_rows": 5, "custom_keys": ["plan", "region", "seats"]})),
            ),
            ("stream-export", "succeeded", Some(stored.clone())),
        ],
    )
    .await;
    let token = api.ws.token.clone();
    let storage = api.storage.clone();
    let before = api.ws.client.get(&created.id).await.unwrap();
    assert_eq!(before.status(), ExportStatus::Completed);
    let db = api.stop().await;

    let mail_dir = tempfile::tempdir().unwrap();
    let worker = TestApp::spawn_on(
        db,
        AppOptions {
            storage,
            mailer: Some(file_mailer(&mail_dir)),
            ..AppOptions::default()
        },
    )
    .await;
    wait_for_job_done(&worker.db, export_id).await;

    let client = worker.client_with_token(&token).await;
    let after = client.get(&created.id).await.unwrap();
    assert_eq!(after.status(), ExportStatus::Completed, "{after:?}");
    assert_eq!(
        (after.attempt, after.total_rows, after.processed_rows),
        (1, 5, 5),
        "nothing streamed again"
    );
    assert_eq!(
        (after.size_bytes as usize, &after.sha256),
        (file.len(), &sha256)
    );
    assert_eq!(
        after.finish_time, before.finish_time,
        "it finished when the dead worker finished it"
    );
    assert_eq!(download_all(&client, &created.id).await, file);

    let steps = steps(&worker.db, export_id).await;
    for name in [
        "resolve-tag-filter",
        "resolve-export-metadata",
        "stream-export",
    ] {
        let step = &steps[name];
        assert_eq!(
            (step.status.as_str(), step.attempts, step.worker.as_deref()),
            ("succeeded", 1, Some("dead-worker")),
            "{name} is not run again"
        );
    }
    assert_eq!(steps["stream-export"].output, Some(stored));
    let notification = &steps["send-notification"];
    assert_eq!(
        (notification.status.as_str(), notification.attempts),
        ("succeeded", 1)
    );
    assert_eq!(notification.output.as_ref().unwrap()["outcome"], "sent");
    assert_eq!(mails(&mail_dir).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_export_stops_it_mid_stream_and_leaves_no_object() {
    // Parts of 256 bytes, held at the gate: the job waits inside its first batch's upload.
    let faults = WriteFaults::hold_writes(256);
    let app = TestApp::spawn_with(AppOptions {
        storage: faults.operator(),
        ..AppOptions::default()
    })
    .await;
    let client = &app.ws.client;
    app.ws
        .insert(&app.db, &contacts_with_custom_fields(40))
        .await;
    let created = client.create(all_contacts()).await.unwrap();
    let mut watch = client.watch(&created.id).await.unwrap();
    within("a part upload to wait at the gate", faults.write_waiting()).await;

    let running = client.get(&created.id).await.unwrap();
    assert_eq!(running.status(), ExportStatus::Processing, "{running:?}");
    assert_eq!(
        (running.current_step.as_str(), running.attempt),
        ("stream-export", 1)
    );
    let answer = client.cancel(&created.id).await.unwrap();
    assert_eq!(
        answer.status(),
        ExportStatus::Processing,
        "a running export stops at its next batch boundary, not at once"
    );
    assert!(
        answer.cancel_requested,
        "the answer shows the cancel was accepted"
    );
    faults.open();

    let mut seen = Vec::new();
    while let Some(message) = within("the next watch message", watch.next()).await {
        seen.push(message.unwrap());
    }
    let last = seen.last().unwrap();
    assert_eq!(last.status(), ExportStatus::Cancelled, "{seen:#?}");
    assert!(last.cancel_requested);
    assert_eq!(last.error_message, "cancelled by request");
    assert_eq!(last.attempt, 1, "a cancelled stream is not retried");
    assert_eq!(last.total_rows, 40);
    assert!(last.processed_rows < 40, "it stopped mid-stream: {last:?}");
    assert!(last.finish_time.is_some());
    assert_eq!(client.get(&created.id).await.unwrap(), *last);

    assert_eq!((faults.aborted(), faults.closed()), (1, 0));
    assert_no_object(&app, app.ws.id, id_of(last)).await;
    assert_download_refused(client, &created.id).await;
    let err = client.cancel(&created.id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    wait_for_job_done(&app.db, id_of(last)).await;
    let steps = steps(&app.db, id_of(last)).await;
    assert_eq!(steps["stream-export"].attempts, 1);
    assert_ne!(steps["stream-export"].status, "succeeded");
    assert!(!steps.contains_key("send-notification"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_connection_killed_mid_copy_is_retried_in_a_fresh_snapshot() {
    // About 30 MB of rows, more than the sockets between PostgreSQL and the service buffer:
    // while the first batch's upload waits at the gate, the COPY is still sending.
    let faults = WriteFaults::hold_writes(256);
    let app = TestApp::spawn_with(AppOptions {
        storage: faults.operator(),
        batch_size: 100,
        ..AppOptions::default()
    })
    .await;
    let client = &app.ws.client;
    let mut conn = app.db.conn().await;
    diesel::sql_query(
        "INSERT INTO contacts (workspace_id, email, created_at, notes, custom_fields) \
         SELECT $1, 'c' || g || '@example.com', timestamptz '2024-01-01' + g * interval '1 s', \
         repeat(md5(g::text), 32), jsonb_build_object('n', g) FROM generate_series(1, 30000) g",
    )
    .bind::<diesel::sql_types::Uuid, _>(app.ws.id)
    .execute(&mut conn)
    .await
    .unwrap();

    let created = client.create(all_contacts()).await.unwrap();
    within("a part upload to wait at the gate", faults.write_waiting()).await;
    #[derive(diesel::QueryableByName)]
    struct Killed {
        #[diesel(sql_type = Bool)]
        killed: bool,
    }
    let killed: Vec<Killed> = diesel::sql_query(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity \
         WHERE query LIKE 'COPY (SELECT%' AND pid <> pg_backend_pid()",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        killed.iter().filter(|k| k.killed).count(),
        1,
        "one COPY was running"
    );
    faults.open();

    let done = within("the export to finish", client.wait(&created.id))
        .await
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!((done.total_rows, done.processed_rows), (30_000, 30_000));
    assert_eq!(done.attempt, 2, "the stream ran again: {done:?}");
    assert_eq!((faults.aborted(), faults.closed()), (1, 1));
    let steps = steps(&app.db, id_of(&done)).await;
    assert_eq!(
        (
            steps["stream-export"].status.as_str(),
            steps["stream-export"].attempts
        ),
        ("succeeded", 2)
    );

    // The retry's file is the file an undisturbed export writes.
    let faulted = download_all(client, &created.id).await;
    let clean = run_export(client, all_contacts()).await;
    assert_eq!(faulted, download_all(client, &clean.id).await);
    assert_eq!(faulted.lines().count(), 30_001);
}

/// A tmpfs of `size` mounted on a folder of the test's, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs failed ({status}): this test needs root, as CI runs"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_into_a_full_disk_fails_saying_so_and_leaves_room_for_the_next() {
    let disk = SmallDisk::mount("1m");
    let storage = contact_export_server::storage::fs_operator(disk.dir.path()).unwrap();
    let app = TestApp::spawn_with(AppOptions {
        storage: storage.clone(),
        batch_size: 200,
        ..AppOptions::default()
    })
    .await;
    let big: Vec<Contact> = (1..=3000)
        .map(|n| {
            let mut c = Contact::numbered(n);
            c.notes = Some("x".repeat(1000));
            c
        })
        .collect();
    app.ws.insert(&app.db, &big).await;

    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_message,
        "writing the export file to storage failed: the storage is full"
    );
    assert_eq!(done.attempt, 3, "one attempt and two retries");
    assert_no_object(&app, app.ws.id, id_of(&done)).await;
    let used: u64 = std::fs::read_dir(disk.dir.path().join(".partial"))
        .map(|entries| entries.flatten().map(|e| e.metadata().unwrap().len()).sum())
        .unwrap_or(0);
    assert_eq!(used, 0, "every unfinished file was removed");

    // The next export fits.
    diesel::sql_query("DELETE FROM contacts WHERE workspace_id = $1 AND id > (SELECT min(id) + 9 FROM contacts WHERE workspace_id = $1)")
        .bind::<diesel::sql_types::Uuid, _>(app.ws.id)
        .execute(&mut app.db.conn().await)
        .await
        .unwrap();
    let small = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(small.status(), ExportStatus::Completed, "{small:?}");
    assert_eq!(small.processed_rows, 10);
    let file = download_all(&app.ws.client, &small.id).await;
    assert_eq!(file.len() as i64, small.size_bytes);
}

/// An export made by an API-only replica, corrupted by `sql` (with `$1` its id), then run by
/// a worker: how it ends.
async fn run_corrupted(sql: &str) -> Export {
    let api = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    api.ws
        .insert(&api.db, &contacts_with_custom_fields(3))
        .await;
    let created = api.ws.client.create(all_contacts()).await.unwrap();
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::Uuid, _>(id_of(&created))
        .execute(&mut api.db.conn().await)
        .await
        .expect("corrupting the export");
    let token = api.ws.token.clone();
    let db = api.stop().await;
    let worker = TestApp::spawn_on(db, AppOptions::default()).await;
    let client = worker.client_with_token(&token).await;
    within("the export to end", client.wait(&created.id))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_options_that_do_not_read_fail_the_export_saying_so() {
    let done =
        run_corrupted("UPDATE exports SET options = '{\"delimiter\": \"colon\"}' WHERE id = $1")
            .await;
    assert_eq!(done.status(), ExportStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_message,
        "the export's stored options cannot be read"
    );
    assert_eq!(
        done.csv_options, None,
        "never shown as defaults nobody asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_record_that_does_not_read_fails_the_export_instead_of_running_again() {
    let done = run_corrupted(
        "INSERT INTO export_steps (export_id, step, status, attempts, output) \
         VALUES ($1, 'resolve-tag-filter', 'succeeded', 1, '{\"tag_ids\": \"none\"}')",
    )
    .await;
    assert_eq!(done.status(), ExportStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_message,
        "the record of step resolve-tag-filter cannot be read"
    );
}
