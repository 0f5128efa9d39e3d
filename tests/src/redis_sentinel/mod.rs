//! A throwaway Redis Sentinel deployment: one master, one replica (`--replicaof`) and
//! three Sentinels (`redis-server sentinel.conf --sentinel`) monitoring the master as
//! `portcullis` with quorum 2, `down-after-milliseconds 1000` and
//! `failover-timeout 5000`, all on free 127.0.0.1 ports, each process in its own
//! directory with its own log.
//!
//! [`RedisSentinelGroup::start_secured`] starts the same group with passwords and/or
//! TLS on every process ([`Secured`]). How Redis 7.0 Sentinel is told to secure its own
//! connections: `tls-replication yes` makes it use TLS toward the nodes *and* the other
//! Sentinels (and announce its `tls-port` in its hello messages); `sentinel auth-pass`
//! is what it AUTHs to the master and its replicas with, `sentinel sentinel-pass` what
//! it AUTHs to the other Sentinels with (else it falls back to its own `requirepass`).
//!
//! What it is **not**: a durable or tuned deployment. Nothing is persisted, the timeouts
//! are set for fast tests, and a killed node restarted with
//! [`RedisSentinelGroup::restart_old_master`] comes back empty. Sentinels are never
//! restarted, which matters for odd passwords: Sentinel 7.0 rewrites `auth-pass` and
//! `sentinel-pass` into its file unquoted, so a password with a space or a quote would
//! not survive a Sentinel restart. Passwords are on the `redis-server` command lines.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::tls::TestCa;
use crate::{
    POLL_INTERVAL, REDIS_COMMAND_TIMEOUT, RedisMode, RedisSecurity, RedisServer, SENTINEL_CONFIG,
    TLS_CA_FILE, TLS_SERVER_STEM, command_name, log_tail, percent_encode, redis_query,
    require_binary, send_signal,
};

use self::access::*;

mod access;

#[cfg(test)]
mod tests;

/// The name the Sentinels monitor the master under.
pub(crate) const MASTER_NAME: &str = "portcullis";
/// How long the replica may take to sync and the Sentinels to find each other.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many Sentinels run; the quorum is a majority of them.
const SENTINELS: usize = 3;

/// What [`RedisSentinelGroup::start_secured`] turns on; [`Default`] is nothing (the
/// group of [`RedisSentinelGroup::start`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Secured<'a> {
    /// The data nodes' `requirepass`, also their `masterauth` (replication
    /// authenticates) and the Sentinels' `sentinel auth-pass portcullis`.
    pub password: Option<&'a str>,
    /// Each Sentinel's own `requirepass` (its clients must `AUTH`), also its
    /// `sentinel sentinel-pass` (what it authenticates to the other Sentinels with).
    pub sentinel_password: Option<&'a str>,
    /// TLS only on every process, nodes and Sentinels (`port 0`, `tls-port`, a
    /// certificate from this CA for `localhost` and `127.0.0.1`, no client
    /// certificates asked for), and TLS for replication and for the Sentinels' own
    /// connections (`tls-replication yes`).
    pub tls: Option<&'a TestCa>,
}

/// A master, a replica and three Sentinels. Dropping it kills them all and removes
/// their directories.
#[derive(Debug)]
pub struct RedisSentinelGroup {
    // Sentinels first: dropped (killed) before the nodes they watch.
    sentinels: Vec<RedisServer>,
    /// The data nodes: the first master, then its replica.
    nodes: Vec<RedisServer>,
    /// The port of the master [`kill_master`](Self::kill_master) killed.
    killed: Option<u16>,
    /// How the harness talks to the data nodes, and to the Sentinels.
    node_access: Access,
    sentinel_access: Access,
}

impl RedisSentinelGroup {
    /// Starts the master, then the replica, waits until the replica is in sync, then
    /// starts the three Sentinels and waits until each one knows the master, the
    /// replica (flags `slave`, link ok) and the two other Sentinels, and
    /// `SENTINEL CKQUORUM` says a failover could be authorized.
    ///
    /// The replica must be in sync before the Sentinels start: a Sentinel learns of
    /// replicas from the master's `INFO`, which it asks only every 10 s once started.
    ///
    /// # Errors
    ///
    /// Fails when `redis-server` is missing (naming the package) or when a process
    /// does not come up or the group does not form in ~20 s; the error quotes the logs.
    pub fn start() -> Result<Self> {
        Self::start_secured(Secured::default())
    }

    /// Like [`start`](Self::start), with what `options` turns on (see [`Secured`]).
    /// Every helper of the group ([`master_port`](Self::master_port),
    /// [`kill_master`](Self::kill_master), [`wait_for_failover`](Self::wait_for_failover),
    /// [`restart_old_master`](Self::restart_old_master), the readiness waits) then
    /// authenticates and/or speaks TLS itself: with TLS through `redis-cli --tls`
    /// (package `redis-tools`), as this crate's `redis` client is built without TLS.
    ///
    /// With TLS the Sentinels announce themselves, and name the nodes, as `127.0.0.1`:
    /// clients reach everything by IP address, which the certificates name (as well as
    /// `localhost`); [`ca_file`](Self::ca_file) is the CA to trust.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when a password is empty, when `redis-cli` is
    /// missing (with TLS) or when the certificate files cannot be written.
    // One function (~95 lines): the security closures below are shared by the three
    // kinds of process it starts, in order.
    pub fn start_secured(options: Secured) -> Result<Self> {
        for (what, password) in [
            ("password", options.password),
            ("sentinel_password", options.sentinel_password),
        ] {
            if password.is_some_and(str::is_empty) {
                bail!("Secured::{what} must not be empty (Redis takes \"\" as no password)");
            }
        }
        let tls = match options.tls {
            Some(ca) => Some((
                require_binary("redis-cli", "redis-tools")?,
                ca,
                ca.issue_server(&["localhost", "127.0.0.1"])?,
            )),
            None => None,
        };
        // What every process gets: with TLS, the files and TLS for its own connections
        // (a replica's to its master; a Sentinel's to the nodes and the other Sentinels).
        let security = |password: Option<&str>, mut args: Vec<String>| {
            if tls.is_some() {
                args.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
            }
            RedisSecurity {
                password: password.map(str::to_owned),
                tls_cli: tls.as_ref().map(|(cli, ..)| cli.clone()),
                args,
            }
        };
        let write_tls = |dir: &Path| -> Result<()> {
            if let Some((_, ca, issued)) = &tls {
                ca.write_ca(&dir.join(TLS_CA_FILE))?;
                issued.write(dir, TLS_SERVER_STEM)?;
            }
            Ok(())
        };
        let node_security = || {
            let masterauth = options.password.map(|password| {
                // A replica authenticates to its master; the master needs it too for
                // when it comes back as a replica after a failover.
                vec!["--masterauth".to_owned(), password.to_owned()]
            });
            security(options.password, masterauth.unwrap_or_default())
        };

        let master = RedisServer::start_secured_as(
            "redis-master",
            RedisMode::Plain,
            node_security(),
            write_tls,
        )?;
        let master_port = master.port();
        let replica = RedisServer::start_secured_as(
            "redis-replica",
            RedisMode::Replica { master_port },
            node_security(),
            write_tls,
        )?;
        let tls_access = |server: &RedisServer| {
            tls.as_ref().map(|(cli, ..)| CliTls {
                cli: cli.clone(),
                ca_file: server.ca_file(),
            })
        };
        let mut group = Self {
            sentinels: Vec::new(),
            node_access: Access {
                password: options.password.map(str::to_owned),
                tls: tls_access(&master),
            },
            sentinel_access: Access {
                password: options.sentinel_password.map(str::to_owned),
                tls: tls_access(&master),
            },
            nodes: vec![master, replica],
            killed: None,
        };
        group.wait_for_replica_sync()?;
        let config = sentinel_config(master_port, &options);
        for _ in 0..SENTINELS {
            let sentinel = RedisServer::start_secured_as(
                "redis-sentinel",
                RedisMode::Sentinel,
                security(options.sentinel_password, Vec::new()),
                |dir| {
                    write_tls(dir)?;
                    let path = dir.join(SENTINEL_CONFIG);
                    fs::write(&path, &config).with_context(|| format!("writing {}", path.display()))
                },
            )?;
            group.sentinels.push(sentinel);
        }
        group.wait_for_sentinels()?;
        Ok(group)
    }

    /// The CA certificate (PEM) that every process's certificate chains to, for a group
    /// started with [`Secured::tls`]; `None` without TLS.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.node_access.tls.as_ref().map(|tls| tls.ca_file.clone())
    }

    /// The Sentinels' addresses: `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn sentinels(&self) -> String {
        self.sentinel_ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// The ports of the data nodes: the first master, then the first replica.
    pub fn node_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The master name the Sentinels monitor: `portcullis`.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The current master's port, as the first Sentinel that answers reports it
    /// (`SENTINEL get-master-addr-by-name`).
    ///
    /// # Errors
    ///
    /// Fails when no Sentinel answers.
    pub fn master_port(&self) -> Result<u16> {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            match master_addr(&self.sentinel_access, sentinel.port()) {
                Ok(port) => return Ok(port),
                Err(err) => errors.push(format!("{err:#}")),
            }
        }
        bail!("no Sentinel told the master: {}", errors.join("; "))
    }

    /// Kills the current master (SIGKILL) and returns its port; the Sentinels see it
    /// down after 1 s and fail over to the replica.
    ///
    /// # Errors
    ///
    /// Fails when no Sentinel answers or the master they name is not one of the nodes.
    pub fn kill_master(&mut self) -> Result<u16> {
        let port = self.master_port()?;
        let Some(node) = self.nodes.iter_mut().find(|node| node.port() == port) else {
            bail!("the Sentinels name 127.0.0.1:{port}, which is none of the nodes");
        };
        node.stop();
        self.killed = Some(port);
        Ok(port)
    }

    /// Waits up to `timeout` until every Sentinel names the same master, another one
    /// than the node [`kill_master`](Self::kill_master) killed, and that node answers
    /// `ROLE` as `master`; returns its port.
    ///
    /// # Errors
    ///
    /// Fails when no master was killed, or when the failover does not finish in time;
    /// the error quotes what the Sentinels said and their logs.
    pub fn wait_for_failover(&self, timeout: Duration) -> Result<u16> {
        let Some(old) = self.killed else {
            bail!("wait_for_failover: no master was killed (call kill_master first)");
        };
        let deadline = Instant::now() + timeout;
        loop {
            let answers: Vec<Result<u16>> = self
                .sentinels
                .iter()
                .map(|sentinel| master_addr(&self.sentinel_access, sentinel.port()))
                .collect();
            let agreed = match answers.first() {
                Some(Ok(port))
                    if *port != old
                        && answers
                            .iter()
                            .all(|answer| answer.as_ref().ok() == Some(port)) =>
                {
                    Some(*port)
                }
                _ => None,
            };
            if let Some(port) = agreed
                && role(&self.node_access, port).is_ok_and(|role| role == "master")
            {
                return Ok(port);
            }
            if Instant::now() >= deadline {
                let said: Vec<String> = answers
                    .iter()
                    .map(|answer| match answer {
                        Ok(port) => format!("127.0.0.1:{port}"),
                        Err(err) => format!("{err:#}"),
                    })
                    .collect();
                bail!(
                    "no failover from 127.0.0.1:{old} within {timeout:?}; the Sentinels \
                     said {said:?}\n{}",
                    self.log_tails()
                );
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }

    /// Starts the killed node again on its port, empty, as a master; the Sentinels
    /// then turn it into a replica of the new master (Sentinel waits some seconds
    /// before it does: up to ~20 s in all).
    ///
    /// # Errors
    ///
    /// Fails when no master was killed or the node does not come up.
    pub fn restart_old_master(&mut self) -> Result<()> {
        let Some(old) = self.killed.take() else {
            bail!("restart_old_master: no master was killed");
        };
        let Some(node) = self.nodes.iter_mut().find(|node| node.port() == old) else {
            bail!("no node on port {old}");
        };
        node.restart()
    }

    /// Waits until the master reports the replica online and the replica its link up.
    fn wait_for_replica_sync(&self) -> Result<()> {
        let (master, replica) = (self.nodes[0].port(), self.nodes[1].port());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let master_info = info_replication(&self.node_access, master);
            let replica_info = info_replication(&self.node_access, replica);
            let synced = matches!(&master_info, Ok(info) if info.contains("connected_slaves:1")
                    && info.contains(&format!("port={replica},state=online")))
                && matches!(&replica_info, Ok(info) if info.contains("master_link_status:up"));
            if synced {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the replica 127.0.0.1:{replica} did not sync with the master \
                     127.0.0.1:{master} within {READY_TIMEOUT:?}: master {master_info:?}, \
                     replica {replica_info:?}\n{}",
                    self.log_tails()
                );
            }
            thread::sleep(POLL_INTERVAL * 2);
        }
    }

    /// Waits until every Sentinel knows the master, the replica and the others.
    fn wait_for_sentinels(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let not_ready = self.sentinels.iter().find_map(|sentinel| {
                sentinel_not_ready(&self.sentinel_access, sentinel.port()).err()
            });
            let Some(reason) = not_ready else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!(
                    "the Sentinels were not ready within {READY_TIMEOUT:?}: {reason:#}\n{}",
                    self.log_tails()
                );
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for server in self.nodes.iter().chain(&self.sentinels) {
            let _ = writeln!(out, "{}", log_tail(&server.log_path()));
        }
        out
    }
}

/// A Sentinel's initial configuration; its port, TLS, its own `requirepass` and the
/// rest come on the command line.
fn sentinel_config(master_port: u16, options: &Secured) -> String {
    // announce-ip: what the Sentinel tells the others (in its hello messages) to reach
    // it at; said outright so that it never depends on which local address it used.
    // (The port it announces is its tls-port when tls-replication is on.)
    let mut config = format!(
        "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
         sentinel failover-timeout {MASTER_NAME} 5000\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n\
         sentinel announce-ip 127.0.0.1\n"
    );
    if let Some(password) = options.password {
        // For the master and, by it, its replicas.
        let _ = writeln!(
            config,
            "sentinel auth-pass {MASTER_NAME} {}",
            config_quote(password)
        );
    }
    if let Some(password) = options.sentinel_password {
        // Toward the other Sentinels. Without it Sentinel would fall back to its own
        // requirepass (a compatibility rule), which is the same here: said outright.
        let _ = writeln!(config, "sentinel sentinel-pass {}", config_quote(password));
    }
    config
}

/// `text` as one double-quoted argument of a Redis configuration line.
fn config_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            ch if ch.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(ch));
            }
            ch => out.push(ch),
        }
    }
    out.push('"');
    out
}
