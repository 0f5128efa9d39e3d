//! Flows that reach a user outside the browser (API.md §3): password reset, email
//! verification and magic links, on single-use tokens (`domain::one_time`) mailed through
//! the outbox (`domain::mailings`).

use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::Ctx;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::one_time::{self, Purpose};
use crate::infra::store::{DbError, Prepared as _};

/// Confirms the address a verification token was mailed to, if it is still the user's.
/// Returns the user id, or `None` when the token is not usable (or the address changed).
pub async fn verify_email_in(
    tx: &impl GenericClient,
    app: Uuid,
    token: &str,
    ctx: &Ctx,
) -> Result<Option<Uuid>, DbError> {
    let Some(found) =
        one_time::consume_in(tx, app, Purpose::EmailVerification, token, ctx.now).await?
    else {
        return Ok(None);
    };
    let email = found
        .data
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or("");
    let updated = tx
        .exec(
            "UPDATE users SET email_verified = true WHERE id = $1 AND email_canonical = $2",
            &[&found.user, &email],
        )
        .await?;
    if updated == 0 {
        return Ok(None);
    }
    audit::record(
        tx,
        Event {
            app: Some(app),
            user: Some(found.user),
            actor: Actor::User,
            event: "email.verified",
            details: Value::Null,
            ctx,
        },
    )
    .await?;
    Ok(Some(found.user))
}
