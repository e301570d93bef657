//! Step 4: tell the requester that the file is ready, if the workspace wants mail.
//!
//! Whether mail is wanted depends on the CRM's data only; whether this replica can send it is
//! the runner's concern (a replica without a mail transport leaves the step to one that has
//! one, rather than recording it done).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};

use crate::db::schema::{users, workspaces};
use crate::exports::ExportRecord;
use crate::mail::Mailer;
use crate::pipeline::step::{FailureKind, StepError};

/// The persisted output: whom it was sent to, or why not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Notification {
    Sent { to: String },
    Skipped { reason: String },
}

fn skipped(reason: &str) -> Notification {
    Notification::Skipped {
        reason: reason.to_owned(),
    }
}

/// Who is to get the mail: `Ok(address)`, or `Err` with the output of a skipped step. The
/// answer comes from the CRM's data alone, so every replica reaches the same one.
pub async fn recipient(
    conn: &mut AsyncPgConnection,
    export: &ExportRecord,
) -> Result<Result<String, Notification>, StepError> {
    let enabled: Option<bool> = workspaces::table
        .find(export.workspace_id)
        .select(workspaces::notifications_enabled)
        .first(conn)
        .await
        .optional()?;
    if enabled != Some(true) {
        return Ok(Err(skipped("notifications disabled for the workspace")));
    }
    let email: Option<Option<String>> = users::table
        .find(export.user_id)
        .select(users::email)
        .first(conn)
        .await
        .optional()?;
    match email.flatten().filter(|e| !e.trim().is_empty()) {
        Some(to) => Ok(Ok(to)),
        None => Ok(Err(skipped("requester has no email address"))),
    }
}

/// Sends the mail to `to`.
pub async fn send(
    mailer: &Mailer,
    export: &ExportRecord,
    to: String,
    rows: i64,
) -> Result<Notification, StepError> {
    let subject = format!("Your contact export {} is ready", export.filename);
    let body = format!(
        "Your export of {rows} contacts is ready.\n\n\
         File: {}\nExport id: {}\n\n\
         Download it with `exportctl download {} -o {}` or the DownloadExport call.\n",
        export.filename, export.id, export.id, export.filename
    );
    mailer
        .send(&to, &subject, body)
        .await
        .map_err(|e| StepError::failed(FailureKind::Write, "sending the notification failed", e))?;
    Ok(Notification::Sent { to })
}
