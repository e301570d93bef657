//! Finished jobs whose stray objects (of attempts that did not win) may still be in storage.
//!
//! Sweeping is idempotent (deleting an object that is gone is no error), so replicas that
//! sweep the same export at once do no harm: no lock is taken.

use crate::exports::ExportStatus;
use crate::ids::{ExportId, WorkspaceId};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::DbError;
use crate::db::schema::exports;

/// A finished export to sweep: every generation up to `generation` may have left an object.
#[derive(Debug, Clone, Queryable)]
pub struct Unswept {
    pub id: ExportId,
    pub workspace_id: WorkspaceId,
    pub generation: i64,
    pub status: ExportStatus,
    /// The key the row records.
    pub storage_key: Option<String>,
}

impl Unswept {
    /// The object that stays: a COMPLETED export's file. Of an export that expired or was
    /// deleted, every object goes.
    pub fn keep(&self) -> Option<&str> {
        match self.status {
            ExportStatus::Completed => self.storage_key.as_deref(),
            _ => None,
        }
    }
}

/// Up to `limit` finished exports not swept yet, oldest first.
pub async fn unswept(conn: &mut AsyncPgConnection, limit: i64) -> Result<Vec<Unswept>, DbError> {
    Ok(exports::table
        .filter(exports::job_done.eq(true))
        .filter(exports::objects_swept.eq(false))
        .order(exports::finished_at.asc())
        .limit(limit)
        .select((
            exports::id,
            exports::workspace_id,
            exports::lease_generation,
            exports::status,
            exports::storage_key,
        ))
        .load(conn)
        .await?)
}

/// Records that `id`'s stray objects are gone.
pub async fn swept(conn: &mut AsyncPgConnection, id: ExportId) -> Result<(), DbError> {
    diesel::update(exports::table.find(id))
        .set(exports::objects_swept.eq(true))
        .execute(conn)
        .await?;
    Ok(())
}
