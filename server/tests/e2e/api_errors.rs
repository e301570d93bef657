//! The API's contract for bad input, auth and workspace isolation.

use contact_export_client::{CreateExportRequest, CsvOptions, ExportStatus};
use tonic::Code;
use uuid::Uuid;

use super::fixture::Workspace;
use super::harness::{AppOptions, TestApp};
use super::{all_contacts, run_export};

fn api_only() -> AppOptions {
    AppOptions {
        workers: 0,
        ..AppOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_a_valid_token_checked_before_validation() {
    let app = TestApp::spawn_with(api_only()).await;
    for token in ["cex_unknown", "not-even-a-token"] {
        let client = app.client_with_token(token).await;
        let bad = CreateExportRequest {
            tag_ids: vec!["not-a-uuid".into()],
            ..Default::default()
        };
        assert_eq!(
            client.create(bad).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            client.get("nope").await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            client.list(0, "").await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            client.cancel("nope").await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            client.watch("nope").await.err().unwrap().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            client.download("nope", 0, 0).await.err().unwrap().code(),
            Code::Unauthenticated
        );
    }
    // No metadata at all, through the generated client.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = contact_export::v1::export_service_client::ExportServiceClient::new(channel);
    let status = raw
        .get_export(contact_export::v1::GetExportRequest {
            id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("authorization"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let app = TestApp::spawn_with(api_only()).await;
    let client = &app.ws.client;
    let other = Workspace::create(&app.db, app.addr, false).await;
    let foreign_tag = other.tag(&app.db, "theirs").await;
    let unknown = Uuid::new_v4();

    let cases: Vec<(CreateExportRequest, &str)> = vec![
        (
            CreateExportRequest {
                tag_ids: vec!["red".into()],
                ..Default::default()
            },
            "tag_ids: \"red\" is not a UUID",
        ),
        (
            CreateExportRequest {
                tag_ids: vec![unknown.to_string()],
                ..Default::default()
            },
            &*Box::leak(format!("tag_ids: no tag {unknown} in this workspace").into_boxed_str()),
        ),
        (
            CreateExportRequest {
                tag_ids: vec![foreign_tag.to_string()],
                ..Default::default()
            },
            &*Box::leak(
                format!("tag_ids: no tag {foreign_tag} in this workspace").into_boxed_str(),
            ),
        ),
        (
            CreateExportRequest {
                tag_ids: vec![Uuid::new_v4().to_string(); 1001],
                ..Default::default()
            },
            "tag_ids: at most 1000 tag ids, got 1001",
        ),
        (
            CreateExportRequest {
                request_id: "x".repeat(201),
                ..Default::default()
            },
            "request_id: at most 200 bytes",
        ),
    ];
    for (request, message) in cases {
        let status = client.create(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), message);
    }
    for call in [
        client.get("42").await.unwrap_err(),
        client.cancel("").await.unwrap_err(),
        client.watch("x").await.err().unwrap(),
        client.download("x", 0, 0).await.err().unwrap(),
    ] {
        assert_eq!(call.code(), Code::InvalidArgument);
        assert!(call.message().starts_with("id: "), "{call:?}");
    }
    let id = client.create(all_contacts()).await.unwrap().id;
    let status = client.download(&id, -1, 0).await.err().unwrap();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "read_offset: must not be negative")
    );
    let status = client.download(&id, 0, -1).await.err().unwrap();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "read_limit: must not be negative")
    );
    let status = client.list(-1, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("page_size"));
    let status = client.list(10, "garbage").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("page_token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspace_sees_not_found_exactly_like_a_missing_id() {
    let app = TestApp::spawn().await;
    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let intruder = Workspace::create(&app.db, app.addr, false).await;
    let missing = Uuid::new_v4().to_string();
    for id in [done.id.as_str(), missing.as_str()] {
        let statuses = [
            intruder.client.get(id).await.unwrap_err(),
            intruder.client.watch(id).await.err().unwrap(),
            intruder.client.download(id, 0, 0).await.err().unwrap(),
            intruder.client.cancel(id).await.unwrap_err(),
        ];
        for status in statuses {
            assert_eq!(
                (status.code(), status.message()),
                (Code::NotFound, "export not found")
            );
        }
    }
    assert!(intruder.client.list_all().await.unwrap().is_empty());
    assert_eq!(app.ws.client.list_all().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_makes_create_idempotent_per_workspace() {
    let app = TestApp::spawn_with(api_only()).await;
    let with_key = || CreateExportRequest {
        request_id: "nightly-2026-11-27".into(),
        ..Default::default()
    };
    let first = app.ws.client.create(with_key()).await.unwrap();
    let again = app.ws.client.create(with_key()).await.unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(again.request_id, "nightly-2026-11-27");
    // The same key in another workspace is another export.
    let other = Workspace::create(&app.db, app.addr, false).await;
    let theirs = other.client.create(with_key()).await.unwrap();
    assert_ne!(theirs.id, first.id);
    assert_eq!(app.ws.client.list_all().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_reused_with_other_parameters_is_failed_precondition_naming_them() {
    let app = TestApp::spawn_with(api_only()).await;
    let client = &app.ws.client;
    let red = app.ws.tag(&app.db, "red").await.to_string();
    let blue = app.ws.tag(&app.db, "blue").await.to_string();
    let request =
        |tags: &[&String], filename: &str, csv_options: Option<CsvOptions>| CreateExportRequest {
            tag_ids: tags.iter().map(|t| t.to_string()).collect(),
            filename: filename.into(),
            request_id: "k".into(),
            csv_options,
            ..Default::default()
        };
    let first = client
        .create(request(&[&red, &blue], "", None))
        .await
        .unwrap();

    // The same request: tags in another order and repeated, the empty filename again (its
    // timestamped default may differ by now), the default options spelt out.
    let again = client
        .create(request(
            &[&blue, &red, &blue],
            "",
            Some(CsvOptions::default()),
        ))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);

    let conflict = |status: tonic::Status, fields: &str| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let expected = format!(
            "request_id \"k\" was first used with other {fields} (export {})",
            first.id
        );
        assert!(status.message().starts_with(&expected), "{status:?}");
    };
    conflict(
        client
            .create(request(&[&red], "red.csv", None))
            .await
            .unwrap_err(),
        "tag_ids, filename",
    );
    conflict(
        client
            .create(request(
                &[&red, &blue],
                "",
                Some(CsvOptions {
                    disable_formula_neutralization: true,
                    ..CsvOptions::default()
                }),
            ))
            .await
            .unwrap_err(),
        "csv_options",
    );
    // A filename compares as sent, not as sanitised: both of these would be `red.csv`.
    let named = CreateExportRequest {
        request_id: "named".into(),
        ..request(&[], "red", None)
    };
    let named_first = client.create(named.clone()).await.unwrap();
    assert_eq!(named_first.filename, "red.csv");
    let status = client
        .create(CreateExportRequest {
            filename: "red.csv".into(),
            ..named.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("other filename"), "{status:?}");
    assert_eq!(client.create(named).await.unwrap().id, named_first.id);

    // Refused calls made nothing, and a refused call does not spoil the key.
    assert_eq!(client.list_all().await.unwrap().len(), 2);
    let retried = client
        .create(request(&[&red, &blue], "", None))
        .await
        .unwrap();
    assert_eq!(retried.id, first.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_newest_first_and_pages() {
    let app = TestApp::spawn_with(api_only()).await;
    let mut created = Vec::new();
    for n in 0..7 {
        let request = CreateExportRequest {
            filename: format!("f{n}"),
            ..Default::default()
        };
        created.push(app.ws.client.create(request).await.unwrap().id);
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app.ws.client.list(3, token.clone()).await.unwrap();
        assert!(page.exports.len() <= 3);
        seen.extend(page.exports.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_export_cancels_at_once_and_a_finished_one_cannot() {
    let app = TestApp::spawn_with(api_only()).await;
    let pending = app.ws.client.create(all_contacts()).await.unwrap();
    let cancelled = app.ws.client.cancel(&pending.id).await.unwrap();
    assert_eq!(cancelled.status(), ExportStatus::Cancelled);
    let status = app.ws.client.cancel(&pending.id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    // A worker that starts later leaves it cancelled, and a finished export cannot be cancelled.
    let token = app.ws.token.clone();
    let db = app.stop().await;
    let worker = TestApp::spawn_on(db, AppOptions::default()).await;
    let done = run_export(&worker.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let status = worker.ws.client.cancel(&done.id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("already completed"), "{status:?}");
    let original = worker.client_with_token(&token).await;
    assert_eq!(
        original.get(&pending.id).await.unwrap().status(),
        ExportStatus::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_need_no_token() {
    let app = TestApp::spawn_with(api_only()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "contactexport.v1.ExportService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"contactexport.v1.ExportService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}
