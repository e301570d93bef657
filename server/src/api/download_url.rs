//! GetExportDownloadUrl: a signed, time-limited URL of the finished file, from stores that can
//! sign one, so that large files go straight from the store to the caller.

use std::time::Duration;

use chrono::Utc;
use contact_export::v1::{ExportDownloadUrl, ExportFileMetadata};
use tonic::{Response, Status};

use super::download::{completed_file, content_type};
use super::{ExportApi, status};
use crate::auth::Principal;
use crate::exports::filename::content_disposition;
use crate::exports::repo;
use crate::ids::ExportId;

/// Without `expire_in`.
const DEFAULT: Duration = Duration::from_secs(15 * 60);
/// The longest a URL may work.
const MAX: Duration = Duration::from_secs(24 * 3600);

/// The caller's `expire_in`, checked.
#[derive(Debug, Clone, Copy)]
pub struct ExpireIn(Duration);

impl ExpireIn {
    /// Absent: 15 minutes; between 1 s and 24 h, else INVALID_ARGUMENT naming the field.
    pub fn parse(raw: Option<prost_types::Duration>) -> Result<ExpireIn, Status> {
        let Some(raw) = raw else {
            return Ok(ExpireIn(DEFAULT));
        };
        let duration = Duration::try_from(raw)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| Status::invalid_argument("expire_in: must be at least 1 second"))?;
        if duration > MAX {
            return Err(Status::invalid_argument(
                "expire_in: at most 24 hours (86400 s)",
            ));
        }
        Ok(ExpireIn(duration))
    }
}

impl ExportApi {
    pub(super) async fn download_url(
        &self,
        principal: Principal,
        id: ExportId,
        expire_in: ExpireIn,
    ) -> Result<Response<ExportDownloadUrl>, Status> {
        let record = repo::get(&mut *self.conn().await?, principal.workspace_id, id).await?;
        let (key, size, sha256) = completed_file(&record)?;
        if !self.storage.info().capability().presign_read {
            return Err(Status::failed_precondition(format!(
                "this server's storage ({}) cannot sign download URLs; use DownloadExport",
                self.storage.info().scheme()
            )));
        }
        // Never past the file's own end.
        let now = Utc::now();
        let left = record
            .expires_at
            .and_then(|at| (at - now).to_std().ok())
            .unwrap_or(expire_in.0);
        let expire = expire_in.0.min(left).max(Duration::from_secs(1));
        let signed = self
            .storage
            .presign_read_with(key, expire)
            .override_content_disposition(&content_disposition(&record.filename))
            .override_content_type(content_type(&record))
            .await
            .map_err(status::internal)?;
        let expire_time = now + chrono::TimeDelta::from_std(expire).unwrap_or_default();
        Ok(Response::new(ExportDownloadUrl {
            url: signed.uri().to_string(),
            expire_time: Some(prost_types::Timestamp {
                seconds: expire_time.timestamp(),
                nanos: expire_time.timestamp_subsec_nanos() as i32,
            }),
            file: Some(ExportFileMetadata {
                filename: record.filename.clone(),
                size_bytes: size,
                sha256: sha256.to_owned(),
                content_type: content_type(&record).to_owned(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_defaults_and_bounds() {
        assert_eq!(ExpireIn::parse(None).unwrap().0, DEFAULT);
        let secs = |s: i64| {
            Some(prost_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        assert_eq!(
            ExpireIn::parse(secs(60)).unwrap().0,
            Duration::from_secs(60)
        );
        for bad in [0, -5, 86_401] {
            let err = ExpireIn::parse(secs(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with("expire_in: "), "{err:?}");
        }
    }
}
