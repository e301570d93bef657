//! Finding the PostgreSQL server programs (`initdb`, `postgres`, and `pg_isready` when there
//! is one): `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`, then PATH.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::ClusterError;

/// The PostgreSQL programs we use.
#[derive(Debug)]
pub(super) struct Binaries {
    pub(super) initdb: PathBuf,
    pub(super) postgres: PathBuf,
    /// Optional: readiness falls back to `postmaster.pid` without it.
    pub(super) pg_isready: Option<PathBuf>,
}

impl Binaries {
    /// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`, then PATH.
    pub(super) fn find() -> Result<Binaries, ClusterError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_counts_with_executable_initdb_and_postgres() {
        let tmp = tempfile::tempdir().unwrap();
        let bindir = tmp.path();
        let make = |name: &str, mode: u32| {
            let path = bindir.join(name);
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        };
        make("initdb", 0o755);
        assert!(Binaries::in_dir(bindir).is_none(), "no postgres yet");
        make("postgres", 0o644);
        assert!(
            Binaries::in_dir(bindir).is_none(),
            "postgres is not executable"
        );
        make("postgres", 0o755);
        make("pg_isready", 0o644);
        let bins = Binaries::in_dir(bindir).unwrap();
        assert_eq!(bins.initdb, bindir.join("initdb"));
        assert_eq!(bins.postgres, bindir.join("postgres"));
        assert_eq!(bins.pg_isready, None, "pg_isready is optional");
        make("pg_isready", 0o755);
        let bins = Binaries::in_dir(bindir).unwrap();
        assert_eq!(bins.pg_isready, Some(bindir.join("pg_isready")));
    }
}
