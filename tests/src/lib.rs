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
//! - [`github::GitHubStandIn`]: GitHub's OAuth app flow (authorize, access token, the
//!   user API) on loopback, recording what it is sent.
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

pub mod github;
pub mod http;
pub mod mail;
pub mod oidc;
mod redis_cluster;
mod redis_sentinel;
pub mod sink;
pub mod tls;
pub mod tokens;

pub use redis_cluster::RedisCluster;
pub use redis_sentinel::{RedisSentinelGroup, Secured};

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

use crate::tls::TestCa;

/// How many times a server start is attempted, each time on a new port.
const START_ATTEMPTS: usize = 3;
/// How long a `redis-server` may take to answer `PING`.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect, read and write timeout of one command sent by the harness to a Redis.
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Names of the CA, certificate and key files of a TLS server, in its directory.
const TLS_CA_FILE: &str = "ca.crt";
const TLS_SERVER_STEM: &str = "server";
/// How long a `postgres` may take to accept connections.
const POSTGRES_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop()` waits for a clean PostgreSQL shutdown before killing it.
const POSTGRES_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for a server.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Lines of a server log quoted in a start error.
const LOG_TAIL_LINES: usize = 25;
/// Start of the line written to a server log before each (re)start.
const LOG_BANNER: &str = "===== portcullis-tests:";
/// Hint appended to every missing-binary error.
pub(crate) const ENSURE_DEPS_HINT: &str = "(or run scripts/ensure-deps)";

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

/// Looks for an executable named `name`.
///
/// Searches, in order: `PATH`; the `bin` directories of the PostgreSQL versions under
/// `/usr/lib/postgresql` (newest version first; Debian installs `initdb` and `postgres`
/// there, off `PATH`); then `/usr/local/sbin`, `/usr/sbin` and `/sbin` (not on a
/// non-root user's `PATH` on Debian). A `name` containing `/` is checked as a path.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path_dirs = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallback_dirs = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    path_dirs
        .into_iter()
        .filter(|dir| !dir.as_os_str().is_empty())
        .chain(postgres_bin_dirs())
        .chain(fallback_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// `/usr/lib/postgresql/<version>/bin` directories, newest version first.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            bin.is_dir().then_some((version, bin))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, bin)| bin).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// [`find_binary`], or an error telling which Debian package provides `name`.
/// Runs `attempt` (given its number) up to [`START_ATTEMPTS`] times until it succeeds;
/// the error lists every attempt's failure.
pub(crate) fn retry(what: &str, mut attempt: impl FnMut(usize) -> Result<()>) -> Result<()> {
    let mut errors = Vec::new();
    for n in 0..START_ATTEMPTS {
        match attempt(n) {
            Ok(()) => return Ok(()),
            Err(err) => errors.push(format!("{err:#}")),
        }
    }
    bail!(
        "{what} after {START_ATTEMPTS} attempts:\n{}",
        errors.join("\n")
    )
}

fn require_binary(name: &str, package: &str) -> Result<PathBuf> {
    find_binary(name).ok_or_else(|| {
        anyhow!(
            "{name} not found on PATH: install it with 'apt-get install {package}' \
             {ENSURE_DEPS_HINT}"
        )
    })
}

/// Whether this process runs with effective uid 0.
fn running_as_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
        if let Some(euid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
        {
            return euid == "0";
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Uid and gid of the local user `user`, via `id`.
fn user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .with_context(|| format!("running 'id {flag} {user}'"))?;
        if !out.status.success() {
            bail!(
                "'id {flag} {user}' failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("parsing the output of 'id {flag} {user}'"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// Sends `signal` (a name such as `INT`) to `pid` with the `kill` command.
fn send_signal(pid: u32, signal: &str) -> bool {
    let kill = find_binary("kill").unwrap_or_else(|| PathBuf::from("kill"));
    Command::new(kill)
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A uniquely named directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(kind: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // Only a uniqueness salt for the directory name, not a time check.
        #[allow(clippy::disallowed_methods)]
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.subsec_nanos())
            .unwrap_or(0);
        let path = env::temp_dir().join(format!(
            "portcullis-{kind}-{}-{}-{nanos}",
            process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        ));
        fs::create_dir_all(env::temp_dir())
            .with_context(|| format!("creating {}", env::temp_dir().display()))?;
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Opens `path` for appending, writes `banner` and returns it as (stdout, stderr).
pub(crate) fn open_log(path: &Path, banner: &str) -> Result<(Stdio, Stdio)> {
    let mut file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    writeln!(file, "{LOG_BANNER} {banner} =====")
        .with_context(|| format!("writing to {}", path.display()))?;
    let stderr = file
        .try_clone()
        .with_context(|| format!("duplicating log file handle {}", path.display()))?;
    Ok((Stdio::from(file), Stdio::from(stderr)))
}

/// The last lines of a log file, formatted for an error message.
pub(crate) fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            // Only this run's output: from the last banner written by `open_log`.
            let run_start = lines
                .iter()
                .rposition(|line| line.starts_with(LOG_BANNER))
                .unwrap_or(0);
            let start = lines.len().saturating_sub(LOG_TAIL_LINES).max(run_start);
            let mut out = format!("last lines of {}:", path.display());
            for line in &lines[start..] {
                let _ = write!(out, "\n    {line}");
            }
            out
        }
        Err(err) => format!("(could not read log {}: {err})", path.display()),
    }
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// A throwaway `redis-server` on a free 127.0.0.1 port, in its own temporary directory.
///
/// It never persists anything (`--save ""`, `--appendonly no`). Dropping it kills the
/// process and removes the directory.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    mode: RedisMode,
    /// Password and TLS on top of the mode (the secured Sentinel group's processes).
    security: RedisSecurity,
    child: Option<Child>,
}

/// Password and TLS for a server of any [`RedisMode`] but [`RedisMode::Tls`] (which has
/// its own), given to [`RedisServer::start_secured_as`].
#[derive(Debug, Default)]
pub(crate) struct RedisSecurity {
    /// `--requirepass`; the readiness probe authenticates with it.
    pub(crate) password: Option<String>,
    /// TLS only, as [`RedisMode::Tls`] (`--port 0`, `--tls-port`, the CA, certificate
    /// and key in the directory); readiness is asked through `redis-cli --tls` at this
    /// path.
    pub(crate) tls_cli: Option<PathBuf>,
    /// More `redis-server` arguments, after the harness's own.
    pub(crate) args: Vec<String>,
}

/// What a [`RedisServer`] process is; decides its arguments and its readiness probe.
#[derive(Debug)]
pub(crate) enum RedisMode {
    /// A standalone server on plain TCP.
    Plain,
    /// TLS only (`--port 0`, `--tls-port` = the port), with the CA, certificate and key
    /// in its directory; readiness is asked through `redis-cli --tls` at `cli`.
    Tls { cli: PathBuf },
    /// A cluster node. The bus port is chosen too: the default, port + 10000, can be
    /// past 65535 or taken for ports in the ephemeral range.
    Cluster { bus_port: u16 },
    /// A replica of the server on 127.0.0.1:`master_port`.
    Replica { master_port: u16 },
    /// A Sentinel, with `sentinel.conf` (which it rewrites) in its directory.
    Sentinel,
}

impl RedisServer {
    /// Starts a `redis-server` from `PATH` and waits (up to ~10 s) until it answers
    /// `PING`. If it does not come up, tries again on a new port (3 attempts in all).
    ///
    /// # Errors
    ///
    /// Fails when `redis-server` is not installed (naming the package to install), or
    /// when it does not come up; the error then quotes the end of the server log.
    pub fn start() -> Result<Self> {
        Self::start_as("redis", RedisMode::Plain, |_| Ok(()))
    }

    /// Like [`start`](Self::start), but the server speaks only TLS: no plain port
    /// (`--port 0`), `--tls-port` on the port, a certificate from `ca` for `localhost`,
    /// `127.0.0.1` and `::1`, no client certificates asked for
    /// (`--tls-auth-clients no`). [`url`](Self::url) is then
    /// [`tls_url`](Self::tls_url), and [`ca_file`](Self::ca_file) the CA to trust.
    /// Readiness is checked with `redis-cli --tls` against that CA, so a start also
    /// proves the certificate chains to it.
    ///
    /// [`connection`](Self::connection) does not work on it (this crate builds the
    /// `redis` client without TLS); use the client under test, or `redis-cli --tls`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when `redis-cli` (package `redis-tools`) is
    /// missing or the certificate files cannot be written.
    pub fn start_tls(ca: &TestCa) -> Result<Self> {
        let cli = require_binary("redis-cli", "redis-tools")?;
        let issued = ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
        Self::start_as("redis-tls", RedisMode::Tls { cli }, |dir| {
            ca.write_ca(&dir.join(TLS_CA_FILE))?;
            issued.write(dir, TLS_SERVER_STEM).map(drop)
        })
    }

    /// Starts a server of `mode` in a new directory `kind`, after `prepare` has written
    /// what it needs there; 3 attempts, each on new ports.
    pub(crate) fn start_as(
        kind: &str,
        mode: RedisMode,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Self> {
        Self::start_secured_as(kind, mode, RedisSecurity::default(), prepare)
    }

    /// [`start_as`](Self::start_as) with a password and/or TLS (`security`); with TLS,
    /// `prepare` must write the CA, certificate and key files ([`TLS_CA_FILE`],
    /// [`TLS_SERVER_STEM`]).
    pub(crate) fn start_secured_as(
        kind: &str,
        mode: RedisMode,
        security: RedisSecurity,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Self> {
        let binary = require_binary("redis-server", "redis-server")?;
        let mut server = Self {
            binary,
            port: 0,
            dir: TempDir::new(kind)?,
            mode,
            security,
            child: None,
        };
        prepare(&server.dir.path)?;
        retry(&format!("redis-server ({kind}) did not start"), |_| {
            server.port = free_port();
            if let RedisMode::Cluster { bus_port } = &mut server.mode {
                *bus_port = free_port();
            }
            server.spawn()
        })?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT`, or for a TLS server [`tls_url`](Self::tls_url).
    pub fn url(&self) -> String {
        match self.mode {
            RedisMode::Tls { .. } => self.tls_url(),
            _ => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `rediss://localhost:PORT`: the host name the certificate of a
    /// [`start_tls`](Self::start_tls) server is issued for (it also names `127.0.0.1`).
    /// Meaningless for a plain server.
    pub fn tls_url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    /// The CA certificate (PEM) that a [`start_tls`](Self::start_tls) server's
    /// certificate chains to; the file does not exist for a plain server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path.join(TLS_CA_FILE)
    }

    /// The TCP port on 127.0.0.1; it stays the same across [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file that receives the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("redis.log")
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Connections to
    /// [`port`](Self::port) are refused afterwards. Does nothing when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts it again on the same port and in the
    /// same directory, with fresh, empty data; waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// Fails when the server does not come up again (for instance if another process
    /// took the port meanwhile); the error quotes the end of the server log.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        for leftover in ["dump.rdb", "appendonly.aof", "appendonlydir"] {
            let path = self.dir.path.join(leftover);
            let _ = fs::remove_file(&path);
            let _ = fs::remove_dir_all(&path);
        }
        let what = format!("redis-server did not restart on port {}", self.port);
        retry(&what, |attempt| {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            self.spawn()
        })
    }

    /// Opens a new multiplexed async connection to the server (needs a Tokio runtime).
    ///
    /// # Errors
    ///
    /// Fails when the server does not accept the connection (e.g. it is stopped).
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let url = self.url();
        let client = redis::Client::open(url.as_str()).with_context(|| format!("parsing {url}"))?;
        client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to redis-server at {url}"))
    }

    /// The directory of the server's files and log.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Spawns the server on `self.port` and waits until it answers.
    fn spawn(&mut self) -> Result<()> {
        self.stop();
        let log = self.log_path();
        let (stdout, stderr) = open_log(&log, &format!("redis-server on port {}", self.port))?;
        let port = self.port.to_string();
        let mut command = Command::new(&self.binary);
        if let RedisMode::Sentinel = self.mode {
            // The configuration file must come first; Sentinel rewrites it with what it
            // learns (replicas, other Sentinels, a failover's new master).
            command
                .arg(self.dir.path.join(SENTINEL_CONFIG))
                .arg("--sentinel");
        }
        let tls_cli = match &self.mode {
            RedisMode::Tls { cli } => Some(cli.clone()),
            _ => self.security.tls_cli.clone(),
        };
        match &tls_cli {
            Some(_) => {
                let dir = &self.dir.path;
                command
                    .args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(dir.join(format!("{TLS_SERVER_STEM}.crt")))
                    .arg("--tls-key-file")
                    .arg(dir.join(format!("{TLS_SERVER_STEM}.key")))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.join(TLS_CA_FILE))
                    .args(["--tls-auth-clients", "no"])
                    // The URL names localhost: also listen on ::1 where it exists ("-"
                    // makes that address optional).
                    .args(["--bind", "127.0.0.1 -::1"]);
            }
            None => {
                command.args(["--port", &port, "--bind", "127.0.0.1"]);
            }
        }
        if let Some(password) = &self.security.password {
            command.arg("--requirepass").arg(password);
        }
        command.args(&self.security.args);
        if !matches!(self.mode, RedisMode::Sentinel) {
            // A replica's first sync would otherwise wait 5 s for more replicas
            // (Redis 7's diskless sync delay), on a failover's new master too.
            command
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--repl-diskless-sync-delay", "0"]);
        }
        match &self.mode {
            RedisMode::Cluster { bus_port } => {
                command
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", CLUSTER_CONFIG])
                    .args(["--cluster-node-timeout", "2000"])
                    .args(["--cluster-port", &bus_port.to_string()]);
            }
            RedisMode::Replica { master_port } => {
                command.args(["--replicaof", "127.0.0.1", &master_port.to_string()]);
            }
            _ => {}
        }
        // Replication, cluster and Sentinel events are what a failing test needs to see.
        let loglevel = match self.mode {
            RedisMode::Plain | RedisMode::Tls { .. } => "warning",
            _ => "notice",
        };
        let child = command
            .arg("--dir")
            .arg(&self.dir.path)
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", loglevel])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        let pid = child.id();
        let child = self.child.insert(child);
        let ca_file = self.dir.path.join(TLS_CA_FILE);

        let deadline = Instant::now() + REDIS_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                bail!(
                    "redis-server on port {} exited ({status}) before answering PING; {}",
                    self.port,
                    log_tail(&log)
                );
            }
            let password = self.security.password.as_deref();
            let answer = match &tls_cli {
                Some(cli) => redis_tls_ping(cli, self.port, &ca_file, password),
                None => redis_ping_auth(self.port, password),
            };
            match answer {
                // Answered by *this* server (not by someone else who took the port).
                Some(RedisPong {
                    pid: Some(answering),
                }) if answering == pid => return Ok(()),
                Some(RedisPong { pid: None }) => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "redis-server on port {} did not answer PING within {:?}; {}",
                    self.port,
                    REDIS_READY_TIMEOUT,
                    log_tail(&log)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sentinel's configuration file, in its directory.
pub(crate) const SENTINEL_CONFIG: &str = "sentinel.conf";
/// A cluster node's configuration file, in its directory (kept across restarts).
const CLUSTER_CONFIG: &str = "nodes.conf";

/// Runs `cmd` on the plain-TCP Redis (or Sentinel) at 127.0.0.1:`port` over a new
/// connection, each step bounded by [`REDIS_COMMAND_TIMEOUT`].
pub(crate) fn redis_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T> {
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).with_context(|| format!("parsing {url}"))?;
    let mut conn = client
        .get_connection_with_timeout(REDIS_COMMAND_TIMEOUT)
        .with_context(|| format!("connecting to {url}"))?;
    conn.set_read_timeout(Some(REDIS_COMMAND_TIMEOUT))?;
    conn.set_write_timeout(Some(REDIS_COMMAND_TIMEOUT))?;
    cmd.query(&mut conn)
        .with_context(|| format!("{url}: {}", command_name(cmd)))
}

/// The first words of `cmd`, for error messages.
fn command_name(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .take(2)
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `INFO server` through `redis-cli --tls` trusting `ca` (authenticating with
/// `password`, if any); `Some` when it answered.
fn redis_tls_ping(cli: &Path, port: u16, ca: &Path, password: Option<&str>) -> Option<RedisPong> {
    let mut command = Command::new(cli);
    if let Some(password) = password {
        // The environment, not `-a`: no warning, and not on a command line.
        command.env("REDISCLI_AUTH", password);
    }
    let mut child = command
        .arg("--tls")
        .arg("--cacert")
        .arg(ca)
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-e",
            "INFO",
            "server",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // redis-cli has no connect timeout of its own; a server that accepts and never
    // finishes the handshake must not hang the probe.
    let Some(status) = wait_timeout(&mut child, Duration::from_secs(2)) else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    if !status.success() {
        return None;
    }
    out.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .map(|pid| RedisPong {
            pid: pid.trim().parse().ok(),
        })
}

/// A `+PONG` answer, with the `process_id` the server reported (if it did).
#[derive(Debug)]
struct RedisPong {
    pid: Option<u32>,
}

/// Sends `PING` and `INFO server` to 127.0.0.1:`port`; `Some` if it answered `+PONG`.
#[cfg(test)]
fn redis_ping(port: u16) -> Option<RedisPong> {
    redis_ping_auth(port, None)
}

/// [`redis_ping`], after `AUTH password` when there is one (which must answer `+OK`).
fn redis_ping_auth(port: u16, password: Option<&str>) -> Option<RedisPong> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    let mut request = Vec::new();
    let mut expected = Vec::new();
    if let Some(password) = password {
        request.extend_from_slice(b"*2\r\n$4\r\nAUTH\r\n");
        request.extend_from_slice(format!("${}\r\n", password.len()).as_bytes());
        request.extend_from_slice(password.as_bytes());
        request.extend_from_slice(b"\r\n");
        expected.extend_from_slice(b"+OK\r\n");
    }
    request.extend_from_slice(b"PING\r\nINFO server\r\n");
    expected.extend_from_slice(b"+PONG\r\n");
    stream.write_all(&request).ok()?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0_u8; 4096];
    loop {
        if buf.len() >= expected.len() && !buf.starts_with(&expected) {
            return None; // e.g. "-LOADING ..." while starting
        }
        if buf.len() >= expected.len()
            && let Some(info) = complete_bulk_string(&buf[expected.len()..])
        {
            let pid = String::from_utf8_lossy(info).lines().find_map(|line| {
                line.strip_prefix("process_id:")
                    .and_then(|pid| pid.trim().parse().ok())
            });
            return Some(RedisPong { pid });
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                // Answered PONG but no usable INFO: treat as up, identity unknown.
                return buf
                    .starts_with(&expected)
                    .then_some(RedisPong { pid: None });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    }
}

/// The payload of a complete RESP bulk string (`$<len>\r\n<payload>\r\n`) at the start
/// of `buf`, or `None` if it is incomplete or not a bulk string.
fn complete_bulk_string(buf: &[u8]) -> Option<&[u8]> {
    let rest = buf.strip_prefix(b"$")?;
    let header_end = rest.windows(2).position(|w| w == b"\r\n")?;
    let len: usize = std::str::from_utf8(&rest[..header_end])
        .ok()?
        .parse()
        .ok()?;
    let payload = &rest[header_end + 2..];
    (payload.len() >= len + 2).then(|| &payload[..len])
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// A throwaway PostgreSQL cluster on a free 127.0.0.1 port, in its own temporary
/// directory: superuser `postgres`, trust authentication, `fsync=off`.
///
/// Dropping it shuts the server down and removes the directory (and all data).
#[derive(Debug)]
pub struct PostgresServer {
    postgres: PathBuf,
    port: u16,
    dir: TempDir,
    /// Uid and gid to run `initdb`/`postgres` as, when this process is root.
    run_as: Option<(u32, u32)>,
    /// `ssl=on` with the files in the directory, and only `hostssl` connections.
    tls: bool,
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates a cluster with `initdb` and starts `postgres` on a free port, waiting
    /// (up to ~30 s) until it accepts connections; if it does not come up, tries again
    /// on a new port (3 attempts in all).
    ///
    /// `initdb` and `postgres` are looked up with [`find_binary`] (so Debian's
    /// `/usr/lib/postgresql/<version>/bin` is found). When this process runs as root,
    /// both run as the `postgres` system user, which then owns the directory.
    ///
    /// # Errors
    ///
    /// Fails when PostgreSQL is not installed (naming the package to install), when
    /// `initdb` fails, or when the server does not come up; the error then quotes the
    /// end of the server log.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), but with `ssl=on`, a certificate from `ca` for
    /// `localhost` and `127.0.0.1`, and a `pg_hba.conf` that rejects every TCP
    /// connection without TLS (`hostnossl ... reject`), so a client that connects
    /// at all has proved it speaks TLS. [`url`](Self::url) and the URLs of
    /// [`create_database`](Self::create_database) carry `?sslmode=require` (understood
    /// by libpq and tokio-postgres); [`ca_file`](Self::ca_file) is the CA to trust for
    /// `verify-full`.
    ///
    /// When this process is root, the key file is owned by `postgres` with mode 0600:
    /// PostgreSQL refuses a key that others can read.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when the certificate files cannot be written.
    pub fn start_tls(ca: &TestCa) -> Result<Self> {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&TestCa>) -> Result<Self> {
        let kind = if ca.is_some() {
            "postgres-tls"
        } else {
            "postgres"
        };
        let initdb = require_binary("initdb", "postgresql")?;
        // Use the `postgres` next to `initdb` (same installation) when there is one.
        let postgres = fs::canonicalize(&initdb)
            .ok()
            .and_then(|real| real.parent().map(|dir| dir.join("postgres")))
            .filter(|candidate| is_executable(candidate))
            .map_or_else(|| require_binary("postgres", "postgresql"), Ok)?;
        let run_as = if running_as_root() {
            Some(user_ids("postgres").context(
                "running as root, so PostgreSQL must run as the 'postgres' user, which \
                 was not found: install it with 'apt-get install postgresql' \
                 (or run scripts/ensure-deps)",
            )?)
        } else {
            None
        };

        let mut server = Self {
            postgres,
            port: 0,
            dir: TempDir::new(kind)?,
            run_as,
            tls: ca.is_some(),
            child: None,
        };
        server.init_cluster(&initdb)?;
        if let Some(ca) = ca {
            server.set_up_tls(ca)?;
        }

        retry("postgres did not start", |_| {
            server.port = free_port();
            server.spawn()
        })?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`, with `?sslmode=require` for a
    /// [`start_tls`](Self::start_tls) server.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The CA certificate (PEM) that a [`start_tls`](Self::start_tls) server's
    /// certificate chains to; the file does not exist for a plain server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path.join(TLS_CA_FILE)
    }

    /// The TCP port on 127.0.0.1; it stays the same across [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file that receives the output of `initdb` and `postgres`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("postgres.log")
    }

    /// Creates a new, empty database named `name` (any name PostgreSQL accepts, at
    /// most 63 bytes) with `psql`, and returns its URL
    /// (`postgres://postgres@127.0.0.1:PORT/<name>`, plus `?sslmode=require` for a
    /// [`start_tls`](Self::start_tls) server, which `psql` then connects with).
    ///
    /// # Errors
    ///
    /// Fails when the server is stopped, the name is invalid or already taken, or
    /// `psql` is not installed.
    pub fn create_database(&self, name: &str) -> Result<String> {
        if self.child.is_none() {
            bail!("cannot create database {name:?}: the PostgreSQL server is stopped");
        }
        if name.is_empty() || name.len() > 63 || name.contains('\0') {
            bail!("invalid database name {name:?}: must be 1 to 63 bytes, without NUL");
        }
        let psql = require_binary("psql", "postgresql")?;
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        let out = Command::new(&psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .arg("-c")
            .arg(&sql)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", psql.display()))?;
        if !out.status.success() {
            bail!(
                "creating database {name:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(self.database_url(name))
    }

    /// Shuts the server down cleanly ("fast" shutdown: open sessions are cut) and waits
    /// for it, killing it if it takes more than ~10 s. The data directory is kept.
    /// Does nothing when already stopped.
    pub fn stop(&mut self) {
        self.shutdown("INT", POSTGRES_STOP_TIMEOUT);
    }

    /// Stops the server if it runs, then starts it again on the same port with the
    /// same data directory (databases and data are kept); waits until it accepts
    /// connections.
    ///
    /// # Errors
    ///
    /// Fails when the server does not come up again (for instance if another process
    /// took the port meanwhile); the error quotes the end of the server log.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let what = format!("postgres did not restart on port {}", self.port);
        retry(&what, |attempt| {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            self.spawn()
        })
    }

    fn database_url(&self, database: &str) -> String {
        let query = if self.tls { "?sslmode=require" } else { "" };
        format!(
            "postgres://postgres@127.0.0.1:{}/{}{query}",
            self.port,
            percent_encode(database)
        )
    }

    /// Writes the CA, certificate and key next to the data directory and lets only TLS
    /// connections in over TCP.
    fn set_up_tls(&self, ca: &TestCa) -> Result<()> {
        let dir = &self.dir.path;
        ca.write_ca(&dir.join(TLS_CA_FILE))?;
        let (cert, key) = ca
            .issue_server(&["localhost", "127.0.0.1"])?
            .write(dir, TLS_SERVER_STEM)?;
        if let Some((uid, gid)) = self.run_as {
            // The server runs as `postgres`: a root-owned 0600 key would be unreadable
            // to it, and a more open one is refused ("has group or world access").
            for path in [&cert, &key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown postgres {}", path.display()))?;
            }
        }
        // Replaces initdb's file (whose owner and mode stay). The local socket stays
        // trusted for the harness's own tools; TCP needs TLS.
        let hba = self.data_dir().join("pg_hba.conf");
        fs::write(
            &hba,
            "# portcullis-tests: TLS only over TCP\n\
             local     all all              trust\n\
             hostnossl all all 0.0.0.0/0    reject\n\
             hostnossl all all ::/0         reject\n\
             hostssl   all all 127.0.0.1/32 trust\n\
             hostssl   all all ::1/128      trust\n",
        )
        .with_context(|| format!("writing {}", hba.display()))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path.join("sock")
    }

    /// A command running `program`, as the `postgres` user when this process is root.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            // Not `runuser`: it forks a PAM session parent that does not pass SIGINT
            // on, so a clean shutdown of the server would be impossible.
            command.uid(uid).gid(gid);
        }
        command.stdin(Stdio::null());
        command
    }

    /// Prepares the directory and runs `initdb`.
    fn init_cluster(&self, initdb: &Path) -> Result<()> {
        let socket_dir = self.socket_dir();
        fs::create_dir(&socket_dir)
            .with_context(|| format!("creating {}", socket_dir.display()))?;
        let log = self.log_path();
        let (stdout, stderr) = open_log(&log, "initdb")?;
        if let Some((uid, gid)) = self.run_as {
            for path in [&self.dir.path, &socket_dir, &log] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown postgres {}", path.display()))?;
            }
        }
        let status = self
            .command(initdb)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .with_context(|| format!("running {}", initdb.display()))?;
        if !status.success() {
            let hint = if self.run_as.is_some() {
                "\n(initdb runs as user 'postgres': every parent directory of the temp \
                 dir must be searchable by it; set TMPDIR=/tmp if not)"
            } else {
                ""
            };
            bail!("initdb failed ({status}); {}{hint}", log_tail(&log));
        }
        Ok(())
    }

    /// Spawns `postgres` on `self.port` and waits until it accepts connections.
    fn spawn(&mut self) -> Result<()> {
        self.stop();
        let log = self.log_path();
        let (stdout, stderr) = open_log(&log, &format!("postgres on port {}", self.port))?;
        let child = self
            .command(&self.postgres)
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .args(self.tls_settings())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.postgres.display()))?;
        let pid = child.id();
        self.child = Some(child);

        let pg_isready = find_binary("pg_isready");
        let deadline = Instant::now() + POSTGRES_READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "postgres on port {} exited ({status}) before accepting connections; {}",
                    self.port,
                    log_tail(&log)
                );
            }
            // The postmaster writes "ready" into postmaster.pid once it accepts
            // connections: that proves the server on the port is this one.
            if self.postmaster_ready(pid) && self.accepts_connections(pg_isready.as_deref()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.shutdown("QUIT", Duration::from_secs(5));
                bail!(
                    "postgres on port {} did not accept connections within {:?}; {}",
                    self.port,
                    POSTGRES_READY_TIMEOUT,
                    log_tail(&log)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The `-c` settings turning TLS on, for a [`start_tls`](Self::start_tls) server.
    fn tls_settings(&self) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let file = |name: &str| self.dir.path.join(name).display().to_string();
        vec![
            "-c".to_owned(),
            "ssl=on".to_owned(),
            "-c".to_owned(),
            format!("ssl_cert_file={}", file(&format!("{TLS_SERVER_STEM}.crt"))),
            "-c".to_owned(),
            format!("ssl_key_file={}", file(&format!("{TLS_SERVER_STEM}.key"))),
        ]
    }

    /// Whether `data/postmaster.pid` names `pid`, our port, and status "ready".
    fn postmaster_ready(&self, pid: u32) -> bool {
        let Ok(text) = fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        lines.first().and_then(|line| line.parse::<u32>().ok()) == Some(pid)
            && lines.get(3).and_then(|line| line.parse::<u16>().ok()) == Some(self.port)
            && lines.get(7) == Some(&"ready")
    }

    /// TCP connect to the port, then `pg_isready` when it is installed.
    fn accepts_connections(&self, pg_isready: Option<&Path>) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            return false;
        }
        let Some(pg_isready) = pg_isready else {
            return true;
        };
        Command::new(pg_isready)
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-t", "2", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|status| status.success())
            .unwrap_or(false)
    }

    /// Sends `signal` to the postmaster and waits up to `timeout` for it to exit, then
    /// kills it.
    fn shutdown(&mut self, signal: &str, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None))
            && send_signal(child.id(), signal)
            && wait_timeout(&mut child, timeout).is_some()
        {
            return;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // The data is thrown away: an "immediate" shutdown is enough.
        self.shutdown("QUIT", Duration::from_secs(5));
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn assert_refused(port: u16) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let err = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }

    fn psql(url: &str, sql: &str) -> String {
        let psql = find_binary("psql").unwrap();
        let out = Command::new(psql)
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {url} -c {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: BTreeSet<u16> = (0..20).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 20);
        for port in ports {
            assert_ne!(port, 0);
            drop(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap());
        }
    }

    #[test]
    fn missing_binary_names_the_package() {
        assert_eq!(find_binary("portcullis-no-such-binary"), None);
        let err = require_binary("portcullis-no-such-binary", "some-package").unwrap_err();
        assert_eq!(
            err.to_string(),
            "portcullis-no-such-binary not found on PATH: install it with \
             'apt-get install some-package' (or run scripts/ensure-deps)"
        );
    }

    #[test]
    fn finds_binaries() {
        assert!(find_binary("sh").unwrap().is_absolute());
        assert_eq!(find_binary("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert!(find_binary("initdb").is_some(), "postgresql is installed");
    }

    #[test]
    fn bulk_string_parsing() {
        assert_eq!(complete_bulk_string(b"$3\r\nabc\r\n"), Some(&b"abc"[..]));
        assert_eq!(complete_bulk_string(b"$3\r\nabc"), None);
        assert_eq!(complete_bulk_string(b"$3\r\nab"), None);
        assert_eq!(complete_bulk_string(b"-ERR\r\n"), None);
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("app_test-1.x~"), "app_test-1.x~");
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }

    #[tokio::test]
    async fn redis_set_get_stop_restart() {
        let mut server = RedisServer::start().unwrap();
        let port = server.port();
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
        let dir = server.dir.path.clone();
        assert!(dir.is_dir());

        let mut conn = server.connection().await.unwrap();
        redis::cmd("SET")
            .arg("portcullis:key")
            .arg("value")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let value: Option<String> = redis::cmd("GET")
            .arg("portcullis:key")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some("value"));

        server.stop();
        server.stop(); // idempotent
        assert_refused(port);
        assert!(server.connection().await.is_err());

        server.restart().unwrap();
        assert_eq!(server.port(), port);
        let mut conn = server.connection().await.unwrap();
        let value: Option<String> = redis::cmd("GET")
            .arg("portcullis:key")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, None, "restart starts with empty data");
        let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        assert_eq!(size, 0);
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");

        drop(conn);
        drop(server);
        assert!(!dir.exists(), "drop removes the temp dir");
        assert_refused(port);
    }

    #[test]
    fn redis_servers_are_independent() {
        let a = RedisServer::start().unwrap();
        let b = RedisServer::start().unwrap();
        assert_ne!(a.port(), b.port());
        assert_ne!(a.dir.path, b.dir.path);
        assert!(redis_ping(a.port()).is_some());
        assert!(redis_ping(b.port()).is_some());
        assert!(a.log_path().is_file());
    }

    /// `redis-cli --tls` trusting `ca` against localhost:`port`: (success, output).
    fn redis_cli_tls(port: u16, ca: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new(find_binary("redis-cli").unwrap())
            .arg("--tls")
            .arg("--cacert")
            .arg(ca)
            .args(["-h", "localhost", "-p", &port.to_string(), "-e"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text.trim().to_owned())
    }

    #[test]
    fn redis_tls_answers_only_clients_trusting_its_ca() {
        let started = Instant::now();
        let ca = TestCa::new().unwrap();
        let mut server = RedisServer::start_tls(&ca).unwrap();
        eprintln!("TLS redis-server up in {:?}", started.elapsed());
        let port = server.port();
        assert_eq!(server.url(), format!("rediss://localhost:{port}"));
        assert_eq!(server.tls_url(), server.url());
        assert_eq!(fs::read_to_string(server.ca_file()).unwrap(), ca.ca_pem());

        let (ok, out) = redis_cli_tls(port, &server.ca_file(), &["PING"]);
        assert!(ok, "{out}");
        assert_eq!(out, "PONG");
        let (ok, out) = redis_cli_tls(port, &server.ca_file(), &["SET", "k", "v"]);
        assert!(ok && out == "OK", "{out}");

        // redis-cli checks the chain but not the host name: openssl checks that the
        // certificate names localhost (the URL's host) and 127.0.0.1.
        let verify = |flag: &str, name: &str| {
            Command::new(find_binary("openssl").unwrap())
                .args(["s_client", "-brief", "-verify_return_error", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-CAfile")
                .arg(server.ca_file())
                .args([flag, name])
                .stdin(Stdio::null())
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify("-verify_hostname", "localhost"));
        assert!(verify("-verify_ip", "127.0.0.1"));
        assert!(!verify("-verify_hostname", "elsewhere.invalid"));

        // A client trusting another CA fails the handshake.
        let other = TestCa::new().unwrap();
        let other_file = server.dir.path.join("other-ca.crt");
        other.write_ca(&other_file).unwrap();
        let (ok, out) = redis_cli_tls(port, &other_file, &["PING"]);
        assert!(!ok, "{out}");
        assert!(out.contains("certificate verify failed"), "{out}");

        // No plain-TCP RESP on the port (and no plain port at all: --port 0).
        assert!(redis_ping(port).is_none());

        server.restart().unwrap();
        assert_eq!(server.port(), port);
        let (ok, out) = redis_cli_tls(port, &server.ca_file(), &["GET", "k"]);
        assert!(ok && out.is_empty(), "restart starts empty: {out}");
    }

    /// `psql` with a libpq connection string: (success, stdout + stderr).
    fn psql_conninfo(conninfo: &str, sql: &str) -> (bool, String) {
        let out = Command::new(find_binary("psql").unwrap())
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conninfo,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text.trim().to_owned())
    }

    #[test]
    fn postgres_tls_refuses_connections_without_tls() {
        let started = Instant::now();
        let ca = TestCa::new().unwrap();
        let mut server = PostgresServer::start_tls(&ca).unwrap();
        eprintln!("TLS postgres up in {:?}", started.elapsed());
        let port = server.port();
        assert_eq!(
            server.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require")
        );
        let ssl_used = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
        assert_eq!(psql(&server.url(), ssl_used), "t");

        let db = server.create_database("tls db").unwrap();
        assert_eq!(
            db,
            format!("postgres://postgres@127.0.0.1:{port}/tls%20db?sslmode=require")
        );
        assert_eq!(psql(&db, "select current_database()"), "tls db");

        let base = format!("port={port} user=postgres dbname=postgres");
        let (ok, out) = psql_conninfo(
            &format!("host=127.0.0.1 {base} sslmode=disable"),
            "select 1",
        );
        assert!(!ok, "{out}");
        assert!(out.contains("no encryption"), "rejected by pg_hba: {out}");

        // The certificate names both the IP address and localhost.
        let ca_file = server.ca_file().display().to_string();
        for host in ["127.0.0.1", "localhost"] {
            let conninfo = format!("host={host} {base} sslmode=verify-full sslrootcert={ca_file}");
            let (ok, out) = psql_conninfo(&conninfo, ssl_used);
            assert!(ok && out == "t", "{host}: {out}");
        }
        let other = TestCa::new().unwrap();
        let other_file = server.dir.path.join("other-ca.crt");
        other.write_ca(&other_file).unwrap();
        let conninfo = format!(
            "host=127.0.0.1 {base} sslmode=verify-full sslrootcert={}",
            other_file.display()
        );
        let (ok, out) = psql_conninfo(&conninfo, "select 1");
        assert!(!ok, "{out}");
        assert!(out.contains("certificate verify failed"), "{out}");

        server.restart().unwrap();
        assert_eq!(psql(&db, ssl_used), "t", "TLS again after a restart");
    }

    #[test]
    fn postgres_databases_stop_restart() {
        let mut server = PostgresServer::start().unwrap();
        let port = server.port();
        assert_eq!(
            server.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        );
        assert_eq!(psql(&server.url(), "select 1"), "1");

        let alpha = server.create_database("alpha").unwrap();
        let beta = server.create_database("beta db").unwrap();
        assert_eq!(alpha, format!("postgres://postgres@127.0.0.1:{port}/alpha"));
        assert_eq!(
            beta,
            format!("postgres://postgres@127.0.0.1:{port}/beta%20db")
        );
        for url in [&alpha, &beta] {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
            assert_eq!(psql(url, "select 1"), "1");
        }
        assert_eq!(psql(&alpha, "select current_database()"), "alpha");
        assert_eq!(psql(&beta, "select current_database()"), "beta db");
        assert!(server.create_database("alpha").is_err(), "already exists");
        psql(
            &alpha,
            "create table t (v text); insert into t values ('kept')",
        );

        server.stop();
        assert_refused(port);
        assert!(server.create_database("gamma").is_err());

        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_eq!(
            psql(&alpha, "select v from t"),
            "kept",
            "restart keeps data"
        );

        let dir = server.dir.path.clone();
        drop(server);
        assert!(!dir.exists(), "drop removes the temp dir");
        assert_refused(port);
    }
}
