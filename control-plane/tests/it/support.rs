//! A whole Portcullis stack per test: a throwaway PostgreSQL cluster and redis-server, the
//! control plane in-process (`run` on port 0), and on request the real verifier fed by the
//! same Redis. Plus a small JSON-over-HTTP client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use portcullis_control_plane::config::Config;
use portcullis_tests::{PostgresServer, RedisCluster, RedisSentinelGroup, RedisServer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const ADMIN_TOKEN: &str = "operator-token-for-tests-0123456789";
pub const PASSWORD: &str = "correct horse battery staple";

/// Where a stack's Redis runs: one server, a Cluster, or a master watched by Sentinels.
pub enum Topology {
    Server(RedisServer),
    Cluster(RedisCluster),
    /// The group, and the passwords it was started with (node, Sentinel).
    Sentinel(RedisSentinelGroup, Option<String>, Option<String>),
}

impl Topology {
    /// The settings both binaries reach this Redis with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Topology::Server(r) => {
                let mut env = vec![("PORTCULLIS_REDIS_URL", r.url())];
                if r.url().starts_with("rediss://") {
                    let ca = r.ca_file().display().to_string();
                    env.push(("PORTCULLIS_REDIS_CA_FILE", ca));
                }
                env
            }
            Topology::Cluster(c) => vec![("PORTCULLIS_REDIS_URL", c.url())],
            Topology::Sentinel(g, password, sentinel_password) => {
                let mut env = vec![
                    ("PORTCULLIS_REDIS_SENTINELS", g.sentinels()),
                    (
                        "PORTCULLIS_REDIS_SENTINEL_MASTER",
                        g.master_name().to_owned(),
                    ),
                ];
                if let Some(ca) = g.ca_file() {
                    env.push(("PORTCULLIS_REDIS_SENTINEL_TLS", "true".to_owned()));
                    env.push(("PORTCULLIS_REDIS_CA_FILE", ca.display().to_string()));
                }
                if let Some(p) = password {
                    env.push(("PORTCULLIS_REDIS_PASSWORD", p.clone()));
                }
                if let Some(p) = sentinel_password {
                    env.push(("PORTCULLIS_REDIS_SENTINEL_PASSWORD", p.clone()));
                }
                env
            }
        }
    }
}

/// A running stack. Dropping it stops everything.
pub struct Stack {
    pub addr: SocketAddr,
    pub issuer: String,
    pub pg: PostgresServer,
    pub db_url: String,
    pub redis: Topology,
    /// The control plane's settings, for more replicas.
    env: HashMap<String, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Another control-plane replica on a stack's database and Redis.
pub struct Replica {
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replica {
    pub async fn post(&self, path: &str, auth: Option<&str>, body: Value) -> Reply {
        call_at(self.addr, "POST", path, auth, Some(body)).await
    }

    pub async fn get(&self, path: &str, auth: Option<&str>) -> Reply {
        call_at(self.addr, "GET", path, auth, None).await
    }
}

/// Runs the control plane in this process on `listener` until the sender is used.
fn serve(
    listener: TcpListener,
    env: &HashMap<String, String>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let config = Config::from_env(env).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        portcullis_control_plane::run(listener, config, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (stop, task)
}

/// A JSON request with an optional bearer token.
pub async fn call_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    request(addr, method, path, &headers, body.map(|b| b.to_string())).await
}

/// Settings every test stack uses, plus `extra`.
pub fn env(
    db_url: &str,
    redis_url: &str,
    issuer: &str,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let kek = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let mut env: HashMap<String, String> = [
        ("PORTCULLIS_DATABASE_URL", db_url),
        ("PORTCULLIS_REDIS_URL", redis_url),
        ("PORTCULLIS_ISSUER", issuer),
        ("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PORTCULLIS_KEY_ENCRYPTION_KEY", kek.as_str()),
        ("PORTCULLIS_RECONCILE_INTERVAL_SECS", "1"),
        ("PORTCULLIS_DRAIN_TIMEOUT_SECS", "1"),
        // The verifiers here read Redis, which has a new key at once.
        ("PORTCULLIS_KEY_PUBLISH_LEAD_SECS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        let (pg, redis) = tokio::task::spawn_blocking(|| {
            (
                PostgresServer::start().unwrap(),
                RedisServer::start().unwrap(),
            )
        })
        .await
        .unwrap();
        Self::start_on(pg, Topology::Server(redis), "", extra).await
    }

    /// A stack on these servers; `db_params` is appended to the database URL's query
    /// (e.g. `sslmode=verify-full&sslrootcert=…`). With TLS on the listener the caller
    /// waits for readiness itself.
    pub async fn start_on(
        pg: PostgresServer,
        redis: Topology,
        db_params: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut db_url = pg.create_database("portcullis").unwrap();
        if !db_params.is_empty() {
            db_url.push(if db_url.contains('?') { '&' } else { '?' });
            db_url.push_str(db_params);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = extra.iter().any(|(k, _)| *k == "PORTCULLIS_TLS_CERT_FILE");
        let issuer = format!("{}://{addr}", if tls { "https" } else { "http" });
        // A value may name the listener's port as `{port}` (a public URL on localhost).
        let port = addr.port().to_string();
        let extra: Vec<(&str, String)> = extra
            .iter()
            .map(|(k, v)| (*k, v.replace("{port}", &port)))
            .collect();
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut env = env(&db_url, "", &issuer, &extra);
        env.remove("PORTCULLIS_REDIS_URL");
        for (k, v) in redis.env() {
            env.insert(k.to_owned(), v);
        }
        let (stop, task) = serve(listener, &env);
        let stack = Self {
            addr,
            issuer,
            pg,
            db_url,
            redis,
            env,
            stop: Some(stop),
            task,
        };
        if !tls {
            eventually(Duration::from_secs(30), || async {
                stack.get("/readyz", None).await.status == 200
            })
            .await;
        }
        stack
    }

    /// One more control plane on this stack's database and Redis (same issuer and keys).
    pub async fn replica(&self) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, task) = serve(listener, &self.env);
        let replica = Replica {
            addr,
            _stop: stop,
            task,
        };
        eventually(Duration::from_secs(30), || async {
            replica.get("/readyz", None).await.status == 200
        })
        .await;
        replica
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }

    /// A real verifier reading this stack's Redis.
    pub async fn verifier(&self) -> Verifier {
        self.verifier_with(&[]).await
    }

    /// A real verifier reading this stack's Redis, with `extra` settings.
    pub async fn verifier_with(&self, extra: &[(&str, &str)]) -> Verifier {
        let mut env: HashMap<String, String> = [
            ("PORTCULLIS_VERIFIER_ISSUER", self.issuer.clone()),
            ("PORTCULLIS_VERIFIER_GRPC_LISTEN", "off".to_owned()),
            ("PORTCULLIS_VERIFIER_RESYNC_SECS", "1".to_owned()),
        ]
        .into_iter()
        .chain(self.redis.env())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let config = portcullis_verifier::config::Config::from_env(&env).unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = http.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = portcullis_verifier::run(
                config,
                portcullis_verifier::Listeners { http, grpc: None },
                std::future::pending::<()>(),
            )
            .await;
        });
        let v = Verifier { addr, task };
        eventually(Duration::from_secs(20), || async {
            request(v.addr, "GET", "/readyz", &[], None).await.status == 200
        })
        .await;
        v
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        call_at(self.addr, method, path, auth, body).await
    }

    pub async fn get(&self, path: &str, auth: Option<&str>) -> Reply {
        self.call("GET", path, auth, None).await
    }

    pub async fn post(&self, path: &str, auth: Option<&str>, body: Value) -> Reply {
        self.call("POST", path, auth, Some(body)).await
    }

    /// A new owner with one application: (owner token, app id, API key).
    pub async fn owner_with_app(&self) -> (String, String, String) {
        let email = format!("owner-{}@example.com", uuid_like());
        let r = self
            .post("/v1/owners", None, json!({"email": email, "password": PASSWORD, "first_name": "Ada", "last_name": "L"}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = self
            .post(
                "/v1/owners/login",
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let owner = r.json()["access_token"].as_str().unwrap().to_owned();
        let r = self
            .post("/v1/apps", Some(&owner), json!({"name": "shop"}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let app = r.json()["id"].as_str().unwrap().to_owned();
        let key = r.json()["api_key"].as_str().unwrap().to_owned();
        (owner, app, key)
    }

    /// Registers `email` in `app` with [`PASSWORD`]; returns the `tokens` object.
    pub async fn register(&self, app: &str, email: &str) -> Value {
        let r = self
            .post(
                &format!("/v1/apps/{app}/register"),
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["tokens"].clone()
    }

    pub async fn login(&self, app: &str, email: &str) -> Value {
        let r = self
            .post(
                &format!("/v1/apps/{app}/login"),
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    pub async fn sql(&self, statement: &str) {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(statement).await.unwrap();
    }

    /// A connection to the stack's Redis server (single-server stacks only).
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let Topology::Server(redis) = &self.redis else {
            panic!("a plain connection needs a single Redis server");
        };
        redis.connection().await.unwrap()
    }
}

/// A verifier running in this process.
pub struct Verifier {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Verifier {
    /// The ext_authz answer (Envoy HTTP mode) for `method path` with `token`.
    pub async fn check(&self, method: &str, path: &str, token: &str) -> u16 {
        let bearer = format!("Bearer {token}");
        request(
            self.addr,
            method,
            &format!("/ext_authz{path}"),
            &[("authorization", &bearer)],
            None,
        )
        .await
        .status
    }

    pub async fn status(&self, token: &str) -> u16 {
        let bearer = format!("Bearer {token}");
        request(
            self.addr,
            "GET",
            "/v1/verify",
            &[("authorization", &bearer)],
            None,
        )
        .await
        .status
    }
}

pub use portcullis_tests::eventually;
pub use portcullis_tests::http::{Reply, request};

pub fn uuid_like() -> String {
    portcullis_tests::tokens::new_id()
}

/// The claims of a JWS, unverified (for assertions only).
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

pub fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap()
}

/// A stack whose mail goes to a real SMTP server (aiosmtpd) on loopback.
pub async fn with_smtp(extra: &[(&str, &str)]) -> (Stack, SmtpServer) {
    let smtp = tokio::task::spawn_blocking(|| SmtpServer::start().unwrap())
        .await
        .unwrap();
    let url = smtp.url();
    let mut env = vec![
        ("PORTCULLIS_SMTP_URL", url.as_str()),
        ("PORTCULLIS_MAIL_FROM", "auth@example.com"),
    ];
    env.extend_from_slice(extra);
    (Stack::start_with(&env).await, smtp)
}

pub use portcullis_tests::mail::SmtpServer;
pub use portcullis_tests::sink::HttpSink;

/// The token of the link in a mail's text (`...?token=<token>`), and the link itself.
pub fn link_in(text: &str) -> (String, String) {
    let start = text.find("http").expect("a link in the mail");
    let link: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let token = link.split("token=").nth(1).expect("a token in the link");
    (link.clone(), token.to_owned())
}

/// The only run of six digits in a message's text.
pub fn code_in(text: &str) -> String {
    let runs: Vec<&str> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|r| r.len() == 6)
        .collect();
    assert_eq!(runs.len(), 1, "one 6-digit code in {text:?}");
    runs[0].to_owned()
}

/// `path` of a link (`http://host:port/path?query` → `/path?query`).
pub fn path_of(link: &str) -> String {
    let rest = link.split("://").nth(1).unwrap();
    format!("/{}", rest.split_once('/').unwrap().1)
}

/// A TOTP code from Debian's `oathtool` for the base32 `secret` at Unix time `at`.
pub fn oathtool(secret: &str, at: i64) -> String {
    let out = std::process::Command::new("oathtool")
        .args(["--totp", "-b", "--now", &format!("@{at}"), secret])
        .output()
        .expect("oathtool not found: install it with 'apt-get install oathtool' (or run scripts/ensure-deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Unix seconds now (tests compare with the server's clock).
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Stack {
    /// One value from PostgreSQL (`SELECT`ing one column of one row), as JSON; `Null` for
    /// SQL NULL or no row.
    pub async fn sql_value(&self, query: &str) -> Value {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one(&format!("SELECT to_jsonb(({query}))"), &[])
            .await
            .unwrap();
        row.get::<_, Option<Value>>(0).unwrap_or(Value::Null)
    }

    /// A form post (`application/x-www-form-urlencoded`), as a browser sends it.
    pub async fn form(&self, path: &str, body: &str) -> Reply {
        request(
            self.addr,
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.to_owned()),
        )
        .await
    }
}

/// The query of a URL (`…?a=1&b=2`), decoded.
pub fn query_of(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    serde_urlencoded::from_str(query).unwrap()
}

/// A response header as text (empty when absent).
pub fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}
