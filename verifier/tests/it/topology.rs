//! The real verifier binary against the Redis topologies of API.md §4: a TLS-only
//! redis-server (`rediss://` with a CA file, and with the wrong CA), a 3-master Cluster
//! (the layout's keys on different nodes, events published on any node, a resync on a
//! version gap) and a Sentinel-watched master that fails over while the verifier runs.
//!
//! The test plays the control plane and writes the layout in the contract's order:
//! state, `INCR portcullis:version`, `PUBLISH portcullis:events`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_common::redis_conn::{REDIS_CA_FILE, REDIS_URL, RedisConfig};
use portcullis_common::redis_layout::{self as layout, Event};
use portcullis_tests::tls::TestCa;
use portcullis_tests::{RedisCluster, RedisSentinelGroup, RedisServer};
use redis::AsyncCommands;
use redis::aio::ConnectionLike;

use crate::server::{eventually, get, ready, verify};
use crate::sidecar::{Scratch, Sidecar, sample};
use crate::support::*;

const SECOND: Duration = Duration::from_secs(1);

/// `SET portcullis:jwks` + `INCR`; returns the event to publish.
async fn write_jwks<C: ConnectionLike + Send + Sync>(c: &mut C, jwks: &str) -> Event {
    let () = c.set(layout::JWKS, jwks).await.unwrap();
    let version = c.incr(layout::VERSION, 1).await.unwrap();
    Event::Jwks { version }
}

/// `ZADD portcullis:revoked:sessions` + `INCR`; returns the event to publish.
async fn write_session<C: ConnectionLike + Send + Sync>(c: &mut C, sid: &str) -> Event {
    let until = wall_now() + 900;
    let _: i64 = c.zadd(layout::REVOKED_SESSIONS, sid, until).await.unwrap();
    let version = c.incr(layout::VERSION, 1).await.unwrap();
    Event::SessionRevoked {
        session_id: sid.into(),
        until,
        version,
    }
}

/// `HSET portcullis:revoked:users` (cutoff now) + `INCR`; returns the event to publish.
async fn write_user<C: ConnectionLike + Send + Sync>(c: &mut C, uid: &str) -> Event {
    let before = wall_now();
    let _: i64 = c.hset(layout::REVOKED_USERS, uid, before).await.unwrap();
    let version = c.incr(layout::VERSION, 1).await.unwrap();
    Event::UserRevoked {
        user_id: uid.into(),
        before,
        version,
    }
}

async fn publish<C: ConnectionLike + Send + Sync>(c: &mut C, event: &Event) {
    let _: i64 = c
        .publish(layout::EVENTS_CHANNEL, event.encode())
        .await
        .unwrap();
}

async fn plain(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    sample(&get(addr, "/metrics", &[]).await.body, series)
}

async fn revoked(addr: SocketAddr, token: &str) -> bool {
    verify(addr, token).await.code() == "token_revoked"
}

async fn assert_ok(addr: SocketAddr, token: &str) {
    let r = verify(addr, token).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

fn tls_env(redis: &RedisServer, ca_file: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        (REDIS_URL, redis.tls_url()),
        (REDIS_CA_FILE, ca_file.display().to_string()),
    ]
}

/// The test's own connection to the TLS-only `redis`, trusting the CA it was issued by.
fn tls_writer(redis: &RedisServer) -> portcullis_common::redis_conn::RedisConn {
    portcullis_common::tls::install_provider();
    let url = redis.tls_url();
    let ca = redis.ca_file().display().to_string();
    let env = HashMap::from([(REDIS_URL, url.as_str()), (REDIS_CA_FILE, ca.as_str())]);
    RedisConfig::from_env(&env).unwrap().unwrap().connection()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_ca_file_loads_keys_and_follows_revocations() {
    let ca = TestCa::new().unwrap();
    let redis = RedisServer::start_tls(&ca).unwrap();
    let mut w = tls_writer(&redis);
    let key = signing_key(61);
    let event = write_jwks(&mut w, &jwks_of(&[&key])).await;
    publish(&mut w, &event).await;

    // The server has no plain port: whatever the verifier loads came over TLS.
    let v = Sidecar::spawn(&tls_env(&redis, &redis.ca_file()));
    eventually(10 * SECOND, || ready(v.http)).await;
    let sid = new_id();
    let token = live_token(&key, &sid, &new_id());
    assert_ok(v.http, &token).await;

    let event = write_session(&mut w, &sid).await;
    publish(&mut w, &event).await;
    eventually(5 * SECOND, || revoked(v.http, &token)).await;
    let r = verify(v.http, &token).await;
    assert_eq!((r.status, r.code().as_str()), (401, "token_revoked"));
    assert_ok(v.http, &live_token(&key, &new_id(), &new_id())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_another_ca_never_becomes_ready() {
    let ca = TestCa::new().unwrap();
    let redis = RedisServer::start_tls(&ca).unwrap();
    let mut w = tls_writer(&redis);
    let key = signing_key(62);
    let event = write_jwks(&mut w, &jwks_of(&[&key])).await;
    publish(&mut w, &event).await;

    let dir = Scratch::new("wrong-ca");
    let wrong = dir.join("other-ca.crt");
    TestCa::new().unwrap().write_ca(&wrong).unwrap();
    let v = Sidecar::spawn(&tls_env(&redis, &wrong));
    eventually(10 * SECOND, || async {
        tokio::net::TcpStream::connect(v.http).await.is_ok()
    })
    .await;
    // Evidence instead of a sleep: it has tried (and failed) several connections.
    eventually(10 * SECOND, || async {
        metric(v.http, "portcullis_verifier_sync_errors_total").await >= 3.0
    })
    .await;
    let readyz = get(v.http, "/readyz", &[]).await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert_eq!(readyz.json()["keys_loaded"], false, "{}", readyz.body);
    let r = verify(v.http, &live_token(&key, &new_id(), &new_id())).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "unavailable"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_loads_spread_keys_follows_events_from_every_node_and_resyncs_on_a_gap() {
    let cluster = RedisCluster::start(3).unwrap();
    let nodes = cluster.node_urls();
    let client = redis::cluster::ClusterClient::new(nodes.clone()).unwrap();
    let mut w = client.get_async_connection().await.unwrap();
    let key = signing_key(63);
    let (old_sid, old_sub) = (new_id(), new_id());
    let old_session = live_token(&key, &old_sid, &new_id());
    let old_user = live_token(&key, &new_id(), &old_sub);
    write_jwks(&mut w, &jwks_of(&[&key])).await;
    write_session(&mut w, &old_sid).await;
    write_user(&mut w, &old_sub).await;

    // The four keys of the layout do not all live on one node (so a resync that read
    // them through one node only would fail with MOVED).
    let mut holders = 0;
    for url in &nodes {
        let size: u64 = redis::cmd("DBSIZE")
            .query_async(&mut plain(url).await)
            .await
            .unwrap();
        holders += usize::from(size > 0);
    }
    assert!(holders >= 2, "the layout's keys are on {holders} node(s)");

    // A resync only on a gap (or after 50 s): what changes within the test's windows
    // changes through events or a gap.
    let v = Sidecar::spawn(&[
        (REDIS_URL, cluster.url()),
        ("PORTCULLIS_VERIFIER_RESYNC_SECS", "50".into()),
    ]);
    eventually(10 * SECOND, || ready(v.http)).await;
    assert_ok(v.http, &live_token(&key, &new_id(), &new_id())).await;
    assert!(revoked(v.http, &old_session).await, "seeded session");
    assert!(revoked(v.http, &old_user).await, "seeded user cutoff");

    // One live revocation published on each node in turn: wherever the verifier
    // subscribed, at least two of them reach it from another node.
    let resyncs = metric(v.http, "portcullis_verifier_resyncs_total").await;
    for url in &nodes {
        let sid = new_id();
        let token = live_token(&key, &sid, &new_id());
        assert_ok(v.http, &token).await;
        let event = write_session(&mut w, &sid).await;
        publish(&mut plain(url).await, &event).await;
        eventually(5 * SECOND, || revoked(v.http, &token)).await;
    }
    assert_eq!(
        metric(v.http, "portcullis_verifier_resyncs_total").await,
        resyncs,
        "applied as events, not by resyncs"
    );

    // The reconciler's way: state written, the version moved by 2, one event. The gap
    // makes the verifier re-read everything, the user hash included.
    let sub = new_id();
    let token = live_token(&key, &new_id(), &sub);
    assert_ok(v.http, &token).await;
    let _: i64 = w
        .hset(layout::REVOKED_USERS, &sub, wall_now())
        .await
        .unwrap();
    let version: u64 = w.incr(layout::VERSION, 2).await.unwrap();
    publish(&mut plain(&nodes[0]).await, &Event::Jwks { version }).await;
    eventually(5 * SECOND, || revoked(v.http, &token)).await;
    assert!(metric(v.http, "portcullis_verifier_resyncs_total").await > resyncs);
    assert!(ready(v.http).await);
    assert_ok(v.http, &live_token(&key, &new_id(), &new_id())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_follows_the_master_through_a_failover() {
    let mut group = RedisSentinelGroup::start().unwrap();
    let first = group.master_port().unwrap();
    let mut w = plain(&format!("redis://127.0.0.1:{first}")).await;
    let key = signing_key(64);
    let event = write_jwks(&mut w, &jwks_of(&[&key])).await;
    publish(&mut w, &event).await;

    // A short staleness bound: being ready late in the test needs contact with the new
    // master, since the old one is dead by then.
    let v = Sidecar::spawn(&[
        ("PORTCULLIS_REDIS_SENTINELS", group.sentinels()),
        (
            "PORTCULLIS_REDIS_SENTINEL_MASTER",
            group.master_name().to_owned(),
        ),
        ("PORTCULLIS_VERIFIER_MAX_STALENESS_SECS", "4".into()),
        ("PORTCULLIS_VERIFIER_RESYNC_SECS", "1".into()),
    ]);
    eventually(10 * SECOND, || ready(v.http)).await;
    let sid = new_id();
    let before = live_token(&key, &sid, &new_id());
    assert_ok(v.http, &before).await;
    let event = write_session(&mut w, &sid).await;
    publish(&mut w, &event).await;
    eventually(5 * SECOND, || revoked(v.http, &before)).await;

    // Everything replicated, then the master dies and the replica takes over.
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut w)
        .await
        .unwrap();
    drop(w);
    assert_eq!(group.kill_master().unwrap(), first);
    let killed = Instant::now();
    let second = group.wait_for_failover(15 * SECOND).unwrap();
    assert_ne!(second, first);

    // A revocation that exists only on the new master.
    let mut w = plain(&format!("redis://127.0.0.1:{second}")).await;
    let sid = new_id();
    let after = live_token(&key, &sid, &new_id());
    let event = write_session(&mut w, &sid).await;
    publish(&mut w, &event).await;
    eventually(15 * SECOND, || revoked(v.http, &after)).await;
    assert!(revoked(v.http, &before).await, "the replicated revocation");
    assert_ok(v.http, &live_token(&key, &new_id(), &new_id())).await;

    // Past the staleness bound since the kill, ready means synced with the new master.
    let bound = 5 * SECOND;
    if let Some(rest) = bound.checked_sub(killed.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    eventually(10 * SECOND, || ready(v.http)).await;
}
