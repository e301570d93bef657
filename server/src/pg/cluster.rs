//! A throwaway PostgreSQL cluster started from the machine's own binaries, for `exportd dev`
//! and for tests.
//!
//! PostgreSQL refuses to run as root, and every session and CI here runs as root. So, as root,
//! `initdb` and `postgres` run as the `postgres` OS user, with their folders owned by it. Every
//! folder above the cluster must be enterable by that user; when the caller's folder is not
//! (`tempfile::tempdir()` and `mktemp -d` make 0700 folders), the cluster lives under the temp
//! folder instead and `<dir>/pgdata-location` records where, so the next start on the same
//! folder finds the same data.
//!
//! The postmaster is a direct child of a supervisor thread of ours (not daemonised by
//! `pg_ctl`), so we own it: it is stopped by [`Cluster::stop`] / `Drop`, and
//! `PR_SET_PDEATHSIG` makes it shut down by itself if our process dies, even by `kill -9`.
//! A postmaster that still runs on the data folder when we start (an earlier run that is still
//! shutting down, or one started by other means) is shut down and replaced.
//!
//! Made for Linux (`PR_SET_PDEATHSIG`, `/proc`), where this service is developed and tested;
//! elsewhere it compiles, but a server outlives a killed parent until the next start takes
//! it over.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a fresh postmaster may take to accept connections (crash recovery included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period of a fast shutdown (SIGINT) of our own postmaster before SIGQUIT.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Grace period of a fast shutdown of a postmaster left over by an earlier run.
const TAKEOVER_GRACE: Duration = Duration::from_secs(15);
/// Grace period of an immediate shutdown (SIGQUIT) before giving up / SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// How often the supervisor thread looks whether the postmaster is still alive.
const SUPERVISE_POLL: Duration = Duration::from_millis(100);
/// Another process may grab the port between our probe and the postmaster's bind.
const PORT_ATTEMPTS: u32 = 3;
/// The OS user PostgreSQL runs as when we are root (Debian's package creates it).
const OS_USER: &str = "postgres";
/// The database superuser `initdb` creates; [`Cluster::url`] connects as it.
const DB_SUPERUSER: &str = "postgres";
/// In the caller's folder when the cluster had to live elsewhere: the path of its data folder.
const LOCATION_FILE: &str = "pgdata-location";
/// In a relocated cluster's folder: the caller's folder it belongs to (for clean-up).
const ORIGIN_FILE: &str = "origin";
const FALLBACK_PREFIX: &str = "exportd-pg-";
const LOG_FILE: &str = "postgres.log";
/// `sun_path` holds 108 bytes with its NUL; PostgreSQL appends `/.s.PGSQL.<port>`.
const SUN_PATH_LEN: usize = 108;

/// Why a throwaway cluster could not be started or stopped. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`postgres` were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found; looked in: {searched}. \
         Install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`) or put \
         its bin folder on PATH, or set DATABASE_URL to use an existing server instead"
    )]
    BinariesNotFound {
        /// The places looked at, for the operator.
        searched: String,
    },

    /// Running as root, and the OS user to run PostgreSQL as is missing.
    #[error(
        "running as root, but there is no `{OS_USER}` OS user to run PostgreSQL as \
         (PostgreSQL refuses to run as root); create it (`useradd --system --user-group \
         --home-dir /var/lib/postgresql {OS_USER}`) or run as an unprivileged user"
    )]
    NoPostgresUser,

    /// The `postgres` OS user cannot reach the cluster folder, nor the fallback.
    #[error(
        "the `{OS_USER}` OS user cannot enter {folder} (above the cluster folder {dir}), and \
         the fallback under the temp folder cannot be used either: it cannot enter \
         {fallback_folder}. Allow it to pass (e.g. `chmod o+x` on those folders), choose a \
         cluster folder it can reach, or point TMPDIR at a folder it can reach"
    )]
    Inaccessible {
        /// The first folder on the way to the cluster folder that blocks the user.
        folder: PathBuf,
        /// The cluster folder the caller asked for.
        dir: PathBuf,
        /// The folder that blocks the user on the way to the fallback.
        fallback_folder: PathBuf,
    },

    /// A folder where the cluster should live belongs to someone else.
    #[error(
        "{path} exists but is not a folder owned by root or the `{OS_USER}` OS user \
         (owner uid {owner_uid}); refusing to put a database there. Remove it, or point \
         TMPDIR elsewhere"
    )]
    ForeignFolder {
        /// The offending path.
        path: PathBuf,
        /// Its owner.
        owner_uid: u32,
    },

    /// A file-system or process operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// `initdb` failed.
    #[error(
        "initdb failed ({status}) creating {}; remove that folder if it holds a half-made \
         cluster, then retry. initdb said:\n{output}",
        data_dir.display()
    )]
    Initdb {
        /// The data folder.
        data_dir: PathBuf,
        /// initdb's exit status.
        status: ExitStatus,
        /// What initdb printed.
        output: String,
    },

    /// The postmaster exited before accepting connections.
    #[error(
        "PostgreSQL exited during startup ({status}); see {} (its end follows):\n{tail}",
        log.display()
    )]
    Exited {
        /// The postmaster's exit status.
        status: ExitStatus,
        /// The server log.
        log: PathBuf,
        /// The end of this start's part of the log.
        tail: String,
    },

    /// The postmaster did not accept connections in time.
    #[error(
        "PostgreSQL did not accept connections on 127.0.0.1:{port} within {} s; it was \
         stopped. See {} (its end follows):\n{tail}",
        READY_TIMEOUT.as_secs(),
        log.display()
    )]
    NotReady {
        /// The port it was started on.
        port: u16,
        /// The server log.
        log: PathBuf,
        /// The end of this start's part of the log.
        tail: String,
    },

    /// A postmaster left running on the data folder would not stop.
    #[error(
        "a PostgreSQL (pid {pid}) left running on {} by an earlier run did not stop after \
         SIGINT and SIGQUIT{}; stop it (`kill -QUIT {pid}`, then `kill -KILL {pid}`) and retry",
        data_dir.display(),
        .source.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
    )]
    TakeoverFailed {
        /// The leftover postmaster.
        pid: i32,
        /// The data folder it runs on.
        data_dir: PathBuf,
        /// Why signalling it failed, if it did.
        source: Option<io::Error>,
    },

    /// Stopping our postmaster failed.
    #[error(
        "stopping PostgreSQL (pid {pid}) failed: {source}; if it still runs, `kill -QUIT {pid}`"
    )]
    Stop {
        /// Our postmaster.
        pid: u32,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

impl ClusterError {
    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ClusterError::Io {
            action,
            path,
            source,
        }
    }
}

/// A PostgreSQL cluster that we started and own; stopped on [`Cluster::stop`] or drop.
///
/// The superuser is `postgres`, authentication is `trust`, and it listens on 127.0.0.1 only,
/// with durability switched off (`fsync=off`…): it is for development and tests, never for
/// data anyone cares about.
#[derive(Debug)]
pub struct Cluster {
    port: u16,
    pid: u32,
    data_dir: PathBuf,
    /// Where the relocated cluster lives when the caller's folder was not usable.
    relocated_root: Option<PathBuf>,
    /// The caller's folder (canonical).
    dir: PathBuf,
    log_path: PathBuf,
    supervisor: Option<Supervisor>,
    /// What [`Cluster::restart`] needs to start the same server again.
    relaunch: Option<Relaunch>,
}

/// Settings of a start beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Listen on this port instead of a free one.
    pub port: Option<u16>,
    /// More server settings, as `postgres -c name=value` (`ssl=on`, …).
    pub settings: Vec<(String, String)>,
}

#[derive(Debug)]
struct Relaunch {
    bins: Binaries,
    layout: Layout,
    owner: Option<Owner>,
    settings: Vec<(String, String)>,
}

/// The thread that spawned the postmaster: it stays alive exactly as long as the postmaster,
/// because `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits.
#[derive(Debug)]
struct Supervisor {
    /// A message (or the sender's drop) asks the thread to shut the postmaster down.
    stop: mpsc::Sender<()>,
    /// Set by the thread once the postmaster has exited and been reaped.
    exited: Arc<Mutex<Option<ExitStatus>>>,
    thread: JoinHandle<io::Result<Option<ExitStatus>>>,
}

impl Cluster {
    /// Starts (creating it first if needed) the cluster kept in `dir`, on a free port.
    ///
    /// Blocking (it waits up to a minute for the server); from async code call it in
    /// `tokio::task::spawn_blocking`. `dir` is created if missing. The same `dir` finds the
    /// same data on the next start, also when it had to live elsewhere (see the module docs).
    /// The server log is appended to `dir/postgres.log`.
    pub fn start(dir: &Path) -> Result<Cluster, ClusterError> {
        Cluster::start_with(dir, &StartOptions::default())
    }

    /// [`Cluster::start`] with `options`: a port of the caller's, more settings.
    pub fn start_with(dir: &Path, options: &StartOptions) -> Result<Cluster, ClusterError> {
        let bins = Binaries::find()?;
        let owner = if is_root() {
            Some(Owner::lookup(OS_USER)?.ok_or(ClusterError::NoPostgresUser)?)
        } else {
            None
        };
        fs::create_dir_all(dir).map_err(ClusterError::io("creating", dir))?;
        let dir = fs::canonicalize(dir).map_err(ClusterError::io("resolving", dir))?;
        let layout = Layout::locate(&dir, owner.as_ref())?;
        layout.prepare(owner.as_ref())?;
        if !layout.has_cluster() {
            init_cluster(&bins, &layout, owner.as_ref())?;
        }
        take_over_leftover(&layout.pgdata)?;

        let log_path = dir.join(LOG_FILE);
        let mut attempt = 1;
        loop {
            let port = match options.port {
                Some(port) => port,
                None => {
                    free_port().map_err(ClusterError::io("finding a free port on", "127.0.0.1"))?
                }
            };
            let launched = launch(
                &bins,
                &layout,
                owner.as_ref(),
                &dir,
                &log_path,
                port,
                &options.settings,
            );
            match launched {
                Err(Launch::PortTaken(err))
                    if attempt < PORT_ATTEMPTS && options.port.is_none() =>
                {
                    tracing::info!(port, %err, "port taken before PostgreSQL could bind it; retrying");
                    attempt += 1;
                }
                Err(Launch::PortTaken(err) | Launch::Failed(err)) => return Err(err),
                Ok(mut cluster) => {
                    tracing::info!(
                        port,
                        pid = cluster.pid,
                        data_dir = %cluster.data_dir.display(),
                        log = %cluster.log_path.display(),
                        "PostgreSQL is ready"
                    );
                    cluster.relaunch = Some(Relaunch {
                        bins,
                        layout,
                        owner,
                        settings: options.settings.clone(),
                    });
                    return Ok(cluster);
                }
            }
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A libpq URI for `database` as the superuser, e.g.
    /// `postgres://postgres@127.0.0.1:5433/postgres`; diesel-async and `psql` accept it.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{DB_SUPERUSER}@127.0.0.1:{}/{}",
            self.port,
            percent_encode_segment(database)
        )
    }

    /// The cluster's data folder (`PGDATA`): `dir/pgdata`, or under the temp folder when the
    /// `postgres` OS user could not enter `dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log, `dir/postgres.log` (appended to by every start).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Shuts the server down: SIGINT (fast shutdown: running transactions are rolled back),
    /// then SIGQUIT after 10 s, SIGKILL after 5 s more. Blocks until it has exited;
    /// idempotent (later calls do nothing).
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        let Some(supervisor) = self.supervisor.take() else {
            return Ok(());
        };
        // The send fails when the thread already ended because PostgreSQL died by itself;
        // joining then just collects its exit status.
        let _ = supervisor.stop.send(());
        let pid = self.pid;
        match supervisor.thread.join() {
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

    /// Stops the server and starts it again on the same port, with the same settings (for
    /// tests of a database that goes away and comes back). Blocking, like [`Cluster::start`].
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.stop()?;
        let relaunch = self.relaunch.take().expect("a started cluster can restart");
        let launched = launch(
            &relaunch.bins,
            &relaunch.layout,
            relaunch.owner.as_ref(),
            &self.dir,
            &self.log_path,
            self.port,
            &relaunch.settings,
        );
        match launched {
            Ok(mut fresh) => {
                fresh.relaunch = Some(relaunch);
                *self = fresh;
                Ok(())
            }
            Err(Launch::PortTaken(err) | Launch::Failed(err)) => {
                self.relaunch = Some(relaunch);
                Err(err)
            }
        }
    }

    /// The uid and gid the server runs as when we are root (the `postgres` OS user): files
    /// it must read, such as a TLS key, belong to them.
    pub fn os_user(&self) -> Option<(u32, u32)> {
        self.relaunch
            .as_ref()
            .and_then(|r| r.owner.as_ref())
            .map(|o| (o.uid, o.gid))
    }

    /// Stops the server and deletes its data: the data and socket folders, and when it was
    /// relocated its folder under the temp folder and `dir/pgdata-location`. The server log
    /// stays. For tests, which otherwise leave relocated clusters behind in the temp folder.
    pub fn destroy(mut self) -> Result<(), ClusterError> {
        self.stop()?;
        let remove = |path: &Path| match fs::remove_dir_all(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ClusterError::Io {
                action: "removing",
                path: path.to_owned(),
                source: e,
            }),
            _ => Ok(()),
        };
        match &self.relocated_root {
            Some(root) => {
                remove(root)?;
                let location = self.dir.join(LOCATION_FILE);
                match fs::remove_file(&location) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(ClusterError::Io {
                            action: "removing",
                            path: location,
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
            None => {
                remove(&self.data_dir)?;
                remove(&self.dir.join("sock"))?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(%err, "could not stop the throwaway PostgreSQL");
        }
    }
}

/// The PostgreSQL programs we use.
#[derive(Debug)]
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
    /// Optional: readiness falls back to `postmaster.pid` without it.
    pg_isready: Option<PathBuf>,
}

impl Binaries {
    /// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`, then PATH.
    fn find() -> Result<Binaries, ClusterError> {
        let mut searched = Vec::new();

        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| PathBuf::from(OsStr::from_bytes(out.stdout.trim_ascii())));
        match from_pg_config {
            Some(bindir) => {
                if let Some(bins) = Self::in_dir(&bindir) {
                    return Ok(bins);
                }
                searched.push(format!("{} (pg_config --bindir)", bindir.display()));
            }
            None => searched.push("pg_config (not found or failed)".to_owned()),
        }

        // Debian installs each major version side by side; take the newest.
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        versions.sort();
        for (_, bindir) in versions.iter().rev() {
            if let Some(bins) = Self::in_dir(bindir) {
                return Ok(bins);
            }
        }
        searched.push("/usr/lib/postgresql/*/bin".to_owned());

        if let (Some(initdb), Some(postgres)) = (on_path("initdb"), on_path("postgres")) {
            return Ok(Binaries {
                initdb,
                postgres,
                pg_isready: on_path("pg_isready"),
            });
        }
        searched.push("PATH".to_owned());
        Err(ClusterError::BinariesNotFound {
            searched: searched.join(", "),
        })
    }

    fn in_dir(bindir: &Path) -> Option<Binaries> {
        let initdb = bindir.join("initdb");
        let postgres = bindir.join("postgres");
        let pg_isready = bindir.join("pg_isready");
        (is_executable(&initdb) && is_executable(&postgres)).then(|| Binaries {
            initdb,
            postgres,
            pg_isready: is_executable(&pg_isready).then_some(pg_isready),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// The OS user PostgreSQL runs as when we are root.
#[derive(Debug, Clone)]
struct Owner {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl Owner {
    fn lookup(name: &str) -> Result<Option<Owner>, ClusterError> {
        let c_name = CString::new(name).expect("user name has no NUL");
        let mut buf = vec![0 as libc::c_char; 4096];
        loop {
            // SAFETY: an all-zero `passwd` is a valid value (null pointers, zero ids); it is
            // only read after getpwnam_r filled it.
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call and `buf.len()` is the buffer's real
            // size; getpwnam_r (unlike getpwnam) keeps no static state, so it is thread-safe.
            let rc = unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            };
            if rc == libc::ERANGE && buf.len() < 1 << 20 {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 {
                return Err(ClusterError::Io {
                    action: "looking up the OS user",
                    path: PathBuf::from(name),
                    source: io::Error::from_raw_os_error(rc),
                });
            }
            if result.is_null() {
                return Ok(None);
            }
            // SAFETY: on success `pw_dir` points to a NUL-terminated string inside `buf`,
            // which is still alive here.
            let home = unsafe { CStr::from_ptr(pwd.pw_dir) };
            return Ok(Some(Owner {
                uid: pwd.pw_uid,
                gid: pwd.pw_gid,
                home: PathBuf::from(OsStr::from_bytes(home.to_bytes())),
            }));
        }
    }

    /// Whether this user (with only its primary group: std's `Command::uid` drops the
    /// supplementary groups) may pass through the folder. ACLs are not considered.
    fn can_search(&self, md: &fs::Metadata) -> bool {
        let mode = md.mode();
        if md.uid() == self.uid {
            mode & 0o100 != 0
        } else if md.gid() == self.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }

    /// The top-most folder of `path` (itself included) this user cannot pass through.
    fn blocked_at(&self, path: &Path) -> Option<PathBuf> {
        let mut ancestors: Vec<&Path> = path.ancestors().collect();
        ancestors.reverse();
        ancestors
            .into_iter()
            .find_map(|folder| match fs::metadata(folder) {
                Ok(md) if self.can_search(&md) => None,
                _ => Some(folder.to_owned()),
            })
    }

    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(ClusterError::io("handing to the postgres OS user", path))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where the cluster's folders are.
#[derive(Debug)]
struct Layout {
    /// The caller's folder, or the relocated folder under the temp folder.
    root: PathBuf,
    pgdata: PathBuf,
    sock: PathBuf,
    relocated: bool,
}

impl Layout {
    fn at(root: PathBuf, relocated: bool) -> Layout {
        Layout {
            pgdata: root.join("pgdata"),
            sock: root.join("sock"),
            root,
            relocated,
        }
    }

    fn has_cluster(&self) -> bool {
        self.pgdata.join("PG_VERSION").is_file()
    }

    /// Decides where the cluster of `dir` lives (see the module docs).
    fn locate(dir: &Path, owner: Option<&Owner>) -> Result<Layout, ClusterError> {
        let Some(owner) = owner else {
            // Not root: PostgreSQL runs as us, and we can evidently enter `dir`.
            return Ok(Layout::at(dir.to_owned(), false));
        };
        let location_file = dir.join(LOCATION_FILE);
        match fs::read(&location_file) {
            Ok(bytes) => {
                // An earlier start relocated this cluster: its data is there.
                let first_line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
                let pgdata = PathBuf::from(OsStr::from_bytes(first_line));
                let root = match pgdata.parent() {
                    Some(root) if pgdata.is_absolute() && pgdata.ends_with("pgdata") => root,
                    _ => {
                        return Err(ClusterError::Io {
                            action: "reading (expected the absolute path of a `pgdata` folder; \
                                     delete the file to start afresh)",
                            path: location_file,
                            source: io::Error::from(io::ErrorKind::InvalidData),
                        });
                    }
                };
                if let Some(blocked) = owner.blocked_at(root.parent().unwrap_or(root)) {
                    return Err(ClusterError::Inaccessible {
                        folder: blocked.clone(),
                        dir: dir.to_owned(),
                        fallback_folder: blocked,
                    });
                }
                prepare_relocated_root(root, dir, owner)?;
                return Ok(Layout::at(root.to_owned(), true));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ClusterError::Io {
                    action: "reading",
                    path: location_file,
                    source: e,
                });
            }
        }
        let Some(blocked) = owner.blocked_at(dir) else {
            return Ok(Layout::at(dir.to_owned(), false));
        };

        let tmp = std::env::temp_dir();
        let tmp =
            fs::canonicalize(&tmp).map_err(ClusterError::io("resolving the temp folder", tmp))?;
        if let Some(fallback_folder) = owner.blocked_at(&tmp) {
            return Err(ClusterError::Inaccessible {
                folder: blocked,
                dir: dir.to_owned(),
                fallback_folder,
            });
        }
        let root = tmp.join(format!(
            "{FALLBACK_PREFIX}{:016x}",
            fnv1a64(dir.as_os_str().as_bytes())
        ));
        prepare_relocated_root(&root, dir, owner)?;
        let layout = Layout::at(root, true);
        let mut note = layout.pgdata.as_os_str().as_bytes().to_vec();
        note.extend_from_slice(
            b"\n\nThe PostgreSQL cluster of this folder lives at the path above: the `postgres` OS \
              user\ncannot enter this folder, and PostgreSQL refuses to run as root.\n",
        );
        fs::write(&location_file, note).map_err(ClusterError::io("writing", &location_file))?;
        tracing::info!(
            blocked = %blocked.display(),
            location = %layout.root.display(),
            "the postgres OS user cannot enter the cluster folder; the cluster lives in the temp folder instead"
        );
        sweep_orphans(&tmp, &layout.root);
        Ok(layout)
    }

    /// Creates the data and socket folders, owned by the user PostgreSQL runs as.
    fn prepare(&self, owner: Option<&Owner>) -> Result<(), ClusterError> {
        // A data folder from an earlier cluster stays as initdb left it; an empty or missing
        // one is (re)made ours with the 0700 PostgreSQL insists on.
        let folders = [
            (&self.pgdata, 0o700, !self.has_cluster()),
            (&self.sock, 0o755, true),
        ];
        for (path, mode, fix) in folders {
            match DirBuilder::new().mode(mode).create(path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(ClusterError::Io {
                        action: "creating",
                        path: path.clone(),
                        source: e,
                    });
                }
                _ => {}
            }
            if fix {
                if let Some(owner) = owner {
                    owner.chown(path)?;
                }
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .map_err(ClusterError::io("setting permissions of", path))?;
            }
        }
        Ok(())
    }
}

/// Creates (or checks) the folder under the temp folder that holds a relocated cluster.
fn prepare_relocated_root(root: &Path, origin: &Path, owner: &Owner) -> Result<(), ClusterError> {
    // The temp folder is world-writable: never use a folder (or a symlink) someone else made.
    match fs::symlink_metadata(root) {
        Ok(md) if md.is_dir() && (md.uid() == owner.uid || md.uid() == 0) => {}
        Ok(md) => {
            return Err(ClusterError::ForeignFolder {
                path: root.to_owned(),
                owner_uid: md.uid(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if origin.join(LOCATION_FILE).exists() {
                tracing::warn!(
                    location = %root.display(),
                    "the relocated cluster's folder is gone (temp folder cleaned?); creating an empty cluster"
                );
            }
            DirBuilder::new()
                .mode(0o755)
                .create(root)
                .map_err(ClusterError::io("creating", root))?;
        }
        Err(e) => {
            return Err(ClusterError::Io {
                action: "inspecting",
                path: root.to_owned(),
                source: e,
            });
        }
    }
    owner.chown(root)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))
        .map_err(ClusterError::io("setting permissions of", root))?;
    let origin_file = root.join(ORIGIN_FILE);
    fs::write(&origin_file, origin.as_os_str().as_bytes())
        .map_err(ClusterError::io("writing", &origin_file))
}

/// Removes relocated clusters whose caller's folder no longer exists (test temp folders) and
/// whose server no longer runs, so that test runs do not fill the temp folder. Best effort.
fn sweep_orphans(tmp: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .as_bytes()
            .starts_with(FALLBACK_PREFIX.as_bytes());
        if !ours || path == keep || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // No origin file: being created right now, or not ours. Leave it.
        let Ok(origin) = fs::read(path.join(ORIGIN_FILE)) else {
            continue;
        };
        let origin = Path::new(OsStr::from_bytes(&origin));
        if origin.as_os_str().is_empty()
            || origin.exists()
            || running_postmaster(&path.join("pgdata")).is_some()
        {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(
                removed = %path.display(),
                origin = %origin.display(),
                "removed a relocated PostgreSQL cluster whose folder is gone"
            ),
            Err(err) => {
                tracing::debug!(path = %path.display(), %err, "could not remove an orphaned cluster")
            }
        }
    }
}

/// FNV-1a: a stable (across Rust versions, unlike `DefaultHasher`) name for a folder.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A command that runs as the cluster's owner when we are root.
fn owner_command(program: &Path, owner: Option<&Owner>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    // The child's own working folder must be enterable by it (ours may be /root).
    cmd.current_dir(cwd).stdin(Stdio::null());
    if let Some(owner) = owner {
        // std calls setgroups(0) (dropping root's supplementary groups), setgid, then setuid
        // in the child before exec, and only then runs `pre_exec` closures.
        cmd.uid(owner.uid)
            .gid(owner.gid)
            .env("HOME", &owner.home)
            .env("USER", OS_USER)
            .env("LOGNAME", OS_USER);
    }
    cmd
}

fn init_cluster(
    bins: &Binaries,
    layout: &Layout,
    owner: Option<&Owner>,
) -> Result<(), ClusterError> {
    tracing::info!(data_dir = %layout.pgdata.display(), "creating a PostgreSQL cluster (initdb)");
    let output = owner_command(&bins.initdb, owner, &layout.root)
        .arg("-D")
        .arg(&layout.pgdata)
        .args([
            "-U",
            DB_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .map_err(ClusterError::io("running", &bins.initdb))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(ClusterError::Initdb {
            data_dir: layout.pgdata.clone(),
            status: output.status,
            output: text,
        });
    }
    Ok(())
}

/// The pid in `pgdata/postmaster.pid` if that process is alive (a zombie counts as dead).
fn running_postmaster(pgdata: &Path) -> Option<i32> {
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

fn is_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // A zombie still "exists" until its parent reaps it, which may be never when that parent
    // is an init that does not reap.
    exists && !is_zombie(pid)
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

fn signal(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions; callers make sure `pid` is the process
    // they mean (a child not yet reaped, or a checked postmaster).
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Shuts down a postmaster that still runs on `pgdata` (an earlier run of ours still shutting
/// down after its PDEATHSIG, or one started by other means), so that we can start our own.
fn take_over_leftover(pgdata: &Path) -> Result<(), ClusterError> {
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
    for (sig, grace) in [(libc::SIGINT, TAKEOVER_GRACE), (libc::SIGQUIT, QUIT_GRACE)] {
        match signal(pid, sig) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) => return Err(failed(Some(e))),
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

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
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

enum Launch {
    /// The postmaster could not bind its port (someone took it after we probed it).
    PortTaken(ClusterError),
    Failed(ClusterError),
}

impl From<ClusterError> for Launch {
    fn from(err: ClusterError) -> Self {
        Launch::Failed(err)
    }
}

fn launch(
    bins: &Binaries,
    layout: &Layout,
    owner: Option<&Owner>,
    dir: &Path,
    log_path: &Path,
    port: u16,
    settings: &[(String, String)],
) -> Result<Cluster, Launch> {
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
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe syscalls prctl and getppid; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Shut down (fast) when the thread that spawned us exits, i.e. when our process
            // dies without stopping us. Set after std's setuid: a credential change clears it.
            // (Linux only; elsewhere a killed parent leaves the server to the takeover.)
            #[cfg(any(target_os = "linux", target_os = "android"))]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody will signal us; do not start at all.
            if libc::getppid() != parent as libc::pid_t {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
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
    let mut cluster = Cluster {
        port,
        pid,
        data_dir: layout.pgdata.clone(),
        relocated_root: layout.relocated.then(|| layout.root.clone()),
        dir: dir.to_owned(),
        log_path: log_path.to_owned(),
        supervisor: Some(Supervisor {
            stop: stop_tx,
            exited,
            thread,
        }),
        relaunch: None,
    };
    match wait_ready(&cluster, bins, log_start) {
        Ok(()) => Ok(cluster),
        Err(err) => {
            // Do not leave a half-started server behind (stop is a no-op when it exited).
            let _ = cluster.stop();
            Err(err)
        }
    }
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
    let pid = child.id() as i32;
    for (sig, grace) in [(libc::SIGINT, STOP_GRACE), (libc::SIGQUIT, QUIT_GRACE)] {
        signal(pid, sig)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(pid, "PostgreSQL did not exit in time; escalating");
    }
    child.kill()?;
    child.wait()
}

fn wait_ready(cluster: &Cluster, bins: &Binaries, log_start: u64) -> Result<(), Launch> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, cluster.port));
    let exited = &cluster
        .supervisor
        .as_ref()
        .expect("a started cluster has a supervisor")
        .exited;
    loop {
        let status = *exited.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(status) = status {
            let tail = log_tail(&cluster.log_path, log_start);
            let port_taken = tail.contains("could not create any TCP/IP sockets");
            let err = ClusterError::Exited {
                status,
                log: cluster.log_path.clone(),
                tail,
            };
            return Err(if port_taken {
                Launch::PortTaken(err)
            } else {
                Launch::Failed(err)
            });
        }
        // A TCP accept only says the socket is bound; the protocol check says the server
        // takes sessions (not "the database system is starting up").
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            && accepts_sessions(cluster, bins)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let tail = log_tail(&cluster.log_path, log_start);
            return Err(Launch::Failed(ClusterError::NotReady {
                port: cluster.port,
                log: cluster.log_path.clone(),
                tail,
            }));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn accepts_sessions(cluster: &Cluster, bins: &Binaries) -> bool {
    match &bins.pg_isready {
        Some(pg_isready) => Command::new(pg_isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &cluster.port.to_string()])
            .args(["-U", DB_SUPERUSER, "-d", "postgres", "-t", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success()),
        // Line 8 of postmaster.pid is the postmaster's status (what `pg_ctl -w` waits for).
        None => fs::read_to_string(cluster.data_dir.join("postmaster.pid")).is_ok_and(|text| {
            let lines: Vec<&str> = text.lines().collect();
            lines
                .first()
                .is_some_and(|pid| pid.trim() == cluster.pid.to_string())
                && lines.get(7).is_some_and(|status| status.trim() == "ready")
        }),
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

/// Percent-encodes a URI path segment (everything but RFC 3986 unreserved characters).
fn percent_encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::fixture::{self, CRM_SCHEMA, DEMO_USER_ID, DEMO_WORKSPACE_ID};
    use diesel::QueryableByName;
    use diesel::sql_types::BigInt;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

    /// Set in the child process of `postgres_dies_with_the_process_that_started_it`.
    const HELPER_DIR_ENV: &str = "EXPORTD_TEST_CLUSTER_HELPER_DIR";

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
        diesel::sql_query(sql)
            .get_result::<Count>(conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .n
    }

    async fn start(dir: &Path) -> Cluster {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || Cluster::start(&dir))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.unwrap()
    }

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

    #[tokio::test(flavor = "multi_thread")]
    async fn starts_seeds_and_keeps_its_data_across_restarts() {
        // A folder only its owner may enter, like `mktemp -d` makes (tempfile 3.27 makes
        // 0777 & !umask): as root this exercises the relocation under the temp folder.
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        let mut cluster = start(&dir).await;
        let data_dir = cluster.data_dir().to_owned();
        if is_root() {
            assert!(
                !data_dir.starts_with(&dir),
                "{} should be relocated",
                data_dir.display()
            );
            let location = fs::read(dir.join(LOCATION_FILE)).unwrap();
            assert!(location.starts_with(data_dir.as_os_str().as_bytes()));
            let owner = Owner::lookup(OS_USER).unwrap().unwrap();
            assert_eq!(fs::metadata(&data_dir).unwrap().uid(), owner.uid);
        } else {
            assert_eq!(data_dir, dir.join("pgdata"));
        }
        assert!(
            cluster
                .url("postgres")
                .starts_with("postgres://postgres@127.0.0.1:")
        );

        let mut conn = AsyncPgConnection::establish(&cluster.url("postgres"))
            .await
            .unwrap();
        conn.batch_execute(CRM_SCHEMA).await.unwrap();
        conn.batch_execute(CRM_SCHEMA).await.unwrap(); // idempotent

        let demo = fixture::seed_demo(&mut conn, 1_000).await.unwrap();
        assert_eq!(
            (demo.workspace_id, demo.user_id, demo.seeded),
            (DEMO_WORKSPACE_ID, DEMO_USER_ID, true)
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT count(*) AS n FROM workspaces WHERE notifications_enabled"
            )
            .await,
            1
        );
        assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM users").await, 2);
        assert_eq!(
            count(
                &mut conn,
                "SELECT count(*) AS n FROM users WHERE email IS NULL"
            )
            .await,
            1
        );
        assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM tags").await, 10);
        assert_eq!(
            count(&mut conn, "SELECT count(*) AS n FROM contacts").await,
            1_000
        );
        assert_eq!(
            count(&mut conn, "SELECT count(DISTINCT email) AS n FROM contacts").await,
            1_000
        );
        let with_custom = count(
            &mut conn,
            "SELECT count(*) AS n FROM contacts WHERE custom_fields <> '{}'",
        )
        .await;
        assert!(
            (200..=400).contains(&with_custom),
            "{with_custom} contacts with custom fields"
        );
        let keys = count(
            &mut conn,
            "SELECT count(DISTINCT k) AS n FROM contacts, jsonb_object_keys(custom_fields) k",
        )
        .await;
        assert_eq!(keys, 20);
        let max_keys = count(
            &mut conn,
            "SELECT max((SELECT count(*) FROM jsonb_object_keys(custom_fields))) AS n FROM contacts",
        )
        .await;
        assert_eq!(max_keys, 5);
        let unsubscribed = count(
            &mut conn,
            "SELECT count(*) AS n FROM contacts WHERE is_unsubscribed",
        )
        .await;
        assert!(
            (50..=150).contains(&unsubscribed),
            "{unsubscribed} unsubscribed"
        );
        for (what, sql) in [
            (
                "NULL phones",
                "SELECT count(*) AS n FROM contacts WHERE phone IS NULL",
            ),
            (
                "NULL companies",
                "SELECT count(*) AS n FROM contacts WHERE company IS NULL",
            ),
            (
                "notes with a newline",
                "SELECT count(*) AS n FROM contacts WHERE notes LIKE E'%\\n%'",
            ),
            (
                "notes with a quote",
                "SELECT count(*) AS n FROM contacts WHERE notes LIKE '%\"%'",
            ),
            (
                "formula-like notes",
                "SELECT count(*) AS n FROM contacts WHERE notes IN ('=SUM(A1)', '@cmd', '-5')",
            ),
            (
                "non-ASCII names",
                "SELECT count(*) AS n FROM contacts WHERE first_name = 'Zoë' OR last_name = 'Ølsen'",
            ),
            (
                "nested custom fields",
                "SELECT count(*) AS n FROM contacts WHERE jsonb_typeof(custom_fields->'address') = 'object'",
            ),
            (
                "JSON nulls",
                "SELECT count(*) AS n FROM contacts WHERE custom_fields->'referrer' = 'null'::jsonb",
            ),
            (
                "sub-second timestamps",
                "SELECT count(*) AS n FROM contacts WHERE extract(microseconds FROM created_at)::bigint % 1000000 <> 0",
            ),
        ] {
            assert!(count(&mut conn, sql).await > 0, "no {what}");
        }
        let span_days = count(
            &mut conn,
            "SELECT extract(day FROM max(created_at) - min(created_at))::bigint AS n FROM contacts",
        )
        .await;
        assert!(span_days > 300, "created_at spans {span_days} days");
        let tagged = count(&mut conn, "SELECT count(*) AS n FROM contact_tags").await;
        assert!((1_000..=2_000).contains(&tagged), "{tagged} contact_tags");
        let most_tags =
            count(&mut conn, "SELECT max(n) AS n FROM (SELECT count(*) AS n FROM contact_tags GROUP BY contact_id) t").await;
        assert_eq!(most_tags, 3);

        // A second seed touches nothing, whatever the count says.
        let again = fixture::seed_demo(&mut conn, 5_000).await.unwrap();
        assert!(!again.seeded);
        assert_eq!(
            count(&mut conn, "SELECT count(*) AS n FROM contacts").await,
            1_000
        );
        assert_eq!(
            count(&mut conn, "SELECT count(*) AS n FROM contact_tags").await,
            tagged
        );
        drop(conn);

        let pid = cluster.pid() as i32;
        let mut cluster = blocking(move || {
            cluster.stop().unwrap();
            cluster.stop().unwrap(); // idempotent
            cluster
        })
        .await;
        assert!(!is_alive(pid), "the postmaster still runs after stop");
        assert!(!data_dir.join("postmaster.pid").exists());
        drop(cluster.stop()); // and still after that

        // The same folder finds the same cluster and data.
        let restarted = start(&dir).await;
        assert_eq!(restarted.data_dir(), data_dir);
        let mut conn = AsyncPgConnection::establish(&restarted.url("postgres"))
            .await
            .unwrap();
        assert_eq!(
            count(&mut conn, "SELECT count(*) AS n FROM contacts").await,
            1_000
        );
        drop(conn);
        blocking(move || restarted.destroy().unwrap()).await;
        assert!(!data_dir.exists());
    }

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
    fn finds_the_folder_that_blocks_the_postgres_user() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        let inner = dir.join("a/b");
        fs::create_dir_all(&inner).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        // Some other user: neither owner nor group of anything here.
        let other = Owner {
            uid: 54_321,
            gid: 54_321,
            home: PathBuf::from("/"),
        };
        assert_eq!(other.blocked_at(&inner), Some(dir.clone()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(other.blocked_at(&inner), None);
        // The owner's bits count for the owner, even when "others" may pass.
        let md = fs::metadata(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o011)).unwrap();
        let owner = Owner {
            uid: md.uid(),
            gid: 54_321,
            home: PathBuf::from("/"),
        };
        assert!(!owner.can_search(&fs::metadata(&dir).unwrap()));
    }

    #[test]
    fn sweeps_only_relocated_clusters_whose_folder_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp = fs::canonicalize(tmp.path()).unwrap();
        let make = |name: &str, origin: Option<&Path>| {
            let path = tmp.join(name);
            fs::create_dir_all(path.join("pgdata")).unwrap();
            if let Some(origin) = origin {
                fs::write(path.join(ORIGIN_FILE), origin.as_os_str().as_bytes()).unwrap();
            }
            path
        };
        let gone = make(
            "exportd-pg-0000000000000001",
            Some(Path::new("/nonexistent/exportd-test")),
        );
        let alive_origin = make("exportd-pg-0000000000000002", Some(&tmp));
        let no_origin = make("exportd-pg-0000000000000003", None);
        let running = make(
            "exportd-pg-0000000000000004",
            Some(Path::new("/nonexistent/exportd-test")),
        );
        // A live pid (ours) in its postmaster.pid: a server still shutting down.
        fs::write(
            running.join("pgdata/postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let kept = make(
            "exportd-pg-0000000000000005",
            Some(Path::new("/nonexistent/exportd-test")),
        );
        let foreign = make(
            "something-else",
            Some(Path::new("/nonexistent/exportd-test")),
        );
        sweep_orphans(&tmp, &kept);
        assert!(!gone.exists());
        for path in [&alive_origin, &no_origin, &running, &kept, &foreign] {
            assert!(path.exists(), "{} was removed", path.display());
        }
    }

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

    #[test]
    fn socket_folder_and_url_are_safe() {
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
        assert_eq!(percent_encode_segment("export_test-1"), "export_test-1");
        assert_eq!(percent_encode_segment("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(fnv1a64(b"/tmp/x"), fnv1a64(b"/tmp/x"));
        assert_ne!(fnv1a64(b"/tmp/x"), fnv1a64(b"/tmp/y"));
    }

    /// `cargo test -- --ignored seed_a_million --nocapture`: the seed must stay well under two
    /// minutes on 2 cores.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "slow: seeds 1,000,000 contacts"]
    async fn seed_a_million_contacts() {
        let tmp = tempfile::tempdir().unwrap();
        let cluster = start(tmp.path()).await;
        let mut conn = AsyncPgConnection::establish(&cluster.url("postgres"))
            .await
            .unwrap();
        conn.batch_execute(CRM_SCHEMA).await.unwrap();
        let started = Instant::now();
        let demo = fixture::seed_demo(&mut conn, 1_000_000).await.unwrap();
        let took = started.elapsed();
        assert!(demo.seeded);
        assert_eq!(
            count(&mut conn, "SELECT count(*) AS n FROM contacts").await,
            1_000_000
        );
        let tags = count(&mut conn, "SELECT count(*) AS n FROM contact_tags").await;
        println!(
            "seeded 1,000,000 contacts and {tags} contact_tags in {:.1} s",
            took.as_secs_f64()
        );
        assert!(took < Duration::from_secs(120), "seeding took {took:?}");
        drop(conn);
        blocking(move || cluster.destroy().unwrap()).await;
    }
}
