//! What a caller may choose about an export's file and rows: its format and compression, the
//! CSV's own options, the columns, and the filters beside `tag_ids`. Stored as one JSON object
//! in `exports.options`; every field has a default, so a row written before a field existed
//! reads with that field's default, and a request without the new fields is today's CSV.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The character between two CSV fields (stored by its lower-case name).
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

/// What ends each CSV record (stored by its lower-case name).
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

/// The CSV's own options (see `pipeline::format::csv` for what each does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CsvOptions {
    /// Prefix cells a spreadsheet would run as a formula with `'` (on by default).
    pub neutralize_formulas: bool,
    /// Field delimiter (comma by default).
    pub delimiter: Delimiter,
    /// Start the file with a UTF-8 byte order mark (off by default).
    pub include_bom: bool,
    /// Record terminator (LF by default).
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

/// The file's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Csv,
    Jsonl,
    Xlsx,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 3] = [ExportFormat::Csv, ExportFormat::Jsonl, ExportFormat::Xlsx];

    /// The file extension, without its dot.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Xlsx => "xlsx",
        }
    }

    /// The media type of the uncompressed file.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Jsonl => "application/x-ndjson",
            ExportFormat::Xlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
        }
    }
}

/// Compression of the stored file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// The extension added after the format's (without its dot); `None` for none.
    pub fn extension(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gz"),
            Compression::Zstd => Some("zst"),
        }
    }
}

/// The leading columns every contact has, in their default order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FixedColumn {
    Email,
    FirstName,
    LastName,
    Phone,
    Company,
    Notes,
    IsUnsubscribed,
    CreatedAt,
}

impl FixedColumn {
    /// Every fixed column, in the default order.
    pub const ALL: [FixedColumn; 8] = [
        FixedColumn::Email,
        FixedColumn::FirstName,
        FixedColumn::LastName,
        FixedColumn::Phone,
        FixedColumn::Company,
        FixedColumn::Notes,
        FixedColumn::IsUnsubscribed,
        FixedColumn::CreatedAt,
    ];

    /// Its header (and its field name in JSON Lines).
    pub fn name(self) -> &'static str {
        match self {
            FixedColumn::Email => "email",
            FixedColumn::FirstName => "first_name",
            FixedColumn::LastName => "last_name",
            FixedColumn::Phone => "phone",
            FixedColumn::Company => "company",
            FixedColumn::Notes => "notes",
            FixedColumn::IsUnsubscribed => "is_unsubscribed",
            FixedColumn::CreatedAt => "created_at",
        }
    }

    pub fn parse(name: &str) -> Option<FixedColumn> {
        FixedColumn::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The prefix that names a custom key in a column list.
pub const CUSTOM_PREFIX: &str = "custom_fields.";

/// One entry of a column list: a fixed column, or a custom key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnName {
    Fixed(FixedColumn),
    Custom(String),
}

impl ColumnName {
    /// Reads a name as the API spells it: a fixed column's header, or `custom_fields.<key>`.
    pub fn parse(name: &str) -> Result<ColumnName, String> {
        if let Some(key) = name.strip_prefix(CUSTOM_PREFIX) {
            if key.is_empty() {
                return Err(format!("{name:?} names no custom key"));
            }
            return Ok(ColumnName::Custom(key.to_owned()));
        }
        FixedColumn::parse(name)
            .map(ColumnName::Fixed)
            .ok_or_else(|| {
                format!(
                    "{name:?} is not a column (the fixed columns are {}; a custom key is \
                 custom_fields.<key>)",
                    FixedColumn::ALL.map(FixedColumn::name).join(", ")
                )
            })
    }

    /// The name as the API spells it.
    pub fn as_api(&self) -> String {
        match self {
            ColumnName::Fixed(column) => column.name().to_owned(),
            ColumnName::Custom(key) => format!("{CUSTOM_PREFIX}{key}"),
        }
    }
}

impl Serialize for ColumnName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_api())
    }
}

impl<'de> Deserialize<'de> for ColumnName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ColumnName::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// A caller's column list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ColumnList {
    /// In the order they are written; never empty, never a name twice.
    pub columns: Vec<ColumnName>,
    /// After them, every other custom key.
    pub include_other_custom_fields: bool,
}

/// How `tag_ids` select contacts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagMatch {
    #[default]
    Any,
    All,
}

/// The filters beside `tag_ids` (which is a column of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filter {
    pub tag_match: TagMatch,
    /// Contacts with any of these are left out; distinct, in the caller's order.
    pub exclude_tag_ids: Vec<Uuid>,
    /// Inclusive.
    pub created_after: Option<DateTime<Utc>>,
    /// Exclusive.
    pub created_before: Option<DateTime<Utc>>,
    pub subscribed_only: bool,
}

/// Per-export options, as stored in `exports.options`: the CSV's own at the top level (where
/// rows written before the other fields have them), then the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportOptions {
    #[serde(flatten)]
    pub csv: CsvOptions,
    pub format: ExportFormat,
    pub compression: Compression,
    /// `None`: every fixed column, then every custom key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<ColumnList>,
    pub filter: Filter,
}

impl ExportOptions {
    /// The extension of the file as stored (`csv`, `jsonl.gz`…), without a leading dot.
    pub fn extension(&self) -> String {
        match self.compression.extension() {
            Some(compressed) => format!("{}.{compressed}", self.format.extension()),
            None => self.format.extension().to_owned(),
        }
    }

    /// The media type of the file as stored: a compressed file is the compressor's.
    pub fn content_type(&self) -> &'static str {
        match self.compression {
            Compression::None => self.format.content_type(),
            Compression::Gzip => "application/gzip",
            Compression::Zstd => "application/zstd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_of_an_older_row_read_with_the_new_defaults() {
        let old: ExportOptions =
            serde_json::from_value(json!({"neutralize_formulas": false})).unwrap();
        assert_eq!(
            old,
            ExportOptions {
                csv: CsvOptions {
                    neutralize_formulas: false,
                    ..CsvOptions::DEFAULT
                },
                ..ExportOptions::default()
            }
        );
        let empty: ExportOptions = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty, ExportOptions::default());
    }

    #[test]
    fn options_are_stored_by_name() {
        let options = ExportOptions {
            csv: CsvOptions {
                neutralize_formulas: true,
                delimiter: Delimiter::Semicolon,
                include_bom: true,
                line_ending: LineEnding::Crlf,
            },
            format: ExportFormat::Jsonl,
            compression: Compression::Zstd,
            columns: Some(ColumnList {
                columns: vec![
                    ColumnName::Fixed(FixedColumn::Email),
                    ColumnName::Custom("plan".into()),
                ],
                include_other_custom_fields: true,
            }),
            filter: Filter {
                tag_match: TagMatch::All,
                exclude_tag_ids: vec![Uuid::nil()],
                created_after: Some(DateTime::from_timestamp(1_700_000_000, 1_000).unwrap()),
                created_before: None,
                subscribed_only: true,
            },
        };
        let stored = serde_json::to_value(&options).unwrap();
        assert_eq!(
            stored,
            json!({
                "neutralize_formulas": true,
                "delimiter": "semicolon",
                "include_bom": true,
                "line_ending": "crlf",
                "format": "jsonl",
                "compression": "zstd",
                "columns": {
                    "columns": ["email", "custom_fields.plan"],
                    "include_other_custom_fields": true,
                },
                "filter": {
                    "tag_match": "all",
                    "exclude_tag_ids": ["00000000-0000-0000-0000-000000000000"],
                    "created_after": "2023-11-14T22:13:20.000001Z",
                    "created_before": null,
                    "subscribed_only": true,
                },
            })
        );
        assert_eq!(
            serde_json::from_value::<ExportOptions>(stored).unwrap(),
            options
        );
    }

    #[test]
    fn the_defaults_are_todays_csv() {
        let options = ExportOptions::default();
        assert_eq!(options.extension(), "csv");
        assert_eq!(options.content_type(), "text/csv; charset=utf-8");
        let zstd = ExportOptions {
            format: ExportFormat::Jsonl,
            compression: Compression::Zstd,
            ..ExportOptions::default()
        };
        assert_eq!(zstd.extension(), "jsonl.zst");
        assert_eq!(zstd.content_type(), "application/zstd");
    }

    #[test]
    fn column_names_parse_as_the_api_spells_them() {
        assert_eq!(
            ColumnName::parse("created_at"),
            Ok(ColumnName::Fixed(FixedColumn::CreatedAt))
        );
        assert_eq!(
            ColumnName::parse("custom_fields.email"),
            Ok(ColumnName::Custom("email".into()))
        );
        assert_eq!(
            ColumnName::parse("custom_fields.a.b"),
            Ok(ColumnName::Custom("a.b".into()))
        );
        let unknown = ColumnName::parse("emial").unwrap_err();
        assert!(
            unknown.starts_with("\"emial\" is not a column"),
            "{unknown}"
        );
        assert!(ColumnName::parse("custom_fields.").is_err());
        assert!(ColumnName::parse("Email").is_err(), "case-sensitive");
    }
}
