//! TLS on the gRPC listener: `--tls-cert` and `--tls-key` turn it on, `--tls-client-ca` also
//! asks every client for a certificate signed by that CA (mutual TLS). Plaintext stays the
//! default. rustls underneath, with aws-lc-rs as its one crypto provider.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// The TLS flags, shared by `serve` and `dev`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain of this server (leaf first). With --tls-key: serve gRPC over TLS.
    #[arg(long, env = "EXPORTD_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "EXPORTD_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate signed by one (mutual TLS).
    /// Needs --tls-cert and --tls-key.
    #[arg(long, env = "EXPORTD_TLS_CLIENT_CA", value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,
}

/// TLS material, read and checked at start. `Debug` never shows the key.
#[derive(Clone)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// PEM private key of the leaf.
    pub key_pem: Vec<u8>,
    /// PEM CA certificate(s) client certificates must chain to; `None`: no client certificates.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"***")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// A TLS setting that cannot be used, naming the flag and, where there is one, the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "--tls-cert and --tls-key go together (or EXPORTD_TLS_CERT and EXPORTD_TLS_KEY): {given} is set, {missing} is not"
    )]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")]
    ClientCaWithoutTls,
    // Not a `source`: the message already says it, and reports would print it twice.
    #[error("{flag} {}: cannot read: {error}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{flag} {}: {problem}", path.display())]
    Content {
        flag: &'static str,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("--tls-cert/--tls-key{}: unusable: {reason}", client_ca_note(*.mutual))]
    Rejected { mutual: bool, reason: String },
}

fn client_ca_note(mutual: bool) -> &'static str {
    if mutual { "/--tls-client-ca" } else { "" }
}

impl TlsArgs {
    /// Reads and checks the files: `None` when TLS is off.
    pub fn settings(&self) -> Result<Option<TlsSettings>, TlsError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(TlsError::ClientCaWithoutTls);
            }
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(TlsError::Incomplete {
                    given: "--tls-cert",
                    missing: "--tls-key",
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete {
                    given: "--tls-key",
                    missing: "--tls-cert",
                });
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let settings = TlsSettings {
            cert_pem: read_pem("--tls-cert", cert, "CERTIFICATE")?,
            key_pem: read_pem("--tls-key", key, "PRIVATE KEY")?,
            client_ca_pem: match &self.tls_client_ca {
                Some(ca) => Some(read_pem("--tls-client-ca", ca, "CERTIFICATE")?),
                None => None,
            },
        };
        settings.check()?;
        Ok(Some(settings))
    }
}

/// The file's bytes, if it holds a PEM certificate (`label` `CERTIFICATE`) or private key
/// (PKCS#8, PKCS#1 or SEC1) that parses.
fn read_pem(flag: &'static str, path: &Path, label: &str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|error| TlsError::Read {
        flag,
        path: path.to_owned(),
        error,
    })?;
    let found = if label == "CERTIFICATE" {
        holds_certificates(&bytes)
    } else {
        PrivateKeyDer::from_pem_slice(&bytes).is_ok()
    };
    if !found {
        return Err(TlsError::Content {
            flag,
            path: path.to_owned(),
            problem: if label == "CERTIFICATE" {
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
            } else {
                "no PEM private key (-----BEGIN … PRIVATE KEY-----) in the file"
            },
        });
    }
    Ok(bytes)
}

/// At least one PEM certificate, and every one of them readable.
fn holds_certificates(bytes: &[u8]) -> bool {
    let mut certs = CertificateDer::pem_slice_iter(bytes).peekable();
    certs.peek().is_some() && certs.all(|c| c.is_ok())
}

/// How long a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl TlsSettings {
    /// tonic's server TLS configuration.
    pub fn server_config(&self) -> ServerTlsConfig {
        // A client that connects and never finishes its handshake would otherwise hold a
        // connection (and its socket and task) open forever; a handful could exhaust them.
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// Builds the rustls configuration once, so that a bad certificate, a key that does not
    /// match it or an unusable CA stops the start instead of every handshake.
    pub fn check(&self) -> Result<(), TlsError> {
        Server::builder()
            .tls_config(self.server_config())
            .map(drop)
            .map_err(|err| TlsError::Rejected {
                mutual: self.client_ca_pem.is_some(),
                reason: error_chain(&err),
            })
    }
}

/// The sources of `err` joined with `: ` (tonic's own message is only "transport error").
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cause = err.source();
    while let Some(current) = cause {
        parts.push(current.to_string());
        cause = current.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> TlsArgs {
        TlsArgs {
            tls_cert: cert.map(PathBuf::from),
            tls_key: key.map(PathBuf::from),
            tls_client_ca: ca.map(PathBuf::from),
        }
    }

    #[test]
    fn off_unless_both_are_given() {
        assert!(args(None, None, None).settings().unwrap().is_none());
        let err = args(Some("c.pem"), None, None).settings().unwrap_err();
        assert!(err.to_string().contains("--tls-key"), "{err}");
        let err = args(None, Some("k.pem"), None).settings().unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        let err = args(None, None, Some("ca.pem")).settings().unwrap_err();
        assert!(err.to_string().contains("--tls-client-ca"), "{err}");
    }

    #[test]
    fn errors_name_the_flag_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = args(missing.to_str(), not_pem.to_str(), None)
            .settings()
            .unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("--tls-cert "), "{message}");
        assert!(message.contains("missing.pem"), "{message}");

        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let message = args(cert.to_str(), not_pem.to_str(), None)
            .settings()
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("--tls-key "), "{message}");
        assert!(message.contains("not.pem"), "{message}");
    }

    #[test]
    fn pem_contents_are_parsed() {
        let key = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(PrivateKeyDer::from_pem_slice(key).is_ok());
        assert!(!holds_certificates(key));
        assert!(!holds_certificates(b"BEGIN CERTIFICATE"));
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(holds_certificates(cert));
        assert!(PrivateKeyDer::from_pem_slice(cert).is_err());
        let broken = b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n";
        assert!(!holds_certificates(broken), "a block that does not decode");
    }
}
