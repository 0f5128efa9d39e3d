//! Access tokens (API.md §2): minted here with the active key, and checked here (for the
//! control plane's own routes) with the same verify core the sidecar runs, plus the
//! revocation state in PostgreSQL, which is fresher than any Redis copy.

use portcullis_common::ErrorCode;
use portcullis_common::token::{AccessTokenClaims, AccessTokenHeader, Amr, sign_compact};
use portcullis_verifier::core::{Revocations, Scratch, Snapshot};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::infra::store::Prepared as _;
use crate::state::AppState;

/// The audience (and `client_id`) of owner tokens: never an application id, so an owner
/// token is refused by every application's routes and a user token by the owner routes.
pub const OWNER_AUDIENCE: &str = "portcullis:owners";
/// The `typ` of owner tokens (RFC 8725 §3.11: explicit typing). Sidecars accept only
/// `at+jwt` by default, so an owner token never passes as a user's access token there.
pub const OWNER_TOKEN_TYP: &str = "owner+jwt";

/// `tokens` in API.md §3.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Tokens {
    pub access_token: String,
    /// Absent only from a refresh made with the refresh cookie: that token stays in its
    /// `HttpOnly` cookie, out of reach of the page's scripts.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Access-token lifetime in seconds.
    pub expires_in: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub roles: Vec<String>,
}

/// What an access token says about its bearer, once checked.
#[derive(Clone, Debug)]
pub struct Principal {
    pub sub: Uuid,
    pub sid: Uuid,
    pub claims: AccessTokenClaims,
}

/// Who a token is for and under which session; the rest of the claims follow from it.
#[derive(Debug)]
pub struct Grant<'a> {
    pub audience: &'a str,
    pub sub: Uuid,
    pub sid: Uuid,
    pub roles: Vec<String>,
    /// Space-separated permissions (the union of the roles' permissions).
    pub scope: String,
    pub amr: Vec<Amr>,
    pub guest: bool,
    pub ttl: i64,
}

/// Signs an access token for `grant`, issued at `now`. Returns the token and its claims.
pub async fn mint(
    state: &AppState,
    grant: Grant<'_>,
    now: i64,
) -> Result<(String, AccessTokenClaims), ApiError> {
    let keys = state.keys.current().await?;
    let claims = AccessTokenClaims {
        iss: state.config.issuer.clone(),
        sub: grant.sub.to_string(),
        aud: grant.audience.to_owned(),
        client_id: grant.audience.to_owned(),
        iat: now,
        nbf: now,
        exp: now + grant.ttl,
        jti: Uuid::now_v7().to_string(),
        sid: grant.sid.to_string(),
        roles: grant.roles,
        scope: grant.scope,
        amr: grant.amr,
        guest: grant.guest,
    };
    let mut header = AccessTokenHeader::eddsa(&keys.kid);
    if grant.audience == OWNER_AUDIENCE {
        header.typ = OWNER_TOKEN_TYP.to_owned();
    }
    let header = serde_json::to_vec(&header).map_err(|e| ApiError::internal(&e))?;
    let payload = serde_json::to_vec(&claims).map_err(|e| ApiError::internal(&e))?;
    Ok((sign_compact(&keys.signer, &header, &payload), claims))
}

/// Checks signature, `typ`, `iss`, times and `aud == audience`; then the revocation state in
/// PostgreSQL (session revoked, or a per-user cutoff at or after `iat`).
pub async fn authenticate(
    state: &AppState,
    token: &str,
    audience: &str,
    now: i64,
) -> Result<Principal, ApiError> {
    let keys = state.keys.current().await?;
    let snapshot = Snapshot {
        keys: keys.key_set.clone(),
        revocations: Revocations::default(),
        version: 0,
    };
    let mut scratch = Box::new(Scratch::new());
    let verifier = if audience == OWNER_AUDIENCE {
        &state.owner_verifier
    } else {
        &state.verifier
    };
    let verified = verifier
        .verify_with_payload(token.as_bytes(), now, &snapshot, &mut scratch)
        .map_err(|r| ApiError::unauthenticated(r.code))?;
    let claims: AccessTokenClaims = verified
        .payload
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or(ApiError::unauthenticated(ErrorCode::InvalidToken))?;
    if claims.aud != audience {
        return Err(ApiError::unauthenticated(ErrorCode::InvalidAudience));
    }
    let (Ok(sub), Ok(sid)) = (claims.sub.parse::<Uuid>(), claims.sid.parse::<Uuid>()) else {
        return Err(ApiError::unauthenticated(ErrorCode::InvalidToken));
    };
    let client = state.pool.get().await?;
    let revoked = client
        .q_opt(
            "SELECT 1 FROM revocations
             WHERE (kind = 'session' AND subject = $1) OR (kind = 'user' AND subject = $2 AND before >= $3)
             LIMIT 1",
            &[&claims.sid, &claims.sub, &claims.iat],
        )
        .await?;
    if revoked.is_some() {
        return Err(ApiError::unauthenticated(ErrorCode::TokenRevoked));
    }
    Ok(Principal { sub, sid, claims })
}

/// `Authorization: Bearer <token>` → the token.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
