//! Webhooks (API.md §3 `/webhooks`): an application's endpoints receive its security
//! events (the audit log's names, `user.created`, `session.revoked`, ...), signed as
//! Standard Webhooks specifies (`webhook-id`, `webhook-timestamp`, `webhook-signature` =
//! `v1,` base64 HMAC-SHA256 of `id.timestamp.body` under the `whsec_` secret).
//!
//! Deliveries are outbox rows made in the same statement as the audit row
//! (`audit::record`), retried with backoff for a day, then kept as dead letters that can be
//! listed and replayed. Targets that resolve to loopback, private, link-local, CGNAT or
//! metadata addresses are refused (at creation, and again at every connection, so a DNS
//! answer that changes cannot reach them) unless `PORTCULLIS_WEBHOOK_ALLOW_PRIVATE`;
//! redirects are never followed.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::infra::crypto::Secrets;
use crate::infra::store::Prepared as _;

/// How long an endpoint may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `ip` is an address a webhook must not reach: loopback, private (RFC 1918, ULA),
/// link-local (the cloud metadata services live there), CGNAT, unspecified, multicast,
/// broadcast, documentation, or an IPv4 address mapped into IPv6 that is one of those.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [first, second, third, _] = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || first == 0
                || first >= 240
                || (first == 100 && (second & 0xc0) == 64)
                || (first == 198 && (second & 0xfe) == 18)
                || (first == 192 && second == 0 && third == 0)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                forbidden(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some_and(|v4| forbidden(IpAddr::V4(v4)))
                // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks).
                || (s[..6] == [0; 6] && embedded(s[6], s[7]))
                // NAT64: the well-known 64:ff9b::/96 by its embedded address, the local-use
                // 64:ff9b:1::/48 whole.
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && embedded(s[6], s[7]))
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                // 6to4: the IPv4 address in bits 16..48.
                || (s[0] == 0x2002 && embedded(s[1], s[2]))
        }
    }
}

/// The DNS resolver of webhook connections: the system's, with forbidden addresses
/// dropped, so what is connected to is what was checked.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| allow_private || !forbidden(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::other(
                    "the host resolves to no address a webhook may reach",
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

pub type WebhookClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

pub fn client(allow_private: bool) -> Result<WebhookClient, String> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// A target URL: absolute `http(s)`, at most 2,000 characters, no credentials; its host
/// must not be (or resolve only to) forbidden addresses unless `allow_private`.
pub async fn check_url(url: &str, allow_private: bool) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("webhook url {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || url.len() > 2000 {
        return Err(bad("must be an http(s) URL of at most 2000 characters"));
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    if allow_private {
        return Ok(());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| bad("does not resolve"))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() || addrs.iter().any(|ip| forbidden(*ip)) {
        return Err(bad(
            "resolves to a loopback, private, link-local or metadata address",
        ));
    }
    Ok(())
}

/// A webhook as the API shows it (the secret only when created).
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// `whsec_…`: shown only when the webhook is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

const COLUMNS: &str = "id, url, events, created_at";

fn from_row(row: &Row) -> Webhook {
    Webhook {
        id: row.get(0),
        url: row.get(1),
        events: row.get(2),
        created_at: row.get(3),
        secret: None,
    }
}

/// Event names the audit log records (`audit::EVENTS`), or `*`: a name that never occurs
/// would be a subscription that silently never fires.
pub fn check_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if let Some(unknown) = events
        .iter()
        .find(|e| *e != "*" && !crate::domain::audit::EVENTS.contains(&e.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown event {unknown:?}; events are {} or \"*\"",
            crate::domain::audit::EVENTS.join(", ")
        )));
    }
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "events must name at least one event, or \"*\"",
        ));
    }
    let mut out = events.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A `whsec_` secret: the given one (at least 24 bytes once decoded) or a new one.
pub fn secret(given: Option<&str>) -> Result<String, ApiError> {
    match given {
        Some(s) => {
            let key = s
                .strip_prefix("whsec_")
                .and_then(|b| STANDARD.decode(b).ok())
                .filter(|k| (24..=64).contains(&k.len()));
            match key {
                Some(_) => Ok(s.to_owned()),
                None => Err(ApiError::bad_request(
                    "secret must be whsec_ followed by 24..=64 bytes in base64",
                )),
            }
        }
        None => {
            let key: [u8; 32] = rand::random();
            Ok(format!("whsec_{}", STANDARD.encode(key)))
        }
    }
}

pub async fn list(client: &impl GenericClient, app: Uuid) -> Result<Vec<Webhook>, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM webhooks WHERE app_id = $1 ORDER BY id");
    Ok(client
        .q(&sql, &[&app])
        .await?
        .iter()
        .map(from_row)
        .collect())
}

pub async fn create(
    client: &impl GenericClient,
    secrets: &Secrets,
    app: Uuid,
    url: &str,
    events: &[String],
    secret: &str,
) -> Result<Webhook, ApiError> {
    let id = Uuid::now_v7();
    let sql = format!(
        "INSERT INTO webhooks (id, app_id, url, events, secret_enc) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLUMNS}"
    );
    let sealed = secrets.seal(secret.as_bytes(), id.as_bytes());
    let row = client
        .q_one(&sql, &[&id, &app, &url, &events, &sealed])
        .await?;
    Ok(from_row(&row))
}

/// Replaces the URL and events (and the secret when given).
#[allow(clippy::too_many_arguments)]
pub async fn update(
    client: &impl GenericClient,
    secrets: &Secrets,
    app: Uuid,
    id: Uuid,
    url: &str,
    events: &[String],
    secret: Option<&str>,
) -> Result<Webhook, ApiError> {
    let sealed = secret.map(|s| secrets.seal(s.as_bytes(), id.as_bytes()));
    let sql = format!(
        "UPDATE webhooks SET url = $3, events = $4, secret_enc = COALESCE($5, secret_enc)
         WHERE app_id = $1 AND id = $2 RETURNING {COLUMNS}"
    );
    client
        .q_opt(&sql, &[&app, &id, &url, &events, &sealed])
        .await?
        .map(|r| from_row(&r))
        .ok_or_else(|| ApiError::not_found("webhook"))
}

pub async fn delete(client: &impl GenericClient, app: Uuid, id: Uuid) -> Result<(), ApiError> {
    let deleted = client
        .exec(
            "DELETE FROM webhooks WHERE app_id = $1 AND id = $2",
            &[&app, &id],
        )
        .await?;
    if deleted == 0 {
        return Err(ApiError::not_found("webhook"));
    }
    Ok(())
}

/// The Standard Webhooks signature of `body` sent as message `id` at `timestamp`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// One delivery of an event to a webhook, as `GET …/deliveries` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub event: String,
    /// `pending`, `sent` or `failed` (the dead letters).
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[schema(value_type = Object)]
    pub body: Value,
}

/// The webhook's deliveries, newest first, optionally of one `state`.
pub async fn deliveries(
    client: &impl GenericClient,
    app: Uuid,
    webhook: Uuid,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<Delivery>, ApiError> {
    let rows = client
        .q(
            "SELECT id, kind, state, attempts, last_error, created_at, body FROM outbox
             WHERE channel = 'webhook' AND app_id = $1 AND recipient = $2
               AND ($3::text IS NULL OR state = $3)
             ORDER BY created_at DESC LIMIT $4",
            &[&app, &webhook.to_string(), &state, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            id: r.get(0),
            event: r.get(1),
            state: r.get(2),
            attempts: r.get(3),
            last_error: r.get(4),
            created_at: r.get(5),
            body: r.get::<_, Option<Value>>(6).unwrap_or(Value::Null),
        })
        .collect())
}

/// Puts a dead letter back in the queue (a new day of retries from now).
pub async fn replay(
    client: &impl GenericClient,
    app: Uuid,
    webhook: Uuid,
    delivery: Uuid,
) -> Result<(), ApiError> {
    let replayed = client
        .exec(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now(),
                 created_at = now(), done_at = NULL, last_error = NULL
             WHERE id = $1 AND channel = 'webhook' AND app_id = $2 AND recipient = $3
               AND state = 'failed'",
            &[&delivery, &app, &webhook.to_string()],
        )
        .await?;
    if replayed == 0 {
        return Err(ApiError::not_found("failed delivery"));
    }
    Ok(())
}

/// The target of a delivery: its URL and secret, if the webhook still exists.
pub async fn target(
    client: &impl GenericClient,
    secrets: &Secrets,
    webhook: Uuid,
) -> Result<Option<(String, String)>, ApiError> {
    let row = client
        .q_opt(
            "SELECT url, secret_enc FROM webhooks WHERE id = $1",
            &[&webhook],
        )
        .await?;
    Ok(row.and_then(|r| {
        let sealed: Vec<u8> = r.get(1);
        let secret = secrets.open(&sealed, webhook.as_bytes())?;
        Some((r.get(0), String::from_utf8(secret).ok()?))
    }))
}

/// Whether `uri` names a forbidden address literally: hyper connects to an IP literal
/// without asking the resolver, so [`GuardedResolver`] never sees it. Every request through
/// a [`WebhookClient`] checks this first.
pub fn literal_refused(uri: &http::Uri, allow_private: bool) -> bool {
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    !allow_private && host.parse::<IpAddr>().is_ok_and(forbidden)
}

/// Posts `body` to `url`, signed; `Ok` on a 2xx. A redirect is a failure, never followed.
pub async fn post(
    client: &WebhookClient,
    url: &str,
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    allow_private: bool,
) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "the URL does not parse".to_owned())?;
    if literal_refused(&uri, allow_private) {
        return Err("the URL names an address a webhook may not reach".to_owned());
    }
    let signature = sign(secret, id, timestamp, body).ok_or("the secret is unusable")?;
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "portcullis-webhooks")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(SEND_TIMEOUT, client.request(request)).await {
        Err(_) => Err("the endpoint timed out".to_owned()),
        Ok(Err(e)) => Err(format!("the endpoint: {e}")),
        Ok(Ok(r)) if r.status().is_success() => Ok(()),
        Ok(Ok(r)) => Err(format!("the endpoint answered {}", r.status())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "100.128.0.1",
            "64:ff9b::5db8:d822",
        ] {
            assert!(!forbidden(good.parse().unwrap()), "{good}");
        }
    }

    /// The Standard Webhooks specification's example.
    #[test]
    fn signature_matches_the_specification() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn secrets_and_events() {
        assert!(secret(Some("whsec_short")).is_err());
        assert!(secret(None).unwrap().starts_with("whsec_"));
        assert_eq!(
            check_events(&[
                "user.deleted".into(),
                "login.failed".into(),
                "login.failed".into()
            ])
            .unwrap(),
            ["login.failed", "user.deleted"]
        );
        assert!(check_events(&[]).is_err());
        assert!(
            check_events(&["login.succeded".into()]).is_err(),
            "a typo would never fire"
        );
    }
}
