//! Step 2: the custom-field columns and the row count, from the export's snapshot.

use serde::{Deserialize, Serialize};

use crate::pipeline::format::columns::sort_keys;
use crate::pipeline::selection::Selection;
use crate::pipeline::snapshot::Snapshot;
use crate::pipeline::step::StepError;

/// The persisted output. It describes one snapshot: a new snapshot needs it recomputed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportMetadata {
    /// Data rows the file will hold.
    pub total_rows: i64,
    /// Custom-field keys of those rows, sorted by code point.
    pub custom_keys: Vec<String>,
}

/// Counts rows and collects keys in `snapshot`, in one pass over the rows.
pub async fn run(snapshot: &Snapshot, selection: &Selection) -> Result<ExportMetadata, StepError> {
    let (total_rows, mut custom_keys) = snapshot
        .metadata(selection)
        .await
        .map_err(StepError::read)?;
    sort_keys(&mut custom_keys);
    Ok(ExportMetadata {
        total_rows,
        custom_keys,
    })
}
