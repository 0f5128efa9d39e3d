//! The security event log: one append-only row per event (recovery, verification, magic
//! links, MFA), written in the transaction of the change it records, so an event is logged
//! exactly when it happened. Details never carry a secret: no password, token or code.
//!
//! Reading it back (`GET /audit`, retention) is the administration surface's job.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::sessions::Ctx;
use crate::store::Prepared as _;

/// What happened, to whom, in which application.
#[derive(Debug)]
pub struct Event<'a> {
    pub app: Uuid,
    pub user: Option<Uuid>,
    /// A dotted name: `password.reset`, `mfa.totp.enabled`, ...
    pub event: &'static str,
    /// Non-secret facts (a channel, a method, a count); `Value::Null` for none.
    pub details: Value,
    pub ctx: &'a Ctx,
}

pub async fn record(client: &impl GenericClient, e: Event<'_>) -> Result<(), ApiError> {
    let details = if e.details.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        e.details
    };
    client
        .exec(
            "INSERT INTO audit_events (id, app_id, user_id, event, ip, user_agent, request_id,
                 details, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &Uuid::now_v7(),
                &e.app,
                &e.user,
                &e.event,
                &e.ctx.ip.to_string(),
                &e.ctx.user_agent,
                &e.ctx.request_id,
                &details,
                &crate::clock::at(e.ctx.now),
            ],
        )
        .await?;
    Ok(())
}
