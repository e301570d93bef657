//! Who PostgreSQL runs as: the `postgres` OS user when we are root (PostgreSQL refuses to run
//! as root), and running its programs as that user; as any other user, PostgreSQL runs as us.
//! Also the database superuser that `initdb` creates and that we connect as.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The OS user PostgreSQL runs as when we are root (Debian's package creates it).
pub(super) const OS_USER: &str = "postgres";
/// The database superuser `initdb` creates; `Cluster::url` connects as it.
pub(super) const DB_SUPERUSER: &str = "postgres";

/// Whether we run as root (effective uid 0), when PostgreSQL must run as [`OS_USER`].
pub(super) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The OS user PostgreSQL runs as when we are root.
#[derive(Debug, Clone)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) home: PathBuf,
}

impl Owner {
    /// The user called `name` from the user database (`getpwnam_r`), or `None` when there is
    /// no such user.
    pub(super) fn lookup(name: &str) -> io::Result<Option<Owner>> {
        let user = nix::unistd::User::from_name(name)?;
        Ok(user.map(|user| Owner {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }))
    }

    /// Whether this user (with only its primary group: std's `Command::uid` drops the
    /// supplementary groups) may pass through the folder. ACLs are not considered.
    pub(super) fn can_search(&self, md: &fs::Metadata) -> bool {
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
    pub(super) fn blocked_at(&self, path: &Path) -> Option<PathBuf> {
        let mut ancestors: Vec<&Path> = path.ancestors().collect();
        ancestors.reverse();
        ancestors
            .into_iter()
            .find_map(|folder| match fs::metadata(folder) {
                Ok(md) if self.can_search(&md) => None,
                _ => Some(folder.to_owned()),
            })
    }

    /// Hands `path` to this user (and its primary group).
    pub(super) fn chown(&self, path: &Path) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
    }
}

/// A command that runs as the cluster's owner when we are root.
pub(super) fn owner_command(program: &Path, owner: Option<&Owner>, cwd: &Path) -> Command {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn looks_up_users_by_name() {
        let root = Owner::lookup("root")
            .unwrap()
            .expect("root is in the user database");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.home.is_absolute());
        assert!(Owner::lookup("exportd-no-such-user").unwrap().is_none());
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
}
