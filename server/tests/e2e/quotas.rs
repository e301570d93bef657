//! The per-workspace cap on queued exports (`--max-queued-exports`). The service runs no
//! workers, so every export stays PENDING and counts until it is cancelled.

use contact_export_client::{CreateExportRequest, ExportStatus};
use tonic::Code;

use super::fixture::Workspace;
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
