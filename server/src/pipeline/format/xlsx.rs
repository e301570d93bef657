//! XLSX (`.xlsx`): a real Excel workbook for people who open exports in a spreadsheet, written
//! with `rust_xlsxwriter` in its constant-memory mode: each row goes to a temporary file as
//! soon as the next one starts, and [`Encoder::finish`] zips those files into the workbook,
//! itself a temporary file that the stream step then uploads. Memory stays flat; the disk
//! holds the rows' XML and then the workbook (see the README for the measured cost).
//!
//! Cells are typed, so nothing needs formula guards: text is a text cell (`+1 555 0100`,
//! `00123` and `=x` stay as they are), `is_unsubscribed` a boolean, `created_at` a date-time
//! cell (UTC, `yyyy-mm-dd hh:mm:ss.000`: Excel keeps milliseconds) unless it is outside the
//! years Excel can show (before 1900-03-01, from 10000, `±infinity`: then its RFC 3339 text).
//! Custom values: a string is text, a number is a number cell when a double holds it exactly
//! as written (at most 15 significant digits) and otherwise its text, `true`/`false` a boolean,
//! `null` an empty cell, an object or array its compact JSON as text.
//!
//! The header row is bold and frozen. A sheet holds Excel's 1,048,576 rows at most, the header
//! included: the 1,048,576th contact starts a new sheet (`Contacts (2)`, …) with the header
//! again. A text longer than the 32,767 characters an Excel cell holds fails the export naming
//! the contact and the column (CSV and JSON Lines have no such limit).

use bytes::Bytes;
use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};

use super::columns::{Column, ColumnPlan};
use super::row::{ContactRef, CustomRef, FixedValue, PgTimestamp};
use super::timestamp::write_timestamp;
use super::{EncodeError, Encoder, Finished};
use crate::exports::{ColumnList, FixedColumn};
use crate::pipeline::custom_fields::{self, Kind, RawValue, Span};

/// Rows of one sheet, the header included (Excel's limit).
pub const SHEET_ROWS: u32 = 1_048_576;
/// The first sheet's name; the next ones are `Contacts (2)`…
const SHEET_NAME: &str = "Contacts";
/// Width of a date-time column, in characters, so that Excel shows the value (not `####`).
const DATETIME_WIDTH: f64 = 23.0;
/// 1970-01-01 as an Excel serial date (days since 1899-12-30).
const UNIX_EPOCH_SERIAL: f64 = 25_569.0;
/// 1900-03-01 and 10000-01-01 in microseconds since 2000-01-01: the dates an Excel serial
/// number shows correctly (before March 1900, Excel counts a 29 February 1900 that never was).
const FIRST_SERIAL_MICROS: i64 = -3_150_576_000_000_000;
const PAST_LAST_SERIAL_MICROS: i64 = 252_455_616_000_000_000;

/// Builds one workbook.
pub struct XlsxEncoder {
    plan: ColumnPlan,
    workbook: Workbook,
    /// The sheet being written, and its next row.
    sheet: usize,
    row: u32,
    /// Rows per sheet, the header included ([`SHEET_ROWS`] but in tests).
    sheet_rows: u32,
    bold: Format,
    datetime: Format,
    spans: Vec<Option<Span>>,
    scratch: String,
    text: String,
}

impl std::fmt::Debug for XlsxEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XlsxEncoder")
            .field("sheet", &self.sheet)
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

impl XlsxEncoder {
    /// A workbook of the columns `list` asks for (every column without one), for rows whose
    /// custom keys are `row_keys` (sorted and distinct). Its temporary files go to the
    /// system's temporary folder (`TMPDIR`).
    pub fn new(row_keys: &[String], list: Option<&ColumnList>) -> Result<Self, EncodeError> {
        let plan = ColumnPlan::new(row_keys, list, str::to_owned);
        let mut workbook = Workbook::new();
        // ZIP64 always: one sheet's XML passes ZIP's 4 GiB with long texts well before
        // Excel's row limit, and the zip would only say so once the whole workbook is built.
        workbook.use_zip_large_file(true);
        let mut encoder = XlsxEncoder {
            plan,
            workbook,
            sheet: 0,
            row: 0,
            sheet_rows: SHEET_ROWS,
            bold: Format::new().set_bold(),
            datetime: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss.000"),
            spans: Vec::new(),
            scratch: String::new(),
            text: String::new(),
        };
        encoder.add_sheet(1)?;
        Ok(encoder)
    }

    /// Adds sheet number `n` (from 1) with the header row, and makes it the current one.
    fn add_sheet(&mut self, n: usize) -> Result<(), EncodeError> {
        let name = if n == 1 {
            SHEET_NAME.to_owned()
        } else {
            format!("{SHEET_NAME} ({n})")
        };
        let sheet = self
            .workbook
            .add_worksheet_with_constant_memory()
            .map_err(xlsx_error)?;
        sheet.set_name(name).map_err(xlsx_error)?;
        sheet.set_freeze_panes(1, 0).map_err(xlsx_error)?;
        for (i, (column, header)) in self.plan.columns.iter().zip(&self.plan.headers).enumerate() {
            let col = column_number(i)?;
            if *column == Column::Fixed(FixedColumn::CreatedAt) {
                sheet
                    .set_column_width(col, DATETIME_WIDTH)
                    .map_err(xlsx_error)?;
            }
            sheet
                .write_string_with_format(0, col, header, &self.bold)
                .map_err(|e| cell_error(e, header))?;
        }
        self.sheet = n - 1;
        self.row = 1;
        Ok(())
    }
}

impl Encoder for XlsxEncoder {
    fn headers(&self) -> &[String] {
        &self.plan.headers
    }

    fn begin(&mut self) -> Result<Bytes, EncodeError> {
        // The header row is written with each sheet.
        Ok(Bytes::new())
    }

    fn row(&mut self, row: &ContactRef<'_>) -> Result<(), EncodeError> {
        if self.row == self.sheet_rows {
            let next = self.sheet + 2;
            self.add_sheet(next)?;
        }
        let text = match row.custom_fields {
            CustomRef::Text(text) => {
                custom_fields::locate(text, &self.plan.keys, &mut self.spans, &mut self.scratch)?;
                Some(text)
            }
            CustomRef::Json(_) => None,
        };
        let Self {
            plan,
            workbook,
            sheet,
            row: at,
            datetime,
            spans,
            scratch,
            text: cell,
            ..
        } = self;
        let sheet = workbook.worksheet_from_index(*sheet).map_err(xlsx_error)?;
        let r = *at;
        for (i, column) in plan.columns.iter().enumerate() {
            let col = column_number(i)?;
            let header = || plan.headers[i].as_str();
            match *column {
                Column::Fixed(fixed) => match row.fixed(fixed) {
                    FixedValue::Text(Some(value)) if !value.is_empty() => {
                        sheet
                            .write_string(r, col, value)
                            .map_err(|e| cell_error(e, header()))?;
                    }
                    FixedValue::Text(_) => {}
                    FixedValue::Bool(b) => {
                        sheet.write_boolean(r, col, b).map_err(xlsx_error)?;
                    }
                    FixedValue::Timestamp(ts) => {
                        write_datetime(sheet, r, col, ts, datetime, cell)?;
                    }
                },
                Column::Custom(k) => match (row.custom_fields, text) {
                    (CustomRef::Text(_), Some(text)) => {
                        if let Some(span) = spans[k] {
                            write_raw(sheet, r, col, span.value(text), scratch, cell)
                                .map_err(|e| cell_error(e, header()))?;
                        }
                    }
                    (CustomRef::Json(value), _) => {
                        if let Some(value) =
                            value.as_object().and_then(|o| o.get(plan.keys[k].as_str()))
                        {
                            write_json(sheet, r, col, value, cell)
                                .map_err(|e| cell_error(e, header()))?;
                        }
                    }
                    (CustomRef::Text(_), None) => unreachable!("located above"),
                },
            }
        }
        *at += 1;
        Ok(())
    }

    fn take_chunk(&mut self) -> Bytes {
        // The workbook's bytes exist only once it is zipped, at the end.
        Bytes::new()
    }

    fn finish(mut self: Box<Self>) -> Result<Finished, EncodeError> {
        let file = tempfile::NamedTempFile::new().map_err(EncodeError::TempFile)?;
        let mut writer = std::io::BufWriter::new(file.as_file());
        self.workbook
            .save_to_writer(&mut writer)
            .map_err(xlsx_error)?;
        // The last bytes (the archive's central directory) are flushed here, not by the
        // writer's drop, which would lose a failure (a full disk) and leave a broken workbook.
        std::io::Write::flush(&mut writer).map_err(EncodeError::TempFile)?;
        drop(writer);
        Ok(Finished::File(file))
    }
}

fn column_number(i: usize) -> Result<u16, EncodeError> {
    u16::try_from(i)
        .ok()
        .filter(|&c| c < 16_384)
        .ok_or_else(|| {
            EncodeError::Unrepresentable(format!(
                "the file would have {} columns, more than the 16,384 of an Excel sheet",
                i + 1
            ))
        })
}

/// A date-time cell, or the RFC 3339 text where Excel cannot show the date.
fn write_datetime(
    sheet: &mut Worksheet,
    row: u32,
    col: u16,
    ts: PgTimestamp,
    format: &Format,
    text: &mut String,
) -> Result<(), EncodeError> {
    if (FIRST_SERIAL_MICROS..PAST_LAST_SERIAL_MICROS).contains(&ts.0) {
        let unix_micros = ts.0 + super::row::PG_EPOCH_UNIX_MICROS;
        let serial = UNIX_EPOCH_SERIAL + unix_micros as f64 / 86_400_000_000.0;
        let datetime =
            rust_xlsxwriter::ExcelDateTime::from_serial_datetime(serial).map_err(xlsx_error)?;
        sheet
            .write_datetime_with_format(row, col, datetime, format)
            .map_err(xlsx_error)?;
    } else {
        let mut bytes = Vec::with_capacity(32);
        write_timestamp(&mut bytes, ts);
        text.clear();
        text.push_str(std::str::from_utf8(&bytes).expect("timestamps are ASCII"));
        sheet
            .write_string(row, col, text.as_str())
            .map_err(xlsx_error)?;
    }
    Ok(())
}

/// A custom value as PostgreSQL gave it.
fn write_raw(
    sheet: &mut Worksheet,
    row: u32,
    col: u16,
    value: RawValue<'_>,
    scratch: &mut String,
    text: &mut String,
) -> Result<(), XlsxError> {
    match value.kind {
        Kind::Null => {}
        Kind::String if !value.escaped => {
            sheet.write_string(row, col, value.text)?;
        }
        Kind::String => {
            scratch.clear();
            custom_fields::unescape_into(value.text, scratch);
            sheet.write_string(row, col, scratch.as_str())?;
        }
        Kind::True => {
            sheet.write_boolean(row, col, true)?;
        }
        Kind::False => {
            sheet.write_boolean(row, col, false)?;
        }
        Kind::Number => match exact_double(value.text) {
            Some(number) => {
                sheet.write_number(row, col, number)?;
            }
            None => {
                sheet.write_string(row, col, value.text)?;
            }
        },
        Kind::Object | Kind::Array => {
            let mut bytes = Vec::with_capacity(value.text.len());
            custom_fields::write_compact(value.text, &mut bytes);
            text.clear();
            text.push_str(std::str::from_utf8(&bytes).expect("compacting keeps UTF-8"));
            sheet.write_string(row, col, text.as_str())?;
        }
    }
    Ok(())
}

/// A custom value built in memory.
fn write_json(
    sheet: &mut Worksheet,
    row: u32,
    col: u16,
    value: &serde_json::Value,
    text: &mut String,
) -> Result<(), XlsxError> {
    use serde_json::Value;
    match value {
        Value::Null => {}
        Value::String(s) => {
            sheet.write_string(row, col, s.as_str())?;
        }
        Value::Bool(b) => {
            sheet.write_boolean(row, col, *b)?;
        }
        Value::Number(n) => {
            let written = n.to_string();
            match exact_double(&written) {
                Some(number) => sheet.write_number(row, col, number)?,
                None => sheet.write_string(row, col, written)?,
            };
        }
        nested => {
            text.clear();
            text.push_str(&nested.to_string());
            sheet.write_string(row, col, text.as_str())?;
        }
    }
    Ok(())
}

/// The number a JSON number's text stands for, when a double gives it back as written: at most
/// 15 significant digits (what a double always keeps) and a finite value.
fn exact_double(text: &str) -> Option<f64> {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // Zeros at either end are the exponent's business, not the double's.
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    if significant.len() > 15 {
        return None;
    }
    // Past a double's range: infinite, or (below its normal numbers) 0 or a subnormal that
    // keeps fewer digits than written.
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && (n.is_normal() || (*n == 0.0 && significant.is_empty())))
}

/// A cell that cannot be written: too long for Excel, or the library's own failure.
fn cell_error(error: XlsxError, header: &str) -> EncodeError {
    match error {
        XlsxError::MaxStringLengthExceeded => EncodeError::Unrepresentable(format!(
            "its {header} has more than the 32,767 characters an Excel cell holds (export it \
             as CSV or JSON Lines)"
        )),
        other => xlsx_error(other),
    }
}

fn xlsx_error(error: XlsxError) -> EncodeError {
    match error {
        XlsxError::IoError(e) => EncodeError::TempFile(e),
        XlsxError::TempFileError(_, e) => EncodeError::TempFile(e),
        other => EncodeError::Unrepresentable(format!("the workbook cannot be written: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::format::row::ContactRow;
    use calamine::{Data, Reader};
    use chrono::{TimeZone, Utc};

    fn contact(n: u32) -> ContactRow {
        ContactRow {
            email: format!("c{n}@example.com"),
            first_name: Some("+1 555 0100".into()),
            last_name: None,
            phone: Some("00123".into()),
            company: Some("=HYPERLINK(\"x\")".into()),
            notes: None,
            is_unsubscribed: n.is_multiple_of(2),
            created_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
                + chrono::Duration::milliseconds(i64::from(n)),
            custom_fields: serde_json::json!({"score": 1.5, "big": 12345678901234567u64,
                "tags": ["a"], "ok": true}),
        }
    }

    /// Every sheet of a workbook: its name and rows.
    fn read(file: Finished) -> Vec<(String, Vec<Vec<Data>>)> {
        let Finished::File(file) = file else {
            panic!("a workbook is a file");
        };
        let bytes = std::fs::read(file.path()).unwrap();
        let mut workbook: calamine::Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(bytes)).unwrap();
        workbook
            .sheet_names()
            .into_iter()
            .map(|name| {
                let range = workbook.worksheet_range(&name).unwrap();
                (name, range.rows().map(|r| r.to_vec()).collect())
            })
            .collect()
    }

    #[test]
    fn typed_cells_and_a_new_sheet_when_one_is_full() {
        let keys: Vec<String> = ["big", "ok", "score", "tags"].map(String::from).to_vec();
        let mut encoder = XlsxEncoder::new(&keys, None).unwrap();
        encoder.sheet_rows = 3;
        for n in 0..5 {
            encoder.row(&contact(n).as_ref()).unwrap();
        }
        assert!(encoder.take_chunk().is_empty());
        let sheets = read(Box::new(encoder).finish().unwrap());
        let names: Vec<&str> = sheets.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Contacts", "Contacts (2)", "Contacts (3)"]);
        let rows: Vec<usize> = sheets.iter().map(|(_, r)| r.len()).collect();
        assert_eq!(rows, [3, 3, 2], "two contacts and the header per sheet");
        for (_, rows) in &sheets {
            assert_eq!(rows[0][0], Data::String("email".into()));
            assert_eq!(rows[0][8], Data::String("big".into()));
        }
        let first = &sheets[0].1[1];
        assert_eq!(first[0], Data::String("c0@example.com".into()));
        assert_eq!(
            first[1],
            Data::String("+1 555 0100".into()),
            "no formula guard"
        );
        assert_eq!(first[2], Data::Empty);
        assert_eq!(first[3], Data::String("00123".into()), "text stays text");
        assert_eq!(first[4], Data::String("=HYPERLINK(\"x\")".into()));
        assert_eq!(first[6], Data::Bool(true));
        let Data::DateTime(at) = &first[7] else {
            panic!("created_at is a date-time cell: {:?}", first[7]);
        };
        let expected = UNIX_EPOCH_SERIAL + 1_714_564_800.0 / 86_400.0;
        assert!((at.as_f64() - expected).abs() < 1e-9, "{}", at.as_f64());
        assert_eq!(
            first[8],
            Data::String("12345678901234567".into()),
            "beyond a double"
        );
        assert_eq!(first[9], Data::Bool(true));
        assert_eq!(first[10], Data::Float(1.5));
        assert_eq!(first[11], Data::String("[\"a\"]".into()));
    }

    #[test]
    fn text_that_looks_like_an_ooxml_escape_stays_as_written() {
        let mut encoder = XlsxEncoder::new(&[], None).unwrap();
        let mut row = contact(1);
        row.last_name = Some("_x0041_ and _x00e9_".into());
        encoder.row(&row.as_ref()).unwrap();
        let sheets = read(Box::new(encoder).finish().unwrap());
        assert_eq!(
            sheets[0].1[1][2],
            Data::String("_x0041_ and _x00e9_".into()),
            "not A and é"
        );
    }

    #[test]
    fn a_text_longer_than_a_cell_holds_fails_naming_the_column() {
        let mut encoder = XlsxEncoder::new(&[], None).unwrap();
        let mut long = contact(1);
        long.notes = Some("x".repeat(32_768));
        let error = encoder.row(&long.as_ref()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("its notes has more than the 32,767 characters"),
            "{error}"
        );
    }

    #[test]
    fn doubles_are_taken_only_when_they_hold_the_number_exactly() {
        assert_eq!(exact_double("1.50"), Some(1.5));
        assert_eq!(exact_double("-5"), Some(-5.0));
        assert_eq!(exact_double("123456789012345"), Some(123_456_789_012_345.0));
        assert_eq!(exact_double("1234567890123456"), None);
        assert_eq!(exact_double("0.000000000000000000001"), Some(1e-21));
        assert_eq!(exact_double("1e400"), None);
        assert_eq!(exact_double("1000000000000000000000"), Some(1e21));
        assert_eq!(exact_double("2.5e-7"), Some(2.5e-7));
        assert_eq!(exact_double("0"), Some(0.0));
        assert_eq!(exact_double("-0.000"), Some(-0.0));
        assert_eq!(exact_double("1e-400"), None, "not 0");
        assert_eq!(exact_double(&format!("0.{}1", "0".repeat(399))), None);
        assert_eq!(exact_double("1e-320"), None, "a subnormal");
    }

    #[test]
    fn the_serial_range_is_march_1900_to_9999() {
        use chrono::{TimeZone, Utc};
        let micros = |y, m, d| PgTimestamp::from(Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()).0;
        assert_eq!(FIRST_SERIAL_MICROS, micros(1900, 3, 1));
        assert_eq!(PAST_LAST_SERIAL_MICROS, micros(10000, 1, 1));
        // 1900-03-01 is serial 61 in Excel's count.
        let unix = (FIRST_SERIAL_MICROS + super::super::row::PG_EPOCH_UNIX_MICROS) as f64;
        assert_eq!(UNIX_EPOCH_SERIAL + unix / 86_400_000_000.0, 61.0);
    }
}
