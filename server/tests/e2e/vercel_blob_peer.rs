//! The Vercel Blob API inside the test process, for OpenDAL's `vercel_blob` service: HTTPS on
//! 127.0.0.1:0 with a certificate for `blob.vercel-storage.com` (the API) and the store's
//! public host (where blobs are read), signed by a CA of the test; blobs kept in memory.
//!
//! It answers the calls OpenDAL 0.59.5 makes (read in `opendal-service-vercel-blob`'s
//! `core.rs`), and checks what OpenDAL must send, answering anything else with an error status
//! (recorded in [`VercelBlobPeer::refusals`]) so that the test fails:
//!
//! - every call to the API host carries `authorization: Bearer <token>` (403 `forbidden`
//!   otherwise, as Vercel answers a bad token); the public host is never sent the token;
//! - `PUT /{pathname}` (a file written in one go): `x-add-random-suffix: 0` (else Vercel would
//!   store it under another name), a `content-length` equal to the body's;
//! - `POST /mpu/{pathname}` with `x-mpu-action: create` (`x-add-random-suffix: 0`), `upload`
//!   (`x-mpu-key` and `x-mpu-upload-id` of an upload created for that pathname,
//!   `x-mpu-part-number` in 1..=10000, a non-empty body of its `content-length`) and `complete`
//!   (the same key and id; a JSON list of `{partNumber, etag}` that is exactly the parts
//!   uploaded, in order, with their ETags, every part but the last at least 5 MiB);
//! - `GET /?prefix=…&limit=…&cursor=…` (limit 1..=1000, a cursor the peer handed out) returns
//!   `{blobs, hasMore, cursor}`, pathnames in byte order; `GET /?url=…` is the metadata of one
//!   blob (OpenDAL's `stat`);
//! - `POST /delete` with `{"urls": [...]}`, each a blob URL of this store;
//! - `GET` of a blob's `url` on the public host, honoring `Range` (`bytes=a-b`, `a-`, `-n`:
//!   206 with `content-range`, 416 when unsatisfiable).
//!
//! Vercel has no call that aborts a multipart upload, and OpenDAL's writer `abort` for
//! `vercel_blob` sends nothing (it returns an `Unsupported` error): an aborted upload stays
//! unfinished ([`VercelBlobPeer::unfinished_uploads`]) and no blob exists for it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opendal::{HttpTransporter, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The read-write token the peer accepts.
pub const TOKEN: &str = "vercel_blob_rw_exportdpeer_0123456789abcdefABCDEF";
/// Where OpenDAL sends every API call (fixed in OpenDAL).
pub const API_HOST: &str = "blob.vercel-storage.com";
/// The public host of the peer's store, in every blob's `url` (Vercel's shape:
/// `<store id>.public.blob.vercel-storage.com`).
pub const PUBLIC_HOST: &str = "exportdpeer.public.blob.vercel-storage.com";
/// Vercel's smallest part of a multipart upload (but the last).
const MIN_PART: usize = 5 << 20;
const MAX_PARTS: usize = 10_000;
const MAX_LIST_LIMIT: usize = 1000;
/// A request body larger than this is refused (parts are 8 MiB here).
const MAX_BODY: usize = 64 << 20;

/// Characters a pathname keeps in a URL (OpenDAL's `percent_encode_path` set).
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// A running Vercel Blob API; stops when dropped.
pub struct VercelBlobPeer {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for VercelBlobPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct State {
    blobs: BTreeMap<String, Blob>,
    /// Multipart uploads created and not completed, by upload id.
    uploads: BTreeMap<String, Upload>,
    uploads_created: usize,
    /// Completed multipart uploads: pathname and number of parts.
    completed: Vec<(String, usize)>,
    refusals: Vec<String>,
    ranged_reads: usize,
    list_calls: usize,
    /// Uploads of this part number fail with 500 (a fault on purpose).
    failing_part: Option<usize>,
}

struct Blob {
    data: Bytes,
    content_type: Option<String>,
    uploaded_at: DateTime<Utc>,
}

struct Upload {
    pathname: String,
    content_type: Option<String>,
    /// By part number: ETag and bytes.
    parts: BTreeMap<usize, (String, Bytes)>,
}

/// An answer other than success: the status, Vercel's error code, and why.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

fn bad_request(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "bad_request", message)
}

type Answer = Result<Response<Body>, Refusal>;

impl VercelBlobPeer {
    pub async fn start() -> VercelBlobPeer {
        let (ca_pem, tls) = certificates();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        let state = Arc::new(Mutex::new(State::default()));
        let served = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), served.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    // A connection the client drops mid-request is its business, not a failure.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        VercelBlobPeer {
            addr,
            ca_pem,
            state,
            task,
        }
    }

    /// The read-write token the peer accepts.
    pub fn token(&self) -> &'static str {
        TOKEN
    }

    /// The store through OpenDAL's `vercel_blob` service, built as `--storage vercel-blob://`
    /// builds it ([`contact_export_server::storage::vercel_blob_operator`]), with an HTTP
    /// transport that reaches the peer.
    pub fn operator(&self) -> Operator {
        self.operator_with("/", TOKEN)
    }

    /// The same with another token: the peer refuses every API call of it.
    pub fn operator_with_token(&self, token: &str) -> Operator {
        self.operator_with("/", token)
    }

    /// An operator under `root` (`vercel-blob:///prefix`) with `token`.
    pub fn operator_with(&self, root: &str, token: &str) -> Operator {
        let op = contact_export_server::storage::vercel_blob_operator(root, token)
            .expect("a vercel_blob operator");
        let transport = HttpTransporter::new(ReqwestTransport::new(self.client()));
        let context = op.base_context().with_http_transport(transport);
        op.with_context(context)
    }

    /// A client for which Vercel's hosts are the peer, and the test CA the only trusted root.
    pub fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("the test CA");
        reqwest::Client::builder()
            .resolve(API_HOST, self.addr)
            .resolve(PUBLIC_HOST, self.addr)
            .tls_certs_only([ca])
            .https_only(true)
            .no_proxy()
            .build()
            .expect("a reqwest client")
    }

    /// Every blob, pathname → size.
    pub fn objects(&self) -> BTreeMap<String, u64> {
        let state = self.state.lock().unwrap();
        state
            .blobs
            .iter()
            .map(|(pathname, blob)| (pathname.clone(), blob.data.len() as u64))
            .collect()
    }

    /// The pathnames of multipart uploads created and not completed (Vercel has no abort).
    pub fn unfinished_uploads(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.uploads.values().map(|u| u.pathname.clone()).collect()
    }

    /// Completed multipart uploads: pathname and number of parts, in order of completion.
    pub fn multipart_uploads(&self) -> Vec<(String, usize)> {
        self.state.lock().unwrap().completed.clone()
    }

    /// Multipart uploads created, completed or not.
    pub fn multipart_uploads_created(&self) -> usize {
        self.state.lock().unwrap().uploads_created
    }

    /// Every call answered with an error (but a read of a missing blob, and faults asked
    /// for): `"<status> <method> <host><path>: <why>"`.
    pub fn refusals(&self) -> Vec<String> {
        self.state.lock().unwrap().refusals.clone()
    }

    /// Reads of a blob that carried a `Range`.
    pub fn ranged_reads(&self) -> usize {
        self.state.lock().unwrap().ranged_reads
    }

    /// List calls (OpenDAL lists a pathname to find its URL before each read, stat and
    /// delete).
    pub fn list_calls(&self) -> usize {
        self.state.lock().unwrap().list_calls
    }

    /// From now on, every upload of part `number` of a multipart upload fails with 500.
    pub fn fail_part(&self, number: usize) {
        self.state.lock().unwrap().failing_part = Some(number);
    }
}

/// A CA, and the server's TLS settings with a certificate it signed for both hosts.
fn certificates() -> (String, rustls::ServerConfig) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "Vercel Blob peer test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![API_HOST.to_owned(), PUBLIC_HOST.to_owned()])
        .expect("the peer's names");
    params
        .distinguished_name
        .push(DnType::CommonName, "Vercel Blob peer");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .expect("the peer's certificate");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), tls)
}

/// One request, read whole.
struct Call {
    method: Method,
    host: String,
    /// The path, percent-decoded.
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

impl Call {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn required_header(&self, name: &str, why: &str) -> Result<&str, Refusal> {
        self.header(name)
            .ok_or_else(|| bad_request(format!("no {name} header ({why})")))
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The declared `content-length` matches the body.
    fn check_length(&self) -> Result<(), Refusal> {
        let declared = self.required_header("content-length", "the size of the body")?;
        match declared.parse::<usize>() {
            Ok(n) if n == self.body.len() => Ok(()),
            _ => Err(bad_request(format!(
                "content-length {declared} for a body of {} bytes",
                self.body.len()
            ))),
        }
    }
}

async fn handle(state: &Mutex<State>, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let target = format!(
        "{} {}{}",
        parts.method,
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("?"),
        parts.uri
    );
    let answer = match axum::body::to_bytes(Body::new(body), MAX_BODY).await {
        Ok(body) => match read_call(parts, body) {
            Ok(call) => route(&mut state.lock().unwrap(), &call),
            Err(refusal) => Err(refusal),
        },
        Err(e) => Err(bad_request(format!("reading the body: {e}"))),
    };
    match answer {
        Ok(response) => response,
        Err(refusal) => {
            // A read of a blob that is not there is an answer, not a wrong call; a fault asked
            // for is no wrong call either.
            let expected = refusal.code == "not_found" || refusal.code == "fault";
            if !expected {
                state.lock().unwrap().refusals.push(format!(
                    "{} {target}: {}",
                    refusal.status.as_u16(),
                    refusal.message
                ));
            }
            let body = json!({"error": {"code": refusal.code, "message": refusal.message}});
            json_response(refusal.status, &body)
        }
    }
}

fn read_call(parts: axum::http::request::Parts, body: Bytes) -> Result<Call, Refusal> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| bad_request("no host header"))?;
    // No port: OpenDAL's URLs are https:// on the default port (reqwest's resolve maps it).
    let host = host.to_owned();
    let path = percent_decode_str(parts.uri.path())
        .decode_utf8()
        .map_err(|_| bad_request("a path that is not UTF-8"))?
        .into_owned();
    let query = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    Ok(Call {
        method: parts.method,
        host,
        path,
        query,
        headers: parts.headers,
        body,
    })
}

fn route(state: &mut State, call: &Call) -> Answer {
    match call.host.as_str() {
        API_HOST => {
            authorize(call)?;
            let path = call.path.as_str();
            match (&call.method, path) {
                (&Method::GET, "/") if call.query("url").is_some() => head(state, call),
                (&Method::GET, "/") => list(state, call),
                (&Method::POST, "/delete") => delete(state, call),
                (&Method::PUT, _) if call.query("fromUrl").is_some() => Err(refuse(
                    StatusCode::NOT_IMPLEMENTED,
                    "not_allowed",
                    "copy is not served by this peer",
                )),
                (&Method::PUT, _) => put(state, call, pathname(path, "/")?),
                (&Method::POST, _) if path.starts_with("/mpu/") => {
                    multipart(state, call, pathname(path, "/mpu/")?)
                }
                _ => Err(bad_request("not a call of the Vercel Blob API")),
            }
        }
        PUBLIC_HOST => {
            if call.headers.contains_key(header::AUTHORIZATION) {
                return Err(bad_request(
                    "a blob's public URL was sent an authorization header (the token leaks \
                     to the public host)",
                ));
            }
            match call.method {
                Method::GET => download(state, call),
                _ => Err(refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "not_allowed",
                    "the public host only serves GET",
                )),
            }
        }
        other => Err(refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "bad_request",
            format!("no such host here: {other}"),
        )),
    }
}

fn authorize(call: &Call) -> Result<(), Refusal> {
    match call.header("authorization") {
        Some(value) if value == format!("Bearer {TOKEN}") => Ok(()),
        Some(_) => Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Access denied, please provide a valid token for this resource.",
        )),
        None => Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "no authorization header (Bearer token)",
        )),
    }
}

/// The pathname of a path (`/a/b.csv` → `a/b.csv`).
fn pathname<'a>(path: &'a str, prefix: &str) -> Result<&'a str, Refusal> {
    match path.strip_prefix(prefix) {
        Some(name) if !name.is_empty() && !name.ends_with('/') => Ok(name),
        _ => Err(bad_request(format!("no pathname in {path}"))),
    }
}

fn blob_url(pathname: &str) -> String {
    format!(
        "https://{PUBLIC_HOST}/{}",
        utf8_percent_encode(pathname, PATH)
    )
}

/// Vercel's description of a blob (list, head, put).
fn describe(pathname: &str, blob: &Blob) -> Value {
    let url = blob_url(pathname);
    let name = pathname.rsplit('/').next().unwrap_or(pathname);
    json!({
        "url": url,
        "downloadUrl": format!("{url}?download=1"),
        "pathname": pathname,
        "size": blob.data.len(),
        "uploadedAt": blob.uploaded_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "contentType": blob.content_type,
        "contentDisposition": format!("inline; filename=\"{name}\""),
        "cacheControl": "public, max-age=2592000",
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a response")
}

fn ok(body: &Value) -> Answer {
    Ok(json_response(StatusCode::OK, body))
}

fn check_no_random_suffix(call: &Call) -> Result<(), Refusal> {
    match call.header("x-add-random-suffix") {
        Some("0") => Ok(()),
        other => Err(bad_request(format!(
            "x-add-random-suffix is {other:?}, not \"0\": Vercel would store the blob under a \
             random name"
        ))),
    }
}

fn list(state: &mut State, call: &Call) -> Answer {
    state.list_calls += 1;
    for (key, _) in &call.query {
        if !matches!(key.as_str(), "prefix" | "limit" | "cursor") {
            return Err(bad_request(format!("unknown list option {key}")));
        }
    }
    let prefix = call.query("prefix").unwrap_or("");
    let limit = match call.query("limit") {
        None => MAX_LIST_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
            _ => return Err(bad_request(format!("limit {text:?} is not in 1..=1000"))),
        },
    };
    let after = match call.query("cursor") {
        None => None,
        Some(cursor) => Some(
            cursor
                .strip_prefix("peer1_")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| bad_request(format!("cursor {cursor:?} was not handed out")))?,
        ),
    };
    let mut matching = state
        .blobs
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .filter(|(name, _)| after.as_deref().is_none_or(|after| name.as_str() > after));
    let page: Vec<(&String, &Blob)> = matching.by_ref().take(limit).collect();
    let has_more = matching.next().is_some();
    let blobs: Vec<Value> = page
        .iter()
        .map(|(name, blob)| describe(name, blob))
        .collect();
    let mut body = json!({"blobs": blobs, "hasMore": has_more});
    if has_more && let Some((last, _)) = page.last() {
        body["cursor"] = json!(format!("peer1_{}", hex::encode(last.as_bytes())));
    }
    ok(&body)
}

/// The pathname of one of this store's blob URLs.
fn pathname_of_url(url: &str) -> Result<String, Refusal> {
    let parsed =
        url::Url::parse(url).map_err(|_| bad_request(format!("{url:?} is not a blob URL")))?;
    if parsed.scheme() != "https" || parsed.host_str() != Some(PUBLIC_HOST) {
        return Err(bad_request(format!("{url:?} is no blob URL of this store")));
    }
    let path = percent_decode_str(parsed.path())
        .decode_utf8()
        .map_err(|_| bad_request("a blob URL that is not UTF-8"))?;
    Ok(pathname(&path, "/")?.to_owned())
}

fn head(state: &State, call: &Call) -> Answer {
    let url = call.query("url").unwrap_or_default();
    let name = pathname_of_url(url)?;
    match state.blobs.get(&name) {
        Some(blob) => ok(&describe(&name, blob)),
        None => Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "The requested blob does not exist",
        )),
    }
}

fn put(state: &mut State, call: &Call, name: &str) -> Answer {
    check_no_random_suffix(call)?;
    call.check_length()?;
    let blob = Blob {
        data: call.body.clone(),
        content_type: call.header("x-content-type").map(str::to_owned),
        uploaded_at: Utc::now(),
    };
    let body = describe(name, &blob);
    state.blobs.insert(name.to_owned(), blob);
    ok(&body)
}

fn delete(state: &mut State, call: &Call) -> Answer {
    if call.header("content-type") != Some("application/json") {
        return Err(bad_request(
            "a delete without content-type: application/json",
        ));
    }
    let request: Value = serde_json::from_slice(&call.body)
        .map_err(|e| bad_request(format!("a delete body that is not JSON: {e}")))?;
    let urls = request["urls"]
        .as_array()
        .filter(|urls| !urls.is_empty())
        .ok_or_else(|| bad_request("a delete without urls"))?;
    let mut names = Vec::new();
    for url in urls {
        let url = url
            .as_str()
            .ok_or_else(|| bad_request("a url that is no string"))?;
        names.push(pathname_of_url(url)?);
    }
    // Deleting what is not there is no error, as on Vercel.
    for name in names {
        state.blobs.remove(&name);
    }
    ok(&json!({}))
}

fn multipart(state: &mut State, call: &Call, name: &str) -> Answer {
    let action = call.required_header("x-mpu-action", "create, upload or complete")?;
    match action {
        "create" => {
            check_no_random_suffix(call)?;
            if !call.body.is_empty() {
                return Err(bad_request("a create with a body"));
            }
            state.uploads_created += 1;
            let id = format!("peer-mpu-{}", state.uploads_created);
            state.uploads.insert(
                id.clone(),
                Upload {
                    pathname: name.to_owned(),
                    content_type: call.header("x-content-type").map(str::to_owned),
                    parts: BTreeMap::new(),
                },
            );
            ok(&json!({"uploadId": id, "key": name}))
        }
        "upload" => {
            let id = upload_of(state, call, name)?;
            let number = call.required_header("x-mpu-part-number", "which part")?;
            let number = match number.parse::<usize>() {
                Ok(n) if (1..=MAX_PARTS).contains(&n) => n,
                _ => {
                    return Err(bad_request(format!(
                        "x-mpu-part-number {number:?} is not in 1..=10000"
                    )));
                }
            };
            call.check_length()?;
            if call.body.is_empty() {
                return Err(bad_request("an empty part"));
            }
            if state.failing_part == Some(number) {
                return Err(refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "fault",
                    format!("part {number} fails on purpose"),
                ));
            }
            let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&call.body))[..32]);
            let upload = state.uploads.get_mut(&id).expect("checked");
            upload
                .parts
                .insert(number, (etag.clone(), call.body.clone()));
            ok(&json!({"etag": etag}))
        }
        "complete" => {
            let id = upload_of(state, call, name)?;
            if call.header("content-type") != Some("application/json") {
                return Err(bad_request(
                    "a complete without content-type: application/json",
                ));
            }
            let listed: Vec<Value> = serde_json::from_slice(&call.body)
                .map_err(|e| bad_request(format!("a complete body that is no JSON list: {e}")))?;
            let listed: Vec<(usize, String)> = listed
                .iter()
                .map(|part| {
                    let number = part["partNumber"].as_u64().map(|n| n as usize);
                    let etag = part["etag"].as_str().map(str::to_owned);
                    number.zip(etag).ok_or_else(|| {
                        bad_request(format!("a part that is not {{partNumber, etag}}: {part}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            let upload = &state.uploads[&id];
            let uploaded: Vec<(usize, String)> = upload
                .parts
                .iter()
                .map(|(n, (etag, _))| (*n, etag.clone()))
                .collect();
            if listed.is_empty() || listed != uploaded {
                return Err(bad_request(format!(
                    "complete lists the parts {listed:?}, but {uploaded:?} were uploaded"
                )));
            }
            if listed.iter().map(|(n, _)| *n).ne(1..=listed.len()) {
                return Err(bad_request(format!(
                    "parts {:?} are not numbered 1..={}",
                    listed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    listed.len()
                )));
            }
            let sizes: Vec<usize> = upload.parts.values().map(|(_, b)| b.len()).collect();
            if sizes[..sizes.len() - 1].iter().any(|&size| size < MIN_PART) {
                return Err(bad_request(format!(
                    "parts of {sizes:?} bytes: every part but the last must be at least 5 MiB"
                )));
            }
            let upload = state.uploads.remove(&id).expect("checked");
            let mut data = Vec::with_capacity(sizes.iter().sum());
            for (_, bytes) in upload.parts.values() {
                data.extend_from_slice(bytes);
            }
            let blob = Blob {
                data: data.into(),
                content_type: upload.content_type,
                uploaded_at: Utc::now(),
            };
            let body = describe(name, &blob);
            state.blobs.insert(name.to_owned(), blob);
            state.completed.push((name.to_owned(), listed.len()));
            ok(&body)
        }
        other => Err(bad_request(format!("x-mpu-action {other:?}"))),
    }
}

/// The id of the upload that `x-mpu-key` and `x-mpu-upload-id` name, created for `name`.
fn upload_of(state: &State, call: &Call, name: &str) -> Result<String, Refusal> {
    let key = call.required_header("x-mpu-key", "the key that create returned")?;
    let id = call.required_header("x-mpu-upload-id", "the id that create returned")?;
    let upload = state
        .uploads
        .get(id)
        .ok_or_else(|| bad_request(format!("no unfinished upload {id:?}")))?;
    if upload.pathname != name || key != name {
        return Err(bad_request(format!(
            "upload {id:?} is of {:?}, not of {name:?} (x-mpu-key {key:?})",
            upload.pathname
        )));
    }
    Ok(id.to_owned())
}

fn download(state: &mut State, call: &Call) -> Answer {
    let name = pathname(&call.path, "/")?;
    let Some(blob) = state.blobs.get(name) else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "The page could not be found",
        ));
    };
    let len = blob.data.len();
    let mut response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::LAST_MODIFIED,
            blob.uploaded_at
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        )
        .header(
            header::ETAG,
            format!("\"{}\"", &hex::encode(Sha256::digest(&blob.data))[..32]),
        );
    if let Some(content_type) = &blob.content_type {
        response = response.header(header::CONTENT_TYPE, content_type);
    }
    let Some(range) = call.header("range") else {
        let data = blob.data.clone();
        return Ok(response
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from(data))
            .expect("a response"));
    };
    let (start, end) = byte_range(range, len)?;
    let data = blob.data.slice(start..end);
    state.ranged_reads += 1;
    Ok(response
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_LENGTH, end - start)
        .header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        )
        .body(Body::from(data))
        .expect("a response"))
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` of a blob of `len` bytes, as `start..end`.
fn byte_range(range: &str, len: usize) -> Result<(usize, usize), Refusal> {
    let malformed = || bad_request(format!("range {range:?} is not one byte range"));
    let spec = range.strip_prefix("bytes=").ok_or_else(malformed)?;
    let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
    let number = |text: &str| text.parse::<usize>().map_err(|_| malformed());
    let (start, end) = match (first, last) {
        ("", suffix) => {
            let n = number(suffix)?;
            (len.saturating_sub(n), len)
        }
        (first, "") => (number(first)?, len),
        (first, last) => {
            let (start, last) = (number(first)?, number(last)?);
            if last < start {
                return Err(malformed());
            }
            (start, (last + 1).min(len))
        }
    };
    if start >= end {
        return Err(refuse(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "bad_request",
            format!("range {range:?} of a blob of {len} bytes"),
        ));
    }
    Ok((start, end))
}
