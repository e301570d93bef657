//! The contacts as `COPY (…) TO STDOUT (FORMAT binary)` sends them, read in place.
//!
//! The stream does not decode rows into owned values: each `CopyData` message PostgreSQL sends
//! is kept as the [`Bytes`] the connection received, a batch is a list of them, and the encoder
//! reads every field straight out of those bytes ([`RowReader`]). No allocation per row or
//! field, no column lookup by name, and no round trip per batch (one `COPY` streams them all).
//!
//! The format (PostgreSQL manual, "COPY", binary format): a header (an 11-byte signature, a
//! 32-bit flags word, a 32-bit extension length and the extension), then one tuple per row: a
//! 16-bit field count, and per field a 32-bit length (-1 for NULL) and that many bytes in the
//! type's binary form; a field count of -1 ends the data. PostgreSQL sends each tuple in a
//! message of its own and the header with the first one; the reader does not rely on that and
//! reads any number of tuples per message.
//!
//! Columns, in [`COPY_COLUMNS`] order: `id` (int8), the six text columns, `is_unsubscribed`
//! (bool: one byte), `created_at` (timestamptz: microseconds since 2000-01-01 UTC as an int8)
//! and `custom_fields` (jsonb: a version byte, 1, then the JSON text).

use bytes::Bytes;

use super::format::row::{ContactRef, CustomRef, PgTimestamp};

/// The columns `COPY` sends, in the order [`RowReader`] reads them.
pub const COPY_COLUMNS: &str = "c.id, c.email, c.first_name, c.last_name, c.phone, c.company, \
     c.notes, c.is_unsubscribed, c.created_at, c.custom_fields";

const FIELDS: i16 = 10;

/// The first bytes of a binary `COPY` stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Bytes that are not the binary `COPY` of [`COPY_COLUMNS`]: a bug or a schema change, never
/// a reason to write a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("the COPY data does not start with the binary COPY signature")]
    Signature,
    #[error("the COPY data ends inside a row")]
    Truncated,
    #[error("a COPY row has {0} fields, expected {FIELDS}")]
    FieldCount(i16),
    #[error("column {column} of contact {id} is {problem}")]
    Field {
        id: i64,
        column: &'static str,
        problem: &'static str,
    },
}

/// The `CopyData` messages of one batch, as received.
#[derive(Debug, Default)]
pub struct RowBatch {
    messages: Vec<Bytes>,
}

impl RowBatch {
    pub fn with_capacity(messages: usize) -> Self {
        RowBatch {
            messages: Vec::with_capacity(messages),
        }
    }

    pub fn push(&mut self, message: Bytes) {
        self.messages.push(message);
    }

    /// Messages held (about one per row: PostgreSQL sends a tuple per message, and one more
    /// for the end-of-data marker).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The rows of the batch, in order.
    pub fn rows(&self) -> RowReader<'_> {
        RowReader {
            messages: self.messages.iter(),
            current: &[],
        }
    }
}

/// Removes the header from the first message of a stream (the signature is checked).
pub fn strip_header(first: Bytes) -> Result<Bytes, RowError> {
    if first.len() < SIGNATURE.len() + 8 || &first[..SIGNATURE.len()] != SIGNATURE {
        return Err(RowError::Signature);
    }
    let at = SIGNATURE.len() + 4;
    let extension = u32::from_be_bytes([first[at], first[at + 1], first[at + 2], first[at + 3]]);
    let body = SIGNATURE.len() + 8 + extension as usize;
    if first.len() < body {
        return Err(RowError::Truncated);
    }
    Ok(first.slice(body..))
}

/// Reads the tuples of a batch one after the other.
pub struct RowReader<'a> {
    messages: std::slice::Iter<'a, Bytes>,
    current: &'a [u8],
}

impl<'a> RowReader<'a> {
    /// The next contact and its id; `None` at the end of the batch (or at the end-of-data
    /// marker).
    pub fn next_row(&mut self) -> Result<Option<(i64, ContactRef<'a>)>, RowError> {
        while self.current.is_empty() {
            match self.messages.next() {
                Some(message) => self.current = message,
                None => return Ok(None),
            }
        }
        let mut tuple = Cursor(self.current);
        let count = tuple.i16()?;
        if count == -1 {
            // End of data: nothing follows it.
            self.current = &[];
            self.messages = [].iter();
            return Ok(None);
        }
        if count != FIELDS {
            return Err(RowError::FieldCount(count));
        }
        let id = match tuple.field()? {
            Some(bytes) => i64::from_be_bytes(fixed(bytes).ok_or(RowError::Truncated)?),
            None => return Err(RowError::Truncated),
        };
        let bad = |column: &'static str, problem: &'static str| RowError::Field {
            id,
            column,
            problem,
        };
        let mut text = |column: &'static str| -> Result<Option<&'a str>, RowError> {
            match tuple.field()? {
                Some(bytes) => std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| bad(column, "not valid UTF-8")),
                None => Ok(None),
            }
        };
        let email = text("email")?.unwrap_or("");
        let first_name = text("first_name")?;
        let last_name = text("last_name")?;
        let phone = text("phone")?;
        let company = text("company")?;
        let notes = text("notes")?;
        let is_unsubscribed = match tuple.field()? {
            Some([b]) => *b != 0,
            _ => return Err(bad("is_unsubscribed", "not a boolean")),
        };
        let created_at = match tuple.field()?.and_then(fixed) {
            Some(micros) => PgTimestamp(i64::from_be_bytes(micros)),
            None => return Err(bad("created_at", "not a timestamp")),
        };
        let custom_fields = match tuple.field()? {
            Some([1, json @ ..]) => {
                std::str::from_utf8(json).map_err(|_| bad("custom_fields", "not valid UTF-8"))?
            }
            Some(_) => return Err(bad("custom_fields", "not jsonb version 1")),
            // NULL: no custom fields.
            None => "",
        };
        self.current = tuple.0;
        Ok(Some((
            id,
            ContactRef {
                email,
                first_name,
                last_name,
                phone,
                company,
                notes,
                is_unsubscribed,
                created_at,
                custom_fields: CustomRef::Text(custom_fields),
            },
        )))
    }
}

fn fixed<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// The unread rest of a tuple.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RowError> {
        if self.0.len() < n {
            return Err(RowError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, RowError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A field's bytes; `None` for NULL.
    fn field(&mut self) -> Result<Option<&'a [u8]>, RowError> {
        let b = self.take(4)?;
        let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if len < 0 {
            return Ok(None);
        }
        self.take(len as usize).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tuple in the binary COPY format.
    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (fields.len() as i16).to_be_bytes().to_vec();
        for field in fields {
            match field {
                Some(bytes) => {
                    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out
    }

    fn contact(id: i64, email: &str, json: &[u8]) -> Vec<u8> {
        let created = 1_000_000i64.to_be_bytes();
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(json);
        tuple(&[
            Some(&id.to_be_bytes()),
            Some(email.as_bytes()),
            Some("Ann".as_bytes()),
            None,
            None,
            None,
            Some("a,b".as_bytes()),
            Some(&[1]),
            Some(&created),
            Some(&jsonb),
        ])
    }

    fn header() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&2u32.to_be_bytes());
        out.extend_from_slice(b"xx");
        out
    }

    #[test]
    fn reads_rows_across_messages_to_the_end_marker() {
        let mut first = header();
        first.extend(contact(7, "a@x", br#"{"k": 1}"#));
        let first = strip_header(Bytes::from(first)).unwrap();
        // Two tuples in one message, then the end marker, then nothing may follow.
        let mut second = contact(8, "b@x", b"{}");
        second.extend(contact(9, "c@x", b"{}"));
        let end = (-1i16).to_be_bytes().to_vec();
        let mut batch = RowBatch::default();
        for message in [first, Bytes::from(second), Bytes::from(end)] {
            batch.push(message);
        }
        let mut rows = batch.rows();
        let (id, row) = rows.next_row().unwrap().unwrap();
        assert_eq!(
            (id, row.email, row.first_name, row.last_name),
            (7, "a@x", Some("Ann"), None)
        );
        assert_eq!(row.notes, Some("a,b"));
        assert!(row.is_unsubscribed);
        assert_eq!(row.created_at, PgTimestamp(1_000_000));
        assert!(matches!(row.custom_fields, CustomRef::Text(r#"{"k": 1}"#)));
        assert_eq!(rows.next_row().unwrap().unwrap().0, 8);
        assert_eq!(rows.next_row().unwrap().unwrap().0, 9);
        assert!(rows.next_row().unwrap().is_none());
        assert!(rows.next_row().unwrap().is_none());
    }

    #[test]
    fn refuses_what_is_not_a_contact() {
        assert_eq!(
            strip_header(Bytes::from_static(b"PGCOPX\n\xff\r\n\0\0\0\0\0\0\0\0\0")),
            Err(RowError::Signature)
        );
        let read = |message: Vec<u8>| {
            let mut batch = RowBatch::default();
            batch.push(Bytes::from(message));
            batch.rows().next_row().map(|row| row.map(|(id, _)| id))
        };
        assert_eq!(
            read(tuple(&[Some(&1i64.to_be_bytes())])),
            Err(RowError::FieldCount(1))
        );
        let mut cut = contact(3, "a@x", b"{}");
        cut.pop();
        assert_eq!(read(cut), Err(RowError::Truncated));
        let mut bad_utf8 = contact(4, "a@x", b"{}");
        let at = bad_utf8.windows(3).position(|w| w == b"a@x").unwrap();
        bad_utf8[at] = 0xff;
        assert_eq!(
            read(bad_utf8),
            Err(RowError::Field {
                id: 4,
                column: "email",
                problem: "not valid UTF-8"
            })
        );
    }
}
