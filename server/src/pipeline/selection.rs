//! The SQL that selects an export's contacts, shared by every step that reads them.
//!
//! The text is built from typed values only (UUIDs, whose `Display` is hex and dashes, and
//! timestamps written as RFC 3339 digits), so it is safe to inline: `COPY` takes no bind
//! parameters, and one text for all queries keeps the count, the keys and the rows selecting
//! exactly the same set.
//!
//! The plans stay one scan of the workspace's contacts in id order: each tag condition is a
//! probe of `contact_tags`' `(tag_id, contact_id)` key per contact or a hash semi-join (all-of
//! is one semi-join per tag, see [`ALL_OF_JOINS_MAX`]), the dates and the subscription are
//! conditions on the row itself. There are no pages, so the per-page rescan of the tag index
//! (`../shared/STACK.md`) cannot happen; `exportd-bench` measures a combined filter.

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::exports::{Filter, TagMatch};
use crate::ids::WorkspaceId;

use super::copy_rows::COPY_COLUMNS;

/// The most tags an all-of filter tests with one `EXISTS` each; more are grouped.
///
/// Measured on the benchmark's data (1M contacts, all of two tags, an excluded tag, a created
/// range, subscribed only: 30,499 rows): a correlated `count(*) = n` per contact took 2.09 s
/// (one index probe per contact, 604,287 of them), `IN (… GROUP BY contact_id HAVING
/// count(*) = n)` 0.83 s, one `EXISTS` per tag 0.47 s (a binary `COPY` of it 0.30 s). Planning
/// `EXISTS` per tag took 3–12 ms up to six tags, 91 ms at eight and 2.4 s at a hundred.
pub const ALL_OF_JOINS_MAX: usize = 6;

/// Which contacts an export reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub workspace_id: WorkspaceId,
    /// Any-of (all-of with [`TagMatch::All`]); empty means every contact of the workspace.
    pub tag_ids: Vec<Uuid>,
    /// The other filters.
    pub filter: Filter,
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
            let tags = uuid_array(&self.tag_ids);
            match self.filter.tag_match {
                // EXISTS keeps one row per contact however many of the tags it carries, and
                // probes the (tag_id, contact_id) key per contact instead of rescanning tags.
                TagMatch::Any => sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM contact_tags ct WHERE ct.contact_id = c.id \
                     AND ct.tag_id = ANY({tags}))"
                )),
                // One EXISTS per tag: each becomes a semi-join of its own that PostgreSQL can
                // hash (or run in parallel). Past a few tags planning them grows fast, and
                // one grouping of the tags' rows takes over (see ALL_OF_JOINS_MAX).
                TagMatch::All if self.tag_ids.len() <= ALL_OF_JOINS_MAX => {
                    for tag in &self.tag_ids {
                        sql.push_str(&format!(
                            " AND EXISTS (SELECT 1 FROM contact_tags ct WHERE ct.contact_id = c.id \
                             AND ct.tag_id = '{tag}')"
                        ));
                    }
                }
                // The key is unique: as many matching rows as tags means every tag.
                TagMatch::All => sql.push_str(&format!(
                    " AND c.id IN (SELECT ct.contact_id FROM contact_tags ct \
                     WHERE ct.tag_id = ANY({tags}) GROUP BY ct.contact_id HAVING count(*) = {})",
                    self.tag_ids.len()
                )),
            }
        }
        if !self.filter.exclude_tag_ids.is_empty() {
            sql.push_str(&format!(
                " AND NOT EXISTS (SELECT 1 FROM contact_tags cx WHERE cx.contact_id = c.id \
                 AND cx.tag_id = ANY({}))",
                uuid_array(&self.filter.exclude_tag_ids)
            ));
        }
        if let Some(after) = self.filter.created_after {
            sql.push_str(&format!(" AND c.created_at >= {}", timestamp(after)));
        }
        if let Some(before) = self.filter.created_before {
            sql.push_str(&format!(" AND c.created_at < {}", timestamp(before)));
        }
        if self.filter.subscribed_only {
            sql.push_str(" AND NOT c.is_unsubscribed");
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
/// A `uuid[]` literal.
fn uuid_array(ids: &[Uuid]) -> String {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    format!("'{{{}}}'::uuid[]", ids.join(","))
}

/// A `timestamptz` literal (microseconds, UTC).
fn timestamp(t: DateTime<Utc>) -> String {
    format!(
        "'{}'::timestamptz",
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    )
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
            filter: Filter::default(),
        };
        assert_eq!(
            all.from_where(),
            "FROM contacts c WHERE c.workspace_id = '00000000-0000-0000-0000-000000000000'"
        );
        let tagged = Selection {
            workspace_id: ws,
            tag_ids: vec![tag],
            filter: Filter::default(),
        };
        assert!(
            tagged
                .from_where()
                .ends_with("ANY('{ffffffff-ffff-ffff-ffff-ffffffffffff}'::uuid[]))")
        );
    }

    #[test]
    fn every_filter_is_a_condition_on_the_row() {
        let filtered = Selection {
            workspace_id: WorkspaceId(Uuid::nil()),
            tag_ids: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
            filter: Filter {
                tag_match: TagMatch::All,
                exclude_tag_ids: vec![Uuid::from_u128(3)],
                created_after: DateTime::from_timestamp(1_700_000_000, 5_000),
                created_before: DateTime::from_timestamp(1_800_000_000, 0),
                subscribed_only: true,
            },
        };
        let sql = filtered.from_where();
        for tag in 1..=2 {
            let exists = format!(
                "AND EXISTS (SELECT 1 FROM contact_tags ct WHERE ct.contact_id = c.id \
                 AND ct.tag_id = '{}')",
                Uuid::from_u128(tag)
            );
            assert!(sql.contains(&exists), "{sql}");
        }
        assert!(
            sql.contains("AND NOT EXISTS (SELECT 1 FROM contact_tags cx"),
            "{sql}"
        );
        assert!(
            sql.contains("c.created_at >= '2023-11-14T22:13:20.000005Z'::timestamptz"),
            "{sql}"
        );
        assert!(
            sql.contains("c.created_at < '2027-01-15T08:00:00.000000Z'::timestamptz"),
            "{sql}"
        );
        assert!(sql.ends_with(" AND NOT c.is_unsubscribed"), "{sql}");
    }

    #[test]
    fn all_of_many_tags_is_one_grouping() {
        let many = Selection {
            workspace_id: WorkspaceId(Uuid::nil()),
            tag_ids: (1..=ALL_OF_JOINS_MAX as u128 + 1)
                .map(Uuid::from_u128)
                .collect(),
            filter: Filter {
                tag_match: TagMatch::All,
                ..Filter::default()
            },
        };
        let sql = many.from_where();
        assert!(!sql.contains("EXISTS"), "{sql}");
        assert!(
            sql.ends_with(&format!(
                "GROUP BY ct.contact_id HAVING count(*) = {})",
                ALL_OF_JOINS_MAX + 1
            )),
            "{sql}"
        );
    }
}
