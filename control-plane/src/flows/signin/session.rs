//! A session's life: started (with its first tokens), its refresh token rotated with
//! reuse detection and the grace window, and ended (PostgreSQL first, then the Redis
//! layout the verifiers read).

use portcullis_common::token::Amr;
use uuid::Uuid;

use super::{Deps, SignInError};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::clients::Client;
use crate::domain::mailings::{self, Mailing};
use crate::domain::sessions::{self, Binding, Inserted, Revoked, Which};
use crate::domain::tokens::{self, Grant, Tokens};
use crate::domain::users::{self, NewUser, User};
use crate::infra::clock;
use crate::infra::crypto::{digest, random_token};
use crate::infra::store::DbError;

/// Whose session [`start`] opens.
#[derive(Debug)]
pub enum Subject<'a> {
    /// A user being created: inserted in the same transaction as the session (and the
    /// mails of its registration), so a failure leaves none of them.
    New(&'a NewUser, &'a [Mailing]),
    /// A signed-in user; refused with `user_disabled` if disabled meanwhile.
    Existing(&'a User),
}

/// The OAuth client a session's tokens are for (Portcullis as an OpenID Provider), and
/// the scope granted to it.
#[derive(Clone, Copy, Debug)]
pub struct ForClient<'a> {
    pub client: &'a Client,
    /// Space-separated.
    pub scope: &'a str,
    /// The browser's sign-in at the provider the session comes from.
    pub provider_session: Option<Uuid>,
}

impl ForClient<'_> {
    fn binding(&self) -> Binding {
        Binding {
            client: self.client.id,
            scope: self.scope.to_owned(),
            provider_session: self.provider_session,
        }
    }
}

/// Starts a session and returns the user and its first tokens. A session already bound to
/// the same device is revoked in the same transaction.
pub async fn start(
    deps: Deps<'_>,
    app: &App,
    subject: Subject<'_>,
    device: Option<&str>,
    ctx: &Ctx,
    amr: Vec<Amr>,
) -> Result<(User, Tokens), SignInError> {
    open(deps, app, subject, device, None, ctx, amr).await
}

/// Starts a session of `user` for an OAuth client: its tokens carry the client's id and
/// the granted scope, with the client's lifetimes.
pub async fn start_for_client(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    for_client: ForClient<'_>,
    ctx: &Ctx,
    amr: Vec<Amr>,
) -> Result<Tokens, SignInError> {
    let subject = Subject::Existing(user);
    let (_, tokens) = open(deps, app, subject, None, Some(for_client), ctx, amr).await?;
    Ok(tokens)
}

async fn open(
    deps: Deps<'_>,
    app: &App,
    subject: Subject<'_>,
    device: Option<&str>,
    for_client: Option<ForClient<'_>>,
    ctx: &Ctx,
    amr: Vec<Amr>,
) -> Result<(User, Tokens), SignInError> {
    let refresh = random_token(32);
    let sid = Uuid::now_v7();
    let refresh_ttl = for_client
        .and_then(|f| f.client.refresh_token_ttl)
        .map_or(app.settings.refresh_token_ttl, i64::from);
    let expires = clock::at(ctx.now + refresh_ttl);
    let binding = for_client.map(|f| f.binding());
    // A confidential client's refresh tokens stay unbound (RFC 9449 §5: the client
    // authenticates itself); its access tokens are bound all the same.
    let dpop = ctx
        .dpop
        .filter(|_| for_client.is_none_or(|f| !f.client.confidential));
    let mut client = deps.pool.get().await?;
    let mut attempt = 0;
    let mut mailed = false;
    let (user, replaced) = loop {
        attempt += 1;
        let tx = client.transaction().await?;
        let user = match subject {
            Subject::New(new, mailings) => {
                let user = users::insert(&tx, app.id, new).await?;
                for mailing in mailings {
                    mailings::mail_in(&tx, &deps.links, app, &user, mailing, ctx).await?;
                    mailed = true;
                }
                user
            }
            Subject::Existing(user) => {
                let user = users::lock_shared(&tx, user.id)
                    .await?
                    .ok_or(SignInError::InvalidCredentials)?;
                if user.disabled(clock::at(ctx.now)) {
                    return Err(SignInError::UserDisabled);
                }
                user
            }
        };
        let replaced = match device {
            Some(d) => {
                let which = Which::Device {
                    user: user.id,
                    device: d.to_owned(),
                };
                sessions::revoke_in(&tx, &which, ctx.now).await?
            }
            None => Vec::new(),
        };
        let inserted = sessions::insert_in(
            &tx,
            sid,
            user.id,
            app.id,
            device,
            &amr,
            expires,
            &refresh,
            binding.as_ref(),
            dpop.as_ref(),
            ctx,
        )
        .await?;
        // Two logins on one device at once: the loser retries and replaces the winner.
        if inserted == Inserted::DeviceTaken {
            if attempt < 3 {
                continue;
            }
            return Err(DbError::Failed("a device's session kept being replaced".into()).into());
        }
        let amr_names = sessions::amr_names(&amr);
        let details = serde_json::json!({ "session_id": sid, "amr": amr_names });
        let event = |event| Event::by_user(app.id, user.id, event, details.clone(), ctx);
        if matches!(subject, Subject::New(..)) {
            audit::record(&tx, event("user.created")).await?;
        }
        audit::record(&tx, event("login.succeeded")).await?;
        tx.commit().await?;
        break (user, replaced);
    };
    drop(client);
    if mailed {
        deps.outbox.wake();
    }
    sessions::publish_sessions(deps.publisher, &replaced).await;
    let issued = Issued {
        sid,
        refresh_token: refresh,
        amr,
        for_client,
    };
    let tokens = issue(deps, app, &user, issued, ctx).await?;
    Ok((user, tokens))
}

/// What [`issue`] makes tokens of.
struct Issued<'a> {
    sid: Uuid,
    refresh_token: String,
    amr: Vec<Amr>,
    for_client: Option<ForClient<'a>>,
}

/// An access token for `user`'s session, and the refresh token beside it. A client's token
/// carries its id and the granted scope (and the roles only with the `roles` scope); a
/// request with a DPoP proof gets a token bound to its key.
async fn issue(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    issued: Issued<'_>,
    ctx: &Ctx,
) -> Result<Tokens, SignInError> {
    let Issued {
        sid,
        refresh_token,
        amr,
        for_client,
    } = issued;
    let ttl = for_client
        .and_then(|f| f.client.access_token_ttl)
        .map_or(app.settings.access_token_ttl, i64::from);
    let app_id = app.id.to_string();
    let (client_id, scope, roles) = match for_client {
        Some(f) => {
            let roles = if f.scope.split(' ').any(|s| s == "roles") {
                user.roles.clone()
            } else {
                Vec::new()
            };
            (Some(f.client.id.to_string()), f.scope.to_owned(), roles)
        }
        None => (None, user.scope.clone(), user.roles.clone()),
    };
    let (access_token, claims) = tokens::mint(
        deps.keys,
        deps.issuer,
        Grant {
            audience: &app_id,
            client_id,
            sub: user.id,
            sid,
            roles,
            scope,
            amr,
            guest: user.guest,
            ttl,
            dpop: ctx.dpop,
        },
        user.issued_at(ctx.now),
    )
    .await?;
    Ok(Tokens {
        access_token,
        refresh_token,
        token_type: tokens::token_type(ctx.dpop),
        expires_in: ttl,
        expires_at: clock::at(claims.exp),
        session_id: sid,
        user_id: user.id,
        roles: claims.roles,
    })
}

/// Rotates `presented`: exactly one concurrent caller wins (an atomic
/// `UPDATE ... WHERE used_at IS NULL`). A token presented again within the application's
/// grace window gets the same successor; any other reuse revokes the whole session.
///
/// A session bound to a DPoP key refreshes only with a proof by that key (`ctx.dpop`);
/// without one nothing changes, whatever state the token is in (a stolen token, used or
/// not, revokes nothing), and the successor stays bound.
///
/// A client's session (`for_client`) refreshes only for that client; any other only
/// without one.
pub async fn refresh(
    deps: Deps<'_>,
    app: &App,
    presented: &str,
    for_client: Option<&Client>,
    ctx: &Ctx,
) -> Result<Tokens, SignInError> {
    if presented.is_empty() || presented.len() > sessions::MAX_REFRESH_LEN {
        return Err(SignInError::InvalidRefreshToken);
    }
    let hash = digest(presented);
    // The successor is a function of the presented token, so the winning UPDATE records
    // it at once and a retry within the grace window can recompute it.
    let successor = deps.secrets.successor(presented);
    let now = clock::at(ctx.now);
    let mut client = deps.pool.get().await?;
    let client_id = for_client.map(|c| c.id);
    let successor_hash = digest(&successor);
    let rotated = sessions::rotate(&client, app.id, &hash, &successor_hash, client_id, ctx);
    if let Some(won) = rotated.await? {
        drop(client);
        metrics::counter!("portcullis_refresh_total", "outcome" => "rotated").increment(1);
        let scope = won.scope.unwrap_or_default();
        let issued = Issued {
            sid: won.sid,
            refresh_token: successor,
            amr: won.amr,
            for_client: bound(for_client, &scope),
        };
        return issue(deps, app, &won.user, issued, ctx).await;
    }

    let tx = client.transaction().await?;
    // Not rotatable: unknown, expired, revoked, already used, or bound to another key.
    let found = sessions::presented_in(&tx, app.id, &hash, client_id, now).await?;
    if found
        .as_ref()
        .is_some_and(|f| f.dpop.is_some() && f.dpop != ctx.dpop)
    {
        metrics::counter!("portcullis_refresh_total", "outcome" => "wrong_dpop_key").increment(1);
        return Err(SignInError::WrongDpopKey);
    }
    let Some(found) = found.filter(|f| f.live) else {
        metrics::counter!("portcullis_refresh_total", "outcome" => "invalid").increment(1);
        return Err(SignInError::InvalidRefreshToken);
    };
    let Some(used_at) = found.used_at else {
        // Unused, on a live session, yet not rotated: the user is disabled or expired
        // (or the token was rotated a moment ago by a concurrent request, and then it is
        // used by now).
        let user = users::lock_shared(&tx, found.user)
            .await?
            .ok_or(SignInError::InvalidCredentials)?;
        return Err(if user.disabled(now) {
            SignInError::UserDisabled
        } else {
            SignInError::InvalidRefreshToken
        });
    };
    let grace = app.settings.refresh_token_reuse_grace_secs;
    if grace > 0 && (now - used_at).whole_seconds() <= grace {
        // The successor must still be the session's live token: a session never has two.
        let live = match &found.successor_hash {
            Some(h) => sessions::token_unused_in(&tx, h).await?,
            None => false,
        };
        if live {
            let user = users::lock_shared(&tx, found.user)
                .await?
                .ok_or(SignInError::InvalidCredentials)?;
            tx.commit().await?;
            drop(client);
            if user.disabled(now) {
                return Err(SignInError::UserDisabled);
            }
            metrics::counter!("portcullis_refresh_total", "outcome" => "grace").increment(1);
            let scope = found.scope.unwrap_or_default();
            let issued = Issued {
                sid: found.sid,
                refresh_token: successor,
                amr: found.amr,
                for_client: bound(for_client, &scope),
            };
            return issue(deps, app, &user, issued, ctx).await;
        }
    }
    let which = Which::One {
        user: found.user,
        session: found.sid,
    };
    let revoked = sessions::revoke_in(&tx, &which, ctx.now).await?;
    audit::record(
        &tx,
        Event {
            app: Some(app.id),
            user: Some(found.user),
            actor: Actor::Anonymous,
            event: "refresh_token.reused",
            details: serde_json::json!({ "session_id": found.sid }),
            ctx,
        },
    )
    .await?;
    tx.commit().await?;
    drop(client);
    metrics::counter!("portcullis_refresh_total", "outcome" => "reused").increment(1);
    tracing::warn!(session = %found.sid, "refresh token reused; session revoked");
    sessions::publish_sessions(deps.publisher, &revoked).await;
    Err(SignInError::RefreshTokenReused)
}

fn bound<'a>(client: Option<&'a Client>, scope: &'a str) -> Option<ForClient<'a>> {
    client.map(|client| ForClient {
        client,
        scope,
        provider_session: None,
    })
}

/// Revokes sessions and publishes them: the common end of logout and session deletion,
/// recorded as `session.revoked` with `reason`.
pub async fn revoke(
    deps: Deps<'_>,
    app: Uuid,
    which: &Which,
    reason: &'static str,
    ctx: &Ctx,
) -> Result<Vec<Revoked>, DbError> {
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    let revoked = sessions::revoke_in(&tx, which, ctx.now).await?;
    if !revoked.is_empty() {
        let user = match which {
            Which::One { user, .. }
            | Which::Device { user, .. }
            | Which::AllOfUser { user, .. } => *user,
        };
        let sessions: Vec<Uuid> = revoked.iter().map(|r| r.session).collect();
        audit::record(
            &tx,
            Event::by_user(
                app,
                user,
                "session.revoked",
                serde_json::json!({ "reason": reason, "sessions": sessions }),
                ctx,
            ),
        )
        .await?;
    }
    tx.commit().await?;
    drop(client);
    sessions::publish_sessions(deps.publisher, &revoked).await;
    Ok(revoked)
}
