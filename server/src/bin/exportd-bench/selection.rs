//! Which contacts a measured export selects, said twice: as the filter fields of a
//! `CreateExportRequest`, and as SQL conditions for `psql \copy` and the seeder's counts.
//!
//! The SQL is written here, not taken from the service (`pipeline/selection.rs`), so that the
//! row counts of export and `\copy` cross-check the service's reading of its own filters. It
//! means the same: any-of is one `EXISTS` (one row per contact however many of the tags it
//! has), all-of one `EXISTS` per tag (the service counts the matching tags instead: the same
//! contacts), exclusions `NOT EXISTS`, the created range half-open (`>=` after, `<` before),
//! subscribed-only `NOT is_unsubscribed`. Everything is inlined from typed values (UUIDs and
//! instants), because `\copy` takes no bind parameters.

use chrono::{DateTime, SecondsFormat, Utc};
use contact_export_client::{CreateExportRequest, TagMatch};
use uuid::Uuid;

/// A selection of one workspace's contacts; the default is every contact.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Contacts with any of these tags (all of them with `all_tags`); empty: no tag condition.
    pub tags: Vec<Uuid>,
    pub all_tags: bool,
    /// Contacts with none of these tags.
    pub exclude_tags: Vec<Uuid>,
    /// Created at or after this instant.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before this instant.
    pub created_before: Option<DateTime<Utc>>,
    /// Only contacts that are not unsubscribed.
    pub subscribed_only: bool,
}

impl Selection {
    /// Contacts carrying any of `tags`.
    pub fn any_of(tags: Vec<Uuid>) -> Self {
        Selection {
            tags,
            ..Default::default()
        }
    }

    /// A request for a CSV of this selection (the caller sets format and compression).
    pub fn request(&self) -> CreateExportRequest {
        let ids = |ids: &[Uuid]| ids.iter().map(Uuid::to_string).collect();
        CreateExportRequest {
            tag_ids: ids(&self.tags),
            tag_match: if self.all_tags {
                TagMatch::All
            } else {
                TagMatch::Any
            } as i32,
            exclude_tag_ids: ids(&self.exclude_tags),
            created_after: self.created_after.map(timestamp),
            created_before: self.created_before.map(timestamp),
            subscribed_only: self.subscribed_only,
            filename: "exportd-bench".to_owned(),
            ..Default::default()
        }
    }

    /// The conditions on `contacts c` that select these contacts of `workspace_id`.
    pub fn conditions(&self, workspace_id: Uuid) -> String {
        let has_tag = |alias: &str, tags: &[Uuid]| {
            let tags: Vec<String> = tags.iter().map(|id| format!("'{id}'")).collect();
            format!(
                "EXISTS (SELECT 1 FROM contact_tags {alias} WHERE {alias}.contact_id = c.id \
                 AND {alias}.tag_id IN ({}))",
                tags.join(", ")
            )
        };
        let mut sql = format!("c.workspace_id = '{workspace_id}'");
        if self.all_tags {
            for tag in &self.tags {
                sql.push_str(&format!(
                    " AND {}",
                    has_tag("ct", std::slice::from_ref(tag))
                ));
            }
        } else if !self.tags.is_empty() {
            sql.push_str(&format!(" AND {}", has_tag("ct", &self.tags)));
        }
        if !self.exclude_tags.is_empty() {
            sql.push_str(&format!(" AND NOT {}", has_tag("cx", &self.exclude_tags)));
        }
        if let Some(after) = self.created_after {
            sql.push_str(&format!(" AND c.created_at >= {}", sql_instant(after)));
        }
        if let Some(before) = self.created_before {
            sql.push_str(&format!(" AND c.created_at < {}", sql_instant(before)));
        }
        if self.subscribed_only {
            sql.push_str(" AND NOT c.is_unsubscribed");
        }
        sql
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn sql_instant(t: DateTime<Utc>) -> String {
    format!(
        "timestamptz '{}'",
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_is_a_condition_and_a_request_field() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let selection = Selection {
            tags: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
            all_tags: true,
            exclude_tags: vec![Uuid::from_u128(3)],
            created_after: Some(at("2025-03-01T00:00:00Z")),
            created_before: Some(at("2025-11-01T00:00:00Z")),
            subscribed_only: true,
        };
        let sql = selection.conditions(Uuid::nil());
        assert_eq!(sql.matches(" AND EXISTS (").count(), 2, "{sql}");
        assert!(sql.contains(" AND NOT EXISTS (SELECT 1 FROM contact_tags cx"));
        assert!(sql.contains("c.created_at >= timestamptz '2025-03-01T00:00:00.000000Z'"));
        assert!(sql.contains("c.created_at < timestamptz '2025-11-01T00:00:00.000000Z'"));
        assert!(sql.ends_with(" AND NOT c.is_unsubscribed"), "{sql}");

        let request = selection.request();
        assert_eq!(request.tag_match(), TagMatch::All);
        assert_eq!(request.exclude_tag_ids, [Uuid::from_u128(3).to_string()]);
        assert_eq!(request.created_after.unwrap().seconds, 1_740_787_200);
        assert!(request.subscribed_only);

        let everyone = Selection::default();
        assert_eq!(
            everyone.conditions(Uuid::nil()),
            "c.workspace_id = '00000000-0000-0000-0000-000000000000'"
        );
        assert!(everyone.request().tag_ids.is_empty());
    }
}
