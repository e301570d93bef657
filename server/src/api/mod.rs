//! The gRPC surface: `contactexport.v1.ExportService`.
//!
//! Handlers are thin: authenticate, parse the request into a domain type, call [`crate::exports`]
//! (or start a stream), map the result back. Each streaming call lives in its own file.

mod auth;
mod convert;
mod download;
mod download_url;
mod dry_run;
mod shared_read;
mod status;
mod watch;

use std::pin::Pin;

use contact_export::v1::export_service_server::ExportService;
use contact_export::v1::{
    CancelExportRequest, CreateExportRequest, DeleteExportRequest, DownloadExportRequest,
    DownloadExportResponse, Export, ExportDownloadUrl, GetExportDownloadUrlRequest,
    GetExportRequest, ListExportsRequest, ListExportsResponse, WatchExportRequest,
};
use futures::Stream;
use opendal::Operator;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::db::{DbError, PgPool, PooledConn};
use crate::events::Events;
use crate::exports::{ExportError, ExportRecord, NewExport, repo};
use crate::janitor;
use crate::metrics::Metrics;
use crate::webhook::AllowList;
use shared_read::SharedReads;

pub use contact_export::v1::export_service_server::ExportServiceServer;

/// What the handlers share.
#[derive(Clone)]
pub struct ExportApi {
    pool: PgPool,
    storage: Operator,
    events: Events,
    /// A workspace's cap on exports pending or processing; CreateExport beyond it is
    /// RESOURCE_EXHAUSTED.
    max_queued_exports: u32,
    /// Ends open streams when the server stops, so that graceful shutdown does not wait for a
    /// long export's watchers.
    shutdown: CancellationToken,
    /// One read per change for all the watchers of an export.
    shared_reads: SharedReads<ExportRecord>,
    /// Objects removed by DeleteExport count in this replica's metrics.
    metrics: Metrics,
    /// The prefixes a `notify_url` must start with (none: webhooks refused).
    webhook_allow: AllowList,
}

impl ExportApi {
    pub fn new(
        pool: PgPool,
        storage: Operator,
        events: Events,
        max_queued_exports: u32,
        shutdown: CancellationToken,
        metrics: Metrics,
        webhook_allow: AllowList,
    ) -> Self {
        ExportApi {
            pool,
            storage,
            events,
            max_queued_exports,
            shutdown,
            shared_reads: SharedReads::default(),
            metrics,
            webhook_allow,
        }
    }

    async fn conn(&self) -> Result<PooledConn, Status> {
        self.pool
            .get()
            .await
            .map_err(|e| status::internal(DbError::from(e)))
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ExportService for ExportApi {
    async fn create_export(
        &self,
        request: Request<CreateExportRequest>,
    ) -> Result<Response<Export>, Status> {
        let principal = self.authenticate(&request).await?;
        let req = request.into_inner();
        let notify_url = match req.notify_url.trim() {
            "" => None,
            url => Some(
                self.webhook_allow
                    .check(url)
                    .await
                    .map_err(|e| ExportError::invalid("notify_url", e.to_string()))?
                    .to_string(),
            ),
        };
        let mut new = NewExport::parse(
            &req.tag_ids,
            &req.filename,
            &req.request_id,
            convert::options_from_request(&req)?,
            chrono::Utc::now(),
        )?;
        new.notify_url = notify_url;
        if req.validate_only {
            return self.dry_run(principal, new).await.map(Response::new);
        }
        let record = repo::create(
            &mut *self.conn().await?,
            principal,
            new,
            self.max_queued_exports,
        )
        .await?;
        // This replica's idle worker starts it without waiting for the NOTIFY round trip.
        self.events.wake_worker();
        Ok(Response::new(convert::export_to_proto(&record)))
    }

    async fn get_export(
        &self,
        request: Request<GetExportRequest>,
    ) -> Result<Response<Export>, Status> {
        let principal = self.authenticate(&request).await?;
        let id = convert::parse_id(&request.get_ref().id)?;
        let record = repo::get(&mut *self.conn().await?, principal.workspace_id, id).await?;
        Ok(Response::new(convert::export_to_proto(&record)))
    }

    async fn list_exports(
        &self,
        request: Request<ListExportsRequest>,
    ) -> Result<Response<ListExportsResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let req = request.into_inner();
        let (records, next) = repo::list(
            &mut *self.conn().await?,
            principal.workspace_id,
            req.page_size,
            &req.page_token,
        )
        .await?;
        Ok(Response::new(ListExportsResponse {
            exports: records.iter().map(convert::export_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    type WatchExportStream = ResponseStream<Export>;

    async fn watch_export(
        &self,
        request: Request<WatchExportRequest>,
    ) -> Result<Response<Self::WatchExportStream>, Status> {
        let principal = self.authenticate(&request).await?;
        let id = convert::parse_id(&request.get_ref().id)?;
        self.watch(principal, id).await
    }

    type DownloadExportStream = ResponseStream<DownloadExportResponse>;

    async fn download_export(
        &self,
        request: Request<DownloadExportRequest>,
    ) -> Result<Response<Self::DownloadExportStream>, Status> {
        let principal = self.authenticate(&request).await?;
        let req = request.into_inner();
        let id = convert::parse_id(&req.id)?;
        let range = download::Range::parse(req.read_offset, req.read_limit)?;
        self.download(principal, id, range).await
    }

    async fn cancel_export(
        &self,
        request: Request<CancelExportRequest>,
    ) -> Result<Response<Export>, Status> {
        let principal = self.authenticate(&request).await?;
        let id = convert::parse_id(&request.get_ref().id)?;
        let record = repo::cancel(&mut *self.conn().await?, principal.workspace_id, id).await?;
        Ok(Response::new(convert::export_to_proto(&record)))
    }

    async fn delete_export(
        &self,
        request: Request<DeleteExportRequest>,
    ) -> Result<Response<Export>, Status> {
        let principal = self.authenticate(&request).await?;
        let id = convert::parse_id(&request.get_ref().id)?;
        let record = repo::delete(&mut *self.conn().await?, principal.workspace_id, id).await?;
        janitor::remove_objects(&self.pool, &self.storage, &self.metrics, &record).await;
        Ok(Response::new(convert::export_to_proto(&record)))
    }

    async fn get_export_download_url(
        &self,
        request: Request<GetExportDownloadUrlRequest>,
    ) -> Result<Response<ExportDownloadUrl>, Status> {
        let principal = self.authenticate(&request).await?;
        let req = request.into_inner();
        let id = convert::parse_id(&req.id)?;
        let expire_in = download_url::ExpireIn::parse(req.expire_in)?;
        self.download_url(principal, id, expire_in).await
    }
}
