//! The `send-notification` step against a real SMTP listener on loopback (mailin-embedded).

use std::net::TcpListener;

use contact_export_client::{CreateExportRequest, ExportStatus};
use contact_export_server::mail::Mailer;
use diesel::sql_types::{Bool, Integer, Jsonb, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use super::fixture::{Contact, Workspace};
use super::harness::{AppOptions, TestApp, TestDb, within};
use super::smtp_peer::{FROM, Received, SmtpListener, parse_message};
use super::{all_contacts, run_export};

/// A port where nothing listens (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug, diesel::QueryableByName)]
struct StepRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Jsonb>)]
    output: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

/// The `send-notification` row of an export.
async fn notification_step(db: &TestDb, export_id: Uuid) -> StepRow {
    diesel::sql_query(
        "SELECT status, attempts, output, error FROM export_steps \
         WHERE export_id = $1 AND step = 'send-notification'",
    )
    .bind::<diesel::sql_types::Uuid, _>(export_id)
    .get_result(&mut db.conn().await)
    .await
    .expect("a send-notification step row")
}

#[derive(Debug, diesel::QueryableByName)]
struct JobRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Bool)]
    job_done: bool,
    #[diesel(sql_type = Nullable<Text>)]
    error_message: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    user_id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    lease_owner: Option<String>,
    #[diesel(sql_type = Bool)]
    needs_mailer: bool,
}

async fn job_row(conn: &mut AsyncPgConnection, export_id: Uuid) -> JobRow {
    diesel::sql_query(
        "SELECT status, job_done, error_message, user_id, lease_owner, needs_mailer \
         FROM exports WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(export_id)
    .get_result(conn)
    .await
    .expect("the export row")
}

/// Waits for every step of the job to have run (`job_done`); returns the row.
async fn job_done(db: &TestDb, export_id: Uuid) -> JobRow {
    job_row_when(db, export_id, "the job to be done", |row| row.job_done).await
}

/// Waits until the export's row is as `wanted` says, woken by the `export_changed` NOTIFY that
/// each update of the export fires; returns the row.
async fn job_row_when(
    db: &TestDb,
    export_id: Uuid,
    what: &str,
    wanted: impl Fn(&JobRow) -> bool,
) -> JobRow {
    let mut listener = db.conn().await;
    diesel::sql_query("LISTEN export_changed")
        .execute(&mut listener)
        .await
        .unwrap();
    let mut conn = db.conn().await;
    let id = export_id.to_string();
    within(what, async {
        let mut notifications = std::pin::pin!(listener.notifications_stream());
        // Read after LISTEN: a change after this read is announced on the stream.
        loop {
            let row = job_row(&mut conn, export_id).await;
            if wanted(&row) {
                return row;
            }
            loop {
                let n = notifications
                    .next()
                    .await
                    .expect("the notification stream never ends")
                    .expect("a notification");
                if n.payload == id {
                    break;
                }
            }
        }
    })
    .await
}

async fn email_of(db: &TestDb, user_id: Uuid) -> Option<String> {
    #[derive(diesel::QueryableByName)]
    struct Email {
        #[diesel(sql_type = Nullable<Text>)]
        email: Option<String>,
    }
    let Email { email } = diesel::sql_query("SELECT email FROM users WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(user_id)
        .get_result(&mut db.conn().await)
        .await
        .unwrap();
    email
}

async fn app_mailing_to(mailer: Mailer) -> TestApp {
    TestApp::spawn_with(AppOptions {
        mailer: Some(mailer),
        ..AppOptions::default()
    })
    .await
}

/// Runs an export of `ws` to COMPLETED and then to the end of its job.
async fn completed_job(
    app: &TestApp,
    ws: &Workspace,
    request: CreateExportRequest,
) -> (Uuid, JobRow) {
    let done = run_export(&ws.client, request).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.error_message, "");
    let id: Uuid = done.id.parse().unwrap();
    let job = job_done(&app.db, id).await;
    assert_eq!(job.status, "completed");
    assert_eq!(job.user_id, ws.user_id, "the requester is the token's user");
    assert_eq!(job.lease_owner, None, "a finished job holds no lease");
    assert_eq!(job.error_message, None);
    (id, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_export_mails_its_requester_once() {
    let smtp = SmtpListener::start();
    let app = app_mailing_to(smtp.mailer()).await;
    let contacts: Vec<Contact> = (1..=5).map(Contact::numbered).collect();
    app.ws.insert(&app.db, &contacts).await;
    let to = email_of(&app.db, app.ws.user_id)
        .await
        .expect("the default workspace's user has an email");

    let done = run_export(
        &app.ws.client,
        CreateExportRequest {
            filename: "notify-me".into(),
            ..all_contacts()
        },
    )
    .await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    assert_eq!(done.filename, "notify-me.csv");
    // The step runs after COMPLETED is visible: the mail may still be on its way.
    smtp.wait_for(1).await;
    let id: Uuid = done.id.parse().unwrap();
    job_done(&app.db, id).await;

    // Exactly one, and nothing more came while the job finished.
    let [mail] = <[Received; 1]>::try_from(smtp.received()).expect("exactly one message");
    assert_eq!(mail.to, vec![to.clone()]);
    assert_eq!(mail.from, "exports@example.com");
    let (headers, body) = parse_message(&mail.data);
    assert!(headers.contains(&format!("To: {to}")), "{headers}");
    assert!(
        headers.contains("From: \"Contact Export\" <exports@example.com>"),
        "{headers}"
    );
    assert!(
        headers.contains("Subject: Your contact export notify-me.csv is ready"),
        "{headers}"
    );
    assert!(body.contains(&format!("Export id: {}", done.id)), "{body}");
    assert!(body.contains("File: notify-me.csv"), "{body}");
    assert!(
        body.contains("Your export of 5 contacts is ready."),
        "{body}"
    );

    let step = notification_step(&app.db, id).await;
    assert_eq!(step.status, "succeeded", "{step:?}");
    assert_eq!(step.attempts, 1);
    assert_eq!(step.output, Some(json!({"outcome": "sent", "to": to})));
    assert_eq!(step.error, None);
    // The watch ended at COMPLETED: the mail after it changes nothing callers can read.
    assert_eq!(app.ws.client.get(&done.id).await.unwrap(), done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mail_when_the_workspace_turned_notifications_off() {
    let smtp = SmtpListener::start();
    let app = app_mailing_to(smtp.mailer()).await;
    let ws = Workspace::create(&app.db, app.addr, false).await;
    ws.insert(&app.db, &[Contact::numbered(1)]).await;
    assert!(
        email_of(&app.db, ws.user_id).await.is_some(),
        "only the setting stops the mail"
    );

    let (id, _) = completed_job(&app, &ws, all_contacts()).await;
    // The job is done, and the step would have sent before that: nothing will come.
    assert!(smtp.received().is_empty(), "{:#?}", smtp.received());
    let step = notification_step(&app.db, id).await;
    assert_eq!(step.status, "skipped", "{step:?}");
    assert_eq!(
        step.output,
        Some(json!({"outcome": "skipped", "reason": "notifications disabled for the workspace"}))
    );
    assert_eq!(step.error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_without_email_is_skipped_silently() {
    let smtp = SmtpListener::start();
    let app = app_mailing_to(smtp.mailer()).await;
    let ws = Workspace::create_with(&app.db, app.addr, true, None).await;
    ws.insert(&app.db, &[Contact::numbered(1), Contact::numbered(2)])
        .await;
    assert_eq!(email_of(&app.db, ws.user_id).await, None);

    let (id, _) = completed_job(&app, &ws, all_contacts()).await;
    assert!(smtp.received().is_empty(), "{:#?}", smtp.received());
    let step = notification_step(&app.db, id).await;
    assert_eq!(step.status, "skipped", "{step:?}");
    assert_eq!(
        step.output,
        Some(json!({"outcome": "skipped", "reason": "requester has no email address"}))
    );
    assert_eq!(step.error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_failure_never_fails_a_finished_export() {
    let mailer = Mailer::from_url(&format!("smtp://127.0.0.1:{}", closed_port()), FROM).unwrap();
    let app = app_mailing_to(mailer).await;
    app.ws.insert(&app.db, &[Contact::numbered(1)]).await;

    let (id, _) = completed_job(&app, &app.ws, all_contacts()).await;
    let step = notification_step(&app.db, id).await;
    assert_eq!(step.status, "failed", "{step:?}");
    assert_eq!(step.attempts, 1, "not retried");
    assert_eq!(step.output, None);
    let error = step.error.expect("the failure is recorded");
    assert!(error.contains("sending the notification failed"), "{error}");

    // The export as callers see it is untouched by the mail.
    let export = app.ws.client.get(&id.to_string()).await.unwrap();
    assert_eq!(export.status(), ExportStatus::Completed);
    assert_eq!(export.error_message, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_mail_leaves_the_mail_to_one_that_has_it() {
    // A replica without a mail transport runs the export: the file is done, the mail is not,
    // and it does not record the step as if it were.
    let first = TestApp::spawn().await;
    first.ws.insert(&first.db, &[Contact::numbered(1)]).await;
    let done = run_export(&first.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    let id: Uuid = done.id.parse().unwrap();
    let waiting = job_row_when(&first.db, id, "the job to wait for a mailer", |row| {
        row.needs_mailer
    })
    .await;
    assert!(!waiting.job_done, "the mail is still owed");
    assert_eq!(
        waiting.lease_owner, None,
        "released for a replica with mail"
    );
    let steps: Vec<StepRow> = diesel::sql_query(
        "SELECT status, attempts, output, error FROM export_steps \
         WHERE export_id = $1 AND step = 'send-notification'",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .load(&mut first.db.conn().await)
    .await
    .unwrap();
    assert!(steps.is_empty(), "not recorded as done: {steps:?}");
    let (token, user_id) = (first.ws.token.clone(), first.ws.user_id);
    let db = first.stop().await;

    // A replica with mail claims the job at start and sends the mail, once.
    let smtp = SmtpListener::start();
    let second = TestApp::spawn_on(
        db,
        AppOptions {
            mailer: Some(smtp.mailer()),
            ..AppOptions::default()
        },
    )
    .await;
    let mail = smtp.wait_for(1).await;
    let job = job_done(&second.db, id).await;
    assert_eq!(job.status, "completed");
    assert_eq!(job.error_message, None);
    assert!(!job.needs_mailer);
    let to = email_of(&second.db, user_id).await.unwrap();
    assert_eq!(smtp.received().len(), 1, "{mail:#?}");
    assert_eq!(mail[0].to, vec![to.clone()]);
    let (_, body) = parse_message(&mail[0].data);
    assert!(body.contains(&format!("Export id: {id}")), "{body}");

    let step = notification_step(&second.db, id).await;
    assert_eq!(step.status, "succeeded", "{step:?}");
    assert_eq!(step.output, Some(json!({"outcome": "sent", "to": to})));
    // The file was not written again, and the export reads as it did before the resume.
    let stream = diesel::sql_query(
        "SELECT status, attempts, output, error FROM export_steps \
         WHERE export_id = $1 AND step = 'stream-export'",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result::<StepRow>(&mut second.db.conn().await)
    .await
    .unwrap();
    assert_eq!(stream.attempts, 1, "{stream:?}");
    let client = second.client_with_token(&token).await;
    assert_eq!(client.get(&id.to_string()).await.unwrap(), done);
}
