//! One consistent view: count, columns and rows come from one snapshot while the CRM writes.

use std::collections::{BTreeSet, HashMap};

use contact_export_client::ExportStatus;
use diesel::sql_types::{BigInt, Integer, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::harness::{AppOptions, TestApp};
use super::{all_contacts, download_all, run_export};

const PAIRS: i32 = 600;

/// Inserts pair `p` (two contacts, one transaction's worth) with generation 0.
const INSERT_PAIR: &str = "INSERT INTO contacts (workspace_id, email, created_at, notes, custom_fields) \
     SELECT $1, 'pair' || $2 || '-' || side || '@example.com', now(), 'keys:;gen=0', '{}' \
     FROM generate_series(0, 1) AS side";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_rows_agree_while_contacts_change() {
    let app = TestApp::spawn_with(AppOptions {
        batch_size: 10,
        ..AppOptions::default()
    })
    .await;
    let ws = app.ws.id;
    let mut conn = app.db.conn().await;
    for p in 0..PAIRS {
        diesel::sql_query(INSERT_PAIR)
            .bind::<SqlUuid, _>(ws)
            .bind::<Integer, _>(p)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    // The CRM at work: every transaction keeps the number of contacts constant and both
    // contacts of a pair alike, and gives them a brand-new custom key.
    let stop = tokio_util::sync::CancellationToken::new();
    let mutator = {
        let stop = stop.clone();
        let mut conn = app.db.conn().await;
        tokio::spawn(async move {
            let mut generation: i64 = 0;
            let mut next_pair = PAIRS;
            let mut mutations = 0u32;
            while !stop.is_cancelled() {
                generation += 1;
                let g = generation;
                let fresh = next_pair;
                next_pair += 1;
                conn.transaction::<_, diesel::result::Error, _>(async |c| {
                    // Update a pair: new key k<g>, generation g, on both contacts.
                    diesel::sql_query(
                        "UPDATE contacts SET \
                           custom_fields = jsonb_build_object('gen', $2::bigint, 'k' || $2, 'v' || $2), \
                           notes = 'keys:gen,k' || $2 || ';gen=' || $2 \
                         WHERE workspace_id = $1 AND email LIKE ('pair' || ($2 % $3) || '-%')",
                    )
                    .bind::<SqlUuid, _>(ws)
                    .bind::<BigInt, _>(g)
                    .bind::<BigInt, _>(i64::from(PAIRS))
                    .execute(c)
                    .await?;
                    // Replace another pair by a new one.
                    diesel::sql_query(
                        "DELETE FROM contacts WHERE workspace_id = $1 AND email LIKE ('pair' || \
                         (SELECT min(split_part(substr(email, 5), '-', 1)::int) FROM contacts \
                          WHERE workspace_id = $1) || '-%')",
                    )
                    .bind::<SqlUuid, _>(ws)
                    .execute(c)
                    .await?;
                    diesel::sql_query(INSERT_PAIR)
                        .bind::<SqlUuid, _>(ws)
                        .bind::<Integer, _>(fresh)
                        .execute(c)
                        .await?;
                    Ok(())
                })
                .await
                .unwrap();
                mutations += 1;
            }
            mutations
        })
    };

    let done = run_export(&app.ws.client, all_contacts()).await;
    stop.cancel();
    let mutations = mutator.await.unwrap();
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert!(mutations > 0, "the CRM wrote during the test");

    let file = download_all(&app.ws.client, &done.id).await;
    let mut reader = csv::ReaderBuilder::new().from_reader(file.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let custom: Vec<&str> = header[8..].iter().map(String::as_str).collect();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();

    // The count, the rows and the columns are of one snapshot.
    assert_eq!(rows.len() as i64, i64::from(PAIRS) * 2);
    assert_eq!(done.total_rows, rows.len() as i64);
    let mut used_columns = BTreeSet::new();
    let mut pairs: HashMap<String, Vec<String>> = HashMap::new();
    for row in &rows {
        let notes = &row[5];
        let (keys, generation) = notes
            .strip_prefix("keys:")
            .and_then(|rest| rest.split_once(";gen="))
            .unwrap_or_else(|| panic!("unexpected notes {notes:?}"));
        let keys: BTreeSet<&str> = keys.split(',').filter(|k| !k.is_empty()).collect();
        for (i, column) in custom.iter().enumerate() {
            let cell = &row[8 + i];
            // Every key a row has is a column, and its cell is filled; no other cell is.
            assert_eq!(
                keys.contains(column),
                !cell.is_empty(),
                "row {row:?} column {column}"
            );
            if !cell.is_empty() {
                used_columns.insert(*column);
            }
        }
        let pair = row[0].split('-').next().unwrap().to_owned();
        pairs.entry(pair).or_default().push(generation.to_owned());
    }
    // No column without a value: the keys were not read from another view either.
    assert_eq!(used_columns.len(), custom.len(), "{custom:?}");
    // And the CRM did write after the snapshot was taken: the file is not simply the end state.
    #[derive(diesel::QueryableByName)]
    struct MaxGen {
        #[diesel(sql_type = BigInt)]
        max: i64,
    }
    let MaxGen { max: latest } = diesel::sql_query(
        "SELECT coalesce(max((custom_fields->>'gen')::bigint), 0) AS max FROM contacts WHERE workspace_id = $1",
    )
    .bind::<SqlUuid, _>(ws)
    .get_result(&mut conn)
    .await
    .unwrap();
    let exported = pairs
        .values()
        .flatten()
        .map(|g| g.parse::<i64>().unwrap())
        .max()
        .unwrap();
    assert!(
        exported < latest,
        "exported generation {exported}, latest {latest}"
    );
    for (pair, generations) in pairs {
        assert_eq!(generations.len(), 2, "both contacts of {pair} or neither");
        assert_eq!(
            generations[0], generations[1],
            "{pair} was read half-updated"
        );
    }
}
