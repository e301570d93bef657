//! `exportctl` and the client over TLS against a fake `ExportService` serving a certificate the
//! test makes: `--ca-cert`, `--tls-server-name`, `--client-cert`/`--client-key` and their
//! environment variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use contact_export::v1::export_service_server::{ExportService, ExportServiceServer};
use contact_export::v1::{
    CancelExportRequest, DeleteExportRequest, DownloadExportRequest, DownloadExportResponse,
    ExportDownloadUrl, GetExportDownloadUrlRequest, GetExportRequest, ListExportsRequest,
    WatchExportRequest,
};
use contact_export_client::{
    ClientTls, CreateExportRequest, Export, ExportClient, ExportStatus, ListExportsResponse,
};
use futures::Stream;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

// The server's e2e tests make their certificates with the same few lines.
#[path = "../../server/tests/e2e/pki.rs"]
mod pki;

use pki::{Ca, Pem};

const TOKEN: &str = "tls-token";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers `GetExport` for a bearer of [`TOKEN`]; nothing else.
struct Fake;

#[tonic::async_trait]
impl ExportService for Fake {
    async fn create_export(
        &self,
        _: Request<CreateExportRequest>,
    ) -> Result<Response<Export>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_export(
        &self,
        request: Request<GetExportRequest>,
    ) -> Result<Response<Export>, Status> {
        let bearer = request.metadata().get("authorization");
        if bearer.and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
            return Err(Status::unauthenticated("missing or invalid token"));
        }
        Ok(Response::new(Export {
            id: request.into_inner().id,
            status: ExportStatus::Completed.into(),
            ..Default::default()
        }))
    }

    async fn list_exports(
        &self,
        _: Request<ListExportsRequest>,
    ) -> Result<Response<ListExportsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchExportStream = BoxStream<Export>;

    async fn watch_export(
        &self,
        _: Request<WatchExportRequest>,
    ) -> Result<Response<Self::WatchExportStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type DownloadExportStream = BoxStream<DownloadExportResponse>;

    async fn download_export(
        &self,
        _: Request<DownloadExportRequest>,
    ) -> Result<Response<Self::DownloadExportStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn cancel_export(
        &self,
        _: Request<CancelExportRequest>,
    ) -> Result<Response<Export>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_export(
        &self,
        _: Request<DeleteExportRequest>,
    ) -> Result<Response<Export>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_export_download_url(
        &self,
        _: Request<GetExportDownloadUrlRequest>,
    ) -> Result<Response<ExportDownloadUrl>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// The fake over TLS with `server`'s certificate; with `client_ca`, clients need a
/// certificate from it.
async fn start(server: &Pem, client_ca: Option<&Ca>) -> SocketAddr {
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(&server.cert, &server.key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(&ca.pem));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(ExportServiceServer::new(Fake))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// Runs `exportctl` with `envs` and `args`; returns (exit code, stdout, stderr).
async fn exportctl(envs: &[(&str, &Path)], args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_exportctl"));
    command.args(args).env("EXPORT_TOKEN", TOKEN);
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn exportctl_trusts_the_ca_it_is_given() {
    let ca = Ca::new("test CA");
    let addr = start(&ca.server(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let ca_path = ca_file.to_str().unwrap();
    let by_ip = format!("https://{addr}");
    let by_name = format!("https://localhost:{}", addr.port());

    // 127.0.0.1 is in the certificate; so is localhost.
    for url in [&by_ip, &by_name] {
        let (code, out, err) =
            exportctl(&[], &["--addr", url, "--ca-cert", ca_path, "get", "x"]).await;
        assert_eq!(code, 0, "{url}: {err}");
        assert!(out.contains("COMPLETED"), "{out}");
    }
    // The same from the environment, with the name checked given explicitly.
    let (code, _, err) = exportctl(
        &[("EXPORT_CA_CERT", &ca_file)],
        &[
            "--addr",
            &by_ip,
            "--tls-server-name",
            "localhost",
            "get",
            "x",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");

    // Without the CA the built-in public roots apply, and they do not know this one.
    let (code, _, err) = exportctl(&[], &["--addr", &by_ip, "get", "x"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(err.contains("certificate"), "{err}");

    // A name the certificate does not carry.
    let (code, _, err) = exportctl(
        &[],
        &[
            "--addr",
            &by_ip,
            "--ca-cert",
            ca_path,
            "--tls-server-name",
            "exports.example.com",
            "get",
            "x",
        ],
    )
    .await;
    assert_eq!(code, 3, "{err}");

    // TLS flags with a plaintext address are refused, not ignored.
    let plaintext = format!("http://{addr}");
    let (code, _, err) = exportctl(
        &[],
        &["--addr", &plaintext, "--ca-cert", ca_path, "get", "x"],
    )
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("https://"), "{err}");

    // A CA file that is not PEM names the problem.
    let junk = write(dir.path(), "junk.pem", "not a certificate");
    let (code, _, err) = exportctl(
        &[],
        &[
            "--addr",
            &by_ip,
            "--ca-cert",
            junk.to_str().unwrap(),
            "get",
            "x",
        ],
    )
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exportctl_presents_a_client_certificate() {
    let ca = Ca::new("test CA");
    let client_ca = Ca::new("client CA");
    let addr = start(&ca.server(), Some(&client_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let alice = client_ca.client("alice");
    let cert = write(dir.path(), "alice.pem", &alice.cert);
    let key = write(dir.path(), "alice.key", &alice.key);
    let url = format!("https://{addr}");

    let (code, out, err) = exportctl(
        &[
            ("EXPORT_CA_CERT", &ca_file),
            ("EXPORT_CLIENT_CERT", &cert),
            ("EXPORT_CLIENT_KEY", &key),
        ],
        &["--addr", &url, "get", "x"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("COMPLETED"), "{out}");

    // No client certificate: the server ends the connection.
    let (code, _, err) = exportctl(
        &[("EXPORT_CA_CERT", &ca_file)],
        &["--addr", &url, "get", "x"],
    )
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.starts_with("error: connection failed: "), "{err}");

    // A certificate without its key is a usage error.
    let (code, _, err) = exportctl(
        &[("EXPORT_CA_CERT", &ca_file)],
        &[
            "--addr",
            &url,
            "--client-cert",
            cert.to_str().unwrap(),
            "get",
            "x",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--client-key"), "{err}");
}

#[tokio::test]
async fn the_library_connects_with_a_custom_ca_and_identity() {
    let ca = Ca::new("test CA");
    let client_ca = Ca::new("client CA");
    let addr = start(&ca.server(), Some(&client_ca)).await;
    let bob = client_ca.client("bob");
    let tls = ClientTls {
        ca_pem: Some(ca.pem.clone().into_bytes()),
        identity: Some((bob.cert.into_bytes(), bob.key.into_bytes())),
        domain: Some("localhost".into()),
    };
    let client = ExportClient::connect_with(&format!("https://{addr}"), TOKEN, tls)
        .await
        .unwrap();
    assert_eq!(
        client.get("x").await.unwrap().status(),
        ExportStatus::Completed
    );
}
