//! A throwaway Redis Sentinel deployment: one master, one replica (`--replicaof`) and
//! three Sentinels (`redis-server sentinel.conf --sentinel`) monitoring the master as
//! `portcullis` with quorum 2, `down-after-milliseconds 1000` and
//! `failover-timeout 5000`, all on free 127.0.0.1 ports, each process in its own
//! directory with its own log.
//!
//! What it is **not**: a durable or tuned deployment. Nothing is persisted, the timeouts
//! are set for fast tests, and a killed node restarted with
//! [`RedisSentinelGroup::restart_old_master`] comes back empty.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{POLL_INTERVAL, RedisMode, RedisServer, SENTINEL_CONFIG, log_tail, redis_query};

/// The name the Sentinels monitor the master under.
pub(crate) const MASTER_NAME: &str = "portcullis";
/// How long the replica may take to sync and the Sentinels to find each other.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many Sentinels run; the quorum is a majority of them.
const SENTINELS: usize = 3;

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
        let master = RedisServer::start_as("redis-master", RedisMode::Plain, |_| Ok(()))?;
        let master_port = master.port();
        let replica =
            RedisServer::start_as("redis-replica", RedisMode::Replica { master_port }, |_| {
                Ok(())
            })?;
        let mut group = Self {
            sentinels: Vec::new(),
            nodes: vec![master, replica],
            killed: None,
        };
        group.wait_for_replica_sync()?;
        for _ in 0..SENTINELS {
            let sentinel = RedisServer::start_as("redis-sentinel", RedisMode::Sentinel, |dir| {
                let path = dir.join(SENTINEL_CONFIG);
                fs::write(&path, sentinel_config(master_port))
                    .with_context(|| format!("writing {}", path.display()))
            })?;
            group.sentinels.push(sentinel);
        }
        group.wait_for_sentinels()?;
        Ok(group)
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
            match master_addr(sentinel.port()) {
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
                .map(|sentinel| master_addr(sentinel.port()))
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
                && role(port).is_ok_and(|role| role == "master")
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
            let master_info = info_replication(master);
            let replica_info = info_replication(replica);
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
            let not_ready = self
                .sentinels
                .iter()
                .find_map(|sentinel| sentinel_not_ready(sentinel.port()).err());
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

/// A Sentinel's initial configuration; its port and the rest come on the command line.
fn sentinel_config(master_port: u16) -> String {
    // announce-ip: what the Sentinel tells the others (in its hello messages) to reach
    // it at; said outright so that it never depends on which local address it used.
    format!(
        "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
         sentinel failover-timeout {MASTER_NAME} 5000\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n\
         sentinel announce-ip 127.0.0.1\n"
    )
}

/// `Ok` when the Sentinel on `port` knows the master, one healthy replica and the two
/// other Sentinels, and could authorize a failover; else what is missing.
fn sentinel_not_ready(port: u16) -> Result<()> {
    let master: HashMap<String, String> =
        redis_query(port, redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME))?;
    let field = |name: &str| master.get(name).map_or("?", String::as_str);
    if field("flags") != "master"
        || field("num-slaves") != "1"
        || field("num-other-sentinels") != (SENTINELS - 1).to_string()
    {
        bail!(
            "Sentinel 127.0.0.1:{port}: master flags {}, {} replicas, {} other Sentinels",
            field("flags"),
            field("num-slaves"),
            field("num-other-sentinels")
        );
    }
    let replicas: Vec<HashMap<String, String>> = redis_query(
        port,
        redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME),
    )?;
    for replica in &replicas {
        let field = |name: &str| replica.get(name).map_or("?", String::as_str);
        if field("flags") != "slave" || field("master-link-status") != "ok" {
            bail!(
                "Sentinel 127.0.0.1:{port}: replica {}:{} flags {}, link {}",
                field("ip"),
                field("port"),
                field("flags"),
                field("master-link-status")
            );
        }
    }
    let _: String = redis_query(
        port,
        redis::cmd("SENTINEL").arg("CKQUORUM").arg(MASTER_NAME),
    )?;
    Ok(())
}

/// The master's port as the Sentinel on `port` names it.
fn master_addr(port: u16) -> Result<u16> {
    let addr: Option<(String, u16)> = redis_query(
        port,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME),
    )?;
    let Some((ip, master)) = addr else {
        bail!("Sentinel 127.0.0.1:{port} does not know {MASTER_NAME}");
    };
    if ip != "127.0.0.1" {
        bail!("Sentinel 127.0.0.1:{port} names {ip}:{master}, not a loopback node");
    }
    Ok(master)
}

/// The first element of `ROLE` on the node at `port`: `master`, `slave` or `sentinel`.
fn role(port: u16) -> Result<String> {
    let reply: redis::Value = redis_query(port, &redis::cmd("ROLE"))?;
    let first = match reply {
        redis::Value::Array(items) => items.into_iter().next(),
        _ => None,
    };
    match first {
        Some(value) => Ok(redis::from_redis_value(value)?),
        None => bail!("127.0.0.1:{port} answered ROLE with no role"),
    }
}

fn info_replication(port: u16) -> Result<String> {
    redis_query(port, redis::cmd("INFO").arg("replication"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failover_after_the_master_is_killed() {
        let started = Instant::now();
        let mut group = RedisSentinelGroup::start().unwrap();
        eprintln!("sentinel group up in {:?}", started.elapsed());
        let ports = group.node_ports();
        let sentinel_ports = group.sentinel_ports();
        assert_eq!(group.master_name(), "portcullis");
        assert_eq!(
            group.sentinels(),
            format!(
                "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
                sentinel_ports[0], sentinel_ports[1], sentinel_ports[2]
            )
        );
        assert_eq!(group.master_port().unwrap(), ports[0]);
        assert_eq!(role(ports[0]).unwrap(), "master");
        assert_eq!(role(ports[1]).unwrap(), "slave");
        assert_eq!(role(sentinel_ports[0]).unwrap(), "sentinel");
        assert!(group.wait_for_failover(Duration::from_secs(1)).is_err());

        // Written on the master, replicated before the failover.
        let () = redis_query(ports[0], redis::cmd("SET").arg("before").arg("1")).unwrap();
        let _: u64 = redis_query(ports[0], redis::cmd("WAIT").arg(1).arg(2000)).unwrap();

        let started = Instant::now();
        assert_eq!(group.kill_master().unwrap(), ports[0]);
        let new_master = group.wait_for_failover(Duration::from_secs(15)).unwrap();
        eprintln!("failover in {:?}", started.elapsed());
        assert_eq!(new_master, ports[1]);
        assert_eq!(group.master_port().unwrap(), ports[1]);

        let () = redis_query(new_master, redis::cmd("SET").arg("after").arg("2")).unwrap();
        let before: Option<String> =
            redis_query(new_master, redis::cmd("GET").arg("before")).unwrap();
        assert_eq!(before.as_deref(), Some("1"));

        group.restart_old_master().unwrap();
        assert!(role(ports[0]).is_ok(), "the old master is back");
        assert!(
            group.restart_old_master().is_err(),
            "nothing killed any more"
        );
    }
}
