//! Between protocol messages and domain types.

use chrono::{DateTime, Utc};
use contact_export::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;
use uuid::Uuid;

use crate::exports::{
    Delimiter, ExportError, ExportId, ExportOptions, ExportRecord, ExportStatus, LineEnding,
};

/// An export id from a request: a UUID, else INVALID_ARGUMENT naming the field.
pub fn parse_id(raw: &str) -> Result<ExportId, Status> {
    Uuid::try_parse(raw.trim())
        .map(ExportId)
        .map_err(|_| Status::invalid_argument(format!("id: {raw:?} is not a UUID")))
}

/// Options of a new export; absent means the defaults, and so does an `_UNSPECIFIED` enum. An
/// enum number this server does not know (a newer client's) is INVALID_ARGUMENT naming the
/// field, rather than silently a default the caller did not ask for.
pub fn options_from_proto(options: Option<&pb::CsvOptions>) -> Result<ExportOptions, ExportError> {
    let Some(o) = options else {
        return Ok(ExportOptions::default());
    };
    let delimiter = match pb::CsvDelimiter::try_from(o.delimiter) {
        Ok(pb::CsvDelimiter::Unspecified) => Delimiter::default(),
        Ok(pb::CsvDelimiter::Comma) => Delimiter::Comma,
        Ok(pb::CsvDelimiter::Semicolon) => Delimiter::Semicolon,
        Ok(pb::CsvDelimiter::Tab) => Delimiter::Tab,
        Ok(pb::CsvDelimiter::Pipe) => Delimiter::Pipe,
        Err(_) => return Err(unknown_enum("csv_options.delimiter", o.delimiter)),
    };
    let line_ending = match pb::LineEnding::try_from(o.line_ending) {
        Ok(pb::LineEnding::Unspecified) => LineEnding::default(),
        Ok(pb::LineEnding::Lf) => LineEnding::Lf,
        Ok(pb::LineEnding::Crlf) => LineEnding::Crlf,
        Err(_) => return Err(unknown_enum("csv_options.line_ending", o.line_ending)),
    };
    Ok(ExportOptions {
        neutralize_formulas: !o.disable_formula_neutralization,
        delimiter,
        include_bom: o.include_bom,
        line_ending,
    })
}

fn unknown_enum(field: &'static str, value: i32) -> ExportError {
    ExportError::invalid(field, format!("unknown value {value}"))
}

/// The options as an `Export` echoes them: enums resolved, never `_UNSPECIFIED`.
fn options_to_proto(options: ExportOptions) -> pb::CsvOptions {
    let delimiter = match options.delimiter {
        Delimiter::Comma => pb::CsvDelimiter::Comma,
        Delimiter::Semicolon => pb::CsvDelimiter::Semicolon,
        Delimiter::Tab => pb::CsvDelimiter::Tab,
        Delimiter::Pipe => pb::CsvDelimiter::Pipe,
    };
    let line_ending = match options.line_ending {
        LineEnding::Lf => pb::LineEnding::Lf,
        LineEnding::Crlf => pb::LineEnding::Crlf,
    };
    pb::CsvOptions {
        disable_formula_neutralization: !options.neutralize_formulas,
        delimiter: delimiter as i32,
        include_bom: options.include_bom,
        line_ending: line_ending as i32,
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
        ExportStatus::Deleted => pb::ExportStatus::Deleted,
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The caller's view of an export. Stored options that do not read are left out (the job
/// fails saying why), never shown as defaults the caller did not ask for.
pub fn export_to_proto(r: &ExportRecord) -> pb::Export {
    let options = match r.options() {
        Ok(options) => Some(options_to_proto(options)),
        Err(e) => {
            tracing::error!(error = %e, "an export's options cannot be read");
            None
        }
    };
    pb::Export {
        id: r.id.to_string(),
        status: status_to_proto(r.status) as i32,
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
        csv_options: options,
        cancel_requested: r.cancel_requested,
        expire_time: r.expires_at.map(timestamp),
        delete_time: r.deleted_at.map(timestamp),
        notify_url: r.notify_url.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_unspecified_options_are_the_defaults() {
        assert_eq!(options_from_proto(None).unwrap(), ExportOptions::default());
        assert_eq!(
            options_from_proto(Some(&pb::CsvOptions::default())).unwrap(),
            ExportOptions::default()
        );
    }

    #[test]
    fn every_option_maps_and_is_echoed_resolved() {
        let request = pb::CsvOptions {
            disable_formula_neutralization: true,
            delimiter: pb::CsvDelimiter::Tab as i32,
            include_bom: true,
            line_ending: pb::LineEnding::Crlf as i32,
        };
        let options = options_from_proto(Some(&request)).unwrap();
        assert_eq!(
            options,
            ExportOptions {
                neutralize_formulas: false,
                delimiter: Delimiter::Tab,
                include_bom: true,
                line_ending: LineEnding::Crlf,
            }
        );
        assert_eq!(options_to_proto(options), request);

        for (proto, domain) in [
            (pb::CsvDelimiter::Comma, Delimiter::Comma),
            (pb::CsvDelimiter::Semicolon, Delimiter::Semicolon),
            (pb::CsvDelimiter::Tab, Delimiter::Tab),
            (pb::CsvDelimiter::Pipe, Delimiter::Pipe),
        ] {
            let request = pb::CsvOptions {
                delimiter: proto as i32,
                ..Default::default()
            };
            let options = options_from_proto(Some(&request)).unwrap();
            assert_eq!(options.delimiter, domain);
            assert_eq!(options_to_proto(options).delimiter, proto as i32);
        }

        // The defaults are echoed as what they are, not as UNSPECIFIED.
        let echoed = options_to_proto(ExportOptions::default());
        assert_eq!(echoed.delimiter(), pb::CsvDelimiter::Comma);
        assert_eq!(echoed.line_ending(), pb::LineEnding::Lf);
    }

    #[test]
    fn unknown_enum_values_name_the_field() {
        let bad_delimiter = pb::CsvOptions {
            delimiter: 99,
            ..Default::default()
        };
        let err = options_from_proto(Some(&bad_delimiter)).unwrap_err();
        assert_eq!(err.to_string(), "csv_options.delimiter: unknown value 99");
        let bad_ending = pb::CsvOptions {
            line_ending: -1,
            ..Default::default()
        };
        let err = options_from_proto(Some(&bad_ending)).unwrap_err();
        assert_eq!(err.to_string(), "csv_options.line_ending: unknown value -1");
    }
}
