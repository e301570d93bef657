//! A webhook receiver on 127.0.0.1 for tests, written here: it checks each try's Standard
//! Webhooks signature on its own (the HMAC recomputed from the `whsec_` secret, not through the
//! service's module), answers as each test scripts it, and records what it got. Its hook is
//! `POST {base}hooks/export`; `{base}elsewhere` counts requests that should never come.

// Shared by two test binaries; each uses part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What the receiver answers to one request.
#[derive(Clone)]
pub enum Answer {
    Status(u16),
    WithHeader(u16, &'static str, &'static str),
    /// Answers 200, but only after this long.
    Slow(Duration),
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub id: String,
    pub timestamp: i64,
    pub signature_valid: bool,
    pub content_type: String,
    pub user_agent: String,
    pub body: Bytes,
}

pub struct Receiver {
    /// The `whsec_` secret signatures are checked with.
    secret: String,
    /// The answers in turn; the last one is repeated.
    script: Vec<Answer>,
    seen: Mutex<Vec<Seen>>,
    /// Requests to `{base}elsewhere`.
    pub elsewhere: Mutex<u32>,
}

/// The receiver's own check of a Standard Webhooks signature.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (Utc::now().timestamp() - ts).abs() > 5 * 60 {
        return false;
    }
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    signatures.split(' ').any(|signature| {
        let Some(("v1", encoded)) = signature.split_once(',') else {
            return false;
        };
        let Ok(expected) = STANDARD.decode(encoded) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

async fn hook(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let index = {
        let mut seen = receiver.seen.lock().unwrap();
        seen.push(Seen {
            at: Instant::now(),
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp").parse().unwrap_or(-1),
            signature_valid: verify(&receiver.secret, &headers, &body),
            content_type: header("content-type"),
            user_agent: header("user-agent"),
            body: body.clone(),
        });
        seen.len() - 1
    };
    let answer = receiver.script[index.min(receiver.script.len() - 1)].clone();
    match answer {
        Answer::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Answer::WithHeader(status, name, value) => {
            (StatusCode::from_u16(status).unwrap(), [(name, value)]).into_response()
        }
        Answer::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
    }
}

async fn elsewhere(State(receiver): State<Arc<Receiver>>) -> StatusCode {
    *receiver.elsewhere.lock().unwrap() += 1;
    StatusCode::OK
}

/// A receiver on a free port of 127.0.0.1: its base URL (`http://127.0.0.1:PORT/`) and state.
pub async fn receiver(secret: &str, script: Vec<Answer>) -> (String, Arc<Receiver>) {
    let receiver = Arc::new(Receiver {
        secret: secret.to_owned(),
        script,
        seen: Mutex::new(Vec::new()),
        elsewhere: Mutex::new(0),
    });
    let app = Router::new()
        .route("/hooks/export", post(hook))
        .route("/elsewhere", post(elsewhere).get(elsewhere))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/"), receiver)
}

/// Every request the hook URL got so far.
pub fn seen(receiver: &Receiver) -> Vec<Seen> {
    receiver.seen.lock().unwrap().clone()
}
