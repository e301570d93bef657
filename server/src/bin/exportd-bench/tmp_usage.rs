//! How much temporary disk an `exportd` uses: the bytes of the files under its `TMPDIR`,
//! sampled on a thread of its own while an export runs, keeping the maximum.
//!
//! A directory listing is not enough: `rust_xlsxwriter` writes each worksheet's rows to an
//! anonymous temporary file (`O_TMPFILE`, or created and unlinked at once), which no listing
//! shows but which fills the disk all the same. Such a file still appears among the process's
//! open files (`/proc/<pid>/fd`, as `<TMPDIR>/#<inode> (deleted)`), so a sample adds the files
//! the process holds open under `TMPDIR` to those a walk of the folder finds, each inode once.
//! Sizes are file lengths (bytes written), not allocated blocks.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the sampler looks.
const EVERY: Duration = Duration::from_millis(50);

/// Samples the temporary files of one process until [`TmpSampler::finish`].
pub struct TmpSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<u64>>,
}

impl TmpSampler {
    /// Starts sampling the files of process `pid` under `dir` (a canonical path, as the
    /// process's open files name it).
    pub fn start(pid: u32, dir: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                // One last sample after the stop, so that a short export is sampled at all.
                let last = stopping.load(Ordering::Relaxed);
                peak = peak.max(bytes_in_use(Some(pid), &dir)?);
                if last {
                    return Ok(peak);
                }
                std::thread::sleep(EVERY);
            }
        });
        TmpSampler { stop, thread }
    }

    /// Stops sampling; the largest total seen, in bytes.
    pub fn finish(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the TMPDIR sampler panicked"))??;
        Ok(peak)
    }
}

/// The bytes of the files under `dir` now, and of those process `pid` (if any) holds open
/// there.
pub fn bytes_in_use(pid: Option<u32>, dir: &Path) -> std::io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut count = |metadata: std::fs::Metadata| {
        if metadata.is_file() && seen.insert((metadata.dev(), metadata.ino())) {
            total += metadata.len();
        }
    };
    for path in walk(dir)? {
        if let Some(metadata) = gone_is_none(std::fs::symlink_metadata(path))? {
            count(metadata);
        }
    }
    // The process may just have exited: then it holds nothing.
    let fds = match pid {
        Some(pid) => gone_is_none(std::fs::read_dir(format!("/proc/{pid}/fd")))?,
        None => None,
    };
    for fd in fds.into_iter().flatten() {
        let fd = fd?.path();
        let Some(target) = gone_is_none(std::fs::read_link(&fd))? else {
            continue;
        };
        if target.starts_with(dir) {
            // Through the /proc link, which reaches the file even once it is unlinked.
            if let Some(metadata) = gone_is_none(std::fs::metadata(&fd))? {
                count(metadata);
            }
        }
    }
    Ok(total)
}

/// Every path under `dir` that is not a folder (files come and go while we walk).
fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        let Some(entries) = gone_is_none(std::fs::read_dir(&folder))? else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            match gone_is_none(entry.file_type())? {
                Some(kind) if kind.is_dir() => folders.push(entry.path()),
                Some(_) => found.push(entry.path()),
                None => {}
            }
        }
    }
    Ok(found)
}

/// `None` for a file (or process) that went away between being listed and being looked at.
fn gone_is_none<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn counts_listed_and_anonymous_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = std::fs::canonicalize(dir.path()).unwrap();
        let pid = std::process::id();
        assert_eq!(bytes_in_use(Some(pid), &dir_path).unwrap(), 0);

        std::fs::create_dir(dir_path.join("sub")).unwrap();
        std::fs::write(dir_path.join("sub").join("named"), [0u8; 1000]).unwrap();
        // Listed and open: counted once.
        let mut open_named = std::fs::File::create(dir_path.join("open")).unwrap();
        open_named.write_all(&[0u8; 200]).unwrap();
        // Anonymous, as rust_xlsxwriter's worksheet files are: only /proc shows it.
        let mut anonymous = tempfile::tempfile_in(&dir_path).unwrap();
        anonymous.write_all(&[0u8; 30]).unwrap();
        assert_eq!(bytes_in_use(Some(pid), &dir_path).unwrap(), 1230);

        let sampler = TmpSampler::start(pid, dir_path.clone());
        std::thread::sleep(2 * EVERY);
        drop(anonymous);
        std::fs::remove_dir_all(dir_path.join("sub")).unwrap();
        assert_eq!(sampler.finish().unwrap(), 1230);
        assert_eq!(bytes_in_use(Some(pid), &dir_path).unwrap(), 200);
        assert_eq!(bytes_in_use(None, &dir_path).unwrap(), 200);
    }
}
