//! TLS on the gRPC listener with certificates the test makes: a client that trusts the
//! private CA exports and downloads; one that does not cannot connect; with mutual TLS only a
//! client presenting a certificate from the client CA gets through.

use contact_export_client::{ClientTls, ExportClient, ExportStatus};
use contact_export_server::tls::{TlsArgs, TlsSettings};

use super::fixture::Contact;
use super::harness::{AppOptions, TestApp, TestTls};
use super::pki::{Ca, Pem};
use super::{all_contacts, download_all, run_export};

/// Server TLS through the same path as `--tls-cert`/`--tls-key`/`--tls-client-ca`: files on
/// disk, read and checked by [`TlsArgs::settings`].
fn server_tls(server: &Pem, client_ca: Option<&Ca>) -> TlsSettings {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    TlsArgs {
        tls_cert: Some(write("server.pem", &server.cert)),
        tls_key: Some(write("server.key", &server.key)),
        tls_client_ca: client_ca.map(|ca| write("client-ca.pem", &ca.pem)),
    }
    .settings()
    .expect("TLS settings")
    .expect("TLS is on")
}

/// A client that trusts `ca` and checks the name `localhost` (the address is 127.0.0.1).
fn trusting(ca: &Ca) -> ClientTls {
    ClientTls {
        ca_pem: Some(ca.pem.clone().into_bytes()),
        identity: None,
        domain: Some("localhost".into()),
    }
}

fn presenting(mut tls: ClientTls, client: &Pem) -> ClientTls {
    tls.identity = Some((client.cert.clone().into(), client.key.clone().into()));
    tls
}

async fn spawn_tls(server: TlsSettings, client: ClientTls) -> TestApp {
    TestApp::spawn_with(AppOptions {
        tls: Some(TestTls { server, client }),
        ..AppOptions::default()
    })
    .await
}

/// Connects and makes one call; the failure as text, whichever step it came from (with TLS
/// 1.3 the server judges a client certificate after the client's handshake has finished, so
/// a refusal may only show on the first call). A failed call must have failed in the
/// transport, never as an answer of the service.
async fn first_call(url: &str, token: &str, tls: ClientTls) -> Result<(), String> {
    let client = ExportClient::connect_with(url, token, tls)
        .await
        .map_err(|err| format!("connect: {}", error_chain(&err)))?;
    match client.list(1, "").await {
        Ok(_) => Ok(()),
        Err(status) => {
            let transport = std::error::Error::source(&status)
                .is_some_and(|source| source.is::<tonic::transport::Error>());
            assert!(transport, "not a transport failure: {status:?}");
            Err(format!("call: {}", error_chain(&status)))
        }
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        text.push_str(": ");
        text.push_str(&current.to_string());
        cause = current.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_the_private_ca_exports_and_downloads_over_tls() {
    let ca = Ca::new("exportd test CA");
    let app = spawn_tls(server_tls(&ca.server(), None), trusting(&ca)).await;
    assert!(
        app.dial.url.starts_with("https://127.0.0.1:"),
        "{}",
        app.dial.url
    );
    app.ws
        .insert(&app.db, &[Contact::numbered(1), Contact::numbered(2)])
        .await;

    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    let csv = download_all(&app.ws.client, &done.id).await;
    assert!(csv.contains("person1@example.com"), "{csv}");
    assert!(csv.contains("person2@example.com"), "{csv}");

    // Without a server name the certificate's IP address entry is what matches.
    let by_ip = ClientTls {
        domain: None,
        ..trusting(&ca)
    };
    first_call(&app.dial.url, &app.ws.token, by_ip)
        .await
        .expect("127.0.0.1 is in the certificate");

    // Plaintext gRPC to the TLS port gets nowhere.
    let plaintext = format!("http://{}", app.addr);
    let refused = first_call(&plaintext, &app.ws.token, ClientTls::default()).await;
    assert!(refused.is_err(), "plaintext call to a TLS port succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_cannot_connect() {
    let ca = Ca::new("exportd test CA");
    let app = spawn_tls(server_tls(&ca.server(), None), trusting(&ca)).await;
    let token = &app.ws.token;
    let url = &app.dial.url;

    // The built-in public roots do not know a private CA.
    let public_roots = ClientTls {
        domain: Some("localhost".into()),
        ..ClientTls::default()
    };
    let err = first_call(url, token, public_roots).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // Nor does a client that trusts another CA only.
    let other = Ca::new("another CA");
    let err = first_call(url, token, trusting(&other)).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // The right CA with a name the certificate does not carry.
    let wrong_name = ClientTls {
        domain: Some("exports.example.com".into()),
        ..trusting(&ca)
    };
    let err = first_call(url, token, wrong_name).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // The service still serves the client that trusts it.
    app.ws.client.list(1, "").await.expect("trusting client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_in_only_clients_with_a_certificate_from_the_client_ca() {
    let server_ca = Ca::new("exportd test CA");
    let client_ca = Ca::new("exportd client CA");
    let alice = client_ca.client("alice");
    let app = spawn_tls(
        server_tls(&server_ca.server(), Some(&client_ca)),
        presenting(trusting(&server_ca), &alice),
    )
    .await;
    let token = &app.ws.token;
    let url = &app.dial.url;

    // No client certificate.
    let err = first_call(url, token, trusting(&server_ca))
        .await
        .unwrap_err();
    eprintln!("without a client certificate: {err}");

    // A certificate signed by another CA (here the server's: trusted for servers, not clients).
    let mallory = server_ca.client("mallory");
    let err = first_call(url, token, presenting(trusting(&server_ca), &mallory))
        .await
        .unwrap_err();
    eprintln!("with a certificate from another CA: {err}");

    // Alice's certificate: a whole export through gRPC.
    app.ws.insert(&app.db, &[Contact::numbered(7)]).await;
    let done = run_export(&app.ws.client, all_contacts()).await;
    assert_eq!(done.status(), ExportStatus::Completed, "{done:?}");
    let csv = download_all(&app.ws.client, &done.id).await;
    assert!(csv.contains("person7@example.com"), "{csv}");
    // A second client with a certificate of its own also gets in.
    let bob = client_ca.client("bob");
    first_call(url, token, presenting(trusting(&server_ca), &bob))
        .await
        .expect("bob's certificate is from the client CA");
}

#[test]
fn a_key_that_does_not_match_the_certificate_stops_the_start() {
    let ca = Ca::new("exportd test CA");
    let server = ca.server();
    let other = ca.server();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("other.key");
    std::fs::write(&cert, &server.cert).unwrap();
    std::fs::write(&key, &other.key).unwrap();
    let err = TlsArgs {
        tls_cert: Some(cert),
        tls_key: Some(key),
        tls_client_ca: None,
    }
    .settings()
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("--tls-cert/--tls-key"), "{err}");
}
