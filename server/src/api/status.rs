//! Domain errors as gRPC statuses: one exhaustive mapping, so no new error ships unmapped.

use tonic::Status;

use crate::exports::ExportError;

impl From<ExportError> for Status {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::InvalidArgument { field, message } => {
                Status::invalid_argument(format!("{field}: {message}"))
            }
            // Never say whether the id exists in another workspace.
            ExportError::NotFound => Status::not_found("export not found"),
            ExportError::FailedPrecondition(m) => Status::failed_precondition(m),
            ExportError::OutOfRange(m) => Status::out_of_range(m),
            ExportError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ExportError::Internal(e) => internal(e),
        }
    }
}

/// Logs an internal failure (once, here, where it is handled) and hides it from the caller.
pub(super) fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "request failed");
    Status::internal("internal error; the service's logs have the details")
}
