//! Step 1: how many contacts the export's tags select.

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::pipeline::selection::Selection;
use crate::pipeline::step::StepError;

/// The persisted output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagFilter {
    /// The tags asked for; empty for an export of all contacts.
    pub tag_ids: Vec<Uuid>,
    /// Contacts carrying at least one of them when the step ran; `None` without tags.
    pub matched_contacts: Option<i64>,
}

impl TagFilter {
    /// True when the tags select nobody: the export is a header-only file.
    pub fn matches_nothing(&self) -> bool {
        self.matched_contacts == Some(0)
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Resolves the filter of `selection`.
pub async fn run(
    conn: &mut AsyncPgConnection,
    selection: &Selection,
) -> Result<TagFilter, StepError> {
    if selection.tag_ids.is_empty() {
        return Ok(TagFilter {
            tag_ids: Vec::new(),
            matched_contacts: None,
        });
    }
    let Count { n } = diesel::sql_query(selection.count_query())
        .get_result(conn)
        .await?;
    Ok(TagFilter {
        tag_ids: selection.tag_ids.clone(),
        matched_contacts: Some(n),
    })
}
