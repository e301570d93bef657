//! Step 1: whether the export's tags select anybody.
//!
//! Only "none" changes what happens next (a header-only file); the number of rows is counted
//! by the metadata step, in the snapshot the stream reads. So this step stops at the first
//! match instead of counting them all.

use diesel::QueryableByName;
use diesel::sql_types::Bool;
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
    /// Whether any contact carried one of them when the step ran; `None` without tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_match: Option<bool>,
    /// How many contacts carried one of them, as earlier versions counted here; read so that
    /// a job one of them started resumes after this step. Never written with tags now.
    #[serde(default)]
    pub matched_contacts: Option<i64>,
}

impl TagFilter {
    /// True when the tags select nobody: the export is a header-only file.
    pub fn matches_nothing(&self) -> bool {
        self.any_match == Some(false) || self.matched_contacts == Some(0)
    }
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Bool)]
    found: bool,
}

/// Resolves the filter of `selection`.
pub async fn run(
    conn: &mut AsyncPgConnection,
    selection: &Selection,
) -> Result<TagFilter, StepError> {
    if selection.tag_ids.is_empty() {
        return Ok(TagFilter {
            tag_ids: Vec::new(),
            any_match: None,
            matched_contacts: None,
        });
    }
    let Found { found } = diesel::sql_query(selection.exists_query())
        .get_result(conn)
        .await?;
    Ok(TagFilter {
        tag_ids: selection.tag_ids.clone(),
        any_match: Some(found),
        matched_contacts: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn persisted_output_reads_old_and_new_records() {
        // Without tags the record is what it always was.
        let none = TagFilter {
            tag_ids: vec![],
            any_match: None,
            matched_contacts: None,
        };
        assert_eq!(
            serde_json::to_value(&none).unwrap(),
            json!({"tag_ids": [], "matched_contacts": null})
        );
        let tag = Uuid::max();
        let found = TagFilter {
            tag_ids: vec![tag],
            any_match: Some(true),
            matched_contacts: None,
        };
        let back: TagFilter =
            serde_json::from_value(serde_json::to_value(&found).unwrap()).unwrap();
        assert_eq!(back, found);
        assert!(!found.matches_nothing());
        let nobody = TagFilter {
            any_match: Some(false),
            ..found
        };
        assert!(nobody.matches_nothing());
        // Records of the version that counted here.
        for (count, nothing) in [(0, true), (7, false)] {
            let old: TagFilter =
                serde_json::from_value(json!({"tag_ids": [tag], "matched_contacts": count}))
                    .unwrap();
            assert_eq!(old.matches_nothing(), nothing);
        }
    }
}
