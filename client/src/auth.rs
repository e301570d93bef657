//! `authorization: Bearer <token>` on every request.

use std::fmt;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::ClientError;

/// A tonic interceptor that adds `authorization: Bearer <token>` to every request.
///
/// [`ExportClient`](crate::ExportClient) uses it already; it is public for callers that drive
/// the generated `ExportServiceClient` directly:
/// `ExportServiceClient::with_interceptor(channel, BearerAuth::new(token)?)`.
#[derive(Clone)]
pub struct BearerAuth {
    header: AsciiMetadataValue,
}

impl BearerAuth {
    /// Checks the token and builds the header value once.
    ///
    /// A token must be non-empty printable ASCII without spaces (RFC 6750 `b64token` and
    /// anything a gRPC metadata value can carry); anything else is
    /// [`ClientError::InvalidToken`], before any request is sent.
    pub fn new(token: impl Into<String>) -> Result<Self, ClientError> {
        let token = token.into();
        if token.is_empty() {
            return Err(ClientError::InvalidToken("the token is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::InvalidToken(
                "a token is printable ASCII without spaces or control characters",
            ));
        }
        let mut header = AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ClientError::InvalidToken("not a valid metadata value"))?;
        // Keeps the value out of http's Debug output (and so out of traces).
        header.set_sensitive(true);
        Ok(Self { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerAuth(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(auth: &mut BearerAuth) -> String {
        let request = auth
            .call(Request::new(()))
            .expect("interceptor never fails");
        let value = request.metadata().get("authorization").expect("header set");
        value.to_str().expect("ascii").to_owned()
    }

    #[test]
    fn adds_bearer_header() {
        let mut auth = BearerAuth::new("ce_test.AbC-123_~+/=").unwrap();
        assert_eq!(header_of(&mut auth), "Bearer ce_test.AbC-123_~+/=");
    }

    #[test]
    fn replaces_a_header_already_present() {
        let mut auth = BearerAuth::new("right").unwrap();
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer wrong".parse().unwrap());
        let request = auth.call(request).unwrap();
        let values: Vec<_> = request.metadata().get_all("authorization").iter().collect();
        assert_eq!(values, ["Bearer right"]);
    }

    #[test]
    fn rejects_tokens_that_cannot_be_sent() {
        for bad in ["", "two words", "line\n", "tab\t", "caf\u{e9}", "nul\0"] {
            assert!(
                matches!(BearerAuth::new(bad), Err(ClientError::InvalidToken(_))),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let auth = BearerAuth::new("s3cr3t").unwrap();
        assert!(!format!("{auth:?}").contains("s3cr3t"));
    }
}
