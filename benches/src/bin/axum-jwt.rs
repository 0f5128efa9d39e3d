//! `axum-jwt --listen ADDR --jwks FILE [--cache ENTRIES]`: the peer the verifier is
//! measured against, written the way a Rust team would write a token check in an
//! afternoon: axum, `jsonwebtoken` (EdDSA, `kid` looked up in the same JWKS file the
//! verifier reads, issuer, audience and expiry validated), and with `--cache` a `moka`
//! cache keyed by the token string holding the caller and the expiry (checked on a hit).
//! Every request gets `200` with `x-auth-user-id`, or `401`.
//!
//! What it does not do that the verifier does (so the comparison favours it): strict
//! Ed25519 (`jsonwebtoken` uses the laxer `verify`), `typ`, revocation, route policy, the
//! other identity headers, metrics, request ids, duplicate-member and size refusals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_benches::{AUDIENCE, ISSUER, LEEWAY_SECS, unix_now};
use serde::Deserialize;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The JWKS file (as `mint` writes it).
    #[arg(long)]
    jwks: std::path::PathBuf,
    /// Cache this many verified tokens with moka (0: no cache).
    #[arg(long, default_value_t = 0)]
    cache: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

#[derive(Clone)]
struct Caller {
    sub: Arc<str>,
    exp: i64,
}

#[derive(Clone)]
struct Checker {
    keys: Arc<HashMap<String, DecodingKey>>,
    validation: Arc<Validation>,
    cache: Option<moka::sync::Cache<String, Caller>>,
}

impl Checker {
    fn caller(&self, token: &str) -> Option<Caller> {
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(token))
            && hit.exp > unix_now()
        {
            return Some(hit);
        }
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let key = self.keys.get(&kid)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .ok()?
            .claims;
        let caller = Caller {
            sub: claims.sub.into(),
            exp: claims.exp,
        };
        if let Some(cache) = &self.cache {
            cache.insert(token.to_owned(), caller.clone());
        }
        Some(caller)
    }
}

async fn check(State(checker): State<Checker>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token.and_then(|t| checker.caller(t)) {
        Some(caller) => {
            ([("x-auth-user-id", caller.sub.to_string())], StatusCode::OK).into_response()
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read(&args.jwks).with_context(|| format!("reading {:?}", args.jwks))?;
    let set: JwkSet = serde_json::from_slice(&text).context("not a JWKS")?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().context("a key without kid")?;
        keys.insert(kid, DecodingKey::from_jwk(jwk).context("an unusable key")?);
    }
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = LEEWAY_SECS as u64;
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    let cache = (args.cache > 0).then(|| {
        moka::sync::Cache::builder()
            .max_capacity(args.cache)
            .time_to_live(std::time::Duration::from_secs(300))
            .build()
    });
    let checker = Checker {
        keys: Arc::new(keys),
        validation: Arc::new(validation),
        cache,
    };
    let app = Router::new().fallback(check).with_state(checker);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    axum::serve(listener, app).await?;
    Ok(())
}
