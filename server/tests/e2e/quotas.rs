//! The per-workspace caps: on queued exports (`--max-queued-exports`; the service runs no
//! workers there, so every export stays PENDING and counts until it is cancelled), and on
//! running ones (`--max-running-per-workspace`, the fair share of the workers).

use contact_export_client::{CreateExportRequest, ExportStatus};
use tonic::Code;

use super::all_contacts;
use super::fixture::{Contact, Workspace};
use super::harness::{AppOptions, TestApp, within};

fn api_only_with_limit(max_queued_exports: u32) -> AppOptions {
    AppOptions {
        workers: 0,
        max_queued_exports,
        ..AppOptions::default()
    }
}

fn keyed(request_id: &str) -> CreateExportRequest {
    CreateExportRequest {
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn assert_exhausted(status: tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "this workspace has 2 exports queued or running and may have at most 2; wait for some \
         to finish or cancel some, then retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_beyond_the_queue_limit_is_resource_exhausted_until_one_ends() {
    let app = TestApp::spawn_with(api_only_with_limit(2)).await;
    let client = &app.ws.client;
    let a = client.create(keyed("a")).await.unwrap();
    let b = client.create(keyed("b")).await.unwrap();

    assert_exhausted(client.create(keyed("c")).await.unwrap_err());
    assert_exhausted(
        client
            .create(CreateExportRequest::default())
            .await
            .unwrap_err(),
    );
    // A retry of an export that exists is no new export: it passes at the limit.
    assert_eq!(client.create(keyed("a")).await.unwrap().id, a.id);
    // A key reused for another request is still the caller's mistake first.
    let status = client
        .create(CreateExportRequest {
            filename: "other".into(),
            ..keyed("a")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // The limit is per workspace.
    let other = Workspace::create(&app.db, app.addr, false).await;
    other.client.create(keyed("c")).await.unwrap();

    // A cancelled export frees its place, and the refused key was never bound.
    assert_eq!(
        client.cancel(&b.id).await.unwrap().status(),
        ExportStatus::Cancelled
    );
    let c = client.create(keyed("c")).await.unwrap();
    assert_ne!(c.id, a.id);
    assert_exhausted(client.create(keyed("d")).await.unwrap_err());
    assert_eq!(client.list_all().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_pass_the_limit() {
    let app = TestApp::spawn_with(api_only_with_limit(3)).await;
    let calls = (0..12).map(|n| {
        let client = app.ws.client.clone();
        tokio::spawn(async move { client.create(keyed(&format!("k{n}"))).await })
    });
    let results = within("12 concurrent creates", futures::future::join_all(calls)).await;
    let mut created = 0;
    for result in results {
        match result.expect("the call's task") {
            Ok(_) => created += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    assert_eq!(created, 3);
    assert_eq!(app.ws.client.list_all().await.unwrap().len(), 3);
}

/// Exports of `workspace` that a worker holds now.
async fn running(db: &super::harness::TestDb, workspace: uuid::Uuid) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Running {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let Running { n } = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT count(*) AS n FROM exports WHERE workspace_id = $1 AND NOT job_done \
             AND lease_owner IS NOT NULL",
        )
        .bind::<diesel::sql_types::Uuid, _>(workspace),
        &mut db.conn().await,
    )
    .await
    .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workspace_with_a_queue_does_not_starve_another() {
    let app = TestApp::spawn_with(AppOptions {
        workers: 4,
        max_running_per_workspace: 2,
        batch_size: 50,
        hooks: contact_export_server::pipeline::FaultHooks {
            batch_delay: Some(std::time::Duration::from_millis(30)),
            ..Default::default()
        },
        ..AppOptions::default()
    })
    .await;
    let busy = &app.ws;
    let contacts: Vec<Contact> = (1..=500).map(Contact::numbered).collect();
    busy.insert(&app.db, &contacts).await;
    let mut queued = Vec::new();
    for _ in 0..8 {
        queued.push(busy.client.create(all_contacts()).await.unwrap().id);
    }
    let other = Workspace::create(&app.db, app.addr, false).await;
    other.insert(&app.db, &contacts[..50]).await;
    let created = other.client.create(all_contacts()).await.unwrap();

    // While the other workspace's export runs, the busy one never has more than its share.
    let mut most = 0;
    let done = within("the other workspace's export", async {
        let wait = other.client.wait(&created.id);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                done = &mut wait => return done.unwrap(),
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {
                    most = most.max(running(&app.db, busy.id).await);
                }
            }
        }
    })
    .await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    let mut still_queued = 0;
    for id in &queued {
        if busy.client.get(id).await.unwrap().status() == ExportStatus::Pending {
            still_queued += 1;
        }
    }
    assert!(
        still_queued >= 4,
        "finished while the busy workspace still had a queue: {still_queued} pending"
    );
    assert!(most <= 2, "at most 2 running at once, saw {most}");
    for id in &queued {
        let done = within("the busy workspace's exports", busy.client.wait(id))
            .await
            .unwrap();
        assert_eq!(done.status(), ExportStatus::Completed);
    }
}
