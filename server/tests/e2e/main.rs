//! End-to-end tests: the real service over gRPC on loopback, a real PostgreSQL, our own client.

mod api_errors;
mod consistency;
mod csv_output;
mod cut_proxy;
mod expected;
mod exportd;
mod failing_storage;
mod faults;
mod filters;
mod fixture;
mod formats;
mod harness;
mod lifecycle;
mod limits;
mod metrics;
mod notifications;
mod outage;
mod pg_tls;
mod pki;
mod quotas;
mod replicas;
mod s3;
mod s3_peer;
mod smtp_peer;
mod tls;
mod tokens;
mod vercel_blob;
mod vercel_blob_peer;
mod watch_download;
#[path = "../peers/webhook_receiver.rs"]
mod webhook_receiver;
mod webhooks;

use contact_export_client::{CreateExportRequest, CsvOptions, Export, ExportClient, ExportStatus};

use harness::within;

/// Creates an export and waits for its terminal state.
pub async fn run_export(client: &ExportClient, request: CreateExportRequest) -> Export {
    let created = client.create(request).await.expect("CreateExport");
    assert_eq!(created.status(), ExportStatus::Pending);
    within("the export to finish", client.wait(&created.id))
        .await
        .expect("watching the export")
}

/// The whole file of a completed export, checked against its checksum by the client.
pub async fn download_all(client: &ExportClient, id: &str) -> String {
    let mut bytes = Vec::new();
    within(
        "the download",
        client.download_to(id, &mut bytes, |_, _| {}),
    )
    .await
    .expect("DownloadExport");
    String::from_utf8(bytes).expect("the file is UTF-8")
}

/// An export of every contact, with default options.
pub fn all_contacts() -> CreateExportRequest {
    CreateExportRequest::default()
}

/// An export of the contacts with any of `tags`.
pub fn tagged(tags: &[uuid::Uuid]) -> CreateExportRequest {
    CreateExportRequest {
        tag_ids: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

/// Formula neutralisation off.
pub fn raw_cells(mut request: CreateExportRequest) -> CreateExportRequest {
    request.csv_options = Some(CsvOptions {
        disable_formula_neutralization: true,
        ..Default::default()
    });
    request
}
