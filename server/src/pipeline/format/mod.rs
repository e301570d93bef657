//! The file formats, behind one seam: the `stream-export` step drives an [`Encoder`] (the
//! start of the file, rows batch by batch, the end) and never knows which format it writes.
//! Rows come in as the format-neutral [`row::ContactRef`], columns are laid out once by
//! [`columns::ColumnPlan`], and whatever an encoder produces goes through the file's
//! [`compress::Compressor`] before it is hashed and stored.
//!
//! A new format is one file here with its [`Encoder`], plus its `ExportFormat` value.

pub mod columns;
pub mod compress;
pub mod csv;
pub mod jsonl;
pub mod row;
pub mod timestamp;
pub mod xlsx;

use bytes::Bytes;

use crate::exports::{ExportFormat, ExportOptions};
use crate::pipeline::custom_fields::MalformedJson;
use row::ContactRef;

/// Why a file could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A row's custom fields are not the JSON PostgreSQL gives: the same row fails every
    /// attempt.
    #[error(transparent)]
    Malformed(#[from] MalformedJson),
    /// A value the format cannot hold (Excel's cell limits): the same row fails every attempt.
    #[error("{0}")]
    Unrepresentable(String),
    /// The local file a format is built in (XLSX) failed: a retry may succeed.
    #[error("the temporary file of the workbook failed: {0}")]
    TempFile(#[source] std::io::Error),
}

/// What is left of a file when its rows are encoded.
#[derive(Debug)]
pub enum Finished {
    /// The last bytes (empty for formats that end with their last row).
    Chunk(Bytes),
    /// The whole file, built in a temporary file (read it from the start; it is removed when
    /// dropped).
    File(tempfile::NamedTempFile),
}

/// Encodes one file. Chunks concatenate to the file: [`Encoder::begin`], then rows with
/// [`Encoder::take_chunk`] after each batch, then [`Encoder::finish`].
pub trait Encoder: Send {
    /// The header row (column names) as the file has it.
    fn headers(&self) -> &[String];
    /// The start of the file (a byte order mark, a header row…).
    fn begin(&mut self) -> Result<Bytes, EncodeError>;
    /// Adds one row to the current chunk. On an error the file is useless: it is dropped.
    fn row(&mut self, row: &ContactRef<'_>) -> Result<(), EncodeError>;
    /// The bytes encoded since the last chunk was taken (empty for a format that produces its
    /// bytes only at the end).
    fn take_chunk(&mut self) -> Bytes;
    /// The end of the file. May block for as long as building the file takes (XLSX): call it
    /// off the async threads.
    fn finish(self: Box<Self>) -> Result<Finished, EncodeError>;
}

/// The encoder of `options`' format and columns, for rows whose custom keys are `row_keys`
/// (sorted and distinct).
pub fn encoder(
    options: &ExportOptions,
    row_keys: &[String],
) -> Result<Box<dyn Encoder>, EncodeError> {
    let list = options.columns.as_ref();
    Ok(match options.format {
        ExportFormat::Csv => Box::new(csv::CsvEncoder::with_columns(row_keys, list, options.csv)),
        ExportFormat::Jsonl => Box::new(jsonl::JsonlEncoder::new(row_keys, list)),
        ExportFormat::Xlsx => Box::new(xlsx::XlsxEncoder::new(row_keys, list)?),
    })
}

/// The header row of `options`' file for rows whose custom keys are `row_keys` (sorted and
/// distinct), as its encoder writes it, without building an encoder (a workbook's temporary
/// files).
pub fn headers(options: &ExportOptions, row_keys: &[String]) -> Vec<String> {
    let list = options.columns.as_ref();
    match options.format {
        ExportFormat::Csv => csv::CsvEncoder::with_columns(row_keys, list, options.csv)
            .headers()
            .to_vec(),
        ExportFormat::Jsonl | ExportFormat::Xlsx => {
            columns::ColumnPlan::new(row_keys, list, str::to_owned).headers
        }
    }
}
