//! Access tokens (API.md §2): minted here with the active key, and checked here (for the
//! control plane's own routes) with the same verify core the sidecar runs, plus the
//! revocation state in PostgreSQL, which is fresher than any Redis copy.

use deadpool_postgres::Pool;
use portcullis_common::ErrorCode;
use portcullis_common::token::{
    AccessTokenClaims, AccessTokenHeader, Amr, Confirmation, sign_compact,
};
use portcullis_verifier::core::{Revocations, Scratch, Settings, Snapshot, Verifier};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::keys::{KeyError, KeyRing};
use crate::domain::revocations;
use crate::domain::{Jkt, LEEWAY_SECS};
use crate::infra::store::DbError;

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
    /// `DPoP` for tokens bound to the key of the request's DPoP proof (the access token
    /// carries `cnf.jkt`), else `Bearer`.
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
    /// An OAuth client's id; none: the audience (the application itself).
    pub client_id: Option<String>,
    pub sub: Uuid,
    pub sid: Uuid,
    pub roles: Vec<String>,
    /// Space-separated permissions (the union of the roles' permissions).
    pub scope: String,
    pub amr: Vec<Amr>,
    pub guest: bool,
    pub ttl: i64,
    /// The key of the request's DPoP proof: the token is bound to it (`cnf.jkt`).
    pub dpop: Option<Jkt>,
}

/// `token_type` of a token response (RFC 9449 §5): `DPoP` for a token bound to a key.
pub const fn token_type(dpop: Option<Jkt>) -> &'static str {
    if dpop.is_some() { "DPoP" } else { "Bearer" }
}

/// Signs an access token for `grant`, issued by `issuer` at `now`, with the active key.
/// Returns the token and its claims.
pub async fn mint(
    keys: &KeyRing,
    issuer: &str,
    grant: Grant<'_>,
    now: i64,
) -> Result<(String, AccessTokenClaims), KeyError> {
    let keys = keys.current().await?;
    let claims = AccessTokenClaims {
        iss: issuer.to_owned(),
        sub: grant.sub.to_string(),
        aud: grant.audience.to_owned(),
        client_id: grant.client_id.unwrap_or_else(|| grant.audience.to_owned()),
        iat: now,
        nbf: now,
        exp: now + grant.ttl,
        jti: Uuid::now_v7().to_string(),
        sid: grant.sid.to_string(),
        roles: grant.roles,
        scope: grant.scope,
        amr: grant.amr,
        guest: grant.guest,
        cnf: grant.dpop.map(|key| Confirmation { jkt: key.text() }),
    };
    let mut header = AccessTokenHeader::eddsa(&keys.kid);
    if grant.audience == OWNER_AUDIENCE {
        header.typ = OWNER_TOKEN_TYP.to_owned();
    }
    let header = serde_json::to_vec(&header).map_err(|e| KeyError::Broken(e.to_string()))?;
    let payload = serde_json::to_vec(&claims).map_err(|e| KeyError::Broken(e.to_string()))?;
    Ok((sign_compact(&keys.signer, &header, &payload), claims))
}

/// Why a presented access token was refused, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Refused, with the contract's code (`token_expired`, `token_revoked`, …).
    #[error("{0}")]
    Refused(ErrorCode),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(TokenError);

/// The sidecar's verify core, set up for the tokens the control plane checks itself:
/// users' access tokens and owners' (which carry their own `typ`).
#[derive(Debug)]
pub struct Verifiers {
    user: Verifier,
    owner: Verifier,
}

impl Verifiers {
    pub fn new(issuer: &str) -> Self {
        let verifier = |typ: &str| {
            Verifier::new(
                Settings {
                    issuers: vec![issuer.to_owned()],
                    // Each route checks the audience it expects (an application id, or owners).
                    audiences: Vec::new(),
                    leeway_secs: LEEWAY_SECS,
                    typs: vec![typ.to_owned()],
                },
                4096,
            )
        };
        Self {
            user: verifier(portcullis_common::token::ACCESS_TOKEN_TYP),
            owner: verifier(OWNER_TOKEN_TYP),
        }
    }

    /// Checks signature, `typ`, `iss`, times and `aud == audience`; then the revocation
    /// state in PostgreSQL (session revoked, or a per-user cutoff at or after `iat`).
    pub async fn authenticate(
        &self,
        keys: &KeyRing,
        pool: &Pool,
        token: &str,
        audience: &str,
        now: i64,
    ) -> Result<Principal, TokenError> {
        let keys = keys.current().await?;
        let snapshot = Snapshot {
            keys: keys.key_set.clone(),
            revocations: Revocations::default(),
            version: 0,
        };
        let mut scratch = Box::new(Scratch::new());
        let verifier = if audience == OWNER_AUDIENCE {
            &self.owner
        } else {
            &self.user
        };
        let verified = verifier
            .verify_with_payload(token.as_bytes(), now, &snapshot, &mut scratch)
            .map_err(|r| TokenError::Refused(r.code))?;
        let claims: AccessTokenClaims = verified
            .payload
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or(TokenError::Refused(ErrorCode::InvalidToken))?;
        if claims.aud != audience {
            return Err(TokenError::Refused(ErrorCode::InvalidAudience));
        }
        let (Ok(sub), Ok(sid)) = (claims.sub.parse::<Uuid>(), claims.sid.parse::<Uuid>()) else {
            return Err(TokenError::Refused(ErrorCode::InvalidToken));
        };
        let client = pool.get().await?;
        if revocations::covers(&client, &claims.sid, &claims.sub, claims.iat).await? {
            return Err(TokenError::Refused(ErrorCode::TokenRevoked));
        }
        Ok(Principal { sub, sid, claims })
    }
}
