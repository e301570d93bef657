//! The service under test: `exportd serve` as a child process, exactly as a user runs it.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use contact_export_client::ExportClient;
use tokio::process::{Child, Command};

/// How long a fresh `exportd` may take to answer its first call.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `exportd` may take to stop after SIGTERM (it finishes or releases running jobs).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start one `exportd serve`.
pub struct ExportdConfig {
    pub binary: PathBuf,
    pub database_url: String,
    /// The `fs` storage root; an export's object is `<root>/<object key>`.
    pub storage_root: PathBuf,
    pub workers: usize,
    pub batch_size: Option<u32>,
    /// The process's `TMPDIR` (where an XLSX is built), a folder of its own.
    pub tmp_dir: PathBuf,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    /// The API token the [`Exportd::client`] sends.
    pub token: String,
}

/// A running `exportd serve` and a client connected to it.
pub struct Exportd {
    child: Child,
    pid: u32,
    client: ExportClient,
    log: PathBuf,
}

impl Exportd {
    /// Starts `exportd serve` on a free port and waits until it answers an authenticated call
    /// (which proves the database is reachable too, unlike a bare health check).
    pub async fn start(config: ExportdConfig) -> anyhow::Result<Self> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log)
            .with_context(|| format!("opening {}", config.log.display()))?;
        writeln!(log, "---- exportd-bench: starting exportd on {listen}")?;

        let mut command = Command::new(&config.binary);
        command
            .arg("serve")
            .arg("--database-url")
            .arg(&config.database_url)
            .arg("--storage")
            .arg(format!("fs://{}", config.storage_root.display()))
            .arg("--listen")
            .arg(&listen)
            .arg("--workers")
            .arg(config.workers.to_string());
        if let Some(batch_size) = config.batch_size {
            command.arg("--batch-size").arg(batch_size.to_string());
        }
        command
            // Warnings only: logging every batch would be part of what we measure.
            .env("RUST_LOG", "warn")
            .env("TMPDIR", &config.tmp_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: `prctl` is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            // If the bench dies (even by SIGKILL), the service goes too instead of lingering on
            // its port. The signal fires when the spawning thread exits; that is the runtime's
            // main or worker thread, which lives as long as the bench.
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", config.binary.display()))?;
        let pid = child.id().context("exportd exited at once")?;

        let deadline = Instant::now() + READY_TIMEOUT;
        let client = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "exportd exited during startup ({status}); see {}",
                    config.log.display()
                );
            }
            if let Ok(client) = ExportClient::connect(&listen, config.token.clone()).await
                && client.list(1, "").await.is_ok()
            {
                break client;
            }
            if Instant::now() > deadline {
                bail!(
                    "exportd did not answer on {listen} within {} s; see {}",
                    READY_TIMEOUT.as_secs(),
                    config.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Exportd {
            child,
            pid,
            client,
            log: config.log,
        })
    }

    /// A client of this process, with the token of [`ExportdConfig::token`].
    pub fn client(&self) -> &ExportClient {
        &self.client
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's peak resident set so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .with_context(|| format!("no VmHWM in {path}"))?;
        Ok(kib * 1024)
    }

    /// CPU time (user + system) the process has used so far, all its threads together.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name (field 2) may hold spaces: count fields after its closing paren.
        // utime and stime are fields 14 and 15, so the 12th and 13th after it.
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
            .into_iter()
            .flatten()
            .map(|n| {
                n.parse::<u64>()
                    .with_context(|| format!("bad field in {path}"))
            })
            .sum::<anyhow::Result<u64>>()?;
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        anyhow::ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
        Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }

    /// SIGTERM, as an operator stops it; SIGKILL if it does not exit in time.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: plain syscall on the pid of our own child, which is not reaped yet.
        let sent = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        if sent == -1 {
            return Err(std::io::Error::last_os_error()).context("sending SIGTERM to exportd");
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "exportd exited with {status} after SIGTERM; see {}",
                        self.log.display()
                    );
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "exportd did not stop within {} s of SIGTERM (killed); see {}",
                    STOP_TIMEOUT.as_secs(),
                    self.log.display()
                )
            }
        }
    }
}

/// A port nobody listens on now. Another process could take it before `exportd` binds it;
/// then the start fails with a clear message, which is rare enough for a benchmark.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
