//! WatchExport's sequence and DownloadExport's ranges.

use contact_export_client::{ExportStatus, RetryPolicy, Saved, is_retryable, partial_path};
use futures::StreamExt;
use tonic::Code;

use super::cut_proxy::CutProxy;
use super::expected::expected_csv;
use super::failing_storage::WriteFaults;
use super::fixture::Contact;
use super::harness::{AppOptions, Dial, TestApp, within};
use super::{all_contacts, download_all, run_export};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_starts_with_the_current_state_and_ends_at_the_terminal_one() {
    // An API-only replica takes the request and the watch; a second replica on the same
    // database runs the job, so progress reaches the watcher through NOTIFY.
    let api = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let contacts: Vec<Contact> = (1..=60).map(Contact::numbered).collect();
    api.ws.insert(&api.db, &contacts).await;
    let created = api.ws.client.create(all_contacts()).await.unwrap();
    let mut watch = api.ws.client.watch(&created.id).await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ExportStatus::Pending);
    assert_eq!(first, api.ws.client.get(&created.id).await.unwrap());

    // The job waits at its first part upload until the watcher has seen it running: without
    // the gate a fast job may finish between two reads, and a watcher coalesces what it missed.
    let gate = WriteFaults::hold_writes(1024);
    let _worker = api
        .replica(AppOptions {
            batch_size: 7,
            storage: gate.operator(),
            ..AppOptions::default()
        })
        .await;
    let mut seen = vec![first];
    while seen.last().unwrap().status() != ExportStatus::Processing {
        let message = within("a PROCESSING message", watch.next()).await;
        seen.push(
            message
                .expect("the watch goes on while the job runs")
                .unwrap(),
        );
    }
    gate.open();
    while let Some(message) = within("the next watch message", watch.next()).await {
        seen.push(message.unwrap());
    }
    let last = seen.last().unwrap();
    assert_eq!(last.status(), ExportStatus::Completed, "{seen:#?}");
    assert_eq!(last.processed_rows, 60);
    assert_eq!(last.total_rows, 60);
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "no message repeats the previous state");
        if pair[0].attempt == pair[1].attempt {
            assert!(
                pair[1].processed_rows >= pair[0].processed_rows,
                "{seen:#?}"
            );
        }
    }
    // Only terminal messages after the first terminal one: none, since the stream ended there.
    assert_eq!(
        seen.iter()
            .filter(|e| e.status() == ExportStatus::Completed)
            .count(),
        1
    );
    // A watch of a finished export is one message.
    let again: Vec<_> = api
        .ws
        .client
        .watch(&created.id)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].as_ref().unwrap(), last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_reassemble_the_file_and_bad_ranges_are_refused() {
    let app = TestApp::spawn_with(AppOptions {
        batch_size: 100,
        ..AppOptions::default()
    })
    .await;
    let contacts: Vec<Contact> = (1..=700)
        .map(|n| {
            let mut c = Contact::numbered(n);
            c.notes = Some(format!("{n}:{}", "lorem ipsum, \"dolor\" ".repeat(40)));
            c
        })
        .collect();
    app.ws.insert(&app.db, &contacts).await;
    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let whole = download_all(&app.ws.client, &done.id).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    assert_eq!(whole, expected_csv(&refs, true));
    let size = whole.len() as i64;
    assert!(size > 600_000, "large enough for several chunks: {size}");

    // Whole download in bounded chunks, metadata first, content-disposition beside it.
    let download = app.ws.client.download(&done.id, 0, 0).await.unwrap();
    assert_eq!(download.metadata.size_bytes, size);
    assert_eq!(download.metadata.filename, done.filename);
    assert_eq!(download.metadata.sha256, done.sha256);
    assert_eq!(download.metadata.content_type, "text/csv; charset=utf-8");
    let disposition = download.content_disposition.clone().unwrap();
    assert!(
        disposition.starts_with(&format!("attachment; filename=\"{}\"", done.filename)),
        "{disposition}"
    );
    let chunks: Vec<_> = download.chunks.collect().await;
    assert!(chunks.len() >= 3);
    for chunk in &chunks {
        let len = chunk.as_ref().unwrap().len();
        assert!(len > 0 && len <= 256 * 1024, "{len}");
    }

    // Ranges of odd sizes, back to back, rebuild the file.
    let mut rebuilt = Vec::new();
    let mut offset = 0i64;
    for limit in [1i64, 999, 65_537, 300_001].into_iter().cycle() {
        if offset >= size {
            break;
        }
        let part = app
            .ws
            .client
            .download(&done.id, offset, limit)
            .await
            .unwrap();
        assert_eq!(
            part.metadata.size_bytes, size,
            "metadata describes the whole file"
        );
        let bytes: Vec<u8> = part
            .chunks
            .map(|c| c.unwrap())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(bytes.len() as i64, limit.min(size - offset));
        offset += bytes.len() as i64;
        rebuilt.extend(bytes);
    }
    assert_eq!(rebuilt, whole.as_bytes());

    // At the end: metadata and no data. Past it: OUT_OF_RANGE.
    let at_end = app.ws.client.download(&done.id, size, 0).await.unwrap();
    assert_eq!(at_end.chunks.collect::<Vec<_>>().await.len(), 0);
    let status = app
        .ws
        .client
        .download(&done.id, size + 1, 0)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_export_cannot_be_downloaded() {
    let app = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let pending = app.ws.client.create(all_contacts()).await.unwrap();
    let status = app
        .ws
        .client
        .download(&pending.id, 0, 0)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("PENDING"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_of_one_export_each_follow_it_to_the_end() {
    // Watchers on an API-only replica share one read per change (see `api::shared_read`);
    // each still sees its own complete, ordered sequence.
    let api = TestApp::spawn_with(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await;
    let contacts: Vec<Contact> = (1..=200).map(Contact::numbered).collect();
    api.ws.insert(&api.db, &contacts).await;
    let created = api.ws.client.create(all_contacts()).await.unwrap();
    let mut watchers = Vec::new();
    for _ in 0..12 {
        let client = api.ws.client.clone();
        let id = created.id.clone();
        let watch = client.watch(&id).await.unwrap();
        watchers.push(tokio::spawn(async move {
            within(
                "a watcher to see the end",
                watch.map(Result::unwrap).collect::<Vec<_>>(),
            )
            .await
        }));
    }
    let _worker = api
        .replica(AppOptions {
            batch_size: 7,
            ..AppOptions::default()
        })
        .await;
    for watcher in watchers {
        let seen = watcher.await.unwrap();
        assert_eq!(seen[0].status(), ExportStatus::Pending, "{seen:#?}");
        let last = seen.last().unwrap();
        assert_eq!(last.status(), ExportStatus::Completed, "{seen:#?}");
        assert_eq!((last.processed_rows, last.total_rows), (200, 200));
        for pair in seen.windows(2) {
            assert_ne!(pair[0], pair[1], "no message repeats the previous state");
            assert!(
                pair[1].processed_rows >= pair[0].processed_rows,
                "{seen:#?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_mid_stream_resumes_to_the_same_bytes() {
    let app = TestApp::spawn_with(AppOptions {
        batch_size: 200,
        ..AppOptions::default()
    })
    .await;
    let contacts: Vec<Contact> = (1..=900)
        .map(|n| {
            let mut c = Contact::numbered(n);
            c.notes = Some(format!("{n}:{}", "lorem ipsum, \"dolor\" ".repeat(60)));
            c
        })
        .collect();
    app.ws.insert(&app.db, &contacts).await;
    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let whole = download_all(&app.ws.client, &done.id).await;
    assert!(whole.len() > 1_000_000, "several chunks: {}", whole.len());
    let dir = tempfile::tempdir().unwrap();

    // The connection drops after 400 kB: the client opens the stream again at the byte it
    // reached, on a new connection, and the file is whole and verified.
    let proxy = CutProxy::start(app.addr, 400_000).await;
    let client = Dial::from(proxy.addr).connect(&app.ws.token).await;
    let target = dir.path().join("through-a-cut.csv");
    let saved = within(
        "the download through the cut",
        client.download_file(&done.id, &target, |_, _| {}),
    )
    .await
    .unwrap();
    assert_eq!(saved.how, Saved::Downloaded);
    assert_eq!(saved.received, whole.len() as u64);
    assert!(proxy.connections() >= 2, "the first connection was cut");
    assert_eq!(std::fs::read(&target).unwrap(), whole.as_bytes());

    // A client that does not retry stops at the cut and keeps what arrived; the next
    // download goes on from there, to the same bytes.
    let proxy = CutProxy::start(app.addr, 700_000).await;
    let once = Dial::from(proxy.addr)
        .connect(&app.ws.token)
        .await
        .with_retry(RetryPolicy::NEVER);
    let target = dir.path().join("resumed.csv");
    let err = within(
        "the download to be cut",
        once.download_file(&done.id, &target, |_, _| {}),
    )
    .await
    .unwrap_err();
    assert!(
        err.status().is_some_and(is_retryable),
        "a cut connection: {err:?}"
    );
    let held = std::fs::metadata(partial_path(&target, &done.id))
        .expect("the partial file is kept")
        .len();
    assert!(held > 0 && held < whole.len() as u64, "{held}");
    assert!(!target.exists());
    let saved = within(
        "the resumed download",
        app.ws.client.download_file(&done.id, &target, |_, _| {}),
    )
    .await
    .unwrap();
    assert_eq!(saved.how, Saved::Resumed { from: held });
    assert_eq!(saved.received, whole.len() as u64 - held);
    assert_eq!(std::fs::read(&target).unwrap(), whole.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_missing_or_not_of_its_recorded_size_is_data_loss() {
    let app = TestApp::spawn().await;
    let contacts: Vec<Contact> = (1..=20).map(Contact::numbered).collect();
    app.ws.insert(&app.db, &contacts).await;
    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let whole = download_all(&app.ws.client, &done.id).await;
    let key = app.storage_key(&done.id).await;

    let refused = async || {
        let status = app.ws.client.download(&done.id, 0, 0).await.err().unwrap();
        assert_eq!(status.code(), Code::DataLoss, "{status:?}");
        status.message().to_owned()
    };
    // Cut short.
    app.storage
        .write(&key, whole.as_bytes()[..whole.len() - 10].to_vec())
        .await
        .unwrap();
    let message = refused().await;
    assert!(
        message.contains(&format!(
            "{} bytes, not the {}",
            whole.len() - 10,
            whole.len()
        )),
        "{message}"
    );
    // Grown.
    app.storage
        .write(&key, format!("{whole}extra"))
        .await
        .unwrap();
    refused().await;
    // Gone.
    app.storage.delete(&key).await.unwrap();
    assert_eq!(refused().await, "the export's file is missing from storage");
}
