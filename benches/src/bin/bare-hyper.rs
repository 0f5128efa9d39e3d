//! `bare-hyper [ADDR]`: the "bare hyper" HTTP baseline. A hyper 1 HTTP/1.1 keep-alive
//! server on a Tokio multi-thread runtime (one worker per core, like the verifier) that
//! answers `200` with an empty body to every request without looking at it.
//!
//! It measures the ceiling any hyper-based sidecar can reach on this machine; the
//! verifier's cached-token throughput is compared with it. Listens on `ADDR` (default
//! `127.0.0.1:9000`); stop it with a signal.

use hyper::StatusCode;

fn main() -> anyhow::Result<()> {
    let addr = portcullis_benches::listen_addr_arg("127.0.0.1:9000")?;
    portcullis_benches::serve_http1(addr, |_| StatusCode::OK)
}
