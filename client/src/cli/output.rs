//! How exports and file metadata are printed: aligned text, or one JSON object per line.

use std::path::Path;

use contact_export_client::{
    CsvDelimiter, Export, ExportDownloadUrl, ExportFileMetadata, ExportStatus, LineEnding, Saved,
    is_terminal,
};
use prost_types::Timestamp;
use serde_json::{Value, json};

/// `COMPLETED` for `EXPORT_STATUS_COMPLETED`.
pub fn short_status(status: ExportStatus) -> &'static str {
    let name = status.as_str_name();
    name.strip_prefix("EXPORT_STATUS_").unwrap_or(name)
}

/// An export as JSON: proto field names, the enum's proto name, RFC 3339 timestamps (or null).
pub fn export_json(export: &Export) -> Value {
    let time = |t: &Option<Timestamp>| t.as_ref().map(ToString::to_string);
    let csv = export.csv_options.unwrap_or_default();
    json!({
        "id": export.id,
        "status": export.status().as_str_name(),
        "filename": export.filename,
        "tag_ids": export.tag_ids,
        "total_rows": export.total_rows,
        "processed_rows": export.processed_rows,
        "current_step": export.current_step,
        "attempt": export.attempt,
        "error_message": export.error_message,
        "size_bytes": export.size_bytes,
        "sha256": export.sha256,
        "request_id": export.request_id,
        "cancel_requested": export.cancel_requested,
        "notify_url": export.notify_url,
        "expire_time": time(&export.expire_time),
        "delete_time": time(&export.delete_time),
        "disable_formula_neutralization": export
            .csv_options
            .is_some_and(|o| o.disable_formula_neutralization),
        "delimiter": csv.delimiter().as_str_name(),
        "include_bom": csv.include_bom,
        "line_ending": csv.line_ending().as_str_name(),
        "format": export.format().as_str_name(),
        "compression": export.compression().as_str_name(),
        "columns": export.columns,
        "include_other_custom_fields": export.include_other_custom_fields,
        "tag_match": export.tag_match().as_str_name(),
        "exclude_tag_ids": export.exclude_tag_ids,
        "created_after": time(&export.created_after),
        "created_before": time(&export.created_before),
        "subscribed_only": export.subscribed_only,
        "headers": export.headers,
        "create_time": time(&export.create_time),
        "update_time": time(&export.update_time),
        "start_time": time(&export.start_time),
        "finish_time": time(&export.finish_time),
    })
}

/// A finished download as JSON: the file metadata, where it went, how many bytes this call
/// received, and for a whole file how it came to be whole (the SHA-256 is then verified).
pub fn download_json(
    metadata: &ExportFileMetadata,
    path: &Path,
    received: u64,
    whole: Option<Saved>,
) -> Value {
    let (how, resumed_from) = match whole {
        None => (None, None),
        Some(Saved::Downloaded) => (Some("downloaded"), None),
        Some(Saved::Resumed { from }) => (Some("resumed"), Some(from)),
        Some(Saved::Restarted { .. }) => (Some("restarted"), None),
        Some(Saved::AlreadyComplete) => (Some("already_complete"), None),
    };
    json!({
        "filename": metadata.filename,
        "size_bytes": metadata.size_bytes,
        "sha256": metadata.sha256,
        "content_type": metadata.content_type,
        "path": path.display().to_string(),
        "bytes_written": received,
        "sha256_verified": whole.is_some(),
        "how": how,
        "resumed_from": resumed_from,
    })
}

/// A signed URL as JSON: the URL, until when, and the file it serves.
pub fn url_json(url: &ExportDownloadUrl) -> Value {
    let file = url.file.clone().unwrap_or_default();
    json!({
        "url": url.url,
        "expire_time": url.expire_time.as_ref().map(ToString::to_string),
        "filename": file.filename,
        "size_bytes": file.size_bytes,
        "sha256": file.sha256,
    })
}

/// Prints one export: a JSON line, or `key  value` lines (empty fields left out).
pub fn print_export(export: &Export, json: bool) {
    if json {
        println!("{}", export_json(export));
        return;
    }
    let time = |t: &Option<Timestamp>| t.as_ref().map(ToString::to_string).unwrap_or_default();
    let rows = if export.total_rows > 0 || export.processed_rows > 0 {
        format!("{} / {}", export.processed_rows, export.total_rows)
    } else {
        String::new()
    };
    let fields = [
        ("id", export.id.clone()),
        ("status", short_status(export.status()).to_owned()),
        ("filename", export.filename.clone()),
        ("tags", export.tag_ids.join(", ")),
        ("rows", rows),
        ("step", export.current_step.clone()),
        ("attempt", nonzero(export.attempt.into(), "")),
        ("size", nonzero(export.size_bytes, " bytes")),
        ("sha256", export.sha256.clone()),
        ("request id", export.request_id.clone()),
        ("format", format_summary(export)),
        ("csv", csv_summary(export)),
        ("columns", columns_summary(export)),
        ("filters", filter_summary(export)),
        ("headers", export.headers.join(", ")),
        ("created", time(&export.create_time)),
        ("started", time(&export.start_time)),
        ("finished", time(&export.finish_time)),
        ("expires", time(&export.expire_time)),
        ("deleted", time(&export.delete_time)),
        ("webhook", export.notify_url.clone()),
        ("error", export.error_message.clone()),
        (
            "cancel",
            if export.cancel_requested && !is_terminal(export.status()) {
                "requested".to_owned()
            } else {
                String::new()
            },
        ),
    ];
    for (key, value) in fields {
        if !value.is_empty() {
            println!("{key:<11}{value}");
        }
    }
}

/// Prints exports: JSON lines, or a table with one row per export.
pub fn print_exports(exports: &[Export], json: bool) {
    if json {
        for export in exports {
            println!("{}", export_json(export));
        }
        return;
    }
    println!(
        "{:<36}  {:<10}  {:>21}  {:<20}  FILENAME",
        "ID", "STATUS", "ROWS", "CREATED"
    );
    for export in exports {
        let created = export
            .create_time
            .as_ref()
            .map(|t| {
                let mut t = *t;
                t.nanos = 0; // second precision is enough in a table
                t.to_string()
            })
            .unwrap_or_default();
        println!(
            "{:<36}  {:<10}  {:>21}  {:<20}  {}",
            export.id,
            short_status(export.status()),
            format!("{}/{}", export.processed_rows, export.total_rows),
            created,
            export.filename,
        );
    }
}

/// The CSV options that differ from the defaults (`semicolon, BOM, CRLF`), or nothing.
/// `jsonl, gzip`; nothing for an uncompressed CSV (the default).
fn format_summary(export: &Export) -> String {
    use contact_export_client::{Compression, ExportFormat};
    let format = match export.format() {
        ExportFormat::Unspecified | ExportFormat::Csv => None,
        ExportFormat::Jsonl => Some("jsonl"),
        ExportFormat::Xlsx => Some("xlsx"),
    };
    let compression = match export.compression() {
        Compression::Unspecified | Compression::None => None,
        Compression::Gzip => Some("gzip"),
        Compression::Zstd => Some("zstd"),
    };
    match (format, compression) {
        (None, None) => String::new(),
        (format, compression) => {
            let mut parts = vec![format.unwrap_or("csv")];
            parts.extend(compression);
            parts.join(", ")
        }
    }
}

fn columns_summary(export: &Export) -> String {
    let mut summary = export.columns.join(", ");
    if export.include_other_custom_fields {
        summary.push_str(", then every other custom field");
    }
    summary
}

fn filter_summary(export: &Export) -> String {
    let mut parts = Vec::new();
    if export.tag_match() == contact_export_client::TagMatch::All {
        parts.push("all of the tags".to_owned());
    }
    if !export.exclude_tag_ids.is_empty() {
        parts.push(format!(
            "without tags {}",
            export.exclude_tag_ids.join(", ")
        ));
    }
    if let Some(after) = &export.created_after {
        parts.push(format!("created from {after}"));
    }
    if let Some(before) = &export.created_before {
        parts.push(format!("created before {before}"));
    }
    if export.subscribed_only {
        parts.push("subscribed only".to_owned());
    }
    parts.join("; ")
}

fn csv_summary(export: &Export) -> String {
    let Some(o) = export.csv_options else {
        return String::new();
    };
    let mut parts = Vec::new();
    match o.delimiter() {
        CsvDelimiter::Unspecified | CsvDelimiter::Comma => {}
        CsvDelimiter::Semicolon => parts.push("semicolon"),
        CsvDelimiter::Tab => parts.push("tab"),
        CsvDelimiter::Pipe => parts.push("pipe"),
    }
    if o.include_bom {
        parts.push("BOM");
    }
    if o.line_ending() == LineEnding::Crlf {
        parts.push("CRLF");
    }
    if o.disable_formula_neutralization {
        parts.push("formulas not neutralised");
    }
    parts.join(", ")
}

/// `n` with its unit, or nothing for 0 (not set yet).
fn nonzero(n: i64, unit: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("{n}{unit}")
    }
}
