//! Sending one event to one URL, with retries, the way Standard Webhooks describes it.
//!
//! Each try is a `POST` of the same JSON body with `webhook-id` (the same on every try),
//! `webhook-timestamp` (unix seconds, of this try) and `webhook-signature` (`v1,…`, over this
//! try's timestamp). A `2xx` answer is a delivery. Connection errors, timeouts, `408`, `429` and
//! `5xx` are tried again after an exponential backoff with jitter (or the `Retry-After` seconds
//! of the answer, capped, when longer); a redirect (never followed: it could leave the allow
//! list) or any other `4xx` ends the delivery at once. After [`RetryPolicy::max_retry_time`]
//! no further try starts, and no try outlasts it.
//!
//! The URL is checked against the allow list again before the first try, and every connection
//! goes through a resolver that keeps public addresses only ([`super::allow::classify`]), so a
//! name that resolved to a public address at check time and to an internal one now (DNS
//! rebinding) is not connected to. An IP-literal URL is only ever under a prefix that names that
//! address, so it needs no resolver. No proxy is used (a proxy would resolve the name itself).

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};

use super::allow::{AllowList, WebhookUrlError, classify};
use super::event::WebhookEvent;
use super::secret::WebhookSecret;

/// The `user-agent` of every try.
pub const USER_AGENT: &str = "contact-export-webhooks";

/// The least time left before [`RetryPolicy::max_retry_time`] for which another try is
/// started.
pub const LEAST_TRY_TIME: Duration = Duration::from_millis(250);

/// How long a delivery may take and how its tries are spaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The longest one try may take, connection and answer included.
    pub per_try_timeout: Duration,
    /// No try starts after this much time since the first (and none outlasts it), nor with
    /// less than [`LEAST_TRY_TIME`] (or `per_try_timeout`, if shorter) of it left: then the
    /// delivery is given up.
    pub max_retry_time: Duration,
    /// The wait after the first failed try; it doubles after each further one.
    pub first_backoff: Duration,
    /// The longest wait between tries (before jitter).
    pub max_backoff: Duration,
    /// The longest wait a `Retry-After` answer is granted.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 10 s a try, tries for 10 minutes, waits of 1 s doubling up to 1 minute, `Retry-After`
    /// granted up to 2 minutes.
    fn default() -> Self {
        RetryPolicy {
            per_try_timeout: Duration::from_secs(10),
            max_retry_time: Duration::from_secs(10 * 60),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// A try was answered with `status` (2xx).
    Delivered {
        status: u16,
        attempts: u32,
        elapsed: Duration,
    },
    /// No try succeeded: `last_error` says why the last one failed. `attempts` is 0 when the URL
    /// was refused before any try.
    GaveUp {
        reason: GiveUpReason,
        attempts: u32,
        elapsed: Duration,
        last_error: AttemptError,
    },
}

impl DeliveryOutcome {
    pub fn is_delivered(&self) -> bool {
        matches!(self, DeliveryOutcome::Delivered { .. })
    }

    pub fn attempts(&self) -> u32 {
        match self {
            DeliveryOutcome::Delivered { attempts, .. }
            | DeliveryOutcome::GaveUp { attempts, .. } => *attempts,
        }
    }
}

impl std::fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryOutcome::Delivered {
                status, attempts, ..
            } => write!(f, "delivered ({status}) after {attempts} attempt(s)"),
            DeliveryOutcome::GaveUp {
                reason,
                attempts,
                last_error,
                ..
            } => write!(
                f,
                "given up after {attempts} attempt(s) ({reason}): {last_error}"
            ),
        }
    }
}

/// Why a delivery was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The last failure is not one a retry can mend (a `4xx`, a redirect, a refused URL or
    /// address).
    NotRetryable,
    /// The failures could have passed, but [`RetryPolicy::max_retry_time`] has.
    OutOfTime,
}

impl std::fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GiveUpReason::NotRetryable => "not retryable",
            GiveUpReason::OutOfTime => "out of time",
        })
    }
}

/// Why one try failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// The URL no longer passes the allow list (which may have changed since it was taken).
    #[error("{0}")]
    Refused(WebhookUrlError),
    /// The host resolves to no address a webhook may reach (now).
    #[error("{0}")]
    BlockedAddress(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {status}")]
    Status { status: u16 },
    #[error("answered {status} with a redirect{}, which is not followed: update the webhook URL", .location.as_ref().map(|l| format!(" to {l}")).unwrap_or_default())]
    Redirect {
        status: u16,
        location: Option<String>,
    },
    #[error("request failed: {0}")]
    Request(String),
}

/// Sends webhooks: the secret that signs them, the allow list they must pass and the HTTP
/// client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Delivery {
    client: reqwest::Client,
    secret: WebhookSecret,
    allow: AllowList,
    policy: RetryPolicy,
}

/// The HTTP client could not be built (its TLS roots, most likely).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhooks' HTTP client: {0}")]
pub struct ClientError(String);

impl Delivery {
    pub fn new(
        secret: WebhookSecret,
        allow: AllowList,
        policy: RetryPolicy,
    ) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .retry(reqwest::retry::never())
            .dns_resolver(Arc::new(PublicResolver))
            .http1_only()
            .referer(false)
            .connect_timeout(policy.per_try_timeout)
            .build()
            .map_err(|e| ClientError(describe(&e)))?;
        Ok(Delivery {
            client,
            secret,
            allow,
            policy,
        })
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Delivers `event` to `url`, trying again as the policy allows; never panics and never
    /// fails otherwise than by its outcome. Dropping the future stops it (between or during
    /// tries).
    pub async fn deliver(&self, url: &str, event: &WebhookEvent) -> DeliveryOutcome {
        let id = event.webhook_id();
        let outcome = self
            .deliver_body(url, &id, Bytes::from(event.to_body()))
            .await;
        match &outcome {
            DeliveryOutcome::Delivered { .. } => {
                tracing::info!(webhook_id = %id, event = %event.event_type, %outcome, "webhook delivered")
            }
            DeliveryOutcome::GaveUp { .. } => {
                tracing::warn!(webhook_id = %id, event = %event.event_type, %outcome, "webhook not delivered")
            }
        }
        outcome
    }

    async fn deliver_body(&self, url: &str, id: &str, body: Bytes) -> DeliveryOutcome {
        let start = Instant::now();
        let deadline = start + self.policy.max_retry_time;
        let url = match self.allow.check_form(url) {
            Ok((url, _)) => url,
            Err(error) => {
                return DeliveryOutcome::GaveUp {
                    reason: GiveUpReason::NotRetryable,
                    attempts: 0,
                    elapsed: start.elapsed(),
                    last_error: AttemptError::Refused(error),
                };
            }
        };
        let mut backoff = self.policy.first_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let timeout = self
                .policy
                .per_try_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let failure = match self.try_once(&url, id, body.clone(), timeout).await {
                Ok(status) => {
                    return DeliveryOutcome::Delivered {
                        status,
                        attempts,
                        elapsed: start.elapsed(),
                    };
                }
                Err(failure) => failure,
            };
            let give_up = |reason| DeliveryOutcome::GaveUp {
                reason,
                attempts,
                elapsed: start.elapsed(),
                last_error: failure.error.clone(),
            };
            let Retry::After(retry_after) = failure.retry else {
                return give_up(GiveUpReason::NotRetryable);
            };
            let mut wait = jitter(backoff);
            if let Some(asked) = retry_after {
                wait = wait.max(asked.min(self.policy.max_retry_after));
            }
            backoff = (backoff * 2).min(self.policy.max_backoff);
            // A try squeezed into the last instants would only time out and hide the real
            // error: the next one starts only with a useful time left.
            let least_try = self.policy.per_try_timeout.min(LEAST_TRY_TIME);
            if Instant::now() + wait + least_try > deadline {
                return give_up(GiveUpReason::OutOfTime);
            }
            tracing::debug!(webhook_id = %id, attempts, error = %failure.error, ?wait, "webhook try failed; trying again");
            tokio::time::sleep(wait).await;
        }
    }

    /// One `POST`: its status when 2xx.
    async fn try_once(
        &self,
        url: &url::Url,
        id: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<u16, Failure> {
        let timestamp = unix_now();
        let signature = self.secret.sign(id, timestamp, &body);
        let sent = self
            .client
            .post(url.clone())
            .timeout(timeout)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Err(Failure::of_request(error.without_url(), timeout)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
        };
        if status.is_redirection() {
            return Err(Failure::permanent(AttemptError::Redirect {
                status: status.as_u16(),
                location: header(LOCATION).map(str::to_owned),
            }));
        }
        let error = AttemptError::Status {
            status: status.as_u16(),
        };
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            let retry_after = header(RETRY_AFTER)
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(Failure {
                error,
                retry: Retry::After(retry_after),
            });
        }
        Err(Failure::permanent(error))
    }
}

/// A failed try, and whether to try again.
struct Failure {
    error: AttemptError,
    retry: Retry,
}

enum Retry {
    No,
    /// Yes, after the backoff, or after the answer's `Retry-After` when longer.
    After(Option<Duration>),
}

impl Failure {
    fn permanent(error: AttemptError) -> Self {
        Failure {
            error,
            retry: Retry::No,
        }
    }

    fn of_request(error: reqwest::Error, timeout: Duration) -> Self {
        if let Some(blocked) = find_source::<Blocked>(&error) {
            return Failure::permanent(AttemptError::BlockedAddress(blocked.to_string()));
        }
        if error.is_builder() {
            return Failure::permanent(AttemptError::Request(describe(&error)));
        }
        let error = if error.is_timeout() {
            AttemptError::Timeout(timeout)
        } else if error.is_connect() {
            AttemptError::Connect(describe(&error))
        } else {
            AttemptError::Request(describe(&error))
        };
        Failure {
            error,
            retry: Retry::After(None),
        }
    }
}

/// Half of `wait`, plus a random part of the other half ("equal jitter"): tries of many
/// deliveries that failed together spread out.
fn jitter(wait: Duration) -> Duration {
    let half = wait / 2;
    let extra = rand::rng().random_range(0..=half.as_micros().min(u64::MAX as u128) as u64);
    half + Duration::from_micros(extra)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An error and its sources, as one line (repeated messages once).
fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

fn find_source<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// The resolver of deliveries: the system's, keeping only the addresses a webhook may reach.
struct PublicResolver;

/// A name that resolved to no address a webhook may reach.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves to no public address (only {addrs}): webhooks go to public addresses only"
)]
struct Blocked {
    host: String,
    addrs: String,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|addr| classify(addr.ip()).is_none())
                .collect();
            if public.is_empty() {
                let addrs = all
                    .iter()
                    .map(|addr| addr.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(Blocked { host, addrs }) as Box<dyn StdError + Send + Sync>);
            }
            if public.len() < all.len() {
                tracing::warn!(%host, "webhook host resolves to some non-public addresses: skipped");
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_wait() {
        for _ in 0..100 {
            let wait = jitter(Duration::from_secs(4));
            assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_secs(4));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn describes_an_error_with_its_sources_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(describe(&outer), "refused");
    }
}
