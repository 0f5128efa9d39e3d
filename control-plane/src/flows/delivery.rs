//! The outbox worker (every replica runs one): claims due rows, sends mail and SMS through
//! the outbox's transports and webhook calls through the guarded client, and records each
//! outcome. Mail and SMS, and webhook calls, are two lanes, so a slow or silent webhook
//! endpoint (any tenant's) never holds up a sign-in code or a reset link.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use uuid::Uuid;

use crate::domain::{clients, webhooks};
use crate::infra::clock;
use crate::infra::crypto::Secrets;
use crate::infra::egress::{Egress, EgressError};
use crate::infra::outbox::{self, BATCH, Claimed, Lane, Outbox, Outcome};
use crate::infra::store::DbError;

/// How often the worker looks for due messages when nothing woke it.
const POLL: Duration = Duration::from_secs(1);
/// How long a relying party may take to take a logout token.
const BACKCHANNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivers due messages until the task is dropped.
pub async fn run(outbox: Outbox, pool: Pool, secrets: Secrets, egress: Egress) {
    let worker = Worker {
        outbox,
        pool,
        secrets,
        egress,
    };
    tokio::join!(worker.lane(Lane::Messages), worker.lane(Lane::Webhooks));
}

struct Worker {
    outbox: Outbox,
    pool: Pool,
    secrets: Secrets,
    egress: Egress,
}

impl Worker {
    async fn lane(&self, lane: Lane) {
        loop {
            match self.round(lane).await {
                // A full batch: there may be more due at once.
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox round failed; retrying"),
            }
            tokio::select! {
                () = self.outbox.woken(lane) => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Claims due rows, delivers them, records the outcomes.
    async fn round(&self, lane: Lane) -> Result<usize, DbError> {
        let client = self.pool.get().await?;
        let claimed = outbox::claim(&client, lane).await?;
        // The batch at once (one connection pipelines the updates): a slow recipient costs
        // the batch one timeout, not one each.
        let handled =
            futures_util::future::join_all(claimed.iter().map(|row| self.handle(&client, row)))
                .await;
        handled.into_iter().collect::<Result<Vec<()>, DbError>>()?;
        Ok(claimed.len())
    }

    async fn handle(&self, client: &impl GenericClient, row: &Claimed) -> Result<(), DbError> {
        let outcome = match row.channel.as_str() {
            "webhook" => self.call_webhook(client, row).await,
            "backchannel" => self.call_backchannel(client, row).await,
            _ => self.outbox.deliver_claimed(&self.secrets, row).await,
        };
        outbox::record(client, row, outcome).await
    }

    /// One back-channel logout (OpenID Back-Channel Logout 1.0 §2.5): the logout token,
    /// form-encoded, to the URI the client registers now.
    async fn call_backchannel(&self, client: &impl GenericClient, row: &Claimed) -> Outcome {
        let token = row
            .body
            .as_ref()
            .and_then(|b| b.get("logout_token"))
            .and_then(serde_json::Value::as_str);
        let (Ok(oauth_client), Some(token)) = (row.recipient.parse::<Uuid>(), token) else {
            return Outcome::Failed("a back-channel logout without its client or token".into());
        };
        let uri = match clients::backchannel_uri(client, oauth_client).await {
            Ok(Some(Some(uri))) => uri,
            Ok(_) => return Outcome::Failed("the client has no back-channel logout URI".into()),
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let form = serde_urlencoded::to_string([("logout_token", token)]).unwrap_or_default();
        let request = http::Request::post(uri.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::USER_AGENT, "portcullis-control-plane")
            .body(http_body_util::Full::new(bytes::Bytes::from(form)));
        let Ok(request) = request else {
            return Outcome::Failed("the back-channel logout URI does not parse".into());
        };
        match self.egress.call(request, BACKCHANNEL_TIMEOUT, 0).await {
            Ok(answer) if (200..300).contains(&answer.status) => Outcome::Sent,
            Ok(answer) => Outcome::Retry(format!("the endpoint answered {}", answer.status)),
            Err(EgressError::Refused) => {
                Outcome::Failed("the URI names an address the provider may not reach".into())
            }
            Err(e) => Outcome::Retry(format!("the endpoint: {e}")),
        }
    }

    /// One webhook call: the event body to the webhook the row names (its URL and secret
    /// read now, so a change applies to retries), signed, with the delivery's id as
    /// `webhook-id` (the same on every retry).
    async fn call_webhook(&self, client: &impl GenericClient, row: &Claimed) -> Outcome {
        let (Ok(webhook), Some(body)) = (row.recipient.parse::<Uuid>(), &row.body) else {
            return Outcome::Failed("a webhook delivery without its webhook or body".to_owned());
        };
        let (url, secret) = match webhooks::target(client, &self.secrets, webhook).await {
            Ok(Some(target)) => target,
            Ok(None) => return Outcome::Failed("the webhook was deleted".to_owned()),
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let body = body.to_string();
        let sent = webhooks::post(
            &self.egress,
            &url,
            &secret,
            &format!("msg_{}", row.id.simple()),
            clock::unix_now(),
            body.as_bytes(),
        )
        .await;
        match sent {
            Ok(()) => Outcome::Sent,
            Err(why) => Outcome::Retry(why),
        }
    }
}
