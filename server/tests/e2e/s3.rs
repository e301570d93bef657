//! Exports into a real S3 API: moto's server (PyPI `moto[server]`, which `.ci/run` installs)
//! on loopback, through OpenDAL's S3 service as `exportd serve --storage s3://…` uses it.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use contact_export_client::ExportStatus;
use diesel_async::RunQueryDsl;
use opendal::Operator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::harness::{AppOptions, TestApp, within};
use super::{all_contacts, download_all, run_export};

const BUCKET: &str = "exports";

/// A `python3 -m moto.server` child, killed when dropped.
struct S3Peer {
    child: Child,
    endpoint: String,
}

impl S3Peer {
    async fn start() -> S3Peer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 not found (the S3 peer is moto's server)");
        let mut peer = S3Peer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        within("moto's server to create the bucket", async {
            while peer.request("PUT", &format!("/{BUCKET}")).await != Some(200) {
                if let Ok(Some(status)) = peer.child.try_wait() {
                    panic!(
                        "moto's server exited ({status}): install it with \
                         `pip install 'moto[server]==5.2.1'` (.ci/run does)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        peer
    }

    /// One plain HTTP request (moto does not check signatures); the status code, or `None`
    /// while nothing listens.
    async fn request(&self, method: &str, path: &str) -> Option<u16> {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let status = String::from_utf8_lossy(&response);
        status.split_whitespace().nth(1)?.parse().ok()
    }

    /// The bucket through OpenDAL, as the service is configured for S3.
    fn operator(&self) -> Operator {
        Operator::via_iter(
            "s3",
            [
                ("bucket", BUCKET),
                ("endpoint", self.endpoint.as_str()),
                ("region", "us-east-1"),
                ("access_key_id", "test"),
                ("secret_access_key", "test"),
                ("disable_config_load", "true"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("an S3 operator")
    }
}

/// About 12 MB of CSV: one 8 MiB part and the rest at close.
async fn insert_contacts(app: &TestApp) {
    diesel::sql_query(
        "INSERT INTO contacts (workspace_id, email, created_at, notes, custom_fields) \
         SELECT $1, 'c' || g || '@example.com', timestamptz '2024-01-01' + g * interval '1 s', \
         repeat(md5(g::text), 30), jsonb_build_object('n', g) FROM generate_series(1, 12000) g",
    )
    .bind::<diesel::sql_types::Uuid, _>(app.ws.id)
    .execute(&mut app.db.conn().await)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_export_is_uploaded_to_s3_in_parts_and_downloads_whole() {
    let s3 = S3Peer::start().await;
    let options = || AppOptions {
        batch_size: 500,
        ..AppOptions::default()
    };
    let app = TestApp::spawn_with(AppOptions {
        storage: s3.operator(),
        ..options()
    })
    .await;
    insert_contacts(&app).await;

    let export = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(export.status(), ExportStatus::Completed, "{export:?}");
    assert_eq!(export.processed_rows, 12_000);
    assert!(export.size_bytes > 8 << 20, "{export:?}");

    let key =
        contact_export_server::storage::object_key(app.ws.id, export.id.parse().expect("a UUID"));
    let object = s3.operator().stat(&key).await.expect("the object is in S3");
    assert_eq!(object.content_length(), export.size_bytes as u64);
    assert_eq!(object.content_type(), Some("text/csv; charset=utf-8"));
    // S3 marks an object assembled from parts with an ETag ending in `-<parts>`.
    let etag = object.etag().expect("an ETag");
    assert!(
        etag.trim_matches('"').ends_with("-2"),
        "uploaded in two parts: {etag}"
    );

    // Size and SHA-256 checked by the client against what the stream recorded, and the bytes
    // are those of the same contacts exported into memory storage.
    let from_s3 = download_all(&app.ws.client, &export.id).await;
    assert_eq!(from_s3.lines().count(), 12_001);
    let in_memory = TestApp::spawn_with(options()).await;
    insert_contacts(&in_memory).await;
    let reference = run_export(&in_memory.ws.client, all_contacts()).await;
    assert_eq!(
        from_s3,
        download_all(&in_memory.ws.client, &reference.id).await
    );
}
