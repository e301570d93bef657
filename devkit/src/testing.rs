//! What the crate's tests share: starting a cluster from async code, counting rows.

use std::path::Path;

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::postgres::Cluster;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The one `bigint` column `n` of the one row `sql` returns.
pub(crate) async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// [`Cluster::start`] on a blocking thread.
pub(crate) async fn start(dir: &Path) -> Cluster {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || Cluster::start(&dir))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
