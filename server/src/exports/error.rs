//! What can go wrong with a caller's request, in terms a caller can act on.

use crate::db::DbError;

/// A failed export operation. Every variant but `Internal` carries a message safe to show a
/// caller; `Internal` is logged where it is handled and shown only as a generic message.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("export not found")]
    NotFound,
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Internal(#[from] InternalError),
}

/// A failure of ours (database, storage), never the caller's.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("storage: {0}")]
    Storage(#[from] opendal::Error),
    /// Something that cannot happen did.
    #[error("{0}")]
    Invariant(String),
}

impl ExportError {
    /// Whether the database went away under the call (worth waiting for, not the caller's
    /// fault).
    pub fn is_transient(&self) -> bool {
        matches!(self, ExportError::Internal(InternalError::Db(e)) if e.is_transient())
    }

    /// Shorthand for a bad field.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ExportError::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

impl From<diesel::result::Error> for ExportError {
    fn from(e: diesel::result::Error) -> Self {
        ExportError::Internal(InternalError::Db(DbError::Query(e)))
    }
}

impl From<DbError> for ExportError {
    fn from(e: DbError) -> Self {
        ExportError::Internal(InternalError::Db(e))
    }
}

impl From<opendal::Error> for ExportError {
    fn from(e: opendal::Error) -> Self {
        ExportError::Internal(InternalError::Storage(e))
    }
}
