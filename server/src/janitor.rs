//! The janitor, on every replica (API-only ones too): retention and clean-up, in small
//! batches, safe when several run at once.
//!
//! Each round marks COMPLETED exports past their retention EXPIRED
//! ([`queue::lifecycle::expire`]), frees the idempotency keys of exports that are gone, and
//! sweeps the objects that no finished export should have: of attempts that did not win, of
//! expired and of deleted exports ([`storage::sweep_strays`]). A run that ends sweeps its own
//! export at once; the janitor catches what a dead run could not.

use std::time::Duration;

use opendal::Operator;
use tokio_util::sync::CancellationToken;

use crate::db::PgPool;
use crate::metrics::Metrics;
use crate::queue;
use crate::storage;

/// Rows handled per statement.
const BATCH: i64 = 100;

/// How the janitor runs.
#[derive(Debug, Clone, Copy)]
pub struct JanitorConfig {
    /// How long a COMPLETED export's file is kept.
    pub retention: Duration,
    /// Time between two rounds.
    pub interval: Duration,
}

impl JanitorConfig {
    /// Rounds every minute, or ten times per retention when that is shorter.
    pub fn new(retention: Duration) -> Self {
        JanitorConfig {
            retention,
            interval: (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60)),
        }
    }
}

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub expired: usize,
    pub objects_deleted: usize,
    pub request_ids_released: usize,
}

/// Runs rounds until `stop`.
pub async fn run(
    pool: PgPool,
    storage: Operator,
    metrics: Metrics,
    config: JanitorConfig,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
        match round(&pool, &storage, &metrics, config.retention).await {
            Ok(done) if done != Round::default() => tracing::info!(?done, "janitor round"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "janitor round failed; the next one retries"),
        }
    }
}

/// One round: expire, release keys, sweep (each at most a few batches).
pub async fn round(
    pool: &PgPool,
    storage: &Operator,
    metrics: &Metrics,
    retention: Duration,
) -> Result<Round, String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let mut done = Round::default();
    for _ in 0..10 {
        let expired = queue::lifecycle::expire(&mut conn, retention, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        done.expired += expired;
        metrics.exports_expired(expired);
        if (expired as i64) < BATCH {
            break;
        }
    }
    done.request_ids_released = queue::lifecycle::release_request_ids(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    for export in queue::sweep::unswept(&mut conn, BATCH)
        .await
        .map_err(|e| e.to_string())?
    {
        let removed = storage::sweep_strays(
            storage,
            export.workspace_id,
            export.id,
            export.generation,
            export.storage_key.as_deref(),
            export.keep(),
        )
        .await
        .map_err(|e| e.to_string())?;
        metrics.objects_deleted(removed);
        done.objects_deleted += removed;
        queue::sweep::swept(&mut conn, export.id)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(done)
}

/// Removes every object of an export that was just deleted (or expired), and records it swept;
/// a failure is left to the next round.
pub async fn remove_objects(
    pool: &PgPool,
    storage: &Operator,
    metrics: &Metrics,
    export: &crate::exports::ExportRecord,
) {
    let removed = async {
        let removed = storage::sweep_strays(
            storage,
            export.workspace_id,
            export.id,
            export.lease_generation,
            export.storage_key.as_deref(),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        queue::sweep::swept(&mut conn, export.id)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(removed)
    };
    match removed.await {
        Ok(removed) => metrics.objects_deleted(removed),
        Err(e) => {
            tracing::warn!(export_id = %export.id, error = %e, "removing a deleted export's objects failed; the janitor retries")
        }
    }
}
