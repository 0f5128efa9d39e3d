//! Test harness: throwaway **real** servers for Portcullis tests.
//!
//! This crate starts private, disposable instances of `redis-server` and PostgreSQL
//! from the binaries installed on the machine, each on its own free loopback port and
//! in its own temporary directory, so that every crate's tests (unit, integration and
//! the end-to-end suite) exercise the real thing instead of mocks:
//!
//! - [`RedisServer`]: an empty, non-persistent `redis-server`; can be stopped and
//!   restarted on the same port (with fresh, empty data) to test reconnect paths.
//!   [`RedisServer::start_tls`] makes one that speaks only TLS.
//! - [`RedisCluster`]: a Redis Cluster of N masters (no replicas), nodes that can be
//!   stopped and restarted one at a time.
//! - [`RedisSentinelGroup`]: a master, a replica and three Sentinels watching them; the
//!   master can be killed and the failover awaited.
//! - [`PostgresServer`]: a fresh cluster made by `initdb` (trust auth, user `postgres`),
//!   with [`PostgresServer::create_database`] for per-test databases; a restart keeps
//!   the data. [`PostgresServer::start_tls`] makes one that refuses connections
//!   without TLS.
//! - [`tls::TestCa`]: a throwaway certificate authority for the TLS servers and their
//!   clients.
//! - [`mail::SmtpServer`]: a real SMTP server process (Debian's `python3-aiosmtpd`)
//!   writing to a maildir the tests read; can be stopped and restarted (an SMTP outage).
//! - [`sink::HttpSink`]: an HTTP endpoint in the test process that records what it is
//!   sent (SMS providers, webhooks), answers a chosen status, and can go away.
//! - [`oidc::OidcProvider`]: a real OpenID provider (npm `oidc-provider`, installed into a
//!   cache directory on first use) with a headless sign-in through its own pages.
//! - [`rp::RelyingParty`]: a certified OpenID relying party (npm `openid-client`, installed
//!   like the provider's packages) as the client of an OpenID Provider under test.
//! - [`dpop::DpopClient`]: an independent DPoP (RFC 9449) proof client (npm `dpop`, installed
//!   likewise), with hand-built attack proofs beside the package's valid ones.
//! - [`pypi::python`]: a Python with independent checkers from PyPI (an OpenAPI 3.1
//!   validator), installed once into a cache directory.
//! - [`github::GitHubStandIn`]: GitHub's OAuth app flow (authorize, access token, the
//!   user API) on loopback, recording what it is sent.
//! - [`browser::run`]: a headless Chromium (Debian's `chromium`, driven by npm
//!   `playwright-core`) with a WebAuthn virtual authenticator, for the passkey tests.
//!
//! Servers are independent of each other, so tests using them can run in parallel:
//! give every test its own server. Dropping a server kills its process and removes its
//! directory. Every server writes its output to a log file in its directory, and a
//! failed start reports the last lines of that log.
//!
//! What it is **not** for: it is not a way to run Portcullis in production or to
//! manage long-lived services, nothing here is tuned for durability (PostgreSQL runs
//! with `fsync=off`, Redis never saves), and it does not install anything: missing
//! binaries produce an error naming the Debian package to install (or run
//! `scripts/ensure-deps`). It is not meant for benchmarking either: the settings favour
//! fast start-up over realistic performance.
//!
//! When the tests run as root, PostgreSQL (which refuses to run as root) is run as the
//! `postgres` system user.

pub mod browser;
pub mod dpop;
pub mod github;
pub mod http;
pub mod mail;
pub mod nginx;
mod node_lines;
mod npm;
pub mod oidc;
mod postgres;
mod processes;
pub mod pypi;
mod redis_cluster;
mod redis_sentinel;
mod redis_server;
pub mod rp;
pub mod sink;
pub mod tls;
pub mod tokens;

pub use postgres::PostgresServer;
pub use processes::find_binary;
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::{RedisSentinelGroup, Secured};
pub use redis_server::RedisServer;

// What the modules share with each other (all `pub(crate)`).
pub(crate) use postgres::*;
pub(crate) use processes::*;
pub(crate) use redis_server::*;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Polls `probe` every 20 ms until it returns true; returns how long that took.
///
/// # Panics
///
/// Panics when `limit` passes first (a test waiting on a server that never gets there).
pub async fn eventually<F, Fut>(limit: Duration, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ports handed out by [`free_port`] in this process, never handed out twice.
static HANDED_OUT_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// This crate's directory (`tests/`) in the checkout being tested, found at run time: a
/// compile-time `env!("CARGO_MANIFEST_DIR")` would keep the path of whichever checkout
/// first built a shared target directory (cargo does not rebuild a moved workspace).
pub fn crate_dir() -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .and_then(|running| {
            running
                .ancestors()
                .map(|dir| dir.join("tests"))
                .find(|dir| dir.join("src/lib.rs").is_file() && dir.join("oidc").is_dir())
        })
        .unwrap_or_else(|| built.to_path_buf())
}

/// The `node_modules` of `tests/<name>`'s lock file (e.g. `"dpop"`), installed on first
/// use into the cache as the harness's own scripts get it: for a test that runs a script
/// of its own (link it beside the script: ES modules resolve packages next to the file).
///
/// # Errors
///
/// As the install: `npm` missing, or `npm ci` failing.
pub fn npm_modules(name: &str) -> anyhow::Result<std::path::PathBuf> {
    npm::installed(&crate_dir().join(name), &format!("portcullis-{name}"))
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding an ephemeral port and releasing it, so another process
/// may take it before the caller binds it (the servers here retry on a new port when
/// that happens). Within this process the same port is never returned twice.
///
/// # Panics
///
/// Panics if no loopback port can be bound at all.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("binding an ephemeral TCP port on 127.0.0.1 must work to run servers");
        let mut handed_out = HANDED_OUT_PORTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: BTreeSet<u16> = (0..20).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 20);
        for port in ports {
            assert_ne!(port, 0);
            drop(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap());
        }
    }
}
