//! One consistent view of the contacts for an export's metadata and stream.
//!
//! A `REPEATABLE READ READ ONLY` transaction on a dedicated connection exports its snapshot;
//! the metadata queries import it on pooled connections and run beside each other, and the
//! stream reads the rows with one `COPY … TO STDOUT (FORMAT binary)` in the owning
//! transaction. Row count, custom keys and rows therefore describe the same data, whatever the
//! CRM writes meanwhile. Dropping the [`Snapshot`] closes its connection and with it the
//! transaction (and stops a `COPY` still running on it).
//!
//! The owning connection is a plain `tokio-postgres` client, not diesel's: diesel-async has no
//! `COPY`, and a `COPY` streams every row without the round trip per batch that a cursor's
//! `FETCH` costs, in a binary form the encoder reads in place (see
//! [`super::copy_rows`]).

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::task::JoinHandle;
use tokio_postgres::{CopyOutStream, NoTls};

use super::selection::Selection;
use crate::db::DbError;

/// An open snapshot and the connection that owns it.
pub struct Snapshot {
    client: tokio_postgres::Client,
    /// Drives the connection; aborted on drop, which closes the socket at once (a `COPY` in
    /// flight would otherwise be read to its end first).
    connection: JoinHandle<()>,
    id: String,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    key: String,
}

impl Snapshot {
    /// Opens a fresh snapshot on a new connection.
    pub async fn open(database_url: &str) -> Result<Snapshot, DbError> {
        let (client, connection) = tokio_postgres::connect(database_url, NoTls)
            .await
            .map_err(DbError::Postgres)?;
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "the snapshot connection ended with an error");
            }
        });
        // JIT compilation costs more than it saves on these scans (up to 0.7 s for the keys
        // of a million rows, measured): off for the snapshot and the queries that import it.
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL jit = off")
            .await
            .map_err(DbError::Postgres)?;
        let id: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(DbError::Postgres)?;
        // Snapshot ids look like `00000003-0000001B-1`; anything else must not reach SQL text.
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(DbError::Query(diesel::result::Error::QueryBuilderError(
                format!("unexpected snapshot id {id:?}").into(),
            )));
        }
        Ok(Snapshot {
            client,
            connection,
            id,
        })
    }

    /// The statement that makes another `REPEATABLE READ` transaction see this snapshot.
    fn import_statement(&self) -> String {
        format!("SET TRANSACTION SNAPSHOT '{}'", self.id)
    }

    /// Imports the snapshot into the transaction open on `conn`, with the owner's settings.
    async fn import(&self, conn: &mut AsyncPgConnection) -> Result<(), diesel::result::Error> {
        let import = format!("{}; SET LOCAL jit = off", self.import_statement());
        conn.batch_execute(&import).await
    }

    /// Counts the selected rows inside this snapshot, on `conn` (not the owning connection, so
    /// that it runs beside other queries).
    pub async fn count(
        &self,
        conn: &mut AsyncPgConnection,
        selection: &Selection,
    ) -> Result<i64, diesel::result::Error> {
        let query = selection.count_query();
        conn.build_transaction()
            .repeatable_read()
            .read_only()
            .run(async |c| {
                self.import(c).await?;
                let Count { n } = diesel::sql_query(query).get_result(c).await?;
                Ok(n)
            })
            .await
    }

    /// The distinct custom-field keys of the selected rows inside this snapshot, on `conn`.
    pub async fn keys(
        &self,
        conn: &mut AsyncPgConnection,
        selection: &Selection,
    ) -> Result<Vec<String>, diesel::result::Error> {
        let query = selection.keys_query();
        conn.build_transaction()
            .repeatable_read()
            .read_only()
            .run(async |c| {
                self.import(c).await?;
                let keys: Vec<Key> = diesel::sql_query(query).load(c).await?;
                Ok(keys.into_iter().map(|k| k.key).collect())
            })
            .await
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
