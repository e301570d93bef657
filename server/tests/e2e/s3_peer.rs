//! An S3 API inside the test process: `s3s` (the protocol: routing, XML, SigV4 signatures
//! checked on every request, presigned URLs included) over `s3s-fs` (objects kept in a
//! folder), served on 127.0.0.1:0. Nothing to install: the test binary is the server.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use opendal::Operator;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The one key pair the peer accepts.
pub const ACCESS_KEY: &str = "exportd-test";
pub const SECRET_KEY: &str = "exportd-test-secret";
pub const REGION: &str = "us-east-1";

/// A running S3 server with one bucket; stops when dropped.
pub struct S3Peer {
    pub endpoint: String,
    pub bucket: String,
    root: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for S3Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Peer {
    /// Starts the server and makes `bucket` (a folder of the store's root, as s3s-fs keeps
    /// buckets).
    pub async fn start(bucket: &str) -> S3Peer {
        let root = tempfile::tempdir().expect("a folder for the S3 peer");
        std::fs::create_dir(root.path().join(bucket)).expect("the bucket");
        let store = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs on the folder");
        let mut builder = S3ServiceBuilder::new(store);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    // A connection the client drops mid-request is its business, not a failure.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3Peer {
            endpoint: format!("http://{addr}"),
            bucket: bucket.to_owned(),
            root,
            task,
        }
    }

    /// The bucket through OpenDAL, as `exportd serve --storage s3://…` builds it.
    pub fn operator(&self) -> Operator {
        self.operator_with_secret(SECRET_KEY)
    }

    /// The same with another secret: every request of it fails the signature check.
    pub fn operator_with_secret(&self, secret: &str) -> Operator {
        Operator::via_iter(
            "s3",
            [
                ("bucket", self.bucket.as_str()),
                ("endpoint", self.endpoint.as_str()),
                ("region", REGION),
                ("access_key_id", ACCESS_KEY),
                ("secret_access_key", secret),
                ("disable_config_load", "true"),
                ("disable_ec2_metadata", "true"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("an S3 operator")
    }

    /// Every object of the bucket, by key, read from the store's folder (not through the API
    /// under test).
    pub fn objects(&self) -> Vec<String> {
        let bucket = self.root.path().join(&self.bucket);
        let mut keys = Vec::new();
        collect_files(&bucket, &bucket, &mut keys);
        keys.sort();
        keys
    }

    /// Multipart uploads begun and neither completed nor aborted (s3s-fs keeps one
    /// `.upload-<id>.json` per upload in its root until then).
    pub fn unfinished_uploads(&self) -> usize {
        std::fs::read_dir(self.root.path())
            .expect("the store's folder")
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(".upload-") && name.ends_with(".json")
            })
            .count()
    }
}

fn collect_files(base: &Path, dir: &Path, into: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir)
        .expect("a folder of the bucket")
        .flatten()
    {
        let path: PathBuf = entry.path();
        if path.is_dir() {
            collect_files(base, &path, into);
        } else if let Ok(key) = path.strip_prefix(base) {
            into.push(key.to_string_lossy().into_owned());
        }
    }
}
