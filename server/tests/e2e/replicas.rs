//! The durable-job promise with real processes: the built `exportd serve`, several at once on
//! one database and one `fs` storage folder, killed, frozen, thawed, stopped and restarted
//! under running exports.
//!
//! Leases are 3 s here (30 s where a test shows that a hand-back does not wait for one), and a
//! test fault (`EXPORTD_TEST_FAULTS=batch-delay-ms=…`) stretches a stream over a few seconds
//! so that there is a "mid-stream" to act in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use contact_export_client::{Export, ExportClient, ExportStatus};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use rustix::process::Signal;
use uuid::Uuid;

use super::exportd::{Exportd, Replica, export_of};
use super::faults::wait_for_job_done;
use super::fixture::Workspace;
use super::harness::{Dial, TestDb, within};
use super::smtp_peer::SmtpListener;
use super::{all_contacts, download_all};

/// `n` contacts of about 250 bytes each, ids ascending.
pub async fn seed(db: &TestDb, workspace_id: Uuid, n: i64) {
    diesel::sql_query(
        "INSERT INTO contacts (workspace_id, email, first_name, created_at, notes, custom_fields) \
         SELECT $1, 'c' || g || '@example.com', 'First ' || g, \
         timestamptz '2024-01-01' + g * interval '1 s', repeat(md5(g::text), 6), \
         jsonb_build_object('n', g) FROM generate_series(1, $2) g",
    )
    .bind::<diesel::sql_types::Uuid, _>(workspace_id)
    .bind::<BigInt, _>(n)
    .execute(&mut db.conn().await)
    .await
    .unwrap();
}

/// Follows the export until `processed_rows` reaches `rows` in its current attempt.
pub async fn wait_for_rows(client: &ExportClient, id: &str, rows: i64) -> Export {
    within("the export to be mid-stream", async {
        let mut watch = client.watch(id).await.unwrap();
        while let Some(export) = watch.next().await {
            let export = export.unwrap();
            if export.processed_rows >= rows {
                return export;
            }
            assert!(
                export.status() != ExportStatus::Completed,
                "finished before reaching {rows} rows: {export:?}"
            );
        }
        panic!("the watch ended before {rows} rows");
    })
    .await
}

/// What the store holds: every file under the storage folder, by path relative to it.
fn stored_files(root: &std::path::Path) -> Vec<String> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, into: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, into);
            } else {
                into.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    files
}

#[derive(Debug, diesel::QueryableByName)]
struct JobRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    storage_key: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    lease_owner: Option<String>,
    #[diesel(sql_type = BigInt)]
    lease_generation: i64,
    #[diesel(sql_type = Bool)]
    job_done: bool,
    #[diesel(sql_type = Integer)]
    stream_attempts: i32,
    #[diesel(sql_type = Integer)]
    stream_failures: i32,
}

async fn job_row(db: &TestDb, id: &str) -> JobRow {
    let id: Uuid = id.parse().unwrap();
    diesel::sql_query(
        "SELECT e.status, e.storage_key, e.lease_owner, e.lease_generation, e.job_done, \
         coalesce(s.attempts, 0) AS stream_attempts, coalesce(s.failures, 0) AS stream_failures \
         FROM exports e LEFT JOIN export_steps s \
           ON s.export_id = e.id AND s.step = 'stream-export' WHERE e.id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result(&mut db.conn().await)
    .await
    .unwrap()
}

/// How many mails the listener accepted for each export id.
fn mails_per_export(smtp: &SmtpListener) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for mail in smtp.received() {
        let (_, body) = super::smtp_peer::parse_message(&mail.data);
        let id = body
            .lines()
            .find_map(|l| l.strip_prefix("Export id: "))
            .expect("the mail names its export")
            .to_owned();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

struct Setup {
    db: TestDb,
    storage: tempfile::TempDir,
    smtp: SmtpListener,
}

impl Setup {
    async fn new() -> Setup {
        Setup {
            db: TestDb::new().await,
            storage: tempfile::tempdir().unwrap(),
            smtp: SmtpListener::start(),
        }
    }

    /// A replica with mail, stretching each batch by `delay_ms`.
    fn replica(&self, delay_ms: u64) -> Replica {
        let mut replica = Replica::new(&self.db.url, self.storage.path());
        replica.smtp = Some(self.smtp.addr);
        if delay_ms > 0 {
            replica.faults = Some(format!("batch-delay-ms={delay_ms}"));
        }
        replica
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_is_resumed_by_a_restarted_one_to_the_same_file() {
    let setup = Setup::new().await;
    let replica = setup.replica(30);
    let mut first = Exportd::start(&replica).await;
    let ws = Workspace::create(&setup.db, first.addr, true).await;
    seed(&setup.db, ws.id, 3000).await;

    let created = ws.client.create(all_contacts()).await.unwrap();
    wait_for_rows(&ws.client, &created.id, 500).await;
    first.signal(Signal::KILL);
    first.exited(Duration::from_secs(10)).await.expect("killed");
    let killed = Instant::now();

    let second = Exportd::start(&replica).await;
    let client = Dial::from(second.addr).connect(&ws.token).await;
    let done = within("the resumed export", client.wait(&created.id))
        .await
        .unwrap();
    eprintln!(
        "kill -9 mid-stream: COMPLETED {:.1} s after the kill (lease 3 s), attempt {}",
        killed.elapsed().as_secs_f64(),
        done.attempt
    );
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert!(done.attempt >= 2, "{done:?}");
    assert_eq!((done.total_rows, done.processed_rows), (3000, 3000));

    // Byte for byte what an export that nothing interrupted writes of the same data.
    let resumed = download_all(&client, &done.id).await;
    let reference = within("the reference export", async {
        let again = client.create(all_contacts()).await.unwrap();
        client.wait(&again.id).await.unwrap()
    })
    .await;
    assert_eq!(resumed, download_all(&client, &reference.id).await);

    for id in [&done.id, &reference.id] {
        wait_for_job_done(&setup.db, id.parse().unwrap()).await;
    }
    let mails = mails_per_export(&setup.smtp);
    assert_eq!(mails.get(&done.id), Some(&1), "mailed once: {mails:?}");
    // One object per export, nothing of the killed attempt (its unfinished file included).
    let keys: Vec<String> = [&done.id, &reference.id]
        .into_iter()
        .map(async |id| job_row(&setup.db, id).await.storage_key.unwrap())
        .collect::<futures::stream::FuturesOrdered<_>>()
        .collect()
        .await;
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(stored_files(setup.storage.path()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_past_its_lease_cannot_touch_the_file_another_finished() {
    let setup = Setup::new().await;
    let replica = setup.replica(30);
    let mut frozen = Exportd::start(&replica).await;
    let ws = Workspace::create(&setup.db, frozen.addr, true).await;
    seed(&setup.db, ws.id, 3000).await;
    let created = ws.client.create(all_contacts()).await.unwrap();
    wait_for_rows(&ws.client, &created.id, 500).await;
    frozen.signal(Signal::STOP);

    // The other replica claims the job once the frozen one's lease has run out.
    let other = Exportd::start(&replica).await;
    let client = Dial::from(other.addr).connect(&ws.token).await;
    let done = within("the other replica to finish", client.wait(&created.id))
        .await
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    wait_for_job_done(&setup.db, created.id.parse().unwrap()).await;
    let file = download_all(&client, &done.id).await;
    let winner = job_row(&setup.db, &done.id).await;

    // The data changes, then the frozen replica wakes up mid-stream with its stale batches.
    diesel::sql_query(
        "UPDATE contacts SET first_name = 'changed after the export' WHERE workspace_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(ws.id)
    .execute(&mut setup.db.conn().await)
    .await
    .unwrap();
    frozen.signal(Signal::CONT);
    let stopped = frozen
        .wait_for_log(
            "the thawed replica to find the job claimed again",
            "the job was claimed again elsewhere; this run stops",
        )
        .await;
    assert_eq!(export_of(&stopped), Some(done.id.as_str()));

    // Nothing it did reached the export, its file or the store.
    let after = client.get(&done.id).await.unwrap();
    assert_eq!(after, done);
    assert_eq!(download_all(&client, &done.id).await, file);
    let row = job_row(&setup.db, &done.id).await;
    assert_eq!(
        (row.status.as_str(), &row.storage_key, row.lease_generation),
        ("completed", &winner.storage_key, winner.lease_generation)
    );
    // Its attempt aborted its upload before that line: only the winner's object is there.
    assert_eq!(
        stored_files(setup.storage.path()),
        vec![winner.storage_key.clone().unwrap()],
        "{}",
        frozen.log_text()
    );
    assert_eq!(mails_per_export(&setup.smtp).get(&done.id), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_exports_through_two_replicas_each_run_once() {
    let setup = Setup::new().await;
    let mut replica = setup.replica(0);
    replica.workers = 2;
    let a = Exportd::start(&replica).await;
    let b = Exportd::start(&replica).await;
    let ws = Workspace::create(&setup.db, a.addr, true).await;
    let via_b = Dial::from(b.addr).connect(&ws.token).await;
    seed(&setup.db, ws.id, 300).await;

    let mut ids = Vec::new();
    for i in 0..20 {
        let client = if i % 2 == 0 { &ws.client } else { &via_b };
        ids.push(client.create(all_contacts()).await.unwrap().id);
    }
    for (i, id) in ids.iter().enumerate() {
        // Watched through the replica that did not take the request.
        let client = if i % 2 == 0 { &via_b } else { &ws.client };
        let done = within("an export", client.wait(id)).await.unwrap();
        assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
        assert_eq!(done.processed_rows, 300);
    }
    let mut keys = Vec::new();
    for id in &ids {
        wait_for_job_done(&setup.db, id.parse().unwrap()).await;
        let row = job_row(&setup.db, id).await;
        assert_eq!((row.stream_attempts, row.stream_failures), (1, 0), "{id}");
        keys.push(row.storage_key.unwrap());
    }
    keys.sort();
    assert_eq!(stored_files(setup.storage.path()), keys, "one object each");
    let mails = mails_per_export(&setup.smtp);
    assert_eq!(mails.len(), 20, "{mails:?}");
    assert!(mails.values().all(|n| *n == 1), "one mail each: {mails:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_replica_follows_a_job_another_runs() {
    let setup = Setup::new().await;
    let mut api_only = setup.replica(0);
    api_only.workers = 0;
    let api = Exportd::start(&api_only).await;
    let worker = Exportd::start(&setup.replica(20)).await;
    let ws = Workspace::create(&setup.db, api.addr, true).await;
    seed(&setup.db, ws.id, 2000).await;

    let created = ws.client.create(all_contacts()).await.unwrap();
    let mut seen = Vec::new();
    let mut watch = ws.client.watch(&created.id).await.unwrap();
    while let Some(export) = within("the next change", watch.next()).await {
        seen.push(export.unwrap());
    }
    let last = seen.last().unwrap();
    assert_eq!(last.status(), ExportStatus::Completed, "{seen:#?}");
    let progress: Vec<i64> = seen
        .iter()
        .filter(|e| e.status() == ExportStatus::Processing)
        .map(|e| e.processed_rows)
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]) && progress.len() >= 5,
        "progress as it happened, in order: {progress:?}"
    );
    let row = job_row(&setup.db, &created.id).await;
    assert!(
        row.lease_owner.is_none() || row.lease_owner.as_deref() == Some(&worker.worker_id),
        "{row:?}"
    );
    assert!(
        !api.lines_with("job claimed")
            .iter()
            .any(|l| export_of(l) == Some(created.id.as_str())),
        "the API replica ran nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_running_job_back_and_another_replica_finishes_within_a_lease() {
    let setup = Setup::new().await;
    let mut replica = setup.replica(30);
    // A long lease: without the hand-back the other replica would wait for all of it.
    replica.lease_seconds = 30;
    let mut first = Exportd::start(&replica).await;
    let ws = Workspace::create(&setup.db, first.addr, true).await;
    seed(&setup.db, ws.id, 3000).await;
    let created = ws.client.create(all_contacts()).await.unwrap();
    wait_for_rows(&ws.client, &created.id, 500).await;
    let second = Exportd::start(&replica).await;
    let client = Dial::from(second.addr).connect(&ws.token).await;

    let terminated = Instant::now();
    first.signal(Signal::TERM);
    let status = first
        .exited(Duration::from_secs(15))
        .await
        .expect("exits within its shutdown timeout");
    assert!(status.success(), "{status:?}\n{}", first.log_text());
    let exited_in = terminated.elapsed();
    let done = within("the other replica to finish", client.wait(&created.id))
        .await
        .unwrap();
    let finished_in = terminated.elapsed();
    eprintln!(
        "SIGTERM mid-stream: exited in {:.2} s, COMPLETED on the other replica {:.1} s after \
         (lease 30 s)",
        exited_in.as_secs_f64(),
        finished_in.as_secs_f64()
    );
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert!(finished_in < Duration::from_secs(15), "{finished_in:?}");
    let row = job_row(&setup.db, &created.id).await;
    assert_eq!(
        (row.stream_attempts, row.stream_failures),
        (2, 0),
        "a hand-back is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_rolling_restarts_do_not_fail_an_export() {
    let setup = Setup::new().await;
    let mut replica = setup.replica(25);
    replica.lease_seconds = 30;
    let mut replicas = vec![
        Exportd::start(&replica).await,
        Exportd::start(&replica).await,
    ];
    let ws = Workspace::create(&setup.db, replicas[0].addr, true).await;
    seed(&setup.db, ws.id, 3000).await;
    let created = ws.client.create(all_contacts()).await.unwrap();

    for restart in 1..=6 {
        // The replica that runs the job now, once it is past its first batches.
        let (generation, owner) = within("the job to run", async {
            loop {
                let row = job_row(&setup.db, &created.id).await;
                let progress = setup_progress(&setup.db, &created.id).await;
                let streaming = row.stream_attempts == restart as i32 && progress >= 200;
                if let Some(owner) = row.lease_owner.filter(|_| streaming) {
                    return (row.lease_generation, owner);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(generation, restart, "one claim per run");
        let index = replicas
            .iter()
            .position(|r| r.worker_id == owner)
            .expect("the owner is one of ours");
        let mut stopping = replicas.remove(index);
        stopping.signal(Signal::TERM);
        let status = stopping
            .exited(Duration::from_secs(15))
            .await
            .expect("exits");
        assert!(status.success(), "{}", stopping.log_text());
        replicas.push(Exportd::start(&replica).await);
    }
    let client = Dial::from(replicas[0].addr).connect(&ws.token).await;
    let done = within("the export to finish", client.wait(&created.id))
        .await
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.processed_rows, 3000);
    let row = job_row(&setup.db, &created.id).await;
    assert_eq!((row.stream_attempts, row.stream_failures), (7, 0));
}

async fn setup_progress(db: &TestDb, id: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Rows {
        #[diesel(sql_type = BigInt)]
        processed_rows: i64,
    }
    let id: Uuid = id.parse().unwrap();
    let Rows { processed_rows } =
        diesel::sql_query("SELECT processed_rows FROM exports WHERE id = $1")
            .bind::<diesel::sql_types::Uuid, _>(id)
            .get_result(&mut db.conn().await)
            .await
            .unwrap();
    processed_rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_panics_is_retried_then_fails_saying_it_crashed() {
    let setup = Setup::new().await;
    let mut replica = setup.replica(0);
    replica.faults = Some("panic-in=stream-export".to_owned());
    let mut exportd = Exportd::start(&replica).await;
    let ws = Workspace::create(&setup.db, exportd.addr, true).await;
    seed(&setup.db, ws.id, 10).await;

    let created = ws.client.create(all_contacts()).await.unwrap();
    let done = within("the export to give up", ws.client.wait(&created.id))
        .await
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_message,
        "gave up after 6 failed attempts of step stream-export: its worker crashed"
    );
    let row = job_row(&setup.db, &created.id).await;
    assert!(row.job_done && row.lease_owner.is_none(), "{row:?}");
    assert_eq!(row.stream_failures, 6);
    // Each crash is logged with its export, and the heartbeat of a crashed job is gone: the
    // export stays FAILED.
    let panics = exportd.lines_with("the job's task panicked; it goes back to the queue");
    assert_eq!(panics.len(), 6, "{}", exportd.log_text());
    assert!(
        panics
            .iter()
            .all(|l| export_of(l) == Some(created.id.as_str()))
    );
    exportd.signal(Signal::TERM);
    exportd
        .exited(Duration::from_secs(15))
        .await
        .expect("exits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_step_that_panics_leaves_the_export_completed_and_its_job_done() {
    let setup = Setup::new().await;
    let mut replica = setup.replica(0);
    replica.faults = Some("panic-in=send-notification".to_owned());
    let exportd = Exportd::start(&replica).await;
    let ws = Workspace::create(&setup.db, exportd.addr, true).await;
    seed(&setup.db, ws.id, 10).await;

    let created = ws.client.create(all_contacts()).await.unwrap();
    let done = within("the export", ws.client.wait(&created.id))
        .await
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    // The mail step crashes its worker six times, then is given up: the job ends, the export
    // stays as callers saw it, and nothing keeps claiming it.
    wait_for_job_done(&setup.db, created.id.parse().unwrap()).await;
    let row = job_row(&setup.db, &created.id).await;
    assert_eq!(row.status, "completed");
    assert!(row.lease_owner.is_none());
    assert_eq!(ws.client.get(&created.id).await.unwrap(), done);
    assert_eq!(
        exportd
            .lines_with("the job's task panicked; it goes back to the queue")
            .len(),
        6,
        "{}",
        exportd.log_text()
    );
    assert!(setup.smtp.received().is_empty());
}
