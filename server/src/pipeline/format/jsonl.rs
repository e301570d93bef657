//! JSON Lines (`.jsonl`, `application/x-ndjson`): one JSON object per contact and line, for
//! programs rather than spreadsheets.
//!
//! Each object has the fixed fields (all of them in the default order, or those of the
//! caller's column list in its order) with their JSON types: text fields are strings, or
//! `null` where the database has NULL; `is_unsubscribed` is a boolean; `created_at` is a string
//! in RFC 3339 with microseconds (`"2024-05-01T12:00:00.123456Z"`; PostgreSQL's `infinity` is
//! `"infinity"`). Then `custom_fields`:
//!
//! - Without a column list, the row's `custom_fields` as PostgreSQL stores it: the object (or
//!   whatever JSON value the row holds, `null` for NULL) in its compact form, with numbers
//!   exactly as PostgreSQL gives them (`1.50` stays `1.50`, `1e400` is its 401 digits) and
//!   nested values in jsonb's key order.
//! - With a list, an object of the listed keys (in the list's order), then with
//!   `include_other_custom_fields` every other key of the row (in code-point order); a key the
//!   row does not have is left out, one it has as `null` is `null`. The member is left out
//!   altogether when the list names no custom key and asks for no others.
//!
//! Members are in the order above; no whitespace; each line ends with LF, the last included.
//! No value is changed for spreadsheets (no formula neutralisation): JSON is not run.

use bytes::Bytes;

use super::columns::{Column, ColumnPlan};
use super::row::{ContactRef, CustomRef, FixedValue};
use super::timestamp::write_timestamp;
use super::{EncodeError, Encoder, Finished};
use crate::exports::ColumnList;
use crate::pipeline::custom_fields::{self, Kind, RawValue, Span};

/// Encodes rows as JSON Lines.
#[derive(Debug)]
pub struct JsonlEncoder {
    plan: ColumnPlan,
    /// The JSON string of each fixed column's name and of each key of the plan, with its `:`.
    fixed_names: [Vec<u8>; 8],
    key_names: Vec<Vec<u8>>,
    /// The custom columns, in the order their members are written.
    custom: Vec<usize>,
    out: Vec<u8>,
    spans: Vec<Option<Span>>,
    scratch: String,
}

impl JsonlEncoder {
    /// An encoder of the fields `list` asks for (every field without one), for rows whose
    /// custom keys are `row_keys` (sorted and distinct).
    pub fn new(row_keys: &[String], list: Option<&ColumnList>) -> Self {
        let plan = ColumnPlan::new(row_keys, list, str::to_owned);
        let member = |name: &str| {
            let mut bytes = serde_json::to_vec(name).expect("a string serialises");
            bytes.push(b':');
            bytes
        };
        let fixed_names = crate::exports::FixedColumn::ALL.map(|c| member(c.name()));
        let key_names = plan.keys.iter().map(|k| member(k)).collect();
        let custom = plan
            .columns
            .iter()
            .filter_map(|c| match c {
                Column::Custom(k) => Some(*k),
                Column::Fixed(_) => None,
            })
            .collect();
        JsonlEncoder {
            plan,
            fixed_names,
            key_names,
            custom,
            out: Vec::new(),
            spans: Vec::new(),
            scratch: String::new(),
        }
    }
}

impl Encoder for JsonlEncoder {
    fn headers(&self) -> &[String] {
        &self.plan.headers
    }

    fn begin(&mut self) -> Result<Bytes, EncodeError> {
        Ok(Bytes::new())
    }

    fn row(&mut self, row: &ContactRef<'_>) -> Result<(), EncodeError> {
        let Self {
            plan,
            fixed_names,
            key_names,
            custom,
            out,
            spans,
            scratch,
        } = self;
        // Checked (and the plan's keys found) before anything is written.
        let text = match row.custom_fields {
            CustomRef::Text(text) => {
                // Written whole, the value needs no key found: only checked.
                let keys: &[String] = if plan.everything { &[] } else { &plan.keys };
                custom_fields::locate(text, keys, spans, scratch)?;
                Some(text)
            }
            CustomRef::Json(_) => None,
        };
        out.push(b'{');
        let mut first = true;
        for column in &plan.columns {
            let Column::Fixed(fixed) = *column else {
                continue;
            };
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.extend_from_slice(&fixed_names[fixed as usize]);
            match row.fixed(fixed) {
                FixedValue::Text(Some(value)) => string(out, value),
                FixedValue::Text(None) => out.extend_from_slice(b"null"),
                FixedValue::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
                FixedValue::Timestamp(ts) => {
                    out.push(b'"');
                    write_timestamp(out, ts);
                    out.push(b'"');
                }
            }
        }
        if plan.any_custom {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(b"\"custom_fields\":");
            match (row.custom_fields, text) {
                (CustomRef::Text(""), _) if plan.everything => out.extend_from_slice(b"null"),
                (CustomRef::Text(text), _) if plan.everything => {
                    custom_fields::write_compact(text, out)
                }
                (CustomRef::Text(_), Some(text)) => {
                    out.push(b'{');
                    let mut first = true;
                    for &k in custom.iter() {
                        if let Some(span) = spans[k] {
                            if !std::mem::take(&mut first) {
                                out.push(b',');
                            }
                            out.extend_from_slice(&key_names[k]);
                            raw(out, span.value(text));
                        }
                    }
                    out.push(b'}');
                }
                (CustomRef::Json(value), _) if plan.everything => {
                    serde_json::to_writer(&mut *out, value).expect("a Value serialises")
                }
                (CustomRef::Json(value), _) => {
                    let object = value.as_object();
                    out.push(b'{');
                    let mut first = true;
                    for &k in custom.iter() {
                        if let Some(value) = object.and_then(|o| o.get(plan.keys[k].as_str())) {
                            if !std::mem::take(&mut first) {
                                out.push(b',');
                            }
                            out.extend_from_slice(&key_names[k]);
                            serde_json::to_writer(&mut *out, value).expect("a Value serialises");
                        }
                    }
                    out.push(b'}');
                }
                (CustomRef::Text(_), None) => unreachable!("located above"),
            }
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }

    fn take_chunk(&mut self) -> Bytes {
        // A copy of exactly the chunk's bytes: the buffer stays for the next batch (see
        // `CsvEncoder::take_chunk`).
        let chunk = Bytes::copy_from_slice(&self.out);
        self.out.clear();
        chunk
    }

    fn finish(self: Box<Self>) -> Result<Finished, EncodeError> {
        Ok(Finished::Chunk(Bytes::new()))
    }
}

/// A JSON string.
fn string(out: &mut Vec<u8>, value: &str) {
    serde_json::to_writer(out, value).expect("a string serialises");
}

/// A value as PostgreSQL gave it: strings with their escapes as they were, numbers as their
/// text, nested values compacted.
fn raw(out: &mut Vec<u8>, value: RawValue<'_>) {
    match value.kind {
        Kind::String => {
            out.push(b'"');
            out.extend_from_slice(value.text.as_bytes());
            out.push(b'"');
        }
        Kind::Number | Kind::True | Kind::False | Kind::Null => {
            out.extend_from_slice(value.text.as_bytes())
        }
        Kind::Object | Kind::Array => custom_fields::write_compact(value.text, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::ColumnName;
    use crate::pipeline::format::row::{ContactRow, PgTimestamp};
    use chrono::{TimeZone, Utc};
    use serde_json::{Value, json};

    fn contact() -> ContactRow {
        ContactRow {
            email: "a\"b@x".into(),
            first_name: Some("Zoë".into()),
            last_name: None,
            phone: Some("+1 555 0100".into()),
            company: None,
            notes: Some("line\nbreak".into()),
            is_unsubscribed: true,
            created_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
                + chrono::Duration::microseconds(123_456),
            custom_fields: json!({}),
        }
    }

    fn encode(encoder: &mut JsonlEncoder, row: &ContactRef<'_>) -> String {
        encoder.row(row).unwrap();
        String::from_utf8(encoder.take_chunk().to_vec()).unwrap()
    }

    #[test]
    fn every_fixed_field_with_its_json_type() {
        let mut encoder = JsonlEncoder::new(&[], None);
        assert!(encoder.begin().unwrap().is_empty());
        let row = contact();
        let mut reference = row.as_ref();
        reference.custom_fields = CustomRef::Text("");
        let line = encode(&mut encoder, &reference);
        assert_eq!(
            line,
            "{\"email\":\"a\\\"b@x\",\"first_name\":\"Zoë\",\"last_name\":null,\
             \"phone\":\"+1 555 0100\",\"company\":null,\"notes\":\"line\\nbreak\",\
             \"is_unsubscribed\":true,\"created_at\":\"2024-05-01T12:00:00.123456Z\",\
             \"custom_fields\":null}\n"
        );
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["notes"], "line\nbreak");
    }

    #[test]
    fn custom_fields_as_stored_numbers_and_nesting_exact() {
        let mut encoder = JsonlEncoder::new(&["a".into(), "b".into()], None);
        let row = contact();
        let mut reference = row.as_ref();
        let stored = r#"{"a": 1.50, "b": {"z": [1e400, "\u00e9"], "a": null}, "c": true}"#;
        reference.custom_fields = CustomRef::Text(stored);
        let line = encode(&mut encoder, &reference);
        assert!(
            line.ends_with(
                r#""custom_fields":{"a":1.50,"b":{"z":[1e400,"\u00e9"],"a":null},"c":true}}
"#
            ),
            "{line}"
        );
        reference.created_at = PgTimestamp(i64::MAX);
        reference.custom_fields = CustomRef::Text("[1, 2]");
        let line = encode(&mut encoder, &reference);
        assert!(line.contains(r#""created_at":"infinity""#), "{line}");
        assert!(line.ends_with("\"custom_fields\":[1,2]}\n"), "{line}");
    }

    #[test]
    fn a_column_list_selects_fields_and_keys() {
        let list = ColumnList {
            columns: [
                "custom_fields.b",
                "email",
                "custom_fields.missing",
                "is_unsubscribed",
            ]
            .iter()
            .map(|c| ColumnName::parse(c).unwrap())
            .collect(),
            include_other_custom_fields: true,
        };
        let row_keys = ["a".to_string(), "b".to_string(), "c".to_string()];
        let mut encoder = JsonlEncoder::new(&row_keys, Some(&list));
        let row = contact();
        let mut reference = row.as_ref();
        reference.custom_fields = CustomRef::Text(r#"{"a": "x", "b": null, "c": 2}"#);
        assert_eq!(
            encode(&mut encoder, &reference),
            "{\"email\":\"a\\\"b@x\",\"is_unsubscribed\":true,\
             \"custom_fields\":{\"b\":null,\"a\":\"x\",\"c\":2}}\n"
        );
        // Built in memory, the same.
        let mut built = contact();
        built.custom_fields = json!({"a": "x", "b": null, "c": 2});
        assert_eq!(
            encode(&mut encoder, &built.as_ref()),
            "{\"email\":\"a\\\"b@x\",\"is_unsubscribed\":true,\
             \"custom_fields\":{\"b\":null,\"a\":\"x\",\"c\":2}}\n"
        );

        let only_fixed = ColumnList {
            columns: vec![ColumnName::parse("phone").unwrap()],
            include_other_custom_fields: false,
        };
        let mut encoder = JsonlEncoder::new(&row_keys, Some(&only_fixed));
        assert_eq!(
            encode(&mut encoder, &reference),
            "{\"phone\":\"+1 555 0100\"}\n"
        );
    }

    #[test]
    fn malformed_custom_fields_fail_the_row() {
        let mut encoder = JsonlEncoder::new(&[], None);
        let row = contact();
        let mut reference = row.as_ref();
        reference.custom_fields = CustomRef::Text("{\"a\": ");
        assert!(matches!(
            encoder.row(&reference),
            Err(EncodeError::Malformed(_))
        ));
    }
}
