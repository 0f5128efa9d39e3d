//! DPoP (RFC 9449) at the control plane: a proof sent to a route that issues tokens, or
//! with a DPoP-bound access token to a route that takes one, checked by the sidecar's own
//! proof checker (`portcullis_verifier::core::dpop`: form, `typ`, `alg`, public `jwk`,
//! signature, `htm`, `htu`, `iat`, `ath`, the token's key), plus what only a server
//! with a database and a secret can do:
//!
//! - **first use**: the SHA-256 of (thumbprint, `jti`) is inserted into `dpop_proofs`
//!   until the proof's `iat` leaves the acceptance window; a conflict is a replay. Every
//!   replica shares the table, so a proof is accepted once by the whole control plane.
//! - **nonces** (§8): stateless, `base64url(time (8 bytes) || HMAC-SHA256(app, time)[..16])`
//!   under a key derived from `PORTCULLIS_KEY_ENCRYPTION_KEY`, good for
//!   [`NONCE_TTL_SECS`] on any replica and for its own application only.
//!
//! Not here: reading the `DPoP` header and answering with `DPoP-Nonce` (http/), binding
//! sessions to a key (domain/sessions.rs) and tokens (domain/tokens.rs).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::{GenericClient, Pool};
use portcullis_common::ErrorCode;
pub use portcullis_verifier::core::dpop::Scheme;
use portcullis_verifier::core::dpop::{self as checker, Expect, ProofBuf, Target};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use crate::domain::apps::App;
use crate::domain::{Jkt, LEEWAY_SECS};
use crate::infra::clock;
use crate::infra::crypto::Secrets;
use crate::infra::store::{DbError, Prepared as _};

/// How long after its `iat` a proof is accepted (plus [`LEEWAY_SECS`] either way).
pub const MAX_AGE_SECS: i64 = checker::DEFAULT_MAX_AGE_SECS;
/// How long a nonce of this control plane stays good.
pub const NONCE_TTL_SECS: i64 = 300;
/// The proof algorithms accepted (`WWW-Authenticate`'s `algs`, discovery's
/// `dpop_signing_alg_values_supported`).
pub const ALGS: &str = checker::ALGS;

/// Why a proof was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum DpopError {
    /// Missing where required, malformed, not for this request or key, too old, or seen
    /// before (`invalid_dpop_proof`). The text is the checker's fixed reason: it never
    /// quotes the proof or a token.
    #[error("{0}")]
    Invalid(&'static str),
    /// The proof lacks a nonce the application requires, or carries one that is not a
    /// current nonce of this control plane for this application (`use_dpop_nonce`).
    #[error("the DPoP proof must carry the nonce of the DPoP-Nonce header")]
    UseNonce,
    /// `Authorization: DPoP` with a token that is not bound to a key (`invalid_token`).
    #[error("the token is not DPoP-bound: send it as Bearer")]
    NotBound,
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(DpopError);

/// The request a proof must name: its method, and the URL the client called, which is
/// `PORTCULLIS_PUBLIC_URL` followed by the request's path (the URL every link and
/// discovery document of the control plane is built from).
#[derive(Clone, Debug)]
pub struct Endpoint {
    method: String,
    scheme: String,
    host: String,
    path: String,
}

impl Endpoint {
    pub fn new(public_url: &str, method: &str, path: &str) -> Self {
        let (scheme, rest) = public_url
            .split_once("://")
            .unwrap_or(("https", public_url));
        let (host, base) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        Self {
            method: method.to_owned(),
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_owned(),
            path: format!("{}{path}", base.trim_end_matches('/')),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            method: &self.method,
            scheme: &self.scheme,
            host: &self.host,
            path: &self.path,
        }
    }
}

/// The proof of a token request (login, refresh, a code exchange, the provider's token
/// endpoint): the key it showed, or none without a proof. Refused without one when the
/// application requires DPoP; the nonce is required when the application says so.
pub async fn token_request(
    pool: &Pool,
    secrets: &Secrets,
    app: &App,
    proof: Option<&str>,
    endpoint: &Endpoint,
    now: i64,
) -> Result<Option<Jkt>, DpopError> {
    let Some(proof) = proof else {
        if app.settings.dpop.required {
            return Err(DpopError::Invalid(
                "this application requires a DPoP proof with token requests",
            ));
        }
        return Ok(None);
    };
    let checked = check(proof, endpoint, None, now)?;
    accept(
        pool,
        secrets,
        app,
        checked,
        app.settings.dpop.nonce_required,
        now,
    )
    .await
    .map(Some)
}

/// An access token as a request presented it: how, with which proof (the `DPoP` header),
/// to which endpoint.
#[derive(Clone, Debug)]
pub struct Presented<'a> {
    pub token: &'a str,
    pub scheme: Scheme,
    pub proof: Option<&'a str>,
    pub endpoint: Endpoint,
}

/// RFC 9449 §7: a token bound to a key (`cnf_jkt`, its `cnf.jkt`) is accepted only as
/// `Authorization: DPoP` with a proof by that key, of this request, with `ath` the token's
/// hash, used once; an unbound one only as `Bearer` or in the cookie. A nonce is not
/// required here (§9 leaves resource nonces to the server), but one that is present must
/// be current.
pub async fn check_binding(
    pool: &Pool,
    secrets: &Secrets,
    app: &App,
    presented: &Presented<'_>,
    cnf_jkt: Option<&str>,
    now: i64,
) -> Result<(), DpopError> {
    let bound = cnf_jkt
        .map(|jkt| Jkt::parse(jkt).ok_or(DpopError::Invalid("the token's cnf.jkt is malformed")))
        .transpose()?;
    let key = match checker::proof_key(bound.as_ref().map(|k| &k.0), presented.scheme) {
        Ok(Some(key)) => Jkt(*key),
        Ok(None) => return Ok(()),
        Err(refused) if refused.code == ErrorCode::InvalidToken => {
            return Err(DpopError::NotBound);
        }
        Err(refused) => return Err(DpopError::Invalid(refused.reason)),
    };
    let proof = presented.proof.ok_or(DpopError::Invalid(
        "a DPoP-bound token needs a DPoP proof by its key",
    ))?;
    let bound = (presented.token, &key);
    let checked = check(proof, &presented.endpoint, Some(bound), now)?;
    accept(pool, secrets, app, checked, false, now).await?;
    Ok(())
}

/// A nonce for `app`'s clients, issued at `now` (the `DPoP-Nonce` header's value).
pub fn nonce(secrets: &Secrets, app: Uuid, now: i64) -> String {
    let time = u64::try_from(now).unwrap_or(0);
    let mac = secrets.nonce_mac(app.as_bytes(), time);
    let mut raw = [0u8; 24];
    raw[..8].copy_from_slice(&time.to_be_bytes());
    raw[8..].copy_from_slice(&mac[..16]);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Whether `nonce` is one of [`nonce`]'s for `app`, issued within [`NONCE_TTL_SECS`].
fn nonce_ok(secrets: &Secrets, app: Uuid, nonce: &str, now: i64) -> bool {
    let mut raw = [0u8; 24];
    if nonce.len() != 32 || URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) != Ok(24) {
        return false;
    }
    let mut time = [0u8; 8];
    time.copy_from_slice(&raw[..8]);
    let time = u64::from_be_bytes(time);
    let Ok(issued) = i64::try_from(time) else {
        return false;
    };
    if issued > now + LEEWAY_SECS || now - issued > NONCE_TTL_SECS {
        return false;
    }
    let mac = secrets.nonce_mac(app.as_bytes(), time);
    bool::from(raw[8..].ct_eq(&mac[..16]))
}

/// What a proof that passed the checker leaves for the rest: owned, so the checker's
/// buffer (a few KiB) is gone before any await.
#[derive(Debug)]
struct Checked {
    jkt: Jkt,
    /// SHA-256 over the thumbprint and the `jti`: the proof's row in `dpop_proofs`.
    seen_as: [u8; 32],
    /// When the proof leaves the acceptance window.
    until: i64,
    nonce: Option<String>,
}

fn check(
    proof: &str,
    endpoint: &Endpoint,
    bound: Option<(&str, &Jkt)>,
    now: i64,
) -> Result<Checked, DpopError> {
    let mut buf = Box::new(ProofBuf::new());
    let expect = Expect {
        target: endpoint.target(),
        access_token: bound.map(|(token, _)| token.as_bytes()),
        jkt: bound.map(|(_, key)| &key.0),
        now,
        max_age_secs: MAX_AGE_SECS,
        leeway_secs: LEEWAY_SECS,
    };
    let accepted = checker::check(proof.as_bytes(), &expect, &mut buf)
        .map_err(|refused| DpopError::Invalid(refused.reason))?;
    let mut seen_as = Sha256::new();
    seen_as.update(accepted.jkt);
    seen_as.update(accepted.jti.as_bytes());
    Ok(Checked {
        jkt: Jkt(accepted.jkt),
        seen_as: seen_as.finalize().into(),
        until: accepted.usable_until(&expect),
        nonce: accepted.nonce.map(str::to_owned),
    })
}

/// The nonce, then first use (a refused nonce spends nothing: the client retries with a
/// new proof anyway).
async fn accept(
    pool: &Pool,
    secrets: &Secrets,
    app: &App,
    checked: Checked,
    nonce_required: bool,
    now: i64,
) -> Result<Jkt, DpopError> {
    match checked.nonce.as_deref() {
        Some(nonce) if nonce_ok(secrets, app.id, nonce, now) => {}
        Some(_) => return Err(DpopError::UseNonce),
        None if nonce_required => return Err(DpopError::UseNonce),
        None => {}
    }
    let client = pool.get().await?;
    if !first_use(&client, &checked.seen_as, checked.until, now).await? {
        metrics::counter!("portcullis_dpop_replays_total").increment(1);
        return Err(DpopError::Invalid("the DPoP proof was used before"));
    }
    Ok(checked.jkt)
}

/// Records a proof as seen until `until`; false if it was seen before and is still
/// remembered. A row past its time (not yet pruned) is taken over.
async fn first_use(
    client: &impl GenericClient,
    seen_as: &[u8; 32],
    until: i64,
    now: i64,
) -> Result<bool, DbError> {
    let inserted = client
        .exec(
            "INSERT INTO dpop_proofs (hash, expires_at) VALUES ($1, $2)
             ON CONFLICT (hash) DO UPDATE SET expires_at = EXCLUDED.expires_at
             WHERE dpop_proofs.expires_at < $3",
            &[&seen_as.as_slice(), &clock::at(until), &clock::at(now)],
        )
        .await?;
    Ok(inserted == 1)
}

/// Deletes the proofs no longer in their window (the maintenance pass).
pub async fn prune(client: &impl GenericClient, now: i64) -> Result<u64, DbError> {
    Ok(client
        .exec(
            "DELETE FROM dpop_proofs WHERE expires_at < $1",
            &[&clock::at(now)],
        )
        .await?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_public_url_and_the_path() {
        let e = Endpoint::new("HTTPS://auth.example.com/base/", "POST", "/v1/apps/a/login");
        let t = e.target();
        assert_eq!(
            (t.method, t.scheme, t.host, t.path),
            ("POST", "https", "auth.example.com", "/base/v1/apps/a/login")
        );
        let e = Endpoint::new("http://127.0.0.1:8080", "GET", "/v1/apps/a/me");
        let t = e.target();
        assert_eq!((t.host, t.path), ("127.0.0.1:8080", "/v1/apps/a/me"));
    }

    #[test]
    fn nonces_are_per_application_and_expire() {
        let secrets = Secrets::new(&[7; 32]);
        let (app, other) = (Uuid::now_v7(), Uuid::now_v7());
        let now = 1_700_000_000;
        let n = nonce(&secrets, app, now);
        assert_eq!(n.len(), 32);
        assert!(nonce_ok(&secrets, app, &n, now));
        assert!(nonce_ok(&secrets, app, &n, now + NONCE_TTL_SECS));
        assert!(!nonce_ok(&secrets, app, &n, now + NONCE_TTL_SECS + 1));
        assert!(
            !nonce_ok(&secrets, app, &n, now - LEEWAY_SECS - 1),
            "from the future"
        );
        assert!(!nonce_ok(&secrets, other, &n, now), "another application's");
        assert!(
            !nonce_ok(&Secrets::new(&[8; 32]), app, &n, now),
            "another key's"
        );
        let mut forged = URL_SAFE_NO_PAD.decode(&n).unwrap();
        forged[..8].copy_from_slice(&(now as u64 + 10).to_be_bytes());
        assert!(!nonce_ok(
            &secrets,
            app,
            &URL_SAFE_NO_PAD.encode(forged),
            now
        ));
        for junk in ["", "x", &"A".repeat(32), &format!("{n}=")] {
            assert!(!nonce_ok(&secrets, app, junk, now), "{junk:?}");
        }
    }
}
