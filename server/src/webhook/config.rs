//! The operator's webhook flags, and the configuration checked from them.

use std::time::Duration;

use super::allow::{AllowList, AllowListError};
use super::delivery::{ClientError, Delivery, RetryPolicy};
use super::secret::{SecretError, WebhookSecret};

/// Flags of signed completion webhooks, for `serve` and `dev` (`#[command(flatten)]`). Neither
/// a secret nor a prefix: webhooks are off and every `notify_url` is refused.
#[derive(Clone, clap::Args)]
pub struct WebhookArgs {
    /// The key that signs webhooks (Standard Webhooks' `whsec_<base64>`, 24 to 64 random bytes),
    /// shared with the receivers. Needed with --webhook-allow.
    #[arg(
        long,
        env = "EXPORTD_WEBHOOK_SECRET",
        value_name = "whsec_…",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
    /// A URL prefix that webhooks may go to, e.g. `https://hooks.example.com/` (repeat the flag;
    /// comma-separated in the environment). Same scheme, host and port, and a path at or below
    /// the prefix's. `http` only where the prefix says so; internal addresses only where the
    /// prefix names the address (`http://127.0.0.1:8080/`). Unset: webhooks are off.
    #[arg(
        long,
        env = "EXPORTD_WEBHOOK_ALLOW",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    pub webhook_allow: Vec<String>,
    /// How long a webhook is tried before it is given up: `10m`, `1h`…
    #[arg(
        long,
        env = "EXPORTD_WEBHOOK_MAX_RETRY_TIME",
        value_name = "DURATION",
        default_value = "10m",
        value_parser = humantime::parse_duration
    )]
    pub webhook_max_retry_time: Duration,
}

/// The default of each flag: webhooks off.
impl Default for WebhookArgs {
    fn default() -> Self {
        WebhookArgs {
            webhook_secret: None,
            webhook_allow: Vec::new(),
            webhook_max_retry_time: RetryPolicy::default().max_retry_time,
        }
    }
}

impl std::fmt::Debug for WebhookArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookArgs")
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "***"),
            )
            .field("webhook_allow", &self.webhook_allow)
            .field("webhook_max_retry_time", &self.webhook_max_retry_time)
            .finish()
    }
}

/// The webhook configuration: the allow list (empty when webhooks are off) and, when they are
/// on, the secret and the retry policy.
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    pub allow: AllowList,
    /// `Some` exactly when `allow` has prefixes.
    pub secret: Option<WebhookSecret>,
    pub retry: RetryPolicy,
}

/// A webhook flag that cannot be used; each names its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("--webhook-secret: {0}")]
    Secret(SecretError),
    #[error(transparent)]
    Allow(#[from] AllowListError),
    #[error(
        "--webhook-allow is set but --webhook-secret is not: webhooks are always signed (set --webhook-secret whsec_…)"
    )]
    AllowWithoutSecret,
    #[error(
        "--webhook-secret is set but no --webhook-allow prefix is: webhooks would be refused everywhere (add --webhook-allow PREFIX)"
    )]
    SecretWithoutAllow,
    #[error("--webhook-max-retry-time must be more than 0")]
    ZeroRetryTime,
}

impl WebhookConfig {
    /// Checks the flags: a valid secret and valid prefixes, both or neither.
    pub fn from_args(args: &WebhookArgs) -> Result<Self, WebhookConfigError> {
        let secret = args
            .webhook_secret
            .as_deref()
            .filter(|text| !text.trim().is_empty())
            .map(WebhookSecret::parse)
            .transpose()
            .map_err(WebhookConfigError::Secret)?;
        let prefixes: Vec<&str> = args
            .webhook_allow
            .iter()
            .map(|prefix| prefix.trim())
            .filter(|prefix| !prefix.is_empty())
            .collect();
        let allow = AllowList::new(&prefixes)?;
        match (&secret, allow.is_enabled()) {
            (None, true) => return Err(WebhookConfigError::AllowWithoutSecret),
            (Some(_), false) => return Err(WebhookConfigError::SecretWithoutAllow),
            _ => {}
        }
        if args.webhook_max_retry_time.is_zero() {
            return Err(WebhookConfigError::ZeroRetryTime);
        }
        Ok(WebhookConfig {
            allow,
            secret,
            retry: RetryPolicy {
                max_retry_time: args.webhook_max_retry_time,
                ..RetryPolicy::default()
            },
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.secret.is_some() && self.allow.is_enabled()
    }

    /// The sender of webhooks; `None` when they are off.
    pub fn delivery(&self) -> Result<Option<Delivery>, ClientError> {
        match &self.secret {
            Some(secret) if self.allow.is_enabled() => {
                Delivery::new(secret.clone(), self.allow.clone(), self.retry.clone()).map(Some)
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        webhooks: WebhookArgs,
    }

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn parse(args: &[&str]) -> WebhookArgs {
        Cli::try_parse_from(std::iter::once("exportd").chain(args.iter().copied()))
            .unwrap()
            .webhooks
    }

    #[test]
    fn without_flags_webhooks_are_off() {
        let args = parse(&[]);
        assert_eq!(args.webhook_max_retry_time, Duration::from_secs(600));
        assert_eq!(
            WebhookArgs::default().webhook_max_retry_time,
            args.webhook_max_retry_time
        );
        assert!(
            !WebhookConfig::from_args(&WebhookArgs::default())
                .unwrap()
                .is_enabled()
        );
        let config = WebhookConfig::from_args(&args).unwrap();
        assert!(!config.is_enabled());
        assert!(config.delivery().unwrap().is_none());
    }

    #[test]
    fn takes_a_secret_with_repeated_prefixes() {
        let args = parse(&[
            "--webhook-secret",
            SECRET,
            "--webhook-allow",
            "https://hooks.example.com/",
            "--webhook-allow",
            "http://127.0.0.1:9000/",
            "--webhook-max-retry-time",
            "90s",
        ]);
        let config = WebhookConfig::from_args(&args).unwrap();
        assert!(config.is_enabled());
        assert_eq!(
            config.allow.prefixes().collect::<Vec<_>>(),
            ["https://hooks.example.com/", "http://127.0.0.1:9000/"]
        );
        assert_eq!(config.retry.max_retry_time, Duration::from_secs(90));
        assert_eq!(config.retry.per_try_timeout, Duration::from_secs(10));
        assert!(config.delivery().unwrap().is_some());
    }

    #[test]
    fn prefixes_split_on_commas() {
        let args = parse(&[
            "--webhook-secret",
            SECRET,
            "--webhook-allow",
            "https://a.example.com/,https://b.example.com/hooks",
        ]);
        let config = WebhookConfig::from_args(&args).unwrap();
        assert_eq!(config.allow.prefixes().count(), 2);
    }

    #[test]
    fn one_without_the_other_is_an_error_naming_the_flag() {
        let error =
            WebhookConfig::from_args(&parse(&["--webhook-allow", "https://a.example.com/"]))
                .unwrap_err();
        assert_eq!(error, WebhookConfigError::AllowWithoutSecret);
        assert!(error.to_string().contains("--webhook-secret"));
        let error = WebhookConfig::from_args(&parse(&["--webhook-secret", SECRET])).unwrap_err();
        assert_eq!(error, WebhookConfigError::SecretWithoutAllow);
        assert!(error.to_string().contains("--webhook-allow"));
    }

    #[test]
    fn bad_values_name_their_flag_and_hide_the_secret() {
        let error = WebhookConfig::from_args(&parse(&[
            "--webhook-secret",
            "whsec_c2hvcnQ=",
            "--webhook-allow",
            "https://a.example.com/",
        ]))
        .unwrap_err();
        assert!(
            error.to_string().starts_with("--webhook-secret: "),
            "{error}"
        );
        assert!(!error.to_string().contains("c2hvcnQ"), "{error}");
        let error = WebhookConfig::from_args(&parse(&[
            "--webhook-secret",
            SECRET,
            "--webhook-allow",
            "ftp://a.example.com/",
        ]))
        .unwrap_err();
        assert!(error.to_string().starts_with("--webhook-allow"), "{error}");
        let error = WebhookConfig::from_args(&parse(&[
            "--webhook-secret",
            SECRET,
            "--webhook-allow",
            "https://a.example.com/",
            "--webhook-max-retry-time",
            "0s",
        ]))
        .unwrap_err();
        assert_eq!(error, WebhookConfigError::ZeroRetryTime);
    }

    #[test]
    fn debug_redacts_the_secret() {
        let args = parse(&["--webhook-secret", SECRET]);
        let shown = format!("{args:?}");
        assert!(!shown.contains("C2FV"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        let config = WebhookConfig::from_args(&parse(&[
            "--webhook-secret",
            SECRET,
            "--webhook-allow",
            "https://a.example.com/",
        ]))
        .unwrap();
        let shown = format!("{config:?} {:?}", config.delivery().unwrap());
        assert!(!shown.contains("C2FV"), "{shown}");
    }
}
