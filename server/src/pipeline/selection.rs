//! The SQL that selects an export's contacts, shared by every step that reads them.
//!
//! The text is built from typed UUIDs only (their `Display` is hex and dashes), so it is safe
//! to inline: `COPY` takes no bind parameters, and one text for all queries keeps the count,
//! the keys and the rows selecting exactly the same set.

use uuid::Uuid;

use crate::ids::WorkspaceId;

use super::copy_rows::COPY_COLUMNS;

/// Which contacts an export reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub workspace_id: WorkspaceId,
    /// Any-of; empty means every contact of the workspace.
    pub tag_ids: Vec<Uuid>,
}

impl Selection {
    /// `FROM contacts c WHERE …` for this selection.
    pub fn from_where(&self) -> String {
        format!("FROM contacts c WHERE {}", self.conditions())
    }

    /// The conditions on `contacts c` that select this selection's rows.
    fn conditions(&self) -> String {
        let mut sql = format!("c.workspace_id = '{}'", self.workspace_id);
        if !self.tag_ids.is_empty() {
            let tags: Vec<String> = self.tag_ids.iter().map(Uuid::to_string).collect();
            // EXISTS keeps one row per contact however many of the tags it carries, and probes
            // the (tag_id, contact_id) key per contact instead of rescanning tags per page.
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM contact_tags ct WHERE ct.contact_id = c.id \
                 AND ct.tag_id = ANY('{{{}}}'::uuid[]))",
                tags.join(",")
            ));
        }
        sql
    }

    /// The ordered scan the stream reads, as a binary `COPY` (see
    /// [`super::copy_rows`]).
    pub fn copy_statement(&self) -> String {
        format!(
            "COPY (SELECT {COPY_COLUMNS} {} ORDER BY c.id) TO STDOUT (FORMAT binary)",
            self.from_where()
        )
    }

    /// Whether any row is selected at all (stops at the first).
    pub fn exists_query(&self) -> String {
        format!("SELECT EXISTS (SELECT 1 {}) AS found", self.from_where())
    }

    /// The distinct custom-field keys and the row count in one pass: one row per key, plus
    /// one with a `NULL` key standing for the rows that have none. `firsts` counts the rows
    /// whose first key (in jsonb's order) it is, or for `NULL` the rows without keys, so each
    /// row is counted exactly once and the row count is the sum of `firsts`. (Key order is
    /// the caller's to impose: code points, not the database's collation.)
    ///
    /// One pass instead of a count beside a keys query: on the benchmark's data it is as fast
    /// as the two side by side for all contacts, and twice as fast with a tag filter, whose
    /// join the two queries each made.
    ///
    /// Not `WHERE jsonb_typeof(c.custom_fields) = 'object'`: PostgreSQL estimates that
    /// condition at 0.5% of the rows, and on that estimate sorts the keys of a million rows on
    /// disk and probes the tag index once per contact (1.1 s and 1.6 s on the benchmark's
    /// data). The `CASE` leaves the row estimate alone, and `GROUP BY` lets each parallel
    /// worker aggregate its own keys.
    pub fn metadata_query(&self) -> String {
        format!(
            "SELECT k.key, count(*) FILTER (WHERE k.ord IS NULL OR k.ord = 1) AS firsts \
             FROM contacts c LEFT JOIN LATERAL jsonb_object_keys(CASE WHEN \
             jsonb_typeof(c.custom_fields) = 'object' THEN c.custom_fields ELSE '{{}}'::jsonb \
             END) WITH ORDINALITY AS k(key, ord) ON true WHERE {} GROUP BY k.key",
            self.conditions()
        )
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlines_workspace_and_tags() {
        let ws = WorkspaceId(Uuid::nil());
        let tag = Uuid::max();
        let all = Selection {
            workspace_id: ws,
            tag_ids: vec![],
        };
        assert_eq!(
            all.from_where(),
            "FROM contacts c WHERE c.workspace_id = '00000000-0000-0000-0000-000000000000'"
        );
        let tagged = Selection {
            workspace_id: ws,
            tag_ids: vec![tag],
        };
        assert!(
            tagged
                .from_where()
                .ends_with("ANY('{ffffffff-ffff-ffff-ffff-ffffffffffff}'::uuid[]))")
        );
    }
}
