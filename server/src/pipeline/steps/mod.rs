//! The four steps of `process-export`. Each is a function from its inputs to a typed output
//! that the runner persists; none of them decides about retries, status or memoisation.

pub mod resolve_export_metadata;
pub mod resolve_tag_filter;
pub mod send_notification;
pub mod stream_export;
