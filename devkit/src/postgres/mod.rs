//! A throwaway PostgreSQL cluster started from the machine's own binaries: the database of
//! `exportd dev` and of `exportd-bench`, and the private server of the tests.
//!
//! PostgreSQL refuses to run as root, and the machines this runs on often are root:
//! containers and CI jobs run as root, and so do many developer machines. So, as root,
//! `initdb` and `postgres` run as the `postgres` OS user, with their folders owned by it; as
//! any other user, they run as that user. Every folder above the cluster must be enterable by
//! the `postgres` user; when the caller's folder is not (`tempfile::tempdir()` and `mktemp -d`
//! make 0700 folders), the cluster lives under the temp folder instead and
//! `<dir>/pgdata-location` records where, so the next start on the same folder finds the same
//! data.
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
//!
//! The parts, each in its module: finding the programs (`binaries`), the OS user and running
//! commands as it (`os_user`), the folders and their relocation (`layout`), creating the
//! cluster (`initdb`), a leftover postmaster (`takeover`), launching and stopping ours under
//! its supervisor thread (`supervise`), and waiting until it takes sessions (`ready`).

mod binaries;
mod error;
mod initdb;
mod layout;
mod os_user;
mod ready;
mod supervise;
mod takeover;

pub use error::ClusterError;

use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use binaries::Binaries;
use initdb::init_cluster;
use layout::{LOCATION_FILE, Layout};
use os_user::{DB_SUPERUSER, OS_USER, Owner, is_root};
use supervise::{Launch, Supervisor};
use takeover::take_over_leftover;

/// Another process may grab the port between our probe and the postmaster's bind.
const PORT_ATTEMPTS: u32 = 3;
const LOG_FILE: &str = "postgres.log";

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
            let owner = Owner::lookup(OS_USER)
                .map_err(ClusterError::io("looking up the OS user", OS_USER))?;
            Some(owner.ok_or(ClusterError::NoPostgresUser)?)
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
        match self.supervisor.take() {
            Some(supervisor) => supervisor.stop(),
            None => Ok(()),
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

/// [`supervise::launch`], as a [`Cluster`] of the caller's folder `dir`.
fn launch(
    bins: &Binaries,
    layout: &Layout,
    owner: Option<&Owner>,
    dir: &Path,
    log_path: &Path,
    port: u16,
    settings: &[(String, String)],
) -> Result<Cluster, Launch> {
    let supervisor = supervise::launch(bins, layout, owner, log_path, port, settings)?;
    Ok(Cluster {
        port,
        pid: supervisor.pid(),
        data_dir: layout.pgdata.clone(),
        relocated_root: layout.relocated.then(|| layout.root.clone()),
        dir: dir.to_owned(),
        log_path: log_path.to_owned(),
        supervisor: Some(supervisor),
        relaunch: None,
    })
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
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
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

    use super::*;
    use crate::fixture::{self, CRM_SCHEMA, DEMO_USER_ID, DEMO_WORKSPACE_ID};
    use crate::postgres::takeover::is_alive;
    use crate::testing::{blocking, count, start};

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

    #[test]
    fn url_encodes_the_database_name() {
        assert_eq!(percent_encode_segment("export_test-1"), "export_test-1");
        assert_eq!(percent_encode_segment("a b/é"), "a%20b%2F%C3%A9");
    }
}
