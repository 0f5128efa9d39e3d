//! How both binaries reach Redis (API.md §4 and §6): one server (`redis://`, `rediss://`),
//! a Cluster (several comma-separated node URLs) or a master watched by Sentinels
//! (`PORTCULLIS_REDIS_SENTINELS` + `PORTCULLIS_REDIS_SENTINEL_MASTER`; the master's and
//! the Sentinels' passwords and TLS have variables of their own, since there is no URL).
//!
//! [`RedisConn`] is the one command connection for all three: cloneable, kept by a
//! background task that connects off the commands' path and again (with backoff) when a
//! command finds the node connection broken or its node no longer a master. With
//! Sentinel, reconnecting asks the Sentinels again, which is how a failover is followed;
//! a Cluster connection repairs itself node by node. redis-rs has a reconnecting manager
//! only for a fixed address, hence this small wrapper. [`RedisConfig::subscribe`] opens
//! the pub/sub side.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, RedisResult, TlsCertificates, Value,
};
use tokio::sync::{Notify, watch};

use crate::env::{ConfigError, Env};

pub const REDIS_URL: &str = "PORTCULLIS_REDIS_URL";
pub const REDIS_SENTINELS: &str = "PORTCULLIS_REDIS_SENTINELS";
pub const REDIS_SENTINEL_MASTER: &str = "PORTCULLIS_REDIS_SENTINEL_MASTER";
pub const REDIS_CA_FILE: &str = "PORTCULLIS_REDIS_CA_FILE";
pub const REDIS_PASSWORD: &str = "PORTCULLIS_REDIS_PASSWORD";
pub const REDIS_SENTINEL_PASSWORD: &str = "PORTCULLIS_REDIS_SENTINEL_PASSWORD";
pub const REDIS_SENTINEL_TLS: &str = "PORTCULLIS_REDIS_SENTINEL_TLS";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pauses between failed connects (doubling); meanwhile commands fail at once.
const MIN_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Where Redis is. (No `Debug`: it holds passwords; see [`RedisConfig::describe`].)
#[derive(Clone)]
enum Target {
    Server(ConnectionInfo),
    Cluster(Vec<ConnectionInfo>),
    Sentinel {
        sentinels: Vec<ConnectionAddr>,
        master: String,
        /// The master's (and replicas') `requirepass`.
        password: Option<String>,
        /// The Sentinels' own `requirepass`.
        sentinel_password: Option<String>,
        /// TLS to the Sentinels and to the master.
        tls: bool,
    },
}

/// A checked Redis setting: the topology and the extra trust roots for `rediss://`.
#[derive(Clone)]
pub struct RedisConfig {
    target: Target,
    /// PEM roots from `PORTCULLIS_REDIS_CA_FILE`; the system's roots otherwise.
    roots: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Connection infos carry passwords; only the shape is printed.
        f.write_str(&self.describe())
    }
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(var, message)
}

fn node(var: &'static str, url: &str) -> Result<ConnectionInfo, ConfigError> {
    let url = url.trim();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(err(var, "each node must be a redis:// or rediss:// URL"));
    }
    url.into_connection_info()
        .map_err(|e| err(var, format!("not a usable Redis URL: {e}")))
}

fn sentinel_addr(entry: &str, tls: bool) -> Result<ConnectionAddr, ConfigError> {
    let entry = entry.trim();
    let bad = || err(REDIS_SENTINELS, format!("{entry:?} is not host:port"));
    let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let host = host.to_owned();
    Ok(match tls {
        true => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        },
        false => ConnectionAddr::Tcp(host, port),
    })
}

impl RedisConfig {
    /// Reads the Redis variables; `Ok(None)` when neither a URL nor Sentinels are set.
    pub fn from_env(env: &impl Env) -> Result<Option<Self>, ConfigError> {
        let target = match (
            env.set(REDIS_URL),
            env.set(REDIS_SENTINELS),
            env.set(REDIS_SENTINEL_MASTER),
        ) {
            (None, None, None) => return Ok(None),
            (Some(_), Some(_), _) => {
                return Err(err(
                    REDIS_URL,
                    format!("set either {REDIS_URL} or {REDIS_SENTINELS}, not both"),
                ));
            }
            (Some(url), None, _) if url.contains(',') => Target::Cluster(
                url.split(',')
                    .filter(|u| !u.trim().is_empty())
                    .map(|u| node(REDIS_URL, u))
                    .collect::<Result<_, _>>()?,
            ),
            (Some(url), None, _) => Target::Server(node(REDIS_URL, &url)?),
            (None, Some(list), Some(master)) => {
                let tls = env.flag(REDIS_SENTINEL_TLS, false)?;
                // Passwords as given, surrounding blanks included.
                let password = |var| env.get(var).filter(|v| !v.trim().is_empty());
                Target::Sentinel {
                    sentinels: list
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| sentinel_addr(s, tls))
                        .collect::<Result<_, _>>()?,
                    master: master.trim().to_owned(),
                    password: password(REDIS_PASSWORD),
                    sentinel_password: password(REDIS_SENTINEL_PASSWORD),
                    tls,
                }
            }
            (None, Some(_), None) => {
                return Err(err(
                    REDIS_SENTINEL_MASTER,
                    format!("required with {REDIS_SENTINELS}: the monitored master's name"),
                ));
            }
            (None, None, Some(_)) => {
                return Err(err(
                    REDIS_SENTINELS,
                    format!("required with {REDIS_SENTINEL_MASTER}: Sentinel host:port list"),
                ));
            }
        };
        if !matches!(target, Target::Sentinel { .. }) {
            for var in [REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD, REDIS_SENTINEL_TLS] {
                if env.set(var).is_some() {
                    return Err(err(
                        var,
                        format!(
                            "only with {REDIS_SENTINELS}; a URL carries its own password and scheme"
                        ),
                    ));
                }
            }
        }
        let roots = match env.set(REDIS_CA_FILE) {
            None => None,
            Some(path) => Some(read_pem(Path::new(&path))?),
        };
        Ok(Some(Self { target, roots }))
    }

    /// One server's or a Cluster's URL(s), as `PORTCULLIS_REDIS_URL` takes them.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let env = std::collections::HashMap::from([(REDIS_URL, url)]);
        Self::from_env(&env)?.ok_or_else(|| err(REDIS_URL, "is empty"))
    }

    /// The topology for logs, without credentials.
    pub fn describe(&self) -> String {
        let addr = |info: &ConnectionInfo| info.addr().to_string();
        match &self.target {
            Target::Server(info) => format!("redis server {}", addr(info)),
            Target::Cluster(nodes) => {
                let nodes: Vec<_> = nodes.iter().map(addr).collect();
                format!("redis cluster [{}]", nodes.join(", "))
            }
            Target::Sentinel {
                sentinels, master, ..
            } => {
                let list: Vec<_> = sentinels.iter().map(|a| a.to_string()).collect();
                format!(
                    "redis master {master:?} via sentinels [{}]",
                    list.join(", ")
                )
            }
        }
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.roots.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }

    fn client(&self, info: &ConnectionInfo) -> RedisResult<Client> {
        match self.certificates() {
            Some(certs) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
                Client::build_with_tls(info.clone(), certs)
            }
            _ => Client::open(info.clone()),
        }
    }

    fn sentinel(&self) -> RedisResult<SentinelClient> {
        let Target::Sentinel {
            sentinels,
            master,
            password,
            sentinel_password,
            tls,
        } = &self.target
        else {
            return Err(io_error("not a Sentinel setting"));
        };
        let mut builder =
            SentinelClientBuilder::new(sentinels.to_vec(), master, SentinelServerType::Master)?;
        if let Some(password) = password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(password) = sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if *tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(certs) = self.certificates() {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        builder.build()
    }

    /// A command connection, kept by a background task (call within a Tokio runtime).
    pub fn connection(&self) -> RedisConn {
        let inner = Arc::new(Inner {
            config: self.clone(),
            live: ArcSwapOption::empty(),
            wake: Notify::new(),
            connected: watch::channel(0).0,
            failing: AtomicBool::new(false),
        });
        tokio::spawn(reconnect(Arc::downgrade(&inner)));
        RedisConn { inner }
    }

    /// A subscriber connection (pub/sub). On a Cluster any node delivers every channel's
    /// messages, so the first node that answers is used; with Sentinel, the master.
    pub async fn subscribe(&self, channel: &str) -> RedisResult<PubSub> {
        let client = match &self.target {
            Target::Server(info) => self.client(info)?,
            Target::Sentinel { .. } => self.sentinel()?.async_get_client().await?,
            Target::Cluster(nodes) => {
                // From a random node: a dead node listed first never blocks every round.
                let start = (rand_index() % nodes.len().max(1) as u64) as usize;
                let mut last = None;
                for info in nodes.iter().cycle().skip(start).take(nodes.len()) {
                    match self.open_pubsub(&self.client(info)?, channel).await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                return Err(last.unwrap_or_else(|| io_error("no cluster node configured")));
            }
        };
        self.open_pubsub(&client, channel).await
    }

    async fn open_pubsub(&self, client: &Client, channel: &str) -> RedisResult<PubSub> {
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| io_error("connecting for pub/sub timed out"))??;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    }

    async fn connect(&self) -> RedisResult<Live> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let live = match &self.target {
            Target::Server(info) => Live::Node(
                self.client(info)?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ),
            Target::Sentinel { .. } => {
                let client =
                    tokio::time::timeout(CONNECT_TIMEOUT * 2, self.sentinel()?.async_get_client())
                        .await
                        .map_err(|_| io_error("asking the sentinels for the master timed out"))??;
                Live::Node(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Target::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2);
                if let Some(certs) = self.certificates() {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
                    .await
                    .map_err(|_| io_error("connecting to the cluster timed out"))??;
                Live::Cluster(conn)
            }
        };
        Ok(live)
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| {
        err(
            REDIS_CA_FILE,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(err(REDIS_CA_FILE, "holds no PEM certificate"));
    }
    Ok(pem)
}

/// A cheap random number (no rand dependency here): std's per-map random hash keys.
fn rand_index() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn io_error(message: &'static str) -> RedisError {
    RedisError::from(std::io::Error::other(message))
}

/// A live connection: one node (a server or the Sentinel's master) or a whole Cluster.
enum Live {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

struct Inner {
    config: RedisConfig,
    live: ArcSwapOption<Live>,
    /// Wakes the reconnect task: a command found no connection, or dropped a broken one.
    wake: Notify,
    /// Bumped on every new connection; commands waiting for one watch it.
    connected: watch::Sender<u64>,
    /// The last attempt failed and the task is backing off: commands fail at once.
    failing: AtomicBool,
}

/// The command connection (see the module docs). Cheap to clone; clones share it.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisConn({})", self.inner.config.describe())
    }
}

/// Whether an error means the connection (or its node's role) is gone, so the next
/// command should connect again.
fn broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        )
}

/// Keeps one connection while any handle lives, connecting off every command's path (a
/// cancelled command never cancels a connect): at once, and again whenever a command
/// drops a broken one, with backoff between failures.
async fn reconnect(inner: Weak<Inner>) {
    let mut pause = MIN_PAUSE;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.live.load().is_some() {
            // Woken by a command, or rechecking now and then whether handles remain.
            tokio::select! {
                () = strong.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        match strong.config.connect().await {
            Ok(live) => {
                strong.live.store(Some(Arc::new(live)));
                strong.failing.store(false, Ordering::Release);
                strong.connected.send_modify(|n| *n += 1);
                pause = MIN_PAUSE;
            }
            Err(e) => {
                strong.failing.store(true, Ordering::Release);
                tracing::debug!(error = %e, redis = %strong.config.describe(), retry_in = ?pause, "redis connect failed");
                drop(strong);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

impl RedisConn {
    async fn live(&self) -> RedisResult<Arc<Live>> {
        let inner = &self.inner;
        if let Some(live) = inner.live.load_full() {
            return Ok(live);
        }
        let mut connected = inner.connected.subscribe();
        inner.wake.notify_one();
        if let Some(live) = inner.live.load_full() {
            return Ok(live);
        }
        let unreachable = || io_error("redis is unreachable; reconnecting");
        if inner.failing.load(Ordering::Acquire) {
            return Err(unreachable());
        }
        // The first connection (or one being made): wait for it, boundedly.
        match tokio::time::timeout(CONNECT_TIMEOUT, connected.changed()).await {
            Ok(Ok(())) => inner.live.load_full().ok_or_else(unreachable),
            _ => Err(unreachable()),
        }
    }

    /// After a command: a broken node connection is dropped (only if it is still the
    /// current one) and the reconnect task woken. A Cluster connection repairs itself
    /// node by node, so one dead node never tears down the rest.
    fn settle<T>(&self, used: &Arc<Live>, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result
            && matches!(**used, Live::Node(_))
            && broken(e)
        {
            let _ = self.inner.live.compare_and_swap(used, None::<Arc<Live>>);
            self.inner.wake.notify_one();
        }
        result
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let live = self.live().await?;
            let result = match &*live {
                Live::Node(c) => c.clone().req_packed_command(cmd).await,
                Live::Cluster(c) => c.clone().req_packed_command(cmd).await,
            };
            self.settle(&live, result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let live = self.live().await?;
            let result = match &*live {
                Live::Node(c) => c.clone().req_packed_commands(cmd, offset, count).await,
                Live::Cluster(c) => c.clone().req_packed_commands(cmd, offset, count).await,
            };
            self.settle(&live, result)
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner.config.target {
            Target::Server(info) => info.redis_settings().db(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<RedisConfig>, ConfigError> {
        let env: HashMap<&str, &str> = pairs.iter().copied().collect();
        RedisConfig::from_env(&env)
    }

    #[test]
    fn one_url_is_a_server_and_a_list_is_a_cluster() {
        let one = parse(&[(REDIS_URL, "rediss://localhost:6380/0")])
            .unwrap()
            .unwrap();
        assert!(matches!(one.target, Target::Server(_)));
        let many = parse(&[(REDIS_URL, "redis://a:1, redis://b:2,redis://c:3")])
            .unwrap()
            .unwrap();
        assert!(matches!(&many.target, Target::Cluster(n) if n.len() == 3));
        assert!(parse(&[]).unwrap().is_none());
    }

    #[test]
    fn sentinels_need_a_master_name_and_host_ports() {
        let s = parse(&[
            (REDIS_SENTINELS, "10.0.0.1:26379,[::1]:26380"),
            (REDIS_SENTINEL_MASTER, "portcullis"),
        ])
        .unwrap()
        .unwrap();
        assert!(
            matches!(&s.target, Target::Sentinel { sentinels, master, tls: false, .. }
            if sentinels.len() == 2 && master == "portcullis")
        );
        let secured = parse(&[
            (REDIS_SENTINELS, "s:26379"),
            (REDIS_SENTINEL_MASTER, "m"),
            (REDIS_PASSWORD, "n0de-secret"),
            (REDIS_SENTINEL_PASSWORD, "sentinel-secret"),
            (REDIS_SENTINEL_TLS, "true"),
        ])
        .unwrap()
        .unwrap();
        assert!(
            matches!(&secured.target, Target::Sentinel { sentinels, tls: true, password: Some(_), .. }
            if matches!(sentinels[0], ConnectionAddr::TcpTls { .. }))
        );
        let shown = format!("{secured:?}");
        assert!(!shown.contains("secret"), "{shown}");
        let e = parse(&[
            (REDIS_SENTINELS, "s:1"),
            (REDIS_SENTINEL_MASTER, "m"),
            (REDIS_SENTINEL_TLS, "yes"),
        ])
        .unwrap_err();
        assert_eq!(e.var, REDIS_SENTINEL_TLS);
        let e = parse(&[(REDIS_URL, "redis://a:1"), (REDIS_PASSWORD, "x")]).unwrap_err();
        assert_eq!(e.var, REDIS_PASSWORD);
        let e = parse(&[(REDIS_SENTINELS, "10.0.0.1:26379")]).unwrap_err();
        assert_eq!(e.var, REDIS_SENTINEL_MASTER);
        let e = parse(&[(REDIS_SENTINELS, "nohost"), (REDIS_SENTINEL_MASTER, "m")]).unwrap_err();
        assert_eq!(e.var, REDIS_SENTINELS);
        let e = parse(&[(REDIS_SENTINEL_MASTER, "m")]).unwrap_err();
        assert_eq!(e.var, REDIS_SENTINELS);
    }

    #[test]
    fn refused_settings_name_their_variable() {
        for bad in ["http://x:1", "redis://a:1,https://b:2", "localhost:6379"] {
            assert_eq!(
                parse(&[(REDIS_URL, bad)]).unwrap_err().var,
                REDIS_URL,
                "{bad}"
            );
        }
        let both = parse(&[(REDIS_URL, "redis://a:1"), (REDIS_SENTINELS, "b:2")]).unwrap_err();
        assert_eq!(both.var, REDIS_URL);
        let ca = parse(&[
            (REDIS_URL, "rediss://a:1"),
            (REDIS_CA_FILE, "/nonexistent/ca.pem"),
        ])
        .unwrap_err();
        assert_eq!(ca.var, REDIS_CA_FILE);
    }

    #[test]
    fn descriptions_leave_passwords_out() {
        let c = parse(&[(REDIS_URL, "redis://user:s3cret@host:6379")])
            .unwrap()
            .unwrap();
        assert!(!c.describe().contains("s3cret"), "{}", c.describe());
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
