//! The export as a record: what a caller asked for, its status, and the queries that create,
//! read, list and cancel exports. Every query takes the caller's workspace: an export of
//! another workspace is indistinguishable from one that does not exist.

pub mod error;
pub mod filename;
pub mod idempotency;
pub mod new_export;
pub mod options;
pub mod repo;

pub use error::ExportError;
pub use new_export::NewExport;
pub use options::{
    ColumnList, ColumnName, Compression, CsvOptions, Delimiter, ExportFormat, ExportOptions,
    Filter, FixedColumn, LineEnding, TagMatch,
};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

pub use crate::ids::{ExportId, UserId, WorkspaceId};

/// Where an export is in its life. Stored in `exports.status` as [`ExportStatus::as_str`]:
/// this type is the one place that maps the two.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum ExportStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
    /// Its file was removed by retention.
    Expired,
    /// Deleted by its workspace (DeleteExport): its file is gone, the record stays.
    Deleted,
}

impl ExportStatus {
    /// Every status, in the order of an export's life.
    pub const ALL: [ExportStatus; 7] = [
        ExportStatus::Pending,
        ExportStatus::Processing,
        ExportStatus::Completed,
        ExportStatus::Failed,
        ExportStatus::Cancelled,
        ExportStatus::Expired,
        ExportStatus::Deleted,
    ];

    /// The value stored in `exports.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportStatus::Pending => "pending",
            ExportStatus::Processing => "processing",
            ExportStatus::Completed => "completed",
            ExportStatus::Failed => "failed",
            ExportStatus::Cancelled => "cancelled",
            ExportStatus::Expired => "expired",
            ExportStatus::Deleted => "deleted",
        }
    }

    /// Parses a stored value; the table's CHECK constraint allows nothing else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ExportStatus::Pending,
            "processing" => ExportStatus::Processing,
            "completed" => ExportStatus::Completed,
            "failed" => ExportStatus::Failed,
            "cancelled" => ExportStatus::Cancelled,
            "expired" => ExportStatus::Expired,
            "deleted" => ExportStatus::Deleted,
            _ => return None,
        })
    }

    /// No change follows a terminal status (but expiry of a completed file).
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExportStatus::Pending | ExportStatus::Processing)
    }
}

impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for ExportStatus {
    fn to_sql<'b>(
        &'b self,
        out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
    ) -> diesel::serialize::Result {
        <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
            self.as_str(),
            &mut out.reborrow(),
        )
    }
}

impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for ExportStatus {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let text = <String as diesel::deserialize::FromSql<
            diesel::sql_types::Text,
            diesel::pg::Pg,
        >>::from_sql(bytes)?;
        ExportStatus::parse(&text).ok_or_else(|| format!("unknown export status {text:?}").into())
    }
}

/// A row of `exports`, as callers see it (the lease columns stay inside the worker).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = crate::db::schema::exports, check_for_backend(diesel::pg::Pg))]
pub struct ExportRecord {
    pub id: ExportId,
    pub workspace_id: WorkspaceId,
    pub user_id: UserId,
    pub status: ExportStatus,
    pub filename: String,
    pub tag_ids: Vec<Uuid>,
    pub options: serde_json::Value,
    pub request_id: Option<String>,
    pub total_rows: i64,
    pub processed_rows: i64,
    pub current_step: String,
    pub attempt: i32,
    pub error_message: Option<String>,
    pub storage_key: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub job_done: bool,
    pub cancel_requested: bool,
    /// The generation of the export's last claim (the keys of its objects end in it).
    pub lease_generation: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// When retention removes (or removed) the file of a COMPLETED (EXPIRED) export.
    pub expires_at: Option<DateTime<Utc>>,
    pub notify_url: Option<String>,
    /// The end its webhook is still to be told of (`completed`, `failed`…).
    pub webhook_due: Option<String>,
}

/// Stored options that do not read as [`ExportOptions`] (a row written by something else).
#[derive(Debug, thiserror::Error)]
#[error("the stored options of export {export} cannot be read: {source}")]
pub struct UnreadableOptions {
    pub export: ExportId,
    #[source]
    pub source: serde_json::Error,
}

impl ExportRecord {
    /// The typed options; a row written by an older version gets the defaults for fields it
    /// does not have. Options that do not read are an error, never silently the defaults.
    pub fn options(&self) -> Result<ExportOptions, UnreadableOptions> {
        serde_json::from_value(self.options.clone()).map_err(|source| UnreadableOptions {
            export: self.id,
            source,
        })
    }
}
