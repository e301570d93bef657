//! Property tests for what a caller controls: every string a contact or a filename can hold.
//!
//! - The CSV encoder: any text in any field, any custom key and value, under every delimiter,
//!   line ending and BOM setting, reads back equal through the `csv` crate's reader configured
//!   the same way, but for the documented formula neutralisation; and with neutralisation on,
//!   no cell starts with a trigger character unless it is a plain number.
//! - The filename sanitiser: any request gives one safe `.csv` path component.
//!
//! The oracles here (the trigger rule, the plain-number grammar, the hidden characters) are
//! written again from the docs rather than taken from the code under test.

use chrono::{DateTime, Datelike as _, SecondsFormat, Utc};
use contact_export_server::exports::filename::{MAX_FILENAME_BYTES, sanitize_filename};
use contact_export_server::exports::{CsvOptions, Delimiter, LineEnding};
use contact_export_server::pipeline::format::columns::FIXED_COLUMNS;
use contact_export_server::pipeline::format::csv::{CsvEncoder, UTF8_BOM};
use contact_export_server::pipeline::format::row::ContactRow;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------------------------
// Oracles

/// `[+-]?digits(.digits)?([eE][+-]?digits)?`, the documented exception to neutralisation.
fn is_plain_number(s: &str) -> bool {
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    digits(int) && frac.is_none_or(digits) && exponent.is_none_or(digits)
}

/// Starts with `=`, `+`, `-`, `@`, TAB or CR and is not a plain number.
fn triggers(s: &str) -> bool {
    s.starts_with(['=', '+', '-', '@', '\t', '\r']) && !is_plain_number(s)
}

/// A cell as it reads back: `'` + the original exactly when neutralisation is on and the
/// original triggers.
fn neutral(s: &str, on: bool) -> String {
    if on && triggers(s) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// What a custom value reads back as, before neutralisation.
fn custom_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// Strings of any `char`s (`any::<String>()` leaves out control and format characters).
fn any_chars(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Text that stresses CSV: arbitrary unicode, control characters included; runs of the delimiters, quotes, CR, LF, NUL, the
/// BOM and other invisible characters; trigger-prefixed text; plain numbers (the exception).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => any_chars(16),
        4 => "[,;|\t\r\n\"'=+@ \\-\u{0}\u{FEFF}\u{200B}\u{202E}a-zé日🚀0-9.eE#\\\\]{0,16}",
        2 => ("[=+\\-@\t\r]", any::<String>()).prop_map(|(t, s)| t + &s),
        2 => "[+-]?[0-9]{1,4}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
        1 => Just(String::new()),
    ]
}

/// Custom-field keys: any text, and the names that collide with fixed or generated headers.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text(),
        1 => select(vec![
            "email",
            "notes",
            "created_at",
            "custom_fields.email",
            "custom_fields.email (2)",
            "=x",
            "'=x",
        ])
        .prop_map(String::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        4 => text().prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map(text(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A row's `custom_fields`: usually an object, sometimes another JSON value (all cells empty).
fn custom_fields() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => proptest::collection::btree_map(key(), json_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => json_value(),
    ]
}

/// Any instant chrono can hold, at microsecond precision (what PostgreSQL stores).
fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    any::<i64>().prop_filter_map("in chrono's range", DateTime::from_timestamp_micros)
}

prop_compose! {
    fn contact()(
        email in text(),
        first_name in proptest::option::of(text()),
        last_name in proptest::option::of(text()),
        phone in proptest::option::of(text()),
        company in proptest::option::of(text()),
        notes in proptest::option::of(text()),
        is_unsubscribed in any::<bool>(),
        created_at in timestamp(),
        custom_fields in custom_fields(),
    ) -> ContactRow {
        ContactRow {
            email, first_name, last_name, phone, company, notes, is_unsubscribed, created_at,
            custom_fields,
        }
    }
}

prop_compose! {
    fn options()(
        neutralize_formulas in any::<bool>(),
        delimiter in select(Delimiter::ALL.to_vec()),
        include_bom in any::<bool>(),
        line_ending in select(LineEnding::ALL.to_vec()),
    ) -> CsvOptions {
        CsvOptions { neutralize_formulas, delimiter, include_bom, line_ending }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding and reading back

/// The file for `rows`, written in batches of `batch` rows, as the stream step writes it; the
/// custom columns are the keys of the rows' objects (as the metadata step finds them) plus
/// `extra`, which no row needs to have.
fn encode(
    rows: &[ContactRow],
    extra: &[String],
    options: CsvOptions,
    batch: usize,
) -> (CsvEncoder, Vec<u8>) {
    let mut keys: Vec<String> = rows
        .iter()
        .filter_map(|r| r.custom_fields.as_object())
        .flat_map(|o| o.keys().cloned())
        .chain(extra.iter().cloned())
        .collect();
    // The encoder sorts and deduplicates; give it the keys in a scrambled order.
    keys.reverse();
    let mut encoder = CsvEncoder::new(keys, options);
    let mut file = encoder.encode_header().to_vec();
    for chunk in rows.chunks(batch) {
        file.extend_from_slice(&encoder.encode_batch(chunk));
    }
    (encoder, file)
}

/// Every record of `file` (header included), read with a reader configured like the writer;
/// fails the case when the BOM is not exactly where the options put it.
fn read_back(file: &[u8], options: CsvOptions) -> Result<Vec<Vec<String>>, TestCaseError> {
    let data = match file.strip_prefix(UTF8_BOM) {
        Some(rest) => {
            prop_assert!(options.include_bom, "a BOM that was not asked for");
            rest
        }
        None => {
            prop_assert!(!options.include_bom, "no BOM although asked for");
            file
        }
    };
    let terminator = match options.line_ending {
        LineEnding::Lf => csv::Terminator::Any(b'\n'),
        LineEnding::Crlf => csv::Terminator::CRLF,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(false)
        .delimiter(options.delimiter.byte())
        .terminator(terminator)
        .from_reader(data);
    let mut records = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| TestCaseError::fail(format!("unreadable CSV: {e}")))?;
        records.push(record.iter().map(String::from).collect());
    }
    Ok(records)
}

/// The cells `row` must read back as (the timestamp column is checked by parsing it).
fn expected_cells(row: &ContactRow, keys: &[String], on: bool) -> Vec<String> {
    let opt = |o: &Option<String>| neutral(o.as_deref().unwrap_or(""), on);
    let mut cells = vec![
        neutral(&row.email, on),
        opt(&row.first_name),
        opt(&row.last_name),
        opt(&row.phone),
        opt(&row.company),
        opt(&row.notes),
        row.is_unsubscribed.to_string(),
        String::new(), // created_at
    ];
    let object = row.custom_fields.as_object();
    for key in keys {
        cells.push(neutral(&custom_text(object.and_then(|o| o.get(key))), on));
    }
    cells
}

const CREATED_AT: usize = 7;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// (a) Any strings survive the encoder and read back equal, modulo neutralisation.
    #[test]
    fn any_contact_reads_back_equal(
        rows in proptest::collection::vec(contact(), 0..6),
        extra in proptest::collection::vec(key(), 0..3),
        options in options(),
        batch in 1usize..4,
    ) {
        let (encoder, file) = encode(&rows, &extra, options, batch);
        let on = options.neutralize_formulas;
        let records = read_back(&file, options)?;
        prop_assert_eq!(records.len(), rows.len() + 1);

        // The header: the fixed names, then one distinct header per key in key order, which
        // is the key itself (neutralised) unless it had to be renamed.
        let header = &records[0];
        prop_assert_eq!(header, &encoder.headers().to_vec());
        prop_assert_eq!(&header[..8], &FIXED_COLUMNS.map(String::from)[..]);
        let keys = encoder.custom_keys();
        prop_assert_eq!(header.len(), 8 + keys.len());
        let mut sorted = keys.to_vec();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&sorted[..], keys, "keys sorted and distinct");
        let mut distinct = header.clone();
        distinct.sort();
        distinct.dedup();
        prop_assert_eq!(distinct.len(), header.len(), "every header names one column");
        for (key, name) in keys.iter().zip(&header[8..]) {
            let own = neutral(key, on);
            prop_assert!(
                *name == own
                    || name.starts_with(&format!("{own} ("))
                    || (FIXED_COLUMNS.contains(&key.as_str())
                        && name.starts_with(&format!("custom_fields.{key}"))),
                "key {:?} has header {:?}", key, name
            );
        }

        for (row, got) in rows.iter().zip(&records[1..]) {
            let mut want = expected_cells(row, keys, on);
            want[CREATED_AT] = got[CREATED_AT].clone();
            prop_assert_eq!(got, &want);
            // RFC 3339 with microseconds and `Z`, as chrono writes it (with ISO 8601's sign
            // outside years 0–9999, which RFC 3339 parsers refuse).
            prop_assert_eq!(
                &got[CREATED_AT],
                &row.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)
            );
            if (0..=9999).contains(&row.created_at.year()) {
                let created = DateTime::parse_from_rfc3339(&got[CREATED_AT])
                    .map_err(|e| TestCaseError::fail(format!("{:?}: {e}", got[CREATED_AT])))?;
                prop_assert_eq!(created.with_timezone(&Utc), row.created_at);
            }
            // Nested values are JSON (compared as text above: serde_json's default float
            // parsing is not exact, so a parsed value may differ in the last digit).
            if let Some(object) = row.custom_fields.as_object() {
                for (key, cell) in keys.iter().zip(&got[8..]) {
                    if let Some(Value::Array(_) | Value::Object(_)) = object.get(key) {
                        prop_assert!(serde_json::from_str::<Value>(cell).is_ok(), "{:?}", cell);
                    }
                }
            }
        }

        // Every record ends with the terminator, and the BOM is only at the start.
        prop_assert!(file.ends_with(options.line_ending.as_bytes()));
        let bom_count = file.windows(3).filter(|w| *w == UTF8_BOM).count();
        let in_data: usize = rows
            .iter()
            .map(|r| {
                let cells = expected_cells(r, keys, on).concat();
                cells.matches('\u{FEFF}').count()
            })
            .sum::<usize>()
            + header.concat().matches('\u{FEFF}').count();
        prop_assert_eq!(bom_count, usize::from(options.include_bom) + in_data);
    }

}

proptest! {
    #![proptest_config(config(192))]

    /// (b) With neutralisation on, no cell starts with a trigger unless it is a plain number
    /// (timestamps aside: one outside years 0–9999 starts with its sign, as documented).
    #[test]
    fn neutralised_cells_never_start_with_a_trigger(
        rows in proptest::collection::vec(contact(), 1..6),
        extra in proptest::collection::vec(key(), 0..3),
        options in options(),
    ) {
        let options = CsvOptions { neutralize_formulas: true, ..options };
        let (_, file) = encode(&rows, &extra, options, 2);
        let records = read_back(&file, options)?;
        for (r, record) in records.iter().enumerate() {
            for (c, cell) in record.iter().enumerate() {
                if r > 0 && c == CREATED_AT {
                    continue;
                }
                prop_assert!(
                    !cell.starts_with(['=', '+', '-', '@', '\t', '\r']) || is_plain_number(cell),
                    "record {} cell {} is {:?}", r, c, cell
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Filenames

/// Characters no sanitised name may hold: control, bidi, zero-width and invisible characters,
/// line and paragraph separators, and the ones Windows forbids in names.
fn forbidden_in_filename(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '/' | '\\'
                | '<'
                | '>'
                | ':'
                | '"'
                | '|'
                | '?'
                | '*'
                | '\u{00AD}'
                | '\u{061C}'
                | '\u{200B}'
                | '\u{200C}'
                | '\u{200D}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'
                | '\u{202B}'
                | '\u{202C}'
                | '\u{202D}'
                | '\u{202E}'
                | '\u{2060}'
                | '\u{2061}'
                | '\u{2062}'
                | '\u{2063}'
                | '\u{2064}'
                | '\u{2066}'
                | '\u{2067}'
                | '\u{2068}'
                | '\u{2069}'
                | '\u{FEFF}'
        )
}

fn windows_device(name: &str) -> bool {
    let base = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = base.to_uppercase();
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"].contains(&upper.as_str())
        || ["COM", "LPT"].iter().any(|p| {
            upper.strip_prefix(p).is_some_and(|d| {
                matches!(
                    d,
                    "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
                )
            })
        })
}

/// Requested filenames: arbitrary unicode, path tricks, invisible characters, device names,
/// and names around the length limit.
fn requested_filename() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => any_chars(40),
        4 => "[./\\\\ <>:\"|?*\u{0}\n\r\t\u{7F}\u{85}\u{AD}\u{61C}\u{200B}-\u{200F}\u{2028}-\u{202E}\u{2060}-\u{2069}\u{FEFF}\u{3000}aZé日🚀0-9]{0,40}",
        2 => "(\\.|\\.\\.|/|\\\\| )*(CON|con|Nul|AUX|prn|COM[0-9¹]|lpt[1-9]|CONIN\\$)( *)(\\.[a-z]{0,4}){0,2}(\\.(csv|CSV|Csv))?",
        2 => "[aé日🚀/.\u{202E}]{150,260}(\\.csv|\\.CSV)?",
        1 => Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    /// (c) The sanitiser always yields one safe component ending in `.csv` within 200 bytes.
    #[test]
    fn sanitised_filenames_are_one_safe_component(requested in requested_filename()) {
        let now = DateTime::from_timestamp(1_714_564_800, 0).unwrap();
        let name = sanitize_filename(&requested, now);
        prop_assert!(name.len() <= MAX_FILENAME_BYTES, "{} bytes: {:?}", name.len(), name);
        prop_assert!(name.len() > ".csv".len(), "empty stem: {:?}", name);
        prop_assert!(name.to_ascii_lowercase().ends_with(".csv"), "{:?}", name);
        prop_assert!(!name.starts_with('.'), "{:?}", name);
        prop_assert!(!name.starts_with(char::is_whitespace), "{:?}", name);
        prop_assert!(
            !name.chars().any(forbidden_in_filename),
            "{:?} holds a forbidden character", name
        );
        prop_assert!(!windows_device(&name), "{:?} is a Windows device name", name);
        // Sanitising is idempotent: a sanitised name is left as it is.
        prop_assert_eq!(sanitize_filename(&name, now), name);
    }
}
