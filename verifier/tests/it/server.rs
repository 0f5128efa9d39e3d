//! Running verifiers for the end-to-end tests, in-process (`run` on port 0) or as the real
//! binary, plus a tiny HTTP client and the Redis writer side of API.md §5.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_common::redis_layout::{self as layout, Event};
use portcullis_verifier::config::Config;
use portcullis_verifier::{Listeners, run};
use redis::AsyncCommands;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{AUD, new_id};

/// A verifier running in this process.
pub struct Running {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a verifier in-process with the given settings (plus listen addresses on port 0).
pub async fn start(vars: &[(&str, String)]) -> Running {
    let mut env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    env.entry("PORTCULLIS_VERIFIER_ISSUER".into())
        .or_insert_with(|| crate::support::ISS.into());
    let config = Config::from_env(&env).unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run(
            config,
            Listeners {
                http,
                grpc: Some(grpc),
            },
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    Running {
        http: http_addr,
        grpc: grpc_addr,
        stop: Some(stop),
        task,
    }
}

/// A JWKS file and a route policy file in a fresh directory, and the settings that use them.
pub struct FileSetup {
    pub dir: std::path::PathBuf,
}

impl FileSetup {
    pub fn new(jwks: &str, policy: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-verifier-it-{}", new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("jwks.json"), jwks).unwrap();
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        Self { dir }
    }
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "PORTCULLIS_VERIFIER_JWKS_FILE",
                self.dir.join("jwks.json").display().to_string(),
            ),
            (
                "PORTCULLIS_VERIFIER_POLICY_FILE",
                self.dir.join("policy.toml").display().to_string(),
            ),
            ("PORTCULLIS_VERIFIER_AUDIENCE", AUD.into()),
            ("PORTCULLIS_VERIFIER_COOKIE", "pc_at".into()),
        ]
    }
}

impl Drop for FileSetup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub use portcullis_tests::http::Reply;

/// One HTTP/1.1 request without a body on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    portcullis_tests::http::request(addr, method, path, headers, None).await
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers).await
}

/// `GET /v1/verify` with a bearer token.
pub async fn verify(addr: SocketAddr, token: &str) -> Reply {
    get(
        addr,
        "/v1/verify",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

pub use portcullis_tests::eventually;

/// Whether `/readyz` answers 200 (false while nothing listens yet).
pub async fn ready(addr: SocketAddr) -> bool {
    if TcpStream::connect(addr).await.is_err() {
        return false;
    }
    get(addr, "/readyz", &[]).await.status == 200
}

/// The writer side of API.md §5, in the contract's order: state, INCR, PUBLISH.
pub struct Writer {
    pub conn: redis::aio::MultiplexedConnection,
}

impl Writer {
    pub async fn connect(url: &str) -> Self {
        let client = redis::Client::open(url).unwrap();
        Self {
            conn: client.get_multiplexed_async_connection().await.unwrap(),
        }
    }

    pub async fn incr(&mut self) -> u64 {
        self.conn.incr(layout::VERSION, 1).await.unwrap()
    }

    pub async fn publish(&mut self, event: &Event) {
        let _: i64 = self
            .conn
            .publish(layout::EVENTS_CHANNEL, event.encode())
            .await
            .unwrap();
    }

    pub async fn set_jwks(&mut self, jwks: &str) -> u64 {
        let _: () = self.conn.set(layout::JWKS, jwks).await.unwrap();
        let version = self.incr().await;
        self.publish(&Event::Jwks { version }).await;
        version
    }

    /// Writes the signed key set (as the control plane does with a publisher key) and
    /// announces it.
    pub async fn set_signed_jwks(&mut self, envelope: &str) -> u64 {
        let _: () = self.conn.set(layout::JWKS_SIGNED, envelope).await.unwrap();
        let version = self.incr().await;
        self.publish(&Event::Jwks { version }).await;
        version
    }

    /// Writes a revoked session; publishes only if `publish` (false simulates a lost event).
    pub async fn revoke_session(&mut self, sid: &str, until: i64, publish: bool) -> u64 {
        let _: i64 = self
            .conn
            .zadd(layout::REVOKED_SESSIONS, sid, until)
            .await
            .unwrap();
        let version = self.incr().await;
        if publish {
            self.publish(&Event::SessionRevoked {
                session_id: sid.into(),
                until,
                version,
            })
            .await;
        }
        version
    }

    pub async fn revoke_user(&mut self, uid: &str, before: i64) -> u64 {
        let _: i64 = self
            .conn
            .hset(layout::REVOKED_USERS, uid, before)
            .await
            .unwrap();
        let version = self.incr().await;
        self.publish(&Event::UserRevoked {
            user_id: uid.into(),
            before,
            version,
        })
        .await;
        version
    }
}
