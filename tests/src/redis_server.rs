//! A throwaway `redis-server` (plain, TLS, or as a Cluster or Sentinel node) and the
//! small RESP client the harness checks them with.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::tls::TestCa;
use crate::*;

/// How long a `redis-server` may take to answer `PING`.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect, read and write timeout of one command sent by the harness to a Redis.
pub(crate) const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Names of the CA, certificate and key files of a TLS server, in its directory.
pub(crate) const TLS_CA_FILE: &str = "ca.crt";
pub(crate) const TLS_SERVER_STEM: &str = "server";

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

    /// The `redis-server` command line of this server's mode and security.
    fn command(&self, tls_cli: Option<&PathBuf>) -> Command {
        let port = self.port.to_string();
        let mut command = Command::new(&self.binary);
        if let RedisMode::Sentinel = self.mode {
            // The configuration file must come first; Sentinel rewrites it with what it
            // learns (replicas, other Sentinels, a failover's new master).
            command
                .arg(self.dir.path.join(SENTINEL_CONFIG))
                .arg("--sentinel");
        }
        match tls_cli {
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
        command
            .arg("--dir")
            .arg(&self.dir.path)
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", loglevel]);
        command
    }

    /// Spawns the server on `self.port` and waits until it answers.
    fn spawn(&mut self) -> Result<()> {
        self.stop();
        let log = self.log_path();
        let (stdout, stderr) = open_log(&log, &format!("redis-server on port {}", self.port))?;
        let tls_cli = match &self.mode {
            RedisMode::Tls { cli } => Some(cli.clone()),
            _ => self.security.tls_cli.clone(),
        };
        let child = self
            .command(tls_cli.as_ref())
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
pub(crate) fn command_name(cmd: &redis::Cmd) -> String {
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
pub(crate) struct RedisPong {
    pid: Option<u32>,
}

/// Sends `PING` and `INFO server` to 127.0.0.1:`port`; `Some` if it answered `+PONG`.
#[cfg(test)]
pub(crate) fn redis_ping(port: u16) -> Option<RedisPong> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bulk_string_parsing() {
        assert_eq!(complete_bulk_string(b"$3\r\nabc\r\n"), Some(&b"abc"[..]));
        assert_eq!(complete_bulk_string(b"$3\r\nabc"), None);
        assert_eq!(complete_bulk_string(b"$3\r\nab"), None);
        assert_eq!(complete_bulk_string(b"-ERR\r\n"), None);
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
}
