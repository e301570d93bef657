//! The CSV encoder's tests: header names, quoting, values, neutralisation, options, and reading
//! files back with the `csv` crate.

use std::collections::HashSet;

use bytes::BytesMut;
use chrono::{DateTime, Utc};

use super::*;
use crate::exports::{Delimiter, LineEnding};
use crate::pipeline::format::columns::{FIXED_COLUMNS, headers, sort_keys};
use crate::pipeline::format::row::PgTimestamp;
use chrono::{NaiveDate, SecondsFormat, TimeZone as _};
use serde_json::json;

const FIXED_HEADER: &str =
    "email,first_name,last_name,phone,company,notes,is_unsubscribed,created_at";

fn ts(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap()
}

/// 2024-05-01T12:00:00.123456Z
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap() + chrono::Duration::microseconds(123_456)
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
    r.custom_fields = json!({"k": " spaced ", "q": "\"", "b": "back\\slash", "s": "semi;colon"});
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
        let got_headers: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
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
                let recs: Vec<::csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
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
