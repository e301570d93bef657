//! Writing a download into place atomically: a temporary file beside the target, renamed
//! over it only once every byte is written and verified.

use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempPath;

/// Where a download goes: `output` itself, or the server's file name inside `output` when
/// it is an existing directory.
pub fn target_path(output: &Path, server_filename: &str) -> PathBuf {
    if !output.is_dir() {
        return output.to_owned();
    }
    // Only the last component of what the server says, and never `.` or `..`.
    let name = Path::new(server_filename)
        .file_name()
        .filter(|name| !name.is_empty())
        .unwrap_or("export.csv".as_ref());
    output.join(name)
}

/// A temporary file in the target's directory; deleted on drop unless committed.
pub struct PendingFile {
    file: tokio::fs::File,
    path: TempPath,
    target: PathBuf,
}

impl PendingFile {
    /// Creates `.<name>.<random>.part` next to `target` (owner-only permissions).
    pub fn create(target: &Path) -> io::Result<Self> {
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the output names no file")
        })?;
        let (file, path) = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".part")
            .tempfile_in(dir)?
            .into_parts();
        Ok(Self {
            file: tokio::fs::File::from_std(file),
            path,
            target: target.to_owned(),
        })
    }

    pub fn file(&mut self) -> &mut tokio::fs::File {
        &mut self.file
    }

    /// Syncs the data to disk and renames the file over the target.
    pub async fn commit(self) -> io::Result<PathBuf> {
        self.file.sync_all().await?;
        drop(self.file);
        self.path.persist(&self.target).map_err(|e| e.error)?;
        Ok(self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn a_directory_gets_the_server_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mine.csv");
        assert_eq!(target_path(&file, "theirs.csv"), file);
        assert_eq!(
            target_path(dir.path(), "theirs.csv"),
            dir.path().join("theirs.csv")
        );
        assert_eq!(
            target_path(dir.path(), "../../etc/x.csv"),
            dir.path().join("x.csv")
        );
        assert_eq!(target_path(dir.path(), ".."), dir.path().join("export.csv"));
        assert_eq!(target_path(dir.path(), ""), dir.path().join("export.csv"));
    }

    #[tokio::test]
    async fn commit_renames_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.csv");

        let mut pending = PendingFile::create(&target).unwrap();
        pending.file().write_all(b"partial").await.unwrap();
        drop(pending);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left behind"
        );

        std::fs::write(&target, b"old").unwrap();
        let mut pending = PendingFile::create(&target).unwrap();
        pending.file().write_all(b"new").await.unwrap();
        pending.file().flush().await.unwrap();
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"old",
            "target untouched until commit"
        );
        assert_eq!(pending.commit().await.unwrap(), target);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
