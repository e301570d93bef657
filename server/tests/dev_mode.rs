//! `exportd dev`, the embedded default, as a user runs it: the real binary, its own PostgreSQL,
//! the ready line, a real export through the client, restart, SIGTERM and kill -9.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use contact_export_client::{ClientTls, CreateExportRequest, ExportClient, ExportStatus};
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

/// The fields of the `ready …` line.
struct Ready {
    grpc: String,
    token: String,
    database: String,
}

fn start_dev(data_dir: &Path, seed: u64) -> (Child, Ready) {
    start_dev_with(data_dir, seed, &[])
}

fn start_dev_with(data_dir: &Path, seed: u64, extra: &[&OsStr]) -> (Child, Ready) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exportd"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--seed-contacts",
            &seed.to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env_remove("EXPORTD_STORAGE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("exportd starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = lines
        .next()
        .expect("exportd printed a line before exiting")
        .unwrap();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let field = |name: &str| {
        line.split(' ')
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
            .to_owned()
    };
    assert!(line.starts_with("ready "), "{line}");
    let ready = Ready {
        grpc: field("grpc"),
        token: field("token"),
        database: field("database"),
    };
    (child, ready)
}

fn postmaster_pid(data_dir: &Path) -> i32 {
    // The cluster may live elsewhere when the postgres user cannot enter `data_dir`.
    let pgdata = match std::fs::read_to_string(data_dir.join("pgdata-location")) {
        Ok(location) => Path::new(location.lines().next().unwrap().trim()).to_path_buf(),
        Err(_) => data_dir.join("pgdata"),
    };
    let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid")).expect("postmaster.pid");
    pid_file.lines().next().unwrap().trim().parse().unwrap()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

async fn contacts(database: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = contact_export_server::db::connect(database).await.unwrap();
    let N { n } = diesel::sql_query("SELECT count(*) AS n FROM contacts")
        .get_result(&mut conn)
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_exports_restarts_on_its_data_and_stops_cleanly() {
    // A folder only its owner can enter, like `mktemp -d`: PostgreSQL must still start.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let data_dir = root.path().join("data");

    let (mut child, ready) = start_dev(&data_dir, 300);
    assert!(
        ready.database.starts_with("postgres://postgres@127.0.0.1:"),
        "{}",
        ready.database
    );
    assert_eq!(contacts(&ready.database).await, 300);
    if let Ok(psql) = Command::new("psql")
        .arg(&ready.database)
        .args(["-tAc", "SELECT 1"])
        .output()
    {
        assert_eq!(
            String::from_utf8_lossy(&psql.stdout).trim(),
            "1",
            "psql accepts the URL"
        );
    }
    let client = ExportClient::connect(&ready.grpc, ready.token.clone())
        .await
        .unwrap();
    let created = client.create(CreateExportRequest::default()).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), client.wait(&created.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Completed);
    assert_eq!(done.total_rows, 300);
    let mut file = Vec::new();
    client
        .download_to(&done.id, &mut file, |_, _| {})
        .await
        .unwrap();
    let rows = csv::Reader::from_reader(&file[..])
        .records()
        .map(Result::unwrap)
        .count();
    assert_eq!(rows, 300);
    // The notification went to the file transport in the data folder. It is a step after
    // the completion: it may land a moment after COMPLETED is seen.
    let mail_dir = data_dir.join("mail");
    let mails = || std::fs::read_dir(&mail_dir).map_or(0, |dir| dir.count());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mails() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mails(), 1);

    // SIGTERM stops it and its PostgreSQL within 10 seconds.
    let postgres = postmaster_pid(&data_dir);
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(wait_gone(
        postgres,
        Duration::from_secs(10).saturating_sub(started.elapsed())
    ));

    // Again on the same folder: no new seed, a token for the same workspace.
    let (mut child, ready) = start_dev(&data_dir, 5);
    assert_eq!(contacts(&ready.database).await, 300);
    let client = ExportClient::connect(&ready.grpc, ready.token.clone())
        .await
        .unwrap();
    assert_eq!(
        client.get(&done.id).await.unwrap().status(),
        ExportStatus::Completed
    );

    // kill -9 leaves nothing that stops the next start.
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, ready) = start_dev(&data_dir, 5);
    assert_eq!(contacts(&ready.database).await, 300);
    let postgres = postmaster_pid(&data_dir);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    assert!(wait_gone(postgres, Duration::from_secs(10)));
    if let Ok(moved) = std::fs::read_to_string(data_dir.join("pgdata-location")) {
        let pgdata = Path::new(moved.lines().next().unwrap().trim()).to_path_buf();
        let cluster_root = pgdata.parent().unwrap();
        std::fs::remove_dir_all(cluster_root).unwrap();
    }
}

#[path = "e2e/pki.rs"]
mod pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_tls_with_the_certificate_it_is_given_and_stores_where_told() {
    let root = tempfile::tempdir().unwrap();
    // Enterable by the postgres user, so the cluster stays inside.
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ca = pki::Ca::new("dev test CA");
    let server = ca.server();
    let client = ca.client("dev user");
    let write = |name: &str, pem: &str| {
        let path = root.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let (cert, key) = (
        write("server.pem", &server.cert),
        write("server.key", &server.key),
    );
    let client_ca = write("client-ca.pem", &ca.pem);
    let data_dir = root.path().join("data");
    // Files in a store of the caller's choice rather than under the data folder.
    let store = root.path().join("store");
    let storage = format!("fs://{}", store.display());

    let args = [
        OsStr::new("--storage"),
        OsStr::new(&storage),
        OsStr::new("--tls-cert"),
        cert.as_os_str(),
        OsStr::new("--tls-key"),
        key.as_os_str(),
        OsStr::new("--tls-client-ca"),
        client_ca.as_os_str(),
    ];
    let (mut child, ready) = start_dev_with(&data_dir, 5, &args);
    assert!(
        ready.grpc.starts_with("https://127.0.0.1:"),
        "{}",
        ready.grpc
    );
    let tls = ClientTls {
        ca_pem: Some(ca.pem.clone().into_bytes()),
        identity: Some((client.cert.into_bytes(), client.key.into_bytes())),
        domain: None,
    };
    let exports = ExportClient::connect_with(&ready.grpc, ready.token.clone(), tls)
        .await
        .unwrap();
    let created = exports
        .create(CreateExportRequest::default())
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), exports.wait(&created.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status(), ExportStatus::Completed);
    assert_eq!(done.total_rows, 5);
    let workspace_dirs = std::fs::read_dir(store.join("exports")).unwrap().count();
    assert_eq!(workspace_dirs, 1, "the file went to --storage");
    assert!(!data_dir.join("files").join("exports").exists());

    let postgres = postmaster_pid(&data_dir);
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(wait_gone(postgres, Duration::from_secs(10)));
    if let Ok(moved) = std::fs::read_to_string(data_dir.join("pgdata-location")) {
        let pgdata = Path::new(moved.lines().next().unwrap().trim()).to_path_buf();
        std::fs::remove_dir_all(pgdata.parent().unwrap()).unwrap();
    }
}

#[test]
fn serve_and_dev_refuse_half_a_tls_configuration() {
    let root = tempfile::tempdir().unwrap();
    let cert = root.path().join("server.pem");
    // A whole PEM block (its body need not be a real certificate: the key is what is missing).
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = root.path().join("missing.key");
    for (command, extra) in [
        ("serve", ["--database-url", "postgres://127.0.0.1:1/none"]),
        (
            "dev",
            ["--data-dir", root.path().join("data").to_str().unwrap()],
        ),
    ] {
        let run = |args: &[&OsStr]| {
            let output = Command::new(env!("CARGO_BIN_EXE_exportd"))
                .arg(command)
                .args(extra)
                .args(args)
                .env_remove("EXPORTD_TLS_CERT")
                .env_remove("EXPORTD_TLS_KEY")
                .env_remove("EXPORTD_TLS_CLIENT_CA")
                .output()
                .unwrap();
            assert!(!output.status.success(), "{command} {args:?} started");
            String::from_utf8(output.stderr).unwrap()
        };
        let err = run(&[OsStr::new("--tls-cert"), cert.as_os_str()]);
        assert!(err.contains("--tls-key"), "{command}: {err}");
        let err = run(&[
            OsStr::new("--tls-cert"),
            cert.as_os_str(),
            OsStr::new("--tls-key"),
            missing.as_os_str(),
        ]);
        assert!(
            err.contains("--tls-key") && err.contains("missing.key"),
            "{command}: {err}"
        );
    }
    // `dev` checked its flags before starting PostgreSQL in the data folder.
    assert!(!root.path().join("data").exists());
}
