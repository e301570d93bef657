//! Webhook deliveries against a real HTTP receiver on 127.0.0.1 (`peers/webhook_receiver.rs`),
//! which checks each try's signature on its own and answers as each test scripts it.

#[path = "peers/webhook_receiver.rs"]
mod webhook_receiver;

use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use contact_export_server::ids::{ExportId, WorkspaceId};
use contact_export_server::webhook::{
    AllowList, AttemptError, Delivery, DeliveryOutcome, EventType, ExportEventData, GiveUpReason,
    RetryPolicy, WebhookEvent, WebhookSecret, WebhookUrlError,
};
use webhook_receiver::{Answer, seen};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        per_try_timeout: Duration::from_secs(2),
        max_retry_time: Duration::from_secs(5),
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(2),
    }
}

fn delivery(prefix: &str, policy: RetryPolicy) -> Delivery {
    Delivery::new(
        WebhookSecret::parse(SECRET).unwrap(),
        AllowList::new([prefix]).unwrap(),
        policy,
    )
    .unwrap()
}

fn event() -> WebhookEvent {
    WebhookEvent {
        event_type: EventType::ExportCompleted,
        // Events carry microseconds, as PostgreSQL's timestamps do.
        timestamp: Utc::now().trunc_subsecs(6),
        data: ExportEventData {
            export_id: ExportId::new_random(),
            workspace_id: WorkspaceId::new_random(),
            status: "completed".to_owned(),
            total_rows: 42,
            processed_rows: 42,
            size_bytes: Some(4096),
            sha256: Some("0".repeat(64)),
            error_message: None,
            filename: "contacts.csv".to_owned(),
        },
    }
}

#[tokio::test]
async fn delivers_a_signed_event_that_the_receiver_verifies() {
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(204)]).await;
    let event = event();
    let outcome = delivery(&base, quick_policy())
        .deliver(&format!("{base}hooks/export"), &event)
        .await;
    assert!(
        matches!(
            outcome,
            DeliveryOutcome::Delivered {
                status: 204,
                attempts: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
    let seen = seen(&receiver);
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert!(request.signature_valid, "{request:?}");
    assert_eq!(request.id, event.webhook_id());
    assert!((Utc::now().timestamp() - request.timestamp).abs() <= 5);
    assert_eq!(request.content_type, "application/json");
    assert_eq!(request.user_agent, "contact-export-webhooks");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["type"], "export.completed");
    assert_eq!(body["data"]["export_id"], event.data.export_id.to_string());
    assert_eq!(body["data"]["total_rows"], 42);
    assert_eq!(body["data"]["error_message"], serde_json::Value::Null);
    let back: WebhookEvent = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(back, event);
}

#[tokio::test]
async fn retries_after_server_errors_with_the_same_id_and_a_signature_per_try() {
    let (base, receiver) = webhook_receiver::receiver(
        SECRET,
        vec![
            Answer::Status(500),
            Answer::Status(502),
            Answer::Status(503),
            Answer::Status(200),
        ],
    )
    .await;
    let event = event();
    let outcome = delivery(&base, quick_policy())
        .deliver(&format!("{base}hooks/export"), &event)
        .await;
    assert!(
        matches!(
            outcome,
            DeliveryOutcome::Delivered {
                status: 200,
                attempts: 4,
                ..
            }
        ),
        "{outcome:?}"
    );
    let seen = seen(&receiver);
    assert_eq!(seen.len(), 4);
    for request in &seen {
        assert_eq!(request.id, event.webhook_id());
        assert!(request.signature_valid, "{request:?}");
        assert_eq!(request.body, seen[0].body);
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_in_time_is_given_up() {
    let (base, receiver) =
        webhook_receiver::receiver(SECRET, vec![Answer::Slow(Duration::from_secs(30))]).await;
    let policy = RetryPolicy {
        per_try_timeout: Duration::from_millis(300),
        max_retry_time: Duration::from_millis(1500),
        ..quick_policy()
    };
    let started = Instant::now();
    let outcome = delivery(&base, policy)
        .deliver(&format!("{base}hooks/export"), &event())
        .await;
    let DeliveryOutcome::GaveUp {
        reason,
        attempts,
        last_error,
        ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(reason, GiveUpReason::OutOfTime);
    assert!(
        matches!(last_error, AttemptError::Timeout(t) if t <= Duration::from_millis(300)),
        "{last_error:?}"
    );
    assert!(attempts >= 2, "{attempts}");
    assert_eq!(seen(&receiver).len() as u32, attempts);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let (base, receiver) =
        webhook_receiver::receiver(SECRET, vec![Answer::Status(400), Answer::Status(200)]).await;
    let outcome = delivery(&base, quick_policy())
        .deliver(&format!("{base}hooks/export"), &event())
        .await;
    assert!(
        matches!(
            &outcome,
            DeliveryOutcome::GaveUp {
                reason: GiveUpReason::NotRetryable,
                attempts: 1,
                last_error: AttemptError::Status { status: 400 },
                ..
            }
        ),
        "{outcome:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen(&receiver).len(), 1);
    assert!(outcome.to_string().contains("answered 400"), "{outcome}");
}

#[tokio::test]
async fn gives_up_after_the_max_retry_time() {
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(503)]).await;
    let policy = RetryPolicy {
        max_retry_time: Duration::from_millis(800),
        ..quick_policy()
    };
    let started = Instant::now();
    let outcome = delivery(&base, policy)
        .deliver(&format!("{base}hooks/export"), &event())
        .await;
    let elapsed = started.elapsed();
    let DeliveryOutcome::GaveUp {
        reason,
        attempts,
        last_error,
        ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(reason, GiveUpReason::OutOfTime);
    assert_eq!(last_error, AttemptError::Status { status: 503 });
    assert!(attempts >= 3, "{attempts}");
    assert_eq!(seen(&receiver).len() as u32, attempts);
    // No try outlasts the deadline: only scheduling slack past it.
    assert!(elapsed <= Duration::from_millis(1200), "{elapsed:?}");
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_its_cap_and_408_429_are_retried() {
    let (base, receiver) = webhook_receiver::receiver(
        SECRET,
        vec![
            Answer::WithHeader(429, "retry-after", "1"),
            Answer::WithHeader(503, "retry-after", "3600"),
            Answer::Status(408),
            Answer::Status(201),
        ],
    )
    .await;
    let policy = RetryPolicy {
        max_retry_after: Duration::from_millis(1200),
        ..quick_policy()
    };
    let outcome = delivery(&base, policy)
        .deliver(&format!("{base}hooks/export"), &event())
        .await;
    assert!(
        matches!(
            outcome,
            DeliveryOutcome::Delivered {
                status: 201,
                attempts: 4,
                ..
            }
        ),
        "{outcome:?}"
    );
    let seen = seen(&receiver);
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    // `Retry-After: 1` waits a second; `3600` waits the cap; a 408 the short backoff.
    assert!(gaps[0] >= Duration::from_millis(950), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1150), "{gaps:?}");
    assert!(gaps[1] < Duration::from_millis(2000), "{gaps:?}");
    assert!(gaps[2] < Duration::from_millis(500), "{gaps:?}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (base, receiver) = webhook_receiver::receiver(
        SECRET,
        vec![Answer::WithHeader(307, "location", "/elsewhere")],
    )
    .await;
    let outcome = delivery(&base, quick_policy())
        .deliver(&format!("{base}hooks/export"), &event())
        .await;
    let DeliveryOutcome::GaveUp {
        reason,
        attempts,
        last_error,
        ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(reason, GiveUpReason::NotRetryable);
    assert_eq!(attempts, 1);
    assert_eq!(
        last_error,
        AttemptError::Redirect {
            status: 307,
            location: Some("/elsewhere".to_owned()),
        }
    );
    assert_eq!(*receiver.elsewhere.lock().unwrap(), 0);
}

#[tokio::test]
async fn connection_errors_are_retried_until_the_time_is_up() {
    // A port that nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}/");
    let policy = RetryPolicy {
        max_retry_time: Duration::from_millis(500),
        ..quick_policy()
    };
    let outcome = delivery(&base, policy)
        .deliver(&format!("{base}hooks/export"), &event())
        .await;
    let DeliveryOutcome::GaveUp {
        reason,
        attempts,
        last_error,
        ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(reason, GiveUpReason::OutOfTime);
    assert!(attempts >= 2, "{attempts}");
    assert!(
        matches!(last_error, AttemptError::Connect(_)),
        "{last_error:?}"
    );
}

#[tokio::test]
async fn a_url_outside_the_allow_list_gets_no_try() {
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(200)]).await;
    let delivery = delivery(&base, quick_policy());
    for url in [
        "https://hooks.example.com/hooks/export".to_owned(),
        format!("{base}hooks/export").replace("127.0.0.1", "127.0.0.2"),
        format!("{base}hooks/export").replace("http://", "http://user:pw@"),
    ] {
        let outcome = delivery.deliver(&url, &event()).await;
        assert!(
            matches!(
                outcome,
                DeliveryOutcome::GaveUp {
                    reason: GiveUpReason::NotRetryable,
                    attempts: 0,
                    last_error: AttemptError::Refused(_),
                    ..
                }
            ),
            "{url}: {outcome:?}"
        );
    }
    assert!(seen(&receiver).is_empty());
}

/// A name under a prefix passes the form check, but it resolves to a loopback address at
/// delivery time: the delivery's resolver does not connect to it (the DNS-rebinding guard).
#[tokio::test]
async fn a_name_resolving_to_an_internal_address_at_delivery_is_not_connected_to() {
    let (base, receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(200)]).await;
    let named = base.replace("127.0.0.1", "localhost");
    // The check of a caller's URL refuses it as well.
    let allow = AllowList::new([named.as_str()]).unwrap();
    assert!(matches!(
        allow.check(&format!("{named}hooks/export")).await,
        Err(WebhookUrlError::SpecialAddress { .. })
    ));
    let outcome = delivery(&named, quick_policy())
        .deliver(&format!("{named}hooks/export"), &event())
        .await;
    let DeliveryOutcome::GaveUp {
        reason,
        attempts,
        last_error,
        ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(reason, GiveUpReason::NotRetryable);
    assert_eq!(attempts, 1);
    let AttemptError::BlockedAddress(message) = &last_error else {
        panic!("{last_error:?}");
    };
    assert!(message.contains("localhost"), "{message}");
    assert!(seen(&receiver).is_empty());
}

#[tokio::test]
async fn the_explicit_loopback_prefix_passes_the_check() {
    let (base, _receiver) = webhook_receiver::receiver(SECRET, vec![Answer::Status(200)]).await;
    let allow = AllowList::new([base.as_str()]).unwrap();
    let url = allow.check(&format!("{base}hooks/export")).await.unwrap();
    assert_eq!(url.host_str(), Some("127.0.0.1"));
}
