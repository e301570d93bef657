//! CRM data for tests: workspaces, users, tokens, contacts and tags, inserted in SQL.

use chrono::{DateTime, TimeZone, Utc};
use contact_export_client::ExportClient;
use contact_export_server::auth::{self, Principal};
use diesel::sql_types::{Bool, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::harness::{AppOptions, Dial, TestApp, TestDb};

/// A workspace, its user, and a client holding that user's token.
pub struct Workspace {
    pub id: Uuid,
    pub user_id: Uuid,
    pub token: String,
    pub client: ExportClient,
}

impl Workspace {
    /// A workspace whose user has an email; notifications as asked.
    pub async fn create(db: &TestDb, dial: impl Into<Dial>, notifications: bool) -> Workspace {
        let id = Uuid::new_v4();
        let email = format!("owner-{}@example.com", id.simple());
        Workspace::create_with(db, dial, notifications, Some(&email)).await
    }

    pub async fn create_with(
        db: &TestDb,
        dial: impl Into<Dial>,
        notifications: bool,
        email: Option<&str>,
    ) -> Workspace {
        let id = Uuid::new_v4();
        let user_id = Uuid::new_v4();
        let mut conn = db.conn().await;
        diesel::sql_query(
            "INSERT INTO workspaces (id, name, notifications_enabled) VALUES ($1, 'ws', $2)",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<Bool, _>(notifications)
        .execute(&mut conn)
        .await
        .unwrap();
        diesel::sql_query(
            "INSERT INTO users (id, workspace_id, name, email) VALUES ($1, $2, 'Owner', $3)",
        )
        .bind::<diesel::sql_types::Uuid, _>(user_id)
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<Nullable<Text>, _>(email)
        .execute(&mut conn)
        .await
        .unwrap();
        let token = auth::create_token(
            &mut conn,
            Principal {
                workspace_id: id.into(),
                user_id: user_id.into(),
            },
            "test",
            None,
        )
        .await
        .unwrap();
        let client = dial.into().connect(&token).await;
        Workspace {
            id,
            user_id,
            token,
            client,
        }
    }

    pub async fn tag(&self, db: &TestDb, name: &str) -> Uuid {
        let id = Uuid::new_v4();
        diesel::sql_query("INSERT INTO tags (id, workspace_id, name) VALUES ($1, $2, $3)")
            .bind::<diesel::sql_types::Uuid, _>(id)
            .bind::<diesel::sql_types::Uuid, _>(self.id)
            .bind::<Text, _>(name)
            .execute(&mut db.conn().await)
            .await
            .unwrap();
        id
    }

    /// Inserts contacts in order; returns their ids (ascending, so export order).
    pub async fn insert(&self, db: &TestDb, contacts: &[Contact]) -> Vec<i64> {
        let mut conn = db.conn().await;
        let mut ids = Vec::with_capacity(contacts.len());
        for c in contacts {
            ids.push(insert_contact(&mut conn, self.id, c).await);
        }
        ids
    }
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

pub async fn insert_contact(conn: &mut AsyncPgConnection, workspace: Uuid, c: &Contact) -> i64 {
    let Id { id } = diesel::sql_query(
        "INSERT INTO contacts (workspace_id, email, first_name, last_name, phone, company, notes, \
         is_unsubscribed, created_at, custom_fields) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING id",
    )
    .bind::<diesel::sql_types::Uuid, _>(workspace)
    .bind::<Text, _>(&c.email)
    .bind::<Nullable<Text>, _>(&c.first_name)
    .bind::<Nullable<Text>, _>(&c.last_name)
    .bind::<Nullable<Text>, _>(&c.phone)
    .bind::<Nullable<Text>, _>(&c.company)
    .bind::<Nullable<Text>, _>(&c.notes)
    .bind::<Bool, _>(c.is_unsubscribed)
    .bind::<Timestamptz, _>(c.created_at)
    .bind::<Jsonb, _>(&c.custom_fields)
    .get_result(conn)
    .await
    .unwrap();
    id
}

pub async fn tag_contact(db: &TestDb, contact_id: i64, tag_id: Uuid) {
    diesel::sql_query("INSERT INTO contact_tags (contact_id, tag_id) VALUES ($1, $2)")
        .bind::<diesel::sql_types::BigInt, _>(contact_id)
        .bind::<diesel::sql_types::Uuid, _>(tag_id)
        .execute(&mut db.conn().await)
        .await
        .unwrap();
}

/// A contact as the test inserts it, and as the expected CSV is built from.
#[derive(Debug, Clone)]
pub struct Contact {
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub company: Option<String>,
    pub notes: Option<String>,
    pub is_unsubscribed: bool,
    pub created_at: DateTime<Utc>,
    pub custom_fields: serde_json::Value,
}

impl Contact {
    /// A plain contact numbered `n`, with microseconds in its timestamp.
    pub fn numbered(n: u32) -> Contact {
        Contact {
            email: format!("person{n}@example.com"),
            first_name: Some(format!("First{n}")),
            last_name: Some(format!("Last{n}")),
            phone: None,
            company: Some("Acme".into()),
            notes: None,
            is_unsubscribed: n.is_multiple_of(3),
            created_at: Utc
                .timestamp_opt(1_714_564_800 + i64::from(n), 123_456_000)
                .unwrap(),
            custom_fields: serde_json::json!({}),
        }
    }

    pub fn with_custom(mut self, fields: serde_json::Value) -> Contact {
        self.custom_fields = fields;
        self
    }
}

/// About 12 MB of CSV (12,000 contacts with long notes) in `app`'s workspace: with
/// [`large_export_options`], one 8 MiB multipart part and the rest at close.
pub async fn insert_large_export(app: &TestApp) {
    diesel::sql_query(
        "INSERT INTO contacts (workspace_id, email, created_at, notes, custom_fields) \
         SELECT $1, 'c' || g || '@example.com', timestamptz '2024-01-01' + g * interval '1 s', \
         repeat(md5(g::text), 30), jsonb_build_object('n', g) FROM generate_series(1, 12000) g",
    )
    .bind::<diesel::sql_types::Uuid, _>(app.ws.id)
    .execute(&mut app.db.conn().await)
    .await
    .unwrap();
}

/// The service options of the multipart tests: batches of 500 rows, so that a part is filled
/// by many writes.
pub fn large_export_options() -> AppOptions {
    AppOptions {
        batch_size: 500,
        ..AppOptions::default()
    }
}

/// A contact no export can write: custom fields nested 1,500 levels deep (PostgreSQL stores
/// them; the encoder follows 1,000). Its id.
pub async fn insert_unexportable(db: &TestDb, workspace: Uuid) -> i64 {
    let Id { id } = diesel::sql_query(
        "INSERT INTO contacts (workspace_id, email, created_at, custom_fields) \
         VALUES ($1, 'deep@example.com', now(), \
         jsonb_build_object('k', (repeat('[', 1500) || repeat(']', 1500))::jsonb)) RETURNING id",
    )
    .bind::<diesel::sql_types::Uuid, _>(workspace)
    .get_result(&mut db.conn().await)
    .await
    .unwrap();
    id
}
