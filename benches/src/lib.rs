//! Shared pieces of the Portcullis benchmarks: minting realistic access tokens and key
//! sets, the verifier settings they satisfy, a strict compact-JWS signature check (the
//! criterion floor), and the keep-alive client of the latency probes.
//!
//! Nothing here is measured by itself: the criterion bench (`benches/verify.rs`) measures
//! the verify core against `ed25519-dalek` and `jsonwebtoken`, and the binaries in
//! `src/bin/` are the HTTP peer (`axum-jwt`), the token minter and the latency probes
//! that `scripts/bench` drives. See `benches/README.md`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use hyper::header;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use portcullis_tests::tokens;
use portcullis_verifier::core::{KeySet, Revocations, Settings, Snapshot, Trust};

/// Issuer the benches mint for (the same value the verifier is configured with).
pub const ISSUER: &str = "https://auth.example.test";
/// Audience (and `client_id`) the benches mint for.
pub const AUDIENCE: &str = "0190a1b2-0000-7000-8000-00000000a00a";
/// Lifetime of minted tokens: long enough that no bench run sees one expire.
pub const TOKEN_TTL_SECS: i64 = 24 * 3600;
/// Clock skew the verifier tolerates by default (and the benches configure).
pub const LEEWAY_SECS: i64 = 30;

pub use portcullis_tests::tokens::{
    jwks_json, kid, new_id as random_uuid, random_signing_key, signing_key, unix_now,
};

/// Mints the benches' tokens: [`portcullis_tests::tokens::Minter`] with the benches'
/// claim shape (issued 10 s ago, valid [`TOKEN_TTL_SECS`], a fixed user, the given `jti`
/// and session).
#[derive(Debug)]
pub struct Minter(tokens::Minter);

impl Minter {
    pub fn new(key: SigningKey, issuer: &str, audience: &str) -> Self {
        Self(tokens::Minter::new(key, issuer, audience))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// A token issued at `now` with the given `jti` and `sid`.
    pub fn mint(&self, now: i64, jti: &str, sid: &str) -> String {
        self.mint_bound(now, jti, sid, None)
    }

    /// [`Minter::mint`], bound to the DPoP key of thumbprint `jkt` when given.
    pub fn mint_bound(&self, now: i64, jti: &str, sid: &str, jkt: Option<&str>) -> String {
        let mut claims = self.0.claims(
            now - 10,
            TOKEN_TTL_SECS + 10,
            "0190a1b2-0000-7000-8000-000000000055",
            sid,
        );
        claims.jti = jti.to_owned();
        claims.cnf = jkt.map(|jkt| portcullis_common::token::Confirmation {
            jkt: jkt.to_owned(),
        });
        self.0.sign(&claims)
    }
}

/// A realistic token signed by `key` for [`ISSUER`] and [`AUDIENCE`], issued at `now`,
/// with the given `jti` (and a fixed session id).
pub fn mint(key: &SigningKey, now: i64, jti: &str) -> String {
    Minter::new(key.clone(), ISSUER, AUDIENCE).mint(
        now,
        jti,
        "0190a1b2-0000-7000-8000-000000000051",
    )
}

/// The verifier settings these tokens satisfy: [`ISSUER`], [`AUDIENCE`], leeway
/// [`LEEWAY_SECS`], `typ` `at+jwt` (the verifier's defaults for a Portcullis issuer).
pub fn settings() -> Settings {
    Settings {
        issuers: vec![ISSUER.to_owned()],
        audiences: vec![AUDIENCE.to_owned()],
        leeway_secs: LEEWAY_SECS,
        typs: vec![portcullis_common::token::ACCESS_TOKEN_TYP.to_owned()],
    }
}

/// A verifier snapshot holding `keys` and no revocations.
///
/// # Errors
///
/// Fails when the verifier refuses the key set.
pub fn snapshot(keys: &[VerifyingKey]) -> anyhow::Result<Snapshot> {
    let keys = KeySet::from_jwks(jwks_json(keys).as_bytes(), Trust::Portcullis)
        .map_err(|e| anyhow::anyhow!("key set refused: {e:?}"))?;
    Ok(Snapshot {
        keys: Arc::new(keys),
        revocations: Revocations::default(),
        version: 1,
    })
}

/// The two halves of a compact JWS a signature check needs: the signing input
/// (`header.payload`) and the base64url signature segment.
pub fn split_signature(token: &[u8]) -> Option<(&[u8], &[u8])> {
    let dot = token.iter().rposition(|b| *b == b'.')?;
    Some((&token[..dot], &token[dot + 1..]))
}

/// What the "hyper + one `verify_strict`" baseline does per request, and nothing more:
/// split off the signature, decode it from base64url and run `ed25519-dalek`'s
/// `verify_strict` over the signing input. No header, `kid`, `typ` or claim is read.
pub fn verify_compact_strict(key: &VerifyingKey, token: &[u8]) -> bool {
    let Some((signing_input, signature)) = split_signature(token) else {
        return false;
    };
    // Room for the decoder's length estimate; a valid signature decodes to 64 bytes.
    let mut buf = [0u8; 66];
    let Ok(64) = URL_SAFE_NO_PAD.decode_slice(signature, &mut buf) else {
        return false;
    };
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&buf[..64]);
    key.verify_strict(signing_input, &Signature::from_bytes(&sig))
        .is_ok()
}

/// One keep-alive HTTP/1.1 client connection (the latency probes' view of a server).
#[derive(Debug)]
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
}

impl Client {
    /// Connects with `TCP_NODELAY`, as a latency probe should.
    ///
    /// # Errors
    ///
    /// Fails when nothing accepts the connection.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    /// One request: an optional bearer token and an optional JSON body.
    ///
    /// # Errors
    ///
    /// Fails when the connection breaks.
    pub async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        token: Option<&str>,
        json: Option<String>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        use http_body_util::BodyExt as _;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if json.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        self.sender.ready().await?;
        let body = http_body_util::Full::new(Bytes::from(json.unwrap_or_default()));
        let response = self.sender.send_request(request.body(body)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// `GET path` with an optional bearer token.
    ///
    /// # Errors
    ///
    /// Fails when the connection breaks.
    pub async fn get(
        &mut self,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(hyper::Method::GET, path, token, None).await
    }

    /// Verifies `token` at a verifier: `Ok(None)` when accepted, `Ok(Some(code))` with the
    /// problem's `code` when refused with 401.
    ///
    /// # Errors
    ///
    /// Fails on any other answer.
    pub async fn verify(&mut self, token: &str) -> anyhow::Result<Option<String>> {
        let (status, body) = self.get("/v1/verify", Some(token)).await?;
        match status {
            StatusCode::OK => Ok(None),
            StatusCode::UNAUTHORIZED => {
                let problem: serde_json::Value =
                    serde_json::from_slice(&body).context("401 body is not JSON")?;
                Ok(Some(
                    problem["code"].as_str().unwrap_or_default().to_owned(),
                ))
            }
            other => bail!(
                "unexpected {other} from /v1/verify: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
}

impl Client {
    /// Polls `/v1/verify` with `token` in a tight loop (no sleep) until the verifier answers
    /// `401 token_revoked`; returns the number of polls. Fails after `limit` from `started`.
    ///
    /// # Errors
    ///
    /// Fails on a timeout or any other refusal.
    pub async fn until_revoked(
        &mut self,
        token: &str,
        started: std::time::Instant,
        limit: std::time::Duration,
    ) -> anyhow::Result<u64> {
        let mut polls = 0;
        loop {
            polls += 1;
            match self.verify(token).await? {
                None if started.elapsed() > limit => {
                    bail!("the revocation did not reach the verifier within {limit:?}")
                }
                None => {}
                Some(code) if code == "token_revoked" => return Ok(polls),
                Some(code) => bail!("refused with {code}, expected token_revoked"),
            }
        }
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
