//! Where a cluster's folders are: `<dir>/pgdata` (the data) and `<dir>/sock` (the Unix socket)
//! in the caller's folder `<dir>`, made and owned by the user PostgreSQL runs as.
//!
//! As root, PostgreSQL runs as the `postgres` OS user, which must be able to pass through
//! every folder above its data folder. When it cannot enter `<dir>` (`tempfile::tempdir()`
//! and `mktemp -d` make 0700 folders), the cluster lives under the temp folder instead, in
//! `exportd-pg-<hash of dir>`, and `<dir>/pgdata-location` records where, so that the next
//! start on the same folder finds the same data. An `origin` file there names `<dir>`: a
//! relocated cluster whose folder is gone is swept away by a later relocation.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::ClusterError;
use super::os_user::Owner;
use super::takeover::running_postmaster;

/// In the caller's folder when the cluster had to live elsewhere: the path of its data folder.
pub(super) const LOCATION_FILE: &str = "pgdata-location";
/// In a relocated cluster's folder: the caller's folder it belongs to (for clean-up).
const ORIGIN_FILE: &str = "origin";
const FALLBACK_PREFIX: &str = "exportd-pg-";

/// Where the cluster's folders are.
#[derive(Debug)]
pub(super) struct Layout {
    /// The caller's folder, or the relocated folder under the temp folder.
    pub(super) root: PathBuf,
    pub(super) pgdata: PathBuf,
    pub(super) sock: PathBuf,
    pub(super) relocated: bool,
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

    pub(super) fn has_cluster(&self) -> bool {
        self.pgdata.join("PG_VERSION").is_file()
    }

    /// Decides where the cluster of `dir` lives (see the module docs).
    pub(super) fn locate(dir: &Path, owner: Option<&Owner>) -> Result<Layout, ClusterError> {
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
    pub(super) fn prepare(&self, owner: Option<&Owner>) -> Result<(), ClusterError> {
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
                    hand_over(owner, path)?;
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
    hand_over(owner, root)?;
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

fn hand_over(owner: &Owner, path: &Path) -> Result<(), ClusterError> {
    owner
        .chown(path)
        .map_err(ClusterError::io("handing to the postgres OS user", path))
}

/// FNV-1a: a stable (across Rust versions, unlike `DefaultHasher`) name for a folder.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn relocated_folder_names_are_stable() {
        assert_eq!(fnv1a64(b"/tmp/x"), fnv1a64(b"/tmp/x"));
        assert_ne!(fnv1a64(b"/tmp/x"), fnv1a64(b"/tmp/y"));
    }
}
