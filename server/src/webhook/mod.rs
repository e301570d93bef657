//! Signed completion webhooks, after the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>): when an export ends, a `POST` of a JSON event to the
//! URL its caller gave, signed with the operator's secret.
//!
//! - [`secret`]: [`WebhookSecret`], parsed from `whsec_<base64>`, and its `v1,<base64>`
//!   signature of `{id}.{timestamp}.{body}`.
//! - [`allow`]: [`AllowList`], the operator's URL prefixes (`--webhook-allow`), and the check of
//!   a caller's URL against them and against internal addresses.
//! - [`event`]: [`WebhookEvent`], the body (`type`, `timestamp`, `data`).
//! - [`delivery`]: [`Delivery`], the `POST` with its headers, retries and timeouts, and its
//!   [`DeliveryOutcome`].
//! - [`config`]: [`WebhookArgs`], the operator's flags, and [`WebhookConfig`], checked from them.
//!
//! The module stands alone: it knows nothing of jobs, the pipeline or the API (only the ids of
//! [`crate::ids`]), so that whatever sends a webhook depends on it and not the other way round.

pub mod allow;
pub mod config;
pub mod delivery;
pub mod event;
pub mod secret;

pub use allow::{AddressClass, AllowList, AllowListError, WebhookUrlError};
pub use config::{WebhookArgs, WebhookConfig, WebhookConfigError};
pub use delivery::{
    AttemptError, ClientError, Delivery, DeliveryOutcome, GiveUpReason, RetryPolicy, USER_AGENT,
};
pub use event::{EventType, ExportEventData, WebhookEvent};
pub use secret::{SecretError, WebhookSecret};
