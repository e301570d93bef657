//! The contact as every format reads it: the fields the `COPY` sends, borrowed in place, with
//! no format in them.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::exports::FixedColumn;

/// One contact built in memory (tests, fixtures); [`ContactRow::as_ref`] is what the encoders
/// read.
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

/// One contact as the encoders read it, borrowed from wherever it lives (the bytes PostgreSQL
/// sent, see [`crate::pipeline::copy_rows`], or a [`ContactRow`]).
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
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl From<DateTime<Utc>> for PgTimestamp {
    fn from(t: DateTime<Utc>) -> Self {
        PgTimestamp(t.timestamp_micros() - PG_EPOCH_UNIX_MICROS)
    }
}

impl PgTimestamp {
    /// The instant, unless it is `infinity`, `-infinity` or outside chrono's range.
    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        match self.0 {
            i64::MAX | i64::MIN => None,
            micros => DateTime::from_timestamp_micros(micros.checked_add(PG_EPOCH_UNIX_MICROS)?),
        }
    }
}

/// The value of one fixed column of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedValue<'a> {
    /// `None` for SQL NULL.
    Text(Option<&'a str>),
    Bool(bool),
    Timestamp(PgTimestamp),
}

impl<'a> ContactRef<'a> {
    /// The value of `column` in this row.
    pub fn fixed(&self, column: FixedColumn) -> FixedValue<'a> {
        match column {
            FixedColumn::Email => FixedValue::Text(Some(self.email)),
            FixedColumn::FirstName => FixedValue::Text(self.first_name),
            FixedColumn::LastName => FixedValue::Text(self.last_name),
            FixedColumn::Phone => FixedValue::Text(self.phone),
            FixedColumn::Company => FixedValue::Text(self.company),
            FixedColumn::Notes => FixedValue::Text(self.notes),
            FixedColumn::IsUnsubscribed => FixedValue::Bool(self.is_unsubscribed),
            FixedColumn::CreatedAt => FixedValue::Timestamp(self.created_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_both_ways() {
        let t = DateTime::from_timestamp_micros(1_714_564_800_123_456).unwrap();
        assert_eq!(PgTimestamp::from(t).to_datetime(), Some(t));
        assert_eq!(
            PgTimestamp(0).to_datetime().unwrap().to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );
        assert_eq!(PgTimestamp(i64::MAX).to_datetime(), None);
        assert_eq!(PgTimestamp(i64::MIN).to_datetime(), None);
    }
}
