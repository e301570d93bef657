//! API tokens: `exportd token create | list | revoke` as an operator runs them, and expired or
//! revoked tokens refused over gRPC.

use std::process::Output;

use chrono::{DateTime, TimeDelta, Utc};
use contact_export_server::auth::{self, Principal, Revocation};
use sha2::{Digest, Sha256};
use tonic::Code;
use uuid::Uuid;

use super::harness::{AppOptions, TestApp, within};

fn api_only() -> AppOptions {
    AppOptions {
        workers: 0,
        ..AppOptions::default()
    }
}

/// Runs `exportd token ARGS` against `database_url`, given in the environment when `via_env`.
async fn exportd_token(database_url: &str, via_env: bool, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_exportd"));
    command.arg("token").args(args).env_remove("DATABASE_URL");
    if via_env {
        command.env("DATABASE_URL", database_url);
    } else {
        command.args(["--database-url", database_url]);
    }
    within("exportd token", command.output())
        .await
        .expect("exportd runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cli_creates_lists_and_revokes() {
    let app = TestApp::spawn_with(api_only()).await;
    let url = app.db.url.as_str();
    let (workspace, user) = (app.ws.id.to_string(), app.ws.user_id.to_string());

    let created = exportd_token(
        url,
        true,
        &[
            "create",
            "--workspace",
            &workspace,
            "--user",
            &user,
            "--name",
            "nightly job",
            "--expires-in",
            "30d",
        ],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    // stdout holds the token and nothing else; the note goes to stderr.
    let stdout = text(&created.stdout);
    let secret = stdout.strip_suffix('\n').expect("one line");
    assert!(
        secret.starts_with("cex_") && !secret.contains(char::is_whitespace),
        "{stdout:?}"
    );
    let note = text(&created.stderr);
    assert!(note.contains("not shown again"), "{note}");
    let id = note
        .split_whitespace()
        .nth(1)
        .and_then(|w| Uuid::try_parse(w).ok())
        .unwrap_or_else(|| panic!("the note names the token's id: {note}"));
    let expires = Utc::now() + TimeDelta::days(30);

    let client = app.client_with_token(secret).await;
    assert!(client.list(0, "").await.is_ok());

    // The list: the new token next to the harness's, never a secret or a hash.
    let listed = exportd_token(url, false, &["list", "--workspace", &workspace]).await;
    assert!(listed.status.success(), "{listed:?}");
    let table = text(&listed.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("ID"), "{table}");
    let row = lines
        .iter()
        .find(|l| l.starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("{id} listed: {table}"));
    for expected in [workspace.as_str(), user.as_str(), "nightly job", "active"] {
        assert!(row.contains(expected), "{expected:?} in {row:?}");
    }
    // CREATED, then EXPIRES 30 days later (give or take the time the command took).
    let times: Vec<DateTime<Utc>> = row
        .split_whitespace()
        .filter_map(|w| DateTime::parse_from_rfc3339(w).ok())
        .map(|t| t.with_timezone(&Utc))
        .collect();
    assert_eq!(times.len(), 2, "{row}");
    assert!((times[1] - expires).abs() < TimeDelta::minutes(1), "{row}");
    for secret_form in [
        app.ws.token.clone(),
        secret.to_owned(),
        hex::encode(Sha256::digest(secret.as_bytes())),
        hex::encode(Sha256::digest(app.ws.token.as_bytes())),
    ] {
        assert!(!table.contains(&secret_form), "{table}");
    }
    // Without --workspace every workspace's tokens are listed.
    let other = super::fixture::Workspace::create(&app.db, app.addr, false).await;
    let all = exportd_token(url, true, &["list"]).await;
    assert!(text(&all.stdout).contains(&other.id.to_string()));

    let revoked = exportd_token(url, false, &["revoke", &id.to_string()]).await;
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(text(&revoked.stderr).contains("revoked"));
    let status = client.list(0, "").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // The harness's token of the same user still works.
    assert!(app.ws.client.list(0, "").await.is_ok());
    let listed = text(
        &exportd_token(url, true, &["list", "--workspace", &workspace])
            .await
            .stdout,
    );
    let row = listed
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .unwrap();
    assert!(row.ends_with("revoked"), "{row}");

    // Revoking again is not an error and keeps the first revocation time.
    let again = exportd_token(url, true, &["revoke", &id.to_string()]).await;
    assert!(again.status.success(), "{again:?}");
    assert!(text(&again.stderr).contains("already revoked"), "{again:?}");
    let relisted = text(
        &exportd_token(url, true, &["list", "--workspace", &workspace])
            .await
            .stdout,
    );
    assert_eq!(relisted, listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cli_refuses_what_would_not_work() {
    let app = TestApp::spawn_with(api_only()).await;
    let url = app.db.url.as_str();
    let (workspace, user) = (app.ws.id.to_string(), app.ws.user_id.to_string());
    let stranger = Uuid::new_v4().to_string();
    let failure = |output: &Output, code: i32, message: &str| {
        assert_eq!(output.status.code(), Some(code), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        assert!(text(&output.stderr).contains(message), "{output:?}");
    };

    let unknown_user: &[&str] = &["create", "--workspace", &workspace, "--user", &stranger];
    failure(
        &exportd_token(url, true, unknown_user).await,
        1,
        &format!("no user {stranger} in workspace {workspace}"),
    );
    let other_workspace: &[&str] = &["create", "--workspace", &stranger, "--user", &user];
    failure(
        &exportd_token(url, true, other_workspace).await,
        1,
        "no user",
    );
    let bad_duration: &[&str] = &[
        "create",
        "--workspace",
        &workspace,
        "--user",
        &user,
        "--expires-in",
        "3600",
    ];
    failure(
        &exportd_token(url, true, bad_duration).await,
        2,
        "time unit needed",
    );
    failure(
        &exportd_token(url, true, &["revoke", &stranger]).await,
        1,
        &format!("no token with id {stranger}"),
    );
    failure(
        &exportd_token(url, true, &["revoke", "not-a-uuid"]).await,
        2,
        "invalid value",
    );
    // Nothing was created: only the harness's token exists.
    let mut conn = app.db.conn().await;
    assert_eq!(auth::list_tokens(&mut conn, None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_tokens_are_unauthenticated() {
    let app = TestApp::spawn_with(api_only()).await;
    let mut conn = app.db.conn().await;
    let principal = Principal {
        workspace_id: app.ws.id.into(),
        user_id: app.ws.user_id.into(),
    };
    let expires = |d: TimeDelta| Some(Utc::now() + d);
    let expired = auth::issue_token(&mut conn, principal, "t", expires(TimeDelta::seconds(-1)))
        .await
        .unwrap();
    let live = auth::issue_token(&mut conn, principal, "t", expires(TimeDelta::hours(1)))
        .await
        .unwrap();
    let to_revoke = auth::issue_token(&mut conn, principal, "t", None)
        .await
        .unwrap();

    let call = async |secret: &str| app.client_with_token(secret).await.list(0, "").await;
    let status = call(&expired.secret).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "unknown, expired or revoked token")
    );
    assert!(call(&live.secret).await.is_ok());
    assert!(call(&to_revoke.secret).await.is_ok());

    let Revocation::Revoked(info) = auth::revoke_token(&mut conn, to_revoke.id).await.unwrap()
    else {
        panic!("the token was live");
    };
    assert!(info.revoked_at.is_some());
    let status = call(&to_revoke.secret).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Every call, not only the one tried: streams too.
    let client = app.client_with_token(&to_revoke.secret).await;
    let status = client
        .watch(&Uuid::new_v4().to_string())
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(call(&live.secret).await.is_ok());
    assert_eq!(
        auth::revoke_token(&mut conn, Uuid::new_v4()).await.unwrap(),
        Revocation::NotFound
    );
}
