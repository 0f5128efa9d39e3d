//! The security event log: one append-only row per event (sign-ins and their failures,
//! registrations, refresh-token reuse, revocations, recovery, verification, MFA changes,
//! administration, key rotation), written in the transaction of the change it records
//! where there is one, so an event is logged exactly when it happened. Details never carry
//! a secret: no password, token or code.
//!
//! Read back newest first by `GET /v1/apps/{app}/audit` ([`page`]); rows older than the
//! application's `audit_retention_days` are pruned by the maintenance loop ([`prune`]).

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::Ctx;
use crate::infra::store::{DbError, Prepared as _};

/// Every event name the log records (what webhooks subscribe to).
pub const EVENTS: &[&str] = &[
    "app.api_key_rotated",
    "app.deleted",
    "app.settings_updated",
    "app.updated",
    "email.verification_sent",
    "email.verified",
    "keys.rotated",
    "login.failed",
    "login.magic_link",
    "login.mfa_failed",
    "login.mfa_passed",
    "login.mfa_required",
    "login.succeeded",
    "magic_link.sent",
    "mfa.code_sent",
    "mfa.disabled",
    "mfa.enabled",
    "mfa.recovery_codes_regenerated",
    "mfa.totp_confirm_failed",
    "mfa.totp_setup_started",
    "oauth.linked",
    "oauth.unlinked",
    "oauth_client.created",
    "oauth_client.deleted",
    "oauth_client.updated",
    "passkey.counter_regression",
    "passkey.registered",
    "passkey.removed",
    "passkey.renamed",
    "password.changed",
    "password.reset",
    "password.reset_requested",
    "refresh_token.reused",
    "role.created",
    "role.deleted",
    "role.updated",
    "session.revoked",
    "user.contact_changed",
    "user.created",
    "user.deleted",
    "user.updated",
    "webhook.created",
    "webhook.deleted",
    "webhook.updated",
];

/// Who made the request, by the credential it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The user the event is about: their token, password, mailed link or code.
    User,
    /// No credential (a failed sign-in, a reset asked for an address).
    Anonymous,
    /// The application's API key or its owner.
    Admin,
    /// `PORTCULLIS_ADMIN_TOKEN`.
    Operator,
}

impl Actor {
    const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Anonymous => "anonymous",
            Self::Admin => "admin",
            Self::Operator => "operator",
        }
    }
}

/// What happened, to whom, in which application.
#[derive(Debug)]
pub struct Event<'a> {
    /// `None` for events outside any application (key rotation).
    pub app: Option<Uuid>,
    pub user: Option<Uuid>,
    pub actor: Actor,
    /// A dotted name: `password.reset`, `mfa.enabled`, ...
    pub event: &'static str,
    /// Non-secret facts (a channel, a method, a count); `Value::Null` for none.
    pub details: Value,
    pub ctx: &'a Ctx,
}

impl<'a> Event<'a> {
    /// An event a signed-in (or signing-in) user caused.
    pub fn by_user(
        app: Uuid,
        user: Uuid,
        event: &'static str,
        details: Value,
        ctx: &'a Ctx,
    ) -> Self {
        Self {
            app: Some(app),
            user: Some(user),
            actor: Actor::User,
            event,
            details,
            ctx,
        }
    }

    /// An event of the application's administration (its API key or its owner).
    pub fn by_admin(
        app: Uuid,
        user: Option<Uuid>,
        event: &'static str,
        details: Value,
        ctx: &'a Ctx,
    ) -> Self {
        Self {
            app: Some(app),
            user,
            actor: Actor::Admin,
            event,
            details,
            ctx,
        }
    }
}

pub async fn record(client: &impl GenericClient, e: Event<'_>) -> Result<(), DbError> {
    debug_assert!(
        EVENTS.contains(&e.event),
        "{} is not in audit::EVENTS",
        e.event
    );
    let details = if e.details.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        e.details
    };
    // One statement: the event, and a delivery for every webhook of the application that
    // subscribed to it (see `webhooks.rs`), committed together.
    client
        .exec(
            "WITH e AS (
                 INSERT INTO audit_events (id, app_id, user_id, actor, event, ip, user_agent,
                     request_id, details, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 RETURNING *)
             INSERT INTO outbox (id, app_id, channel, kind, recipient, body)
             SELECT gen_random_uuid(), e.app_id, 'webhook', e.event, w.id::text,
                 jsonb_build_object(
                     'type', e.event,
                     'timestamp', to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                     'data', jsonb_build_object('id', e.id, 'app_id', e.app_id, 'user_id', e.user_id,
                         'actor', e.actor, 'request_id', e.request_id, 'details', e.details))
             FROM e JOIN webhooks w ON w.app_id = e.app_id
             WHERE w.events @> ARRAY[e.event] OR w.events @> ARRAY['*']",
            &[
                &Uuid::now_v7(),
                &e.app,
                &e.user,
                &e.actor.as_str(),
                &e.event,
                &e.ctx.ip.to_string(),
                &e.ctx.user_agent,
                &e.ctx.request_id,
                &details,
                &crate::infra::clock::at(e.ctx.now),
            ],
        )
        .await?;
    Ok(())
}

/// One row of `GET /audit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: Uuid,
    pub event: String,
    pub user_id: Option<Uuid>,
    /// `user`, `anonymous`, `admin` or `operator`.
    pub actor: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Filters of `GET /audit`; `before` is the cursor (the last id of the previous page).
#[derive(Debug, Default)]
pub struct Filter {
    pub user: Option<Uuid>,
    pub event: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// A page of an application's events, newest first (ids are UUID v7: time-ordered), and
/// whether more follow.
pub async fn page(
    client: &impl GenericClient,
    app: Uuid,
    f: &Filter,
) -> Result<(Vec<EventView>, bool), DbError> {
    let rows = client
        .q(
            "SELECT id, event, user_id, actor, ip, user_agent, request_id, details, created_at
             FROM audit_events
             WHERE app_id = $1 AND ($2::uuid IS NULL OR user_id = $2)
               AND ($3::text IS NULL OR event = $3)
               AND ($4::timestamptz IS NULL OR created_at >= $4)
               AND ($5::timestamptz IS NULL OR created_at < $5)
               AND ($6::uuid IS NULL OR id < $6)
             ORDER BY id DESC LIMIT $7",
            &[
                &app,
                &f.user,
                &f.event,
                &f.since,
                &f.until,
                &f.before,
                &(f.limit + 1),
            ],
        )
        .await?;
    let more = rows.len() as i64 > f.limit;
    let events = rows
        .iter()
        .take(f.limit as usize)
        .map(|r| EventView {
            id: r.get(0),
            event: r.get(1),
            user_id: r.get(2),
            actor: r.get(3),
            ip: r.get(4),
            user_agent: r.get(5),
            request_id: r.get(6),
            details: r.get(7),
            created_at: r.get(8),
        })
        .collect();
    Ok((events, more))
}

/// Deletes events older than their application's `audit_retention_days`, and those of
/// deleted applications (or of none) after the default.
pub async fn prune(client: &impl GenericClient) -> Result<u64, DbError> {
    let default = crate::domain::settings::DEFAULT_AUDIT_RETENTION_DAYS;
    Ok(client
        .exec(
            "DELETE FROM audit_events e
             WHERE e.created_at < now() - make_interval(days => COALESCE(
                 (SELECT (a.settings->>'audit_retention_days')::int FROM apps a WHERE a.id = e.app_id),
                 $1))",
            &[&default],
        )
        .await?)
}
