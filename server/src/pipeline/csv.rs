//! The streaming CSV encoder for contacts: one header, then batches of rows, each batch
//! encoded into one [`Bytes`] chunk that the `stream-export` step hands to the storage writer.
//!
//! # Columns
//!
//! The eight fixed columns [`FIXED_COLUMNS`] (`email, first_name, last_name, phone, company,
//! notes, is_unsubscribed, created_at`), then one column per custom-field key, in Unicode
//! code-point order (Rust `String` order, see [`sort_keys`]). A key missing on a row gives an
//! empty cell, so columns never shift.
//!
//! ## Header names of custom keys
//!
//! A custom key is its own header, with one exception: a key that is *exactly*
//! (case-sensitively) one of the fixed column names is written as `custom_fields.<key>`, so
//! that every header names one column. If that qualified name is itself a custom key, or is
//! already taken, ` (2)`, ` (3)`, … is appended until the name is unique. Keys that are their
//! own header claim their names first, so a generated name never takes the header of a real
//! key (keys `custom_fields.email` and `email` give `custom_fields.email` and
//! `custom_fields.email (2)` respectively). [`headers`] applies exactly this rule.
//!
//! With formula neutralisation on (below), a custom key's header is neutralised like any cell.
//! Should that make two headers equal (keys `'=x` and `=x` both read `'=x`), the later key in
//! key order gets the ` (2)` suffix by the same rule; [`CsvEncoder::headers`] returns the header
//! row as written.
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
//! [`CsvOptions`] holds what a caller may choose per export; the defaults are the format
//! above.
//!
//! - [`Delimiter`]: `,` (default), `;`, TAB or `|`. Quoting follows the chosen delimiter: a
//!   field is quoted when it contains *that* delimiter (with `;`, a comma is plain data). With
//!   TAB as the delimiter, a cell that starts with TAB is still neutralised (below) and then
//!   quoted because it contains the delimiter.
//! - [`LineEnding`]: every record, the header included, ends with LF (default) or CRLF. A
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
//! [`CsvOptions::neutralize_formulas`] on (the default), a cell whose first character is one
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

use std::collections::HashSet;
use std::io::Write as _;

use bytes::{BufMut as _, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::custom_fields::{self, Kind, MalformedJson, RawValue, Span};

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

/// One contact built in memory (tests, fixtures); [`ContactRow::as_ref`] is what the encoder
/// reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactRow {
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub company: Option<String>,
    pub notes: Option<String>,
    pub is_unsubscribed: bool,
    pub created_at: DateTime<Utc>,
    /// The `custom_fields` object; anything but an object yields empty custom cells.
    pub custom_fields: Value,
}

impl ContactRow {
    /// The row as the encoder reads it. Sub-microsecond digits of `created_at` are cut, as
    /// PostgreSQL never has them.
    pub fn as_ref(&self) -> ContactRef<'_> {
        ContactRef {
            email: &self.email,
            first_name: self.first_name.as_deref(),
            last_name: self.last_name.as_deref(),
            phone: self.phone.as_deref(),
            company: self.company.as_deref(),
            notes: self.notes.as_deref(),
            is_unsubscribed: self.is_unsubscribed,
            created_at: PgTimestamp::from(self.created_at),
            custom_fields: CustomRef::Json(&self.custom_fields),
        }
    }
}

/// One contact as the encoder reads it, borrowed from wherever it lives (the bytes PostgreSQL
/// sent, see [`super::copy_rows`], or a [`ContactRow`]).
#[derive(Debug, Clone, Copy)]
pub struct ContactRef<'a> {
    pub email: &'a str,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub company: Option<&'a str>,
    pub notes: Option<&'a str>,
    pub is_unsubscribed: bool,
    pub created_at: PgTimestamp,
    pub custom_fields: CustomRef<'a>,
}

/// Where a row's custom fields come from.
#[derive(Debug, Clone, Copy)]
pub enum CustomRef<'a> {
    /// PostgreSQL's text of the jsonb value (empty for none), read in one pass: numbers are
    /// written exactly as this text has them.
    Text(&'a str),
    /// A value built in memory, looked up per key.
    Json(&'a Value),
}

/// A `timestamptz` as PostgreSQL holds it: microseconds since 2000-01-01 00:00:00 UTC, with
/// `i64::MAX` and `i64::MIN` for `infinity` and `-infinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgTimestamp(pub i64);

/// 2000-01-01 in microseconds since the Unix epoch.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl From<DateTime<Utc>> for PgTimestamp {
    fn from(t: DateTime<Utc>) -> Self {
        PgTimestamp(t.timestamp_micros() - PG_EPOCH_UNIX_MICROS)
    }
}

/// The UTF-8 byte order mark written at the start of the file when asked for.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The character between two fields (stored in `exports.options` by its lower-case name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delimiter {
    /// `,`
    #[default]
    Comma,
    /// `;`
    Semicolon,
    /// TAB (U+0009).
    Tab,
    /// `|`
    Pipe,
}

impl Delimiter {
    /// Every delimiter, in declaration order.
    pub const ALL: [Delimiter; 4] = [
        Delimiter::Comma,
        Delimiter::Semicolon,
        Delimiter::Tab,
        Delimiter::Pipe,
    ];

    /// The byte written between fields.
    pub fn byte(self) -> u8 {
        match self {
            Delimiter::Comma => b',',
            Delimiter::Semicolon => b';',
            Delimiter::Tab => b'\t',
            Delimiter::Pipe => b'|',
        }
    }
}

/// What ends each record (stored in `exports.options` by its lower-case name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEnding {
    /// `\n`
    #[default]
    Lf,
    /// `\r\n`
    Crlf,
}

impl LineEnding {
    /// Both line endings.
    pub const ALL: [LineEnding; 2] = [LineEnding::Lf, LineEnding::Crlf];

    /// The bytes written after each record.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            LineEnding::Lf => b"\n",
            LineEnding::Crlf => b"\r\n",
        }
    }
}

/// Per-export encoding options (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvOptions {
    /// Prefix cells a spreadsheet would run as a formula with `'` (see the module docs).
    pub neutralize_formulas: bool,
    /// The field delimiter.
    pub delimiter: Delimiter,
    /// Start the file with [`UTF8_BOM`].
    pub include_bom: bool,
    /// The record terminator.
    pub line_ending: LineEnding,
}

impl CsvOptions {
    /// Neutralisation on, comma, no BOM, LF.
    pub const DEFAULT: CsvOptions = CsvOptions {
        neutralize_formulas: true,
        delimiter: Delimiter::Comma,
        include_bom: false,
        line_ending: LineEnding::Lf,
    };
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions::DEFAULT
    }
}

/// Sorts custom-field keys into column order (Unicode code point, which is `String`'s `Ord`)
/// and removes duplicates.
pub fn sort_keys(keys: &mut Vec<String>) {
    keys.sort_unstable();
    keys.dedup();
}

/// The full header row for `custom_keys` (sorted and deduplicated, see [`sort_keys`]): the
/// fixed columns, then one name per key by the collision rule in the module docs.
///
/// These are the column *names*, without formula neutralisation; [`CsvEncoder::headers`] is
/// the header row as written under the encoder's options.
pub fn headers(custom_keys: &[String]) -> Vec<String> {
    build_headers(custom_keys, false)
}

fn build_headers(custom_keys: &[String], neutralize: bool) -> Vec<String> {
    // The name each key asks for, and whether it is a generated `custom_fields.` name.
    let wanted: Vec<(String, bool)> = custom_keys
        .iter()
        .map(|key| {
            if FIXED_COLUMNS.contains(&key.as_str()) {
                (format!("custom_fields.{key}"), true)
            } else if neutralize && needs_neutralizing(key.as_bytes()) {
                (format!("'{key}"), false)
            } else {
                (key.clone(), false)
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

    let mut out: Vec<String> = FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
    out.reserve(custom_keys.len());
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

/// True for a cell a spreadsheet could run as a formula (see the module docs).
fn needs_neutralizing(cell: &[u8]) -> bool {
    matches!(
        cell.first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    ) && !is_plain_number(cell)
}

/// `[+-]?digits(.digits)?([eE][+-]?digits)?`, without a regex engine.
fn is_plain_number(s: &[u8]) -> bool {
    fn digits(s: &[u8], mut i: usize) -> Option<usize> {
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    }
    let mut i = usize::from(matches!(s.first(), Some(b'+' | b'-')));
    let Some(end) = digits(s, i) else {
        return false;
    };
    i = end;
    if s.get(i) == Some(&b'.') {
        let Some(end) = digits(s, i + 1) else {
            return false;
        };
        i = end;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let Some(end) = digits(s, i) else {
            return false;
        };
        i = end;
    }
    i == s.len()
}

/// Encodes the header and rows into CSV chunks.
///
/// Fields are written straight into one output buffer, reused across batches, so encoding
/// allocates once per batch (the chunk handed out), not per row or cell. Chunks concatenate
/// to the file: `encode_header()` once, then rows ([`CsvEncoder::encode_row`] or
/// [`CsvEncoder::encode_batch`]) with [`CsvEncoder::take_chunk`] after each batch.
#[derive(Debug)]
pub struct CsvEncoder {
    options: CsvOptions,
    custom_keys: Vec<String>,
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
    /// An encoder for the given custom-field keys, which become the custom columns. The keys
    /// are put through [`sort_keys`], so column order never depends on the order given.
    pub fn new(mut custom_keys: Vec<String>, options: CsvOptions) -> Self {
        sort_keys(&mut custom_keys);
        let headers = build_headers(&custom_keys, options.neutralize_formulas);
        CsvEncoder {
            options,
            custom_keys,
            headers,
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

    /// The custom-field keys, in column order.
    pub fn custom_keys(&self) -> &[String] {
        &self.custom_keys
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
            custom_keys,
            fields,
            out,
            scratch,
            spans,
            text_scratch,
            ..
        } = self;
        let mut cells = Cells {
            out,
            fields: &*fields,
            scratch,
            text_scratch,
            neutralize: options.neutralize_formulas,
        };
        cells.text(row.email);
        for field in [
            row.first_name,
            row.last_name,
            row.phone,
            row.company,
            row.notes,
        ] {
            cells.next();
            cells.text(field.unwrap_or(""));
        }
        cells.next();
        cells
            .out
            .put_slice(bool_text(row.is_unsubscribed).as_bytes());
        cells.next();
        write_timestamp(cells.out, row.created_at);
        match row.custom_fields {
            CustomRef::Text(text) => {
                custom_fields::locate(text, custom_keys, spans, cells.text_scratch)?;
                for span in spans.iter() {
                    cells.next();
                    if let Some(span) = span {
                        cells.raw(span.value(text));
                    }
                }
            }
            CustomRef::Json(value) => {
                let object = value.as_object();
                for key in custom_keys.iter() {
                    cells.next();
                    if let Some(value) = object.and_then(|o| o.get(key.as_str())) {
                        cells.json(value);
                    }
                }
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

/// RFC 3339 in UTC with six fractional digits and `Z` (chrono's
/// `to_rfc3339_opts(SecondsFormat::Micros, true)`): four-digit years, or a sign and at least
/// four digits outside 0–9999, as ISO 8601's expanded form has it. PostgreSQL's `infinity`
/// and `-infinity` are written as PostgreSQL writes them.
fn write_timestamp(out: &mut BytesMut, ts: PgTimestamp) {
    match ts.0 {
        i64::MAX => return out.put_slice(b"infinity"),
        i64::MIN => return out.put_slice(b"-infinity"),
        _ => {}
    }
    let micros = i128::from(ts.0) + i128::from(PG_EPOCH_UNIX_MICROS);
    const DAY: i128 = 86_400_000_000;
    let (days, in_day) = (micros.div_euclid(DAY), micros.rem_euclid(DAY));
    let (year, month, day) = civil_from_days(days);
    let (seconds, fraction) = (in_day / 1_000_000, in_day % 1_000_000);
    if (0..=9999).contains(&year) {
        put_digits(out, year as u64, 4);
    } else {
        out.put_u8(if year < 0 { b'-' } else { b'+' });
        let magnitude = year.unsigned_abs() as u64;
        let width = magnitude.checked_ilog10().unwrap_or(0) as usize + 1;
        put_digits(out, magnitude, width.max(4));
    }
    out.put_u8(b'-');
    put_digits(out, month as u64, 2);
    out.put_u8(b'-');
    put_digits(out, day as u64, 2);
    out.put_u8(b'T');
    put_digits(out, (seconds / 3600) as u64, 2);
    out.put_u8(b':');
    put_digits(out, (seconds / 60 % 60) as u64, 2);
    out.put_u8(b':');
    put_digits(out, (seconds % 60) as u64, 2);
    out.put_u8(b'.');
    put_digits(out, fraction as u64, 6);
    out.put_u8(b'Z');
}

/// `n` in exactly `width` decimal digits (zero-padded; `n` must fit).
fn put_digits(out: &mut BytesMut, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.put_slice(&digits[..width]);
}

/// Year, month and day of the proleptic Gregorian calendar for days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, which counts in 400-year eras).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, SecondsFormat, TimeZone as _};
    use serde_json::json;

    const FIXED_HEADER: &str =
        "email,first_name,last_name,phone,company,notes,is_unsubscribed,created_at";

    fn ts(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(micros).unwrap()
    }

    /// 2024-05-01T12:00:00.123456Z
    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
            + chrono::Duration::microseconds(123_456)
    }

    fn row(email: &str) -> ContactRow {
        ContactRow {
            email: email.to_string(),
            first_name: None,
            last_name: None,
            phone: None,
            company: None,
            notes: None,
            is_unsubscribed: false,
            created_at: t0(),
            custom_fields: json!({}),
        }
    }

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    fn encode(keys_: &[&str], options: CsvOptions, rows: &[ContactRow]) -> String {
        let mut enc = CsvEncoder::new(keys(keys_), options);
        let mut out = enc.encode_header().to_vec();
        out.extend_from_slice(&enc.encode_batch(rows));
        String::from_utf8(out).unwrap()
    }

    fn body(keys_: &[&str], options: CsvOptions, rows: &[ContactRow]) -> String {
        let mut enc = CsvEncoder::new(keys(keys_), options);
        String::from_utf8(enc.encode_batch(rows).to_vec()).unwrap()
    }

    const ON: CsvOptions = CsvOptions::DEFAULT;
    const OFF: CsvOptions = CsvOptions {
        neutralize_formulas: false,
        ..CsvOptions::DEFAULT
    };

    #[test]
    fn options_default_to_neutralising() {
        assert!(CsvOptions::default().neutralize_formulas);
    }

    #[test]
    fn header_without_custom_keys() {
        let mut enc = CsvEncoder::new(vec![], CsvOptions::default());
        assert_eq!(
            &enc.encode_header()[..],
            format!("{FIXED_HEADER}\n").as_bytes()
        );
        assert_eq!(headers(&[]), FIXED_COLUMNS.to_vec());
        assert!(enc.encode_batch(&[]).is_empty());
    }

    #[test]
    fn header_with_plain_custom_keys() {
        assert_eq!(
            encode(&["zip", "age"], ON, &[]),
            format!("{FIXED_HEADER},age,zip\n")
        );
    }

    #[test]
    fn colliding_keys_get_qualified_and_numbered() {
        let ks = keys(&["custom_fields.email", "email", "zip"]);
        assert_eq!(
            headers(&ks)[8..],
            keys(&["custom_fields.email", "custom_fields.email (2)", "zip"])
        );
        assert_eq!(
            encode(&["email", "custom_fields.email", "zip"], ON, &[]),
            format!("{FIXED_HEADER},custom_fields.email,custom_fields.email (2),zip\n")
        );

        // A taken numbered name is skipped too.
        let ks = keys(&["custom_fields.email", "custom_fields.email (2)", "email"]);
        assert_eq!(
            headers(&ks)[8..],
            keys(&[
                "custom_fields.email",
                "custom_fields.email (2)",
                "custom_fields.email (3)"
            ])
        );

        // `company` sorts before `custom_fields.company`, which still keeps its own name.
        let ks = keys(&["company", "created_at", "custom_fields.company"]);
        assert_eq!(
            headers(&ks)[8..],
            keys(&[
                "custom_fields.company (2)",
                "custom_fields.created_at",
                "custom_fields.company"
            ])
        );

        // Case-sensitive: `Email` is not a fixed column name.
        assert_eq!(headers(&keys(&["Email"]))[8..], keys(&["Email"]));

        // Every fixed name as a key.
        let all: Vec<String> = FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
        let mut sorted = all.clone();
        sort_keys(&mut sorted);
        let hs = headers(&sorted);
        let unique: HashSet<&String> = hs.iter().collect();
        assert_eq!(unique.len(), 16);
        assert!(hs[8..].iter().all(|h| h.starts_with("custom_fields.")));
    }

    #[test]
    fn colliding_key_values_land_in_their_own_columns() {
        let mut r = row("a@x");
        r.custom_fields = json!({"email": "inner", "custom_fields.email": "outer"});
        assert_eq!(
            body(&["custom_fields.email", "email"], ON, &[r]),
            "a@x,,,,,,false,2024-05-01T12:00:00.123456Z,outer,inner\n"
        );
    }

    #[test]
    fn headers_of_custom_keys_are_neutralised() {
        assert_eq!(
            encode(
                &["=cmd", "+1", "-x", "@h", "\tt", "\rr", "-5", "ok"],
                ON,
                &[]
            ),
            format!("{FIXED_HEADER},'\tt,\"'\rr\",+1,-5,'-x,'=cmd,'@h,ok\n")
        );
        assert_eq!(
            encode(
                &["=cmd", "+1", "-x", "@h", "\tt", "\rr", "-5", "ok"],
                OFF,
                &[]
            ),
            format!("{FIXED_HEADER},\tt,\"\rr\",+1,-5,-x,=cmd,@h,ok\n")
        );
        // `headers` is the naming rule only.
        assert_eq!(headers(&keys(&["=cmd"]))[8], "=cmd");
    }

    #[test]
    fn neutralised_header_that_collides_is_numbered() {
        let enc = CsvEncoder::new(keys(&["=x", "'=x"]), ON);
        assert_eq!(enc.headers()[8..], keys(&["'=x", "'=x (2)"]));
        assert_eq!(enc.custom_keys(), keys(&["'=x", "=x"]));
        let enc = CsvEncoder::new(keys(&["=x", "'=x"]), OFF);
        assert_eq!(enc.headers()[8..], keys(&["'=x", "=x"]));
    }

    #[test]
    fn quoting() {
        let mut r = row("a,b@x");
        r.first_name = Some("say \"hi\"".into());
        r.last_name = Some("cr\rhere".into());
        r.phone = Some("lf\nhere".into());
        r.company = Some("Zürich 株式会社 🚀".into());
        r.notes = Some("crlf\r\nend".into());
        r.custom_fields =
            json!({"k": " spaced ", "q": "\"", "b": "back\\slash", "s": "semi;colon"});
        assert_eq!(
            body(&["b", "k", "q", "s"], ON, &[r]),
            "\"a,b@x\",\"say \"\"hi\"\"\",\"cr\rhere\",\"lf\nhere\",Zürich 株式会社 🚀,\
             \"crlf\r\nend\",false,2024-05-01T12:00:00.123456Z,back\\slash, spaced ,\"\"\"\",semi;colon\n"
        );
    }

    #[test]
    fn nulls_and_all_empty_row() {
        assert_eq!(
            body(&[], ON, &[row("")]),
            ",,,,,,false,2024-05-01T12:00:00.123456Z\n"
        );
        let mut r = row("");
        r.first_name = Some(String::new());
        r.is_unsubscribed = true;
        r.custom_fields = Value::Null;
        assert_eq!(
            body(&["a", "b"], ON, &[r]),
            ",,,,,,true,2024-05-01T12:00:00.123456Z,,\n"
        );
    }

    #[test]
    fn missing_keys_leave_empty_cells() {
        let mut a = row("a@x");
        a.custom_fields = json!({"c": "C"});
        let mut b = row("b@x");
        b.custom_fields = json!({"a": "A", "zzz": "not a column"});
        assert_eq!(
            body(&["a", "b", "c"], ON, &[a, b]),
            "a@x,,,,,,false,2024-05-01T12:00:00.123456Z,,,C\n\
             b@x,,,,,,false,2024-05-01T12:00:00.123456Z,A,,\n"
        );
    }

    #[test]
    fn non_object_custom_fields_leave_empty_cells() {
        for cf in [json!(null), json!("x"), json!([1, 2]), json!(3)] {
            let mut r = row("a@x");
            r.custom_fields = cf;
            assert_eq!(
                body(&["a", "b"], ON, &[r]),
                "a@x,,,,,,false,2024-05-01T12:00:00.123456Z,,\n"
            );
        }
    }

    #[test]
    fn nested_values_are_compact_json() {
        let mut r = row("a@x");
        r.custom_fields = json!({
            "arr": [1, "two", null, {"x": true}],
            "obj": {"b": {"c": null}, "a": [] },
            "one": ["=x"],
            "empty": {},
        });
        assert_eq!(
            body(&["arr", "empty", "obj", "one"], ON, &[r]),
            "a@x,,,,,,false,2024-05-01T12:00:00.123456Z,\
             \"[1,\"\"two\"\",null,{\"\"x\"\":true}]\",{},\
             \"{\"\"a\"\":[],\"\"b\"\":{\"\"c\"\":null}}\",\"[\"\"=x\"\"]\"\n"
        );
    }

    #[test]
    fn numbers_bools_and_null() {
        let mut r = row("a@x");
        r.custom_fields = json!({
            "a": 1.5, "b": -5, "c": 0, "d": 18446744073709551615u64, "e": -9223372036854775808i64,
            "f": 1e300, "g": -2.5e-7, "h": true, "i": false, "j": null, "k": "-5", "l": "true",
        });
        let ks = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
        let expected = "a@x,,,,,,false,2024-05-01T12:00:00.123456Z,\
             1.5,-5,0,18446744073709551615,-9223372036854775808,1e+300,-2.5e-7,true,false,,-5,true\n";
        assert_eq!(body(&ks, ON, std::slice::from_ref(&r)), expected);
        assert_eq!(body(&ks, OFF, &[r]), expected);
    }

    #[test]
    fn timestamps() {
        let cases = [
            (t0(), "2024-05-01T12:00:00.123456Z"),
            (
                Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
                "2024-05-01T12:00:00.000000Z",
            ),
            (ts(0), "1970-01-01T00:00:00.000000Z"),
            (ts(-1), "1969-12-31T23:59:59.999999Z"),
            (ts(1_000_001), "1970-01-01T00:00:01.000001Z"),
            // Sub-microsecond digits are cut, as PostgreSQL never has them.
            (
                DateTime::from_timestamp(1_714_564_800, 123_456_789).unwrap(),
                "2024-05-01T12:00:00.123456Z",
            ),
            (
                NaiveDate::from_ymd_opt(1, 1, 1)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc(),
                "0001-01-01T00:00:00.000000Z",
            ),
            (
                NaiveDate::from_ymd_opt(9999, 12, 31)
                    .unwrap()
                    .and_hms_micro_opt(23, 59, 59, 999_999)
                    .unwrap()
                    .and_utc(),
                "9999-12-31T23:59:59.999999Z",
            ),
            (
                NaiveDate::from_ymd_opt(10000, 1, 1)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc(),
                "+10000-01-01T00:00:00.000000Z",
            ),
            (
                NaiveDate::from_ymd_opt(-1, 1, 1)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc(),
                "-0001-01-01T00:00:00.000000Z",
            ),
            (
                NaiveDate::from_ymd_opt(-4713, 11, 24)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc(),
                "-4713-11-24T00:00:00.000000Z",
            ),
            (
                NaiveDate::from_ymd_opt(262_142, 12, 31)
                    .unwrap()
                    .and_hms_micro_opt(23, 59, 59, 999_999)
                    .unwrap()
                    .and_utc(),
                "+262142-12-31T23:59:59.999999Z",
            ),
            (
                NaiveDate::from_ymd_opt(2000, 2, 29)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc(),
                "2000-02-29T00:00:00.000000Z",
            ),
        ];
        for (t, want) in cases {
            let mut buf = BytesMut::new();
            write_timestamp(&mut buf, PgTimestamp::from(t));
            assert_eq!(std::str::from_utf8(&buf).unwrap(), want);
            assert_eq!(t.to_rfc3339_opts(SecondsFormat::Micros, true), want);

            let mut r = row("a@x");
            r.created_at = t;
            assert_eq!(body(&[], ON, &[r]), format!("a@x,,,,,,false,{want}\n"));
        }
    }

    #[test]
    fn timestamps_agree_with_chrono_across_the_calendar() {
        fn check(micros: i64) {
            let t = ts(micros);
            let mut buf = BytesMut::new();
            write_timestamp(&mut buf, PgTimestamp::from(t));
            assert_eq!(
                std::str::from_utf8(&buf).unwrap(),
                t.to_rfc3339_opts(SecondsFormat::Micros, true)
            );
        }
        let start_of = |year: i32| {
            NaiveDate::from_ymd_opt(year, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_micros()
        };
        // From -4713 to 9999 every 9,973,500,000,007 µs (about 115 days, and not a whole
        // number of seconds): all of PostgreSQL's four-digit range, through every era.
        let mut micros = start_of(-4713);
        while micros < start_of(10_000) {
            check(micros);
            micros += 9_973_500_000_007;
        }
        // Every day from 1896 to 2104 at a moving time of day: each month end, the leap day
        // of 2000, and the century years that are not leap years.
        let mut micros = start_of(1896) + 1;
        while micros < start_of(2105) {
            check(micros);
            micros += 86_400_000_000 + 1_234_567;
        }
    }

    #[test]
    fn infinite_timestamps_are_written_as_postgresql_writes_them() {
        for (ts, want) in [(i64::MAX, "infinity"), (i64::MIN, "-infinity")] {
            let mut buf = BytesMut::new();
            write_timestamp(&mut buf, PgTimestamp(ts));
            assert_eq!(&buf[..], want.as_bytes());
        }
    }

    #[test]
    fn plain_numbers() {
        for yes in [
            "0",
            "-5",
            "+5",
            "+3.25",
            "-1e5",
            "1E+5",
            "-2.5e-7",
            "007",
            "12345678901234567890",
        ] {
            assert!(is_plain_number(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "-",
            "+",
            "-.5",
            "5.",
            "1e",
            "1e+",
            "--5",
            "+-5",
            "-5a",
            "- 5",
            "1,5",
            "0x10",
            "-inf",
            "+1 555 0100",
            "1.2.3",
            "-1e5.0",
        ] {
            assert!(!is_plain_number(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn neutralisation_of_every_trigger() {
        // (stored, written with neutralisation on, written with it off)
        let cases = [
            ("=1+1", "'=1+1", "=1+1"),
            ("+cmd", "'+cmd", "+cmd"),
            ("-cmd", "'-cmd", "-cmd"),
            ("@SUM(A1)", "'@SUM(A1)", "@SUM(A1)"),
            ("\t=x", "'\t=x", "\t=x"),
            ("\r=x", "\"'\r=x\"", "\"\r=x\""),
            ("=1,2", "\"'=1,2\"", "\"=1,2\""),
            ("=\"x\"", "\"'=\"\"x\"\"\"", "\"=\"\"x\"\"\""),
            ("+1 555 0100", "'+1 555 0100", "+1 555 0100"),
            ("-", "'-", "-"),
            ("-5", "-5", "-5"),
            ("+3.25", "+3.25", "+3.25"),
            ("-1e5", "-1e5", "-1e5"),
            ("'=x", "'=x", "'=x"),
            (" =x", " =x", " =x"),
            ("a=b", "a=b", "a=b"),
            ("", "", ""),
        ];
        for (raw, on, off) in cases {
            let mut r = row(raw);
            r.first_name = Some(raw.into());
            r.last_name = Some(raw.into());
            r.phone = Some(raw.into());
            r.company = Some(raw.into());
            r.notes = Some(raw.into());
            r.custom_fields = json!({ "k": raw });
            for (options, want) in [(ON, on), (OFF, off)] {
                let cells = [want; 6].join(",");
                assert_eq!(
                    body(&["k"], options, std::slice::from_ref(&r)),
                    format!("{cells},false,2024-05-01T12:00:00.123456Z,{want}\n"),
                    "{options:?}: {raw:?}"
                );
            }
        }
    }

    #[test]
    fn bools_and_timestamps_never_trigger() {
        let mut r = row("a@x");
        r.is_unsubscribed = true;
        r.created_at = NaiveDate::from_ymd_opt(-1, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        r.custom_fields = json!({"n": -5, "f": -1.5, "b": true});
        assert_eq!(
            body(&["b", "f", "n"], ON, &[r]),
            "a@x,,,,,,true,-0001-01-01T00:00:00.000000Z,true,-1.5,-5\n"
        );
    }

    #[test]
    fn sort_keys_is_code_point_order_without_duplicates() {
        let mut ks = keys(&["b", "a", "Z", "é", "a", "ä", "B", "", "𝔸", "\u{FFFF}"]);
        sort_keys(&mut ks);
        assert_eq!(
            ks,
            keys(&["", "B", "Z", "a", "b", "ä", "é", "\u{FFFF}", "𝔸"])
        );
    }

    #[test]
    fn keys_given_unsorted_are_sorted_by_the_encoder() {
        let mut r = row("a@x");
        r.custom_fields = json!({"a": 1, "b": 2});
        assert_eq!(
            encode(&["b", "a", "b"], ON, &[r]),
            format!("{FIXED_HEADER},a,b\na@x,,,,,,false,2024-05-01T12:00:00.123456Z,1,2\n")
        );
    }

    #[test]
    fn batches_are_independent_chunks_of_one_file() {
        let rows: Vec<ContactRow> = (0..2500)
            .map(|i| {
                let mut r = row(&format!("user{i}@x"));
                r.notes = Some("n,\"".repeat(i % 7));
                r.custom_fields = json!({"i": i});
                r
            })
            .collect();
        let mut enc = CsvEncoder::new(keys(&["i"]), ON);
        let header = enc.encode_header();
        let chunks: Vec<Bytes> = rows.chunks(1000).map(|c| enc.encode_batch(c)).collect();
        let mut whole = CsvEncoder::new(keys(&["i"]), ON);
        let mut expected = whole.encode_header().to_vec();
        expected.extend_from_slice(&whole.encode_batch(&rows));

        let mut joined = header.to_vec();
        for c in &chunks {
            assert!(c.ends_with(b"\n"));
            joined.extend_from_slice(c);
        }
        assert_eq!(joined, expected);
        assert_eq!(joined.iter().filter(|&&b| b == b'\n').count(), 2501);
    }

    #[test]
    fn round_trip_through_a_csv_reader() {
        let nasty = [
            "",
            " ",
            "plain",
            "a,b",
            "\"",
            "\"\"",
            "\"quoted\"",
            "line\nbreak",
            "cr\ronly",
            "crlf\r\n",
            "\r\n",
            "\n",
            "trailing ",
            " leading",
            "tab\tinside",
            "back\\slash",
            "Zürich 株式会社 🚀 \u{202E}rtl",
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1 555 0100",
            "-5",
            "-cmd",
            "@x",
            "\t=1",
            "\r=1",
            "'already",
            "#comment-looking",
            "\0nul",
        ];
        let mut rows = Vec::new();
        for (i, s) in nasty.iter().enumerate() {
            let other = nasty[(i + 1) % nasty.len()];
            rows.push(ContactRow {
                email: s.to_string(),
                first_name: Some(other.to_string()),
                last_name: None,
                phone: Some(s.to_string()),
                company: Some(String::new()),
                notes: Some(format!("{s}{other}")),
                is_unsubscribed: i % 2 == 0,
                created_at: ts(1_714_564_800_123_456 + i as i64),
                custom_fields: json!({ "s": s, "nested": { "v": s }, "=k": other }),
            });
        }
        let custom = keys(&["=k", "missing", "nested", "s"]);
        for options in [ON, OFF] {
            let mut enc = CsvEncoder::new(custom.clone(), options);
            let mut file = enc.encode_header().to_vec();
            for chunk in rows.chunks(5) {
                file.extend_from_slice(&enc.encode_batch(chunk));
            }

            let mut rdr = ::csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(false)
                .from_reader(&file[..]);
            let neutral = |s: &str| {
                if options.neutralize_formulas && needs_neutralizing(s.as_bytes()) {
                    format!("'{s}")
                } else {
                    s.to_string()
                }
            };
            let got_headers: Vec<String> =
                rdr.headers().unwrap().iter().map(String::from).collect();
            assert_eq!(got_headers, enc.headers());
            assert_eq!(got_headers[8], neutral("=k"));

            let records: Vec<::csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
            assert_eq!(records.len(), rows.len());
            for (r, rec) in rows.iter().zip(&records) {
                let expected: Vec<String> = vec![
                    neutral(&r.email),
                    neutral(r.first_name.as_deref().unwrap_or("")),
                    String::new(),
                    neutral(r.phone.as_deref().unwrap_or("")),
                    String::new(),
                    neutral(r.notes.as_deref().unwrap_or("")),
                    r.is_unsubscribed.to_string(),
                    r.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                    neutral(r.custom_fields["=k"].as_str().unwrap()),
                    String::new(),
                    serde_json::to_string(&r.custom_fields["nested"]).unwrap(),
                    neutral(r.custom_fields["s"].as_str().unwrap()),
                ];
                let got: Vec<String> = rec.iter().map(String::from).collect();
                assert_eq!(got, expected);
                let back: DateTime<Utc> = DateTime::parse_from_rfc3339(&got[7]).unwrap().into();
                assert_eq!(back, r.created_at);
                let nested: Value = serde_json::from_str(&got[10]).unwrap();
                assert_eq!(nested, r.custom_fields["nested"]);
            }
        }
    }

    fn with(delimiter: Delimiter, include_bom: bool, line_ending: LineEnding) -> CsvOptions {
        CsvOptions {
            delimiter,
            include_bom,
            line_ending,
            ..CsvOptions::DEFAULT
        }
    }

    #[test]
    fn options_default_to_comma_no_bom_lf() {
        let d = CsvOptions::default();
        assert_eq!(d, CsvOptions::DEFAULT);
        assert_eq!(
            (d.delimiter, d.include_bom, d.line_ending),
            (Delimiter::Comma, false, LineEnding::Lf)
        );
        assert_eq!(
            Delimiter::ALL.map(Delimiter::byte),
            [b',', b';', b'\t', b'|']
        );
        assert_eq!(LineEnding::Crlf.as_bytes(), b"\r\n");
    }

    #[test]
    fn quoting_follows_the_delimiter() {
        let mut r = row("a,b");
        r.first_name = Some("c;d".into());
        r.last_name = Some("e\tf".into());
        r.phone = Some("g|h".into());
        r.custom_fields = json!({"k": "plain"});
        let cases = [
            (
                Delimiter::Comma,
                "\"a,b\",c;d,e\tf,g|h,,,false,2024-05-01T12:00:00.123456Z,plain\n",
            ),
            (
                Delimiter::Semicolon,
                "a,b;\"c;d\";e\tf;g|h;;;false;2024-05-01T12:00:00.123456Z;plain\n",
            ),
            (
                Delimiter::Tab,
                "a,b\tc;d\t\"e\tf\"\tg|h\t\t\tfalse\t2024-05-01T12:00:00.123456Z\tplain\n",
            ),
            (
                Delimiter::Pipe,
                "a,b|c;d|e\tf|\"g|h\"|||false|2024-05-01T12:00:00.123456Z|plain\n",
            ),
        ];
        for (delimiter, want) in cases {
            let options = with(delimiter, false, LineEnding::Lf);
            assert_eq!(
                body(&["k"], options, std::slice::from_ref(&r)),
                want,
                "{delimiter:?}"
            );
            let sep = char::from(delimiter.byte()).to_string();
            assert_eq!(
                encode(&["k"], options, &[]),
                format!("{}{sep}k\n", FIXED_HEADER.replace(',', &sep))
            );
        }
    }

    #[test]
    fn tab_delimited_cells_starting_with_tab_are_neutralised_then_quoted() {
        let mut r = row("\t=cmd");
        r.custom_fields = json!({"\tk": "\t-5", "n": "-5"});
        let on = with(Delimiter::Tab, false, LineEnding::Lf);
        let off = CsvOptions {
            neutralize_formulas: false,
            ..on
        };
        assert_eq!(
            encode(&["\tk", "n"], on, std::slice::from_ref(&r)),
            format!(
                "{}\t\"'\tk\"\tn\n\"'\t=cmd\"\t\t\t\t\t\tfalse\t2024-05-01T12:00:00.123456Z\t\"'\t-5\"\t-5\n",
                FIXED_HEADER.replace(',', "\t")
            )
        );
        assert_eq!(
            body(&["\tk", "n"], off, &[r]),
            "\"\t=cmd\"\t\t\t\t\t\tfalse\t2024-05-01T12:00:00.123456Z\t\"\t-5\"\t-5\n"
        );
    }

    #[test]
    fn bom_once_at_the_start_of_the_file() {
        let options = with(Delimiter::Comma, true, LineEnding::Lf);
        let mut enc = CsvEncoder::new(keys(&["k"]), options);
        let header = enc.encode_header();
        assert_eq!(&header[..3], UTF8_BOM);
        assert_eq!(&header[3..], format!("{FIXED_HEADER},k\n").as_bytes());
        let batch = enc.encode_batch(&[row("a@x"), row("\u{FEFF}b@x")]);
        assert_eq!(
            &batch[..],
            "a@x,,,,,,false,2024-05-01T12:00:00.123456Z,\n\
             \u{FEFF}b@x,,,,,,false,2024-05-01T12:00:00.123456Z,\n"
                .as_bytes()
        );
        // A header-only file is the BOM and the header.
        assert_eq!(
            encode(&[], options, &[]).as_bytes(),
            [UTF8_BOM, FIXED_HEADER.as_bytes(), b"\n"].concat()
        );
        // Off by default.
        assert!(!encode(&[], ON, &[]).starts_with('\u{FEFF}'));
    }

    #[test]
    fn crlf_ends_records_but_leaves_line_breaks_inside_fields() {
        let options = with(Delimiter::Comma, false, LineEnding::Crlf);
        let mut r = row("a@x");
        r.notes = Some("lf\nhere".into());
        r.company = Some("crlf\r\nhere".into());
        r.phone = Some("cr\ronly".into());
        let file = encode(&[], options, &[r, row("b@x")]);
        assert_eq!(
            file,
            format!(
                "{FIXED_HEADER}\r\n\
                 a@x,,,\"cr\ronly\",\"crlf\r\nhere\",\"lf\nhere\",false,2024-05-01T12:00:00.123456Z\r\n\
                 b@x,,,,,,false,2024-05-01T12:00:00.123456Z\r\n"
            )
        );
        // Every chunk ends on a record boundary.
        let mut enc = CsvEncoder::new(vec![], options);
        assert!(enc.encode_header().ends_with(b"\r\n"));
        assert!(enc.encode_batch(&[row("c@x")]).ends_with(b"\r\n"));
    }

    #[test]
    fn semicolon_bom_crlf_together_byte_for_byte() {
        let options = with(Delimiter::Semicolon, true, LineEnding::Crlf);
        let mut r = row("a@x");
        r.first_name = Some("Müller; Jr.".into());
        r.last_name = Some("1,5".into());
        r.notes = Some("two\nlines".into());
        r.phone = Some("+49 30 1234".into());
        r.custom_fields = json!({"plan": "gold", "ratio": 1.5});
        let file = encode(&["ratio", "plan"], options, &[r]);
        assert_eq!(
            file.as_bytes(),
            [
                UTF8_BOM,
                b"email;first_name;last_name;phone;company;notes;is_unsubscribed;created_at;plan;ratio\r\n",
                "a@x;\"Müller; Jr.\";1,5;'+49 30 1234;;\"two\nlines\";false;2024-05-01T12:00:00.123456Z;gold;1.5\r\n"
                    .as_bytes(),
            ]
            .concat()
        );
    }

    #[test]
    fn every_combination_reads_back_with_a_matching_reader() {
        let mut r = row("a,b;c\td|e");
        r.notes = Some("\"q\"\r\nx\ny\rz".into());
        r.first_name = Some("=1".into());
        r.custom_fields = json!({"k": "|;,\t"});
        for delimiter in Delimiter::ALL {
            for line_ending in LineEnding::ALL {
                for include_bom in [false, true] {
                    let options = with(delimiter, include_bom, line_ending);
                    let file = encode(&["k"], options, std::slice::from_ref(&r));
                    let data = match file.as_bytes().strip_prefix(UTF8_BOM) {
                        Some(rest) => {
                            assert!(include_bom);
                            rest
                        }
                        None => {
                            assert!(!include_bom);
                            file.as_bytes()
                        }
                    };
                    let terminator = match line_ending {
                        LineEnding::Lf => ::csv::Terminator::Any(b'\n'),
                        LineEnding::Crlf => ::csv::Terminator::CRLF,
                    };
                    let mut rdr = ::csv::ReaderBuilder::new()
                        .delimiter(delimiter.byte())
                        .terminator(terminator)
                        .from_reader(data);
                    assert_eq!(rdr.headers().unwrap().get(8), Some("k"));
                    let recs: Vec<::csv::StringRecord> =
                        rdr.records().map(Result::unwrap).collect();
                    assert_eq!(recs.len(), 1, "{options:?}");
                    let got: Vec<&str> = recs[0].iter().collect();
                    assert_eq!(
                        got,
                        [
                            "a,b;c\td|e",
                            "'=1",
                            "",
                            "",
                            "",
                            "\"q\"\r\nx\ny\rz",
                            "false",
                            "2024-05-01T12:00:00.123456Z",
                            "|;,\t"
                        ],
                        "{options:?}"
                    );
                }
            }
        }
    }
}
