//! TLS settings for `https://` addresses.

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// How to speak TLS to an `https://` address; the default trusts the Mozilla roots built into
/// the client, presents no certificate and checks the address's host name.
///
/// `Debug` never shows the private key.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM CA certificate(s) to trust instead of the built-in roots (a private CA, or a
    /// bundle such as `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and private key to present, for servers that require a client
    /// certificate (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, when it is not the address's host (for
    /// example `localhost` when dialing `https://127.0.0.1:50051`).
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("identity", &self.identity.as_ref().map(|_| "***"))
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Whether nothing is set, so that a plaintext address loses nothing.
    pub fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.identity.is_none() && self.domain.is_none()
    }

    pub(crate) fn into_config(self) -> Result<ClientTlsConfig, ClientError> {
        let config = match self.ca_pem {
            Some(ca) => {
                // rustls skips what it cannot parse: a file without a certificate would leave
                // nothing trusted and fail every handshake with a vaguer message.
                if !holds_certificates(&ca) {
                    return Err(ClientError::InvalidTls(
                        "the CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    ));
                }
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca))
            }
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        let config = match self.identity {
            Some((cert, key)) => {
                if !holds_certificates(&cert) {
                    return Err(ClientError::InvalidTls(
                        "the client certificate file holds no PEM certificate",
                    ));
                }
                if PrivateKeyDer::from_pem_slice(&key).is_err() {
                    return Err(ClientError::InvalidTls(
                        "the client key file holds no PEM private key",
                    ));
                }
                config.identity(Identity::from_pem(cert, key))
            }
            None => config,
        };
        Ok(match self.domain {
            Some(domain) => config.domain_name(domain),
            None => config,
        })
    }
}

/// At least one PEM certificate, and every one of them readable.
fn holds_certificates(bytes: &[u8]) -> bool {
    let mut certs = CertificateDer::pem_slice_iter(bytes).peekable();
    certs.peek().is_some() && certs.all(|c| c.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_pem_are_refused() {
        let tls = ClientTls {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..ClientTls::default()
        };
        assert!(matches!(tls.into_config(), Err(ClientError::InvalidTls(_))));
        let cert = b"-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n".to_vec();
        let tls = ClientTls {
            identity: Some((cert, b"-----BEGIN CERTIFICATE-----".to_vec())),
            ..ClientTls::default()
        };
        assert!(matches!(tls.into_config(), Err(ClientError::InvalidTls(_))));
    }

    #[test]
    fn debug_hides_the_key() {
        let tls = ClientTls {
            identity: Some((b"cert".to_vec(), b"secret-key".to_vec())),
            ..ClientTls::default()
        };
        assert!(!format!("{tls:?}").contains("secret"));
    }
}
