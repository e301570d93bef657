//! Opening connections: the database URL (a libpq URI or `key=value` string) with libpq's
//! `sslmode` and `sslrootcert`, over rustls (aws-lc-rs), for every connection the service
//! opens: the pools, the `LISTEN` connection, a snapshot's and the migrations'.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and never verifies a
//! certificate by itself; libpq's `verify-ca` and `verify-full` are read here and turned into
//! the certificate checks they name:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked (as libpq without a root file) |
//! | `require` | always | not checked (as libpq without a root file) |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert` and naming the host |

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where and how to connect, read once from the database URL.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    /// `None`: no TLS at all (`sslmode=disable`).
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("ssl_mode", &self.config.get_ssl_mode())
            .finish_non_exhaustive()
    }
}

/// A database URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the database URL cannot be read: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    #[error("sslmode={0} needs sslrootcert=<PEM file> with the certificate(s) to trust")]
    NoRootCert(&'static str),
    #[error("sslrootcert {path:?}: {reason}")]
    RootCert { path: String, reason: String },
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

impl Target {
    /// Reads a libpq URI (`postgres://…?sslmode=verify-full&sslrootcert=/ca.pem`) or
    /// `key=value` string. `idle_in_transaction` becomes the sessions'
    /// `idle_in_transaction_session_timeout`: a process frozen inside a transaction (a
    /// stalled replica) then loses it, and its row locks, instead of blocking others.
    pub fn parse(url: &str, idle_in_transaction: Option<Duration>) -> Result<Target, TargetError> {
        let (rest, params) = take_ssl_params(url);
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(TargetError::Url)?;
        let verify = match params.mode.as_deref() {
            None | Some("prefer") => {
                config.ssl_mode(SslMode::Prefer);
                Verify::Nothing
            }
            Some("disable") => {
                config.ssl_mode(SslMode::Disable);
                Verify::Nothing
            }
            Some("require") => {
                config.ssl_mode(SslMode::Require);
                Verify::Nothing
            }
            Some("verify-ca") => {
                config.ssl_mode(SslMode::Require);
                Verify::Chain
            }
            Some("verify-full") => {
                config.ssl_mode(SslMode::Require);
                Verify::ChainAndName
            }
            Some(other) => return Err(TargetError::SslMode(other.to_owned())),
        };
        if let Some(timeout) = idle_in_transaction {
            let setting = format!(
                "-c idle_in_transaction_session_timeout={}",
                timeout.as_millis().max(1)
            );
            let options = match config.get_options() {
                Some(existing) => format!("{existing} {setting}"),
                None => setting,
            };
            config.options(&options);
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(client_config(
                verify,
                params.root_cert.as_deref(),
            )?)),
        };
        Ok(Target { config, tls })
    }

    /// A plain tokio-postgres client, and the task that drives its connection.
    pub async fn client(
        &self,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                Ok((client, spawn_connection(connection)))
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                Ok((client, spawn_connection(connection)))
            }
        }
    }

    /// A diesel-async connection.
    pub async fn diesel(&self) -> Result<AsyncPgConnection, ConnectionError> {
        let bad = |e: tokio_postgres::Error| ConnectionError::BadConnection(describe(&e));
        match &self.tls {
            None => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(bad)?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await.map_err(bad)?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            }
        }
    }
}

/// The error with its cause: tokio-postgres says only "db error" or "error performing TLS
/// handshake" and keeps the reason in the source.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn spawn_connection<F>(connection: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a database connection ended with an error");
        }
    })
}

/// `sslmode` and `sslrootcert` of a URL, and the URL without them.
#[derive(Debug, Default, PartialEq, Eq)]
struct SslParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

fn take_ssl_params(url: &str) -> (String, SslParams) {
    let mut params = SslParams::default();
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            params.mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            params.root_cert = Some(value.to_owned());
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), params);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                !take(key, &value)
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, params)
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key.trim(), value.trim().trim_matches('\''))
            })
            .collect();
        (kept.join(" "), params)
    }
}

fn client_config(
    verify: Verify,
    root_cert: Option<&str>,
) -> Result<rustls::ClientConfig, TargetError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions");
    let config = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        Verify::Chain | Verify::ChainAndName => {
            let mode = if verify == Verify::Chain {
                "verify-ca"
            } else {
                "verify-full"
            };
            let path = root_cert.ok_or(TargetError::NoRootCert(mode))?;
            let roots = read_roots(path)?;
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TargetError::RootCert {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            let verifier: Arc<dyn ServerCertVerifier> = if verify == Verify::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(config)
}

fn read_roots(path: &str) -> Result<rustls::RootCertStore, TargetError> {
    use rustls::pki_types::pem::PemObject as _;
    let error = |reason: String| TargetError::RootCert {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| error(e.to_string()))?;
        roots.add(cert).map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("no certificate in it".to_owned()));
    }
    Ok(roots)
}

/// `require` and `prefer`: encrypted, the certificate not checked (what libpq does for them
/// without a root certificate file). Signatures are still checked, so the session key is the
/// server's.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name on the certificate is not
/// compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_taken_out_of_both_url_forms() {
        let (rest, params) = take_ssl_params(
            "postgres://u:p@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(params.mode.as_deref(), Some("verify-full"));
        assert_eq!(params.root_cert.as_deref(), Some("/ca.pem"));

        let (rest, params) = take_ssl_params("host=h dbname=db sslmode=require user=u");
        assert_eq!(rest, "host=h dbname=db user=u");
        assert_eq!(params.mode.as_deref(), Some("require"));

        let (rest, params) = take_ssl_params("postgres://h/db");
        assert_eq!(
            (rest.as_str(), params),
            ("postgres://h/db", SslParams::default())
        );
    }

    #[test]
    fn modes_are_checked_and_verification_needs_a_root() {
        assert!(
            Target::parse("postgres://h/db?sslmode=disable", None)
                .unwrap()
                .tls
                .is_none()
        );
        assert!(
            Target::parse("postgres://h/db", None)
                .unwrap()
                .tls
                .is_some()
        );
        assert!(matches!(
            Target::parse("postgres://h/db?sslmode=sometimes", None),
            Err(TargetError::SslMode(_))
        ));
        assert!(matches!(
            Target::parse("postgres://h/db?sslmode=verify-full", None),
            Err(TargetError::NoRootCert("verify-full"))
        ));
        let err = Target::parse(
            "postgres://h/db?sslmode=verify-ca&sslrootcert=/nope.pem",
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("sslrootcert \"/nope.pem\""),
            "{err}"
        );
    }

    #[test]
    fn the_idle_transaction_timeout_joins_the_options() {
        let target = Target::parse(
            "postgres://h/db?options=-c%20search_path%3Dx",
            Some(Duration::from_secs(3)),
        )
        .unwrap();
        assert_eq!(
            target.config.get_options(),
            Some("-c search_path=x -c idle_in_transaction_session_timeout=3000")
        );
    }
}
