//! Exports into the Vercel Blob API of [`super::vercel_blob_peer`] (which checks the token
//! and every header of OpenDAL's calls), through OpenDAL's `vercel_blob` service as
//! `exportd serve --storage vercel-blob://…` builds it.

use std::collections::BTreeMap;

use contact_export_client::ExportStatus;

use super::fixture::{Contact, insert_large_export, large_export_options};
use super::harness::{AppOptions, TestApp};
use super::vercel_blob_peer::VercelBlobPeer;
use super::{all_contacts, download_all, run_export};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_export_is_uploaded_to_vercel_blob_in_parts_and_downloads_whole() {
    let peer = VercelBlobPeer::start().await;
    let app = TestApp::spawn_with(AppOptions {
        storage: peer.operator(),
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
    assert_eq!(
        peer.objects(),
        BTreeMap::from([(key.clone(), export.size_bytes as u64)]),
        "one blob, nothing else"
    );
    assert_eq!(
        peer.multipart_uploads(),
        [(key.clone(), 2)],
        "uploaded in two parts (8 MiB, then the rest at close)"
    );
    assert_eq!(peer.unfinished_uploads(), Vec::<String>::new());
    let object = peer
        .operator()
        .stat(&key)
        .await
        .expect("the blob's metadata");
    assert_eq!(object.content_length(), export.size_bytes as u64);
    assert_eq!(object.content_type(), Some("text/csv; charset=utf-8"));

    // Size and SHA-256 checked by the client against what the stream recorded, and the bytes
    // are those of the same contacts exported into memory storage.
    let (lists, reads) = (peer.list_calls(), peer.ranged_reads());
    let from_vercel = download_all(&app.ws.client, &export.id).await;
    assert_eq!(from_vercel.lines().count(), 12_001);
    let (lists, reads) = (peer.list_calls() - lists, peer.ranged_reads() - reads);
    // The download reads the blob in ranges (one per gRPC message of at most 256 KiB), and
    // OpenDAL 0.59's vercel_blob lists the pathname before each read to find the blob's URL
    // (and once for the stat): what the README says a download costs on Vercel.
    assert!(reads > 1, "the download read ranges of the blob: {reads}");
    assert_eq!(
        lists,
        reads + 1,
        "a list call before each read and the stat"
    );
    let in_memory = TestApp::spawn_with(large_export_options()).await;
    insert_large_export(&in_memory).await;
    let reference = run_export(&in_memory.ws.client, all_contacts()).await;
    assert_eq!(
        from_vercel,
        download_all(&in_memory.ws.client, &reference.id).await
    );

    // A range across the part boundary, and the last bytes, straight through the operator.
    let bytes = from_vercel.as_bytes();
    let boundary = 8 << 20;
    let across = peer
        .operator()
        .read_with(&key)
        .range(boundary as u64 - 100..boundary as u64 + 100)
        .await
        .expect("a ranged read");
    assert_eq!(across.to_vec(), &bytes[boundary - 100..boundary + 100]);
    let tail = peer
        .operator()
        .read_with(&key)
        .range(bytes.len() as u64 - 10..)
        .await
        .expect("the last bytes");
    assert_eq!(tail.to_vec(), &bytes[bytes.len() - 10..]);
    assert_eq!(peer.refusals(), Vec::<String>::new(), "no wrong call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_by_the_peer_and_the_export_fails_cleanly() {
    let peer = VercelBlobPeer::start().await;
    let app = TestApp::spawn_with(AppOptions {
        storage: peer.operator_with_token("vercel_blob_rw_not_the_token"),
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
    assert!(peer.objects().is_empty(), "{:?}", peer.objects());
    assert!(peer.unfinished_uploads().is_empty());
    let refusals = peer.refusals();
    assert!(!refusals.is_empty(), "the peer was asked");
    assert!(
        refusals
            .iter()
            .all(|r| r.starts_with("403 ") && r.contains("valid token")),
        "{refusals:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_multipart_upload_fails_leaves_no_blob() {
    let peer = VercelBlobPeer::start().await;
    // The second part goes at close: the writer has begun a multipart upload, and its abort
    // is all that is left to do. Vercel has no abort call (OpenDAL's abort returns
    // Unsupported and sends nothing): the upload is never completed, and no blob exists.
    peer.fail_part(2);
    let app = TestApp::spawn_with(AppOptions {
        storage: peer.operator(),
        ..large_export_options()
    })
    .await;
    insert_large_export(&app).await;
    let export = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(export.status(), ExportStatus::Failed, "{export:?}");
    assert_eq!(
        export.error_message,
        "writing the export file to storage failed"
    );
    assert!(peer.objects().is_empty(), "{:?}", peer.objects());
    assert!(peer.multipart_uploads().is_empty());
    let unfinished = peer.unfinished_uploads();
    // Each attempt of the step began its own upload and left it unfinished.
    assert_eq!(unfinished.len(), export.attempt as usize, "{export:?}");
    assert_eq!(unfinished.len(), peer.multipart_uploads_created());
    assert!(
        unfinished
            .iter()
            .all(|pathname| pathname.contains(&export.id)),
        "{unfinished:?}"
    );
    assert_eq!(peer.refusals(), Vec::<String>::new(), "no wrong call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_through_the_operator_removes_the_blob() {
    let peer = VercelBlobPeer::start().await;
    // `vercel-blob:///tenant`: every key under `tenant/`.
    let op = peer.operator_with("/tenant", peer.token());
    op.write_with("exports/a.csv", "a,b\n1,2\n")
        .content_type("text/csv")
        .await
        .unwrap();
    op.write("exports/b.csv", "b").await.unwrap();
    assert_eq!(
        peer.objects(),
        BTreeMap::from([
            ("tenant/exports/a.csv".to_owned(), 8),
            ("tenant/exports/b.csv".to_owned(), 1),
        ])
    );
    assert_eq!(
        op.read("exports/a.csv").await.unwrap().to_vec(),
        b"a,b\n1,2\n"
    );
    // One blob a page: the listing follows the cursor.
    assert_eq!(
        listed(&op, Some(1)).await,
        ["exports/a.csv", "exports/b.csv"]
    );

    op.delete("exports/a.csv").await.expect("delete");
    assert_eq!(
        peer.objects(),
        BTreeMap::from([("tenant/exports/b.csv".to_owned(), 1)])
    );
    assert_eq!(listed(&op, None).await, ["exports/b.csv"]);
    let gone = op.stat("exports/a.csv").await.expect_err("it is gone");
    assert_eq!(gone.kind(), opendal::ErrorKind::NotFound);
    // Deleting what is not there is no error (OpenDAL finds no URL and sends no delete).
    op.delete("exports/a.csv").await.expect("a second delete");
    assert_eq!(peer.refusals(), Vec::<String>::new(), "no wrong call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_export_removes_the_blob_and_no_download_url_is_signed() {
    let peer = VercelBlobPeer::start().await;
    let app = TestApp::spawn_with(AppOptions {
        storage: peer.operator(),
        ..AppOptions::default()
    })
    .await;
    let contacts: Vec<Contact> = (1..=20).map(Contact::numbered).collect();
    app.ws.insert(&app.db, &contacts).await;
    let export = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(export.status(), ExportStatus::Completed, "{export:?}");
    let key = app.storage_key(&export.id).await;
    assert_eq!(
        peer.objects(),
        BTreeMap::from([(key, export.size_bytes as u64)])
    );
    assert!(peer.multipart_uploads().is_empty(), "a small file: one put");

    // OpenDAL's vercel_blob cannot presign: DownloadExport is the way.
    let refused = app
        .ws
        .client
        .download_url(&export.id, None)
        .await
        .expect_err("no signed URL");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("(vercel-blob) cannot sign"),
        "{refused:?}"
    );

    let deleted = app
        .ws
        .client
        .delete(&export.id)
        .await
        .expect("DeleteExport");
    assert_eq!(deleted.status(), ExportStatus::Deleted);
    assert!(peer.objects().is_empty(), "{:?}", peer.objects());
    assert_eq!(peer.refusals(), Vec::<String>::new(), "no wrong call");
}

/// What the peer checks, asked directly: each wrong call is answered with an error status
/// (and recorded), so that OpenDAL sending it would fail a test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_refuses_calls_that_break_the_protocol() {
    let peer = VercelBlobPeer::start().await;
    let client = peer.client();
    let api = "https://blob.vercel-storage.com";
    let bearer = format!("Bearer {}", peer.token());
    let mpu = |action: &str| {
        client
            .post(format!("{api}/mpu/a.csv"))
            .header("authorization", &bearer)
            .header("x-mpu-action", action)
            .header("x-mpu-key", "a.csv")
    };
    let part = |id: &str, number: &str, size: usize| {
        mpu("upload")
            .header("x-mpu-upload-id", id)
            .header("x-mpu-part-number", number)
            .body(vec![b'x'; size])
    };
    let status = |response: reqwest::Response| response.status().as_u16();
    let json = |response: reqwest::Response| async move {
        serde_json::from_slice::<serde_json::Value>(&response.bytes().await.unwrap()).unwrap()
    };

    // The token, on every API call.
    let list = client.get(format!("{api}/?prefix=&limit=10"));
    assert_eq!(status(list.send().await.unwrap()), 403);
    let list = client
        .get(format!("{api}/?prefix=&limit=10"))
        .header("authorization", "Bearer vercel_blob_rw_other");
    assert_eq!(status(list.send().await.unwrap()), 403);
    // A put that Vercel would store under a random name.
    let put = client
        .put(format!("{api}/a.csv"))
        .header("authorization", &bearer)
        .body("x");
    assert_eq!(status(put.send().await.unwrap()), 400);
    // A multipart upload: parts of an unknown upload, a bad part number, a completion that
    // does not list what was uploaded, a short part that is not the last.
    let created = mpu("create")
        .header("x-add-random-suffix", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let id = json(created).await["uploadId"].as_str().unwrap().to_owned();
    assert_eq!(
        status(part("no-such-upload", "1", 10).send().await.unwrap()),
        400
    );
    assert_eq!(status(part(&id, "0", 10).send().await.unwrap()), 400);
    let first = part(&id, "1", 10).send().await.unwrap();
    let etag = json(first).await["etag"].as_str().unwrap().to_owned();
    let second = part(&id, "2", 10).send().await.unwrap();
    let etag2 = json(second).await["etag"].as_str().unwrap().to_owned();
    let complete = |parts: serde_json::Value| {
        mpu("complete")
            .header("x-mpu-upload-id", &id)
            .header("content-type", "application/json")
            .body(parts.to_string())
    };
    let only_first = serde_json::json!([{"partNumber": 1, "etag": etag}]);
    assert_eq!(status(complete(only_first).send().await.unwrap()), 400);
    let both = serde_json::json!([
        {"partNumber": 1, "etag": etag},
        {"partNumber": 2, "etag": etag2},
    ]);
    assert_eq!(status(complete(both).send().await.unwrap()), 400);
    assert_eq!(peer.unfinished_uploads(), ["a.csv"]);
    // The token is not for the public host.
    let read = client
        .get("https://exportdpeer.public.blob.vercel-storage.com/a.csv")
        .header("authorization", &bearer);
    assert_eq!(status(read.send().await.unwrap()), 400);

    let refusals = peer.refusals();
    let reasons = [
        "no authorization header",
        "valid token",
        "x-add-random-suffix",
        "no unfinished upload",
        "x-mpu-part-number \"0\"",
        "complete lists the parts",
        "at least 5 MiB",
        "authorization header (the token leaks",
    ];
    assert_eq!(refusals.len(), reasons.len(), "{refusals:#?}");
    for (refusal, reason) in refusals.iter().zip(reasons) {
        assert!(refusal.contains(reason), "{refusal} (expected: {reason})");
    }
    assert!(peer.objects().is_empty());
}

/// The files under `exports/`, through OpenDAL's listing (pages of `limit`).
async fn listed(op: &opendal::Operator, limit: Option<usize>) -> Vec<String> {
    let mut list = op.list_with("exports/");
    if let Some(limit) = limit {
        list = list.limit(limit);
    }
    let mut paths: Vec<String> = list
        .await
        .expect("a listing")
        .into_iter()
        .filter(|e| e.metadata().is_file())
        .map(|e| e.path().to_owned())
        .collect();
    paths.sort();
    paths
}
