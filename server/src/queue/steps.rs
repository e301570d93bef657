//! The persisted steps of a job: their names, how each ended, and their outputs.

use std::collections::HashMap;
use std::fmt;

use crate::ids::ExportId;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::de::DeserializeOwned;

use crate::db::schema::export_steps;

/// The steps of `process-export`, in order. Stored by [`StepName::as_str`] in
/// `export_steps.step` and shown to callers as `Export.current_step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepName {
    ResolveTagFilter,
    ResolveExportMetadata,
    StreamExport,
    SendNotification,
    /// After the export ended: the caller's webhook, once per end it is told of.
    SendWebhook,
}

impl StepName {
    /// Every step, in the order they run.
    pub const ALL: [StepName; 5] = [
        StepName::ResolveTagFilter,
        StepName::ResolveExportMetadata,
        StepName::StreamExport,
        StepName::SendNotification,
        StepName::SendWebhook,
    ];

    /// The stored (and shown) name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::ResolveTagFilter => "resolve-tag-filter",
            StepName::ResolveExportMetadata => "resolve-export-metadata",
            StepName::StreamExport => "stream-export",
            StepName::SendNotification => "send-notification",
            StepName::SendWebhook => "send-webhook",
        }
    }

    /// The step of a stored name.
    pub fn parse(name: &str) -> Option<StepName> {
        StepName::ALL.into_iter().find(|step| step.as_str() == name)
    }

    /// Its position in [`StepName::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step's last attempt ended, as stored in `export_steps.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Started and not ended: running now, or its worker died, stalled or handed it back.
    Running,
    Succeeded,
    Failed,
    /// Not needed (no mail wanted, nothing matched): its output says why.
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }

    /// The status of a stored value; the table's CHECK constraint allows nothing else.
    pub fn parse(status: &str) -> Option<StepStatus> {
        [
            StepStatus::Running,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Skipped,
        ]
        .into_iter()
        .find(|s| s.as_str() == status)
    }
}

/// The stored state of one step of one export.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub step: StepName,
    pub status: StepStatus,
    /// Attempts started, whatever became of them.
    pub attempts: i32,
    /// Attempts that failed (not those handed back or taken over).
    pub failures: i32,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// A stored step output that does not read as the type the step writes.
#[derive(Debug, thiserror::Error)]
#[error("the stored output of step {step} cannot be read: {source}")]
pub struct UnreadableOutput {
    pub step: StepName,
    #[source]
    pub source: serde_json::Error,
}

impl StepRecord {
    /// The output of a step that is done (succeeded, or skipped as not needed), typed;
    /// `Ok(None)` when it is not done. An output that does not read is an error, never "not
    /// done": the step must not silently run again over what it did.
    pub fn done_output<T: DeserializeOwned>(&self) -> Result<Option<T>, UnreadableOutput> {
        if !matches!(self.status, StepStatus::Succeeded | StepStatus::Skipped) {
            return Ok(None);
        }
        let Some(output) = &self.output else {
            return Ok(None);
        };
        serde_json::from_value(output.clone())
            .map(Some)
            .map_err(|source| UnreadableOutput {
                step: self.step,
                source,
            })
    }
}

type StoredRow = (
    String,
    String,
    i32,
    i32,
    Option<serde_json::Value>,
    Option<String>,
);

/// Every step recorded for an export, by name. Rows of steps this version does not know
/// (none today) are left out.
pub async fn load(
    conn: &mut AsyncPgConnection,
    export_id: ExportId,
) -> QueryResult<HashMap<StepName, StepRecord>> {
    let rows: Vec<StoredRow> = export_steps::table
        .filter(export_steps::export_id.eq(export_id))
        .select((
            export_steps::step,
            export_steps::status,
            export_steps::attempts,
            export_steps::failures,
            export_steps::output,
            export_steps::error,
        ))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(step, status, attempts, failures, output, error)| {
            let step = StepName::parse(&step)?;
            Some((
                step,
                StepRecord {
                    step,
                    status: StepStatus::parse(&status)?,
                    attempts,
                    failures,
                    output,
                    error,
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_statuses_round_trip() {
        for step in StepName::ALL {
            assert_eq!(StepName::parse(step.as_str()), Some(step));
            assert_eq!(StepName::ALL[step.index()], step);
        }
        assert_eq!(StepName::parse("stream"), None);
        for status in ["running", "succeeded", "failed", "skipped"] {
            assert_eq!(StepStatus::parse(status).unwrap().as_str(), status);
        }
    }

    #[test]
    fn an_unreadable_output_is_an_error_not_a_step_to_run_again() {
        let record = |status, output| StepRecord {
            step: StepName::StreamExport,
            status,
            attempts: 1,
            failures: 0,
            output,
            error: None,
        };
        let good = record(StepStatus::Succeeded, Some(json!(7)));
        assert_eq!(good.done_output::<i64>().unwrap(), Some(7));
        let failed = record(StepStatus::Failed, Some(json!(7)));
        assert_eq!(failed.done_output::<i64>().unwrap(), None);
        let garbled = record(StepStatus::Succeeded, Some(json!({"x": 1})));
        let err = garbled.done_output::<i64>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the stored output of step stream-export cannot be read"),
            "{err}"
        );
    }
}
