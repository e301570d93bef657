//! `CreateExport` with `validate_only` (AIP-163): every check a create makes (fields, tags,
//! the workspace's cap), then the export it would create, with the number of contacts that
//! match now and the file's header row. Nothing is written and no `request_id` is bound.

use contact_export::v1::{Export, ExportStatus};
use tonic::Status;
use uuid::Uuid;

use super::{ExportApi, convert, status};
use crate::auth::Principal;
use crate::exports::{NewExport, repo};
use crate::pipeline::preview::preview;
use crate::pipeline::selection::Selection;

impl ExportApi {
    pub(super) async fn dry_run(
        &self,
        principal: Principal,
        new: NewExport,
    ) -> Result<Export, Status> {
        let mut conn = self.conn().await?;
        repo::check_new(
            &mut conn,
            principal.workspace_id,
            &new,
            self.max_queued_exports,
        )
        .await?;
        let selection = Selection {
            workspace_id: principal.workspace_id,
            tag_ids: new.tag_ids.clone(),
            filter: new.options.filter.clone(),
        };
        let preview = preview(&mut conn, &selection, &new.options)
            .await
            .map_err(status::internal)?;
        let mut export = Export {
            status: ExportStatus::Pending as i32,
            filename: new.filename.clone(),
            tag_ids: new.tag_ids.iter().map(Uuid::to_string).collect(),
            total_rows: preview.total_rows,
            request_id: new.request_id.clone().unwrap_or_default(),
            notify_url: new.notify_url.clone().unwrap_or_default(),
            headers: preview.headers,
            ..Export::default()
        };
        convert::echo_options(&mut export, &new.options);
        Ok(export)
    }
}
