//! What lands in the file: every byte, compared with a CSV the test builds itself.

use contact_export_client::{
    CreateExportRequest, CsvDelimiter, CsvOptions, ExportStatus, LineEnding,
};
use serde_json::json;
use tonic::Code;

use super::expected::{Format, expected_csv, expected_csv_as};
use super::fixture::{Contact, tag_contact};
use super::harness::TestApp;
use super::{all_contacts, download_all, raw_cells, run_export, tagged};

fn nasty_contacts() -> Vec<Contact> {
    let mut a = Contact::numbered(1).with_custom(json!({"plan": "gold", "seats": 12, "vip": true}));
    a.notes = Some("likes \"quotes\", commas,\nand newlines\r\ntoo".into());
    a.first_name = Some("José".into());
    a.last_name = Some("Zoë 李".into());
    let mut b = Contact::numbered(2).with_custom(json!({
        "plan": null, "nested": {"a": [1, 2]}, "list": ["x", "y"], "email": "shadow@example.com"
    }));
    b.company = None;
    b.phone = Some("+1 555 0100".into());
    b.notes = Some("=HYPERLINK(\"http://evil\")".into());
    let mut c = Contact::numbered(3)
        .with_custom(json!({"seats": -5, "ratio": 1.5, "note": "-5", "cmd": "@SUM(A1)"}));
    c.first_name = Some("\tTabbed".into());
    c.last_name = Some("-minus".into());
    c.email = "plain@example.com".into();
    let d = Contact::numbered(4);
    vec![a, b, c, d]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_contacts_export_matches_the_expected_csv_byte_for_byte() {
    let app = TestApp::spawn().await;
    let contacts = nasty_contacts();
    app.ws.insert(&app.db, &contacts).await;
    // Another workspace's contacts must not leak into this file.
    let other = super::fixture::Workspace::create(&app.db, app.addr, false).await;
    other.insert(&app.db, &[Contact::numbered(99)]).await;

    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.total_rows, 4);
    assert_eq!(done.processed_rows, 4);
    assert_eq!(done.attempt, 1);
    let file = download_all(&app.ws.client, &done.id).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    assert_eq!(file, expected_csv(&refs, true));
    assert_eq!(done.size_bytes as usize, file.len());
    // The colliding key and a few decisions, spelled out rather than only through the builder.
    assert!(file.starts_with(
        "email,first_name,last_name,phone,company,notes,is_unsubscribed,created_at,\
         cmd,custom_fields.email,list,nested,note,plan,ratio,seats,vip\n"
    ));
    assert!(
        file.contains(",'+1 555 0100,"),
        "phone numbers are neutralised"
    );
    assert!(file.contains(
        "\nplain@example.com,'\tTabbed,'-minus,,Acme,,true,2024-05-01T12:00:03.123456Z,'@SUM(A1),,,,-5,,1.5,-5,\n"
    ));
    assert!(file.contains("2024-05-01T12:00:01.123456Z"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neutralisation_can_be_turned_off() {
    let app = TestApp::spawn().await;
    let contacts = nasty_contacts();
    app.ws.insert(&app.db, &contacts).await;
    let done = run_export(&app.ws.client, raw_cells(all_contacts())).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    let file = download_all(&app.ws.client, &done.id).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    assert_eq!(file, expected_csv(&refs, false));
    assert!(file.contains("\"=HYPERLINK(\"\"http://evil\"\")\""));
    assert!(file.contains(",+1 555 0100,"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filter_is_any_of_and_counts_each_contact_once() {
    let app = TestApp::spawn().await;
    let red = app.ws.tag(&app.db, "red").await;
    let blue = app.ws.tag(&app.db, "blue").await;
    let green = app.ws.tag(&app.db, "green").await;
    let contacts: Vec<Contact> = (1..=6)
        .map(|n| Contact::numbered(n).with_custom(json!({ format!("k{n}"): n })))
        .collect();
    let ids = app.ws.insert(&app.db, &contacts).await;
    tag_contact(&app.db, ids[0], red).await;
    tag_contact(&app.db, ids[0], blue).await; // both tags: still one row
    tag_contact(&app.db, ids[2], blue).await;
    tag_contact(&app.db, ids[3], green).await; // not asked for
    tag_contact(&app.db, ids[5], red).await;

    let done = run_export(&app.ws.client, tagged(&[red, blue])).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.total_rows, 3);
    let file = download_all(&app.ws.client, &done.id).await;
    // Only the selected rows' keys become columns.
    let expected = expected_csv(&[&contacts[0], &contacts[2], &contacts[5]], true);
    assert_eq!(file, expected);
    assert!(file.lines().next().unwrap().ends_with(",k1,k3,k6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_matches_give_a_header_only_file() {
    let app = TestApp::spawn().await;
    let unused = app.ws.tag(&app.db, "unused").await;
    app.ws
        .insert(
            &app.db,
            &[Contact::numbered(1).with_custom(json!({"k": 1}))],
        )
        .await;
    let done = run_export(&app.ws.client, tagged(&[unused])).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.total_rows, 0);
    assert_eq!(done.processed_rows, 0);
    let file = download_all(&app.ws.client, &done.id).await;
    assert_eq!(
        file,
        "email,first_name,last_name,phone,company,notes,is_unsubscribed,created_at\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_leave_empty_cells_and_columns_never_shift() {
    let app = TestApp::spawn().await;
    let contacts = vec![
        Contact::numbered(1).with_custom(json!({"b": "x"})),
        Contact::numbered(2).with_custom(json!({"a": "y", "c": "z"})),
        Contact::numbered(3),
        // Code-point order, not a collation: "B" < "_" < "a" < "é".
        Contact::numbered(4).with_custom(json!({"é": 1, "B": 2, "_": 3})),
    ];
    app.ws.insert(&app.db, &contacts).await;
    let done = run_export(&app.ws.client, all_contacts()).await;
    let file = download_all(&app.ws.client, &done.id).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    assert_eq!(file, expected_csv(&refs, true));
    assert!(file.lines().next().unwrap().ends_with(",B,_,a,b,c,é"));
    let columns = file.lines().next().unwrap().split(',').count();
    for line in file.lines() {
        assert_eq!(line.split(',').count(), columns, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filenames_are_sanitised_and_defaulted() {
    let app = TestApp::spawn().await;
    let client = &app.ws.client;
    let named = |f: &str| contact_export_client::CreateExportRequest {
        filename: f.into(),
        ..Default::default()
    };
    assert_eq!(
        client.create(named("report")).await.unwrap().filename,
        "report.csv"
    );
    assert_eq!(
        client.create(named("Q1.CSV")).await.unwrap().filename,
        "Q1.CSV"
    );
    assert_eq!(
        client
            .create(named("../../etc/passwd"))
            .await
            .unwrap()
            .filename,
        "_.._etc_passwd.csv"
    );
    assert_eq!(
        client
            .create(named(".hidden\u{202E}txt"))
            .await
            .unwrap()
            .filename,
        "hiddentxt.csv"
    );
    let long = client
        .create(named(&"é".repeat(300)))
        .await
        .unwrap()
        .filename;
    assert!(long.len() <= 200 && long.ends_with(".csv"), "{long}");
    let default = client.create(named("")).await.unwrap().filename;
    assert!(
        default.starts_with("contacts-")
            && default.ends_with(".csv")
            && default.len() == "contacts-20260101-000000.csv".len(),
        "{default}"
    );
}

/// `request` with CSV options.
fn with_csv(
    mut request: CreateExportRequest,
    delimiter: CsvDelimiter,
    include_bom: bool,
    line_ending: LineEnding,
) -> CreateExportRequest {
    request.csv_options = Some(CsvOptions {
        disable_formula_neutralization: false,
        delimiter: delimiter.into(),
        include_bom,
        line_ending: line_ending.into(),
    });
    request
}

/// The nasty contacts, one with every delimiter in its cells, and enough plain ones that the
/// file spans several batches (the test service's batch size is 7).
fn delimiter_contacts() -> Vec<Contact> {
    let mut contacts = nasty_contacts();
    let mut e = Contact::numbered(5).with_custom(json!({
        "plan": "a;b", "list": "c|d", "note": "e\tf", "seats": "g,h", "semi;key": 1
    }));
    e.notes = Some("semi;colon|pipe\ttab,comma\r\nnext line\nand\rcr".into());
    e.company = Some("\t\t".into());
    contacts.push(e);
    contacts.extend((6..=20).map(Contact::numbered));
    contacts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semicolon_bom_crlf_byte_for_byte() {
    let app = TestApp::spawn().await;
    let contacts = delimiter_contacts();
    app.ws.insert(&app.db, &contacts).await;
    let request = with_csv(
        all_contacts(),
        CsvDelimiter::Semicolon,
        true,
        LineEnding::Crlf,
    );
    let created = app.ws.client.create(request.clone()).await.unwrap();
    // The export echoes its options.
    assert_eq!(created.csv_options, request.csv_options);

    let done = run_export(&app.ws.client, request.clone()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.csv_options, request.csv_options);
    let file = download_all(&app.ws.client, &done.id).await;
    assert_eq!(done.size_bytes as usize, file.len());
    let refs: Vec<&Contact> = contacts.iter().collect();
    let format = Format {
        delimiter: ';',
        bom: true,
        crlf: true,
        ..Format::default()
    };
    assert_eq!(file, expected_csv_as(&refs, format));

    // The decisions, spelled out rather than only through the builder.
    assert!(file.starts_with(
        "\u{FEFF}email;first_name;last_name;phone;company;notes;is_unsubscribed;created_at;\
         cmd;custom_fields.email;list;nested;note;plan;ratio;seats;\"semi;key\";vip\r\n"
    ));
    assert_eq!(file.matches('\u{FEFF}').count(), 1, "one BOM, at the start");
    // Commas are data now; the line breaks inside a quoted field are kept as they were.
    assert!(file.contains(
        "\r\nperson5@example.com;First5;Last5;;'\t\t;\
         \"semi;colon|pipe\ttab,comma\r\nnext line\nand\rcr\";false;"
    ));
    assert!(file.contains(";e\tf;\"a;b\";;g,h;1;\r\n"));
    assert!(file.ends_with("2024-05-01T12:00:20.123456Z;;;;;;;;;;\r\n"));
    // Every record ends in CRLF: no LF outside a quoted field lacks its CR.
    let records = file.split("\r\n").count() - 1;
    assert_eq!(records, 1 + contacts.len() + 2, "two notes hold a CRLF");

    // The header-only file of a filter that matches nobody has the same shape.
    let unused = app.ws.tag(&app.db, "unused").await;
    let request = with_csv(
        tagged(&[unused]),
        CsvDelimiter::Semicolon,
        true,
        LineEnding::Crlf,
    );
    let done = run_export(&app.ws.client, request).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(
        download_all(&app.ws.client, &done.id).await,
        "\u{FEFF}email;first_name;last_name;phone;company;notes;is_unsubscribed;created_at\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tab_delimited() {
    let app = TestApp::spawn().await;
    let contacts = delimiter_contacts();
    app.ws.insert(&app.db, &contacts).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    let request = with_csv(all_contacts(), CsvDelimiter::Tab, false, LineEnding::Lf);
    let done = run_export(&app.ws.client, request.clone()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.csv_options, request.csv_options);
    let file = download_all(&app.ws.client, &done.id).await;
    let format = Format {
        delimiter: '\t',
        ..Format::default()
    };
    assert_eq!(file, expected_csv_as(&refs, format));
    assert!(file.starts_with("email\tfirst_name\tlast_name\tphone\t"));
    // A cell that starts with a tab is neutralised, then quoted for the tab it contains.
    assert!(file.contains(
        "\nplain@example.com\t\"'\tTabbed\"\t'-minus\t\tAcme\t\ttrue\t2024-05-01T12:00:03.123456Z\t"
    ));
    assert!(file.contains("\t\"'\t\t\"\t"), "{file}");
    // Commas are not quoted in a tab-separated file.
    assert!(file.contains("\tg,h\t"));

    // Neutralisation off: the raw tab, quoted.
    let mut raw = request;
    raw.csv_options
        .as_mut()
        .unwrap()
        .disable_formula_neutralization = true;
    let done = run_export(&app.ws.client, raw).await;
    let file = download_all(&app.ws.client, &done.id).await;
    let format = Format {
        neutralize: false,
        ..format
    };
    assert_eq!(file, expected_csv_as(&refs, format));
    assert!(file.contains("\nplain@example.com\t\"\tTabbed\"\t-minus\t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_delimited() {
    let app = TestApp::spawn().await;
    let contacts = delimiter_contacts();
    app.ws.insert(&app.db, &contacts).await;
    let refs: Vec<&Contact> = contacts.iter().collect();
    let request = with_csv(all_contacts(), CsvDelimiter::Pipe, false, LineEnding::Lf);
    let done = run_export(&app.ws.client, request).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    let file = download_all(&app.ws.client, &done.id).await;
    let format = Format {
        delimiter: '|',
        ..Format::default()
    };
    assert_eq!(file, expected_csv_as(&refs, format));
    assert!(file.starts_with("email|first_name|last_name|"));
    assert!(file.contains("|\"c|d\"|"));
    assert!(file.ends_with("2024-05-01T12:00:20.123456Z||||||||||\n"));
    assert!(!file.starts_with('\u{FEFF}'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_options_are_checked_and_echoed() {
    let app = TestApp::spawn_with(super::harness::AppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let client = &app.ws.client;
    for (options, message) in [
        (
            CsvOptions {
                delimiter: 9,
                ..Default::default()
            },
            "csv_options.delimiter: unknown value 9",
        ),
        (
            CsvOptions {
                line_ending: 3,
                ..Default::default()
            },
            "csv_options.line_ending: unknown value 3",
        ),
    ] {
        let status = client
            .create(CreateExportRequest {
                csv_options: Some(options),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, message)
        );
    }
    assert!(client.list_all().await.unwrap().is_empty());

    // Absent options and UNSPECIFIED enums are the defaults, echoed resolved.
    let resolved_defaults = Some(CsvOptions {
        disable_formula_neutralization: false,
        delimiter: CsvDelimiter::Comma.into(),
        include_bom: false,
        line_ending: LineEnding::Lf.into(),
    });
    let plain = client.create(all_contacts()).await.unwrap();
    assert_eq!(plain.csv_options, resolved_defaults);
    let unspecified = client
        .create(CreateExportRequest {
            csv_options: Some(CsvOptions::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(unspecified.csv_options, resolved_defaults);

    let pipe = with_csv(all_contacts(), CsvDelimiter::Pipe, true, LineEnding::Crlf);
    let created = client.create(pipe.clone()).await.unwrap();
    assert_eq!(
        client.get(created.id.clone()).await.unwrap().csv_options,
        pipe.csv_options
    );
    let listed = client.list_all().await.unwrap();
    let found = listed.iter().find(|e| e.id == created.id).unwrap();
    assert_eq!(found.csv_options, pipe.csv_options);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_numbers_are_written_as_postgresql_stores_them() {
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Cell {
        #[diesel(sql_type = Text)]
        text: String,
    }

    let app = TestApp::spawn().await;
    let ids = app.ws.insert(&app.db, &[Contact::numbered(1)]).await;
    // Numbers serde_json would re-format (1.50) or refuse (1e400, beyond f64), written as
    // JSON text by PostgreSQL itself; jsonb keeps them as numerics.
    let mut conn = app.db.conn().await;
    diesel::sql_query(
        r#"UPDATE contacts SET custom_fields = '{"n": 1.50, "big": 1e400, "neg": -0.0, "s": "a\"b\u00e9", "nested": {"x": 1.50, "y": [1e2]}}'::jsonb WHERE id = $1"#,
    )
    .bind::<BigInt, _>(ids[0])
    .execute(&mut conn)
    .await
    .unwrap();

    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    let file = download_all(&app.ws.client, &done.id).await;
    let mut lines = file.lines();
    assert!(lines.next().unwrap().ends_with(",big,n,neg,nested,s"));
    let row = lines.next().unwrap();
    let big = format!("1{}", "0".repeat(400));
    assert!(
        row.ends_with(&format!(
            ",{big},1.50,0.0,\"{{\"\"x\"\":1.50,\"\"y\"\":[100]}}\",\"a\"\"bé\""
        )),
        "{row}"
    );
    // Each scalar is exactly the text `custom_fields->>'key'` gives (what `\copy` writes).
    for (key, written) in [("n", "1.50"), ("big", big.as_str()), ("neg", "0.0")] {
        let Cell { text } =
            diesel::sql_query("SELECT custom_fields->>$1 AS text FROM contacts WHERE id = $2")
                .bind::<Text, _>(key)
                .bind::<BigInt, _>(ids[0])
                .get_result(&mut conn)
                .await
                .unwrap();
        assert_eq!(text, written, "{key}");
    }
}
