//! API tokens: `authorization: Bearer <token>` maps to a (workspace, user).
//!
//! Tokens are 32 random bytes, shown once; only their SHA-256 is stored, so a database leak
//! does not leak credentials. A high-entropy secret needs no slow hash.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::schema::api_tokens;

/// Whom a request acts for. The workspace always comes from here, never from a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub workspace_id: Uuid,
    pub user_id: Uuid,
}

/// Prefix of every token, so that a leaked one is recognisable in logs and secret scanners.
const TOKEN_PREFIX: &str = "cex_";

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token for `principal` and returns the secret; only its hash is kept.
pub async fn create_token(
    conn: &mut AsyncPgConnection,
    principal: Principal,
    name: &str,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> Result<String, diesel::result::Error> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    diesel::insert_into(api_tokens::table)
        .values((
            api_tokens::id.eq(Uuid::new_v4()),
            api_tokens::token_sha256.eq(hash_token(&token)),
            api_tokens::workspace_id.eq(principal.workspace_id),
            api_tokens::user_id.eq(principal.user_id),
            api_tokens::name.eq(name),
            api_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(token)
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
        .first::<(Uuid, Uuid)>(conn)
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
