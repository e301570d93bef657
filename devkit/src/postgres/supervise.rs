//! Launching the postmaster under a supervisor thread of ours, and stopping it.
//!
//! The postmaster is a direct child of that thread (not daemonised by `pg_ctl`), so we own
//! it: only the thread signals and reaps it, so a signal can never hit a recycled pid, and
//! `PR_SET_PDEATHSIG` makes it shut down by itself if our process dies, even by `kill -9`.
//! That signal fires when the *thread* that forked the child exits, so the thread stays alive
//! exactly as long as the postmaster. (Linux only; elsewhere a killed parent leaves the
//! server running until the next start takes it over.)

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process};

use super::binaries::Binaries;
use super::error::ClusterError;
use super::layout::Layout;
use super::os_user::{Owner, owner_command};
use super::ready::{NotReady, Probe, wait_ready};
use super::takeover::QUIT_GRACE;

/// Grace period of a fast shutdown (SIGINT) of our own postmaster before SIGQUIT.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the supervisor thread looks whether the postmaster is still alive.
const SUPERVISE_POLL: Duration = Duration::from_millis(100);
/// `sun_path` holds 108 bytes with its NUL; PostgreSQL appends `/.s.PGSQL.<port>`.
const SUN_PATH_LEN: usize = 108;

/// Why a launch failed.
pub(super) enum Launch {
    /// The postmaster could not bind its port (someone took it after we probed it).
    PortTaken(ClusterError),
    Failed(ClusterError),
}

impl From<ClusterError> for Launch {
    fn from(err: ClusterError) -> Self {
        Launch::Failed(err)
    }
}

/// The thread that spawned the postmaster: it stays alive exactly as long as the postmaster,
/// because `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits.
#[derive(Debug)]
pub(super) struct Supervisor {
    /// The postmaster's process id.
    pid: u32,
    /// A message (or the sender's drop) asks the thread to shut the postmaster down.
    stop: mpsc::Sender<()>,
    /// Set by the thread once the postmaster has exited and been reaped.
    exited: Arc<Mutex<Option<ExitStatus>>>,
    thread: JoinHandle<io::Result<Option<ExitStatus>>>,
}

impl Supervisor {
    /// The postmaster's process id.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Shuts the postmaster down: SIGINT, then SIGQUIT after [`STOP_GRACE`], SIGKILL after
    /// [`QUIT_GRACE`] more. Blocks until it has exited and the thread has ended.
    pub(super) fn stop(self) -> Result<(), ClusterError> {
        // The send fails when the thread already ended because PostgreSQL died by itself;
        // joining then just collects its exit status.
        let _ = self.stop.send(());
        let pid = self.pid;
        match self.thread.join() {
            Ok(Ok(status)) => {
                tracing::info!(pid, status = ?status, "PostgreSQL stopped");
                Ok(())
            }
            Ok(Err(source)) => Err(ClusterError::Stop { pid, source }),
            Err(_) => Err(ClusterError::Stop {
                pid,
                source: io::Error::other("the supervisor thread panicked"),
            }),
        }
    }
}

/// Starts the postmaster of `layout` on `port` under a supervisor thread and waits until it
/// takes sessions; its output is appended to `log_path`.
pub(super) fn launch(
    bins: &Binaries,
    layout: &Layout,
    owner: Option<&Owner>,
    log_path: &Path,
    port: u16,
    settings: &[(String, String)],
) -> Result<Supervisor, Launch> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(ClusterError::io("opening", log_path))?;
    let log_start = log.metadata().map(|md| md.len()).unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    writeln!(
        log,
        "---- exportd: starting postgres on 127.0.0.1:{port} (unix time {now}) ----"
    )
    .map_err(ClusterError::io("writing", log_path))?;
    let log_err = log
        .try_clone()
        .map_err(ClusterError::io("opening", log_path))?;

    let mut cmd = owner_command(&bins.postgres, owner, &layout.root);
    cmd.arg("-D")
        .arg(&layout.pgdata)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args([
            "-c",
            &format!(
                "unix_socket_directories={}",
                socket_dir_setting(&layout.sock)
            ),
        ])
        .args([
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "synchronous_commit=off",
        ])
        .args(["-c", "max_connections=300"])
        .args(
            settings
                .iter()
                .flat_map(|(name, value)| ["-c".to_owned(), format!("{name}={value}")]),
        )
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C in the terminal must not shut the database down
        // under a server that is still draining; we stop it ourselves, afterwards.
        .process_group(0);
    let parent = rustix::process::getpid();
    // SAFETY: `pre_exec` runs the closure in the forked child, before exec, where only
    // async-signal-safe work is sound (another thread of ours may have held the allocator's
    // or another lock at the fork). The closure allocates nothing and takes no lock: it makes
    // two syscalls, prctl(PR_SET_PDEATHSIG) and getppid, through rustix, and its errors are
    // errno values (`io::Error::from_raw_os_error` does not allocate).
    unsafe {
        cmd.pre_exec(move || {
            // Shut down (fast) when the thread that spawned us exits, i.e. when our process
            // dies without stopping us. Set after std's setuid: a credential change clears it.
            // (Linux only; elsewhere a killed parent leaves the server to the takeover.)
            #[cfg(any(target_os = "linux", target_os = "android"))]
            rustix::process::set_parent_process_death_signal(Some(Signal::INT))?;
            // The parent died before the prctl: nobody will signal us; do not start at all.
            if rustix::process::getppid() != Some(parent) {
                return Err(Errno::SRCH.into());
            }
            Ok(())
        });
    }

    let (started_tx, started_rx) = mpsc::sync_channel::<io::Result<u32>>(1);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let exited = Arc::new(Mutex::new(None));
    let exited_by_thread = Arc::clone(&exited);
    let thread = thread::Builder::new()
        .name(format!("postgres-{port}"))
        .spawn(move || supervise(cmd, started_tx, stop_rx, exited_by_thread))
        .map_err(ClusterError::io("starting a thread for", &bins.postgres))?;
    let pid = match started_rx.recv() {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(ClusterError::Io {
                action: "starting",
                path: bins.postgres.clone(),
                source: e,
            }
            .into());
        }
        Err(_) => {
            let _ = thread.join();
            let source = io::Error::other("the supervisor thread panicked");
            return Err(ClusterError::Io {
                action: "starting",
                path: bins.postgres.clone(),
                source,
            }
            .into());
        }
    };
    let supervisor = Supervisor {
        pid,
        stop: stop_tx,
        exited,
        thread,
    };
    let probe = Probe {
        port,
        pid,
        pgdata: &layout.pgdata,
        pg_isready: bins.pg_isready.as_deref(),
    };
    let not_ready = match wait_ready(&probe, &supervisor.exited) {
        Ok(()) => return Ok(supervisor),
        Err(not_ready) => not_ready,
    };
    let tail = log_tail(log_path, log_start);
    // Do not leave a half-started server behind (stop is a no-op when it exited).
    let _ = supervisor.stop();
    let log = log_path.to_owned();
    Err(match not_ready {
        NotReady::Exited(status) => {
            let port_taken = tail.contains("could not create any TCP/IP sockets");
            let err = ClusterError::Exited { status, log, tail };
            if port_taken {
                Launch::PortTaken(err)
            } else {
                Launch::Failed(err)
            }
        }
        NotReady::TimedOut => Launch::Failed(ClusterError::NotReady { port, log, tail }),
    })
}

/// Body of the supervisor thread: spawns the postmaster, reports its pid, then waits for it
/// to exit or for a stop request. Only this thread signals and reaps the child, so a signal
/// can never hit a recycled pid.
fn supervise(
    mut cmd: Command,
    started: mpsc::SyncSender<io::Result<u32>>,
    stop: mpsc::Receiver<()>,
    exited: Arc<Mutex<Option<ExitStatus>>>,
) -> io::Result<Option<ExitStatus>> {
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = started.send(Err(e));
            return Ok(None);
        }
    };
    // Release our copies of the log file descriptors.
    drop(cmd);
    let _ = started.send(Ok(child.id()));
    let record = |status: ExitStatus| {
        *exited.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(status);
        Ok(Some(status))
    };
    loop {
        match stop.recv_timeout(SUPERVISE_POLL) {
            // A stop request, or the Cluster is gone without one.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(status) = child.try_wait()? {
            tracing::warn!(pid = child.id(), %status, "PostgreSQL exited by itself");
            return record(status);
        }
    }
    let status = shut_down(&mut child)?;
    record(status)
}

fn shut_down(child: &mut Child) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // Our child, not yet reaped: the pid is still its own.
    let pid = Pid::from_child(child);
    for (sig, grace) in [(Signal::INT, STOP_GRACE), (Signal::QUIT, QUIT_GRACE)] {
        kill_process(pid, sig)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            pid = pid.as_raw_nonzero().get(),
            "PostgreSQL did not exit in time; escalating"
        );
    }
    child.kill()?;
    child.wait()
}

/// The value of `unix_socket_directories`: our own folder, quoted, or none at all ('') when
/// its socket path would not fit in `sun_path` (we connect over TCP anyway).
fn socket_dir_setting(sock: &Path) -> String {
    match sock.to_str() {
        Some(path) if path.len() + "/.s.PGSQL.65535".len() < SUN_PATH_LEN => {
            // A list value: double quotes protect commas and spaces, `""` is a literal quote.
            format!("\"{}\"", path.replace('"', "\"\""))
        }
        _ => String::new(),
    }
}

/// The last lines this start wrote to the log.
fn log_tail(path: &Path, from: u64) -> String {
    const MAX_BYTES: u64 = 4096;
    const MAX_LINES: usize = 25;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(from.max(len.saturating_sub(MAX_BYTES))))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(MAX_LINES)..].join("\n")
        }
        Err(e) => format!("(could not read the log: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;
    use std::process::Stdio;

    use super::*;
    use crate::postgres::Cluster;
    use crate::postgres::takeover::is_alive;

    /// Set in the child process of `postgres_dies_with_the_process_that_started_it`.
    const HELPER_DIR_ENV: &str = "EXPORTD_TEST_CLUSTER_HELPER_DIR";

    fn wait_until_dead(pid: i32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !is_alive(pid) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    #[test]
    fn postgres_dies_with_the_process_that_started_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        // This test binary again, running only the helper below, which starts a cluster and
        // hangs; then we kill -9 it, as a crash or the OOM killer would.
        let full_name = concat!(module_path!(), "::helper_start_a_cluster_and_hang");
        let test_name = full_name
            .split_once("::")
            .map_or(full_name, |(_, rest)| rest);
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                test_name,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_DIR_ENV, &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid_file = dir.join("helper-postmaster-pid");
        let deadline = Instant::now() + Duration::from_secs(90);
        let postmaster = loop {
            if let Some(pid) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                break pid;
            }
            if let Some(status) = helper.try_wait().unwrap() {
                panic!("the helper exited early ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "the helper did not start a cluster"
            );
            thread::sleep(Duration::from_millis(100));
        };
        assert!(is_alive(postmaster));
        helper.kill().unwrap(); // SIGKILL: no destructor runs
        helper.wait().unwrap();
        assert!(
            wait_until_dead(postmaster, Duration::from_secs(20)),
            "the postmaster {postmaster} outlived the process that started it"
        );
        // And the folder starts again.
        let cluster = Cluster::start(&dir).unwrap();
        assert_ne!(cluster.pid() as i32, postmaster);
        cluster.destroy().unwrap();
    }

    /// Runs only as the child process of `postgres_dies_with_the_process_that_started_it`.
    #[test]
    #[ignore = "helper process of postgres_dies_with_the_process_that_started_it"]
    fn helper_start_a_cluster_and_hang() {
        let Some(dir) = std::env::var_os(HELPER_DIR_ENV) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let cluster = Cluster::start(&dir).unwrap();
        fs::write(dir.join("helper-postmaster-pid"), cluster.pid().to_string()).unwrap();
        loop {
            thread::sleep(Duration::from_secs(60));
        }
    }

    #[test]
    fn socket_folder_setting_is_quoted_or_empty() {
        assert_eq!(
            socket_dir_setting(Path::new("/tmp/x/sock")),
            "\"/tmp/x/sock\""
        );
        assert_eq!(
            socket_dir_setting(Path::new("/tmp/a,b \"c\"/sock")),
            "\"/tmp/a,b \"\"c\"\"/sock\""
        );
        let long = PathBuf::from(format!("/tmp/{}/sock", "x".repeat(90)));
        assert_eq!(socket_dir_setting(&long), "");
    }
}
