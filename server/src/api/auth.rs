//! Who is calling: the bearer token of the request, checked before anything else.

use tonic::{Request, Status};

use super::{ExportApi, status};
use crate::auth::{Principal, bearer_token, lookup_token};

impl ExportApi {
    /// The caller's principal, or UNAUTHENTICATED.
    pub(super) async fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            Status::unauthenticated("authorization metadata must be `Bearer <token>`")
        })?;
        let mut conn = self.conn().await?;
        lookup_token(&mut conn, token)
            .await
            .map_err(|e| status::internal(crate::db::DbError::from(e)))?
            .ok_or_else(|| Status::unauthenticated("unknown, expired or revoked token"))
    }
}
