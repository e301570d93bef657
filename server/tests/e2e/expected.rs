//! The CSV a test expects, built from the contacts it inserted, independently of the server's
//! encoder: the rules of the README, written out again plainly.

/// The options of the export whose file is expected, in plain terms.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub neutralize: bool,
    pub delimiter: char,
    pub bom: bool,
    pub crlf: bool,
}

impl Default for Format {
    /// The service's defaults: neutralised, comma, no BOM, LF.
    fn default() -> Self {
        Format {
            neutralize: true,
            delimiter: ',',
            bom: false,
            crlf: false,
        }
    }
}

use super::fixture::Contact;

/// The fixed columns, in the file's order.
pub const FIXED: [&str; 8] = [
    "email",
    "first_name",
    "last_name",
    "phone",
    "company",
    "notes",
    "is_unsubscribed",
    "created_at",
];

fn is_plain_number(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    digits(int)
        && frac.is_none_or(digits)
        && exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)))
}

fn cell(value: &str, format: Format) -> String {
    let mut v = value.to_owned();
    if format.neutralize && v.starts_with(['=', '+', '-', '@', '\t', '\r']) && !is_plain_number(&v)
    {
        v.insert(0, '\'');
    }
    if v.contains([format.delimiter, '"', '\r', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

fn custom_value(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The exported file for `contacts` (in export order), with default options but for
/// `neutralize`.
pub fn expected_csv(contacts: &[&Contact], neutralize: bool) -> String {
    expected_csv_as(
        contacts,
        Format {
            neutralize,
            ..Format::default()
        },
    )
}

/// The exported file for `contacts` (in export order) written in `format`.
pub fn expected_csv_as(contacts: &[&Contact], format: Format) -> String {
    let delimiter = format.delimiter.to_string();
    let end = if format.crlf { "\r\n" } else { "\n" };
    let mut keys: Vec<String> = contacts
        .iter()
        .filter_map(|c| c.custom_fields.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    let mut out = String::new();
    if format.bom {
        out.push('\u{FEFF}');
    }
    let mut header: Vec<String> = FIXED.iter().map(|s| s.to_string()).collect();
    for k in &keys {
        let name = if FIXED.contains(&k.as_str()) {
            format!("custom_fields.{k}")
        } else {
            k.clone()
        };
        header.push(cell(&name, format));
    }
    out.push_str(&header.join(&delimiter));
    out.push_str(end);
    for c in contacts {
        let opt = |o: &Option<String>| cell(o.as_deref().unwrap_or(""), format);
        let mut row = vec![
            cell(&c.email, format),
            opt(&c.first_name),
            opt(&c.last_name),
            opt(&c.phone),
            opt(&c.company),
            opt(&c.notes),
            c.is_unsubscribed.to_string(),
            c.created_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        ];
        for k in &keys {
            row.push(cell(&custom_value(c.custom_fields.get(k)), format));
        }
        out.push_str(&row.join(&delimiter));
        out.push_str(end);
    }
    out
}
