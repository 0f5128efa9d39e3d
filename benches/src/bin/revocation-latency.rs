//! `revocation-latency`: how fast a revocation reaches a running verifier, and how much
//! memory a large revocation set costs it. Both run the real release verifier binary fed
//! by a real `redis-server`.
//!
//! Default mode: for each of `--sessions K` (200) fresh sessions, mint a token with that
//! `sid`, check the verifier answers `200` on `GET /v1/verify`, then revoke the session
//! exactly as the control plane does (API.md §5: `ZADD portcullis:revoked:sessions EXP S`,
//! `INCR portcullis:version` -> N, `PUBLISH portcullis:events
//! {"kind":"session_revoked","session_id":S,"until":EXP,"version":N}`) and measure the time
//! from just before the `PUBLISH` until the verifier first answers `401 token_revoked`,
//! polling over one keep-alive connection in a tight loop (no sleep). Prints p50, p99 and
//! max in ms. Target: p99 <= 10 ms.
//!
//! `--rss N`: loads N revoked sessions (random UUIDs, `ZADD` in pipelined batches of 10k)
//! before the verifier starts, waits until it is ready, checks that a token of a revoked
//! session is refused and a fresh one accepted, and prints the verifier's `VmRSS` (and peak
//! `VmHWM`) from `/proc/PID/status` in MiB. Target: <= 150 MiB for N = 1,000,000.
//!
//! Redis is a throwaway `redis-server` started here unless `--redis-url` names one; that
//! one must be disposable, as the `portcullis:` keys in it are overwritten. The verifier is
//! killed at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hyper::StatusCode;
use portcullis_benches::{
    Client, Minter, TOKEN_TTL_SECS, ms, percentile, random_signing_key, random_uuid, unix_now,
};
use portcullis_common::redis_layout::{self as layout, Event};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

/// How long the verifier may take to become ready (a million revocations included).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one revocation may take to reach the verifier before the run fails.
const REVOCATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Revoked sessions per `ZADD` in `--rss` mode, and `ZADD`s per pipeline.
const ZADD_BATCH: usize = 10_000;
const ZADDS_PER_PIPELINE: usize = 10;

#[derive(Debug, Parser)]
#[command(about = "Measure PUBLISH -> rejected latency, or the verifier's RSS with N revocations")]
struct Args {
    /// A disposable Redis to use instead of starting a throwaway redis-server.
    #[arg(long)]
    redis_url: Option<String>,
    /// The verifier binary (default: `portcullis-verifier` next to this binary).
    #[arg(long)]
    verifier: Option<PathBuf>,
    /// Sessions revoked one after the other in latency mode.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Instead of the latency, load N revoked sessions and report the verifier's RSS.
    #[arg(long, value_name = "N")]
    rss: Option<usize>,
}

/// The verifier child process, killed when dropped.
#[derive(Debug)]
struct VerifierProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for VerifierProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl VerifierProcess {
    fn spawn(binary: &PathBuf, redis_url: &str) -> anyhow::Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], portcullis_tests::free_port()).into();
        let child = Command::new(binary)
            .env("PORTCULLIS_REDIS_URL", redis_url)
            .env("PORTCULLIS_VERIFIER_ISSUER", portcullis_benches::ISSUER)
            .env("PORTCULLIS_VERIFIER_AUDIENCE", portcullis_benches::AUDIENCE)
            .env("PORTCULLIS_VERIFIER_LISTEN", addr.to_string())
            .env("PORTCULLIS_VERIFIER_GRPC_LISTEN", "off")
            .env("PORTCULLIS_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with `cargo build --release -p portcullis-verifier`)",
                    binary.display()
                )
            })?;
        Ok(Self { child, addr })
    }

    /// Waits until `/readyz` answers 200; returns a keep-alive client connection.
    async fn wait_ready(&mut self) -> anyhow::Result<Client> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the verifier exited before becoming ready: {status}");
            }
            if let Ok(mut client) = Client::connect(self.addr).await
                && let Ok((StatusCode::OK, _)) = client.get("/readyz", None).await
            {
                return Ok(client);
            }
            if Instant::now() > deadline {
                bail!("the verifier was not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `VmRSS` and `VmHWM` (peak) of the process, in KiB.
    fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// Writes the key set and version 1, and clears any revocation left in a reused Redis.
async fn seed_redis(conn: &mut MultiplexedConnection, minter: &Minter) -> anyhow::Result<()> {
    let jwks = portcullis_benches::jwks_json(&[minter.verifying_key()]);
    let () = conn.set(layout::JWKS, jwks).await?;
    let () = conn.set(layout::VERSION, 1).await?;
    let _: i64 = conn
        .del(&[layout::REVOKED_SESSIONS, layout::REVOKED_USERS])
        .await?;
    Ok(())
}

async fn latency(
    conn: &mut MultiplexedConnection,
    client: &mut Client,
    minter: &Minter,
    sessions: usize,
) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(sessions);
    let mut polls = 0u64;
    for _ in 0..sessions {
        let now = unix_now();
        let sid = random_uuid();
        let token = minter.mint(now, &random_uuid(), &sid);
        if let Some(code) = client.verify(&token).await? {
            bail!("a fresh token was refused with {code}");
        }
        let until = now + TOKEN_TTL_SECS;
        let _: i64 = conn.zadd(layout::REVOKED_SESSIONS, &sid, until).await?;
        let version: u64 = conn.incr(layout::VERSION, 1).await?;
        let event = Event::SessionRevoked {
            session_id: sid,
            until,
            version,
        }
        .encode();
        let started = Instant::now();
        let _: i64 = conn.publish(layout::EVENTS_CHANNEL, event).await?;
        polls += client
            .until_revoked(&token, started, REVOCATION_TIMEOUT)
            .await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "revocation latency (PUBLISH -> first 401 token_revoked), {} sessions: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({:.1} polls per revocation)",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples[samples.len() - 1]),
        polls as f64 / samples.len() as f64,
    );
    Ok(())
}

/// Loads `n` revoked sessions (random UUIDs); returns one of them.
async fn load_revocations(conn: &mut MultiplexedConnection, n: usize) -> anyhow::Result<String> {
    let until = unix_now() + TOKEN_TTL_SECS;
    let first = random_uuid();
    let mut pending = Some(first.clone());
    let mut left = n;
    while left > 0 {
        let mut pipe = redis::pipe();
        for _ in 0..ZADDS_PER_PIPELINE {
            if left == 0 {
                break;
            }
            let batch = left.min(ZADD_BATCH);
            left -= batch;
            let members: Vec<(i64, String)> = (0..batch)
                .map(|_| (until, pending.take().unwrap_or_else(random_uuid)))
                .collect();
            pipe.zadd_multiple(layout::REVOKED_SESSIONS, &members)
                .ignore();
        }
        let () = pipe.query_async(conn).await?;
    }
    let _: u64 = conn.incr(layout::VERSION, 1).await?;
    let stored: u64 = conn.zcard(layout::REVOKED_SESSIONS).await?;
    if stored != n as u64 {
        bail!("{stored} revoked sessions stored, expected {n}");
    }
    Ok(first)
}

async fn rss(
    conn: &mut MultiplexedConnection,
    binary: &PathBuf,
    redis_url: &str,
    minter: &Minter,
    n: usize,
) -> anyhow::Result<()> {
    let loading = Instant::now();
    let revoked_sid = load_revocations(conn, n).await?;
    eprintln!(
        "loaded {n} revoked sessions in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let starting = Instant::now();
    let mut verifier = VerifierProcess::spawn(binary, redis_url)?;
    let mut client = verifier.wait_ready().await?;
    let ready_after = starting.elapsed();
    let now = unix_now();
    let revoked = minter.mint(now, &random_uuid(), &revoked_sid);
    match client.verify(&revoked).await? {
        Some(code) if code == "token_revoked" => {}
        other => bail!("a token of a revoked session got {other:?}, expected token_revoked"),
    }
    if let Some(code) = client
        .verify(&minter.mint(now, &random_uuid(), &random_uuid()))
        .await?
    {
        bail!("a fresh token was refused with {code}");
    }
    let (rss, hwm) = verifier.memory_kib()?;
    println!(
        "verifier memory with {n} revoked sessions: VmRSS {:.1} MiB (peak VmHWM {:.1} MiB), ready {:.2} s after start",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        ready_after.as_secs_f64(),
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = match args.verifier {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("portcullis-verifier"),
    };
    // Kept alive (and killed on drop) for the whole run when we start it.
    let mut own_redis = None;
    let redis_url = match args.redis_url {
        Some(url) => url,
        None => own_redis
            .insert(portcullis_tests::RedisServer::start()?)
            .url(),
    };
    let mut conn = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {redis_url}"))?;
    // The default 500 ms response timeout is too short for the pipelined bulk loads.
    conn.set_response_timeout(Duration::from_secs(60));
    let minter = Minter::new(
        random_signing_key(),
        portcullis_benches::ISSUER,
        portcullis_benches::AUDIENCE,
    );
    seed_redis(&mut conn, &minter).await?;

    if let Some(n) = args.rss {
        return rss(&mut conn, &binary, &redis_url, &minter, n).await;
    }
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let mut verifier = VerifierProcess::spawn(&binary, &redis_url)?;
    let mut client = verifier.wait_ready().await?;
    latency(&mut conn, &mut client, &minter, args.sessions).await?;
    drop(verifier);
    drop(own_redis);
    Ok(())
}
