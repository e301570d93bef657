//! Typed async client for the Contact Export gRPC service, `contactexport.v1.ExportService`.
//!
//! [`ExportClient`] wraps the generated `ExportServiceClient`: it sends the bearer token with
//! every request, follows page tokens, checks the download stream's shape, verifies the
//! downloaded file's size and SHA-256, and resumes a download that was cut off.
//!
//! # Connect
//!
//! `http://` speaks plaintext, `https://` TLS (trusting the Mozilla roots built in; see
//! [`ClientTls`] for a private CA or a client certificate). The token goes out as
//! `authorization: Bearer <token>` on every call.
//!
//! ```no_run
//! use contact_export_client::ExportClient;
//!
//! # async fn example() -> Result<(), contact_export_client::ClientError> {
//! let client = ExportClient::connect("http://127.0.0.1:50051", "cex_…").await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Create an export and watch it
//!
//! [`ExportClient::create`] returns at once with status PENDING; [`ExportClient::watch`] is a
//! [`Stream`] of the export's states: the current one first, then one per change, ending
//! after a terminal status.
//!
//! ```no_run
//! use contact_export_client::{CreateExportRequest, ExportClient, ExportStatus};
//! use futures::StreamExt as _;
//!
//! # async fn example(client: ExportClient) -> Result<(), tonic::Status> {
//! let export = client
//!     .create(CreateExportRequest {
//!         filename: "customers".into(),
//!         tag_ids: vec!["de300000-0000-4000-8000-000000000101".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//!
//! let mut states = client.watch(&export.id).await?;
//! while let Some(state) = states.next().await {
//!     let state = state?;
//!     println!("{:?}: {}/{} rows", state.status(), state.processed_rows, state.total_rows);
//! }
//!
//! // Or simply wait for the end.
//! let done = client.wait(&export.id).await?;
//! assert_eq!(done.status(), ExportStatus::Completed);
//! # Ok(())
//! # }
//! ```
//!
//! # Download, resumably
//!
//! [`ExportClient::download_file`] writes a partial file beside the target and renames it
//! into place once the whole file hashes to the SHA-256 the server announced. A cut
//! connection or an UNAVAILABLE server is retried at the byte reached ([`RetryPolicy`]); a
//! download that stopped half-way (even in another process) goes on from the partial file
//! the next time; a target that already is the whole file is verified and left alone.
//!
//! ```no_run
//! use contact_export_client::{ExportClient, Saved};
//!
//! # async fn example(client: ExportClient, id: &str) -> Result<(), contact_export_client::ClientError> {
//! let saved = client
//!     .download_file(id, "customers.csv", |done, total| eprintln!("{done}/{total} bytes"))
//!     .await?;
//! if let Saved::Resumed { from } = saved.how {
//!     eprintln!("resumed at byte {from}");
//! }
//! println!("{} ({} bytes, sha256 {})", saved.path.display(), saved.metadata.size_bytes, saved.metadata.sha256);
//! # Ok(())
//! # }
//! ```
//!
//! [`ExportClient::download_to`] does the same into any [`AsyncWrite`] (retries included, no
//! resume across calls), and [`ExportClient::download`] hands out the raw stream of a byte
//! range.
//!
//! # Errors
//!
//! RPCs return [`tonic::Status`]; calls that also connect, write files or verify bytes return
//! [`ClientError`], which keeps the gRPC code of a server's answer
//! ([`ClientError::code`]) beside its own failures (checksum, size, I/O, connection).
//!
//! ```no_run
//! use contact_export_client::{ClientError, ExportClient};
//! use tonic::Code;
//!
//! # async fn example(client: ExportClient, id: &str) -> Result<(), ClientError> {
//! match client.download_file(id, "out.csv", |_, _| {}).await {
//!     Ok(saved) => println!("saved {}", saved.path.display()),
//!     // Not finished yet: watch it, then try again.
//!     Err(e) if e.code() == Some(Code::FailedPrecondition) => eprintln!("not ready: {e}"),
//!     Err(e) if e.code() == Some(Code::NotFound) => eprintln!("no such export"),
//!     Err(ClientError::ChecksumMismatch { expected, actual, .. }) => {
//!         eprintln!("corrupt download: expected {expected}, got {actual}")
//!     }
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```

mod auth;
mod download;
mod error;
mod receive;
mod retry;
mod save;
mod tls;

use std::path::Path;
use std::time::Duration;

use contact_export::v1::export_service_client::ExportServiceClient;
use contact_export::v1::{
    CancelExportRequest, DeleteExportRequest, DownloadExportRequest, GetExportDownloadUrlRequest,
    GetExportRequest, ListExportsRequest, WatchExportRequest,
};
use futures::{Stream, StreamExt};
use tokio::io::AsyncWrite;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use auth::BearerAuth;
pub use contact_export::v1::{
    Compression, CreateExportRequest, CsvDelimiter, CsvOptions, Export, ExportDownloadUrl,
    ExportFileMetadata, ExportFormat, ExportStatus, LineEnding, ListExportsResponse, TagMatch,
};
pub use download::Download;
pub use error::{ClientError, code_name};
pub use retry::{RetryPolicy, is_retryable};
pub use save::{Saved, SavedFile, partial_path, target_path};
pub use tls::ClientTls;

/// The generated client with [`BearerAuth`] in front, as [`ExportClient::raw`] returns it.
pub type AuthedServiceClient = ExportServiceClient<InterceptedService<Channel, BearerAuth>>;

/// How long [`ExportClient::connect`] waits for the TCP (and HTTP/2) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A cheap-to-clone client of `contactexport.v1.ExportService` that authenticates every call.
///
/// Clones share one HTTP/2 connection; every method takes `&self`, so one client can serve
/// many tasks at once.
#[derive(Clone, Debug)]
pub struct ExportClient {
    inner: AuthedServiceClient,
    /// How downloads recover from a cut connection.
    retry: RetryPolicy,
}

/// Whether an export has reached a status it never leaves.
pub fn is_terminal(status: ExportStatus) -> bool {
    matches!(
        status,
        ExportStatus::Completed
            | ExportStatus::Failed
            | ExportStatus::Cancelled
            | ExportStatus::Expired
    )
}

impl ExportClient {
    /// Connects to `addr` and sends `token` as `authorization: Bearer <token>` on every
    /// request.
    ///
    /// `https://host:port` speaks TLS and trusts the Mozilla root certificates built into the
    /// client (webpki-roots); `http://host:port`, or a bare `host:port`, speaks plaintext. For
    /// a private CA or a client certificate use [`ExportClient::connect_with`].
    ///
    /// The token is checked before connecting ([`ClientError::InvalidToken`]).
    pub async fn connect(addr: &str, token: impl Into<String>) -> Result<Self, ClientError> {
        Self::connect_with(addr, token, ClientTls::default()).await
    }

    /// [`ExportClient::connect`] with TLS settings: a CA to trust instead of the built-in
    /// roots, a client certificate for servers that require one (mutual TLS), and the name
    /// the server's certificate must carry when it is not the address's host.
    ///
    /// Settings that are not the default need an `https://` address: with `http://` they are
    /// refused ([`ClientError::InvalidAddress`]) rather than silently unused.
    pub async fn connect_with(
        addr: &str,
        token: impl Into<String>,
        tls: ClientTls,
    ) -> Result<Self, ClientError> {
        let auth = BearerAuth::new(token)?;
        let channel = endpoint(addr, tls)?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await?;
        Ok(Self::with_auth(channel, auth))
    }

    /// Uses an existing channel (e.g. one built with custom `Endpoint` settings, or a lazy one).
    pub fn from_channel(channel: Channel, token: impl Into<String>) -> Result<Self, ClientError> {
        Ok(Self::with_auth(channel, BearerAuth::new(token)?))
    }

    fn with_auth(channel: Channel, auth: BearerAuth) -> Self {
        Self {
            inner: ExportServiceClient::with_interceptor(channel, auth),
            retry: RetryPolicy::default(),
        }
    }

    /// The same client with another [`RetryPolicy`] for its downloads
    /// ([`RetryPolicy::NEVER`] to fail at the first cut).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The generated client underneath (with the token attached), for requests this wrapper
    /// does not shape, such as deliberately malformed ones in tests.
    pub fn raw(&self) -> AuthedServiceClient {
        self.inner.clone()
    }

    /// `CreateExport`: queues an export and returns it, with status PENDING.
    pub async fn create(&self, request: CreateExportRequest) -> Result<Export, Status> {
        Ok(self.raw().create_export(request).await?.into_inner())
    }

    /// `GetExport`: one export of the caller's workspace.
    pub async fn get(&self, id: impl Into<String>) -> Result<Export, Status> {
        let request = GetExportRequest { id: id.into() };
        Ok(self.raw().get_export(request).await?.into_inner())
    }

    /// `ListExports`: one page, newest first. `page_size` 0 means the server's default;
    /// `page_token` is the previous page's `next_page_token`, empty for the first page.
    pub async fn list(
        &self,
        page_size: i32,
        page_token: impl Into<String>,
    ) -> Result<ListExportsResponse, Status> {
        let request = ListExportsRequest {
            page_size,
            page_token: page_token.into(),
        };
        Ok(self.raw().list_exports(request).await?.into_inner())
    }

    /// Every export of the caller's workspace, newest first, following page tokens.
    pub async fn list_all(&self) -> Result<Vec<Export>, Status> {
        let mut exports = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list(0, token.clone()).await?;
            exports.extend(page.exports);
            if page.next_page_token.is_empty() {
                return Ok(exports);
            }
            if page.next_page_token == token {
                return Err(Status::internal(
                    "ListExports returned the same page token twice",
                ));
            }
            token = page.next_page_token;
        }
    }

    /// `CancelExport`: best effort; returns the export as it is right after the request.
    pub async fn cancel(&self, id: impl Into<String>) -> Result<Export, Status> {
        let request = CancelExportRequest { id: id.into() };
        Ok(self.raw().cancel_export(request).await?.into_inner())
    }

    /// `DeleteExport`: removes a finished export's file; the export then shows DELETED. The
    /// call is idempotent; FAILED_PRECONDITION while the export is pending or processing.
    pub async fn delete(&self, id: impl Into<String>) -> Result<Export, Status> {
        let request = DeleteExportRequest { id: id.into() };
        Ok(self.raw().delete_export(request).await?.into_inner())
    }

    /// `GetExportDownloadUrl`: a signed URL of the finished file that works for `expire_in`
    /// (the server's default, 15 minutes, when `None`). FAILED_PRECONDITION when the server's
    /// store cannot sign URLs: use [`ExportClient::download_file`] then.
    pub async fn download_url(
        &self,
        id: impl Into<String>,
        expire_in: Option<Duration>,
    ) -> Result<ExportDownloadUrl, Status> {
        let expire_in = expire_in
            .map(prost_types::Duration::try_from)
            .transpose()
            .map_err(|_| Status::invalid_argument("expire_in: too long"))?;
        let request = GetExportDownloadUrlRequest {
            id: id.into(),
            expire_in,
        };
        Ok(self
            .raw()
            .get_export_download_url(request)
            .await?
            .into_inner())
    }

    /// `WatchExport`: the current state first, then one item per change; the stream ends
    /// after a terminal status.
    pub async fn watch(
        &self,
        id: impl Into<String>,
    ) -> Result<impl Stream<Item = Result<Export, Status>> + Send + Unpin + 'static, Status> {
        let request = WatchExportRequest { id: id.into() };
        Ok(self.raw().watch_export(request).await?.into_inner())
    }

    /// Watches an export until it ends and returns its last state.
    ///
    /// If the watch stream ends before a terminal status, the export is fetched once more and
    /// returned as it is; check [`is_terminal`] when that matters.
    pub async fn wait(&self, id: impl Into<String>) -> Result<Export, Status> {
        let id = id.into();
        let mut stream = self.watch(id.clone()).await?;
        let mut last = None;
        while let Some(export) = stream.next().await {
            last = Some(export?);
        }
        match last {
            Some(export) if is_terminal(export.status()) => Ok(export),
            _ => self.get(id).await,
        }
    }

    /// `DownloadExport`: opens the stream and reads its first message, the file metadata.
    ///
    /// `read_offset` is the first byte wanted, `read_limit` the most bytes wanted (0: to the
    /// end). A first message that is not metadata is an `INTERNAL` error; so is a metadata
    /// message later in [`Download::chunks`].
    pub async fn download(
        &self,
        id: impl Into<String>,
        read_offset: i64,
        read_limit: i64,
    ) -> Result<Download, Status> {
        let request = DownloadExportRequest {
            id: id.into(),
            read_offset,
            read_limit,
        };
        let response = self.raw().download_export(request).await?;
        let content_disposition = response
            .metadata()
            .get("content-disposition")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut stream = response.into_inner();
        let metadata = download::first_metadata(stream.message().await?)?;
        Ok(Download {
            metadata,
            content_disposition,
            read_offset,
            read_limit,
            chunks: stream
                .map(|message| message.and_then(download::data_chunk))
                .boxed(),
        })
    }

    /// Downloads the whole file into `writer`, verifying its size and SHA-256.
    ///
    /// A cut connection or an UNAVAILABLE server is retried as the client's [`RetryPolicy`]
    /// says, from the byte reached. `progress(bytes_so_far, total_bytes)` is called after each
    /// chunk. On error the writer may hold a partial file: to resume across calls and rename
    /// into place only when verified, use [`ExportClient::download_file`].
    pub async fn download_to<W>(
        &self,
        id: impl Into<String>,
        writer: &mut W,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ExportFileMetadata, ClientError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let id = id.into();
        let mut receiver = receive::Receiver::new(self, &id);
        let download = receiver.open(0).await?;
        let metadata = download.metadata.clone();
        let mut hasher = sha2::Sha256::default();
        receiver
            .receive(download, 0, writer, &mut hasher, &mut progress)
            .await?;
        download::verify(hasher, &metadata, None)?;
        Ok(metadata)
    }

    /// Downloads the whole file into `output` (a file, or an existing directory to save under
    /// the export's file name), resuming an earlier download that stopped half-way.
    ///
    /// The bytes go to a partial file beside the target ([`partial_path`]), renamed over the
    /// target once size and SHA-256 check out; until then the target is untouched. A partial
    /// file from an earlier call (or a target shorter than the export) is taken as the start
    /// of the file and the download goes on from its end; if the whole then does not verify,
    /// it starts over from byte 0 once, and only then fails
    /// ([`ClientError::ChecksumMismatch`] with `restarted_after`). A target that already is
    /// the whole export is verified and left alone ([`Saved::AlreadyComplete`]). A target
    /// that is not a regular file (`/dev/null`, a FIFO) is written into directly.
    ///
    /// Cut connections are retried as for [`ExportClient::download_to`]; when the retries run
    /// out, the partial file stays for the next call. `progress(bytes_so_far, total_bytes)`
    /// counts from the start of the file.
    pub async fn download_file(
        &self,
        id: impl Into<String>,
        output: impl AsRef<Path>,
        progress: impl FnMut(u64, u64),
    ) -> Result<SavedFile, ClientError> {
        save::download_file(self, &id.into(), output.as_ref(), progress).await
    }
}

/// The endpoint for `addr`, with TLS for `https://`.
fn endpoint(addr: &str, tls: ClientTls) -> Result<Endpoint, ClientError> {
    let (uri, https) = endpoint_uri(addr)?;
    let endpoint = Endpoint::from_shared(uri)?;
    if https {
        Ok(endpoint.tls_config(tls.into_config()?)?)
    } else if tls.is_default() {
        Ok(endpoint)
    } else {
        Err(ClientError::InvalidAddress {
            addr: addr.to_owned(),
            reason: "TLS settings (CA, client certificate, server name) need an https:// address",
        })
    }
}

/// The endpoint URI for `addr` and whether it is `https://`: `http://` is added to a bare
/// `host:port`.
fn endpoint_uri(addr: &str) -> Result<(String, bool), ClientError> {
    match addr.split_once("://") {
        None => Ok((format!("http://{addr}"), false)),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => Ok((addr.to_owned(), false)),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => Ok((addr.to_owned(), true)),
        Some(_) => Err(ClientError::InvalidAddress {
            addr: addr.to_owned(),
            reason: "the scheme must be http:// or https://",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_uris() {
        assert_eq!(
            endpoint_uri("127.0.0.1:50051").unwrap(),
            ("http://127.0.0.1:50051".to_owned(), false)
        );
        assert_eq!(
            endpoint_uri("http://h:1").unwrap(),
            ("http://h:1".into(), false)
        );
        assert_eq!(
            endpoint_uri("HTTP://h:1").unwrap(),
            ("HTTP://h:1".into(), false)
        );
        assert_eq!(
            endpoint_uri("https://h:1").unwrap(),
            ("https://h:1".into(), true)
        );
        assert!(matches!(
            endpoint_uri("ftp://h:1"),
            Err(ClientError::InvalidAddress { .. })
        ));
    }

    #[test]
    fn tls_settings_need_https() {
        let tls = ClientTls {
            domain: Some("localhost".into()),
            ..ClientTls::default()
        };
        for plaintext in ["http://127.0.0.1:1", "127.0.0.1:1"] {
            assert!(matches!(
                endpoint(plaintext, tls.clone()),
                Err(ClientError::InvalidAddress { .. })
            ));
        }
        assert!(endpoint("https://127.0.0.1:1", tls).is_ok());
        assert!(endpoint("https://127.0.0.1:1", ClientTls::default()).is_ok());
    }

    #[test]
    fn terminal_statuses() {
        use ExportStatus::*;
        for status in [Completed, Failed, Cancelled, Expired] {
            assert!(is_terminal(status), "{status:?}");
        }
        for status in [Unspecified, Pending, Processing] {
            assert!(!is_terminal(status), "{status:?}");
        }
    }

    #[tokio::test]
    async fn from_channel_checks_the_token() {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        assert!(ExportClient::from_channel(channel.clone(), "ok-token").is_ok());
        let err = ExportClient::from_channel(channel, "bad token").unwrap_err();
        assert!(matches!(err, ClientError::InvalidToken(_)));
    }

    #[tokio::test]
    async fn connect_rejects_a_bad_token_before_dialing() {
        // Port 1 is closed: an InvalidToken here proves the token is checked first.
        let err = ExportClient::connect("http://127.0.0.1:1", "")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidToken(_)));
    }

    #[tokio::test]
    async fn connect_reports_an_unreachable_server_as_transport_error() {
        let err = ExportClient::connect("127.0.0.1:1", "token")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    }

    #[tokio::test]
    async fn rpc_errors_surface_as_status() {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let client = ExportClient::from_channel(channel, "token").unwrap();
        let status = client
            .get("00000000-0000-0000-0000-000000000000")
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
}
