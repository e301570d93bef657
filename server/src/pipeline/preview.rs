//! A dry run (`validate_only`): what an export would hold if it ran now. The same selection
//! and the same one-pass count-and-keys query as the metadata step, and the same column plan as
//! the file's encoder, so the answer is the file's header row and row count as of now.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::format;
use super::format::columns::sort_keys;
use super::selection::Selection;
use crate::exports::ExportOptions;

/// What the file would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub total_rows: i64,
    /// Every header of the file, in order.
    pub headers: Vec<String>,
}

#[derive(QueryableByName)]
struct KeyCount {
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
    #[diesel(sql_type = BigInt)]
    firsts: i64,
}

/// Counts the contacts `selection` matches now and lays out the columns of their file.
pub async fn preview(
    conn: &mut AsyncPgConnection,
    selection: &Selection,
    options: &ExportOptions,
) -> Result<Preview, diesel::result::Error> {
    let counts: Vec<KeyCount> = diesel::sql_query(selection.metadata_query())
        .load(conn)
        .await?;
    let total_rows = counts.iter().map(|c| c.firsts).sum();
    let mut keys: Vec<String> = counts.into_iter().filter_map(|c| c.key).collect();
    sort_keys(&mut keys);
    Ok(Preview {
        total_rows,
        headers: format::headers(options, &keys),
    })
}
