//! PostgreSQL over TLS: a cluster of the test's own started with `ssl=on` and a certificate
//! the test makes, reached with `sslmode=require` and `verify-full` by every connection of the
//! service (the pools, `LISTEN`, the snapshot of an export) and by the migrations.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use contact_export_client::ExportStatus;
use contact_export_devkit::postgres::{Cluster, StartOptions};
use contact_export_server::app::{Application, Settings};
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

use super::harness::{AppOptions, TestApp, TestDb, create_database, within};
use super::pki::Ca;
use super::{all_contacts, download_all, run_export};

/// A folder every user can enter (PostgreSQL runs as `postgres` when the tests run as root),
/// removed when dropped.
struct PublicDir(PathBuf);

impl PublicDir {
    fn new() -> PublicDir {
        let path = std::env::temp_dir().join(format!("exportd-pg-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        PublicDir(path)
    }
}

impl Drop for PublicDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The uid and gid of the `postgres` OS user when we are root (it runs the server then).
fn server_user() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    Some((id("-u"), id("-g")))
}

/// Writes a file the server can read (a key: only the server).
fn server_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    }
    path
}

/// Connections to `database` that are not encrypted (the test's own included).
async fn plaintext_connections(url: &str, database: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = contact_export_server::db::connect(url).await.unwrap();
    let N { n } = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = $1 AND NOT s.ssl",
    )
    .bind::<diesel::sql_types::Text, _>(database)
    .get_result(&mut conn)
    .await
    .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_speaks_tls_to_postgresql_with_require_and_verify_full() {
    let public = PublicDir::new();
    let ca = Ca::new("exportd test PostgreSQL CA");
    let server = ca.server();
    let cert = server_file(&public.0, "server.crt", &server.cert);
    let key = server_file(&public.0, "server.key", &server.key);
    let ca_file = public.0.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let other_ca_file = public.0.join("other-ca.pem");
    std::fs::write(&other_ca_file, Ca::new("someone else").pem).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("pg");
    let options = StartOptions {
        port: None,
        settings: vec![
            ("ssl".to_owned(), "on".to_owned()),
            ("ssl_cert_file".to_owned(), cert.display().to_string()),
            ("ssl_key_file".to_owned(), key.display().to_string()),
        ],
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start_with(&cluster_dir, &options))
        .await
        .unwrap()
        .expect("a cluster with ssl=on");

    let with = |database: &str, query: &str| format!("{}?{query}", cluster.url(database));
    let require = "sslmode=require";
    let verify_full = format!("sslmode=verify-full&sslrootcert={}", ca_file.display());
    // The migrations over TLS too.
    let pattern = with("dbplaceholder", require).replace("dbplaceholder", "{db}");
    let url = create_database(&with("postgres", require), &pattern, "tls").await;
    assert!(url.ends_with("?sslmode=require"), "{url}");

    for (mode, url) in [
        ("require", url.clone()),
        ("verify-full", with("tls", &verify_full)),
    ] {
        let app = TestApp::spawn_on(
            TestDb { url: url.clone() },
            AppOptions {
                batch_size: 5,
                ..AppOptions::default()
            },
        )
        .await;
        let contacts: Vec<super::fixture::Contact> =
            (1..=40).map(super::fixture::Contact::numbered).collect();
        app.ws.insert(&app.db, &contacts).await;
        let done = run_export(&app.ws.client, all_contacts()).await;
        assert_eq!(done.status(), ExportStatus::Completed, "{mode}: {done:?}");
        assert_eq!(done.processed_rows, 40);
        let file = download_all(&app.ws.client, &done.id).await;
        assert_eq!(file.lines().count(), 41);
        assert_eq!(
            plaintext_connections(&url, "tls").await,
            0,
            "{mode}: every connection of the service is encrypted"
        );
        within("the service to stop", app.stop()).await;
    }

    // verify-full refuses a server whose certificate another CA signed, before anything runs.
    let wrong = with(
        "tls",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            other_ca_file.display()
        ),
    );
    let settings = Settings {
        database_url: wrong,
        ..TestApp::settings(AppOptions::default())
    };
    let err = Application::build(settings)
        .await
        .err()
        .expect("an untrusted server is refused");
    assert!(
        err.to_string().contains("certificate"),
        "the error says why: {err}"
    );
    tokio::task::spawn_blocking(move || cluster.destroy())
        .await
        .unwrap()
        .unwrap();
}
