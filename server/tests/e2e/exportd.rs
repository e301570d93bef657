//! The built `exportd serve`, run as an operator runs it: a child process on the test's
//! database and storage folder, its JSON log lines collected, killed, frozen, thawed or
//! stopped with signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tokio::sync::watch;

use super::harness::within;

/// How to start a replica.
#[derive(Debug, Clone)]
pub struct Replica {
    pub database_url: String,
    /// The `fs` storage folder every replica shares.
    pub storage: PathBuf,
    pub workers: usize,
    pub lease_seconds: u64,
    pub batch_size: u32,
    /// `--smtp-url smtp://ADDR`; none: the replica cannot mail.
    pub smtp: Option<SocketAddr>,
    /// `EXPORTD_TEST_FAULTS`.
    pub faults: Option<String>,
    pub shutdown_timeout: &'static str,
    /// `EXPORTD_WEBHOOK_SECRET` and `--webhook-allow`; none: the replica sends no webhooks.
    pub webhooks: Option<(String, String)>,
}

impl Replica {
    pub fn new(database_url: &str, storage: &Path) -> Replica {
        Replica {
            database_url: database_url.to_owned(),
            storage: storage.to_owned(),
            workers: 1,
            lease_seconds: 3,
            batch_size: 100,
            smtp: None,
            faults: None,
            shutdown_timeout: "10s",
            webhooks: None,
        }
    }
}

/// A running `exportd serve`; killed (SIGKILL) when dropped, if still running.
pub struct Exportd {
    child: Child,
    pub addr: SocketAddr,
    /// Its name in `lease_owner` and `export_steps.worker`.
    pub worker_id: String,
    log: Arc<Mutex<Vec<Value>>>,
    lines: watch::Receiver<usize>,
}

impl Drop for Exportd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(Signal::CONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Exportd {
    /// Starts the replica and waits for its `serving` line.
    pub async fn start(replica: &Replica) -> Exportd {
        let mut command = Command::new(env!("CARGO_BIN_EXE_exportd"));
        command
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .arg("--database-url")
            .arg(&replica.database_url)
            .arg("--storage")
            .arg(format!("fs://{}", replica.storage.display()))
            .args(["--workers", &replica.workers.to_string()])
            .args(["--lease-seconds", &replica.lease_seconds.to_string()])
            .args(["--batch-size", &replica.batch_size.to_string()])
            .args(["--shutdown-timeout", replica.shutdown_timeout])
            .env("RUST_LOG", "info")
            .env_remove("EXPORTD_TEST_FAULTS")
            .env_remove("EXPORTD_WEBHOOK_SECRET")
            .env_remove("EXPORTD_WEBHOOK_ALLOW")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(smtp) = replica.smtp {
            command.arg("--smtp-url").arg(format!("smtp://{smtp}"));
        }
        if let Some((secret, prefix)) = &replica.webhooks {
            command
                .env("EXPORTD_WEBHOOK_SECRET", secret)
                .arg("--webhook-allow")
                .arg(prefix);
        }
        if let Some(faults) = &replica.faults {
            command.env("EXPORTD_TEST_FAULTS", faults);
        }
        let mut child = command.spawn().expect("exportd starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (count, lines) = watch::channel(0usize);
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"fields": {"message": line}}));
                collected.lock().unwrap().push(value);
                count.send_modify(|n| *n += 1);
            }
        });
        let mut exportd = Exportd {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            worker_id: String::new(),
            log,
            lines,
        };
        let serving = exportd
            .wait_for_log("the replica to serve", "serving")
            .await;
        exportd.addr = field(&serving, "addr")
            .parse()
            .expect("the serving line's address");
        exportd.worker_id = field(&serving, "worker_id");
        exportd
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).expect("a child's pid");
        let _ = kill_process(pid, signal);
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn exited(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("waiting for exportd") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits for a log line whose message is `message`; returns it.
    pub async fn wait_for_log(&mut self, what: &str, message: &str) -> Value {
        self.wait_for_line(what, |line| self::message(line) == message)
            .await
    }

    /// Waits for a log line that `wanted` accepts (among all lines so far); returns it.
    pub async fn wait_for_line(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let mut lines = self.lines.clone();
        let log = self.log.clone();
        within(what, async move {
            loop {
                if let Some(line) = log.lock().unwrap().iter().find(|l| wanted(l)) {
                    return line.clone();
                }
                lines
                    .changed()
                    .await
                    .expect("the log reader outlives waits");
            }
        })
        .await
    }

    /// Every log line so far whose message is `message`.
    pub fn lines_with(&self, message: &str) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| self::message(l) == message)
            .cloned()
            .collect()
    }

    /// The log so far, one line each, for a failing assertion's message.
    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The message of a JSON log line.
pub fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// A field of a JSON log line, as text.
pub fn field(line: &Value, name: &str) -> String {
    match &line["fields"][name] {
        Value::String(s) => s.clone(),
        Value::Null => panic!("no field {name} in {line}"),
        other => other.to_string(),
    }
}

/// The export a JSON log line is about (from its `job` span).
pub fn export_of(line: &Value) -> Option<&str> {
    line["spans"]
        .as_array()?
        .iter()
        .find_map(|span| span["export_id"].as_str())
}
