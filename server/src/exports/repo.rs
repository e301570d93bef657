//! Queries on exports, each scoped to the caller's workspace.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::error::InternalError;
use super::idempotency::check_replay;
use super::{ExportError, ExportId, ExportRecord, ExportStatus, NewExport, WorkspaceId};
use crate::auth::Principal;
use crate::db::schema::{exports, tags};

/// Default and largest page of `list`.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// Creates an export (its row is also its job), or returns the one created earlier with the
/// same `request_id` and parameters in this workspace (FAILED_PRECONDITION if the parameters
/// differ). A new export is refused with RESOURCE_EXHAUSTED while the workspace has
/// `max_queued` exports pending or processing; a replay is not a new export and always passes.
pub async fn create(
    conn: &mut AsyncPgConnection,
    principal: Principal,
    new: NewExport,
    max_queued: u32,
) -> Result<ExportRecord, ExportError> {
    let params = new.params();
    conn.transaction(async |conn| {
        lock_workspace_creates(conn, principal.workspace_id).await?;
        if let Some(request_id) = &new.request_id
            && let Some((existing, stored)) =
                find_by_request_id(conn, principal.workspace_id, request_id).await?
        {
            check_replay(request_id, existing.id, stored.as_ref(), &params)?;
            return Ok(existing);
        }
        check_new(conn, principal.workspace_id, &new, max_queued).await?;
        let inserted: Option<ExportRecord> = diesel::insert_into(exports::table)
            .values((
                exports::id.eq(ExportId::new_random()),
                exports::workspace_id.eq(principal.workspace_id),
                exports::user_id.eq(principal.user_id),
                exports::status.eq(ExportStatus::Pending),
                exports::filename.eq(&new.filename),
                exports::tag_ids.eq(&new.tag_ids),
                exports::options.eq(serde_json::to_value(&new.options).expect("options serialise")),
                exports::request_id.eq(&new.request_id),
                exports::request.eq(new.request_id.as_ref().map(|_| params.to_json())),
                exports::notify_url.eq(&new.notify_url),
            ))
            .on_conflict_do_nothing()
            .returning(ExportRecord::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        match (inserted, &new.request_id) {
            (Some(record), _) => Ok(record),
            // Another call with the same key committed between our look-up and insert.
            (None, Some(request_id)) => {
                let (existing, stored) =
                    find_by_request_id(conn, principal.workspace_id, request_id)
                        .await?
                        .ok_or(ExportError::NotFound)?;
                check_replay(request_id, existing.id, stored.as_ref(), &params)?;
                Ok(existing)
            }
            // Without a key the only unique column is the id, a fresh random UUID: a collision
            // is not the caller's doing.
            (None, None) => Err(ExportError::Internal(InternalError::Invariant(
                "a new export's id was already taken".to_owned(),
            ))),
        }
    })
    .await
}

/// What a new export needs of the database: its tags (and those it excludes) are the
/// workspace's, and the workspace is below its cap of queued exports. `create` runs it in its
/// transaction; a dry run (`validate_only`) runs it alone.
pub async fn check_new(
    conn: &mut AsyncPgConnection,
    workspace_id: WorkspaceId,
    new: &NewExport,
    max_queued: u32,
) -> Result<(), ExportError> {
    for (field, ids) in [
        ("tag_ids", &new.tag_ids),
        ("exclude_tag_ids", &new.options.filter.exclude_tag_ids),
    ] {
        if ids.is_empty() {
            continue;
        }
        let known: Vec<Uuid> = tags::table
            .filter(tags::workspace_id.eq(workspace_id))
            .filter(tags::id.eq_any(ids))
            .select(tags::id)
            .load(conn)
            .await?;
        if let Some(unknown) = ids.iter().find(|id| !known.contains(id)) {
            return Err(ExportError::invalid(
                field,
                format!("no tag {unknown} in this workspace"),
            ));
        }
    }
    let queued = count_queued(conn, workspace_id).await?;
    if queued >= i64::from(max_queued) {
        return Err(ExportError::ResourceExhausted(format!(
            "this workspace has {queued} exports queued or running and may have at most \
             {max_queued}; wait for some to finish or cancel some, then retry"
        )));
    }
    Ok(())
}

/// Makes the creates of one workspace take turns until their transactions end, so that counting
/// its queued exports and inserting one are a single step: two calls at the limit cannot both
/// pass. Other workspaces do not wait (but for a rare hash collision, which only serialises).
async fn lock_workspace_creates(
    conn: &mut AsyncPgConnection,
    workspace_id: WorkspaceId,
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(hashtextextended('exportd.create:' || $1::text, 0))",
    )
    .bind::<diesel::sql_types::Uuid, _>(workspace_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Exports of the workspace waiting for or held by a worker.
async fn count_queued(
    conn: &mut AsyncPgConnection,
    workspace_id: WorkspaceId,
) -> Result<i64, diesel::result::Error> {
    #[derive(QueryableByName)]
    struct Queued {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        queued: i64,
    }
    // Literal statuses, as in the partial index `exports_workspace_queued`, so that it is used.
    let Queued { queued } = diesel::sql_query(
        "SELECT count(*) AS queued FROM exports \
         WHERE workspace_id = $1 AND status IN ('pending', 'processing')",
    )
    .bind::<diesel::sql_types::Uuid, _>(workspace_id)
    .get_result(conn)
    .await?;
    Ok(queued)
}

/// The export made under `request_id`, and the parameters it was made with.
async fn find_by_request_id(
    conn: &mut AsyncPgConnection,
    workspace_id: WorkspaceId,
    request_id: &str,
) -> Result<Option<(ExportRecord, Option<serde_json::Value>)>, diesel::result::Error> {
    exports::table
        .filter(exports::workspace_id.eq(workspace_id))
        .filter(exports::request_id.eq(request_id))
        .select((ExportRecord::as_select(), exports::request))
        .first(conn)
        .await
        .optional()
}

/// One export of the workspace.
pub async fn get(
    conn: &mut AsyncPgConnection,
    workspace_id: WorkspaceId,
    id: ExportId,
) -> Result<ExportRecord, ExportError> {
    exports::table
        .filter(exports::workspace_id.eq(workspace_id))
        .filter(exports::id.eq(id))
        .select(ExportRecord::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(ExportError::NotFound)
}

/// A page of the workspace's exports, newest first, and the token of the next page.
pub async fn list(
    conn: &mut AsyncPgConnection,
    workspace_id: WorkspaceId,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<ExportRecord>, Option<String>), ExportError> {
    let limit = match i64::from(page_size) {
        n if n < 0 => return Err(ExportError::invalid("page_size", "must not be negative")),
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    // Deleted exports are left out of the list (GetExport still finds them).
    let mut query = exports::table
        .filter(exports::workspace_id.eq(workspace_id))
        .filter(exports::status.ne(ExportStatus::Deleted))
        .select(ExportRecord::as_select())
        .order((exports::created_at.desc(), exports::id.desc()))
        .limit(limit + 1)
        .into_boxed();
    if !page_token.is_empty() {
        let (at, id) = PageToken::decode(page_token)
            .ok_or_else(|| ExportError::invalid("page_token", "not a token this service issued"))?;
        query = query.filter(
            exports::created_at
                .lt(at)
                .or(exports::created_at.eq(at).and(exports::id.lt(id))),
        );
    }
    let mut rows: Vec<ExportRecord> = query.load(conn).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|last| PageToken::encode(last.created_at, last.id))
    } else {
        None
    };
    Ok((rows, next))
}

/// Cancels an export: a queued one at once, a running one at its next batch boundary.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    workspace_id: WorkspaceId,
    id: ExportId,
) -> Result<ExportRecord, ExportError> {
    let now = Utc::now();
    // Not yet claimed by a worker: nobody else will touch it, end it here.
    let cancelled: Option<ExportRecord> = diesel::update(exports::table)
        .filter(exports::workspace_id.eq(workspace_id))
        .filter(exports::id.eq(id))
        .filter(exports::status.eq(ExportStatus::Pending))
        .filter(exports::lease_owner.is_null())
        .set((
            exports::status.eq(ExportStatus::Cancelled),
            // A webhook to tell of it keeps the job open for a worker to send it.
            exports::job_done.eq(diesel::dsl::sql::<diesel::sql_types::Bool>(
                "notify_url IS NULL",
            )),
            exports::webhook_due.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Text>,
            >(
                "CASE WHEN notify_url IS NULL THEN NULL ELSE 'cancelled' END",
            )),
            exports::cancel_requested.eq(true),
            exports::error_message.eq("cancelled by request"),
            exports::updated_at.eq(now),
            exports::finished_at.eq(now),
        ))
        .returning(ExportRecord::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(record) = cancelled {
        return Ok(record);
    }
    // Running (or just claimed): ask its worker to stop between batches.
    let requested: Option<ExportRecord> = diesel::update(exports::table)
        .filter(exports::workspace_id.eq(workspace_id))
        .filter(exports::id.eq(id))
        .filter(exports::status.eq_any([ExportStatus::Pending, ExportStatus::Processing]))
        .set((
            exports::cancel_requested.eq(true),
            exports::updated_at.eq(now),
        ))
        .returning(ExportRecord::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(record) = requested {
        return Ok(record);
    }
    let record = get(conn, workspace_id, id).await?;
    Err(ExportError::FailedPrecondition(format!(
        "export {id} is already {}; only a pending or processing export can be cancelled",
        record.status.as_str()
    )))
}

/// Deletes an export of the workspace: its record is marked DELETED and kept (so that the call
/// is idempotent and its `request_id` stays bound), and its objects are left to the caller
/// to remove ([`crate::storage::sweep_strays`]) and to the sweep, which retries. The
/// generation goes up, so that a run still sending the export's mail stops at its next
/// write. FAILED_PRECONDITION while the export is pending or processing.
pub async fn delete(
    conn: &mut AsyncPgConnection,
    workspace_id: WorkspaceId,
    id: ExportId,
) -> Result<ExportRecord, ExportError> {
    let now = Utc::now();
    let deleted: Option<ExportRecord> = diesel::update(exports::table)
        .filter(exports::workspace_id.eq(workspace_id))
        .filter(exports::id.eq(id))
        .filter(exports::status.eq_any([
            ExportStatus::Completed,
            ExportStatus::Failed,
            ExportStatus::Cancelled,
            ExportStatus::Expired,
        ]))
        .set((
            exports::status.eq(ExportStatus::Deleted),
            exports::deleted_at.eq(now),
            exports::updated_at.eq(now),
            exports::objects_swept.eq(false),
            exports::job_done.eq(true),
            exports::needs_mailer.eq(false),
            exports::lease_generation.eq(exports::lease_generation + 1),
            exports::lease_owner.eq(None::<String>),
            exports::lease_expires_at.eq(None::<DateTime<Utc>>),
        ))
        .returning(ExportRecord::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(record) = deleted {
        return Ok(record);
    }
    let record = get(conn, workspace_id, id).await?;
    match record.status {
        ExportStatus::Deleted => Ok(record),
        status => Err(ExportError::FailedPrecondition(format!(
            "export {id} is {}; cancel it first, then delete it",
            status.as_str().to_uppercase()
        ))),
    }
}

/// The opaque page token: the sort key of the last export of a page.
struct PageToken;

impl PageToken {
    fn encode(at: DateTime<Utc>, id: ExportId) -> String {
        format!("{}.{}", at.timestamp_micros(), id.as_uuid().simple())
    }

    fn decode(token: &str) -> Option<(DateTime<Utc>, ExportId)> {
        let (micros, id) = token.split_once('.')?;
        let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some((at, ExportId(Uuid::try_parse(id).ok()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_token_round_trips_and_rejects_garbage() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = ExportId::new_random();
        assert_eq!(
            PageToken::decode(&PageToken::encode(at, id)),
            Some((at, id))
        );
        assert_eq!(PageToken::decode("x.y"), None);
        assert_eq!(PageToken::decode("12"), None);
    }
}
