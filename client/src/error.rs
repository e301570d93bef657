//! The error type of the client, and gRPC code names for messages.

use tonic::{Code, Status};

/// Everything that can go wrong in [`ExportClient`](crate::ExportClient) beyond a plain RPC.
///
/// RPC-only methods return [`tonic::Status`] directly; methods that also connect, write files
/// or verify data return this type, with RPC failures in [`ClientError::Status`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token cannot be sent as `authorization: Bearer <token>` metadata.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// The address cannot be used: an unknown scheme, or TLS settings with a plaintext
    /// `http://` address (they would be silently unused).
    #[error("cannot use address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The TLS settings cannot be used (a CA or client certificate file without PEM).
    #[error("TLS settings: {0}")]
    InvalidTls(&'static str),
    /// The address is not a valid URI, or the connection failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The server (or the client library, for a malformed stream) answered with an error.
    #[error("{}", status_line(.0))]
    Status(Status),
    /// Writing the downloaded bytes failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The downloaded file does not hash to the SHA-256 the server announced.
    #[error(
        "checksum mismatch: the server announced sha256 {expected}, the received bytes hash to \
         {actual}{}",
        restarted_note(*.restarted_after)
    )]
    ChecksumMismatch {
        /// SHA-256 from the download's metadata (lower-case hex).
        expected: String,
        /// SHA-256 of the bytes received (lower-case hex).
        actual: String,
        /// Set when a resumed download did not verify and this was the download from byte
        /// 0 that followed: the bytes that had been on disk (thrown away).
        restarted_after: Option<u64>,
    },
    /// A download that was opened again after a cut found another file than before (another
    /// size or SHA-256).
    #[error("the export's file changed during the download (sha256 {before}, now {now})")]
    FileChanged {
        /// SHA-256 announced by the first stream.
        before: String,
        /// SHA-256 announced by the stream opened again.
        now: String,
    },
    /// The stream ended with fewer (or more) bytes than the requested range holds.
    #[error("size mismatch: expected {expected} bytes, received {actual}")]
    SizeMismatch {
        /// Bytes the requested range holds according to the metadata.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
}

// Not `#[from]`: that would also make the status the error's `source`, and error reports that
// walk the chain would print it twice.
impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl ClientError {
    /// The gRPC status, when this error is an RPC error.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC code, when this error is an RPC error (`NOT_FOUND`, `FAILED_PRECONDITION`…).
    pub fn code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }
}

fn restarted_note(restarted_after: Option<u64>) -> String {
    match restarted_after {
        None => String::new(),
        Some(bytes) => format!(
            " (the {bytes} bytes of an earlier, interrupted download were not the start of \
             this file, so it was downloaded again from byte 0, and that did not verify either)"
        ),
    }
}

/// `CODE: message`, or `CODE` alone when the message is empty.
fn status_line(status: &Status) -> String {
    match status.message() {
        "" => code_name(status.code()).to_owned(),
        message => format!("{}: {message}", code_name(status.code())),
    }
}

/// The canonical gRPC name of a status code, as in the gRPC spec and `grpcurl`: `NOT_FOUND`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_read_like_grpcurl() {
        let err = ClientError::from(Status::not_found("export not found"));
        assert_eq!(err.to_string(), "NOT_FOUND: export not found");
        assert_eq!(err.status().map(Status::code), Some(Code::NotFound));
        assert!(std::error::Error::source(&err).is_none());
        assert_eq!(
            ClientError::from(Status::internal("")).to_string(),
            "INTERNAL"
        );
    }
}
