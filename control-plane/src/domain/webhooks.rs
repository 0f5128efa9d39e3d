//! Webhooks (API.md §3 `/webhooks`): an application's endpoints receive its security
//! events (the audit log's names, `user.created`, `session.revoked`, ...), signed as
//! Standard Webhooks specifies (`webhook-id`, `webhook-timestamp`, `webhook-signature` =
//! `v1,` base64 HMAC-SHA256 of `id.timestamp.body` under the `whsec_` secret).
//!
//! Deliveries are outbox rows made in the same statement as the audit row
//! (`audit::record`), retried with backoff for a day, then kept as dead letters that can be
//! listed and replayed. Targets that resolve to loopback, private, link-local, CGNAT or
//! metadata addresses are refused (at creation, and again at every connection, so a DNS
//! answer that changes cannot reach them: `infra::egress`) unless
//! `PORTCULLIS_EGRESS_ALLOW_PRIVATE`; redirects are never followed.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::infra::crypto::Secrets;
use crate::infra::egress::{Egress, EgressError};
use crate::infra::store::{DbError, Prepared as _};

/// How long an endpoint may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a webhook change was refused for.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The request's fault; the text says what (for the client).
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(WebhookError);

/// A target URL a tenant gives, checked through the guarded client (see
/// [`Egress::check_url`]).
pub async fn check_url(egress: &Egress, url: &str) -> Result<(), WebhookError> {
    egress
        .check_url(url)
        .await
        .map_err(|why| WebhookError::Invalid(format!("webhook url {why}")))
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
pub fn check_events(events: &[String]) -> Result<Vec<String>, WebhookError> {
    if let Some(unknown) = events
        .iter()
        .find(|e| *e != "*" && !crate::domain::audit::EVENTS.contains(&e.as_str()))
    {
        return Err(WebhookError::Invalid(format!(
            "unknown event {unknown:?}; events are {} or \"*\"",
            crate::domain::audit::EVENTS.join(", ")
        )));
    }
    if events.is_empty() {
        return Err(WebhookError::Invalid(
            "events must name at least one event, or \"*\"".into(),
        ));
    }
    let mut out = events.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A `whsec_` secret: the given one (at least 24 bytes once decoded) or a new one.
pub fn secret(given: Option<&str>) -> Result<String, WebhookError> {
    match given {
        Some(s) => {
            let key = s
                .strip_prefix("whsec_")
                .and_then(|b| STANDARD.decode(b).ok())
                .filter(|k| (24..=64).contains(&k.len()));
            match key {
                Some(_) => Ok(s.to_owned()),
                None => Err(WebhookError::Invalid(
                    "secret must be whsec_ followed by 24..=64 bytes in base64".into(),
                )),
            }
        }
        None => {
            let key: [u8; 32] = rand::random();
            Ok(format!("whsec_{}", STANDARD.encode(key)))
        }
    }
}

pub async fn list(client: &impl GenericClient, app: Uuid) -> Result<Vec<Webhook>, DbError> {
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
) -> Result<Webhook, WebhookError> {
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
) -> Result<Webhook, WebhookError> {
    let sealed = secret.map(|s| secrets.seal(s.as_bytes(), id.as_bytes()));
    let sql = format!(
        "UPDATE webhooks SET url = $3, events = $4, secret_enc = COALESCE($5, secret_enc)
         WHERE app_id = $1 AND id = $2 RETURNING {COLUMNS}"
    );
    client
        .q_opt(&sql, &[&app, &id, &url, &events, &sealed])
        .await?
        .map(|r| from_row(&r))
        .ok_or(WebhookError::NotFound("webhook"))
}

pub async fn delete(client: &impl GenericClient, app: Uuid, id: Uuid) -> Result<(), WebhookError> {
    let deleted = client
        .exec(
            "DELETE FROM webhooks WHERE app_id = $1 AND id = $2",
            &[&app, &id],
        )
        .await?;
    if deleted == 0 {
        return Err(WebhookError::NotFound("webhook"));
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
) -> Result<Vec<Delivery>, DbError> {
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
) -> Result<(), WebhookError> {
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
        return Err(WebhookError::NotFound("failed delivery"));
    }
    Ok(())
}

/// The target of a delivery: its URL and secret, if the webhook still exists.
pub async fn target(
    client: &impl GenericClient,
    secrets: &Secrets,
    webhook: Uuid,
) -> Result<Option<(String, String)>, DbError> {
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

/// Posts `body` to `url`, signed; `Ok` on a 2xx. A redirect is a failure, never followed.
pub async fn post(
    egress: &Egress,
    url: &str,
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "the URL does not parse".to_owned())?;
    let signature = sign(secret, id, timestamp, body).ok_or("the secret is unusable")?;
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "portcullis-webhooks")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    match egress.call(request, SEND_TIMEOUT, 0).await {
        Err(EgressError::Refused) => {
            Err("the URL names an address a webhook may not reach".to_owned())
        }
        Err(EgressError::Timeout) => Err("the endpoint timed out".to_owned()),
        Err(EgressError::Failed(e)) => Err(format!("the endpoint: {e}")),
        Ok(answer) if (200..300).contains(&answer.status) => Ok(()),
        Ok(answer) => Err(format!("the endpoint answered {}", answer.status)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
