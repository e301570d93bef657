//! The end of an export's life: retention turns COMPLETED exports EXPIRED once their time
//! is up (their objects are then swept), and idempotency keys of exports that are gone are
//! released.
//!
//! Safe on every replica at once: expiry claims its rows with `FOR UPDATE SKIP LOCKED`, and
//! each statement is one small batch.

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::claim::interval;
use crate::db::DbError;

/// How long a `request_id` stays bound at least, whatever the retention.
pub const REQUEST_ID_BINDING: &str = "24 hours";

#[derive(QueryableByName)]
struct Expired {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    #[allow(dead_code)]
    id: uuid::Uuid,
}

/// Marks up to `limit` COMPLETED exports whose file is past `retention` (counted from
/// `expires_at`, or for rows older than that column from `finished_at`) EXPIRED, their objects
/// to sweep; returns how many. The generation goes up and the job ends (or waits for a worker
/// to tell the caller's webhook), so that a run still sending the mail of such an export
/// stops.
pub async fn expire(
    conn: &mut AsyncPgConnection,
    retention: Duration,
    limit: i64,
) -> Result<usize, DbError> {
    let expired: Vec<Expired> = diesel::sql_query(
        "UPDATE exports SET status = 'expired', objects_swept = false, \
         expires_at = coalesce(expires_at, finished_at + $1::interval), updated_at = now(), \
         lease_generation = lease_generation + 1, needs_mailer = false, \
         job_done = notify_url IS NULL, \
         webhook_due = CASE WHEN notify_url IS NULL THEN NULL ELSE 'expired' END, \
         lease_owner = NULL, lease_expires_at = NULL \
         WHERE id IN (SELECT id FROM exports WHERE status = 'completed' \
           AND coalesce(expires_at, finished_at + $1::interval) < now() \
           ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING id",
    )
    .bind::<Text, _>(interval(retention))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(expired.len())
}

/// Frees the `request_id`s of exports that expired or were deleted and were created more
/// than [`REQUEST_ID_BINDING`] ago: the same key may then make a new export.
pub async fn release_request_ids(conn: &mut AsyncPgConnection) -> Result<usize, DbError> {
    Ok(diesel::sql_query(format!(
        "UPDATE exports SET request_id = NULL, request = NULL \
         WHERE status IN ('expired', 'deleted') AND request_id IS NOT NULL \
         AND created_at < now() - interval '{REQUEST_ID_BINDING}'"
    ))
    .execute(conn)
    .await?)
}
