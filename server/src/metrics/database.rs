//! The gauges every replica reads alike from the database, at scrape time.

use std::collections::BTreeMap;

use crate::db::{DbError, PgPool};
use crate::queue;

/// What the database says, for every replica alike.
pub struct DatabaseGauges {
    /// Every known status (0 when none) and any other the table holds, by name.
    pub exports_by_status: BTreeMap<String, i64>,
    pub queue_depth: i64,
}

/// Both gauges, from one pooled connection.
pub async fn read_database(pool: &PgPool) -> Result<DatabaseGauges, DbError> {
    let mut conn = pool.get().await?;
    Ok(DatabaseGauges {
        exports_by_status: queue::status_counts(&mut conn).await?,
        queue_depth: queue::queue_depth(&mut conn).await?,
    })
}
