//! The signing secret of webhooks and the Standard Webhooks signature.
//!
//! A secret is written `whsec_<base64>` (the spec's "secret serialization" for symmetric
//! signatures) and holds 24 to 64 random bytes (192 to 512 bits). A signature is `v1,<base64 of
//! HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, `v1` naming the symmetric scheme.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a serialised symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The fewest bytes a secret may hold (the spec: "at least 24 bytes").
pub const MIN_SECRET_BYTES: usize = 24;
/// The most bytes a secret may hold (the spec: 512 bits).
pub const MAX_SECRET_BYTES: usize = 64;

/// A base64 decoding error (padding in the wrong place is one too).
const OUTSIDE: &str = "it has a character outside the alphabet, or `=` out of place";

/// The key that signs every webhook of this server. Its `Debug` never shows it, and it has no
/// `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

/// What is wrong with a secret. No variant holds any part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the webhook secret must start with `whsec_` followed by base64 (Standard Webhooks' form)"
    )]
    MissingPrefix,
    #[error("the webhook secret has nothing after `whsec_`")]
    Empty,
    #[error("the webhook secret after `whsec_` is not valid base64: {0}")]
    Base64(&'static str),
    #[error(
        "the webhook secret decodes to {0} bytes: it needs {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes"
    )]
    Length(usize),
}

impl WebhookSecret {
    /// Parses the `whsec_<base64>` form (padding optional).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        // The decoder's own messages quote the offending character; these do not.
        let key = STANDARD_PAD_INDIFFERENT.decode(encoded).map_err(|e| {
            SecretError::Base64(match e {
                base64::DecodeError::InvalidByte(..) => OUTSIDE,
                base64::DecodeError::InvalidLength(_) => "its length is impossible",
                base64::DecodeError::InvalidLastSymbol { .. } => "its last character is wrong",
                base64::DecodeError::InvalidPadding => "its padding is wrong",
            })
        })?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(WebhookSecret { key })
    }

    /// A new random secret (32 bytes), for an operator to hand to receivers.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        WebhookSecret { key }
    }

    /// The `whsec_<base64>` form, to give to a receiver. Never log it.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The `webhook-signature` of one try: `v1,` and the base64 of the HMAC-SHA256 of
    /// `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        WebhookSecret::parse(text)
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the Standard Webhooks reference library for Rust:
    /// github.com/standard-webhooks/standard-webhooks, `libraries/rust/src/lib.rs`, `test_sign`
    /// (the same secret, id and payload are used by the other reference libraries' tests).
    const SPEC_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SPEC_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SPEC_TIMESTAMP: i64 = 1649367553;
    const SPEC_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SPEC_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn signs_the_reference_vector() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            secret.sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn every_part_of_the_signed_content_counts() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        let other = [
            secret.sign("msg_other", SPEC_TIMESTAMP, SPEC_BODY),
            secret.sign(SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY),
            secret.sign(SPEC_ID, SPEC_TIMESTAMP, b"{}"),
            WebhookSecret::generate().sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
        ];
        for signature in other {
            assert_ne!(signature, SPEC_SIGNATURE);
            assert!(signature.starts_with("v1,"));
        }
    }

    #[test]
    fn parses_padded_and_unpadded_forms_and_round_trips() {
        let padded = WebhookSecret::parse("whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=");
        let unpadded = WebhookSecret::parse("whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY");
        assert_eq!(padded.clone().unwrap(), unpadded.unwrap());
        let secret = padded.unwrap();
        assert_eq!(WebhookSecret::parse(&secret.expose()).unwrap(), secret);
        let generated = WebhookSecret::generate();
        assert_eq!(
            WebhookSecret::parse(&generated.expose()).unwrap(),
            generated
        );
        assert_eq!(
            " whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n"
                .parse::<WebhookSecret>()
                .unwrap(),
            WebhookSecret::parse(SPEC_SECRET).unwrap()
        );
    }

    #[test]
    fn refuses_malformed_secrets_naming_what_is_wrong() {
        let cases = [
            (
                "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                SecretError::MissingPrefix,
            ),
            (
                "whsk_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                SecretError::MissingPrefix,
            ),
            ("whsec_", SecretError::Empty),
            (
                "whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD",
                SecretError::Base64(OUTSIDE),
            ),
            (
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7p",
                SecretError::Base64("its last character is wrong"),
            ),
            (
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oDA",
                SecretError::Base64("its length is impossible"),
            ),
            (
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7o==",
                SecretError::Base64(OUTSIDE),
            ),
            // A secret cut short by one character.
            (
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7o",
                SecretError::Length(23),
            ),
            ("whsec_c2hvcnQ=", SecretError::Length(5)),
            (
                &format!("whsec_{}", STANDARD.encode([7u8; 65])),
                SecretError::Length(65),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(WebhookSecret::parse(text), Err(expected), "{text}");
        }
    }

    #[test]
    fn neither_debug_nor_errors_show_the_secret() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(format!("{secret:?}"), "WebhookSecret(***)");
        let error = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD").unwrap_err();
        assert!(!error.to_string().contains("C2FV"), "{error}");
        assert!(!error.to_string().contains('-'), "{error}");
    }
}
