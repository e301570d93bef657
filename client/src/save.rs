//! Saving a whole export into a file: resumable, verified, and moved into place only when
//! every byte is there and hashes to the SHA-256 the server announced.
//!
//! The bytes go to a partial file beside the target, `.<name>.<export id>.part`, renamed over
//! the target at the end. A download that stops half-way (a cut connection after the retries,
//! Ctrl-C, a killed process) leaves that partial file, and the next download of the same
//! export to the same target goes on from its last byte. Whether the bytes already there
//! belong to the export is only known once the whole file is hashed: if it does not verify,
//! the download starts over from byte 0, once.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use contact_export::v1::ExportFileMetadata;
use sha2::{Digest, Sha256};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::download::verify;
use crate::receive::Receiver;
use crate::{ClientError, ExportClient};

/// What [`ExportClient::download_file`](crate::ExportClient::download_file) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedFile {
    /// Where the file is now.
    pub path: PathBuf,
    /// The file as the server described it (size and SHA-256 checked).
    pub metadata: ExportFileMetadata,
    /// Bytes received from the server by this call.
    pub received: u64,
    /// How the file came to be there.
    pub how: Saved,
}

/// How a saved file came to be whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Downloaded from the first byte.
    Downloaded,
    /// A partial file held the first `from` bytes; the rest was downloaded.
    Resumed {
        /// Bytes that were already on disk.
        from: u64,
    },
    /// A partial file of `discarded` bytes did not verify as the start of the export, so the
    /// file was downloaded again from byte 0.
    Restarted {
        /// Bytes that were on disk and thrown away.
        discarded: u64,
    },
    /// The target already was the whole export (size and SHA-256 checked): nothing was
    /// downloaded and the file was left as it was.
    AlreadyComplete,
}

/// Where a download asked to go to `output` is written: `output` itself, or the server's file
/// name inside `output` when that is an existing directory. Only the last component of the
/// server's name is used, never `.` or `..`.
pub fn target_path(output: &Path, server_filename: &str) -> PathBuf {
    if !output.is_dir() {
        return output.to_owned();
    }
    let name = Path::new(server_filename)
        .file_name()
        .filter(|name| !name.is_empty())
        .unwrap_or("export.csv".as_ref());
    output.join(name)
}

/// The partial file of a download of export `id` to `target`.
pub fn partial_path(target: &Path, id: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The id is the server's: keep only what is safe in a file name.
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    target.with_file_name(format!(".{name}.{id}.part"))
}

/// Whether `path` exists and is neither a regular file nor a directory (`/dev/null`, a FIFO,
/// a terminal): it is written into, never replaced by a rename.
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

pub(crate) async fn download_file(
    client: &ExportClient,
    id: &str,
    output: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<SavedFile, ClientError> {
    let mut receiver = Receiver::new(client, id);
    let first = receiver.open(0).await?;
    let metadata = first.metadata.clone();
    let size = metadata.size_bytes.max(0) as u64;
    let target = target_path(output, &metadata.filename);
    let saved = |received, how| SavedFile {
        path: target.clone(),
        metadata: metadata.clone(),
        received,
        how,
    };

    if is_special(&target) {
        let mut sink = OpenOptions::new().write(true).open(&target).await?;
        let mut hasher = Sha256::new();
        let received = receiver
            .receive(first, 0, &mut sink, &mut hasher, &mut progress)
            .await?;
        verify(hasher, &metadata, None)?;
        return Ok(saved(received, Saved::Downloaded));
    }
    if is_whole(&target, &metadata).await? {
        progress(size, size);
        return Ok(saved(0, Saved::AlreadyComplete));
    }

    let partial = partial_path(&target, id);
    // A target that is shorter than the export may be the start of it (a download written in
    // place by another tool): it becomes the partial file.
    if !partial.exists()
        && let Ok(m) = std::fs::metadata(&target)
        && m.is_file()
        && m.len() > 0
        && m.len() < size
    {
        tokio::fs::rename(&target, &partial).await?;
    }
    let mut file = open_partial(&partial).await?;
    let mut hasher = Sha256::new();
    let held = hash_prefix(&mut file, size, &mut hasher).await?;
    let (mut received, mut how) = if held == 0 {
        let n = receiver
            .receive(first, 0, &mut file, &mut hasher, &mut progress)
            .await?;
        (n, Saved::Downloaded)
    } else {
        drop(first);
        progress(held, size);
        let rest = receiver.open(held).await?;
        let n = receiver
            .receive(rest, held, &mut file, &mut hasher, &mut progress)
            .await?;
        (n - held, Saved::Resumed { from: held })
    };
    let verified = match verify(hasher, &metadata, None) {
        Err(_) if held > 0 => {
            // What was on disk was not the start of this file: once more, from byte 0.
            file.set_len(0).await?;
            file.seek(SeekFrom::Start(0)).await?;
            let mut hasher = Sha256::new();
            progress(0, size);
            let again = receiver.open(0).await?;
            received += receiver
                .receive(again, 0, &mut file, &mut hasher, &mut progress)
                .await?;
            how = Saved::Restarted { discarded: held };
            verify(hasher, &metadata, Some(held))
        }
        other => other,
    };
    if let Err(e) = verified {
        // Bytes that do not verify are worth nothing to the next try.
        drop(file);
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&partial, &target).await?;
    Ok(saved(received, how))
}

/// Whether `path` is a regular file of the export's size whose bytes hash to its SHA-256.
async fn is_whole(path: &Path, metadata: &ExportFileMetadata) -> Result<bool, ClientError> {
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() && m.len() == metadata.size_bytes.max(0) as u64 => {}
        _ => return Ok(false),
    }
    let mut file = File::open(path).await?;
    let mut hasher = Sha256::new();
    hash_prefix(&mut file, u64::MAX, &mut hasher).await?;
    Ok(verify(hasher, metadata, None).is_ok())
}

/// Opens (or creates, readable by its owner only) the partial file for reading and writing.
async fn open_partial(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).await
}

/// Hashes what `file` holds and leaves its cursor at the end; returns its length. A file
/// longer than `size` cannot be the start of the export: it is emptied and 0 returned.
async fn hash_prefix(file: &mut File, size: u64, hasher: &mut Sha256) -> std::io::Result<u64> {
    if file.metadata().await?.len() > size {
        file.set_len(0).await?;
        file.seek(SeekFrom::Start(0)).await?;
        return Ok(0);
    }
    let mut buffer = vec![0u8; 1 << 20];
    let mut held = 0u64;
    loop {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            return Ok(held);
        }
        hasher.update(&buffer[..n]);
        held += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_partial_file_sits_beside_the_target_and_names_the_export() {
        let target = Path::new("/data/out.csv");
        assert_eq!(
            partial_path(target, "3f1c1b8e-8a52-4c55-9d1c-2f7d1c1a0b11"),
            Path::new("/data/.out.csv.3f1c1b8e-8a52-4c55-9d1c-2f7d1c1a0b11.part")
        );
        // Whatever the server calls the export, the name stays in the target's folder.
        assert_eq!(
            partial_path(target, "../../x/y"),
            Path::new("/data/.out.csv.xy.part")
        );
    }
}
