//! [`ClusterError`]: why a cluster could not be started or stopped, with what to do about it.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use super::os_user::OS_USER;
use super::ready::READY_TIMEOUT;

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
    pub(super) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ClusterError::Io {
            action,
            path,
            source,
        }
    }
}
