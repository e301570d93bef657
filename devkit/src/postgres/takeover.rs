//! A postmaster that still runs on the data folder when we start: an earlier run of ours still
//! shutting down after its parent died, or one started by other means (`pg_ctl`). It is shut
//! down (SIGINT, then SIGQUIT) so that we can start our own; a stale `postmaster.pid` whose
//! pid now names an unrelated process is removed.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process, test_kill_process};

use super::error::ClusterError;

/// Grace period of a fast shutdown of a postmaster left over by an earlier run.
const TAKEOVER_GRACE: Duration = Duration::from_secs(15);
/// Grace period of an immediate shutdown (SIGQUIT) before giving up / SIGKILL (of a leftover
/// postmaster here, of our own one when it stops).
pub(super) const QUIT_GRACE: Duration = Duration::from_secs(5);

/// The pid in `pgdata/postmaster.pid` if that process is alive (a zombie counts as dead).
pub(super) fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid = text
        .lines()
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)?;
    is_alive(pid).then_some(pid)
}

/// Whether the process `pid` runs (a zombie counts as dead).
pub(super) fn is_alive(pid: i32) -> bool {
    let Some(target) = process(pid) else {
        return false;
    };
    // Signal 0 only checks that the process exists and may be signalled; EPERM: it exists,
    // but is another user's.
    let exists = matches!(test_kill_process(target), Ok(()) | Err(Errno::PERM));
    // A zombie still "exists" until its parent reaps it, which may be never when that parent
    // is an init that does not reap.
    exists && !is_zombie(pid)
}

/// The process `pid`, or `None` for 0 and negative numbers (which `kill` would take for
/// process groups).
fn process(pid: i32) -> Option<Pid> {
    if pid > 0 { Pid::from_raw(pid) } else { None }
}

fn is_zombie(pid: i32) -> bool {
    // Format: `pid (comm) state ...`; comm may contain spaces and parentheses.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rfind(')')
                .map(|at| stat[at + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Shuts down a postmaster that still runs on `pgdata` (an earlier run of ours still shutting
/// down after its PDEATHSIG, or one started by other means), so that we can start our own.
pub(super) fn take_over_leftover(pgdata: &Path) -> Result<(), ClusterError> {
    let Some(pid) = running_postmaster(pgdata) else {
        // No pid file, or a stale one: PostgreSQL removes a stale one itself.
        return Ok(());
    };
    // The pid may have been reused by an unrelated process since a crash. A postmaster's
    // working folder is its data folder, which tells them apart.
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) if fs::canonicalize(&cwd).map_or(cwd.as_path() != pgdata, |c| c != pgdata) => {
            tracing::warn!(
                pid,
                "postmaster.pid names a live process that is not this cluster's server; removing the stale file"
            );
            let pid_file = pgdata.join("postmaster.pid");
            return fs::remove_file(&pid_file).map_err(ClusterError::io("removing", pid_file));
        }
        Ok(_) => {}
        // Not ours to inspect (another user's, as non-root): PostgreSQL itself will refuse to
        // start and say which process holds the folder.
        Err(_) if !is_alive(pid) => return Ok(()),
        Err(err) => {
            tracing::warn!(pid, %err, "cannot tell whether postmaster.pid names a live server; leaving it");
            return Ok(());
        }
    }
    tracing::info!(pid, data_dir = %pgdata.display(), "a PostgreSQL left running by an earlier run holds the cluster; shutting it down");
    let failed = |source| ClusterError::TakeoverFailed {
        pid,
        data_dir: pgdata.to_owned(),
        source,
    };
    // (Never `None`: `running_postmaster` only names positive pids.)
    let Some(target) = process(pid) else {
        return Ok(());
    };
    for (sig, grace) in [(Signal::INT, TAKEOVER_GRACE), (Signal::QUIT, QUIT_GRACE)] {
        // The pid was checked above: a live process whose working folder is our data folder.
        match kill_process(target, sig) {
            Err(Errno::SRCH) => return Ok(()),
            Err(e) => return Err(failed(Some(e.into()))),
            Ok(()) => {}
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !is_alive(pid) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(
            pid,
            "the leftover PostgreSQL did not exit in time; escalating"
        );
    }
    Err(failed(None))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;

    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

    use super::*;
    use crate::postgres::binaries::Binaries;
    use crate::postgres::free_port;
    use crate::postgres::layout::LOCATION_FILE;
    use crate::postgres::os_user::{OS_USER, Owner, is_root, owner_command};
    use crate::testing::{blocking, count, start};

    #[tokio::test(flavor = "multi_thread")]
    async fn takes_over_a_postgres_left_running_on_its_data() {
        // A folder the postgres OS user can enter: the cluster lives in it, not relocated.
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        let mut first = start(&dir).await;
        assert_eq!(first.data_dir(), dir.join("pgdata"));
        assert!(!dir.join(LOCATION_FILE).exists());
        let mut conn = AsyncPgConnection::establish(&first.url("postgres"))
            .await
            .unwrap();
        conn.batch_execute("CREATE TABLE marker (id int); INSERT INTO marker VALUES (42);")
            .await
            .unwrap();
        drop(conn);
        let first = blocking(move || {
            first.stop().unwrap();
            first
        })
        .await;
        drop(first);

        // A postmaster that is not our child and has no PDEATHSIG, the way one outlives a
        // killed run (or was started by hand): pg_ctl daemonises it.
        let bins = Binaries::find().unwrap();
        let owner = if is_root() {
            Owner::lookup(OS_USER).unwrap()
        } else {
            None
        };
        let pg_ctl = bins.postgres.parent().unwrap().join("pg_ctl");
        let port = free_port().unwrap();
        let status = owner_command(&pg_ctl, owner.as_ref(), &dir)
            .arg("-D")
            .arg(dir.join("pgdata"))
            .arg("-l")
            .arg(dir.join("pgdata/leftover.log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
            ))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start: {status}");
        let leftover =
            running_postmaster(&dir.join("pgdata")).expect("the leftover postmaster runs");

        let second = start(&dir).await;
        assert!(
            !is_alive(leftover),
            "the leftover postmaster {leftover} still runs"
        );
        assert_ne!(second.pid() as i32, leftover);
        assert_ne!(second.port(), port);
        let mut conn = AsyncPgConnection::establish(&second.url("postgres"))
            .await
            .unwrap();
        assert_eq!(
            count(&mut conn, "SELECT sum(id)::bigint AS n FROM marker").await,
            42
        );
        drop(conn);
        blocking(move || second.destroy().unwrap()).await;
    }
}
