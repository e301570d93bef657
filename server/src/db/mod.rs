//! PostgreSQL access: connection pools, dedicated connections and migrations.

pub mod schema;

use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// Our own tables; never the CRM's.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// The shared pool.
pub type PgPool = Pool<AsyncPgConnection>;
/// A connection borrowed from [`PgPool`].
pub type PooledConn = Object<AsyncPgConnection>;

/// Errors reaching or using the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    /// From a connection of our own outside diesel (the snapshot's).
    #[error("database error: {0}")]
    Postgres(#[source] tokio_postgres::Error),
    #[error("no database connection available: {0}")]
    Pool(String),
    #[error("migrations failed: {0}")]
    Migrate(String),
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for DbError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        DbError::Pool(e.to_string())
    }
}

/// Builds the pool. Connections are opened lazily.
pub fn pool(database_url: &str, max_size: usize) -> Result<PgPool, DbError> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// A connection of its own, outside the pool: for `LISTEN` and for a snapshot that lives as long
/// as an export's stream, so that dropping it always ends its session.
pub async fn connect(database_url: &str) -> Result<AsyncPgConnection, DbError> {
    Ok(AsyncPgConnection::establish(database_url).await?)
}

/// Applies pending migrations of our own tables.
pub async fn migrate(database_url: &str) -> Result<(), DbError> {
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_migrations::MigrationHarness;
    let url = database_url.to_owned();
    // The harness is synchronous; run it on a blocking thread through the wrapper, which works
    // whatever the flavour of the caller's runtime.
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)?;
        conn.run_pending_migrations(MIGRATIONS)
            .map(|_| ())
            .map_err(|e| DbError::Migrate(e.to_string()))
    })
    .await
    .map_err(|e| DbError::Migrate(e.to_string()))?
}
