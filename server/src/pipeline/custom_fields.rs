//! A contact's `custom_fields` as the stream reads it: PostgreSQL's own text of the jsonb value,
//! checked and read in one pass when the row is encoded ([`locate`]).
//!
//! No `serde_json::Value` is built per row, and a row without custom fields (most of them)
//! allocates nothing: a member's value is a span of the text, so a
//! number is written exactly as PostgreSQL gives it (`1.50` stays `1.50`, `1e400` is the
//! 401-digit integer that jsonb stores, never an error), the same text as
//! `custom_fields->>'key'`. Strings are unescaped only when they hold an escape.
//!
//! The text comes from the database, so it is valid JSON; a malformed text (or one nested
//! deeper than the scanner follows) is still refused, which fails the export naming the
//! contact, rather than written as empty cells.

use std::borrow::Cow;
use std::fmt;

/// What kind of JSON value a member holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Number,
    True,
    False,
    Null,
    Object,
    Array,
}

/// Where a value sits in the text of its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub kind: Kind,
    start: u32,
    end: u32,
    /// A string that holds an escape.
    escaped: bool,
}

impl Span {
    /// The value in `text`, the text it was located in.
    pub fn value<'a>(&self, text: &'a str) -> RawValue<'a> {
        RawValue {
            kind: self.kind,
            text: &text[self.start as usize..self.end as usize],
            escaped: self.escaped,
        }
    }
}

/// Deepest nesting of a custom-field value the scanner follows. It recurses per level, so the
/// bound keeps a hostile row far from the end of a worker's 2 MiB stack (a debug build
/// overflowed below 10,000 levels); a deeper row fails its export, naming the contact, instead
/// of aborting the process. The message spells the number out (in `Scanner::value`).
const MAX_DEPTH: u32 = 1_000;

/// A value of a member, borrowed from the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawValue<'a> {
    pub kind: Kind,
    /// A string's characters between the quotes (still escaped if `escaped`), or the JSON
    /// text of any other value as stored.
    pub text: &'a str,
    /// A string that holds an escape: see [`unescape_into`].
    pub escaped: bool,
}

/// A text that is not the JSON a jsonb column gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedJson {
    at: usize,
    what: &'static str,
}

impl fmt::Display for MalformedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "its custom_fields JSON cannot be read at byte {}: {}",
            self.at, self.what
        )
    }
}

impl std::error::Error for MalformedJson {}

/// Checks `text` (PostgreSQL's text of a jsonb value) and sets `slots[i]` to where the value
/// of `keys[i]` is, `None` where the object has no such key (every slot, when `text` is not an
/// object). One pass over the text. `keys` must be sorted and unique (as
/// [`super::format::columns::sort_keys`] leaves them); `scratch` holds an escaped key while it is looked up.
pub fn locate(
    text: &str,
    keys: &[String],
    slots: &mut Vec<Option<Span>>,
    scratch: &mut String,
) -> Result<(), MalformedJson> {
    slots.clear();
    slots.resize(keys.len(), None);
    // Most contacts have no custom fields at all.
    if text.is_empty() || text == "{}" {
        return Ok(());
    }
    Scanner::new(text).top_level(|(start, end), escaped, span| {
        let raw = &text[start as usize..end as usize];
        let key = if escaped {
            scratch.clear();
            unescape_into(raw, scratch);
            scratch.as_str()
        } else {
            raw
        };
        if let Ok(i) = keys.binary_search_by(|k| k.as_str().cmp(key)) {
            slots[i] = Some(span);
        }
    })
}

/// Appends the characters of a JSON string body (between the quotes, as validated by the
/// scanner) to `out`, escapes resolved.
pub fn unescape_into(raw: &str, out: &mut String) {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let Some(offset) = bytes[i..].iter().position(|&b| b == b'\\') else {
            out.push_str(&raw[i..]);
            return;
        };
        out.push_str(&raw[i..i + offset]);
        i += offset + 1;
        let escape = bytes[i];
        i += 1;
        let c = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            _ => {
                // `u`: four hex digits, perhaps a surrogate pair (checked by the scanner).
                let high = hex4(&bytes[i..i + 4]);
                i += 4;
                if (0xD800..0xDC00).contains(&high)
                    && bytes.get(i..i + 2) == Some(b"\\u")
                    && let low = hex4(&bytes[i + 2..i + 6])
                    && (0xDC00..0xE000).contains(&low)
                {
                    i += 6;
                    char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
                        .unwrap_or('\u{FFFD}')
                } else {
                    char::from_u32(high).unwrap_or('\u{FFFD}')
                }
            }
        };
        out.push(c);
    }
}

/// A string value's characters, unescaped only when needed.
pub fn string_value<'a>(value: &RawValue<'a>, scratch: &'a mut String) -> Cow<'a, str> {
    if value.escaped {
        scratch.clear();
        unescape_into(value.text, scratch);
        Cow::Borrowed(scratch.as_str())
    } else {
        Cow::Borrowed(value.text)
    }
}

/// Appends `json` without the whitespace between tokens (strings are copied as they are).
pub fn write_compact(json: &str, out: &mut Vec<u8>) {
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.extend_from_slice(&bytes[start..i]);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

fn hex4(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |acc, &d| {
        acc * 16 + char::from(d).to_digit(16).unwrap_or(0)
    })
}

/// A validating scanner over the text (RFC 8259, as jsonb's output is).
struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            s: text.as_bytes(),
            i: 0,
        }
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, MalformedJson> {
        Err(MalformedJson { at: self.i, what })
    }

    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), MalformedJson> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            self.fail(what)
        }
    }

    /// Checks the whole text; calls `member(key span, key escaped, value)` for each member of
    /// a top-level object (none for any other value).
    fn top_level(
        mut self,
        mut member: impl FnMut((u32, u32), bool, Span),
    ) -> Result<(), MalformedJson> {
        if self.s.len() > u32::MAX as usize {
            return self.fail("text too long");
        }
        self.ws();
        if self.peek() == Some(b'{') {
            self.i += 1;
            self.ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
            } else {
                loop {
                    self.ws();
                    let (key, key_escaped) = self.string()?;
                    self.ws();
                    self.expect(b':', "expected ':'")?;
                    self.ws();
                    let (kind, (start, end), escaped) = self.value(0)?;
                    member(
                        key,
                        key_escaped,
                        Span {
                            kind,
                            start,
                            end,
                            escaped,
                        },
                    );
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        _ => return self.fail("expected ',' or '}'"),
                    }
                }
            }
        } else {
            self.value(0)?;
        }
        self.ws();
        if self.i != self.s.len() {
            return self.fail("trailing characters");
        }
        Ok(())
    }

    /// A value; returns its kind, its span (a string's body) and whether a string is escaped.
    fn value(&mut self, depth: u32) -> Result<(Kind, (u32, u32), bool), MalformedJson> {
        if depth > MAX_DEPTH {
            return self.fail("nested deeper than 1000 levels");
        }
        let start = self.i;
        let kind = match self.peek() {
            Some(b'"') => {
                let (span, escaped) = self.string()?;
                return Ok((Kind::String, span, escaped));
            }
            Some(b'{') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        self.string()?;
                        self.ws();
                        self.expect(b':', "expected ':'")?;
                        self.ws();
                        self.value(depth + 1)?;
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return self.fail("expected ',' or '}'"),
                        }
                    }
                }
                Kind::Object
            }
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        self.value(depth + 1)?;
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return self.fail("expected ',' or ']'"),
                        }
                    }
                }
                Kind::Array
            }
            Some(b't') => self.literal(b"true", Kind::True)?,
            Some(b'f') => self.literal(b"false", Kind::False)?,
            Some(b'n') => self.literal(b"null", Kind::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return self.fail("expected a value"),
        };
        Ok((kind, (start as u32, self.i as u32), false))
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Result<Kind, MalformedJson> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(kind)
        } else {
            self.fail("expected a literal")
        }
    }

    fn digits(&mut self) -> Result<(), MalformedJson> {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        if self.i == start {
            self.fail("expected a digit")
        } else {
            Ok(())
        }
    }

    fn number(&mut self) -> Result<Kind, MalformedJson> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        if self.peek() == Some(b'0') {
            self.i += 1;
        } else {
            self.digits()?;
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits()?;
        }
        Ok(Kind::Number)
    }

    /// A string at the cursor: the span of its body and whether it holds an escape.
    fn string(&mut self) -> Result<((u32, u32), bool), MalformedJson> {
        self.expect(b'"', "expected a string")?;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Plain characters first: the common case, without per-byte branching on escapes.
            let rest = &self.s[self.i..];
            let Some(offset) = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            else {
                return self.fail("unterminated string");
            };
            self.i += offset;
            match self.s[self.i] {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Ok(((start as u32, end as u32), escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let hex = self.s.get(self.i..self.i + 4);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return self.fail("bad \\u escape");
                            }
                            self.i += 4;
                        }
                        _ => return self.fail("bad escape"),
                    }
                }
                _ => return self.fail("control character in a string"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `text` as the encoder does.
    fn check(text: &str) -> Result<(), MalformedJson> {
        locate(text, &[], &mut Vec::new(), &mut String::new())
    }

    /// The kind and (unescaped) text of `key`'s value in `text`.
    fn get(text: &str, key: &str) -> Option<(Kind, String)> {
        let keys = [key.to_owned()];
        let mut slots = Vec::new();
        locate(text, &keys, &mut slots, &mut String::new()).unwrap();
        let value = slots[0]?.value(text);
        let mut s = String::new();
        let text = match value.kind {
            Kind::String => string_value(&value, &mut s).into_owned(),
            _ => value.text.to_owned(),
        };
        Some((value.kind, text))
    }

    #[test]
    fn numbers_keep_their_text() {
        let f = r#"{"n": 1.50, "big": 1e400, "neg": -0.0, "i": -5}"#;
        assert_eq!(get(f, "n"), Some((Kind::Number, "1.50".into())));
        assert_eq!(get(f, "big"), Some((Kind::Number, "1e400".into())));
        assert_eq!(get(f, "neg"), Some((Kind::Number, "-0.0".into())));
        assert_eq!(get(f, "i"), Some((Kind::Number, "-5".into())));
        assert_eq!(get(f, "missing"), None);
    }

    #[test]
    fn kinds_strings_and_escapes() {
        let f = r#"{"s": "plain", "e": "a\"b\\c\/d\n\u00e9\ud83d\ude80", "t": true, "f": false,
                "z": null, "o": {"a": [1, {"b": "x y"}]}, "a": [], "k\u0041": 1}"#;
        assert_eq!(get(f, "s"), Some((Kind::String, "plain".into())));
        assert_eq!(get(f, "e"), Some((Kind::String, "a\"b\\c/d\né🚀".into())));
        assert_eq!(get(f, "t"), Some((Kind::True, "true".into())));
        assert_eq!(get(f, "f"), Some((Kind::False, "false".into())));
        assert_eq!(get(f, "z"), Some((Kind::Null, "null".into())));
        assert_eq!(
            get(f, "o"),
            Some((Kind::Object, r#"{"a": [1, {"b": "x y"}]}"#.into()))
        );
        assert_eq!(get(f, "a"), Some((Kind::Array, "[]".into())));
        assert_eq!(get(f, "kA"), Some((Kind::Number, "1".into())));
        let mut out = Vec::new();
        write_compact(r#"{"a": [1, {"b": "x y\" ,"}]}"#, &mut out);
        assert_eq!(out, br#"{"a":[1,{"b":"x y\" ,"}]}"#);
    }

    #[test]
    fn not_an_object_has_no_members() {
        // The empty text is how the stream passes a NULL `custom_fields`.
        for text in ["[1, 2]", "\"s\"", "3", "null", "{}", " { } ", ""] {
            assert_eq!(get(text, "s"), None, "{text}");
        }
    }

    #[test]
    fn malformed_text_is_refused() {
        for text in [
            " ",
            "{",
            "{\"a\"}",
            "{\"a\": }",
            "{\"a\": 1,}",
            "{\"a\": 01}",
            "{\"a\": 1.}",
            "{\"a\": tru}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\u{1}\"}",
            "{} x",
            "[1,]",
            "{\"a\": \"\\u12\"}",
        ] {
            assert!(check(text).is_err(), "{text:?}");
        }
    }
}

#[cfg(test)]
mod nesting_limit {
    use super::{MAX_DEPTH, locate};

    fn nested(depth: usize) -> String {
        format!("{{\"k\": {}{}}}", "[".repeat(depth), "]".repeat(depth))
    }

    /// Runs on a 2 MiB stack, the size of a tokio worker's: the limit must be reached long
    /// before the stack runs out, or a hostile row would abort the whole process.
    fn check_on_worker_sized_stack(text: String) -> bool {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || locate(&text, &[], &mut Vec::new(), &mut String::new()).is_ok())
            .unwrap()
            .join()
            .expect("no stack overflow")
    }

    #[test]
    fn deep_nesting_is_refused_before_the_stack_runs_out() {
        assert!(check_on_worker_sized_stack(nested(MAX_DEPTH as usize - 1)));
        assert!(!check_on_worker_sized_stack(nested(MAX_DEPTH as usize + 2)));
        assert!(!check_on_worker_sized_stack(nested(100_000)));
        let err = locate(
            &nested(MAX_DEPTH as usize + 2),
            &[],
            &mut Vec::new(),
            &mut String::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with(&format!("nested deeper than {MAX_DEPTH} levels")),
            "{err}"
        );
    }
}
