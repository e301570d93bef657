//! What a `request_id` is bound to. Reusing a key retries the request it was first used with;
//! reusing it for another request is a caller's mistake that we refuse, naming what differs,
//! rather than answer with an export of something else (as Stripe does).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::ExportId;

use super::{ExportError, ExportOptions};

/// The parameters of a `CreateExport` call, in the canonical form stored in `exports.request`.
/// Two calls are the same request when these are equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestParams {
    /// Sorted and distinct: the export is the same whatever their order or repetition.
    pub tag_ids: Vec<Uuid>,
    /// As the caller sent it, before sanitising: an empty one stands for "a timestamped name",
    /// which is the same request a minute later although the name it yields is not.
    pub filename: String,
    /// Resolved, so that absent options and explicit defaults are the same request: the CSV's
    /// own options and every other shape and filter field (stored under this name since the
    /// CSV options were all there was; keys stored then read with the defaults of the rest).
    pub csv_options: ExportOptions,
    /// As checked (normalised by URL parsing); absent in keys stored before webhooks.
    pub notify_url: Option<String>,
}

impl RequestParams {
    pub fn new(
        tag_ids: &[Uuid],
        filename: &str,
        csv_options: ExportOptions,
        notify_url: Option<&str>,
    ) -> Self {
        let mut tag_ids = tag_ids.to_vec();
        tag_ids.sort_unstable();
        tag_ids.dedup();
        RequestParams {
            tag_ids,
            filename: filename.to_owned(),
            csv_options,
            notify_url: notify_url.map(str::to_owned),
        }
    }

    /// The request fields (by their names in the API) whose values differ.
    pub fn differences(&self, other: &RequestParams) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.tag_ids != other.tag_ids {
            fields.push("tag_ids");
        }
        if self.filename != other.filename {
            fields.push("filename");
        }
        let (mine, theirs) = (&self.csv_options, &other.csv_options);
        let (filter, other_filter) = (&mine.filter, &theirs.filter);
        for (field, differs) in [
            ("csv_options", mine.csv != theirs.csv),
            ("format", mine.format != theirs.format),
            ("compression", mine.compression != theirs.compression),
            ("columns", mine.columns != theirs.columns),
            ("tag_match", filter.tag_match != other_filter.tag_match),
            (
                "exclude_tag_ids",
                sorted(&filter.exclude_tag_ids) != sorted(&other_filter.exclude_tag_ids),
            ),
            (
                "created_after",
                filter.created_after != other_filter.created_after,
            ),
            (
                "created_before",
                filter.created_before != other_filter.created_before,
            ),
            (
                "subscribed_only",
                filter.subscribed_only != other_filter.subscribed_only,
            ),
        ] {
            if differs {
                fields.push(field);
            }
        }
        if self.notify_url != other.notify_url {
            fields.push("notify_url");
        }
        fields
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("request parameters serialise")
    }
}

/// Tag ids as a set.
fn sorted(ids: &[Uuid]) -> Vec<Uuid> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Decides whether a call may replay the export `first_id` made earlier under `request_id`:
/// yes when `stored` (its `exports.request`) holds the same parameters as `params`, else
/// FAILED_PRECONDITION naming the fields that differ.
///
/// An export made before parameters were stored (`stored` is NULL) keeps the rule it was made
/// under: the key alone returns it. So does a stored value this version cannot read (written by
/// a newer one), rather than refusing a retry that may well be legitimate.
pub fn check_replay(
    request_id: &str,
    first_id: ExportId,
    stored: Option<&serde_json::Value>,
    params: &RequestParams,
) -> Result<(), ExportError> {
    let Some(stored) = stored else {
        return Ok(());
    };
    let first: RequestParams = match serde_json::from_value(stored.clone()) {
        Ok(first) => first,
        Err(error) => {
            tracing::warn!(export = %first_id, %error, "unreadable exports.request; replaying");
            return Ok(());
        }
    };
    let differences = first.differences(params);
    if differences.is_empty() {
        return Ok(());
    }
    Err(ExportError::FailedPrecondition(format!(
        "request_id {request_id:?} was first used with other {} (export {first_id}); \
         reuse a request_id only to retry the same request, and send a new one for another export",
        differences.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn params(tags: &[u128], filename: &str) -> RequestParams {
        let tags: Vec<Uuid> = tags.iter().copied().map(tag).collect();
        RequestParams::new(&tags, filename, ExportOptions::default(), None)
    }

    fn check(first: &RequestParams, again: &RequestParams) -> Result<(), ExportError> {
        check_replay("k", ExportId(Uuid::nil()), Some(&first.to_json()), again)
    }

    #[test]
    fn tag_ids_compare_as_a_set() {
        assert_eq!(params(&[1, 2, 2], "f"), params(&[2, 1], "f"));
        assert!(check(&params(&[1, 2], "f"), &params(&[2, 1, 1], "f")).is_ok());
        assert_eq!(
            params(&[1, 2], "f").differences(&params(&[1], "f")),
            ["tag_ids"]
        );
    }

    #[test]
    fn filename_compares_as_sent() {
        // Both sanitise to `a.csv`, but the caller asked for different things.
        assert_eq!(
            params(&[], "a").differences(&params(&[], "a.csv")),
            ["filename"]
        );
        // An empty name means "a timestamped one" every time.
        assert!(check(&params(&[], ""), &params(&[], "")).is_ok());
    }

    #[test]
    fn csv_options_compare_resolved() {
        let first = params(&[], "f");
        let mut again = first.clone();
        again.csv_options.csv.neutralize_formulas = false;
        assert_eq!(first.differences(&again), ["csv_options"]);
        again.csv_options = ExportOptions::default();
        assert!(first.differences(&again).is_empty());
    }

    #[test]
    fn shape_and_filters_are_named_one_by_one() {
        let first = params(&[], "f");
        let mut again = first.clone();
        again.csv_options.format = super::super::ExportFormat::Jsonl;
        again.csv_options.filter.subscribed_only = true;
        again.csv_options.filter.exclude_tag_ids = vec![tag(2), tag(1)];
        assert_eq!(
            first.differences(&again),
            ["format", "exclude_tag_ids", "subscribed_only"]
        );
        let mut reordered = again.clone();
        reordered.csv_options.filter.exclude_tag_ids = vec![tag(1), tag(2), tag(1)];
        assert!(again.differences(&reordered).is_empty(), "a set");
        // A key stored before these fields existed reads with their defaults.
        let old: RequestParams = serde_json::from_value(serde_json::json!({
            "tag_ids": [], "filename": "f", "csv_options": {"neutralize_formulas": true}
        }))
        .unwrap();
        assert!(old.differences(&first).is_empty());
    }

    #[test]
    fn a_conflict_names_every_field_that_differs() {
        let err = check(&params(&[1], "a"), &params(&[2], "b")).unwrap_err();
        let ExportError::FailedPrecondition(message) = err else {
            panic!("{err:?}");
        };
        assert!(
            message.starts_with(&format!(
                "request_id \"k\" was first used with other tag_ids, filename (export {})",
                Uuid::nil()
            )),
            "{message}"
        );
    }

    #[test]
    fn round_trips_and_reads_older_rows() {
        let p = params(&[3, 1], "x");
        assert_eq!(
            serde_json::from_value::<RequestParams>(p.to_json()).unwrap(),
            p
        );
        // A field added later reads as its default from a row written before it existed.
        let old = serde_json::json!({ "tag_ids": [], "filename": "" });
        assert!(check_replay("k", ExportId(Uuid::nil()), Some(&old), &params(&[], "")).is_ok());
    }

    #[test]
    fn rows_without_stored_parameters_replay_on_the_key_alone() {
        assert!(check_replay("k", ExportId(Uuid::nil()), None, &params(&[1], "any")).is_ok());
    }
}
