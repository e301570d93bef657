//! The data set: the demo workspace of [`fixture::seed_demo`] with N contacts, and a second
//! workspace with N/10, both generated inside PostgreSQL.
//!
//! The demo seed already has what the benchmark needs: about 30% of the contacts with 1–5 of
//! 20 custom keys, notes with commas, quotes and newlines, non-ASCII text, NULLs, formula-like
//! values, and 10 tags with 0–3 per contact. The second workspace is a copy of the demo's
//! first N/10 contacts (same shape, so its export is a fair "small" export to compare peak
//! memory with), with tags of its own; it also makes the exported workspace one tenant among
//! others, as in production.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_query;
use diesel::sql_types::{Array, BigInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use uuid::Uuid;

use contact_export_devkit::fixture;
use contact_export_server::auth::{self, Principal};
use contact_export_server::db;

use crate::selection::Selection;

/// The second workspace and its user and tags: fixed, so that a kept folder is recognised.
const SECOND_WORKSPACE_ID: Uuid = Uuid::from_u128(0xbe7c_0000_0000_4000_8000_0000_0000_0001);
const SECOND_USER_ID: Uuid = Uuid::from_u128(0xbe7c_0000_0000_4000_8000_0000_0000_0002);
/// The second workspace's tag ids: the demo tag ids with this prefix instead of `de30`.
const SECOND_TAG_PREFIX: u128 = 0xbe7c << 112;

/// How many of the demo tags the tag-filtered export asks for (any-of).
const FILTER_TAGS: usize = 2;

/// The combined filter, by index into [`fixture::DEMO_TAGS`]: all of `customer` and
/// `newsletter`, none of `beta tester`, created in [`COMBINED_CREATED`], subscribed only.
///
/// The fixture gives a contact 0–3 tags, its k-th at index (s + 3k) mod 10 for a s of its
/// own: two tags meet on one contact only when their indices are 3 (or 6) apart, so the pair
/// is 0 and 3 (about 7.5% of the contacts have both; 0 and 1 would select nobody), and the
/// excluded tag is the one 3 further, on a third of those. The range keeps eight months of the
/// year the contacts were created in (uniformly, over 2025), and 90% are subscribed: about 3%
/// of the contacts are left, each condition removing a share of its own.
const COMBINED_ALL_TAGS: [usize; 2] = [0, 3];
const COMBINED_EXCLUDED_TAG: usize = 6;
const COMBINED_CREATED: (&str, &str) = ("2025-03-01T00:00:00Z", "2025-11-01T00:00:00Z");

/// A workspace to export, with a token for it.
pub struct Tenant {
    pub workspace_id: Uuid,
    pub token: String,
}

/// What was seeded (or found), and what the measurements need to know of it.
pub struct Dataset {
    /// Contacts of the demo workspace.
    pub contacts: u64,
    /// Contacts of the second workspace.
    pub second_contacts: u64,
    pub demo: Tenant,
    pub second: Tenant,
    /// The demo workspace's custom-field keys, in the export's column order (code points).
    pub keys: Vec<String>,
    /// The tag-filtered export's selection (any of two tags), and the tags' names.
    pub tag_filter: Selection,
    pub tag_names: Vec<String>,
    /// Demo contacts carrying any of `tag_filter`.
    pub tag_matches: i64,
    /// The combined-filter export's selection, in words, and how many demo contacts it holds.
    pub combined: Selection,
    pub combined_label: String,
    pub combined_matches: i64,
    /// How long seeding took; `None` when a kept folder's data was reused.
    pub seed_time: Option<Duration>,
    /// `SHOW server_version`.
    pub server_version: String,
}

/// Creates the database, our tables and the data set, or checks that an existing one (a kept
/// folder) has the requested size.
pub async fn prepare(admin_url: &str, url: &str, contacts: u64) -> anyhow::Result<Dataset> {
    let second_contacts = (contacts / 10).max(1);
    let database = url.rsplit('/').next().unwrap_or_default();
    let mut admin = db::connect(admin_url).await?;
    fixture::create_database(&mut admin, database).await?;
    drop(admin);
    let mut conn = db::connect(url).await?;
    conn.batch_execute(fixture::CRM_SCHEMA).await?;
    db::migrate(url).await?;

    eprintln!("seeding {contacts} + {second_contacts} contacts (unless the folder has them)…");
    let started = Instant::now();
    let demo = fixture::seed_demo(&mut conn, contacts)
        .await
        .context("seeding the demo workspace")?;
    let seeded_second = seed_second(&mut conn, second_contacts as i64)
        .await
        .context("seeding the second workspace")?;
    let seed_time = (demo.seeded || seeded_second).then(|| started.elapsed());
    if seeded_second {
        // After the commit, as the fixture does: fresh statistics for the new rows.
        sql_query("ANALYZE contacts, tags, contact_tags")
            .execute(&mut conn)
            .await?;
    }
    check_sizes(&mut conn, contacts, second_contacts).await?;

    let tag_filter = Selection::any_of(
        fixture::DEMO_TAGS[..FILTER_TAGS]
            .iter()
            .map(|(id, _)| *id)
            .collect(),
    );
    let tag_names = fixture::DEMO_TAGS[..FILTER_TAGS]
        .iter()
        .map(|(_, name)| (*name).to_owned())
        .collect();
    let tag_matches = count(&mut conn, demo.workspace_id, &tag_filter).await?;
    let (combined, combined_label) = combined_filter()?;
    let combined_matches = count(&mut conn, demo.workspace_id, &combined).await?;

    #[derive(QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        key: String,
    }
    let mut keys: Vec<String> = sql_query(
        "SELECT DISTINCT jsonb_object_keys(custom_fields) AS key FROM contacts \
         WHERE workspace_id = $1 AND jsonb_typeof(custom_fields) = 'object'",
    )
    .bind::<SqlUuid, _>(demo.workspace_id)
    .load::<Key>(&mut conn)
    .await?
    .into_iter()
    .map(|k| k.key)
    .collect();
    // The export's column order: code points (Rust's `String` order), not the collation.
    keys.sort();

    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = Text)]
        server_version: String,
    }
    let Version { server_version } = sql_query("SHOW server_version")
        .get_result(&mut conn)
        .await?;

    let demo_token = token(&mut conn, demo.workspace_id, demo.user_id).await?;
    let second_token = token(&mut conn, SECOND_WORKSPACE_ID, SECOND_USER_ID).await?;
    Ok(Dataset {
        contacts,
        second_contacts,
        demo: Tenant {
            workspace_id: demo.workspace_id,
            token: demo_token,
        },
        second: Tenant {
            workspace_id: SECOND_WORKSPACE_ID,
            token: second_token,
        },
        keys,
        tag_filter,
        tag_names,
        tag_matches,
        combined,
        combined_label,
        combined_matches,
        seed_time,
        server_version,
    })
}

/// The combined filter (see [`COMBINED_ALL_TAGS`]) and a description of it.
fn combined_filter() -> anyhow::Result<(Selection, String)> {
    let tag = |i: usize| fixture::DEMO_TAGS[i];
    let (after, before) = COMBINED_CREATED;
    let instant = |s: &str| -> anyhow::Result<DateTime<Utc>> {
        Ok(DateTime::parse_from_rfc3339(s)?.to_utc())
    };
    let selection = Selection {
        tags: COMBINED_ALL_TAGS.iter().map(|&i| tag(i).0).collect(),
        all_tags: true,
        exclude_tags: vec![tag(COMBINED_EXCLUDED_TAG).0],
        created_after: Some(instant(after)?),
        created_before: Some(instant(before)?),
        subscribed_only: true,
    };
    let all: Vec<&str> = COMBINED_ALL_TAGS.iter().map(|&i| tag(i).1).collect();
    let label = format!(
        "{} and not {}, created {} to {}, subscribed",
        all.join(" and "),
        tag(COMBINED_EXCLUDED_TAG).1,
        &after[..10],
        &before[..10],
    );
    Ok((selection, label))
}

/// Contacts of `workspace_id` in `selection`.
async fn count(
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
    selection: &Selection,
) -> anyhow::Result<i64> {
    let Count { n } = sql_query(format!(
        "SELECT count(*) AS n FROM contacts c WHERE {}",
        selection.conditions(workspace_id)
    ))
    .get_result(conn)
    .await?;
    Ok(n)
}

/// Seeds the second workspace unless it exists; returns whether it did.
async fn seed_second(conn: &mut AsyncPgConnection, contacts: i64) -> anyhow::Result<bool> {
    let tag_ids: Vec<Uuid> = fixture::DEMO_TAGS
        .iter()
        .map(|(id, _)| Uuid::from_u128(SECOND_TAG_PREFIX | (id.as_u128() & !(0xffff << 112))))
        .collect();
    let tag_names: Vec<&str> = fixture::DEMO_TAGS.iter().map(|(_, name)| *name).collect();
    let seeded = conn
        .transaction(async move |conn| {
            let inserted = sql_query(
                "INSERT INTO workspaces (id, name, notifications_enabled, created_at) \
                 VALUES ($1, 'Second Workspace', false, timestamptz '2025-01-01 00:00:00+00') \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind::<SqlUuid, _>(SECOND_WORKSPACE_ID)
            .execute(conn)
            .await?;
            if inserted == 0 {
                return Ok::<_, diesel::result::Error>(false);
            }
            sql_query(
                "INSERT INTO users (id, workspace_id, name, email) \
                 VALUES ($1, $2, 'Second User', 'second@example.com')",
            )
            .bind::<SqlUuid, _>(SECOND_USER_ID)
            .bind::<SqlUuid, _>(SECOND_WORKSPACE_ID)
            .execute(conn)
            .await?;
            sql_query(
                "INSERT INTO tags (id, workspace_id, name) \
                 SELECT t.id, $1, t.name FROM unnest($2::uuid[], $3::text[]) AS t (id, name)",
            )
            .bind::<SqlUuid, _>(SECOND_WORKSPACE_ID)
            .bind::<Array<SqlUuid>, _>(&tag_ids)
            .bind::<Array<Text>, _>(&tag_names)
            .execute(conn)
            .await?;
            sql_query(SECOND_CONTACTS)
                .bind::<SqlUuid, _>(SECOND_WORKSPACE_ID)
                .bind::<SqlUuid, _>(fixture::DEMO_WORKSPACE_ID)
                .bind::<BigInt, _>(contacts)
                .execute(conn)
                .await?;
            sql_query(SECOND_CONTACT_TAGS)
                .bind::<SqlUuid, _>(SECOND_WORKSPACE_ID)
                .bind::<Array<SqlUuid>, _>(&tag_ids)
                .execute(conn)
                .await?;
            Ok(true)
        })
        .await?;
    Ok(seeded)
}

/// $1 second workspace, $2 demo workspace, $3 how many: the demo's first contacts again.
const SECOND_CONTACTS: &str = "\
INSERT INTO contacts (workspace_id, email, first_name, last_name, phone, company, notes,
                      is_unsubscribed, created_at, custom_fields)
SELECT $1, 'second-' || email, first_name, last_name, phone, company, notes,
       is_unsubscribed, created_at, custom_fields
  FROM contacts
 WHERE workspace_id = $2
 ORDER BY id
 LIMIT $3";

/// $1 workspace, $2 its tag ids: 0–3 distinct tags per contact, as the fixture does.
const SECOND_CONTACT_TAGS: &str = "\
INSERT INTO contact_tags (contact_id, tag_id)
SELECT c.id, ($2::uuid[])[1 + ((c.h / 4 + i * 3) % cardinality($2::uuid[]))::int]
  FROM (SELECT id, hashint8extended(id, 5) & 9223372036854775807 AS h
          FROM contacts
         WHERE workspace_id = $1
        OFFSET 0) AS c,
       generate_series(1, (c.h % 4)::int) AS i";

/// A kept folder may hold another size: measuring it under this run's label would mislead.
async fn check_sizes(
    conn: &mut AsyncPgConnection,
    contacts: u64,
    second_contacts: u64,
) -> anyhow::Result<()> {
    for (workspace, expected) in [
        (fixture::DEMO_WORKSPACE_ID, contacts),
        (SECOND_WORKSPACE_ID, second_contacts),
    ] {
        let Count { n: found } =
            sql_query("SELECT count(*) AS n FROM contacts WHERE workspace_id = $1")
                .bind::<SqlUuid, _>(workspace)
                .get_result(&mut *conn)
                .await?;
        if found != expected as i64 {
            bail!(
                "workspace {workspace} holds {found} contacts, not {expected}: the folder was \
                 seeded by a run with another --contacts; use another --keep-dir"
            );
        }
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn token(
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
    user_id: Uuid,
) -> anyhow::Result<String> {
    let principal = Principal {
        workspace_id: workspace_id.into(),
        user_id: user_id.into(),
    };
    Ok(auth::create_token(conn, principal, "exportd-bench", None).await?)
}
