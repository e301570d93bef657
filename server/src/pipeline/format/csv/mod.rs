//! The streaming CSV encoder for contacts: one header, then batches of rows, each batch
//! encoded into one [`Bytes`] chunk that the `stream-export` step hands to the storage writer.
//!
//! # Columns
//!
//! As [`super::columns`] lays them out (the fixed columns and every custom key by default, or
//! the caller's list), with its header names. With formula neutralisation on (below), a custom
//! key's header is neutralised like any cell. Should that make two headers equal (keys `'=x`
//! and `=x` both read `'=x`), the later key in key order gets the ` (2)` suffix by the same
//! rule; [`CsvEncoder::headers`] returns the header row as written.
//!
//! # Values
//!
//! - Text fields are written raw; SQL NULL is an empty cell.
//! - `is_unsubscribed` is `true` / `false`.
//! - `created_at` is RFC 3339 in UTC with exactly six fractional digits and `Z`
//!   (`2024-05-01T12:00:00.123456Z`): microseconds are what PostgreSQL stores, and a fixed
//!   width keeps the column sortable as text. PostgreSQL's `infinity` and `-infinity` are
//!   written as PostgreSQL writes them.
//! - Custom values: a JSON string is written raw, a number or bool as its JSON text (`1.5`,
//!   `-5`, `true`), `null` as an empty cell, an object or array as compact JSON. When the row's
//!   `custom_fields` is not a JSON object at all, every custom cell is empty. Rows read from
//!   the database hold the JSON text PostgreSQL gives for the jsonb value
//!   ([`CustomRef::Text`]): numbers are written exactly as that text (`1.50` stays `1.50`;
//!   `1e400`, which jsonb accepts, is its 401 digits; `-0.0` is `0.0`), the same text as
//!   `custom_fields->>'key'`, and nested values keep jsonb's key order.
//!
//! # Quoting
//!
//! RFC 4180: a field is quoted iff it contains the delimiter, `"`, CR or LF, with quotes
//! doubled inside; an empty field is not quoted; records end with LF. That is how PostgreSQL's
//! `COPY … (FORMAT csv)` quotes and terminates records, so the two can be compared byte for
//! byte. Two differences: `COPY` writes an empty *string* as `""` to tell it from NULL, and
//! quotes a lone `\.`; here NULL and empty text are both an empty cell (a spreadsheet cannot
//! tell them apart either), and `\.` is plain data.
//!
//! # Options
//!
//! [`CsvOptions`] (in `exports`) holds what a caller may choose per export; the defaults are
//! the format above.
//!
//! - `Delimiter`: `,` (default), `;`, TAB or `|`. Quoting follows the chosen delimiter: a
//!   field is quoted when it contains *that* delimiter (with `;`, a comma is plain data). With
//!   TAB as the delimiter, a cell that starts with TAB is still neutralised (below) and then
//!   quoted because it contains the delimiter.
//! - `LineEnding`: every record, the header included, ends with LF (default) or CRLF. A
//!   line break *inside* a quoted field is data and is written exactly as stored, whatever the
//!   terminator: a field `a\nb` stays `"a\nb"` in a CRLF file.
//! - `include_bom`: the file starts with the UTF-8 byte order mark `EF BB BF`, once, before the
//!   header (off by default). Excel needs it to read a CSV as UTF-8 rather than the local code
//!   page; most other programs neither need nor want it.
//!
//! # Formula neutralisation
//!
//! A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` as a formula, and TAB or
//! CR in front of those can hide them (OWASP "CSV injection"). With
//! `CsvOptions::neutralize_formulas` on (the default), a cell whose first character is one
//! of `=`, `+`, `-`, `@`, TAB or CR is written with a leading `'`, which spreadsheets show as
//! text. Decisions:
//!
//! - A *plain number* (optional sign, digits, optional `.digits`, optional exponent
//!   `e`/`E`, optional sign, digits; e.g. `-5`, `+3.25`, `-1e5`) is left as is: a spreadsheet
//!   reads it as the same number either way, and `'-5` would turn numbers into text. Anything
//!   else is neutralised, so a phone number `+1 555 0100` becomes `'+1 555 0100`: a
//!   spreadsheet would otherwise evaluate it as arithmetic.
//! - It applies to every text cell: the fixed text columns, custom values, and the headers of
//!   custom keys (the fixed headers and the `custom_fields.` names never start with a
//!   trigger). Booleans and timestamps are never neutralised (a timestamp outside years
//!   0–9999 starts with its sign).
//! - It happens before quoting: `=1,2` is written `"'=1,2"`.
//! - Only the first character counts; a cell that already starts with `'` or with a space is
//!   left alone.
//!
//! With neutralisation off the cells are written exactly as stored, for consumers that are
//! programs rather than spreadsheets.
mod neutralize;
#[cfg(test)]
mod tests;

use std::io::Write as _;

use bytes::{BufMut as _, Bytes, BytesMut};
use serde_json::Value;

use super::columns::{Column, ColumnPlan, sort_keys};
use super::row::{ContactRef, ContactRow, CustomRef, FixedValue};
use super::timestamp::write_timestamp;
use super::{EncodeError, Encoder, Finished};
use crate::exports::{ColumnList, CsvOptions};
use crate::pipeline::custom_fields::{self, Kind, MalformedJson, RawValue, Span};
pub use neutralize::{is_plain_number, needs_neutralizing};

/// The UTF-8 byte order mark written at the start of the file when asked for.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Encodes the header and rows into CSV chunks.
///
/// Fields are written straight into one output buffer, reused across batches, so encoding
/// allocates once per batch (the chunk handed out), not per row or cell. Chunks concatenate
/// to the file: `encode_header()` once, then rows ([`CsvEncoder::encode_row`] or
/// [`CsvEncoder::encode_batch`]) with [`CsvEncoder::take_chunk`] after each batch.
#[derive(Debug)]
pub struct CsvEncoder {
    options: CsvOptions,
    plan: ColumnPlan,
    /// The header row as written (the plan's names, neutralised when the options say so).
    headers: Vec<String>,
    fields: FieldWriter,
    out: BytesMut,
    /// Formatted cells (numbers, JSON) are built here.
    scratch: Vec<u8>,
    /// Where each custom value of the row being encoded is.
    spans: Vec<Option<Span>>,
    /// An escaped custom string value (or key), unescaped.
    text_scratch: String,
}

impl CsvEncoder {
    /// An encoder of every fixed column, then the given custom-field keys as columns. The
    /// keys are put through [`sort_keys`], so column order never depends on the order given.
    pub fn new(mut custom_keys: Vec<String>, options: CsvOptions) -> Self {
        sort_keys(&mut custom_keys);
        CsvEncoder::with_columns(&custom_keys, None, options)
    }

    /// An encoder of the columns `list` asks for (every column without one), for rows whose
    /// custom keys are `row_keys` (sorted and distinct).
    pub fn with_columns(
        row_keys: &[String],
        list: Option<&ColumnList>,
        options: CsvOptions,
    ) -> Self {
        let neutralize = options.neutralize_formulas;
        let plan = ColumnPlan::new(row_keys, list, |key| {
            if neutralize && needs_neutralizing(key.as_bytes()) {
                format!("'{key}")
            } else {
                key.to_owned()
            }
        });
        CsvEncoder {
            options,
            headers: plan.headers.clone(),
            plan,
            fields: FieldWriter::new(options),
            out: BytesMut::new(),
            scratch: Vec::new(),
            spans: Vec::new(),
            text_scratch: String::new(),
        }
    }

    /// The options this encoder writes with.
    pub fn options(&self) -> CsvOptions {
        self.options
    }

    /// The custom-field keys the rows are searched for, in code-point order.
    pub fn custom_keys(&self) -> &[String] {
        &self.plan.keys
    }

    /// The header row as written: fixed columns, then custom-key headers (neutralised when the
    /// options say so).
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The start of the file: the byte order mark when the options ask for it, then the header
    /// record.
    pub fn encode_header(&mut self) -> Bytes {
        if self.options.include_bom {
            self.out.put_slice(UTF8_BOM);
        }
        for (i, header) in self.headers.iter().enumerate() {
            if i > 0 {
                self.out.put_u8(self.fields.delimiter);
            }
            // Header names are already neutralised where the options ask for it.
            self.fields.put(&mut self.out, header.as_bytes());
        }
        self.out.put_slice(self.fields.terminator);
        self.take_chunk()
    }

    /// The records of `rows`, each ending in the options' line ending; empty for no rows.
    pub fn encode_batch<'a>(&mut self, rows: impl IntoIterator<Item = &'a ContactRow>) -> Bytes {
        for row in rows {
            self.encode_row(&row.as_ref())
                .expect("a value built in memory needs no parsing");
        }
        self.take_chunk()
    }

    /// Appends the record of one row to the current chunk. Fails only when the row's custom
    /// fields are text that is not JSON (or nests deeper than the scanner follows); the chunk
    /// then holds part of the record and must be dropped with the rest of the file.
    pub fn encode_row(&mut self, row: &ContactRef<'_>) -> Result<(), MalformedJson> {
        let Self {
            options,
            plan,
            fields,
            out,
            scratch,
            spans,
            text_scratch,
            ..
        } = self;
        let text = match row.custom_fields {
            CustomRef::Text(text) => {
                custom_fields::locate(text, &plan.keys, spans, text_scratch)?;
                Some(text)
            }
            CustomRef::Json(_) => None,
        };
        let mut cells = Cells {
            out,
            fields: &*fields,
            scratch,
            text_scratch,
            neutralize: options.neutralize_formulas,
        };
        for (i, column) in plan.columns.iter().enumerate() {
            if i > 0 {
                cells.next();
            }
            match *column {
                Column::Fixed(fixed) => match row.fixed(fixed) {
                    FixedValue::Text(value) => cells.text(value.unwrap_or("")),
                    FixedValue::Bool(b) => cells.out.put_slice(bool_text(b).as_bytes()),
                    FixedValue::Timestamp(ts) => write_timestamp(cells.out, ts),
                },
                Column::Custom(k) => match (row.custom_fields, text) {
                    (CustomRef::Text(_), Some(text)) => {
                        if let Some(span) = spans[k] {
                            cells.raw(span.value(text));
                        }
                    }
                    (CustomRef::Json(value), _) => {
                        if let Some(value) =
                            value.as_object().and_then(|o| o.get(plan.keys[k].as_str()))
                        {
                            cells.json(value);
                        }
                    }
                    (CustomRef::Text(_), None) => unreachable!("located above"),
                },
            }
        }
        cells.out.put_slice(fields.terminator);
        Ok(())
    }

    /// The records encoded since the last chunk was taken.
    ///
    /// A copy of exactly their bytes: the buffer they were written into stays with the
    /// encoder. Handing the buffer itself over would let each chunk pin an allocation up to
    /// twice its size for as long as the storage writer queues it (up to 8 MiB of chunks for
    /// an object-store part), which massif showed as 26 MB of heap at the peak of a
    /// million-row export.
    pub fn take_chunk(&mut self) -> Bytes {
        let chunk = Bytes::copy_from_slice(&self.out);
        self.out.clear();
        chunk
    }
}

/// Writes single fields: quoted (RFC 4180) only when they hold the delimiter, `"`, CR or LF.
#[derive(Debug)]
struct FieldWriter {
    delimiter: u8,
    terminator: &'static [u8],
    /// The bytes that make a field need quotes.
    special: [bool; 256],
}

impl FieldWriter {
    fn new(options: CsvOptions) -> Self {
        let delimiter = options.delimiter.byte();
        let mut special = [false; 256];
        for b in [delimiter, b'"', b'\r', b'\n'] {
            special[usize::from(b)] = true;
        }
        FieldWriter {
            delimiter,
            terminator: options.line_ending.as_bytes(),
            special,
        }
    }

    fn put(&self, out: &mut BytesMut, field: &[u8]) {
        if !field.iter().any(|&b| self.special[usize::from(b)]) {
            out.put_slice(field);
            return;
        }
        out.reserve(field.len() + 2);
        out.put_u8(b'"');
        // Each quote inside is doubled: write up to and including it, then one more.
        for piece in field.split_inclusive(|&b| b == b'"') {
            out.put_slice(piece);
            if piece.last() == Some(&b'"') {
                out.put_u8(b'"');
            }
        }
        out.put_u8(b'"');
    }
}

/// Writes the cells of one record into the output, formatting through the shared scratch
/// buffers.
struct Cells<'a> {
    out: &'a mut BytesMut,
    fields: &'a FieldWriter,
    scratch: &'a mut Vec<u8>,
    text_scratch: &'a mut String,
    neutralize: bool,
}

impl Cells<'_> {
    /// Ends a field: the delimiter before the next.
    fn next(&mut self) {
        self.out.put_u8(self.fields.delimiter);
    }

    fn text(&mut self, text: &str) {
        let text = text.as_bytes();
        if self.neutralize && needs_neutralizing(text) {
            self.scratch.clear();
            self.scratch.push(b'\'');
            self.scratch.extend_from_slice(text);
            self.fields.put(self.out, self.scratch);
        } else {
            self.fields.put(self.out, text);
        }
    }

    fn json(&mut self, value: &Value) {
        match value {
            Value::Null => {}
            Value::String(s) => self.text(s),
            Value::Bool(b) => self.out.put_slice(bool_text(*b).as_bytes()),
            Value::Number(n) => self.formatted(|buf| {
                write!(buf, "{n}").expect("writing into memory cannot fail");
            }),
            nested @ (Value::Array(_) | Value::Object(_)) => self.formatted(|buf| {
                serde_json::to_writer(buf, nested).expect("a Value always serialises");
            }),
        }
    }

    /// A value as stored: strings unescaped, numbers and nested values as their JSON text
    /// (numbers exactly as PostgreSQL gives them, never re-formatted).
    fn raw(&mut self, value: RawValue<'_>) {
        match value.kind {
            Kind::Null => {}
            Kind::String if !value.escaped => self.text(value.text),
            Kind::String => {
                let mut unescaped = std::mem::take(self.text_scratch);
                unescaped.clear();
                custom_fields::unescape_into(value.text, &mut unescaped);
                self.text(&unescaped);
                *self.text_scratch = unescaped;
            }
            Kind::True | Kind::False => self.out.put_slice(value.text.as_bytes()),
            Kind::Number => self.formatted(|buf| buf.extend_from_slice(value.text.as_bytes())),
            Kind::Object | Kind::Array => {
                self.formatted(|buf| custom_fields::write_compact(value.text, buf))
            }
        }
    }

    /// Formats a cell after a reserved `'` in the scratch buffer, so that neutralising it
    /// needs no second buffer. (JSON numbers, objects and arrays never start with a trigger;
    /// the check stays so that the rule has no exceptions to keep in mind.)
    fn formatted(&mut self, format: impl FnOnce(&mut Vec<u8>)) {
        self.scratch.clear();
        self.scratch.push(b'\'');
        format(self.scratch);
        let start = usize::from(!(self.neutralize && needs_neutralizing(&self.scratch[1..])));
        self.fields.put(self.out, &self.scratch[start..]);
    }
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

impl Encoder for CsvEncoder {
    fn headers(&self) -> &[String] {
        &self.headers
    }

    fn begin(&mut self) -> Result<Bytes, EncodeError> {
        Ok(self.encode_header())
    }

    fn row(&mut self, row: &ContactRef<'_>) -> Result<(), EncodeError> {
        Ok(self.encode_row(row)?)
    }

    fn take_chunk(&mut self) -> Bytes {
        CsvEncoder::take_chunk(self)
    }

    fn finish(self: Box<Self>) -> Result<Finished, EncodeError> {
        Ok(Finished::Chunk(Bytes::new()))
    }
}
