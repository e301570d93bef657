//! Every format and compression over gRPC, each file read back and compared with the database
//! cell by cell: CSV against the CSV the test builds itself, JSON Lines field by field with its
//! JSON types, XLSX through a reader crate (calamine) with its typed cells; gzip and Zstandard
//! decompressed first. Then column lists in every format, and the dry run.

use std::io::Read as _;

use calamine::{Data, Reader};
use chrono::{DateTime, Utc};
use contact_export_client::{Compression, CreateExportRequest, Export, ExportFormat, ExportStatus};
use diesel::sql_types::{Bool, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use tonic::Code;

use super::expected::{FIXED, expected_csv};
use super::fixture::Contact;
use super::harness::{TestApp, TestDb, within};
use super::run_export;

/// A contact as the database has it.
#[derive(Debug, diesel::QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    email: String,
    #[diesel(sql_type = Nullable<Text>)]
    first_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    last_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    phone: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    company: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    notes: Option<String>,
    #[diesel(sql_type = Bool)]
    is_unsubscribed: bool,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    /// PostgreSQL's text of the jsonb value.
    #[diesel(sql_type = Nullable<Text>)]
    custom_fields: Option<String>,
}

impl Stored {
    fn text(&self, column: &str) -> Option<&str> {
        match column {
            "email" => Some(&self.email),
            "first_name" => self.first_name.as_deref(),
            "last_name" => self.last_name.as_deref(),
            "phone" => self.phone.as_deref(),
            "company" => self.company.as_deref(),
            "notes" => self.notes.as_deref(),
            other => panic!("{other} is no text column"),
        }
    }

    fn custom(&self) -> Value {
        self.custom_fields
            .as_deref()
            .map(|t| serde_json::from_str(t).unwrap())
            .unwrap_or(Value::Null)
    }
}

/// The fixed columns that hold text (the first six).
fn text_columns() -> &'static [&'static str] {
    &FIXED[..6]
}

async fn stored(db: &TestDb, workspace: uuid::Uuid) -> Vec<Stored> {
    diesel::sql_query(
        "SELECT email, first_name, last_name, phone, company, notes, is_unsubscribed, \
         created_at, custom_fields::text AS custom_fields FROM contacts \
         WHERE workspace_id = $1 ORDER BY id",
    )
    .bind::<diesel::sql_types::Uuid, _>(workspace)
    .load(&mut db.conn().await)
    .await
    .unwrap()
}

fn contacts() -> Vec<Contact> {
    let mut a = Contact::numbered(1).with_custom(json!({"plan": "gold", "seats": 12, "vip": true}));
    a.notes = Some("likes \"quotes\", commas,\nand newlines\r\ntoo".into());
    a.first_name = Some("José".into());
    a.last_name = Some("Zoë 李 🚀".into());
    let mut b = Contact::numbered(2).with_custom(json!({
        "plan": null, "nested": {"a": [1, 2], "b": {"c": "d"}}, "list": ["x", "y"],
        "email": "shadow@example.com"
    }));
    b.company = None;
    b.phone = Some("+1 555 0100".into());
    b.notes = Some("=HYPERLINK(\"http://evil\")".into());
    let mut c =
        Contact::numbered(3).with_custom(json!({"seats": -5, "ratio": 1.5, "zip": "00123"}));
    c.first_name = Some("\tTabbed".into());
    c.last_name = None;
    let d = Contact::numbered(4).with_custom(json!("not an object"));
    vec![a, b, c, d]
}

/// A contact whose numbers only the database's text keeps exactly.
async fn insert_exact_numbers(db: &TestDb, workspace: uuid::Uuid) {
    diesel::sql_query(
        "INSERT INTO contacts (workspace_id, email, created_at, custom_fields) VALUES \
         ($1, 'exact@example.com', timestamptz '2024-06-01 10:00:00.654321+00', \
          '{\"ratio\": 1.50, \"huge\": 1e40, \"seats\": 12345678901234567890}'::jsonb)",
    )
    .bind::<diesel::sql_types::Uuid, _>(workspace)
    .execute(&mut db.conn().await)
    .await
    .unwrap();
}

fn request(format: ExportFormat, compression: Compression) -> CreateExportRequest {
    CreateExportRequest {
        format: format.into(),
        compression: compression.into(),
        ..Default::default()
    }
}

/// Downloads the whole file (its SHA-256 checked by the client) and its content type.
async fn download(app: &TestApp, export: &Export) -> (Vec<u8>, String) {
    let mut bytes = Vec::new();
    let metadata = within(
        "the download",
        app.ws.client.download_to(&export.id, &mut bytes, |_, _| {}),
    )
    .await
    .unwrap();
    assert_eq!(metadata.size_bytes as usize, bytes.len());
    assert_eq!(metadata.filename, export.filename);
    (bytes, metadata.content_type)
}

fn decompress(compression: Compression, bytes: &[u8]) -> Vec<u8> {
    match compression {
        Compression::Unspecified | Compression::None => bytes.to_vec(),
        Compression::Gzip => {
            assert_eq!(&bytes[..2], b"\x1f\x8b", "a gzip stream");
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        Compression::Zstd => {
            assert_eq!(&bytes[..4], b"\x28\xb5\x2f\xfd", "a zstd frame");
            zstd::stream::decode_all(bytes).unwrap()
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Each line is one contact with every fixed field in its JSON type and custom_fields as
/// stored.
fn check_jsonl(file: &[u8], rows: &[Stored]) {
    let text = std::str::from_utf8(file).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), rows.len());
    for (line, row) in lines.iter().zip(rows) {
        let object: serde_json::Map<String, Value> = match serde_json::from_str(line) {
            Ok(object) => object,
            // Numbers past a double: checked as text below.
            Err(_) if row.email == "exact@example.com" => continue,
            Err(e) => panic!("{line}: {e}"),
        };
        // Members in column order (the map sorts its keys: their order is read off the text,
        // where a quote inside a string value is escaped and so cannot fake a member).
        let members: Vec<&str> = FIXED.iter().copied().chain(["custom_fields"]).collect();
        assert_eq!(object.len(), members.len(), "{line}");
        let at: Vec<usize> = members
            .iter()
            .map(|m| line.find(&format!("\"{m}\":")).unwrap())
            .collect();
        assert!(at.is_sorted(), "members in column order: {line}");
        assert!(line.starts_with("{\"email\":"), "{line}");
        for &column in text_columns() {
            let want = row.text(column).map_or(Value::Null, Value::from);
            assert_eq!(object[column], want, "{column} of {line}");
        }
        assert_eq!(object["is_unsubscribed"], Value::Bool(row.is_unsubscribed));
        assert_eq!(object["created_at"], Value::from(rfc3339(row.created_at)));
        assert_eq!(object["custom_fields"], row.custom(), "{line}");
    }
    let exact = lines
        .iter()
        .find(|l| l.contains("exact@example.com"))
        .unwrap();
    assert!(
        exact.ends_with(
            r#""custom_fields":{"huge":10000000000000000000000000000000000000000,"ratio":1.50,"seats":12345678901234567890}}"#
        ),
        "numbers exactly as PostgreSQL has them: {exact}"
    );
}

/// The rows of every sheet of a workbook.
fn sheets(file: &[u8]) -> Vec<(String, Vec<Vec<Data>>)> {
    assert_eq!(&file[..4], b"PK\x03\x04", "a ZIP file");
    let mut workbook: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(file.to_vec())).unwrap();
    workbook
        .sheet_names()
        .into_iter()
        .map(|name| {
            let range = workbook.worksheet_range(&name).unwrap();
            (name, range.rows().map(|r| r.to_vec()).collect())
        })
        .collect()
}

/// Excel's serial date of an instant (days since 1899-12-30).
fn serial(t: DateTime<Utc>) -> f64 {
    25_569.0 + t.timestamp_micros() as f64 / 86_400_000_000.0
}

/// One cell of a custom value, as the workbook types it.
fn custom_cell(value: Option<&Value>) -> Data {
    match value {
        None | Some(Value::Null) => Data::Empty,
        Some(Value::String(s)) => Data::String(s.clone()),
        Some(Value::Bool(b)) => Data::Bool(*b),
        Some(Value::Number(n)) if n.to_string().trim_start_matches('-').len() <= 15 => {
            Data::Float(n.as_f64().unwrap())
        }
        Some(Value::Number(n)) => Data::String(n.to_string()),
        Some(nested) => Data::String(nested.to_string()),
    }
}

fn check_xlsx(file: &[u8], rows: &[Stored], keys: &[&str]) {
    let sheets = sheets(file);
    assert_eq!(sheets.len(), 1);
    let (name, cells) = &sheets[0];
    assert_eq!(name, "Contacts");
    let header: Vec<Data> = cells[0].clone();
    let mut want: Vec<Data> = FIXED.iter().map(|h| Data::String((*h).into())).collect();
    want.extend(keys.iter().map(|k| {
        Data::String(if *k == "email" {
            "custom_fields.email".into()
        } else {
            k.to_string()
        })
    }));
    assert_eq!(header, want);
    assert_eq!(cells.len(), rows.len() + 1);
    for (cells, row) in cells[1..].iter().zip(rows) {
        for (i, column) in text_columns().iter().enumerate() {
            let want = match row.text(column) {
                None | Some("") => Data::Empty,
                Some(text) => Data::String(text.to_owned()),
            };
            assert_eq!(cells[i], want, "{column} of {}", row.email);
        }
        assert_eq!(cells[6], Data::Bool(row.is_unsubscribed));
        let Data::DateTime(at) = &cells[7] else {
            panic!("created_at is a date-time: {:?}", cells[7]);
        };
        // A double of days holds the microseconds to well under a millisecond.
        assert!(
            (at.as_f64() - serial(row.created_at)).abs() * 86_400_000.0 < 0.01,
            "{} vs {}",
            at.as_f64(),
            serial(row.created_at)
        );
        let custom = row.custom();
        for (k, key) in keys.iter().enumerate() {
            let cell = cells.get(8 + k).cloned().unwrap_or(Data::Empty);
            if row.email == "exact@example.com" {
                continue;
            }
            assert_eq!(cell, custom_cell(custom.get(key)), "{key} of {}", row.email);
        }
    }
    let exact = &cells[1..]
        .iter()
        .find(|c| c[0] == Data::String("exact@example.com".into()))
        .unwrap();
    let at = |key: &str| exact[8 + keys.iter().position(|k| *k == key).unwrap()].clone();
    assert_eq!(at("ratio"), Data::Float(1.5));
    assert_eq!(at("huge"), Data::Float(1e40));
    assert_eq!(at("seats"), Data::String("12345678901234567890".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_and_compression_reads_back_as_the_database_has_it() {
    let app = TestApp::spawn().await;
    let contacts = contacts();
    app.ws.insert(&app.db, &contacts).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    let expected_csv = expected_csv(&refs, true);
    let mut rows = Vec::new();

    for format in [ExportFormat::Csv, ExportFormat::Jsonl, ExportFormat::Xlsx] {
        // A contact whose numbers only the database's text keeps, for the formats that keep
        // them (the CSV builder reads serde values).
        if format == ExportFormat::Jsonl {
            insert_exact_numbers(&app.db, app.ws.id).await;
        }
        if format != ExportFormat::Csv && rows.is_empty() {
            rows = stored(&app.db, app.ws.id).await;
        }
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let what = format!("{format:?} {compression:?}");
            let done = run_export(&app.ws.client, request(format, compression)).await;
            assert_eq!(done.status(), ExportStatus::Completed, "{what}: {done:?}");
            assert_eq!(done.format(), format);
            assert_eq!(done.compression(), compression);
            let extension = match (format, compression) {
                (ExportFormat::Jsonl, Compression::None) => ".jsonl",
                (ExportFormat::Jsonl, Compression::Gzip) => ".jsonl.gz",
                (ExportFormat::Jsonl, _) => ".jsonl.zst",
                (ExportFormat::Xlsx, Compression::None) => ".xlsx",
                (ExportFormat::Xlsx, Compression::Gzip) => ".xlsx.gz",
                (ExportFormat::Xlsx, _) => ".xlsx.zst",
                (_, Compression::None) => ".csv",
                (_, Compression::Gzip) => ".csv.gz",
                (_, _) => ".csv.zst",
            };
            assert!(
                done.filename.ends_with(extension),
                "{what}: {}",
                done.filename
            );
            let (stored_bytes, content_type) = download(&app, &done).await;
            assert_eq!(done.size_bytes as usize, stored_bytes.len(), "{what}");
            let want_type = match (format, compression) {
                (_, Compression::Gzip) => "application/gzip",
                (_, Compression::Zstd) => "application/zstd",
                (ExportFormat::Jsonl, _) => "application/x-ndjson",
                (ExportFormat::Xlsx, _) => {
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
                }
                _ => "text/csv; charset=utf-8",
            };
            assert_eq!(content_type, want_type, "{what}");
            let file = decompress(compression, &stored_bytes);
            match format {
                ExportFormat::Jsonl => check_jsonl(&file, &rows),
                ExportFormat::Xlsx => check_xlsx(
                    &file,
                    &rows,
                    &[
                        "email", "huge", "list", "nested", "plan", "ratio", "seats", "vip", "zip",
                    ],
                ),
                _ => assert_eq!(String::from_utf8(file).unwrap(), expected_csv, "{what}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_list_selects_and_orders_in_every_format() {
    let app = TestApp::spawn().await;
    let contacts = contacts();
    app.ws.insert(&app.db, &contacts).await;
    let listed = CreateExportRequest {
        columns: vec![
            "custom_fields.plan".into(),
            "email".into(),
            "custom_fields.email".into(),
            "custom_fields.missing".into(),
            "is_unsubscribed".into(),
        ],
        ..Default::default()
    };

    // CSV: exactly the listed columns, in order; a key nobody has is an empty column.
    let done = run_export(&app.ws.client, listed.clone()).await;
    assert_eq!(done.columns, listed.columns);
    let csv = super::download_all(&app.ws.client, &done.id).await;
    assert_eq!(
        csv,
        "plan,email,custom_fields.email,missing,is_unsubscribed\n\
         gold,person1@example.com,,,false\n\
         ,person2@example.com,shadow@example.com,,false\n\
         ,person3@example.com,,,true\n\
         ,person4@example.com,,,false\n"
    );

    // With the other custom fields after them, in key order.
    let others = CreateExportRequest {
        columns: vec!["phone".into(), "custom_fields.seats".into()],
        include_other_custom_fields: true,
        ..Default::default()
    };
    let done = run_export(&app.ws.client, others.clone()).await;
    assert!(done.include_other_custom_fields);
    let csv = super::download_all(&app.ws.client, &done.id).await;
    assert_eq!(
        csv.lines().next().unwrap(),
        "phone,seats,custom_fields.email,list,nested,plan,ratio,vip,zip"
    );
    assert!(csv.contains("\n'+1 555 0100,,shadow@example.com,"), "{csv}");

    // JSON Lines: the fixed fields listed, and custom_fields with the listed keys only.
    let done = run_export(
        &app.ws.client,
        CreateExportRequest {
            format: ExportFormat::Jsonl.into(),
            ..listed.clone()
        },
    )
    .await;
    let jsonl = super::download_all(&app.ws.client, &done.id).await;
    let lines: Vec<&str> = jsonl.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"email":"person1@example.com","is_unsubscribed":false,"custom_fields":{"plan":"gold"}}"#
    );
    assert_eq!(
        lines[1],
        r#"{"email":"person2@example.com","is_unsubscribed":false,"custom_fields":{"plan":null,"email":"shadow@example.com"}}"#
    );
    assert_eq!(
        lines[3],
        r#"{"email":"person4@example.com","is_unsubscribed":false,"custom_fields":{}}"#
    );

    // XLSX: the same header row.
    let done = run_export(
        &app.ws.client,
        CreateExportRequest {
            format: ExportFormat::Xlsx.into(),
            ..listed.clone()
        },
    )
    .await;
    let (bytes, _) = download(&app, &done).await;
    let sheets = sheets(&bytes);
    let header: Vec<Data> = sheets[0].1[0].clone();
    assert_eq!(
        header,
        [
            "plan",
            "email",
            "custom_fields.email",
            "missing",
            "is_unsubscribed"
        ]
        .map(|h| Data::String(h.into()))
        .to_vec()
    );
    assert_eq!(sheets[0].1[1][0], Data::String("gold".into()));

    // Names that are no column are refused, naming the field, and nothing is made.
    for (columns, message) in [
        (vec!["emial"], "columns: \"emial\" is not a column"),
        (vec!["email", "email"], "columns: \"email\" is listed twice"),
        (
            vec!["custom_fields."],
            "columns: \"custom_fields.\" names no custom key",
        ),
    ] {
        let status = app
            .ws
            .client
            .create(CreateExportRequest {
                columns: columns.into_iter().map(String::from).collect(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(message), "{status:?}");
    }
    let status = app
        .ws
        .client
        .create(CreateExportRequest {
            format: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.message(), "format: unknown value 7");
    assert_eq!(app.ws.client.list_all().await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_answers_the_export_it_would_make_and_makes_nothing() {
    let app = TestApp::spawn().await;
    let contacts = contacts();
    app.ws.insert(&app.db, &contacts).await;
    let dry = CreateExportRequest {
        validate_only: true,
        request_id: "nightly".into(),
        filename: "weekly".into(),
        format: ExportFormat::Jsonl.into(),
        compression: Compression::Gzip.into(),
        subscribed_only: true,
        ..Default::default()
    };
    let answer = app.ws.client.create(dry.clone()).await.unwrap();
    assert_eq!(answer.id, "", "nothing was created");
    assert_eq!(answer.status(), ExportStatus::Pending);
    assert_eq!(answer.filename, "weekly.jsonl.gz");
    assert_eq!(answer.total_rows, 3, "the subscribed contacts now");
    assert_eq!(answer.format(), ExportFormat::Jsonl);
    assert!(answer.subscribed_only);
    let custom = [
        "custom_fields.email",
        "list",
        "nested",
        "plan",
        "seats",
        "vip",
    ];
    assert_eq!(answer.headers, [FIXED.as_slice(), &custom].concat());
    assert!(app.ws.client.list_all().await.unwrap().is_empty());

    // CSV headers are the file's own: neutralised.
    let mut quirky = Contact::numbered(9);
    quirky.custom_fields = json!({"=cmd": 1});
    app.ws.insert(&app.db, &[quirky]).await;
    let csv_dry = app
        .ws
        .client
        .create(CreateExportRequest {
            validate_only: true,
            columns: vec!["email".into(), "custom_fields.=cmd".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(csv_dry.headers, ["email", "'=cmd"]);
    assert_eq!(csv_dry.total_rows, 5);

    // The key is bound to nothing: a real export with it and other parameters is made.
    let real = run_export(
        &app.ws.client,
        CreateExportRequest {
            request_id: "nightly".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(real.status(), ExportStatus::Completed);
    // A dry run checks what a create checks: an unknown tag, say.
    let status = app
        .ws
        .client
        .create(CreateExportRequest {
            validate_only: true,
            tag_ids: vec![uuid::Uuid::new_v4().to_string()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("tag_ids: no tag "),
        "{status:?}"
    );
    assert_eq!(app.ws.client.list_all().await.unwrap().len(), 1);
}
