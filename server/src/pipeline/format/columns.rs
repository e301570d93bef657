//! Which columns a file has, in which order, and what each header reads: the same for every
//! format.
//!
//! Without a column list: the eight fixed columns [`FIXED_COLUMNS`], then one column per
//! custom-field key of the exported rows, in Unicode code-point order ([`sort_keys`]). With a
//! list ([`ColumnList`]): its columns in its order, then (with `include_other_custom_fields`)
//! every other key of the rows in code-point order. A key missing on a row gives an empty cell
//! (JSON Lines: no member), so columns never shift.
//!
//! # Header names of custom keys
//!
//! A custom key is its own header, with one exception: a key that is *exactly*
//! (case-sensitively) one of the fixed column names is written as `custom_fields.<key>`, so
//! that every header names one column. If that qualified name is itself a custom key, or is
//! already taken, ` (2)`, ` (3)`, … is appended until the name is unique. Keys that are their
//! own header claim their names first, so a generated name never takes the header of a real
//! key (keys `custom_fields.email` and `email` give `custom_fields.email` and
//! `custom_fields.email (2)` respectively). The rule runs over the custom keys the file has
//! (all of them, or those of the list); the fixed names are always taken, listed or not.
//! [`headers`] applies exactly this rule. A format may ask for another own name of a key (CSV
//! neutralises formula triggers in headers); the rule then runs on those names.

use std::collections::HashSet;

use crate::exports::{ColumnList, ColumnName, FixedColumn};

/// The fixed leading columns, in order.
pub const FIXED_COLUMNS: [&str; 8] = [
    "email",
    "first_name",
    "last_name",
    "phone",
    "company",
    "notes",
    "is_unsubscribed",
    "created_at",
];

/// Sorts custom-field keys into column order (Unicode code point, which is `String`'s `Ord`)
/// and removes duplicates.
pub fn sort_keys(keys: &mut Vec<String>) {
    keys.sort_unstable();
    keys.dedup();
}

/// The full header row for `custom_keys` (sorted and deduplicated, see [`sort_keys`]) without
/// a column list: the fixed columns, then one name per key by the rule in the module docs.
///
/// These are the column *names*; a format's own header row may differ (CSV's neutralised
/// headers, see `CsvEncoder::headers`).
pub fn headers(custom_keys: &[String]) -> Vec<String> {
    ColumnPlan::new(custom_keys, None, str::to_owned).headers
}

/// One column of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Fixed(FixedColumn),
    /// The custom key at this index of [`ColumnPlan::keys`].
    Custom(usize),
}

/// The columns of one file, and the custom keys each row is searched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    /// The custom keys of the file, sorted and distinct (as `custom_fields::locate` wants
    /// them).
    pub keys: Vec<String>,
    /// In the order of the file.
    pub columns: Vec<Column>,
    /// One per column.
    pub headers: Vec<String>,
    /// No column list: every fixed column, then every key (JSON Lines then writes each row's
    /// `custom_fields` as stored).
    pub everything: bool,
    /// The list names a custom key, or asks for the others (JSON Lines then writes
    /// `custom_fields`).
    pub any_custom: bool,
}

impl ColumnPlan {
    /// The plan for rows whose custom keys are `row_keys` (sorted and distinct), under the
    /// caller's list if any. `own_name` is the header a format wants for a key that is no
    /// fixed column's name (the key itself, or a neutralised form).
    pub fn new(
        row_keys: &[String],
        list: Option<&ColumnList>,
        own_name: impl Fn(&str) -> String,
    ) -> ColumnPlan {
        let Some(list) = list else {
            let keys = row_keys.to_vec();
            let names = custom_headers(&keys, own_name);
            let mut headers: Vec<String> = FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
            headers.extend(names);
            let columns = FixedColumn::ALL
                .into_iter()
                .map(Column::Fixed)
                .chain((0..keys.len()).map(Column::Custom))
                .collect();
            return ColumnPlan {
                any_custom: true,
                everything: true,
                keys,
                columns,
                headers,
            };
        };
        let listed: Vec<&str> = list
            .columns
            .iter()
            .filter_map(|c| match c {
                ColumnName::Custom(key) => Some(key.as_str()),
                ColumnName::Fixed(_) => None,
            })
            .collect();
        let others: Vec<&str> = if list.include_other_custom_fields {
            row_keys
                .iter()
                .map(String::as_str)
                .filter(|key| !listed.contains(key))
                .collect()
        } else {
            Vec::new()
        };
        let mut keys: Vec<String> = listed
            .iter()
            .chain(others.iter())
            .map(|k| k.to_string())
            .collect();
        sort_keys(&mut keys);
        let names = custom_headers(&keys, own_name);
        let index = |key: &str| {
            keys.binary_search_by(|k| k.as_str().cmp(key))
                .expect("every key of the plan is in its keys")
        };
        let mut columns = Vec::with_capacity(list.columns.len() + others.len());
        for column in &list.columns {
            columns.push(match column {
                ColumnName::Fixed(fixed) => Column::Fixed(*fixed),
                ColumnName::Custom(key) => Column::Custom(index(key)),
            });
        }
        columns.extend(others.iter().map(|key| Column::Custom(index(key))));
        let headers = columns
            .iter()
            .map(|column| match column {
                Column::Fixed(fixed) => fixed.name().to_owned(),
                Column::Custom(i) => names[*i].clone(),
            })
            .collect();
        ColumnPlan {
            any_custom: !keys.is_empty() || list.include_other_custom_fields,
            everything: false,
            keys,
            columns,
            headers,
        }
    }
}

/// The header of each key of `keys` (sorted and distinct), by the rule in the module docs.
fn custom_headers(keys: &[String], own_name: impl Fn(&str) -> String) -> Vec<String> {
    // The name each key asks for, and whether it is a generated `custom_fields.` name.
    let wanted: Vec<(String, bool)> = keys
        .iter()
        .map(|key| {
            if FIXED_COLUMNS.contains(&key.as_str()) {
                (format!("custom_fields.{key}"), true)
            } else {
                (own_name(key), false)
            }
        })
        .collect();

    let mut taken: HashSet<String> = FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
    // Real keys claim their own names before any generated name is chosen, so that the result
    // does not depend on where a generated name sorts relative to the key it collides with.
    let mut claimed: Vec<Option<String>> = wanted
        .iter()
        .map(|(name, generated)| (!generated && taken.insert(name.clone())).then(|| name.clone()))
        .collect();

    let mut out = Vec::with_capacity(keys.len());
    for ((name, _), claim) in wanted.iter().zip(claimed.iter_mut()) {
        let header = match claim.take() {
            Some(own) => own,
            None => {
                let mut candidate = name.clone();
                let mut n = 2u64;
                while taken.contains(&candidate) {
                    candidate = format!("{name} ({n})");
                    n += 1;
                }
                taken.insert(candidate.clone());
                candidate
            }
        };
        out.push(header);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    fn list(columns: &[&str], others: bool) -> ColumnList {
        ColumnList {
            columns: columns
                .iter()
                .map(|c| ColumnName::parse(c).unwrap())
                .collect(),
            include_other_custom_fields: others,
        }
    }

    #[test]
    fn the_fixed_names_are_the_fixed_columns() {
        assert_eq!(FIXED_COLUMNS, FixedColumn::ALL.map(FixedColumn::name));
    }

    #[test]
    fn without_a_list_every_fixed_column_then_every_key() {
        let plan = ColumnPlan::new(&keys(&["age", "zip"]), None, str::to_owned);
        assert_eq!(plan.headers.len(), 10);
        assert_eq!(plan.headers[8..], keys(&["age", "zip"]));
        assert_eq!(plan.columns[8], Column::Custom(0));
        assert!(plan.everything);
    }

    #[test]
    fn a_list_orders_and_selects() {
        let row_keys = keys(&["age", "email", "plan", "zip"]);
        let plan = ColumnPlan::new(
            &row_keys,
            Some(&list(
                &[
                    "custom_fields.zip",
                    "email",
                    "custom_fields.email",
                    "created_at",
                ],
                false,
            )),
            str::to_owned,
        );
        assert_eq!(
            plan.headers,
            keys(&["zip", "email", "custom_fields.email", "created_at"])
        );
        assert_eq!(plan.keys, keys(&["email", "zip"]));
        assert_eq!(
            plan.columns,
            vec![
                Column::Custom(1),
                Column::Fixed(FixedColumn::Email),
                Column::Custom(0),
                Column::Fixed(FixedColumn::CreatedAt),
            ]
        );
        assert!(!plan.everything && plan.any_custom);
    }

    #[test]
    fn the_others_follow_the_list_in_key_order() {
        let row_keys = keys(&["age", "plan", "zip"]);
        let plan = ColumnPlan::new(
            &row_keys,
            Some(&list(
                &["phone", "custom_fields.zip", "custom_fields.missing"],
                true,
            )),
            str::to_owned,
        );
        assert_eq!(
            plan.headers,
            keys(&["phone", "zip", "missing", "age", "plan"])
        );
        assert_eq!(plan.keys, keys(&["age", "missing", "plan", "zip"]));
    }

    #[test]
    fn a_list_of_fixed_columns_has_no_custom_fields() {
        let plan = ColumnPlan::new(
            &keys(&["age"]),
            Some(&list(&["email"], false)),
            str::to_owned,
        );
        assert_eq!(plan.headers, keys(&["email"]));
        assert!(plan.keys.is_empty() && !plan.any_custom);
    }
}
