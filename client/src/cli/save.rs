//! Writing a byte range into place atomically: a temporary file beside the target, renamed
//! over it only once every byte is written. A target that exists and is not a regular file
//! (`/dev/null`, a FIFO, a terminal) is written into directly: renaming over it would replace
//! the device with a file. (Whole files go through the library's resumable
//! `ExportClient::download_file`.)

use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempPath;
use tokio::io::AsyncWriteExt as _;

/// A temporary file in the target's directory, deleted on drop unless committed; or the
/// target itself when it is not a regular file.
pub struct PendingFile {
    file: tokio::fs::File,
    /// `None` when writing straight into the target.
    path: Option<TempPath>,
    target: PathBuf,
}

impl PendingFile {
    /// Creates `.<name>.<random>.part` next to `target` (owner-only permissions), or opens
    /// `target` for writing when it exists and is neither a regular file nor a directory.
    pub fn create(target: &Path) -> io::Result<Self> {
        if std::fs::metadata(target).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
            let file = std::fs::OpenOptions::new().write(true).open(target)?;
            return Ok(Self {
                file: tokio::fs::File::from_std(file),
                path: None,
                target: target.to_owned(),
            });
        }
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
            path: Some(path),
            target: target.to_owned(),
        })
    }

    pub fn file(&mut self) -> &mut tokio::fs::File {
        &mut self.file
    }

    /// Syncs the data to disk and renames the file over the target (only flushes, when
    /// writing straight into a target that is not a regular file).
    pub async fn commit(mut self) -> io::Result<PathBuf> {
        let Some(path) = self.path else {
            self.file.flush().await?;
            return Ok(self.target);
        };
        self.file.sync_all().await?;
        drop(self.file);
        path.persist(&self.target).map_err(|e| e.error)?;
        Ok(self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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

    #[cfg(unix)]
    #[tokio::test]
    async fn a_target_that_is_not_a_regular_file_is_written_into_not_replaced() {
        use std::os::unix::fs::FileTypeExt as _;
        let dev_null = Path::new("/dev/null");
        let mut pending = PendingFile::create(dev_null).unwrap();
        // Checked before anything could be renamed over the device.
        assert!(pending.path.is_none(), "no temporary file for a device");
        pending.file().write_all(b"discarded").await.unwrap();
        assert_eq!(pending.commit().await.unwrap(), dev_null);
        assert!(
            std::fs::metadata(dev_null)
                .unwrap()
                .file_type()
                .is_char_device(),
            "/dev/null is still the device"
        );
    }
}
