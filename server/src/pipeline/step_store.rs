//! `export_steps`: one row per export and step, holding its status, attempts and output.

use chrono::Utc;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::db::schema::export_steps as steps;

/// The stored state of one step.
#[derive(Debug, Clone, Queryable)]
pub struct StepRecord {
    pub step: String,
    pub status: String,
    pub attempts: i32,
    pub output: Option<serde_json::Value>,
}

impl StepRecord {
    /// The output of a succeeded step, typed.
    pub fn succeeded_output<T: DeserializeOwned>(&self) -> Option<T> {
        (self.status == "succeeded")
            .then(|| self.output.clone())
            .flatten()
            .and_then(|v| serde_json::from_value(v).ok())
    }
}

/// Every step recorded for an export.
pub async fn load(conn: &mut AsyncPgConnection, export_id: Uuid) -> QueryResult<Vec<StepRecord>> {
    steps::table
        .filter(steps::export_id.eq(export_id))
        .select((steps::step, steps::status, steps::attempts, steps::output))
        .load(conn)
        .await
}

/// Marks a step running and counts the attempt; returns the attempts so far, this one included.
pub async fn start(
    conn: &mut AsyncPgConnection,
    export_id: Uuid,
    step: &str,
    worker: &str,
) -> QueryResult<i32> {
    diesel::insert_into(steps::table)
        .values((
            steps::export_id.eq(export_id),
            steps::step.eq(step),
            steps::status.eq("running"),
            steps::attempts.eq(1),
            steps::worker.eq(worker),
        ))
        .on_conflict((steps::export_id, steps::step))
        .do_update()
        .set((
            steps::status.eq("running"),
            steps::attempts.eq(steps::attempts + 1),
            steps::worker.eq(excluded(steps::worker)),
            steps::error.eq(None::<String>),
            steps::started_at.eq(Utc::now()),
            steps::finished_at.eq(None::<chrono::DateTime<Utc>>),
        ))
        .returning(steps::attempts)
        .get_result(conn)
        .await
}

/// Records a step's end: `succeeded` or `skipped` with an output, `failed` with an error.
pub async fn finish<T: Serialize>(
    conn: &mut AsyncPgConnection,
    export_id: Uuid,
    step: &str,
    status: &str,
    output: Option<&T>,
    error: Option<&str>,
) -> QueryResult<()> {
    let output = output.map(|o| serde_json::to_value(o).expect("step outputs serialise"));
    diesel::insert_into(steps::table)
        .values((
            steps::export_id.eq(export_id),
            steps::step.eq(step),
            steps::status.eq(status),
            steps::output.eq(&output),
            steps::error.eq(error),
            steps::finished_at.eq(Utc::now()),
        ))
        .on_conflict((steps::export_id, steps::step))
        .do_update()
        .set((
            steps::status.eq(status),
            steps::output.eq(&output),
            steps::error.eq(error),
            steps::finished_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}
