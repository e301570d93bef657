//! A validated request for a new export.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::filename::sanitize_filename_with;
use super::idempotency::RequestParams;
use super::{ColumnName, ExportError, ExportOptions, TagMatch};

/// At most this many tag ids in one request.
pub const MAX_TAG_IDS: usize = 1_000;
/// At most this many bytes of idempotency key.
pub const MAX_REQUEST_ID_BYTES: usize = 200;
/// At most this many columns in a list, and bytes in a custom key's name.
pub const MAX_COLUMNS: usize = 1_000;
pub const MAX_KEY_BYTES: usize = 1_000;

/// What a caller asked for, checked and normalised (tag existence is checked by the query that
/// creates the export, inside its transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewExport {
    /// Distinct, in the caller's order.
    pub tag_ids: Vec<Uuid>,
    /// Sanitised: the name the file gets.
    pub filename: String,
    /// As the caller sent it: what a reused `request_id` is compared on.
    pub requested_filename: String,
    pub request_id: Option<String>,
    pub options: ExportOptions,
    /// The caller's webhook, checked against the operator's allow list by the caller of
    /// [`NewExport::parse`] (which needs the network to resolve it).
    pub notify_url: Option<String>,
}

impl NewExport {
    /// Checks and normalises raw request fields.
    pub fn parse(
        tag_ids: &[String],
        filename: &str,
        request_id: &str,
        options: ExportOptions,
        now: DateTime<Utc>,
    ) -> Result<Self, ExportError> {
        if tag_ids.len() > MAX_TAG_IDS {
            return Err(ExportError::invalid(
                "tag_ids",
                format!("at most {MAX_TAG_IDS} tag ids, got {}", tag_ids.len()),
            ));
        }
        let mut parsed = Vec::with_capacity(tag_ids.len());
        for raw in tag_ids {
            let id = Uuid::try_parse(raw.trim())
                .map_err(|_| ExportError::invalid("tag_ids", format!("{raw:?} is not a UUID")))?;
            if !parsed.contains(&id) {
                parsed.push(id);
            }
        }
        let request_id = match request_id {
            "" => None,
            r if r.len() > MAX_REQUEST_ID_BYTES => {
                return Err(ExportError::invalid(
                    "request_id",
                    format!("at most {MAX_REQUEST_ID_BYTES} bytes"),
                ));
            }
            r if r.chars().any(char::is_control) => {
                return Err(ExportError::invalid(
                    "request_id",
                    "must not contain control characters",
                ));
            }
            r => Some(r.to_owned()),
        };
        check_options(&options, &parsed)?;
        Ok(NewExport {
            tag_ids: parsed,
            filename: sanitize_filename_with(filename, now, &options.extension()),
            requested_filename: filename.to_owned(),
            request_id,
            options,
            notify_url: None,
        })
    }

    /// The parameters a `request_id` is bound to.
    pub fn params(&self) -> RequestParams {
        RequestParams::new(
            &self.tag_ids,
            &self.requested_filename,
            self.options.clone(),
            self.notify_url.as_deref(),
        )
    }
}

/// The rules on options that the fields' own parsing cannot check: each names its field.
fn check_options(options: &ExportOptions, tag_ids: &[Uuid]) -> Result<(), ExportError> {
    if let Some(list) = &options.columns {
        if list.columns.len() > MAX_COLUMNS {
            return Err(ExportError::invalid(
                "columns",
                format!("at most {MAX_COLUMNS} columns, got {}", list.columns.len()),
            ));
        }
        for (i, column) in list.columns.iter().enumerate() {
            if let ColumnName::Custom(key) = column
                && key.len() > MAX_KEY_BYTES
            {
                // Named by its place and start: the whole key would swamp the message.
                let start: String = key.chars().take(40).collect();
                return Err(ExportError::invalid(
                    "columns",
                    format!(
                        "column {} (custom_fields.{start}…) has a key of {} bytes; a custom \
                         key is at most {MAX_KEY_BYTES} bytes",
                        i + 1,
                        key.len()
                    ),
                ));
            }
            if list.columns[..i].contains(column) {
                return Err(ExportError::invalid(
                    "columns",
                    format!("{:?} is listed twice", column.as_api()),
                ));
            }
        }
    }
    let filter = &options.filter;
    if filter.tag_match == TagMatch::All && tag_ids.is_empty() {
        return Err(ExportError::invalid(
            "tag_match",
            "TAG_MATCH_ALL needs tag_ids to match",
        ));
    }
    if filter.exclude_tag_ids.len() > MAX_TAG_IDS {
        return Err(ExportError::invalid(
            "exclude_tag_ids",
            format!(
                "at most {MAX_TAG_IDS} tag ids, got {}",
                filter.exclude_tag_ids.len()
            ),
        ));
    }
    if let Some(both) = filter.exclude_tag_ids.iter().find(|t| tag_ids.contains(t)) {
        return Err(ExportError::invalid(
            "exclude_tag_ids",
            format!("{both} is also in tag_ids"),
        ));
    }
    if let (Some(after), Some(before)) = (filter.created_after, filter.created_before)
        && after >= before
    {
        return Err(ExportError::invalid(
            "created_before",
            format!("{before:?} is not after created_after {after:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::{ColumnList, FixedColumn};

    fn parse(tags: &[&str], request_id: &str) -> Result<NewExport, ExportError> {
        let tags: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
        NewExport::parse(&tags, "", request_id, ExportOptions::default(), Utc::now())
    }

    #[test]
    fn names_the_tag_id_that_is_not_a_uuid() {
        let err = parse(&["3f1c1b8e-8a52-4c55-9d1c-2f7d1c1a0b11", "nope"], "").unwrap_err();
        assert_eq!(err.to_string(), r#"tag_ids: "nope" is not a UUID"#);
    }

    #[test]
    fn deduplicates_tags_and_keeps_order() {
        let a = "3f1c1b8e-8a52-4c55-9d1c-2f7d1c1a0b11";
        let b = "00000000-0000-4000-8000-000000000001";
        let parsed = parse(&[b, a, b], "").unwrap();
        assert_eq!(
            parsed.tag_ids,
            vec![Uuid::parse_str(b).unwrap(), Uuid::parse_str(a).unwrap()]
        );
    }

    #[test]
    fn a_custom_key_too_long_is_refused_naming_its_column() {
        let options = |key: String| ExportOptions {
            columns: Some(ColumnList {
                columns: vec![
                    ColumnName::Fixed(FixedColumn::Email),
                    ColumnName::Custom(key),
                ],
                include_other_custom_fields: false,
            }),
            ..ExportOptions::default()
        };
        let parse = |options| NewExport::parse(&[], "", "", options, Utc::now());
        assert!(parse(options("k".repeat(MAX_KEY_BYTES))).is_ok());
        let err = parse(options("k".repeat(MAX_KEY_BYTES + 1))).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "columns: column 2 (custom_fields.{}…) has a key of 1001 bytes; a custom key \
                 is at most 1000 bytes",
                "k".repeat(40)
            )
        );
    }

    #[test]
    fn rejects_too_many_tags() {
        let many = vec![Uuid::nil().to_string(); MAX_TAG_IDS + 1];
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            parse(&refs, ""),
            Err(ExportError::InvalidArgument {
                field: "tag_ids",
                ..
            })
        ));
    }

    #[test]
    fn request_id_rules() {
        assert_eq!(parse(&[], "").unwrap().request_id, None);
        assert_eq!(
            parse(&[], "k-1").unwrap().request_id.as_deref(),
            Some("k-1")
        );
        assert!(parse(&[], "a\nb").is_err());
        assert!(parse(&[], &"x".repeat(MAX_REQUEST_ID_BYTES + 1)).is_err());
    }
}
