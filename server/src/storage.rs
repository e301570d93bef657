//! Where finished files live: an OpenDAL operator, chosen by URI.

use opendal::Operator;
use uuid::Uuid;

/// Content type of every export file.
pub const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";

/// Builds an operator from a storage URI: `fs:///var/lib/exports`, `memory://`,
/// `s3://bucket/prefix?region=…&endpoint=…`, or any scheme OpenDAL registers.
pub fn operator_from_uri(uri: &str) -> Result<Operator, opendal::Error> {
    opendal::init_default_registry();
    Operator::from_uri(uri)
}

/// The object of an export. The workspace is part of the key, so that no bug in a lookup can
/// hand one workspace another's file by guessing an id, and so that a workspace's files can be
/// listed or purged together.
pub fn object_key(workspace_id: Uuid, export_id: Uuid) -> String {
    format!("exports/{workspace_id}/{export_id}.csv")
}
