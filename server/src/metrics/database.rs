//! The gauges every replica reads alike from the database, at scrape time.

use std::collections::BTreeMap;

use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;

use crate::db::{DbError, PgPool};
use crate::exports::ExportStatus;

/// What the database says, for every replica alike.
pub struct DatabaseGauges {
    /// Every known status (0 when none) and any other the table holds, by name.
    pub exports_by_status: BTreeMap<String, i64>,
    pub queue_depth: i64,
}

#[derive(diesel::QueryableByName)]
struct StatusCount {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Both gauges, from one pooled connection.
pub async fn read_database(pool: &PgPool) -> Result<DatabaseGauges, DbError> {
    let mut conn = pool.get().await?;
    // Across all workspaces: this is the operator's view, not a caller's.
    let counts: Vec<StatusCount> =
        diesel::sql_query("SELECT status, count(*) AS count FROM exports GROUP BY status")
            .load(&mut conn)
            .await?;
    let mut exports_by_status: BTreeMap<String, i64> = ExportStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for StatusCount { status, count } in counts {
        exports_by_status.insert(status, count);
    }
    let queue_depth = crate::worker::queue_depth(&mut conn).await?;
    Ok(DatabaseGauges {
        exports_by_status,
        queue_depth,
    })
}
