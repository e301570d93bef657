//! Request size limits, and a caller that goes away stopping its stream's server-side work.

use contact_export_client::{CreateExportRequest, ExportStatus};
use futures::StreamExt;
use tonic::Code;

use super::failing_storage::WriteFaults;
use super::fixture::{Contact, insert_unexportable};
use super::harness::{AppOptions, TestApp, within};
use super::{all_contacts, run_export};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_size_limit_is_refused_and_creates_nothing() {
    let app = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    // Over the server's 256 KiB decoding limit, well under the client's 4 MiB encoding one.
    let request = CreateExportRequest {
        filename: "a".repeat(300 << 10),
        ..CreateExportRequest::default()
    };
    let err = app.ws.client.create(request).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(app.ws.client.list_all().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_dropped_by_its_caller_stops_reading_storage() {
    let storage = WriteFaults::none();
    let app = TestApp::spawn_with(AppOptions {
        storage: storage.operator(),
        batch_size: 500,
        ..AppOptions::default()
    })
    .await;
    let notes = "n".repeat(8 << 10);
    let contacts: Vec<Contact> = (1..=3000)
        .map(|n| Contact {
            notes: Some(notes.clone()),
            ..Contact::numbered(n)
        })
        .collect();
    app.ws.insert(&app.db, &contacts).await;
    let export = run_export(&app.ws.client, all_contacts()).await;
    let size = export.size_bytes as u64;
    assert!(size > 20 << 20, "{size} bytes");

    let mut download = app.ws.client.download(&export.id, 0, 0).await.unwrap();
    let first = within("the first chunk", download.chunks.next())
        .await
        .expect("a data chunk")
        .unwrap();
    assert!(!first.is_empty());
    drop(download);
    // The server's task owns the only reader; it is dropped when the task ends. What it read
    // before is bounded by the channel and HTTP/2 flow-control windows (about 3 MiB), not
    // by the file.
    within(
        "the download's reader to be dropped",
        storage.readers_dropped(1),
    )
    .await;
    let read = storage.bytes_read();
    assert!(read < size / 4, "read {read} of {size} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_whose_custom_fields_nest_too_deep_fails_the_export_naming_it() {
    let faults = WriteFaults::none();
    let app = TestApp::spawn_with(AppOptions {
        storage: faults.operator(),
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &[Contact::numbered(1)]).await;
    // PostgreSQL stores 1,500 levels; the encoder follows 1,000 (a worker's stack is 2 MiB).
    let id = insert_unexportable(&app.db, app.ws.id).await;

    let export = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(export.status(), ExportStatus::Failed, "{export:?}");
    assert!(
        export
            .error_message
            .starts_with(&format!("contact {id} cannot be exported: ")),
        "{export:?}"
    );
    assert!(
        export.error_message.ends_with(
            "its custom_fields JSON cannot be read at byte 1007: nested deeper than 1000 levels"
        ),
        "{export:?}"
    );
    assert_eq!(
        export.attempt, 1,
        "the same row fails every attempt: no retry"
    );
    assert_eq!((faults.aborted(), faults.closed()), (1, 0));
}
