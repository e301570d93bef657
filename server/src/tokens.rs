//! `exportd token …`: issue, list and revoke API tokens, straight in the database.
//!
//! Commands write their result to the `out` writer (stdout: the secret of a new token, the list)
//! and what a person should read to `note` (stderr), so that `$(exportd token create …)` holds
//! only the token.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::auth::{self, Principal, Revocation, TokenInfo};
use crate::db::{self, DbError, schema::users};
use crate::ids::{UserId, WorkspaceId};

/// `exportd token …`.
#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Issue a token for a user of a workspace. Prints it once, on stdout; only its hash is kept.
    Create(CreateArgs),
    /// Show tokens (never their secrets or hashes), oldest first.
    List(ListArgs),
    /// Revoke a token by id: every later call with it is UNAUTHENTICATED.
    Revoke(RevokeArgs),
}

/// The database, as for `serve` (its password is never printed).
#[derive(clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of the service's database.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The workspace the token acts in (a UUID of the CRM's `workspaces`).
    #[arg(long)]
    pub workspace: Uuid,
    /// The user it acts as, a member of that workspace (a UUID of the CRM's `users`).
    #[arg(long)]
    pub user: Uuid,
    /// A label to recognise it by in `token list`.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Lifetime: `30d`, `12h`, `90m`, `3600s`, `2w`, or a sum like `1d12h`. Default: no expiry.
    #[arg(long, value_parser = parse_duration)]
    pub expires_in: Option<TimeDelta>,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Only this workspace's tokens.
    #[arg(long)]
    pub workspace: Option<Uuid>,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The token's id, as `token list` and `token create` show it (not the secret).
    pub id: Uuid,
}

/// Why a token command failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("no user {user} in workspace {workspace}")]
    UnknownUser {
        workspace: WorkspaceId,
        user: UserId,
    },
    #[error("--expires-in: too far in the future")]
    ExpiryOutOfRange,
    #[error("no token with id {0}")]
    NotFound(Uuid),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<diesel::result::Error> for TokenError {
    fn from(e: diesel::result::Error) -> Self {
        TokenError::Db(DbError::Query(e))
    }
}

/// Runs one token command.
pub async fn run(
    command: TokenCommand,
    out: &mut dyn Write,
    note: &mut dyn Write,
) -> Result<(), TokenError> {
    match command {
        TokenCommand::Create(args) => {
            let mut conn = db::connect(&args.db.database_url).await?;
            let principal = Principal {
                workspace_id: args.workspace.into(),
                user_id: args.user.into(),
            };
            let expires_at = match args.expires_in {
                Some(lifetime) => Some(
                    Utc::now()
                        .checked_add_signed(lifetime)
                        .ok_or(TokenError::ExpiryOutOfRange)?,
                ),
                None => None,
            };
            let issued = create(&mut conn, principal, &args.name, expires_at).await?;
            writeln!(
                note,
                "token {} for user {} of workspace {}, {}. Keep it now: it is not shown again.",
                issued.id,
                args.user,
                args.workspace,
                match expires_at {
                    Some(at) => format!("expires {}", timestamp(at)),
                    None => "never expires".to_owned(),
                }
            )?;
            writeln!(out, "{}", issued.secret)?;
        }
        TokenCommand::List(args) => {
            let mut conn = db::connect(&args.db.database_url).await?;
            let tokens = auth::list_tokens(&mut conn, args.workspace).await?;
            write!(out, "{}", table(&tokens, Utc::now()))?;
        }
        TokenCommand::Revoke(args) => {
            let mut conn = db::connect(&args.db.database_url).await?;
            match auth::revoke_token(&mut conn, args.id).await? {
                Revocation::Revoked(_) => writeln!(note, "token {} revoked", args.id)?,
                Revocation::AlreadyRevoked(token) => writeln!(
                    note,
                    "token {} was already revoked at {}",
                    args.id,
                    token.revoked_at.map(timestamp).unwrap_or_default()
                )?,
                Revocation::NotFound => return Err(TokenError::NotFound(args.id)),
            }
        }
    }
    Ok(())
}

/// Issues a token after checking that the user belongs to the workspace in the CRM's tables, so
/// that a mistyped id fails here rather than yield a token that sees nothing.
pub async fn create(
    conn: &mut AsyncPgConnection,
    principal: Principal,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<auth::IssuedToken, TokenError> {
    let member: Option<Uuid> = users::table
        .filter(users::id.eq(principal.user_id))
        .filter(users::workspace_id.eq(principal.workspace_id))
        .select(users::id)
        .first(conn)
        .await
        .optional()?;
    if member.is_none() {
        return Err(TokenError::UnknownUser {
            workspace: principal.workspace_id,
            user: principal.user_id,
        });
    }
    Ok(auth::issue_token(conn, principal, name, expires_at).await?)
}

/// A `--expires-in` value: `30d`, `12h`, `90m`, `3600s`, `2w` or a sum such as `1d12h`
/// (`humantime`'s units; fractions such as `1.5h` too), longer than zero.
pub fn parse_duration(text: &str) -> Result<TimeDelta, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?}: {e} (expected a duration like 30d, 12h, 90m or 3600s)"))?;
    if duration.is_zero() {
        return Err(format!("{text:?}: must be longer than zero"));
    }
    TimeDelta::from_std(duration).map_err(|_| format!("{text:?}: too long"))
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The token list as aligned columns, with a header; `state` says whether a call would pass.
fn table(tokens: &[TokenInfo], now: DateTime<Utc>) -> String {
    let optional = |at: Option<DateTime<Utc>>| at.map_or_else(|| "-".to_owned(), timestamp);
    let mut rows = vec![
        [
            "ID",
            "WORKSPACE",
            "USER",
            "NAME",
            "CREATED",
            "EXPIRES",
            "REVOKED",
            "STATE",
        ]
        .map(str::to_owned),
    ];
    for t in tokens {
        let state = match (t.revoked_at, t.is_live(now)) {
            (Some(_), _) => "revoked",
            (None, true) => "active",
            (None, false) => "expired",
        };
        rows.push([
            t.id.to_string(),
            t.workspace_id.to_string(),
            t.user_id.to_string(),
            // A name is free text: keep one row on one line.
            t.name
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
            timestamp(t.created_at),
            optional(t.expires_at),
            optional(t.revoked_at),
            state.to_owned(),
        ]);
    }
    let mut widths = [0; 8];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_of_one_or_more_units() {
        let ok = |s: &str| parse_duration(s).unwrap().num_seconds();
        assert_eq!(ok("3600s"), 3_600);
        assert_eq!(ok("90m"), 5_400);
        assert_eq!(ok("12h"), 43_200);
        assert_eq!(ok("30d"), 2_592_000);
        assert_eq!(ok("2w"), 1_209_600);
        assert_eq!(ok("1d12h"), 129_600);
        assert_eq!(ok(" 1h30m "), 5_400);
        assert_eq!(ok("1.5h"), 5_400);
    }

    #[test]
    fn durations_that_are_refused_say_why() {
        let err = |s: &str| parse_duration(s).unwrap_err();
        for bad in ["", "3600", "5x", "h", "-5m", "99999999999999999999d"] {
            assert!(
                err(bad).contains("expected a duration like 30d"),
                "{bad:?}: {}",
                err(bad)
            );
        }
        assert!(err("0s").contains("longer than zero"));
        assert!(err("9999999999999999w").contains("too large"));
        // Fits humantime's range, not a timestamp's.
        assert!(
            err("99999999999w").contains("too long"),
            "{}",
            err("99999999999w")
        );
    }

    #[test]
    fn the_table_shows_state_and_never_anything_secret() {
        let now = Utc::now();
        let token = |name: &str, expires: Option<i64>, revoked: bool| TokenInfo {
            id: Uuid::new_v4(),
            workspace_id: Uuid::nil(),
            user_id: Uuid::nil(),
            name: name.to_owned(),
            created_at: now - TimeDelta::days(1),
            expires_at: expires.map(|h| now + TimeDelta::hours(h)),
            revoked_at: revoked.then_some(now),
        };
        let text = table(
            &[
                token("ci", None, false),
                token("old", Some(-1), false),
                token("gone\nnext", Some(5), true),
            ],
            now,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("ID  "), "{text}");
        assert!(lines[1].ends_with("active"), "{text}");
        assert!(lines[2].ends_with("expired"), "{text}");
        assert!(lines[3].ends_with("revoked") && lines[3].contains("gone next"));
        // Columns line up: every row has its CREATED at the header's offset.
        let at = lines[0].find("CREATED").unwrap();
        assert!(
            lines[1..].iter().all(|l| l[at..].starts_with("20")),
            "{text}"
        );
    }
}
