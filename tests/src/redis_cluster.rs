//! A throwaway Redis Cluster: N `redis-server --cluster-enabled yes` masters on free
//! loopback ports, joined by `redis-cli --cluster create` (no replicas), each node in
//! its own directory with its own log.
//!
//! What it is **not**: a model of a production cluster. There are no replicas, so a
//! stopped node takes its slots down with it (the cluster reports `cluster_state:fail`
//! until it is back), and nodes never persist data: a restarted node keeps its slots
//! (its `nodes.conf`) but comes back empty.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{
    POLL_INTERVAL, RedisMode, RedisServer, log_tail, open_log, redis_query, require_binary,
    wait_timeout,
};

/// How long `redis-cli --cluster create` may take to join the nodes.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes may take to agree on `cluster_state:ok`.
const OK_TIMEOUT: Duration = Duration::from_secs(20);
/// The log of `redis-cli --cluster create`, in the first node's directory.
const CREATE_LOG: &str = "cluster-create.log";

/// A Redis Cluster of masters only, on 127.0.0.1. Dropping it kills every node and
/// removes their directories.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (`--cluster-node-timeout 2000`, each with its own bus
    /// port), assigns them the 16384 slots with `redis-cli --cluster create
    /// --cluster-replicas 0 --cluster-yes`, and waits until every node reports
    /// `cluster_state:ok` and knows all the others.
    ///
    /// # Errors
    ///
    /// Fails when `masters` is below 3 (the least `redis-cli` creates a cluster with),
    /// when `redis-server` or `redis-cli` is missing (naming the package), or when the
    /// cluster does not form; the error then quotes the logs.
    pub fn start(masters: usize) -> Result<Self> {
        if masters < 3 {
            bail!("a Redis Cluster needs at least 3 masters, not {masters}");
        }
        let cli = require_binary("redis-cli", "redis-tools")?;
        let nodes = (0..masters)
            .map(|_| {
                RedisServer::start_as(
                    "redis-cluster-node",
                    RedisMode::Cluster { bus_port: 0 },
                    |_| Ok(()),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let cluster = Self { nodes };
        cluster.create(&cli)?;
        cluster.wait_until_ok(OK_TIMEOUT)?;
        Ok(cluster)
    }

    /// The seed list: `redis://127.0.0.1:P1,redis://127.0.0.1:P2,...`, every node.
    pub fn url(&self) -> String {
        self.node_urls().join(",")
    }

    /// `redis://127.0.0.1:P` of every node, in start order.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The port of every node, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The log file of node `i`.
    ///
    /// # Panics
    ///
    /// Panics when there is no node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].log_path()
    }

    /// Kills node `i` (SIGKILL). Its slots are unserved from then on; after the node
    /// timeout (2 s) the other nodes report `cluster_state:fail`.
    ///
    /// # Panics
    ///
    /// Panics when there is no node `i`.
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on the same ports with its `nodes.conf` (so it takes its
    /// slots back, without their data) and waits until the cluster is `ok` again.
    ///
    /// # Errors
    ///
    /// Fails when the node does not come up or the cluster does not recover.
    ///
    /// # Panics
    ///
    /// Panics when there is no node `i`.
    pub fn restart_node(&mut self, i: usize) -> Result<()> {
        self.nodes[i].restart()?;
        self.wait_until_ok(OK_TIMEOUT)
    }

    /// Waits up to `timeout` until every node answers `CLUSTER INFO` with
    /// `cluster_state:ok` and `cluster_known_nodes` equal to the number of nodes.
    ///
    /// # Errors
    ///
    /// Fails when that does not happen in time, quoting the last answer and the logs.
    pub fn wait_until_ok(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let mut last = None;
            for node in &self.nodes {
                match redis_query::<String>(node.port(), redis::cmd("CLUSTER").arg("INFO")) {
                    Ok(info)
                        if info.lines().any(|line| line.trim() == "cluster_state:ok")
                            && info.lines().any(|line| line.trim() == known) => {}
                    Ok(info) => {
                        last = Some(format!("node {}: {}", node.port(), first_lines(&info)));
                        break;
                    }
                    Err(err) => {
                        last = Some(format!("{err:#}"));
                        break;
                    }
                }
            }
            let Some(last) = last else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!(
                    "the Redis Cluster on ports {:?} was not ok within {timeout:?}: {last}\n{}",
                    self.ports(),
                    self.log_tails()
                );
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }

    /// Runs `redis-cli --cluster create` over all nodes.
    fn create(&self, cli: &std::path::Path) -> Result<()> {
        let log = self.nodes[0].dir().join(CREATE_LOG);
        let (stdout, stderr) = open_log(&log, "redis-cli --cluster create")?;
        let mut child = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(self.ports().iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", cli.display()))?;
        let Some(status) = wait_timeout(&mut child, CREATE_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "redis-cli --cluster create did not finish within {CREATE_TIMEOUT:?}; {}\n{}",
                log_tail(&log),
                self.log_tails()
            );
        };
        if !status.success() {
            bail!(
                "redis-cli --cluster create failed ({status}); {}\n{}",
                log_tail(&log),
                self.log_tails()
            );
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|node| log_tail(&node.log_path()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The first lines of a `CLUSTER INFO` answer, on one line.
fn first_lines(info: &str) -> String {
    info.lines()
        .take(6)
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use redis::AsyncCommands;

    use super::*;

    #[tokio::test]
    async fn cluster_routes_keys_to_their_slots() {
        let started = Instant::now();
        let mut cluster = RedisCluster::start(3).unwrap();
        eprintln!("cluster of 3 up in {:?}", started.elapsed());
        let ports = cluster.ports();
        assert_eq!(ports.len(), 3);
        assert_eq!(
            cluster.url(),
            ports
                .iter()
                .map(|port| format!("redis://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(cluster.node_urls().len(), 3);
        assert!(RedisCluster::start(2).is_err());

        let client = redis::cluster::ClusterClient::new(cluster.node_urls()).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        let keys: Vec<String> = (0..30).map(|n| format!("portcullis:key:{n}")).collect();
        for key in &keys {
            let () = conn.set(key, format!("value of {key}")).await.unwrap();
        }
        for key in &keys {
            let value: String = conn.get(key).await.unwrap();
            assert_eq!(value, format!("value of {key}"));
        }

        // The keys really are spread over the nodes, and a node asked for a key it
        // does not own answers MOVED: the reads above went through cluster routing.
        let mut holders = 0;
        let mut moved = 0;
        for &port in &ports {
            let size: u64 = redis_query(port, &redis::cmd("DBSIZE")).unwrap();
            holders += usize::from(size > 0);
            for key in &keys {
                if let Err(err) = redis_query::<Option<String>>(port, redis::cmd("GET").arg(key)) {
                    assert!(
                        format!("{err:#}").to_lowercase().contains("moved"),
                        "{err:#}"
                    );
                    moved += 1;
                }
            }
        }
        assert_eq!(holders, 3, "30 keys land on every node");
        assert_eq!(
            moved,
            keys.len() * 2,
            "each key is owned by one node of three"
        );

        // A stopped master takes its slots down; a restart brings the cluster back.
        let started = Instant::now();
        cluster.stop_node(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis_query(ports[0], redis::cmd("CLUSTER").arg("INFO")).unwrap();
            if info.contains("cluster_state:fail") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster never noticed: {info}");
            thread::sleep(Duration::from_millis(100));
        }
        cluster.restart_node(1).unwrap();
        eprintln!("stop + fail + restart + ok in {:?}", started.elapsed());
        let () = conn.set("portcullis:after", "restart").await.unwrap();
        let value: String = conn.get("portcullis:after").await.unwrap();
        assert_eq!(value, "restart");
    }
}
