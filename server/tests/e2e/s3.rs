//! Exports into a real S3 API: the in-process S3 server of [`super::s3_peer`] (s3s, which
//! checks every request's SigV4 signature), through OpenDAL's S3 service as
//! `exportd serve --storage s3://…` uses it.

use contact_export_client::ExportStatus;

use super::fixture::{Contact, insert_large_export, large_export_options};
use super::harness::{AppOptions, TestApp};
use super::s3_peer::S3Peer;
use super::{all_contacts, download_all, run_export};

const BUCKET: &str = "exports";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_export_is_uploaded_to_s3_in_parts_and_downloads_whole() {
    let s3 = S3Peer::start(BUCKET).await;
    let app = TestApp::spawn_with(AppOptions {
        storage: s3.operator(),
        ..large_export_options()
    })
    .await;
    insert_large_export(&app).await;

    let export = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(export.status(), ExportStatus::Completed, "{export:?}");
    assert_eq!(export.processed_rows, 12_000);
    assert!(export.size_bytes > 8 << 20, "{export:?}");

    let key = contact_export_server::storage::attempt_key(
        app.ws.id.into(),
        export.id.parse().expect("a UUID"),
        1,
    );
    let object = s3.operator().stat(&key).await.expect("the object is in S3");
    assert_eq!(object.content_length(), export.size_bytes as u64);
    assert_eq!(object.content_type(), Some("text/csv; charset=utf-8"));
    // S3 marks an object assembled from parts with an ETag ending in `-<parts>`.
    let etag = object.etag().expect("an ETag");
    assert!(
        etag.trim_matches('"').ends_with("-2"),
        "uploaded in two parts: {etag}"
    );
    assert_eq!(
        s3.objects(),
        std::slice::from_ref(&key),
        "one object, nothing else"
    );
    assert_eq!(s3.unfinished_uploads(), 0);

    // Size and SHA-256 checked by the client against what the stream recorded, and the bytes
    // are those of the same contacts exported into memory storage.
    let from_s3 = download_all(&app.ws.client, &export.id).await;
    assert_eq!(from_s3.lines().count(), 12_001);
    let in_memory = TestApp::spawn_with(large_export_options()).await;
    insert_large_export(&in_memory).await;
    let reference = run_export(&in_memory.ws.client, all_contacts()).await;
    assert_eq!(
        from_s3,
        download_all(&in_memory.ws.client, &reference.id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_the_s3_peer_and_the_export_fails_cleanly() {
    let s3 = S3Peer::start(BUCKET).await;
    let app = TestApp::spawn_with(AppOptions {
        storage: s3.operator_with_secret("not-the-secret"),
        ..AppOptions::default()
    })
    .await;
    let contacts: Vec<Contact> = (1..=20).map(Contact::numbered).collect();
    app.ws.insert(&app.db, &contacts).await;
    let export = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(export.status(), ExportStatus::Failed, "{export:?}");
    assert_eq!(
        export.error_message,
        "writing the export file to storage failed"
    );
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
}
