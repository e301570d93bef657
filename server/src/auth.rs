//! API tokens: `authorization: Bearer <token>` maps to a (workspace, user).
//!
//! Tokens are 32 random bytes, shown once; only their SHA-256 is stored, so a database leak
//! does not leak credentials. A high-entropy secret needs no slow hash.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::schema::api_tokens;
use crate::ids::{UserId, WorkspaceId};

/// Whom a request acts for. The workspace always comes from here, never from a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub workspace_id: WorkspaceId,
    pub user_id: UserId,
}

/// Prefix of every token, so that a leaked one is recognisable in logs and secret scanners.
const TOKEN_PREFIX: &str = "cex_";

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token just issued: its id, to list or revoke it by, and the secret, which exists nowhere
/// else (`Debug` does not show it).
pub struct IssuedToken {
    pub id: Uuid,
    pub secret: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("secret", &"***")
            .finish()
    }
}

/// Creates a token for `principal`; only its hash is kept. `expires_at` may be in the past (the
/// token is then refused from the start).
pub async fn issue_token(
    conn: &mut AsyncPgConnection,
    principal: Principal,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<IssuedToken, diesel::result::Error> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let id = Uuid::new_v4();
    diesel::insert_into(api_tokens::table)
        .values((
            api_tokens::id.eq(id),
            api_tokens::token_sha256.eq(hash_token(&token)),
            api_tokens::workspace_id.eq(principal.workspace_id),
            api_tokens::user_id.eq(principal.user_id),
            api_tokens::name.eq(name),
            api_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(IssuedToken { id, secret: token })
}

/// [`issue_token`], when only the secret matters.
pub async fn create_token(
    conn: &mut AsyncPgConnection,
    principal: Principal,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<String, diesel::result::Error> {
    Ok(issue_token(conn, principal, name, expires_at).await?.secret)
}

/// A token as operators see it: everything but its secret and hash.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = api_tokens, check_for_backend(diesel::pg::Pg))]
pub struct TokenInfo {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    /// Whether a call with this token would be accepted at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// Every token, or a workspace's, oldest first.
pub async fn list_tokens(
    conn: &mut AsyncPgConnection,
    workspace_id: Option<Uuid>,
) -> Result<Vec<TokenInfo>, diesel::result::Error> {
    let mut query = api_tokens::table
        .select(TokenInfo::as_select())
        .order((api_tokens::created_at.asc(), api_tokens::id.asc()))
        .into_boxed();
    if let Some(workspace_id) = workspace_id {
        query = query.filter(api_tokens::workspace_id.eq(workspace_id));
    }
    query.load(conn).await
}

/// What [`revoke_token`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked now: every later call with it is UNAUTHENTICATED.
    Revoked(TokenInfo),
    /// It was revoked before (at `revoked_at`, which is kept).
    AlreadyRevoked(TokenInfo),
    NotFound,
}

/// Revokes a token by id, at once and for good.
pub async fn revoke_token(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Revocation, diesel::result::Error> {
    let revoked = diesel::update(api_tokens::table)
        .filter(api_tokens::id.eq(id))
        .filter(api_tokens::revoked_at.is_null())
        .set(api_tokens::revoked_at.eq(Utc::now()))
        .returning(TokenInfo::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(token) = revoked {
        return Ok(Revocation::Revoked(token));
    }
    Ok(api_tokens::table
        .filter(api_tokens::id.eq(id))
        .select(TokenInfo::as_select())
        .first(conn)
        .await
        .optional()?
        .map_or(Revocation::NotFound, Revocation::AlreadyRevoked))
}

/// The principal of a live token, or `None` for an unknown, expired or revoked one.
pub async fn lookup_token(
    conn: &mut AsyncPgConnection,
    token: &str,
) -> Result<Option<Principal>, diesel::result::Error> {
    let now = Utc::now();
    api_tokens::table
        .filter(api_tokens::token_sha256.eq(hash_token(token)))
        .filter(api_tokens::revoked_at.is_null())
        .filter(
            api_tokens::expires_at
                .is_null()
                .or(api_tokens::expires_at.gt(now)),
        )
        .select((api_tokens::workspace_id, api_tokens::user_id))
        .first::<(WorkspaceId, UserId)>(conn)
        .await
        .optional()
        .map(|found| {
            found.map(|(workspace_id, user_id)| Principal {
                workspace_id,
                user_id,
            })
        })
}

/// The token of an `authorization` header value, if it is a well-formed bearer credential.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_accepts_only_the_bearer_scheme() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn hash_is_stable_hex_sha256() {
        assert_eq!(hash_token("x").len(), 64);
        assert_eq!(hash_token("x"), hash_token("x"));
        assert_ne!(hash_token("x"), hash_token("y"));
    }
}
