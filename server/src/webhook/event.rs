//! The body of a webhook: Standard Webhooks' recommended envelope (`type`, `timestamp`, `data`)
//! around a thin summary of the export that ended.
//!
//! ```json
//! {
//!   "type": "export.completed",
//!   "timestamp": "2026-05-01T12:00:00.000000Z",
//!   "data": {
//!     "export_id": "…", "workspace_id": "…", "status": "completed",
//!     "total_rows": 1200, "processed_rows": 1200, "size_bytes": 48211,
//!     "sha256": "…", "error_message": null, "filename": "contacts.csv"
//!   }
//! }
//! ```
//!
//! Every field is always present (`null` when unknown), so that each type has one schema.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ExportId, WorkspaceId};

/// What happened to the export: the `type` of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "export.completed")]
    ExportCompleted,
    #[serde(rename = "export.failed")]
    ExportFailed,
    #[serde(rename = "export.cancelled")]
    ExportCancelled,
    #[serde(rename = "export.expired")]
    ExportExpired,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::ExportCompleted,
        EventType::ExportFailed,
        EventType::ExportCancelled,
        EventType::ExportExpired,
    ];

    /// The `type` as sent: `export.completed`…
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ExportCompleted => "export.completed",
            EventType::ExportFailed => "export.failed",
            EventType::ExportCancelled => "export.cancelled",
            EventType::ExportExpired => "export.expired",
        }
    }

    /// The export status the event reports (`data.status`), as stored in `exports.status`.
    pub fn status(self) -> &'static str {
        match self {
            EventType::ExportCompleted => "completed",
            EventType::ExportFailed => "failed",
            EventType::ExportCancelled => "cancelled",
            EventType::ExportExpired => "expired",
        }
    }

    /// The event of an export that reached `status` (`completed`, `failed`, `cancelled`,
    /// `expired`); `None` for a status that is no end (`pending`, `processing`).
    pub fn for_status(status: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.status() == status)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One webhook's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event happened (not when it is delivered), RFC 3339 in UTC.
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    pub data: ExportEventData,
}

/// The export, as the event reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct ExportEventData {
    pub export_id: ExportId,
    pub workspace_id: WorkspaceId,
    /// The export's status: [`EventType::status`] of the event's type.
    pub status: String,
    pub total_rows: i64,
    pub processed_rows: i64,
    /// The file's size; `null` but for a completed export.
    pub size_bytes: Option<i64>,
    /// The file's SHA-256 (hex); `null` but for a completed export.
    pub sha256: Option<String>,
    /// Why the export failed; `null` but for a failed one.
    pub error_message: Option<String>,
    pub filename: String,
}

impl WebhookEvent {
    /// The `webhook-id` of this event: the same for every try and every delivery of it (a
    /// resumed job sends the same id), different for each event of an export. Derived from the
    /// export's id and the type, so it never holds a `.` (the spec forbids one there).
    pub fn webhook_id(&self) -> String {
        let kind = self.event_type.status();
        format!("msg_{}_{kind}", self.data.export_id.as_uuid().simple())
    }

    /// The body as sent (compact JSON): the bytes that are signed.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a WebhookEvent always serialises")
    }
}

/// RFC 3339 timestamps in UTC with microseconds (`2022-11-03T20:26:10.344522Z`, the spec's
/// example form); chrono's own serde support is not enabled in this workspace.
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn event(event_type: EventType) -> WebhookEvent {
        WebhookEvent {
            event_type,
            timestamp: DateTime::parse_from_rfc3339("2022-11-03T20:26:10.344522Z")
                .unwrap()
                .with_timezone(&Utc),
            data: ExportEventData {
                export_id: ExportId(Uuid::from_u128(0x1f81eb52_5198_4599_803e_771906343485)),
                workspace_id: WorkspaceId(Uuid::nil()),
                status: event_type.status().to_owned(),
                total_rows: 3,
                processed_rows: 3,
                size_bytes: Some(120),
                sha256: Some("ab".repeat(32)),
                error_message: None,
                filename: "contacts.csv".to_owned(),
            },
        }
    }

    #[test]
    fn serialises_the_envelope_with_every_field() {
        let value = serde_json::to_value(event(EventType::ExportCompleted)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "export.completed",
                "timestamp": "2022-11-03T20:26:10.344522Z",
                "data": {
                    "export_id": "1f81eb52-5198-4599-803e-771906343485",
                    "workspace_id": "00000000-0000-0000-0000-000000000000",
                    "status": "completed",
                    "total_rows": 3,
                    "processed_rows": 3,
                    "size_bytes": 120,
                    "sha256": "ab".repeat(32),
                    "error_message": null,
                    "filename": "contacts.csv",
                }
            })
        );
    }

    #[test]
    fn round_trips_and_names_every_type() {
        for event_type in EventType::ALL {
            let event = event(event_type);
            let body = event.to_body();
            let back: WebhookEvent = serde_json::from_slice(&body).unwrap();
            assert_eq!(back, event);
            assert_eq!(
                serde_json::to_value(event_type).unwrap(),
                serde_json::json!(event_type.as_str())
            );
            assert_eq!(EventType::for_status(event_type.status()), Some(event_type));
        }
        assert_eq!(EventType::for_status("processing"), None);
    }

    #[test]
    fn webhook_ids_are_stable_per_event_and_have_no_dot() {
        let completed = event(EventType::ExportCompleted);
        assert_eq!(completed.webhook_id(), completed.clone().webhook_id());
        assert_eq!(
            completed.webhook_id(),
            "msg_1f81eb5251984599803e771906343485_completed"
        );
        assert_ne!(
            completed.webhook_id(),
            event(EventType::ExportExpired).webhook_id()
        );
        assert!(!completed.webhook_id().contains('.'));
    }
}
