//! The download filename of an export: whatever the caller asked for, made into one safe path
//! component that ends in the file's extension (`.csv` by default; `.jsonl`, `.xlsx`, and
//! `.gz` or `.zst` after it when compressed).
//!
//! Sanitising is total: every input gives a usable name, so a bad filename never fails a
//! request. In order:
//!
//! 1. Path separators `/` and `\` become `_`, so the name stays one component; so do the
//!    characters Windows forbids in names (`<>:"|?*`), since the file lands on people's
//!    machines, and a `"` would also need escaping in `content-disposition`.
//! 2. Characters that are invisible or reorder text are dropped, because they can make a name
//!    look like something it is not (`a\u{202E}vsc.exe` displays as `aexe.csv`): control
//!    characters (Unicode `Cc`, which includes NUL, CR and LF, so the name also cannot split a
//!    header line), bidi controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069),
//!    zero-width and invisible characters (U+200B–U+200D, U+2060–U+2064, U+FEFF, U+00AD soft
//!    hyphen) and the line/paragraph separators U+2028 and U+2029.
//! 3. Leading and trailing whitespace is trimmed, then leading dots are stripped: no hidden
//!    files, no `.` or `..`.
//! 4. A name whose part before the first dot is a Windows device name (`CON`, `PRN`, `AUX`,
//!    `NUL`, `COM0`–`COM9`, `LPT0`–`LPT9`, also with `¹²³`, `CONIN$`, `CONOUT$`; any case) gets
//!    a leading `_`: the file is downloaded to people's machines, where Windows refuses to
//!    create such a file whatever its extension. A cheap prefix rather than a full rule set.
//! 5. The extension is appended unless the name already ends in it, in any case (`Report.CSV`
//!    stays). A compressed file's name that ends in the format's part only gets the rest
//!    (`report.csv` becomes `report.csv.gz`).
//! 6. The name is cut to at most [`MAX_FILENAME_BYTES`] bytes of UTF-8 including the suffix
//!    (most filesystems allow 255; the rest is headroom for a browser's ` (1)`), on a char
//!    boundary, keeping the suffix.
//! 7. When nothing is left of the name but the suffix, it is [`default_filename`]:
//!    `contacts-YYYYMMDD-HHMMSS.<extension>` at the request time in UTC.

use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The longest filename produced, in bytes of UTF-8, `.csv` included.
pub const MAX_FILENAME_BYTES: usize = 200;

/// The name used when the caller gave none (or nothing usable): `contacts-YYYYMMDD-HHMMSS.csv`
/// in UTC.
pub fn default_filename(now: DateTime<Utc>) -> String {
    default_filename_with(now, "csv")
}

fn default_filename_with(now: DateTime<Utc>, extension: &str) -> String {
    format!("contacts-{}.{extension}", now.format("%Y%m%d-%H%M%S"))
}

/// Makes `requested` a safe single-component `.csv` filename by the rules in the module docs;
/// `now` names the file when nothing usable was requested.
pub fn sanitize_filename(requested: &str, now: DateTime<Utc>) -> String {
    sanitize_filename_with(requested, now, "csv")
}

/// The part of `name` that ends in `suffix`, in any case, split off.
fn split_suffix<'a>(name: &'a str, suffix: &str) -> Option<(&'a str, &'a str)> {
    let at = name.len().checked_sub(suffix.len())?;
    name.get(at..)
        .filter(|s| s.eq_ignore_ascii_case(suffix))
        .map(|s| (&name[..at], s))
}

/// [`sanitize_filename`] for a file whose extension is `extension` (`csv`, `jsonl.gz`…,
/// without a leading dot).
pub fn sanitize_filename_with(requested: &str, now: DateTime<Utc>, extension: &str) -> String {
    let cleaned: String = requested
        .chars()
        .filter(|&c| !is_hidden_char(c))
        .map(|c| {
            if matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let name = cleaned.trim();

    // The suffix is split off before dots are stripped so that `.csv` alone counts as empty
    // rather than becoming `csv.csv`.
    let full = format!(".{extension}");
    let (stem, suffix) = match split_suffix(name, &full) {
        Some((stem, suffix)) => (stem, suffix.to_owned()),
        None => match extension.split_once('.') {
            // `report.csv` of a gzipped CSV: only `.gz` is missing.
            Some((format, compressed)) => match split_suffix(name, &format!(".{format}")) {
                Some((stem, written)) => (stem, format!("{written}.{compressed}")),
                None => (name, full),
            },
            None => (name, full),
        },
    };
    let stem = stem.trim_start_matches(|c: char| c == '.' || c.is_whitespace());
    if stem.is_empty() {
        return default_filename_with(now, extension);
    }

    let mut out = String::with_capacity(MAX_FILENAME_BYTES);
    if is_windows_device_name(stem) {
        out.push('_');
    }
    let room = MAX_FILENAME_BYTES - suffix.len() - out.len();
    out.push_str(&stem[..floor_char_boundary(stem, room)]);
    out.push_str(&suffix);
    out
}

/// Characters that are dropped because they are invisible or change how a name displays.
fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Whether Windows treats `stem` as a device: its part before the first dot, ignoring
/// trailing spaces, is a reserved name.
fn is_windows_device_name(stem: &str) -> bool {
    let base = stem.split('.').next().unwrap_or(stem).trim_end_matches(' ');
    const PLAIN: [&str; 6] = ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];
    if PLAIN.iter().any(|r| base.eq_ignore_ascii_case(r)) {
        return true;
    }
    let mut chars = base.chars();
    let prefix: String = chars.by_ref().take(3).collect();
    let digit = chars.next();
    (prefix.eq_ignore_ascii_case("COM") || prefix.eq_ignore_ascii_case("LPT"))
        && matches!(digit, Some('0'..='9' | '¹' | '²' | '³'))
        && chars.next().is_none()
}

/// The largest index `<= max` that is a char boundary of `s` (`str::floor_char_boundary` is
/// newer than the workspace's minimum Rust).
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// RFC 6266 / RFC 5987 `attr-char`: what may stay unescaped in `filename*`.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>`.
pub fn content_disposition(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{}",
        utf8_percent_encode(filename, ATTR_CHAR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_has_ascii_fallback_and_utf8_name() {
        assert_eq!(
            content_disposition("Zoë \"q\".csv"),
            "attachment; filename=\"Zo_ _q_.csv\"; filename*=UTF-8''Zo%C3%AB%20%22q%22.csv"
        );
    }

    use chrono::TimeZone as _;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 9, 8, 7).unwrap()
    }

    fn s(requested: &str) -> String {
        sanitize_filename(requested, now())
    }

    const DEFAULT: &str = "contacts-20240501-090807.csv";

    #[test]
    fn default_name_is_utc_timestamp() {
        assert_eq!(default_filename(now()), DEFAULT);
        let late = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::milliseconds(999);
        assert_eq!(default_filename(late), "contacts-19991231-235959.csv");
    }

    #[test]
    fn suffix() {
        assert_eq!(s("report"), "report.csv");
        assert_eq!(s("report.csv"), "report.csv");
        assert_eq!(s("Report.CSV"), "Report.CSV");
        assert_eq!(s("report.Csv"), "report.Csv");
        assert_eq!(s("report.txt"), "report.txt.csv");
        assert_eq!(s("report.csv.exe"), "report.csv.exe.csv");
        assert_eq!(s("reportcsv"), "reportcsv.csv");
        assert_eq!(s("csv"), "csv.csv");
        assert_eq!(s("日本.csv"), "日本.csv");
        assert_eq!(s("é"), "é.csv");
    }

    #[test]
    fn empty_and_blank_use_the_default() {
        for blank in [
            "",
            "  ",
            "\t\n",
            ".csv",
            ".CSV",
            "..csv",
            "  .csv  ",
            ".",
            "..",
            "...",
            " . . ",
            "\u{202E}",
            "\u{200B}\u{FEFF}",
            "\0",
            ". .csv",
        ] {
            assert_eq!(s(blank), DEFAULT, "{blank:?}");
        }
    }

    #[test]
    fn path_separators() {
        assert_eq!(s("../../etc/passwd"), "_.._etc_passwd.csv");
        assert_eq!(s("..\\..\\windows\\win.ini"), "_.._windows_win.ini.csv");
        assert_eq!(s("/"), "_.csv");
        assert_eq!(s("/abs/path.csv"), "_abs_path.csv");
        assert_eq!(s("a/b\\c"), "a_b_c.csv");
    }

    #[test]
    fn leading_dots() {
        assert_eq!(s(".hidden"), "hidden.csv");
        assert_eq!(s(".hidden.csv"), "hidden.csv");
        assert_eq!(s("...x"), "x.csv");
        assert_eq!(s(". . x"), "x.csv");
        assert_eq!(s("a..b"), "a..b.csv");
        assert_eq!(s("trailing."), "trailing..csv");
    }

    #[test]
    fn whitespace_is_trimmed() {
        assert_eq!(s("  report  "), "report.csv");
        assert_eq!(s("\u{3000}report\u{00A0}"), "report.csv");
        assert_eq!(s("my report.csv"), "my report.csv");
        assert_eq!(s(" \u{200B} report"), "report.csv");
    }

    #[test]
    fn control_and_format_characters_are_dropped() {
        assert_eq!(s("a\u{202E}vsc.exe"), "avsc.exe.csv");
        assert_eq!(s("x\u{202E}vsc.exe"), "xvsc.exe.csv");
        assert_eq!(s("re\0po\nrt\r\t\u{7F}\u{85}.csv"), "report.csv");
        assert_eq!(
            s(
                "a\u{200E}\u{200F}\u{202A}\u{202B}\u{202C}\u{202D}\u{2066}\u{2067}\u{2068}\u{2069}\u{061C}b"
            ),
            "ab.csv"
        );
        assert_eq!(s("z\u{200B}e\u{200C}r\u{200D}o\u{FEFF}"), "zero.csv");
        assert_eq!(
            s("in\u{2060}vis\u{00AD}ible\u{2028}\u{2029}"),
            "invisible.csv"
        );
        // Visible non-ASCII stays.
        assert_eq!(s("Zürich – 株式会社 🚀"), "Zürich – 株式会社 🚀.csv");
    }

    #[test]
    fn windows_device_names_are_prefixed() {
        for reserved in [
            "CON", "con", "Prn", "AUX", "nul", "COM1", "com9", "COM0", "LPT1", "lpt9", "COM¹",
            "CONIN$", "conout$",
        ] {
            assert_eq!(s(reserved), format!("_{reserved}.csv"), "{reserved}");
        }
        assert_eq!(s("con.csv"), "_con.csv");
        assert_eq!(s("NUL.tar.csv"), "_NUL.tar.csv");
        assert_eq!(s("CON .csv"), "_CON .csv");
        for fine in [
            "CONTACTS",
            "console",
            "COM10",
            "LPT",
            "COMA",
            "nul_",
            "xcon",
            "AUXILIARY",
        ] {
            assert_eq!(s(fine), format!("{fine}.csv"), "{fine}");
        }
    }

    #[test]
    fn long_names_are_cut_on_char_boundaries() {
        // 300 bytes of 2-byte chars: 196 bytes of them fit before `.csv`.
        let name = "é".repeat(150);
        let out = s(&name);
        assert_eq!(out.len(), 200);
        assert_eq!(out, format!("{}.csv", "é".repeat(98)));

        // 300 bytes of 3-byte chars: 65 of them (195 bytes) fit.
        let out = s(&"日".repeat(100));
        assert_eq!(out, format!("{}.csv", "日".repeat(65)));
        assert_eq!(out.len(), 199);

        // 4-byte chars with an existing, upper-case suffix that is kept.
        let out = s(&format!("{}.CSV", "🚀".repeat(75)));
        assert_eq!(out, format!("{}.CSV", "🚀".repeat(49)));
        assert_eq!(out.len(), 200);

        // ASCII exactly at and over the limit.
        let exact = format!("{}.csv", "a".repeat(196));
        assert_eq!(s(&exact), exact);
        assert_eq!(s(&"a".repeat(500)), format!("{}.csv", "a".repeat(196)));

        // The device prefix counts against the limit.
        let out = s(&format!("CON.{}", "b".repeat(300)));
        assert_eq!(out.len(), 200);
        assert!(out.starts_with("_CON.b") && out.ends_with("b.csv"));
    }

    #[test]
    fn output_is_always_one_safe_component() {
        let inputs = [
            "../../etc/passwd",
            "..",
            "\\\\server\\share",
            "C:\\x",
            "a\u{202E}vsc.exe",
            "\u{FEFF}.bashrc",
            "x\0y/z",
            &"\u{202E}".repeat(100),
            &"ab/".repeat(200),
        ];
        for input in inputs {
            let out = s(input);
            assert!(out.len() <= MAX_FILENAME_BYTES, "{input:?}");
            assert!(!out.contains(['/', '\\']), "{input:?}");
            assert!(!out.starts_with('.'), "{input:?}");
            assert!(!out.chars().any(is_hidden_char), "{input:?}");
            assert!(out.to_ascii_lowercase().ends_with(".csv"), "{input:?}");
            assert!(out.len() > ".csv".len(), "{input:?}");
        }
    }

    #[test]
    fn other_formats_and_compressions_get_their_extension() {
        let now = chrono::Utc.with_ymd_and_hms(2024, 5, 1, 9, 8, 7).unwrap();
        let s = |name: &str, ext: &str| sanitize_filename_with(name, now, ext);
        assert_eq!(s("", "jsonl"), "contacts-20240501-090807.jsonl");
        assert_eq!(s("", "xlsx.zst"), "contacts-20240501-090807.xlsx.zst");
        assert_eq!(s("report", "jsonl"), "report.jsonl");
        assert_eq!(s("report.JSONL", "jsonl"), "report.JSONL");
        assert_eq!(s("report.csv", "jsonl"), "report.csv.jsonl");
        assert_eq!(s("report", "csv.gz"), "report.csv.gz");
        assert_eq!(s("report.csv", "csv.gz"), "report.csv.gz");
        assert_eq!(s("report.CSV.GZ", "csv.gz"), "report.CSV.GZ");
        assert_eq!(s("report.gz", "csv.gz"), "report.gz.csv.gz");
        assert_eq!(s(".csv", "csv.gz"), "contacts-20240501-090807.csv.gz");
        let long = "x".repeat(300);
        let cut = s(&long, "jsonl.zst");
        assert_eq!(cut.len(), MAX_FILENAME_BYTES);
        assert!(cut.ends_with(".jsonl.zst"));
    }
}
