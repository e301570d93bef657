//! Taking a job from the queue, and what the queue looks like from outside.
//!
//! A job is claimable when it is not done and not leased (or its lease ran out). Claims of all
//! replicas take turns on one transaction-scoped advisory lock, so that the count of a
//! workspace's running jobs and the claim that raises it are one step: the fair share
//! (`max_running_per_workspace`) holds exactly across replicas. A claim is a few milliseconds;
//! taking turns costs nothing a job would notice.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::Fence;
use crate::db::DbError;
use crate::db::schema::exports;
use crate::exports::{ExportRecord, ExportStatus};

/// How a replica claims.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    /// This replica's name in `lease_owner` (for operators; the fence is the generation).
    pub worker_id: String,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// Whether this replica can send mail: a job waiting for a mail transport is left to a
    /// replica that has one.
    pub can_mail: bool,
    /// Jobs of one workspace running at once, across all replicas.
    pub max_running_per_workspace: u32,
    /// Whether this replica can send webhooks: a job with one due is left to a replica that
    /// can.
    pub can_webhook: bool,
}

/// A claimed job: the export as it was claimed, and the claim's fence.
#[derive(Debug, Clone)]
pub struct Claim {
    pub export: ExportRecord,
    pub fence: Fence,
}

/// The jobs a worker may claim now: not done, and not leased or with a lease run out.
macro_rules! claimable {
    () => {
        "NOT e.job_done AND (e.lease_expires_at IS NULL OR e.lease_expires_at < now())"
    };
}

/// Key of the advisory lock claims take turns on.
const CLAIM_LOCK: &str = "exportd.claim";

pub(super) fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: crate::ids::ExportId,
    #[diesel(sql_type = BigInt)]
    lease_generation: i64,
}

/// Claims the oldest claimable job whose workspace is below its share, if any; its generation
/// goes up by one, which fences out every earlier claim of it.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    policy: &ClaimPolicy,
) -> Result<Option<Claim>, DbError> {
    // The claimed row is read in the claim's own transaction: a claim whose row could not be
    // read is no claim at all (it would hold the job for a lease with nobody running it).
    let claim: Option<Claim> = conn
        .transaction(async |conn| {
            diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind::<Text, _>(CLAIM_LOCK)
                .execute(conn)
                .await?;
            let claimed: Option<Claimed> = diesel::sql_query(concat!(
                "UPDATE exports SET lease_owner = $1, lease_expires_at = now() + $2::interval, \
                 lease_generation = lease_generation + 1 \
                 WHERE id = (SELECT e.id FROM exports e WHERE ",
                claimable!(),
                " AND ($3 OR NOT e.needs_mailer) AND ($5 OR e.webhook_due IS NULL) \
                 AND (SELECT count(*) FROM exports r WHERE r.workspace_id = e.workspace_id \
                      AND NOT r.job_done AND r.lease_owner IS NOT NULL \
                      AND r.lease_expires_at >= now()) < $4 \
                 ORDER BY e.created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, lease_generation",
            ))
            .bind::<Text, _>(&policy.worker_id)
            .bind::<Text, _>(interval(policy.lease))
            .bind::<Bool, _>(policy.can_mail)
            .bind::<Integer, _>(i32::try_from(policy.max_running_per_workspace).unwrap_or(i32::MAX))
            .bind::<Bool, _>(policy.can_webhook)
            .get_result(conn)
            .await
            .optional()?;
            let Some(Claimed {
                id,
                lease_generation,
            }) = claimed
            else {
                return Ok::<_, diesel::result::Error>(None);
            };
            let export = exports::table
                .find(id)
                .select(ExportRecord::as_select())
                .first(conn)
                .await?;
            Ok(Some(Claim {
                export,
                fence: Fence {
                    export_id: id,
                    generation: lease_generation,
                },
            }))
        })
        .await?;
    Ok(claim)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// How many jobs wait for a worker, across all replicas (fair share aside).
pub async fn queue_depth(conn: &mut AsyncPgConnection) -> Result<i64, DbError> {
    let Count { count } = diesel::sql_query(concat!(
        "SELECT count(*) AS count FROM exports e WHERE ",
        claimable!()
    ))
    .get_result(conn)
    .await?;
    Ok(count)
}

#[derive(QueryableByName)]
struct StatusCount {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Exports by status across all workspaces (the operator's view, never a caller's): every
/// known status, 0 when none, and any other the table holds.
pub async fn status_counts(conn: &mut AsyncPgConnection) -> Result<BTreeMap<String, i64>, DbError> {
    let counts: Vec<StatusCount> =
        diesel::sql_query("SELECT status, count(*) AS count FROM exports GROUP BY status")
            .load(conn)
            .await?;
    let mut by_status: BTreeMap<String, i64> = ExportStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for StatusCount { status, count } in counts {
        by_status.insert(status, count);
    }
    Ok(by_status)
}
