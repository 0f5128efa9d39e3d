//! Routes a signed-in user calls about themselves (API.md §3): profile, password change and
//! sessions.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_common::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{JsonBody, auth};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Actor, Event};
use crate::domain::one_time::{self, Purpose};
use crate::domain::passwords;
use crate::domain::sessions::{self, SessionView, Which};
use crate::domain::tokens::Principal;
use crate::domain::users::{self, Changes, User, UserView};
use crate::error::{ApiError, ApiResult, Problem};
use crate::flows::mfa::{self, Proof};
use crate::infra::limits::Scope;
use crate::infra::store::Prepared as _;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me_get, me_patch, me_delete))
        .routes(routes!(password_change))
        .routes(routes!(sessions_list, sessions_delete_all))
        .routes(routes!(session_delete))
}

/// The live application and the signed-in user (who must still exist and be enabled).
pub(super) async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    app: &str,
    ctx: &Ctx,
) -> Result<(Arc<App>, Principal, User), ApiError> {
    let app = state.apps.live(&state.pool, app, ctx.now).await?;
    let principal = auth::user(state, headers, &app, ctx.now).await?;
    let client = state.pool.get().await?;
    let user = users::find(&client, app.id, principal.sub)
        .await?
        .ok_or_else(|| ApiError::unauthenticated(ErrorCode::TokenRevoked))?;
    if user.disabled(crate::infra::clock::at(ctx.now)) {
        return Err(ApiError::new(
            ErrorCode::UserDisabled,
            "the user is disabled or expired",
        ));
    }
    Ok((app, principal, user))
}

/// `GET /me`: the profile and the linked provider identities.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MeView {
    #[serde(flatten)]
    user: UserView,
    identities: Vec<crate::flows::oauth::IdentityView>,
}

/// The signed-in user's profile, with the providers linked to it.
#[utoipa::path(get, path = "/v1/apps/{app}/me", tag = "me", params(("app" = String, Path)),
    responses((status = 200, body = MeView), (status = 401, body = Problem)))]
async fn me_get(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<MeView>> {
    let (_, _, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let client = state.pool.get().await?;
    let identities = crate::flows::oauth::identities(&client, user.id).await?;
    Ok(Json(MeView {
        user: user.view(),
        identities,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ProfilePatch {
    username: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    /// Needed (or `code`) to change the email address or the phone number.
    current_password: Option<String>,
    /// A second-factor code: TOTP, a recovery code, or a code sent to this session.
    code: Option<String>,
}

/// Change username, email or phone. A new email or phone needs the current password or a
/// second-factor code (they are where recovery and codes go); it is unverified, and the
/// SMS or email factor bound to the old one is removed.
#[utoipa::path(patch, path = "/v1/apps/{app}/me", tag = "me", params(("app" = String, Path)),
    request_body = ProfilePatch,
    responses((status = 200, body = UserView),
              (status = 401, description = "invalid_credentials or invalid_code", body = Problem),
              (status = 409, description = "user_exists", body = Problem)))]
async fn me_patch(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<ProfilePatch>,
) -> ApiResult<Json<UserView>> {
    let (app, principal, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let changes = Changes::profile(
        body.email.as_deref(),
        body.username.as_deref(),
        body.phone.as_deref(),
    )?;
    let email_changes = changes
        .email
        .as_deref()
        .is_some_and(|e| user.email.as_deref().map(users::canonical) != Some(users::canonical(e)));
    let phone_changes = changes.phone.is_some() && changes.phone != user.phone;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    // A guest has no credential to present; anyone else proves it is them. In the same
    // transaction: a code is spent only if the change commits.
    if (email_changes || phone_changes) && !user.guest {
        let proof = Proof {
            current_password: body.current_password,
            code: body.code,
            ..Proof::default()
        };
        mfa::reauthenticate_in(&tx, &state, &app, &user, principal.sid, &proof, &ctx).await?;
    }
    let updated = users::update(&tx, user.id, &changes).await?;
    let mut gone = Vec::new();
    if email_changes {
        gone.push("email");
    }
    if phone_changes {
        gone.push("sms");
    }
    if !gone.is_empty() {
        tx.exec(
            "DELETE FROM mfa_factors WHERE user_id = $1 AND kind = ANY($2)",
            &[&user.id, &gone],
        )
        .await?;
        if email_changes {
            // Links mailed to the old address open nothing any more.
            let mailed = [
                Purpose::PasswordReset.as_str(),
                Purpose::MagicLink.as_str(),
                Purpose::EmailVerification.as_str(),
            ];
            one_time::retire_in(&tx, user.id, &mailed, ctx.now).await?;
        }
        audit::record(
            &tx,
            Event {
                app: Some(app.id),
                user: Some(user.id),
                actor: Actor::User,
                event: "user.contact_changed",
                details: json!({ "email": email_changes, "phone": phone_changes }),
                ctx: &ctx,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(updated.view()))
}

/// Delete the signed-in user's account; every token of it is revoked.
#[utoipa::path(delete, path = "/v1/apps/{app}/me", tag = "me", params(("app" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 401, body = Problem)))]
async fn me_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let (_, _, user) = signed_in(&state, &headers, &app, &ctx).await?;
    delete_user(&state, &user, Actor::User, &ctx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Revokes every token of `user`, then deletes it (sessions cascade).
pub(super) async fn delete_user(
    state: &AppState,
    user: &User,
    actor: Actor,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let before = sessions::revoke_user_in(&tx, user.id, ctx.now).await?;
    tx.exec("DELETE FROM users WHERE id = $1", &[&user.id])
        .await?;
    let deleted = Event {
        app: Some(user.app_id),
        user: Some(user.id),
        actor,
        event: "user.deleted",
        details: serde_json::Value::Null,
        ctx,
    };
    audit::record(&tx, deleted).await?;
    tx.commit().await?;
    drop(client);
    sessions::publish_users(state, &[user.id], before).await;
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct PasswordChange {
    current_password: String,
    new_password: String,
    #[serde(default)]
    kill_sessions: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PasswordChanged {
    changed_password: bool,
    /// Sessions revoked (every other session of the user with `kill_sessions`).
    killed_sessions: usize,
}

/// Change the password; with `kill_sessions`, every other session is revoked.
#[utoipa::path(post, path = "/v1/apps/{app}/password/change", tag = "me", params(("app" = String, Path)),
    request_body = PasswordChange,
    responses((status = 200, body = PasswordChanged),
              (status = 401, description = "invalid_credentials", body = Problem),
              (status = 422, description = "weak_password", body = Problem)))]
async fn password_change(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<PasswordChange>,
) -> ApiResult<Json<PasswordChanged>> {
    let (app, principal, user) = signed_in(&state, &headers, &app, &ctx).await?;
    passwords::check_shape(&body.current_password).map_err(|_| ApiError::invalid_credentials())?;
    passwords::check_new(
        &body.new_password,
        &app.settings.password_policy,
        &[
            user.email.as_deref().unwrap_or(""),
            user.username.as_deref().unwrap_or(""),
        ],
    )?;
    // A stolen access token must not buy unlimited guesses at the current password.
    let (app_id, account) = (app.id.to_string(), format!("password-change:{}", user.id));
    let failures = Scope::AccountFailures {
        app: &app_id,
        account: &account,
    };
    state
        .limiter
        .hit(
            failures,
            app.settings.rate_limits.per_account_failures_per_hour,
        )
        .await?;
    let hash = (!user.guest).then_some(user.password_hash.as_str());
    if !state.hasher.verify(hash, &body.current_password).await? {
        return Err(ApiError::invalid_credentials());
    }
    state.limiter.forgive(failures).await;
    let new_hash = state.hasher.hash(&body.new_password).await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    crate::domain::users::set_password_in(&tx, user.id, &new_hash, ctx.now).await?;
    audit::record(
        &tx,
        Event {
            app: Some(app.id),
            user: Some(user.id),
            actor: Actor::User,
            event: "password.changed",
            details: json!({ "kill_sessions": body.kill_sessions }),
            ctx: &ctx,
        },
    )
    .await?;
    let killed = if body.kill_sessions {
        sessions::revoke_in(
            &tx,
            &Which::AllOfUser {
                user: user.id,
                except: Some(principal.sid),
            },
            ctx.now,
        )
        .await?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    drop(client);
    sessions::publish_sessions(&state, &killed).await;
    Ok(Json(PasswordChanged {
        changed_password: true,
        killed_sessions: killed.len(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionList {
    sessions: Vec<SessionView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionsRevoked {
    revoked_sessions: usize,
}

/// The signed-in user's live sessions.
#[utoipa::path(get, path = "/v1/apps/{app}/sessions", tag = "me", params(("app" = String, Path)),
    responses((status = 200, body = SessionList), (status = 401, body = Problem)))]
async fn sessions_list(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<SessionList>> {
    let (_, principal, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let client = state.pool.get().await?;
    let sessions = sessions::list(&client, user.id, principal.sid, ctx.now).await?;
    Ok(Json(SessionList { sessions }))
}

/// Revoke every session of the signed-in user, this one included.
#[utoipa::path(delete, path = "/v1/apps/{app}/sessions", tag = "me", params(("app" = String, Path)),
    responses((status = 200, body = SessionsRevoked), (status = 401, body = Problem)))]
async fn sessions_delete_all(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<SessionsRevoked>> {
    let (app, _, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let revoked = sessions::revoke(
        &state,
        app.id,
        &Which::AllOfUser {
            user: user.id,
            except: None,
        },
        "signed_out_everywhere",
        &ctx,
    )
    .await?;
    Ok(Json(SessionsRevoked {
        revoked_sessions: revoked.len(),
    }))
}

/// Revoke one of the signed-in user's sessions.
#[utoipa::path(delete, path = "/v1/apps/{app}/sessions/{sid}", tag = "me",
    params(("app" = String, Path), ("sid" = String, Path)),
    responses((status = 200, body = SessionsRevoked), (status = 404, body = Problem)))]
async fn session_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((app, sid)): Path<(String, String)>,
) -> ApiResult<Json<SessionsRevoked>> {
    let (app, _, user) = signed_in(&state, &headers, &app, &ctx).await?;
    let session = sid
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("session"))?;
    let revoked = sessions::revoke(
        &state,
        app.id,
        &Which::One {
            user: user.id,
            session,
        },
        "session_deleted",
        &ctx,
    )
    .await?;
    if revoked.is_empty() {
        return Err(ApiError::not_found("session"));
    }
    Ok(Json(SessionsRevoked {
        revoked_sessions: revoked.len(),
    }))
}
