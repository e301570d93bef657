//! One consistent view of the contacts for an export's metadata and stream.
//!
//! A `REPEATABLE READ READ ONLY` transaction on a dedicated connection runs the metadata query
//! (row count and custom keys in one pass), then the stream reads the rows with one
//! `COPY … TO STDOUT (FORMAT binary)` in the same transaction. Row count, custom keys and rows
//! therefore describe the same data, whatever the CRM writes meanwhile. Dropping the
//! [`Snapshot`] closes its connection and with it the transaction (and stops a `COPY` still
//! running on it).
//!
//! The owning connection is a plain `tokio-postgres` client, not diesel's: diesel-async has no
//! `COPY`, and a `COPY` streams every row without the round trip per batch that a cursor's
//! `FETCH` costs, in a binary form the encoder reads in place (see
//! [`super::copy_rows`]).

use tokio::task::JoinHandle;
use tokio_postgres::CopyOutStream;

use super::selection::Selection;
use crate::db::{DbError, Target};

/// An open snapshot and the connection that owns it.
pub struct Snapshot {
    client: tokio_postgres::Client,
    /// Drives the connection; aborted on drop, which closes the socket at once (a `COPY` in
    /// flight would otherwise be read to its end first).
    connection: JoinHandle<()>,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Snapshot {
    /// Opens a fresh snapshot on a new connection.
    pub async fn open(database: &Target) -> Result<Snapshot, DbError> {
        let (client, connection) = database.client().await.map_err(DbError::Postgres)?;
        // JIT compilation costs more than it saves on these scans (up to 0.7 s for the keys
        // of a million rows, measured). The `COPY` runs as long as the upload it feeds, so a
        // role's `statement_timeout` would cut every large export short: it is off for this
        // transaction (an export is stopped by cancelling it). The snapshot is taken by the
        // first query that follows.
        client
            .batch_execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL jit = off; \
                 SET LOCAL statement_timeout = 0",
            )
            .await
            .map_err(DbError::Postgres)?;
        Ok(Snapshot { client, connection })
    }

    /// The number of selected rows and their distinct custom-field keys (unsorted).
    pub async fn metadata(
        &self,
        selection: &Selection,
    ) -> Result<(i64, Vec<String>), tokio_postgres::Error> {
        let rows = self.client.query(&selection.metadata_query(), &[]).await?;
        let mut total = 0i64;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            total += row.try_get::<_, i64>("firsts")?;
            if let Some(key) = row.try_get::<_, Option<String>>("key")? {
                keys.push(key);
            }
        }
        Ok((total, keys))
    }

    /// Starts the ordered scan of the selected rows: the messages of a binary `COPY`, one row
    /// each (see [`super::copy_rows`]). A retry may start another once this one is dropped;
    /// it then waits until the connection has read the rest of the first.
    pub async fn copy_rows(
        &self,
        selection: &Selection,
    ) -> Result<CopyOutStream, tokio_postgres::Error> {
        self.client.copy_out(&selection.copy_statement()).await
    }
}
