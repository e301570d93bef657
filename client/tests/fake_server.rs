//! The client and `exportctl` against a small in-process fake of `ExportService` on loopback.
//!
//! The fake checks only what the client is responsible for (the bearer header, the stream
//! shapes); the real server's behaviour is tested in `server/tests`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contact_export::v1::download_export_response::Payload;
use contact_export::v1::export_service_server::{ExportService, ExportServiceServer};
use contact_export::v1::{
    CancelExportRequest, DeleteExportRequest, DownloadExportRequest, DownloadExportResponse,
    ExportDownloadUrl, GetExportDownloadUrlRequest, GetExportRequest, ListExportsRequest,
    WatchExportRequest,
};
use contact_export_client::{
    ClientError, CreateExportRequest, Export, ExportClient, ExportFileMetadata, ExportStatus,
    ListExportsResponse, RetryPolicy, Saved,
};
use futures::{Stream, StreamExt, stream};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

const TOKEN: &str = "good-token";
const FILE: &[u8] = b"email,first_name\na@example.com,Ann\nb@example.com,Bob\nc@example.com,Cy\n";
const EXPORTS: usize = 5;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake was asked to download: (id, read_offset) per `DownloadExport` call.
type DownloadLog = Arc<Mutex<Vec<(String, i64)>>>;

#[derive(Default)]
struct Fake {
    downloads: DownloadLog,
    /// Set once a download of `stall` has stalled: later ones are served whole.
    stalled: AtomicBool,
}

fn check_auth<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("authorization").map(|v| v.to_str()) {
        Some(Ok(value)) if value == format!("Bearer {TOKEN}") => Ok(()),
        _ => Err(Status::unauthenticated("missing or invalid token")),
    }
}

fn export(id: &str, status: ExportStatus, processed: i64) -> Export {
    Export {
        id: id.into(),
        status: status.into(),
        filename: "contacts.csv".into(),
        total_rows: 3,
        processed_rows: processed,
        error_message: if status == ExportStatus::Failed {
            "database went away".into()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

fn lookup(id: &str) -> Result<Export, Status> {
    match id {
        "done" | "corrupt" | "data-first" | "meta-twice" | "flaky" | "down" | "stall" => {
            Ok(export(id, ExportStatus::Completed, 3))
        }
        "failing" => Ok(export(id, ExportStatus::Failed, 1)),
        _ => Err(Status::not_found("export not found")),
    }
}

#[tonic::async_trait]
impl ExportService for Fake {
    async fn create_export(
        &self,
        request: Request<CreateExportRequest>,
    ) -> Result<Response<Export>, Status> {
        check_auth(&request)?;
        let request = request.into_inner();
        Ok(Response::new(Export {
            id: "done".into(),
            status: ExportStatus::Pending.into(),
            filename: request.filename,
            tag_ids: request.tag_ids,
            request_id: request.request_id,
            csv_options: request.csv_options,
            ..Default::default()
        }))
    }

    async fn get_export(
        &self,
        request: Request<GetExportRequest>,
    ) -> Result<Response<Export>, Status> {
        check_auth(&request)?;
        lookup(&request.get_ref().id).map(Response::new)
    }

    async fn list_exports(
        &self,
        request: Request<ListExportsRequest>,
    ) -> Result<Response<ListExportsResponse>, Status> {
        check_auth(&request)?;
        let request = request.into_inner();
        let size = if request.page_size == 0 {
            2
        } else {
            request.page_size as usize
        };
        let start: usize = request.page_token.parse().unwrap_or(0);
        let end = (start + size).min(EXPORTS);
        Ok(Response::new(ListExportsResponse {
            exports: (start..end)
                .map(|i| export(&format!("e{i}"), ExportStatus::Completed, 3))
                .collect(),
            next_page_token: if end < EXPORTS {
                end.to_string()
            } else {
                String::new()
            },
        }))
    }

    type WatchExportStream = BoxStream<Export>;

    async fn watch_export(
        &self,
        request: Request<WatchExportRequest>,
    ) -> Result<Response<Self::WatchExportStream>, Status> {
        check_auth(&request)?;
        let last = lookup(&request.get_ref().id)?;
        let steps = vec![
            export(&last.id, ExportStatus::Pending, 0),
            export(&last.id, ExportStatus::Processing, 1),
            last,
        ];
        Ok(Response::new(
            stream::iter(steps.into_iter().map(Ok)).boxed(),
        ))
    }

    type DownloadExportStream = BoxStream<DownloadExportResponse>;

    async fn download_export(
        &self,
        request: Request<DownloadExportRequest>,
    ) -> Result<Response<Self::DownloadExportStream>, Status> {
        check_auth(&request)?;
        let request = request.into_inner();
        self.downloads
            .lock()
            .unwrap()
            .push((request.id.clone(), request.read_offset));
        lookup(&request.id)?;
        if request.id == "down" {
            return Err(Status::unavailable("server shutting down"));
        }
        let metadata = ExportFileMetadata {
            filename: "contacts.csv".into(),
            size_bytes: FILE.len() as i64,
            sha256: hex::encode(Sha256::digest(FILE)),
            content_type: "text/csv".into(),
        };
        let start = request.read_offset as usize;
        let end = if request.read_limit == 0 {
            FILE.len()
        } else {
            (start + request.read_limit as usize).min(FILE.len())
        };
        let mut body = FILE[start..end].to_vec();
        if request.id == "corrupt" {
            body[0] ^= 1;
        }
        let meta = |m: &ExportFileMetadata| DownloadExportResponse {
            payload: Some(Payload::Metadata(m.clone())),
        };
        let mut messages: Vec<_> = body
            .chunks(10)
            .map(|c| DownloadExportResponse {
                payload: Some(Payload::Data(bytes::Bytes::copy_from_slice(c))),
            })
            .collect();
        match request.id.as_str() {
            "data-first" => {}
            "meta-twice" => {
                messages.insert(0, meta(&metadata));
                messages.insert(2, meta(&metadata));
            }
            _ => messages.insert(0, meta(&metadata)),
        }
        let mut items: Vec<Result<DownloadExportResponse, Status>> =
            messages.into_iter().map(Ok).collect();
        let body_stream = match request.id.as_str() {
            // The first stream of `flaky` is cut after two chunks, as a dropped connection
            // would be; the next one from the byte reached is served whole.
            "flaky" if request.read_offset == 0 => {
                items.truncate(3);
                items.push(Err(Status::unavailable("connection cut")));
                stream::iter(items).boxed()
            }
            // The first stream of `stall` sends two chunks and then nothing, for ever.
            "stall" if !self.stalled.swap(true, Ordering::SeqCst) => {
                items.truncate(3);
                stream::iter(items).chain(stream::pending()).boxed()
            }
            _ => stream::iter(items).boxed(),
        };
        let mut response = Response::new(body_stream);
        response.metadata_mut().insert(
            "content-disposition",
            "attachment; filename=\"contacts.csv\"".parse().unwrap(),
        );
        Ok(response)
    }

    async fn cancel_export(
        &self,
        request: Request<CancelExportRequest>,
    ) -> Result<Response<Export>, Status> {
        check_auth(&request)?;
        let mut export = lookup(&request.get_ref().id)?;
        export.status = ExportStatus::Cancelled.into();
        Ok(Response::new(export))
    }

    async fn delete_export(
        &self,
        request: Request<DeleteExportRequest>,
    ) -> Result<Response<Export>, Status> {
        check_auth(&request)?;
        let mut export = lookup(&request.get_ref().id)?;
        export.status = ExportStatus::Deleted.into();
        Ok(Response::new(export))
    }

    async fn get_export_download_url(
        &self,
        request: Request<GetExportDownloadUrlRequest>,
    ) -> Result<Response<ExportDownloadUrl>, Status> {
        check_auth(&request)?;
        let request = request.into_inner();
        lookup(&request.id)?;
        // Echoes the expiry asked for, so a test sees what the client sent.
        let seconds = request.expire_in.map_or(900, |d| d.seconds);
        Ok(Response::new(ExportDownloadUrl {
            url: format!("https://store.example/{}?expires={seconds}", request.id),
            expire_time: None,
            file: None,
        }))
    }
}

async fn start() -> SocketAddr {
    start_logged().await.0
}

/// The fake, and the log of the downloads it was asked for.
async fn start_logged() -> (SocketAddr, DownloadLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Fake::default();
    let log = fake.downloads.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExportServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, log)
}

async fn client(addr: SocketAddr) -> ExportClient {
    ExportClient::connect(&format!("http://{addr}"), TOKEN)
        .await
        .unwrap()
}

#[tokio::test]
async fn sends_the_token_on_every_call() {
    let addr = start().await;
    let good = client(addr).await;
    assert_eq!(
        good.get("done").await.unwrap().status(),
        ExportStatus::Completed
    );
    let bad = ExportClient::connect(&addr.to_string(), "other")
        .await
        .unwrap();
    assert_eq!(
        bad.get("done").await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        bad.watch("done").await.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );
}

#[tokio::test]
async fn create_get_cancel_list() {
    let client = client(start().await).await;
    let created = client
        .create(CreateExportRequest {
            tag_ids: vec!["t1".into()],
            filename: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (created.status(), created.tag_ids.as_slice()),
        (ExportStatus::Pending, &["t1".to_owned()][..])
    );
    assert_eq!(client.get("nope").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        client.cancel("done").await.unwrap().status(),
        ExportStatus::Cancelled
    );

    let first = client.list(0, "").await.unwrap();
    assert_eq!(
        (first.exports.len(), first.next_page_token.as_str()),
        (2, "2")
    );
    let all = client.list_all().await.unwrap();
    let ids: Vec<_> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e0", "e1", "e2", "e3", "e4"]);
}

#[tokio::test]
async fn watch_and_wait() {
    let client = client(start().await).await;
    let states: Vec<_> = client
        .watch("done")
        .await
        .unwrap()
        .map(|e| e.unwrap().status())
        .collect()
        .await;
    assert_eq!(
        states,
        [
            ExportStatus::Pending,
            ExportStatus::Processing,
            ExportStatus::Completed
        ]
    );
    assert_eq!(
        client.wait("failing").await.unwrap().status(),
        ExportStatus::Failed
    );
}

#[tokio::test]
async fn download_full_and_ranged() {
    let client = client(start().await).await;
    let mut out = Vec::new();
    let mut last = (0, 0);
    let metadata = client
        .download_to("done", &mut out, |done, total| last = (done, total))
        .await
        .unwrap();
    assert_eq!(out, FILE);
    assert_eq!(metadata.size_bytes, FILE.len() as i64);
    assert_eq!(last, (FILE.len() as u64, FILE.len() as u64));

    let ranged = client.download("done", 5, 12).await.unwrap();
    assert_eq!(
        ranged.content_disposition.as_deref(),
        Some("attachment; filename=\"contacts.csv\"")
    );
    let mut out = Vec::new();
    ranged.write_to(&mut out, |_, _| {}).await.unwrap();
    assert_eq!(out, &FILE[5..17]);
}

#[tokio::test]
async fn download_problems_are_errors() {
    let client = client(start().await).await;
    let err = client
        .download_to("corrupt", &mut Vec::new(), |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        client
            .download("data-first", 0, 0)
            .await
            .unwrap_err()
            .code(),
        Code::Internal
    );
    let err = client
        .download_to("meta-twice", &mut Vec::new(), |_, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.status().map(Status::code), Some(Code::Internal));
    assert_eq!(
        client.download("nope", 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// Runs `exportctl` against the fake; returns (exit code, stdout, stderr).
async fn exportctl(addr: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .args(args)
        .env("EXPORT_ADDR", format!("http://{addr}"))
        .env("EXPORT_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_exit_codes_and_output() {
    let addr = start().await;

    let (code, out, _) = exportctl(addr, &["get", "done", "--json"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["status"], "EXPORT_STATUS_COMPLETED");

    let (code, _, err) = exportctl(addr, &["get", "nope"]).await;
    assert_eq!(
        (code, err.trim()),
        (2, "error: NOT_FOUND: export not found")
    );

    let (code, out, _) = exportctl(addr, &["list", "--all", "--json"]).await;
    assert_eq!((code, out.lines().count()), (0, EXPORTS));

    let (code, out, _) = exportctl(addr, &["create", "--tag", "t", "--watch"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("COMPLETED"), "{out}");

    let (code, _, err) = exportctl(addr, &["watch", "failing"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("FAILED: database went away"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_download_is_atomic() {
    let addr = start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.csv");
    let target_str = target.to_str().unwrap();

    let (code, _, err) = exportctl(addr, &["download", "corrupt", "-o", target_str]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no partial file left"
    );

    let (code, out, err) = exportctl(addr, &["download", "done", "-o", target_str]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sha256 verified"), "{out}");
    assert_eq!(std::fs::read(&target).unwrap(), FILE);

    let dir_str = dir.path().to_str().unwrap();
    let (code, _, err) = exportctl(
        addr,
        &[
            "download", "done", "-o", dir_str, "--offset", "4", "--limit", "6",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("contacts.csv")).unwrap(),
        &FILE[4..10]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_create_sends_the_csv_options() {
    let addr = start().await;
    // The fake echoes the request's options, as the server does.
    let (code, out, err) = exportctl(
        addr,
        &[
            "create",
            "--delimiter",
            "semicolon",
            "--bom",
            "--crlf",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["delimiter"], "CSV_DELIMITER_SEMICOLON");
    assert_eq!(json["include_bom"], true);
    assert_eq!(json["line_ending"], "LINE_ENDING_CRLF");
    assert_eq!(json["disable_formula_neutralization"], false);

    let (code, out, err) = exportctl(addr, &["create", "--delimiter", "tab"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "csv        tab"), "{out}");

    // No flag: no options sent, the server's defaults apply.
    let (code, out, err) = exportctl(addr, &["create", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["delimiter"], "CSV_DELIMITER_UNSPECIFIED");
    assert_eq!(json["line_ending"], "LINE_ENDING_UNSPECIFIED");
}

/// The offsets the fake was asked to download `id` from, in order.
fn offsets(log: &DownloadLog, id: &str) -> Vec<i64> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(asked, _)| asked == id)
        .map(|(_, offset)| *offset)
        .collect()
}

/// Retries without the default pauses, so the tests do not wait.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

/// Files in `dir` (the target and any partial file).
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn download_file_resumes_a_partial_file_at_its_end() {
    let (addr, log) = start_logged().await;
    let client = client(addr).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.csv");
    let partial = contact_export_client::partial_path(&target, "done");
    std::fs::write(&partial, &FILE[..20]).unwrap();

    let mut seen = Vec::new();
    let saved = client
        .download_file("done", &target, |done, total| seen.push((done, total)))
        .await
        .unwrap();
    assert_eq!(saved.how, Saved::Resumed { from: 20 });
    assert_eq!(saved.received, FILE.len() as u64 - 20);
    assert_eq!(std::fs::read(&target).unwrap(), FILE);
    assert_eq!(
        files_in(dir.path()),
        ["out.csv"],
        "the partial file became the target"
    );
    // One call to learn the file, one from the first byte missing.
    assert_eq!(offsets(&log, "done"), [0, 20]);
    assert_eq!(seen.first(), Some(&(20, FILE.len() as u64)));
    assert_eq!(seen.last(), Some(&(FILE.len() as u64, FILE.len() as u64)));
}

#[tokio::test]
async fn a_target_that_is_the_whole_export_is_verified_and_left_alone() {
    let (addr, log) = start_logged().await;
    let client = client(addr).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.csv");
    std::fs::write(&target, FILE).unwrap();
    let before = std::fs::metadata(&target).unwrap().modified().unwrap();

    let saved = client
        .download_file("done", &target, |_, _| {})
        .await
        .unwrap();
    assert_eq!((saved.how, saved.received), (Saved::AlreadyComplete, 0));
    assert_eq!(
        std::fs::metadata(&target).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(offsets(&log, "done"), [0]);

    // A target of the same size that is something else is replaced by the export.
    let mut other = FILE.to_vec();
    other[5] ^= 1;
    std::fs::write(&target, &other).unwrap();
    let saved = client
        .download_file("done", &target, |_, _| {})
        .await
        .unwrap();
    assert_eq!(saved.how, Saved::Downloaded);
    assert_eq!(std::fs::read(&target).unwrap(), FILE);
}

#[tokio::test]
async fn a_partial_file_that_is_not_a_prefix_is_downloaded_again_once() {
    let (addr, log) = start_logged().await;
    let client = client(addr).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.csv");
    // A shorter target written by something else is taken as the start of the file, and
    // found not to be.
    std::fs::write(&target, b"not the start of it").unwrap();

    let saved = client
        .download_file("done", &target, |_, _| {})
        .await
        .unwrap();
    assert_eq!(saved.how, Saved::Restarted { discarded: 19 });
    assert_eq!(std::fs::read(&target).unwrap(), FILE);
    assert_eq!(files_in(dir.path()), ["out.csv"]);
    assert_eq!(offsets(&log, "done"), [0, 19, 0]);

    // When the fresh download does not verify either, it fails saying so, and keeps nothing.
    let other = dir.path().join("other.csv");
    let partial = contact_export_client::partial_path(&other, "corrupt");
    std::fs::write(&partial, &FILE[..30]).unwrap();
    let err = client
        .download_file("corrupt", &other, |_, _| {})
        .await
        .unwrap_err();
    match &err {
        ClientError::ChecksumMismatch {
            restarted_after: Some(30),
            ..
        } => {}
        other => panic!("expected a checksum mismatch after a restart, got {other:?}"),
    }
    assert!(
        err.to_string().contains("downloaded again from byte 0"),
        "{err}"
    );
    assert_eq!(
        files_in(dir.path()),
        ["out.csv"],
        "the bad partial file is gone"
    );
    assert!(!other.exists(), "nothing unverified reaches the target");
}

#[tokio::test]
async fn a_stream_cut_mid_way_is_opened_again_at_the_byte_reached() {
    let (addr, log) = start_logged().await;
    let client = client(addr).await.with_retry(quick_retries());
    let mut out = Vec::new();
    client
        .download_to("flaky", &mut out, |_, _| {})
        .await
        .unwrap();
    assert_eq!(out, FILE);
    // Two chunks of ten bytes arrived before the cut.
    assert_eq!(offsets(&log, "flaky"), [0, 20]);

    let dir = tempfile::tempdir().unwrap();
    let saved = client
        .download_file("flaky", dir.path(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(saved.path, dir.path().join("contacts.csv"));
    assert_eq!(saved.how, Saved::Downloaded);
    assert_eq!(std::fs::read(&saved.path).unwrap(), FILE);
}

#[tokio::test]
async fn retries_run_out_on_a_server_that_stays_unavailable() {
    let (addr, log) = start_logged().await;
    let client = client(addr).await.with_retry(quick_retries());
    let err = client
        .download_to("down", &mut Vec::new(), |_, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err:?}");
    assert_eq!(offsets(&log, "down").len(), 3, "the policy's three tries");

    // An answer that would be the same again is not retried.
    let err = client
        .download_to("nope", &mut Vec::new(), |_, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    assert_eq!(offsets(&log, "nope").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_download_killed_half_way_resumes_when_run_again() {
    let (addr, log) = start_logged().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.csv");
    let partial = contact_export_client::partial_path(&target, "stall");

    // The first stream stalls after 20 bytes: the process is killed while it waits for more.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .args(["download", "stall", "-o"])
        .arg(&target)
        .env("EXPORT_ADDR", format!("http://{addr}"))
        .env("EXPORT_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first 20 bytes reach the partial file");
    child.kill().await.unwrap();
    assert!(
        !target.exists(),
        "nothing at the target before the file is whole"
    );

    let (code, out, err) =
        exportctl(addr, &["download", "stall", "-o", target.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("sha256 verified (resumed at byte 20)"),
        "{out}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), FILE);
    assert_eq!(offsets(&log, "stall"), [0, 0, 20]);
    assert_eq!(files_in(dir.path()), ["out.csv"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_delete_and_signed_url() {
    let addr = start().await;
    let (code, out, err) = exportctl(addr, &["delete", "done", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["status"], "EXPORT_STATUS_DELETED");
    let (code, out, err) = exportctl(addr, &["url", "done", "--expire-in", "2h"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "https://store.example/done?expires=7200");
    let (code, _, err) = exportctl(addr, &["url", "nope"]).await;
    assert_eq!(
        (code, err.trim()),
        (2, "error: NOT_FOUND: export not found")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_create_watch_download_in_one_command() {
    let addr = start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("mine.csv");
    let (code, out, err) =
        exportctl(addr, &["create", "--download", target.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("created export done"), "{err}");
    assert!(out.contains("COMPLETED"), "the watch's final state: {out}");
    assert!(
        out.contains(&format!(
            "{}: {} bytes, sha256 verified",
            target.display(),
            FILE.len()
        )),
        "{out}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), FILE);

    // An export that does not complete is not downloaded, and says why.
    let (code, _, err) = exportctl(addr, &["watch", "failing"]).await;
    assert_eq!(code, 1, "{err}");
}
