//! The message outbox: mail and SMS are committed as rows in the transaction that caused them
//! ([`enqueue`]) and delivered by a background worker (`flows::delivery`, which claims rows
//! with [`claim`], sends through [`Outbox::deliver`] and records each [`Outcome`]) with
//! retries and backoff, so an SMTP or SMS outage delays messages and loses none. Webhook
//! calls are outbox rows too (channel `webhook`), in a lane of their own.
//!
//! A message carries a secret (a link with a token, or a code), so its payload is sealed
//! with the key-encryption key and erased once delivered or given up. With no transport
//! configured a message is logged (recipient and kind, never its content) and marked
//! `logged`: never silently dropped.
//!
//! Delivery is at least once: a replica that dies mid-send leaves the row leased, and another
//! picks it up when the lease runs out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::infra::crypto::Secrets;
use crate::infra::store::{DbError, Prepared as _};

/// How long a transport may take for one message.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed row is left to its worker before another may take it: longer than a
/// whole batch at the send timeout, so a slow server does not make a second replica send
/// the same rows again.
const LEASE_SECS: f64 = 120.0;
/// The longest wait between two attempts.
const MAX_BACKOFF_SECS: f64 = 300.0;
/// After this long undelivered, a message is given up (`failed`).
pub const GIVE_UP_SECS: i64 = 86_400;
/// Messages claimed per round, sent together (well within `LEASE_SECS`).
pub const BATCH: i64 = 5;

/// What to send. Built by `messages.rs`; the payload stays sealed in the database.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "lowercase")]
pub enum Message {
    Email {
        from_name: String,
        subject: String,
        text: String,
        html: String,
    },
    Sms {
        body: String,
    },
}

impl Message {
    fn channel(&self) -> &'static str {
        match self {
            Self::Email { .. } => "email",
            Self::Sms { .. } => "sms",
        }
    }
}

/// Queues a call with a `body` that holds no secret worth sealing (a back-channel logout
/// token: it only says a session ended) in the webhook lane, in the caller's transaction.
/// Call [`Outbox::wake_webhooks`] after the commit.
pub async fn enqueue_call(
    tx: &impl GenericClient,
    app: Uuid,
    channel: &'static str,
    kind: &'static str,
    recipient: &str,
    body: &serde_json::Value,
) -> Result<(), DbError> {
    tx.exec(
        "INSERT INTO outbox (id, app_id, channel, kind, recipient, body)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&Uuid::now_v7(), &app, &channel, &kind, &recipient, body],
    )
    .await?;
    Ok(())
}

/// Queues `message` for `recipient` in the caller's transaction. `kind` names the template
/// (it is what logs and metrics show). Call [`Outbox::wake`] after the commit.
pub async fn enqueue(
    tx: &impl GenericClient,
    secrets: &Secrets,
    app: Uuid,
    kind: &'static str,
    recipient: &str,
    message: &Message,
) -> Result<(), DbError> {
    let id = Uuid::now_v7();
    let plain = serde_json::to_vec(message).map_err(|e| DbError::Failed(e.to_string()))?;
    let sealed = secrets.seal(&plain, id.as_bytes());
    tx.exec(
        "INSERT INTO outbox (id, app_id, channel, kind, recipient, payload)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &app, &message.channel(), &kind, &recipient, &sealed],
    )
    .await?;
    Ok(())
}

/// Refuses what lettre cannot use, at start-up (the scheme, a host).
pub fn check_smtp_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
        return Err("must be an smtp:// or smtps:// URL".to_owned());
    }
    AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map(|_| ())
        .map_err(|e| format!("is not usable: {e}"))
}

/// The delivery side: transports and the worker's wake-up call. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    wake: Notify,
    wake_webhooks: Notify,
    mailer: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: String,
    sms: Option<Sms>,
}

/// Where messages go (PORTCULLIS_SMTP_URL, _MAIL_FROM, _SMS_WEBHOOK_URL, _TOKEN).
#[derive(Clone, Debug)]
pub struct Transports {
    /// `None`: mail is logged, not sent.
    pub smtp_url: Option<String>,
    pub mail_from: String,
    /// `None`: SMS is logged, not sent.
    pub sms_url: Option<String>,
    pub sms_token: Option<String>,
}

struct Sms {
    url: String,
    token: Option<String>,
    client: HttpClient,
}

/// The control plane's client for outgoing HTTP(S) (SMS provider, CAPTCHA providers):
/// rustls with the system's roots, HTTP/1.1, connections pooled.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn http_client() -> Result<HttpClient, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("smtp", &self.inner.mailer.is_some())
            .field("sms", &self.inner.sms.is_some())
            .finish()
    }
}

/// The two queues the worker serves apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Mail and SMS.
    Messages,
    Webhooks,
}

/// How one delivery attempt ended.
#[derive(Debug)]
pub enum Outcome {
    Sent,
    /// No transport for the channel: logged instead.
    Logged,
    /// Worth another attempt later.
    Retry(String),
    /// Will never succeed (the server refused the message for good).
    Failed(String),
}

/// A row the worker leased: to deliver now, then [`record`].
#[derive(Debug)]
pub struct Claimed {
    pub id: Uuid,
    pub channel: String,
    pub kind: String,
    pub recipient: String,
    /// Mail and SMS: the sealed message.
    pub payload: Option<Vec<u8>>,
    pub attempts: i32,
    /// Seconds since the row was made.
    pub age: i64,
    /// Webhook calls: the event.
    pub body: Option<serde_json::Value>,
}

/// Leases up to [`BATCH`] due rows of `lane` to this worker for [`LEASE_SECS`].
pub async fn claim(client: &impl GenericClient, lane: Lane) -> Result<Vec<Claimed>, DbError> {
    let channels: &[&str] = match lane {
        Lane::Messages => &["email", "sms"],
        Lane::Webhooks => &["webhook", "backchannel"],
    };
    let rows = client
        .q(
            "UPDATE outbox SET attempts = attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $1)
             WHERE id IN (SELECT id FROM outbox
                          WHERE state = 'pending' AND next_attempt_at <= now()
                            AND channel = ANY($3)
                          ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, channel, kind, recipient, payload, attempts,
                 EXTRACT(EPOCH FROM now() - created_at)::bigint, body",
            &[&LEASE_SECS, &BATCH, &channels],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Claimed {
            id: row.get(0),
            channel: row.get(1),
            kind: row.get(2),
            recipient: row.get(3),
            payload: row.get(4),
            attempts: row.get(5),
            age: row.get(6),
            body: row.get(7),
        })
        .collect())
}

/// Records how the delivery of `row` ended: done (payload erased), due again after a
/// backoff, or given up (payload erased; webhook bodies stay, as dead letters).
pub async fn record(
    client: &impl GenericClient,
    row: &Claimed,
    outcome: Outcome,
) -> Result<(), DbError> {
    let outcome = match outcome {
        Outcome::Retry(why) if row.age >= GIVE_UP_SECS => {
            Outcome::Failed(format!("gave up after {} attempts: {why}", row.attempts))
        }
        other => other,
    };
    let label = match &outcome {
        Outcome::Sent => "sent",
        Outcome::Logged => "logged",
        Outcome::Retry(_) => "retry",
        Outcome::Failed(_) => "failed",
    };
    let (id, channel, kind, attempts) = (
        row.id,
        row.channel.as_str(),
        row.kind.as_str(),
        row.attempts,
    );
    metrics::counter!("portcullis_outbox_messages_total", "channel" => channel.to_owned(), "outcome" => label)
        .increment(1);
    match outcome {
        Outcome::Sent | Outcome::Logged => {
            client
                .exec(
                    "UPDATE outbox SET state = $2, payload = NULL, last_error = NULL,
                         done_at = now() WHERE id = $1",
                    &[&id, &label],
                )
                .await?;
        }
        Outcome::Retry(why) => {
            // Webhook endpoints get longer pauses (up to an hour) over their day.
            let cap = if channel == "webhook" {
                3600.0
            } else {
                MAX_BACKOFF_SECS
            };
            let backoff = 2f64.powi(attempts.clamp(1, 20) - 1).min(cap);
            tracing::warn!(%id, channel, kind, attempts, retry_in_secs = backoff, error = %why,
                "message not delivered; will retry");
            client
                .exec(
                    "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2),
                         last_error = $3 WHERE id = $1",
                    &[&id, &backoff, &why],
                )
                .await?;
        }
        Outcome::Failed(why) => {
            tracing::error!(%id, channel, kind, attempts, error = %why, "message given up");
            client
                .exec(
                    "UPDATE outbox SET state = 'failed', payload = NULL, last_error = $2,
                         done_at = now() WHERE id = $1",
                    &[&id, &why],
                )
                .await?;
        }
    }
    Ok(())
}

impl Outbox {
    /// `client` posts SMS.
    pub fn new(transports: &Transports, client: HttpClient) -> Result<Self, String> {
        let mailer = transports
            .smtp_url
            .as_deref()
            .map(|url| {
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map(|b| b.timeout(Some(SEND_TIMEOUT)).build())
                    .map_err(|e| format!("PORTCULLIS_SMTP_URL: {e}"))
            })
            .transpose()?;
        let sms = transports.sms_url.as_ref().map(|url| Sms {
            url: url.clone(),
            token: transports.sms_token.clone(),
            client,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                wake: Notify::new(),
                wake_webhooks: Notify::new(),
                mailer,
                from: transports.mail_from.clone(),
                sms,
            }),
        })
    }

    /// Tells the worker a message was committed (it also polls, for other replicas' rows).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The same for webhook calls (a replayed dead letter).
    pub fn wake_webhooks(&self) {
        self.inner.wake_webhooks.notify_one();
    }

    /// Resolves when a message of `lane` was committed on this replica.
    pub async fn woken(&self, lane: Lane) {
        match lane {
            Lane::Messages => self.inner.wake.notified().await,
            Lane::Webhooks => self.inner.wake_webhooks.notified().await,
        }
    }

    /// Opens a claimed mail or SMS row and sends it.
    pub async fn deliver_claimed(&self, secrets: &Secrets, row: &Claimed) -> Outcome {
        let message = row
            .payload
            .as_deref()
            .and_then(|sealed| secrets.open(sealed, row.id.as_bytes()))
            .and_then(|plain| serde_json::from_slice::<Message>(&plain).ok());
        match message {
            Some(message) => self.deliver(&row.recipient, &message).await,
            None => Outcome::Failed("the payload does not open".to_owned()),
        }
    }

    async fn deliver(&self, recipient: &str, message: &Message) -> Outcome {
        match message {
            Message::Email {
                from_name,
                subject,
                text,
                html,
            } => {
                let Some(mailer) = &self.inner.mailer else {
                    tracing::warn!(
                        subject = %subject,
                        "PORTCULLIS_SMTP_URL is not set: mail logged, not sent"
                    );
                    return Outcome::Logged;
                };
                let (Ok(from), Ok(to)) = (self.inner.from.parse(), recipient.parse::<Mailbox>())
                else {
                    return Outcome::Failed("an address does not parse".to_owned());
                };
                let from = Mailbox::new(Some(from_name.clone()), from);
                let mail = lettre::Message::builder()
                    .from(from)
                    .to(to)
                    .subject(subject.clone())
                    .multipart(MultiPart::alternative_plain_html(
                        text.clone(),
                        html.clone(),
                    ));
                let mail = match mail {
                    Ok(mail) => mail,
                    Err(e) => return Outcome::Failed(format!("mail not built: {e}")),
                };
                // lettre's timeout is per exchange; this bounds the whole conversation.
                match tokio::time::timeout(SEND_TIMEOUT, mailer.send(mail)).await {
                    Err(_) => Outcome::Retry("SMTP: timed out".to_owned()),
                    Ok(Ok(_)) => Outcome::Sent,
                    Ok(Err(e)) if e.is_permanent() => Outcome::Failed(format!("SMTP: {e}")),
                    Ok(Err(e)) => Outcome::Retry(format!("SMTP: {e}")),
                }
            }
            Message::Sms { body } => {
                let Some(sms) = &self.inner.sms else {
                    tracing::warn!("PORTCULLIS_SMS_WEBHOOK_URL is not set: SMS logged, not sent");
                    return Outcome::Logged;
                };
                sms.send(recipient, body).await
            }
        }
    }
}

impl Sms {
    async fn send(&self, to: &str, body: &str) -> Outcome {
        let json = serde_json::json!({ "to": to, "body": body }).to_string();
        let mut request = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "portcullis-control-plane");
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match request.body(Full::new(Bytes::from(json))) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("SMS request not built: {e}")),
        };
        match tokio::time::timeout(SEND_TIMEOUT, self.client.request(request)).await {
            Err(_) => Outcome::Retry("SMS endpoint timed out".to_owned()),
            Ok(Err(e)) => Outcome::Retry(format!("SMS endpoint: {e}")),
            Ok(Ok(response)) if response.status().is_success() => Outcome::Sent,
            // A 4xx other than 408/429 is the provider refusing this message for good.
            Ok(Ok(response))
                if response.status().is_client_error()
                    && !matches!(response.status().as_u16(), 408 | 429) =>
            {
                Outcome::Failed(format!("SMS endpoint answered {}", response.status()))
            }
            Ok(Ok(response)) => {
                Outcome::Retry(format!("SMS endpoint answered {}", response.status()))
            }
        }
    }
}

/// Deletes delivered or given-up rows after a week.
pub async fn prune(client: &impl GenericClient) -> Result<u64, DbError> {
    Ok(client
        .exec(
            "DELETE FROM outbox WHERE state <> 'pending' AND done_at < now() - interval '7 days'",
            &[],
        )
        .await?)
}
