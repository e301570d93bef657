//! Where finished files live: an OpenDAL operator, chosen by URI, and the keys of the objects
//! each attempt writes.
//!
//! Every claim of a job writes its own object, the claim's generation in the key
//! ([`attempt_key`]): no attempt ever writes where another attempt's object is or will be, so a
//! stale worker that wakes up and writes can only touch its own object, never the file of the
//! export's winner, which the row points at. The objects of attempts that did not win are
//! removed by the attempt itself when it learns it lost, or by the sweep after the job ends
//! ([`sweep_strays`]).

use crate::ids::{ExportId, WorkspaceId};
use opendal::Operator;

/// The folder, relative to an `fs` store's root, where files are written before they are
/// renamed to their key (OpenDAL's `atomic_write_dir`): a file appears at its key only whole,
/// and an aborted one is removed.
pub const FS_PARTIAL_DIR: &str = ".partial/";

/// Builds an operator from a storage URI: `fs:///var/lib/exports`, `memory://`,
/// `s3://bucket/prefix?region=…&endpoint=…`, or any scheme OpenDAL registers (`vercel-blob://`
/// goes through [`crate::config::storage_operator`], which takes its token from the
/// environment).
pub fn operator_from_uri(uri: &str) -> Result<Operator, opendal::Error> {
    opendal::init_default_registry();
    Operator::from_uri(uri)
}

/// An `fs` store under `root` (an absolute folder) that writes atomically.
pub fn fs_operator(root: &std::path::Path) -> Result<Operator, opendal::Error> {
    let root = root.display().to_string();
    let partial = format!("{}/{}", root.trim_end_matches('/'), FS_PARTIAL_DIR);
    Operator::via_iter(
        "fs",
        [
            ("root".to_owned(), root),
            ("atomic_write_dir".to_owned(), partial),
        ],
    )
}

/// A Vercel Blob store: the one `token` (its read-write token) belongs to, every key under
/// `root` (`/` for none, or `/exports` for a prefix). OpenDAL sends every call to
/// `https://blob.vercel-storage.com` with `authorization: Bearer <token>`, and reads a blob from
/// the public URL that its listing gives. The token is kept out of the operator's `Debug`.
pub fn vercel_blob_operator(root: &str, token: &str) -> Result<Operator, opendal::Error> {
    Operator::new(
        opendal::services::VercelBlob::default()
            .root(root)
            .token(token),
    )
}

/// The object that the attempts of claim `generation` of an export write. The workspace is
/// part of the key, so that no bug in a lookup can hand one workspace another's file by
/// guessing an id, and so that a workspace's files can be listed or purged together.
pub fn attempt_key(workspace_id: WorkspaceId, export_id: ExportId, generation: i64) -> String {
    format!(
        "{}{export_id}.g{generation}.csv",
        workspace_prefix(workspace_id)
    )
}

fn workspace_prefix(workspace_id: WorkspaceId) -> String {
    format!("exports/{workspace_id}/")
}

/// Deletes every object the claims `1..=generation` of an export may have written, and the
/// `recorded` key of its row, but `keep` (the file a COMPLETED export points at), and, on
/// `fs`, the unfinished files of its attempts. What is gone already is no error, so this can
/// run again, or on several replicas at once. Returns how many objects it removed.
pub async fn sweep_strays(
    storage: &Operator,
    workspace_id: WorkspaceId,
    export_id: ExportId,
    generation: i64,
    recorded: Option<&str>,
    keep: Option<&str>,
) -> Result<usize, opendal::Error> {
    // The attempts' keys, and the key the row records (an export written before keys named
    // their claim has only that one).
    let mut keys: Vec<String> = (1..=generation)
        .map(|g| attempt_key(workspace_id, export_id, g))
        .collect();
    if let Some(recorded) = recorded
        && !keys.iter().any(|k| k == recorded)
    {
        keys.push(recorded.to_owned());
    }
    let mut removed = 0;
    for key in keys.iter().filter(|k| Some(k.as_str()) != keep) {
        if storage.exists(key).await? {
            storage.delete(key).await?;
            removed += 1;
        }
    }
    // A process killed mid-write leaves its temporary file (`<name>.<random>`) behind.
    let prefix = format!("{FS_PARTIAL_DIR}{export_id}.g");
    match storage.list(FS_PARTIAL_DIR).await {
        Ok(entries) => {
            for entry in entries {
                if entry.path().starts_with(&prefix) {
                    storage.delete(entry.path()).await?;
                }
            }
        }
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn each_claim_writes_its_own_key_under_the_workspace() {
        let (ws, id) = (WorkspaceId(Uuid::nil()), ExportId(Uuid::max()));
        assert_eq!(
            attempt_key(ws, id, 3),
            "exports/00000000-0000-0000-0000-000000000000/ffffffff-ffff-ffff-ffff-ffffffffffff.g3.csv"
        );
        assert_ne!(attempt_key(ws, id, 1), attempt_key(ws, id, 2));
    }

    #[tokio::test]
    async fn the_sweep_keeps_the_winner_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let op = fs_operator(dir.path()).unwrap();
        let (ws, id, other) = (
            WorkspaceId::new_random(),
            ExportId::new_random(),
            ExportId::new_random(),
        );
        for g in 1..=3 {
            op.write(&attempt_key(ws, id, g), "x").await.unwrap();
        }
        op.write(&attempt_key(ws, other, 1), "other").await.unwrap();
        // What a killed writer leaves in the partial folder.
        op.write(&format!("{FS_PARTIAL_DIR}{id}.g2.csv.k3j2"), "partial")
            .await
            .unwrap();
        let keep = attempt_key(ws, id, 2);
        assert_eq!(
            sweep_strays(&op, ws, id, 3, Some(&keep), Some(&keep))
                .await
                .unwrap(),
            2
        );
        let mut left: Vec<String> = op
            .list_with("")
            .recursive(true)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| e.path().to_owned())
            .collect();
        left.sort();
        let mut expected = vec![keep.clone(), attempt_key(ws, other, 1)];
        expected.sort();
        assert_eq!(left, expected);
        // Again, with nothing left to remove: no error.
        assert_eq!(
            sweep_strays(&op, ws, id, 3, None, Some(&keep))
                .await
                .unwrap(),
            0
        );
        // An expired export: its file goes too, and a key of the old layout.
        op.write("exports/old.csv", "old").await.unwrap();
        assert_eq!(
            sweep_strays(&op, ws, id, 3, Some("exports/old.csv"), None)
                .await
                .unwrap(),
            2
        );
        assert!(!op.exists(&keep).await.unwrap());
    }
}
