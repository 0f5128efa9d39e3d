//! `control-plane-probe`: the control-plane measurements a load generator cannot make.
//!
//! `hash-time [--n N]`: the mean wall time of one Argon2id hash at the control plane's
//! parameters, one at a time through its own hashing pool: the `cores / hash time` bound
//! that login throughput is compared with.
//!
//! `logout-latency --control-plane URL --verifier URL --app ID --email E --password P
//! [--sessions K]`: for each of K sessions, log in, check the verifier accepts the access
//! token, then `POST /logout` and poll the verifier over a keep-alive connection in a tight
//! loop until it answers `401 token_revoked`. The time runs from just before the logout
//! request is sent to that first 401: the whole path (PostgreSQL commit, Redis write and
//! publish, the verifier's pub/sub apply). Prints p50, p99 and max.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hyper::{Method, StatusCode};
use portcullis_benches::{Client, ms, percentile};
use portcullis_control_plane::infra::crypto::PasswordHasherPool;
use serde_json::{Value, json};

const REVOCATION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(about = "Control-plane measurements: Argon2id hash time, logout -> verifier 401")]
struct Args {
    #[command(subcommand)]
    command: Probe,
}

#[derive(Debug, Subcommand)]
enum Probe {
    HashTime {
        #[arg(long, default_value_t = 40)]
        n: usize,
    },
    LogoutLatency {
        #[arg(long)]
        control_plane: SocketAddr,
        #[arg(long)]
        verifier: SocketAddr,
        #[arg(long)]
        app: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        #[arg(long, default_value_t = 200)]
        sessions: usize,
    },
}

async fn hash_time(n: usize) -> anyhow::Result<()> {
    let pool = PasswordHasherPool::new(1);
    pool.hash("warm up the allocator").await?;
    let started = Instant::now();
    for i in 0..n {
        pool.hash(&format!("password number {i}")).await?;
    }
    let each = started.elapsed() / n as u32;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "argon2id hash (m=19456 KiB, t=2, p=1): {:.2} ms each over {n}; bound with {cores} cores: {:.1} hashes/s",
        ms(each),
        cores as f64 / each.as_secs_f64()
    );
    Ok(())
}

async fn logout_latency(
    control_plane: SocketAddr,
    verifier: SocketAddr,
    app: &str,
    credentials: Value,
    sessions: usize,
) -> anyhow::Result<()> {
    let mut cp = Client::connect(control_plane).await?;
    let mut v = Client::connect(verifier).await?;
    let mut samples = Vec::with_capacity(sessions);
    let mut answered = Vec::with_capacity(sessions);
    let mut polls = 0u64;
    for _ in 0..sessions {
        let (status, body) = cp
            .send(
                Method::POST,
                &format!("/v1/apps/{app}/login"),
                None,
                Some(credentials.to_string()),
            )
            .await?;
        if status != StatusCode::OK {
            bail!(
                "login answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let tokens: Value = serde_json::from_slice(&body).context("login body")?;
        let access = tokens["access_token"]
            .as_str()
            .context("access_token")?
            .to_owned();
        let logout = json!({"refresh_token": tokens["refresh_token"]}).to_string();
        if let Some(code) = v.verify(&access).await? {
            bail!("a fresh token was refused with {code}");
        }
        let started = Instant::now();
        let (status, body) = cp
            .send(
                Method::POST,
                &format!("/v1/apps/{app}/logout"),
                None,
                Some(logout),
            )
            .await?;
        if status != StatusCode::OK {
            bail!(
                "logout answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        answered.push(started.elapsed());
        polls += v
            .until_revoked(&access, started, REVOCATION_TIMEOUT)
            .await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    answered.sort();
    println!(
        "logout -> verifier 401 (end to end), {} sessions: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({:.1} polls per logout; the logout itself answered in p50 {:.3} ms, p99 {:.3} ms)",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples[samples.len() - 1]),
        polls as f64 / samples.len() as f64,
        ms(percentile(&answered, 50.0)),
        ms(percentile(&answered, 99.0)),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Probe::HashTime { n } => hash_time(n.max(1)).await,
        Probe::LogoutLatency {
            control_plane,
            verifier,
            app,
            email,
            password,
            sessions,
        } => {
            let credentials = json!({"email": email, "password": password});
            logout_latency(control_plane, verifier, &app, credentials, sessions.max(1)).await
        }
    }
}
