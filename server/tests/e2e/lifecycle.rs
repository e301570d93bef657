//! Where files go and when: retention (EXPIRED), DeleteExport, signed download URLs, and that
//! every export that ends without a file (failed, cancelled, expired, deleted) leaves no
//! object in the store: `fs`, the S3 server of the tests (multipart uploads included) and the
//! Vercel Blob peer.

use std::time::Duration;

use contact_export_client::{CreateExportRequest, Export, ExportClient, ExportStatus};
use contact_export_server::janitor::JanitorConfig;
use contact_export_server::pipeline::FaultHooks;
use diesel_async::RunQueryDsl;
use opendal::Operator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use super::fixture::{Contact, Workspace, insert_unexportable};
use super::harness::{AppOptions, TestApp, objects_of, within};
use super::s3_peer::S3Peer;
use super::vercel_blob_peer::VercelBlobPeer;
use super::{all_contacts, download_all, run_export};

/// Polls `GetExport` until the export is `status` (retention has no stream to wait on).
async fn wait_for_status(client: &ExportClient, id: &str, status: ExportStatus) -> Export {
    within("the export's status", async {
        loop {
            let export = client.get(id).await.unwrap();
            if export.status() == status {
                return export;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn short_retention() -> JanitorConfig {
    JanitorConfig {
        retention: Duration::from_secs(1),
        interval: Duration::from_millis(100),
    }
}

fn id_of(export: &Export) -> uuid::Uuid {
    export.id.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_expires_a_completed_export_and_removes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(AppOptions {
        storage: contact_export_server::storage::fs_operator(dir.path()).unwrap(),
        janitor: short_retention(),
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &[Contact::numbered(1)]).await;
    let keyed = CreateExportRequest {
        request_id: "nightly".into(),
        ..Default::default()
    };
    let done = run_export(&app.ws.client, keyed.clone()).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let finish = done.finish_time.unwrap();
    let expire = done
        .expire_time
        .expect("a completed export says when it expires");
    assert_eq!(expire.seconds - finish.seconds, 1, "{finish:?} + 1 s");

    let expired = wait_for_status(&app.ws.client, &done.id, ExportStatus::Expired).await;
    assert_eq!(expired.expire_time, Some(expire));
    assert_eq!(expired.sha256, done.sha256, "the record stays as it was");
    let status = app.ws.client.download(&done.id, 0, 0).await.err().unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with("export expired at "),
        "{status:?}"
    );
    within("the file to go", async {
        while !objects_of(&app.storage, app.ws.id, id_of(&done))
            .await
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Within a day the key still returns the export it made.
    let again = app.ws.client.create(keyed).await.unwrap();
    assert_eq!(again.id, done.id);
    let metrics = super::metrics::scrape_text(&app).await;
    assert!(
        metrics.contains("contact_export_expired_exports_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("contact_export_deleted_objects_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_of_exports_that_are_gone_are_freed_after_a_day() {
    let app = TestApp::spawn_with(AppOptions {
        janitor: short_retention(),
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &[Contact::numbered(1)]).await;
    let keyed = CreateExportRequest {
        request_id: "weekly".into(),
        ..Default::default()
    };
    let done = run_export(&app.ws.client, keyed.clone()).await;
    app.ws.client.delete(&done.id).await.unwrap();
    // As if it had been made two days ago: the janitor frees its key.
    diesel::sql_query("UPDATE exports SET created_at = now() - interval '2 days' WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id_of(&done))
        .execute(&mut app.db.conn().await)
        .await
        .unwrap();
    let fresh = within("the key to be freed", async {
        loop {
            let created = app.ws.client.create(keyed.clone()).await.unwrap();
            if created.id != done.id {
                return created;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(fresh.request_id, "weekly");
    assert_eq!(
        app.ws.client.get(&done.id).await.unwrap().request_id,
        "",
        "the old export no longer holds it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_file_and_is_idempotent() {
    let app = TestApp::spawn_with(AppOptions {
        workers: 1,
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &[Contact::numbered(1)]).await;
    let done = run_export(&app.ws.client, all_contacts()).await;
    assert!(
        !objects_of(&app.storage, app.ws.id, id_of(&done))
            .await
            .is_empty()
    );

    // Another workspace cannot, and cannot tell.
    let other = Workspace::create(&app.db, app.addr, false).await;
    let err = other.client.delete(&done.id).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "export not found")
    );

    let deleted = app.ws.client.delete(&done.id).await.unwrap();
    assert_eq!(deleted.status(), ExportStatus::Deleted);
    assert!(deleted.delete_time.is_some());
    assert!(
        objects_of(&app.storage, app.ws.id, id_of(&done))
            .await
            .is_empty()
    );
    assert_eq!(app.ws.client.delete(&done.id).await.unwrap(), deleted);
    assert_eq!(app.ws.client.get(&done.id).await.unwrap(), deleted);
    assert!(
        app.ws.client.list_all().await.unwrap().is_empty(),
        "a deleted export is not listed"
    );
    let err = app.ws.client.download(&done.id, 0, 0).await.err().unwrap();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().starts_with("export was deleted at "),
        "{err:?}"
    );

    // A queued one must be cancelled first.
    let api_only = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let pending = api_only.ws.client.create(all_contacts()).await.unwrap();
    let err = api_only.ws.client.delete(&pending.id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!(
            "export {} is PENDING; cancel it first, then delete it",
            pending.id
        )
    );
    api_only.ws.client.cancel(&pending.id).await.unwrap();
    let deleted = api_only.ws.client.delete(&pending.id).await.unwrap();
    assert_eq!(deleted.status(), ExportStatus::Deleted);
}

/// One HTTP/1.1 GET of `url` (plain HTTP): status, headers, body.
async fn http_get(url: &str) -> (u16, String, Vec<u8>) {
    let rest = url
        .strip_prefix("http://")
        .expect("the test's store speaks plain HTTP");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, head, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap().trim(), 16).unwrap();
        body = &body[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_url_serves_the_file_from_s3_until_it_expires() {
    let s3 = S3Peer::start("exports").await;
    let app = TestApp::spawn_with(AppOptions {
        storage: s3.operator(),
        ..AppOptions::default()
    })
    .await;
    let contacts: Vec<Contact> = (1..=30).map(Contact::numbered).collect();
    app.ws.insert(&app.db, &contacts).await;
    let done = run_export(
        &app.ws.client,
        CreateExportRequest {
            filename: "for the board".into(),
            ..Default::default()
        },
    )
    .await;
    let file = download_all(&app.ws.client, &done.id).await;

    let signed = app.ws.client.download_url(&done.id, None).await.unwrap();
    let expire = signed.expire_time.unwrap();
    let seconds = expire.seconds - chrono::Utc::now().timestamp();
    assert!(
        (890..=900).contains(&seconds),
        "15 minutes by default: {seconds}"
    );
    let meta = signed.file.unwrap();
    assert_eq!(
        (meta.size_bytes, meta.sha256.as_str()),
        (done.size_bytes, done.sha256.as_str())
    );
    let (status, head, body) = http_get(&signed.url).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, file.as_bytes());
    assert!(
        head.to_ascii_lowercase()
            .contains("content-disposition: attachment; filename=\"for the board.csv\""),
        "{head}"
    );

    // A short one is refused once it expired; a forged one at once.
    let brief = app
        .ws
        .client
        .download_url(&done.id, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, head, _) = http_get(&brief.url).await;
    assert_eq!(status, 403, "{head}");
    let forged = {
        let at = signed.url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
        let flipped = if &signed.url[at..=at] == "0" {
            "1"
        } else {
            "0"
        };
        format!("{}{flipped}{}", &signed.url[..at], &signed.url[at + 1..])
    };
    let (status, head, _) = http_get(&forged).await;
    assert_eq!(status, 403, "a signature that does not match: {head}");

    let err = app
        .ws
        .client
        .download_url(&done.id, Some(Duration::from_secs(2 * 24 * 3600)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_that_cannot_sign_refuse_a_download_url() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(AppOptions {
        storage: contact_export_server::storage::fs_operator(dir.path()).unwrap(),
        ..AppOptions::default()
    })
    .await;
    app.ws.insert(&app.db, &[Contact::numbered(1)]).await;
    let done = run_export(&app.ws.client, all_contacts()).await;
    let err = app
        .ws
        .client
        .download_url(&done.id, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "this server's storage (fs) cannot sign download URLs; use DownloadExport"
    );
    let pending = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let queued = pending.ws.client.create(all_contacts()).await.unwrap();
    let err = pending
        .ws
        .client
        .download_url(&queued.id, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

/// A store and how to see everything in it.
enum Store {
    Fs(tempfile::TempDir),
    S3(S3Peer),
    VercelBlob(VercelBlobPeer),
}

impl Store {
    fn operator(&self) -> Operator {
        match self {
            Store::Fs(dir) => contact_export_server::storage::fs_operator(dir.path()).unwrap(),
            Store::S3(peer) => peer.operator(),
            Store::VercelBlob(peer) => peer.operator(),
        }
    }

    /// Every object, and (S3) how many multipart uploads were left unfinished.
    fn contents(&self) -> (Vec<String>, usize) {
        match self {
            Store::Fs(dir) => {
                let mut files = Vec::new();
                for entry in walk(dir.path()) {
                    files.push(entry);
                }
                (files, 0)
            }
            Store::S3(peer) => (peer.objects(), peer.unfinished_uploads()),
            // Vercel Blob has no abort: a multipart upload that never completes is no blob (it
            // cannot be listed or read); `vercel_blob.rs` counts what such failures leave.
            Store::VercelBlob(peer) => (peer.objects().into_keys().collect(), 0),
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

/// About 12 MB in 12,000 contacts: on S3, a multipart upload whose first 8 MiB part is up
/// before the end. `poison` adds a contact at the end that cannot be exported.
async fn big_workspace(app: &TestApp, poison: bool) {
    diesel::sql_query(
        "INSERT INTO contacts (workspace_id, email, created_at, notes) \
         SELECT $1, 'c' || g || '@example.com', timestamptz '2024-01-01' + g * interval '1 s', \
         repeat(md5(g::text), 30) FROM generate_series(1, 12000) g",
    )
    .bind::<diesel::sql_types::Uuid, _>(app.ws.id)
    .execute(&mut app.db.conn().await)
    .await
    .unwrap();
    if poison {
        insert_unexportable(&app.db, app.ws.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_that_end_without_a_file_leave_nothing_in_any_store() {
    for store in [
        Store::Fs(tempfile::tempdir().unwrap()),
        Store::S3(S3Peer::start("exports").await),
        Store::VercelBlob(VercelBlobPeer::start().await),
    ] {
        let kind = match &store {
            Store::Fs(_) => "fs",
            Store::S3(_) => "s3",
            Store::VercelBlob(_) => "vercel-blob",
        };
        // Failed mid-upload: the last contact cannot be exported.
        let app = TestApp::spawn_with(AppOptions {
            storage: store.operator(),
            batch_size: 500,
            janitor: short_retention(),
            hooks: FaultHooks {
                batch_delay: Some(Duration::from_millis(50)),
                ..FaultHooks::default()
            },
            ..AppOptions::default()
        })
        .await;
        big_workspace(&app, true).await;
        let failed = run_export(&app.ws.client, all_contacts()).await;
        assert_eq!(failed.status(), ExportStatus::Failed, "{kind}: {failed:?}");
        assert_eq!(store.contents(), (vec![], 0), "{kind}: after a failure");

        // Cancelled mid-upload.
        diesel::sql_query("DELETE FROM contacts WHERE email = 'deep@example.com'")
            .execute(&mut app.db.conn().await)
            .await
            .unwrap();
        let created = app.ws.client.create(all_contacts()).await.unwrap();
        super::replicas::wait_for_rows(&app.ws.client, &created.id, 9000).await;
        app.ws.client.cancel(&created.id).await.unwrap();
        let cancelled = within("the cancel", app.ws.client.wait(&created.id))
            .await
            .unwrap();
        assert_eq!(cancelled.status(), ExportStatus::Cancelled, "{kind}");
        assert_eq!(store.contents(), (vec![], 0), "{kind}: after a cancel");

        // Completed, then expired.
        let done = run_export(&app.ws.client, all_contacts()).await;
        assert_eq!(done.status(), ExportStatus::Completed, "{kind}");
        assert_eq!(store.contents().0.len(), 1, "{kind}: one file");
        wait_for_status(&app.ws.client, &done.id, ExportStatus::Expired).await;
        within("the expired file to go", async {
            while store.contents() != (vec![], 0) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;

        // Completed, then deleted (before retention takes it: a long one this time).
        let keep = TestApp::spawn_on(
            app.stop().await,
            AppOptions {
                storage: store.operator(),
                ..AppOptions::default()
            },
        )
        .await;
        let done = run_export(&keep.ws.client, all_contacts()).await;
        assert_eq!(store.contents().0.len(), 1, "{kind}: one file");
        keep.ws.client.delete(&done.id).await.unwrap();
        assert_eq!(store.contents(), (vec![], 0), "{kind}: after a delete");
    }
}
