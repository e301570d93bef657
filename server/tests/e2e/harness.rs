//! The test harness: one private PostgreSQL per test binary (or `TEST_DATABASE_URL`), a
//! migrated template database, a fresh clone per test, and the real service on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use contact_export_client::{ClientTls, ExportClient};
use contact_export_devkit::fixture::CRM_SCHEMA;
use contact_export_devkit::postgres::Cluster;
use contact_export_server::app::{Application, Settings};
use contact_export_server::db;
use contact_export_server::janitor::JanitorConfig;
use contact_export_server::mail::Mailer;
use contact_export_server::pipeline::{FaultHooks, RetryPolicy};
use contact_export_server::tls::TlsSettings;
use contact_export_server::webhook::WebhookConfig;
use contact_export_server::worker::WorkerConfig;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use opendal::Operator;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::fixture::Workspace;

const TEMPLATE: &str = "exportd_test_template";

/// Where test databases are made: the admin URL and a function from a database name to its URL.
struct Server {
    /// URL of the `postgres` database, for CREATE DATABASE.
    admin_url: String,
    /// URL with `{db}` where the database name goes.
    url_pattern: String,
    /// Keeps a private cluster alive for the whole test binary (it dies with the process).
    _cluster: Option<Cluster>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // Async set-up on a runtime of its own: the caller may be inside another runtime.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(start_server())
        })
        .join()
        .expect("starting the test database server")
    })
}

async fn start_server() -> Server {
    let (cluster, admin_url, url_pattern) = match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => {
            // Each test gets its own database: swap the URL's database name for `{db}`.
            let (path, query) = match url.split_once('?') {
                Some((path, query)) => (path.to_owned(), format!("?{query}")),
                None => (url.clone(), String::new()),
            };
            let (base, _) = path
                .rsplit_once('/')
                .expect("TEST_DATABASE_URL names a database");
            (None, url.clone(), format!("{base}/{{db}}{query}"))
        }
        Err(_) => {
            remove_stale_clusters();
            let dir = std::env::temp_dir().join(format!("{CLUSTER_PREFIX}{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("test cluster folder");
            let cluster = tokio::task::spawn_blocking(move || Cluster::start(&dir))
                .await
                .unwrap()
                .expect("starting the test PostgreSQL");
            let admin = cluster.url("postgres");
            let pattern = cluster
                .url("dbplaceholder")
                .replace("dbplaceholder", "{db}");
            (Some(cluster), admin, pattern)
        }
    };
    create_database(&admin_url, &url_pattern, TEMPLATE).await;
    Server {
        admin_url,
        url_pattern,
        _cluster: cluster,
    }
}

/// Creates database `name` (dropping one left by an earlier run) with the CRM fixture
/// schema and our migrations; returns its URL.
pub async fn create_database(admin_url: &str, url_pattern: &str, name: &str) -> String {
    let url = url_pattern.replace("{db}", name);
    let mut admin = db::connect(admin_url).await.expect("admin connection");
    // Two statements: neither may run inside the implicit transaction of a batch.
    for statement in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&statement)
            .await
            .expect("creating the database");
    }
    {
        let mut conn = db::connect(&url).await.expect("connecting to it");
        conn.batch_execute(CRM_SCHEMA)
            .await
            .expect("CRM fixture schema");
    }
    db::migrate(&url).await.expect("migrations");
    url
}

const CLUSTER_PREFIX: &str = "exportd-test-";

/// Earlier test runs' clusters died with their process (PDEATHSIG) but left their folders.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(CLUSTER_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let running = unsafe { libc::kill(pid, 0) } == 0;
        if !running {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A database of one test, cloned from the migrated template.
pub struct TestDb {
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let server = server();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = db::connect(&server.admin_url)
            .await
            .expect("admin connection");
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY"
            ))
            .await
            .expect("cloning the template");
        TestDb {
            url: server.url_pattern.replace("{db}", &name),
        }
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        db::connect(&self.url).await.expect("test connection")
    }
}

/// How a test wants its service.
pub struct AppOptions {
    pub storage: Operator,
    pub mailer: Option<Mailer>,
    pub batch_size: usize,
    pub workers: usize,
    pub retry: RetryPolicy,
    pub lease: Duration,
    /// `--max-queued-exports`.
    pub max_queued_exports: u32,
    /// `None`: plaintext.
    pub tls: Option<TestTls>,
    /// Serve `/metrics` on 127.0.0.1:0 (see [`TestApp::metrics_addr`]).
    pub metrics: bool,
    /// `--max-running-per-workspace`.
    pub max_running_per_workspace: u32,
    /// Faults on purpose (batches that take longer…).
    pub hooks: FaultHooks,
    /// Retention and the janitor's pace.
    pub janitor: JanitorConfig,
    /// Webhooks: off unless a test allows its receiver.
    pub webhooks: WebhookConfig,
}

/// TLS for the service, and what its test clients use to connect.
pub struct TestTls {
    pub server: TlsSettings,
    /// The settings of the workspace's client and of [`TestApp::client_with_token`].
    pub client: ClientTls,
}

/// Where and how a test client connects; a plain address means plaintext.
#[derive(Clone, Debug)]
pub struct Dial {
    pub url: String,
    pub tls: ClientTls,
}

impl From<SocketAddr> for Dial {
    fn from(addr: SocketAddr) -> Dial {
        Dial {
            url: format!("http://{addr}"),
            tls: ClientTls::default(),
        }
    }
}

impl Dial {
    pub async fn connect(&self, token: &str) -> ExportClient {
        ExportClient::connect_with(&self.url, token, self.tls.clone())
            .await
            .expect("client connects")
    }
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            storage: Operator::via_iter("memory", []).expect("memory storage"),
            mailer: None,
            batch_size: 7,
            workers: 2,
            retry: RetryPolicy {
                stream_retries: 2,
                max_failures: 6,
                max_claims: 100,
                backoff: Duration::from_millis(20),
            },
            lease: Duration::from_secs(30),
            max_queued_exports: 100,
            tls: None,
            metrics: false,
            max_running_per_workspace: 2,
            hooks: FaultHooks::default(),
            janitor: JanitorConfig::new(Duration::from_secs(7 * 24 * 3600)),
            webhooks: WebhookConfig::default(),
        }
    }
}

/// A running service and what a test needs around it.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The address as a URL (`https://` with TLS) and the client TLS settings.
    pub dial: Dial,
    /// The metrics endpoint, when [`AppOptions::metrics`] asked for one.
    pub metrics_addr: Option<SocketAddr>,
    pub db: TestDb,
    pub storage: Operator,
    /// A workspace with a user that has an email, and a client with its token.
    pub ws: Workspace,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(AppOptions::default()).await
    }

    pub async fn spawn_with(options: AppOptions) -> TestApp {
        let db = TestDb::new().await;
        TestApp::spawn_on(db, options).await
    }

    /// A service on an existing database (a second replica, or a restart).
    /// The service's settings for `options`, on no database yet (`database_url` is empty).
    pub fn settings(options: AppOptions) -> Settings {
        let mut worker = WorkerConfig::new(options.workers).with_lease(options.lease);
        worker.max_running_per_workspace = options.max_running_per_workspace;
        Settings {
            database_url: String::new(),
            storage: options.storage,
            mailer: options.mailer,
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: options.metrics.then(|| "127.0.0.1:0".parse().unwrap()),
            worker,
            batch_size: options.batch_size,
            retry: options.retry,
            tls: options.tls.map(|tls| tls.server),
            max_queued_exports: options.max_queued_exports,
            shutdown_timeout: Duration::from_secs(20),
            hooks: options.hooks,
            janitor: options.janitor,
            webhooks: options.webhooks,
        }
    }

    pub async fn spawn_on(db: TestDb, mut options: AppOptions) -> TestApp {
        let storage = options.storage.clone();
        let client_tls = options.tls.as_mut().map(|tls| tls.client.clone());
        let settings = Settings {
            database_url: db.url.clone(),
            ..TestApp::settings(options)
        };
        let app = Application::build(settings)
            .await
            .expect("building the app");
        let addr = app.local_addr();
        let dial = match client_tls {
            Some(tls) => Dial {
                url: format!("https://{addr}"),
                tls,
            },
            None => Dial::from(addr),
        };
        let metrics_addr = app.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("app ran");
        });
        let ws = Workspace::create(&db, dial.clone(), true).await;
        TestApp {
            addr,
            dial,
            metrics_addr,
            db,
            storage,
            ws,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// The key of the object that a COMPLETED export points at.
    pub async fn storage_key(&self, export_id: &str) -> String {
        #[derive(diesel::QueryableByName)]
        struct Key {
            #[diesel(sql_type = diesel::sql_types::Text)]
            storage_key: String,
        }
        let id: uuid::Uuid = export_id.parse().expect("export ids are UUIDs");
        let Key { storage_key } = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query("SELECT storage_key FROM exports WHERE id = $1")
                .bind::<diesel::sql_types::Uuid, _>(id),
            &mut self.db.conn().await,
        )
        .await
        .expect("a completed export's storage key");
        storage_key
    }

    /// A client with another token (or none valid at all).
    pub async fn client_with_token(&self, token: &str) -> ExportClient {
        self.dial.connect(token).await
    }

    /// Another service on this app's database: a second replica, as an operator runs them.
    pub async fn replica(&self, options: AppOptions) -> TestApp {
        let db = TestDb {
            url: self.db.url.clone(),
        };
        TestApp::spawn_on(db, options).await
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(mut self) -> TestDb {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .expect("app stops in time")
                .expect("app task");
        }
        TestDb {
            url: self.db.url.clone(),
        }
    }
}

/// Waits for a future, failing the test instead of hanging it.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Every object in `storage` that belongs to export `export_id` of `workspace_id` (whatever
/// attempt wrote it), and any unfinished `fs` file of it.
pub async fn objects_of(
    storage: &Operator,
    workspace_id: uuid::Uuid,
    export_id: uuid::Uuid,
) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in [
        format!("exports/{workspace_id}/"),
        contact_export_server::storage::FS_PARTIAL_DIR.to_owned(),
    ] {
        let entries = match storage.list_with(&prefix).recursive(true).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => continue,
            Err(e) => panic!("listing {prefix}: {e}"),
        };
        found.extend(
            entries
                .into_iter()
                .filter(|e| e.metadata().is_file() && e.path().contains(&export_id.to_string()))
                .map(|e| e.path().to_owned()),
        );
    }
    found
}
