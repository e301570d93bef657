//! The SQL that selects an export's contacts, shared by every step that reads them.
//!
//! The text is built from typed UUIDs only (their `Display` is hex and dashes), so it is safe
//! to inline: `DECLARE … CURSOR` takes no bind parameters, and one text for all queries keeps
//! the count, the keys and the rows selecting exactly the same set.

use uuid::Uuid;

/// Which contacts an export reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub workspace_id: Uuid,
    /// Any-of; empty means every contact of the workspace.
    pub tag_ids: Vec<Uuid>,
}

/// The columns the CSV encoder reads, in its order.
pub const CONTACT_COLUMNS: &str = "c.email, c.first_name, c.last_name, c.phone, c.company, c.notes, \
     c.is_unsubscribed, c.created_at, c.custom_fields";

impl Selection {
    /// `FROM contacts c WHERE …` for this selection.
    pub fn from_where(&self) -> String {
        let mut sql = format!(
            "FROM contacts c WHERE c.workspace_id = '{}'",
            self.workspace_id
        );
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

    /// The ordered scan the stream reads.
    pub fn rows_query(&self) -> String {
        format!(
            "SELECT {CONTACT_COLUMNS} {} ORDER BY c.id",
            self.from_where()
        )
    }

    /// The row count.
    pub fn count_query(&self) -> String {
        format!("SELECT count(*) AS n {}", self.from_where())
    }

    /// The distinct custom-field keys (order is the caller's to impose: code points, not the
    /// database's collation).
    pub fn keys_query(&self) -> String {
        format!(
            "SELECT DISTINCT jsonb_object_keys(c.custom_fields) AS key {} \
             AND jsonb_typeof(c.custom_fields) = 'object'",
            self.from_where()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlines_workspace_and_tags() {
        let ws = Uuid::nil();
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
