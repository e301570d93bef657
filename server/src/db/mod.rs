//! PostgreSQL access: connection pools, dedicated connections and migrations.

pub mod connect;
pub mod schema;

pub use connect::{Target, TargetError};

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
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
    #[error("database error: {}", connect::describe(.0))]
    Postgres(#[source] tokio_postgres::Error),
    #[error("no database connection available: {0}")]
    Pool(#[source] PoolError),
    #[error("building the connection pool failed: {0}")]
    PoolBuild(String),
    #[error("migrations failed: {0}")]
    Migrate(String),
    #[error(transparent)]
    Target(#[from] TargetError),
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        DbError::Pool(e)
    }
}

impl DbError {
    /// Whether the error is the connection's, not the statement's: the database went away,
    /// is restarting, or could not be reached in time. Worth retrying once it is back.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Query(e) => is_transient_query_error(e),
            DbError::Connect(_) => true,
            DbError::Postgres(e) => is_transient_postgres_error(e),
            DbError::Pool(e) => match e {
                PoolError::Timeout(_) => true,
                PoolError::Backend(
                    diesel_async::pooled_connection::PoolError::ConnectionError(_),
                ) => true,
                PoolError::Backend(diesel_async::pooled_connection::PoolError::QueryError(e)) => {
                    is_transient_query_error(e)
                }
                _ => false,
            },
            DbError::PoolBuild(_) | DbError::Migrate(_) | DbError::Target(_) => false,
        }
    }
}

/// Whether a diesel error is the connection's (see [`DbError::is_transient`]).
pub fn is_transient_query_error(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        // diesel-async reports an error without SQLSTATE (the socket's) this way.
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _) => true,
        // SQLSTATE class 57 (operator intervention: shutdown, restart) is not mapped to a kind
        // of its own: its messages say so.
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            message.starts_with("terminating connection")
                || message.contains("the database system is")
        }
        Error::BrokenTransactionManager => true,
        _ => false,
    }
}

/// Whether a tokio-postgres error is the connection's (see [`DbError::is_transient`]).
pub fn is_transient_postgres_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            class == "57" || class == "08"
        }
    }
}

/// How long a request waits for a pooled connection, and for a new one to be made, before
/// it fails instead of hanging on a database that does not answer.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a pool of connections to `target`. Connections are opened lazily; a checkout waits
/// at most [`CHECKOUT_TIMEOUT`].
pub fn pool(target: &Target, max_size: usize) -> Result<PgPool, DbError> {
    let mut config = ManagerConfig::default();
    let target = target.clone();
    config.custom_setup = Box::new(move |_url| {
        let target = target.clone();
        Box::pin(async move { target.diesel().await })
    });
    // The URL is not used: the setup above connects to the parsed target.
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config("", config);
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(CHECKOUT_TIMEOUT))
        .create_timeout(Some(CHECKOUT_TIMEOUT))
        .recycle_timeout(Some(CHECKOUT_TIMEOUT))
        .build()
        .map_err(|e| DbError::PoolBuild(e.to_string()))
}

/// `SELECT 1` on a pooled connection: whether the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    use diesel_async::SimpleAsyncConnection as _;
    let mut conn = pool.get().await?;
    conn.batch_execute("SELECT 1").await?;
    Ok(())
}

/// A connection of its own to `database_url`, outside any pool (for tools and tests).
pub async fn connect(database_url: &str) -> Result<AsyncPgConnection, DbError> {
    connect_to(&Target::parse(database_url, None)?).await
}

/// A connection of its own, outside the pool: for `LISTEN` and the migrations.
pub async fn connect_to(target: &Target) -> Result<AsyncPgConnection, DbError> {
    Ok(target.diesel().await?)
}

/// Applies pending migrations of our own tables.
pub async fn migrate(database_url: &str) -> Result<(), DbError> {
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_migrations::MigrationHarness;
    let conn = connect(database_url).await?;
    // The harness is synchronous; run it on a blocking thread through the wrapper, which works
    // whatever the flavour of the caller's runtime.
    tokio::task::spawn_blocking(move || {
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> = conn.into();
        conn.run_pending_migrations(MIGRATIONS)
            .map(|_| ())
            .map_err(|e| DbError::Migrate(e.to_string()))
    })
    .await
    .map_err(|e| DbError::Migrate(e.to_string()))?
}
