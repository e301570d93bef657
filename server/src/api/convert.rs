//! Between protocol messages and domain types.

use chrono::{DateTime, Utc};
use contact_export::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;
use uuid::Uuid;

use crate::exports::{ExportOptions, ExportRecord, ExportStatus};

/// An export id from a request: a UUID, else INVALID_ARGUMENT naming the field.
pub fn parse_id(raw: &str) -> Result<Uuid, Status> {
    Uuid::try_parse(raw.trim())
        .map_err(|_| Status::invalid_argument(format!("id: {raw:?} is not a UUID")))
}

/// Options of a new export; absent means the defaults.
pub fn options_from_proto(options: Option<&pb::CsvOptions>) -> ExportOptions {
    let defaults = ExportOptions::default();
    match options {
        None => defaults,
        Some(o) => ExportOptions {
            neutralize_formulas: !o.disable_formula_neutralization,
        },
    }
}

fn status_to_proto(status: ExportStatus) -> pb::ExportStatus {
    match status {
        ExportStatus::Pending => pb::ExportStatus::Pending,
        ExportStatus::Processing => pb::ExportStatus::Processing,
        ExportStatus::Completed => pb::ExportStatus::Completed,
        ExportStatus::Failed => pb::ExportStatus::Failed,
        ExportStatus::Cancelled => pb::ExportStatus::Cancelled,
        ExportStatus::Expired => pb::ExportStatus::Expired,
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The caller's view of an export.
pub fn export_to_proto(r: &ExportRecord) -> pb::Export {
    let options = r.options();
    pb::Export {
        id: r.id.to_string(),
        status: status_to_proto(r.status()) as i32,
        filename: r.filename.clone(),
        tag_ids: r.tag_ids.iter().map(Uuid::to_string).collect(),
        total_rows: r.total_rows,
        processed_rows: r.processed_rows,
        current_step: r.current_step.clone(),
        attempt: r.attempt,
        error_message: r.error_message.clone().unwrap_or_default(),
        size_bytes: r.size_bytes.unwrap_or_default(),
        sha256: r.sha256.clone().unwrap_or_default(),
        create_time: Some(timestamp(r.created_at)),
        update_time: Some(timestamp(r.updated_at)),
        start_time: r.started_at.map(timestamp),
        finish_time: r.finished_at.map(timestamp),
        request_id: r.request_id.clone().unwrap_or_default(),
        csv_options: Some(pb::CsvOptions {
            disable_formula_neutralization: !options.neutralize_formulas,
        }),
    }
}
