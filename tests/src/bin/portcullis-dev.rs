//! `portcullis-dev`: plays the control plane's writer side of the Redis layout (API.md §5)
//! for local demos and manual tests, until the control plane exists. Never for production:
//! it keeps a signing key in a plain file.
//!
//! ```text
//! portcullis-dev seed   --redis URL --key FILE              new key, JWKS published
//! portcullis-dev token  --key FILE --issuer URL [--sub ID] [--sid ID] [--aud ID] [--roles a,b] [--ttl SECS]
//! portcullis-dev revoke-session --redis URL --sid ID [--until UNIX]
//! portcullis-dev revoke-user    --redis URL --sub ID [--before UNIX]
//! ```

use std::collections::HashMap;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use portcullis_common::redis_layout::{self as layout, Event};
use portcullis_tests::tokens::{Minter, jwks_json, kid, new_id, random_signing_key, unix_now};
use redis::AsyncCommands;

fn usage() -> ! {
    eprintln!(
        "usage: portcullis-dev seed --redis URL --key FILE\n       portcullis-dev token --key FILE --issuer URL [--sub ID] [--sid ID] [--aud ID] [--roles a,b] [--ttl SECS]\n       portcullis-dev revoke-session --redis URL --sid ID [--until UNIX]\n       portcullis-dev revoke-user --redis URL --sub ID [--before UNIX]"
    );
    std::process::exit(64);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| usage());
    let mut flags = HashMap::new();
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .unwrap_or_else(|| usage())
            .to_owned();
        flags.insert(name, args.next().unwrap_or_else(|| usage()));
    }
    let flag = |name: &str| {
        flags
            .get(name)
            .cloned()
            .with_context(|| format!("--{name} is required"))
    };
    match command.as_str() {
        "seed" => seed(&flag("redis")?, &flag("key")?).await,
        "token" => {
            let key = read_key(&flag("key")?)?;
            let ttl: i64 = flags
                .get("ttl")
                .map_or(Ok(900), |t| t.parse())
                .context("--ttl")?;
            let roles = flags
                .get("roles")
                .map_or_else(Vec::new, |r| r.split(',').map(str::to_owned).collect());
            let aud = flags
                .get("aud")
                .cloned()
                .unwrap_or_else(|| "demo-app".into());
            let minter = Minter::new(key, &flag("issuer")?, &aud);
            let sub = flags.get("sub").cloned().unwrap_or_else(new_id);
            let sid = flags.get("sid").cloned().unwrap_or_else(new_id);
            let mut claims = minter.claims(unix_now(), ttl, &sub, &sid);
            claims.roles = roles;
            claims.scope = String::new();
            println!("{}", minter.sign(&claims));
            Ok(())
        }
        "revoke-session" => {
            let until = flags
                .get("until")
                .map_or(Ok(unix_now() + 3600), |u| u.parse())
                .context("--until")?;
            let sid = flag("sid")?;
            let mut conn = connect(&flag("redis")?).await?;
            let _: i64 = conn.zadd(layout::REVOKED_SESSIONS, &sid, until).await?;
            let version: u64 = conn.incr(layout::VERSION, 1).await?;
            publish(
                &mut conn,
                &Event::SessionRevoked {
                    session_id: sid,
                    until,
                    version,
                },
            )
            .await
        }
        "revoke-user" => {
            let before = flags
                .get("before")
                .map_or(Ok(unix_now()), |b| b.parse())
                .context("--before")?;
            let sub = flag("sub")?;
            let mut conn = connect(&flag("redis")?).await?;
            let _: i64 = conn.hset(layout::REVOKED_USERS, &sub, before).await?;
            let version: u64 = conn.incr(layout::VERSION, 1).await?;
            publish(
                &mut conn,
                &Event::UserRevoked {
                    user_id: sub,
                    before,
                    version,
                },
            )
            .await
        }
        _ => usage(),
    }
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot reach Redis at {url}"))
}

async fn publish(conn: &mut redis::aio::MultiplexedConnection, event: &Event) -> Result<()> {
    let _: i64 = conn.publish(layout::EVENTS_CHANNEL, event.encode()).await?;
    Ok(())
}

/// A fresh Ed25519 key, saved to `key_path`, its JWKS published (state, INCR, PUBLISH).
async fn seed(url: &str, key_path: &str) -> Result<()> {
    let key = random_signing_key();
    std::fs::write(key_path, URL_SAFE_NO_PAD.encode(key.to_bytes()))
        .with_context(|| format!("cannot write {key_path}"))?;
    let mut conn = connect(url).await?;
    let _: () = conn
        .set(layout::JWKS, jwks_json(&[key.verifying_key()]))
        .await?;
    let version: u64 = conn.incr(layout::VERSION, 1).await?;
    publish(&mut conn, &Event::Jwks { version }).await?;
    println!("{}", kid(&key.verifying_key()));
    Ok(())
}

fn read_key(path: &str) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let bytes: [u8; 32] = URL_SAFE_NO_PAD
        .decode(text.trim())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{path} does not hold a 32-byte key"))?;
    Ok(SigningKey::from_bytes(&bytes))
}
