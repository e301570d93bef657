//! Between protocol messages and domain types.

use chrono::{DateTime, Utc};
use contact_export::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;
use uuid::Uuid;

use crate::exports::{
    ColumnList, ColumnName, Compression, CsvOptions, Delimiter, ExportError, ExportFormat,
    ExportId, ExportOptions, ExportRecord, ExportStatus, Filter, LineEnding, TagMatch,
};

/// An export id from a request: a UUID, else INVALID_ARGUMENT naming the field.
pub fn parse_id(raw: &str) -> Result<ExportId, Status> {
    Uuid::try_parse(raw.trim())
        .map(ExportId)
        .map_err(|_| Status::invalid_argument(format!("id: {raw:?} is not a UUID")))
}

/// The options of a new export from its request: the CSV's, the format and compression, the
/// columns and the filters beside `tag_ids`. Absent means the defaults, and so does an
/// `_UNSPECIFIED` enum. An enum number this server does not know (a newer client's) is
/// INVALID_ARGUMENT naming the field, rather than silently a default the caller did not ask
/// for. (Rules across fields are `NewExport::parse`'s.)
pub fn options_from_request(req: &pb::CreateExportRequest) -> Result<ExportOptions, ExportError> {
    let format = match pb::ExportFormat::try_from(req.format) {
        Ok(pb::ExportFormat::Unspecified | pb::ExportFormat::Csv) => ExportFormat::Csv,
        Ok(pb::ExportFormat::Jsonl) => ExportFormat::Jsonl,
        Ok(pb::ExportFormat::Xlsx) => ExportFormat::Xlsx,
        Err(_) => return Err(unknown_enum("format", req.format)),
    };
    let compression = match pb::Compression::try_from(req.compression) {
        Ok(pb::Compression::Unspecified | pb::Compression::None) => Compression::None,
        Ok(pb::Compression::Gzip) => Compression::Gzip,
        Ok(pb::Compression::Zstd) => Compression::Zstd,
        Err(_) => return Err(unknown_enum("compression", req.compression)),
    };
    let tag_match = match pb::TagMatch::try_from(req.tag_match) {
        Ok(pb::TagMatch::Unspecified | pb::TagMatch::Any) => TagMatch::Any,
        Ok(pb::TagMatch::All) => TagMatch::All,
        Err(_) => return Err(unknown_enum("tag_match", req.tag_match)),
    };
    let columns = if req.columns.is_empty() {
        None
    } else {
        let columns = req
            .columns
            .iter()
            .map(|name| ColumnName::parse(name).map_err(|e| ExportError::invalid("columns", e)))
            .collect::<Result<_, _>>()?;
        Some(ColumnList {
            columns,
            include_other_custom_fields: req.include_other_custom_fields,
        })
    };
    let mut exclude_tag_ids = Vec::with_capacity(req.exclude_tag_ids.len());
    for raw in &req.exclude_tag_ids {
        let id = Uuid::try_parse(raw.trim()).map_err(|_| {
            ExportError::invalid("exclude_tag_ids", format!("{raw:?} is not a UUID"))
        })?;
        if !exclude_tag_ids.contains(&id) {
            exclude_tag_ids.push(id);
        }
    }
    Ok(ExportOptions {
        csv: csv_options_from_proto(req.csv_options.as_ref())?,
        format,
        compression,
        columns,
        filter: Filter {
            tag_match,
            exclude_tag_ids,
            created_after: instant("created_after", req.created_after.as_ref())?,
            created_before: instant("created_before", req.created_before.as_ref())?,
            subscribed_only: req.subscribed_only,
        },
    })
}

/// A filter's instant, rounded up to the microseconds PostgreSQL stores (so that a bound
/// between two microseconds selects the same contacts as the exact instant would).
fn instant(
    field: &'static str,
    t: Option<&Timestamp>,
) -> Result<Option<DateTime<Utc>>, ExportError> {
    let Some(t) = t else {
        return Ok(None);
    };
    let invalid = || ExportError::invalid(field, format!("{t} is not a valid timestamp"));
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid());
    }
    let micros = (i64::from(t.nanos) + 999) / 1_000;
    let at = DateTime::from_timestamp(t.seconds, 0)
        .and_then(|s| s.checked_add_signed(chrono::TimeDelta::microseconds(micros)))
        .ok_or_else(invalid)?;
    // PostgreSQL's timestamptz ends in the year 294276; ours in 9999 (RFC 3339 and protobuf's),
    // after the rounding (9999-12-31T23:59:59.9999995Z would round into the year 10000).
    if !(-62_135_596_800..253_402_300_800).contains(&at.timestamp()) {
        return Err(invalid());
    }
    Ok(Some(at))
}

/// The CSV's options; absent means the defaults.
pub fn csv_options_from_proto(options: Option<&pb::CsvOptions>) -> Result<CsvOptions, ExportError> {
    let Some(o) = options else {
        return Ok(CsvOptions::default());
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
    Ok(CsvOptions {
        neutralize_formulas: !o.disable_formula_neutralization,
        delimiter,
        include_bom: o.include_bom,
        line_ending,
    })
}

fn unknown_enum(field: &'static str, value: i32) -> ExportError {
    ExportError::invalid(field, format!("unknown value {value}"))
}

/// The CSV options as an `Export` echoes them: enums resolved, never `_UNSPECIFIED`.
fn csv_options_to_proto(options: CsvOptions) -> pb::CsvOptions {
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
        Ok(options) => Some(options),
        Err(e) => {
            tracing::error!(error = %e, "an export's options cannot be read");
            None
        }
    };
    let mut export = pb::Export {
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
        csv_options: None,
        cancel_requested: r.cancel_requested,
        expire_time: r.expires_at.map(timestamp),
        delete_time: r.deleted_at.map(timestamp),
        notify_url: r.notify_url.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(options) = options {
        echo_options(&mut export, &options);
    }
    export
}

/// Sets the fields of `export` that echo `options`, resolved.
pub fn echo_options(export: &mut pb::Export, options: &ExportOptions) {
    export.csv_options = Some(csv_options_to_proto(options.csv));
    export.format = match options.format {
        ExportFormat::Csv => pb::ExportFormat::Csv,
        ExportFormat::Jsonl => pb::ExportFormat::Jsonl,
        ExportFormat::Xlsx => pb::ExportFormat::Xlsx,
    } as i32;
    export.compression = match options.compression {
        Compression::None => pb::Compression::None,
        Compression::Gzip => pb::Compression::Gzip,
        Compression::Zstd => pb::Compression::Zstd,
    } as i32;
    if let Some(list) = &options.columns {
        export.columns = list.columns.iter().map(ColumnName::as_api).collect();
        export.include_other_custom_fields = list.include_other_custom_fields;
    }
    let filter = &options.filter;
    export.tag_match = match filter.tag_match {
        TagMatch::Any => pb::TagMatch::Any,
        TagMatch::All => pb::TagMatch::All,
    } as i32;
    export.exclude_tag_ids = filter.exclude_tag_ids.iter().map(Uuid::to_string).collect();
    export.created_after = filter.created_after.map(timestamp);
    export.created_before = filter.created_before.map(timestamp);
    export.subscribed_only = filter.subscribed_only;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_unspecified_options_are_the_defaults() {
        assert_eq!(csv_options_from_proto(None).unwrap(), CsvOptions::default());
        assert_eq!(
            csv_options_from_proto(Some(&pb::CsvOptions::default())).unwrap(),
            CsvOptions::default()
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
        let options = csv_options_from_proto(Some(&request)).unwrap();
        assert_eq!(
            options,
            CsvOptions {
                neutralize_formulas: false,
                delimiter: Delimiter::Tab,
                include_bom: true,
                line_ending: LineEnding::Crlf,
            }
        );
        assert_eq!(csv_options_to_proto(options), request);

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
            let options = csv_options_from_proto(Some(&request)).unwrap();
            assert_eq!(options.delimiter, domain);
            assert_eq!(csv_options_to_proto(options).delimiter, proto as i32);
        }

        // The defaults are echoed as what they are, not as UNSPECIFIED.
        let echoed = csv_options_to_proto(CsvOptions::default());
        assert_eq!(echoed.delimiter(), pb::CsvDelimiter::Comma);
        assert_eq!(echoed.line_ending(), pb::LineEnding::Lf);
    }

    #[test]
    fn unknown_enum_values_name_the_field() {
        let bad_delimiter = pb::CsvOptions {
            delimiter: 99,
            ..Default::default()
        };
        let err = csv_options_from_proto(Some(&bad_delimiter)).unwrap_err();
        assert_eq!(err.to_string(), "csv_options.delimiter: unknown value 99");
        let bad_ending = pb::CsvOptions {
            line_ending: -1,
            ..Default::default()
        };
        let err = csv_options_from_proto(Some(&bad_ending)).unwrap_err();
        assert_eq!(err.to_string(), "csv_options.line_ending: unknown value -1");
    }

    #[test]
    fn shape_and_filters_map_and_name_their_field() {
        let request = pb::CreateExportRequest {
            format: pb::ExportFormat::Jsonl as i32,
            compression: pb::Compression::Gzip as i32,
            columns: vec!["email".into(), "custom_fields.plan".into()],
            include_other_custom_fields: true,
            tag_match: pb::TagMatch::All as i32,
            exclude_tag_ids: vec![Uuid::nil().to_string(), Uuid::nil().to_string()],
            created_after: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 1,
            }),
            subscribed_only: true,
            ..Default::default()
        };
        let options = options_from_request(&request).unwrap();
        assert_eq!(options.format, ExportFormat::Jsonl);
        assert_eq!(options.compression, Compression::Gzip);
        assert_eq!(options.filter.exclude_tag_ids, vec![Uuid::nil()]);
        // One nanosecond past a second is the next microsecond.
        assert_eq!(
            options
                .filter
                .created_after
                .unwrap()
                .timestamp_subsec_micros(),
            1
        );
        let mut echoed = pb::Export::default();
        echo_options(&mut echoed, &options);
        assert_eq!(echoed.columns, request.columns);
        assert_eq!(echoed.format(), pb::ExportFormat::Jsonl);
        assert_eq!(echoed.tag_match(), pb::TagMatch::All);
        assert!(echoed.subscribed_only);

        let defaults = options_from_request(&pb::CreateExportRequest::default()).unwrap();
        assert_eq!(defaults, ExportOptions::default());
        let mut echoed = pb::Export::default();
        echo_options(&mut echoed, &defaults);
        assert_eq!(echoed.format(), pb::ExportFormat::Csv);
        assert_eq!(echoed.compression(), pb::Compression::None);
        assert_eq!(echoed.tag_match(), pb::TagMatch::Any);

        for (request, message) in [
            (
                pb::CreateExportRequest {
                    format: 9,
                    ..Default::default()
                },
                "format: unknown value 9",
            ),
            (
                pb::CreateExportRequest {
                    compression: -2,
                    ..Default::default()
                },
                "compression: unknown value -2",
            ),
            (
                pb::CreateExportRequest {
                    columns: vec!["emial".into()],
                    ..Default::default()
                },
                "columns: \"emial\" is not a column",
            ),
            (
                pb::CreateExportRequest {
                    exclude_tag_ids: vec!["x".into()],
                    ..Default::default()
                },
                "exclude_tag_ids: \"x\" is not a UUID",
            ),
            (
                pb::CreateExportRequest {
                    created_before: Some(Timestamp {
                        seconds: 0,
                        nanos: -1,
                    }),
                    ..Default::default()
                },
                "created_before: ",
            ),
            (
                // The last instant of 9999 but half a microsecond: rounded up, the year 10000.
                pb::CreateExportRequest {
                    created_after: Some(Timestamp {
                        seconds: 253_402_300_799,
                        nanos: 999_999_500,
                    }),
                    ..Default::default()
                },
                "created_after: ",
            ),
        ] {
            let error = options_from_request(&request).unwrap_err().to_string();
            assert!(error.starts_with(message), "{error}");
        }
    }
}
