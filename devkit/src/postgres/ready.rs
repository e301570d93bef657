//! Whether a fresh postmaster takes sessions yet: until it does, exits, or the time is up.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::os_user::DB_SUPERUSER;

/// How long a fresh postmaster may take to accept connections (crash recovery included).
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The postmaster to wait for.
#[derive(Debug)]
pub(super) struct Probe<'a> {
    /// Its TCP port on 127.0.0.1.
    pub(super) port: u16,
    pub(super) pid: u32,
    /// Its data folder, which holds `postmaster.pid`.
    pub(super) pgdata: &'a Path,
    /// Without it, readiness is read from `postmaster.pid`.
    pub(super) pg_isready: Option<&'a Path>,
}

/// Why the postmaster did not become ready.
#[derive(Debug)]
pub(super) enum NotReady {
    /// It exited, with this status.
    Exited(ExitStatus),
    /// It did not take sessions within [`READY_TIMEOUT`].
    TimedOut,
}

/// Waits until the postmaster takes sessions; `exited` is set once it has exited.
pub(super) fn wait_ready(
    probe: &Probe<'_>,
    exited: &Mutex<Option<ExitStatus>>,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, probe.port));
    loop {
        let status = *exited.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(status) = status {
            return Err(NotReady::Exited(status));
        }
        // A TCP accept only says the socket is bound; the protocol check says the server
        // takes sessions (not "the database system is starting up").
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            && accepts_sessions(probe)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn accepts_sessions(probe: &Probe<'_>) -> bool {
    match probe.pg_isready {
        Some(pg_isready) => Command::new(pg_isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &probe.port.to_string()])
            .args(["-U", DB_SUPERUSER, "-d", "postgres", "-t", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success()),
        // Line 8 of postmaster.pid is the postmaster's status (what `pg_ctl -w` waits for).
        None => fs::read_to_string(probe.pgdata.join("postmaster.pid")).is_ok_and(|text| {
            let lines: Vec<&str> = text.lines().collect();
            lines
                .first()
                .is_some_and(|pid| pid.trim() == probe.pid.to_string())
                && lines.get(7).is_some_and(|status| status.trim() == "ready")
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use crate::postgres::binaries::Binaries;
    use crate::postgres::initdb::init_cluster;
    use crate::postgres::layout::Layout;
    use crate::postgres::os_user::{OS_USER, Owner, is_root};
    use crate::postgres::{LOG_FILE, free_port, launch};

    use super::*;

    #[test]
    fn readiness_without_pg_isready_reads_postmaster_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        let owner = if is_root() {
            Owner::lookup(OS_USER).unwrap()
        } else {
            None
        };
        let bins = Binaries {
            pg_isready: None,
            ..Binaries::find().unwrap()
        };
        let layout = Layout::locate(&dir, owner.as_ref()).unwrap();
        layout.prepare(owner.as_ref()).unwrap();
        init_cluster(&bins, &layout, owner.as_ref()).unwrap();
        let port = free_port().unwrap();
        let Ok(mut cluster) = launch(
            &bins,
            &layout,
            owner.as_ref(),
            &dir,
            &dir.join(LOG_FILE),
            port,
            &[],
        ) else {
            panic!("launch failed; see {}", dir.join(LOG_FILE).display());
        };
        let pid_file = fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
        assert_eq!(pid_file.lines().nth(7).map(str::trim), Some("ready"));
        TcpStream::connect(("127.0.0.1", cluster.port())).unwrap();
        let log = fs::read_to_string(cluster.log_path()).unwrap();
        assert!(log.contains(&format!(
            "---- exportd: starting postgres on 127.0.0.1:{port}"
        )));
        cluster.stop().unwrap();
        cluster.destroy().unwrap();
    }
}
