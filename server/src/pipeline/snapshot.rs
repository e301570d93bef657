//! One consistent view of the contacts for an export's metadata and stream.
//!
//! A `REPEATABLE READ READ ONLY` transaction on a dedicated connection exports its snapshot;
//! the metadata queries import it on pooled connections and run beside each other, and the
//! stream reads through a cursor in the owning transaction. Row count, custom keys and rows
//! therefore describe the same data, whatever the CRM writes meanwhile. Dropping the
//! [`Snapshot`] closes its connection and with it the transaction.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use super::csv::ContactRow;
use super::custom_fields::CustomFields;
use super::selection::Selection;
use crate::db::{self, DbError};

const CURSOR: &str = "export_rows";

/// An open snapshot and the connection that owns it.
pub struct Snapshot {
    conn: AsyncPgConnection,
    id: String,
    cursor_open: bool,
}

#[derive(QueryableByName)]
struct SnapshotId {
    #[diesel(sql_type = Text)]
    id: String,
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
        let mut conn = db::connect(database_url).await?;
        // JIT compilation costs more than it saves on these scans (up to 0.7 s for the keys
        // of a million rows, measured): off for the snapshot and the queries that import it.
        conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL jit = off")
            .await?;
        let SnapshotId { id } = diesel::sql_query("SELECT pg_export_snapshot() AS id")
            .get_result(&mut conn)
            .await?;
        // Snapshot ids look like `00000003-0000001B-1`; anything else must not reach SQL text.
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(DbError::Query(diesel::result::Error::QueryBuilderError(
                format!("unexpected snapshot id {id:?}").into(),
            )));
        }
        Ok(Snapshot {
            conn,
            id,
            cursor_open: false,
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

    /// Starts (or restarts, for a retry) the ordered scan of the selected rows.
    pub async fn open_cursor(
        &mut self,
        selection: &Selection,
    ) -> Result<(), diesel::result::Error> {
        if self.cursor_open {
            self.conn.batch_execute(&format!("CLOSE {CURSOR}")).await?;
            self.cursor_open = false;
        }
        let declare = format!(
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR {}",
            selection.rows_query()
        );
        self.conn.batch_execute(&declare).await?;
        self.cursor_open = true;
        Ok(())
    }

    /// The next batch of the scan; empty at the end.
    pub async fn fetch(
        &mut self,
        batch: usize,
    ) -> Result<Vec<ContactRow<CustomFields>>, diesel::result::Error> {
        diesel::sql_query(format!("FETCH {batch} FROM {CURSOR}"))
            .load(&mut self.conn)
            .await
    }
}
