//! When a download is tried again: a server that is going away (UNAVAILABLE) or a connection
//! cut under a stream, with a growing pause between tries.

use std::time::Duration;

use tonic::{Code, Status};

/// How downloads recover from a cut connection or an `UNAVAILABLE` server: the stream is
/// opened again at the byte reached, after a pause that doubles from `first_backoff` up to
/// `max_backoff`. `attempts` counts the tries in a row that received nothing; a try that
/// received bytes starts the count again, so a long download over a flaky link goes on as
/// long as it makes progress.
///
/// Set with [`ExportClient::with_retry`](crate::ExportClient::with_retry); the default makes
/// 5 tries over about 3 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in a row without a byte received before giving up (1: never retry).
    pub attempts: u32,
    /// Pause before the first retry.
    pub first_backoff: Duration,
    /// Longest pause between two tries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries: the first failure is the result.
    pub const NEVER: RetryPolicy = RetryPolicy {
        attempts: 1,
        first_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// The pause before retry number `retry` (0 for the first).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        self.first_backoff
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_backoff)
    }
}

/// Whether trying again may succeed: the server said it is unavailable (shutting down, or not
/// reachable), or the connection broke under the call. Every other status is the server's
/// answer and would be the same again.
pub fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // tonic reports a stream cut by the connection as UNKNOWN, INTERNAL or CANCELLED with
        // the transport's error as the source; the server's own answers have no source.
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let pauses: Vec<_> = (0..6).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(RetryPolicy::NEVER.backoff(3), Duration::ZERO);
    }

    #[test]
    fn only_unavailable_and_cut_connections_are_retried() {
        assert!(is_retryable(&Status::unavailable("shutting down")));
        assert!(!is_retryable(&Status::internal("the server's own failure")));
        assert!(!is_retryable(&Status::not_found("export not found")));
        assert!(!is_retryable(&Status::data_loss("truncated")));
        let cut = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_retryable(&cut), "{cut:?}");
    }
}
