//! `hyper-verify-strict [ADDR] [JWKS_FILE]`: the "hyper + one `verify_strict` per request"
//! HTTP baseline. The same server as `bare-hyper`, but each request's
//! `Authorization: Bearer` token is split, its signature base64url-decoded and checked with
//! `ed25519-dalek`'s `verify_strict` against one fixed key: `200` when it verifies, `401`
//! otherwise. No header, `kid`, claim or revocation is looked at.
//!
//! It measures the floor of a verifier that must check a signature per request; the
//! verifier's throughput on all-distinct tokens (no cache hit possible) is compared with
//! it. The key is the first Ed25519 key of `JWKS_FILE` (else `$PORTCULLIS_BENCH_JWKS_FILE`),
//! as written by the `mint` tool. Listens on `ADDR` (default `127.0.0.1:9000`).

use anyhow::Context;
use hyper::StatusCode;

fn main() -> anyhow::Result<()> {
    let addr = portcullis_benches::listen_addr_arg("127.0.0.1:9000")?;
    let path = std::env::args()
        .nth(2)
        .or_else(|| std::env::var("PORTCULLIS_BENCH_JWKS_FILE").ok())
        .context(
            "usage: hyper-verify-strict [ADDR] JWKS_FILE (or set PORTCULLIS_BENCH_JWKS_FILE)",
        )?;
    let jwks = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let key = portcullis_benches::first_ed25519_key(&jwks)
        .with_context(|| format!("loading the key of {path}"))?;
    portcullis_benches::serve_http1(addr, move |headers| {
        match portcullis_benches::bearer(headers) {
            Some(token) if portcullis_benches::verify_compact_strict(&key, token) => StatusCode::OK,
            _ => StatusCode::UNAUTHORIZED,
        }
    })
}
