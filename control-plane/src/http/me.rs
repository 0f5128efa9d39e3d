//! Routes a signed-in user calls about themselves (API.md §3): profile, password change and
//! sessions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{JsonBody, SignedIn};
use crate::domain::Ctx;
use crate::domain::audit::Actor;
use crate::domain::identities::{self, IdentityView};
use crate::domain::sessions::{self, SessionView, Which};
use crate::domain::users::{Changes, UserView};
use crate::flows::account;
use crate::flows::mfa::Proof;
use crate::flows::signin::session;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me_get, me_patch, me_delete))
        .routes(routes!(password_change))
        .routes(routes!(sessions_list, sessions_delete_all))
        .routes(routes!(session_delete))
}

/// `GET /me`: the profile and the linked provider identities.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MeView {
    #[serde(flatten)]
    user: UserView,
    identities: Vec<IdentityView>,
}

/// The signed-in user's profile, with the providers linked to it.
#[utoipa::path(get, path = "/v1/apps/{app}/me", operation_id = "getMe", tag = "me", params(("app" = String, Path)),
    responses((status = 200, body = MeView), (status = 401, body = Problem)))]
async fn me_get(State(state): State<AppState>, me: SignedIn) -> ApiResult<Json<MeView>> {
    let client = state.pool.get().await?;
    let identities = identities::of_user(&client, me.user.id).await?;
    Ok(Json(MeView {
        user: me.user.view(),
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
#[utoipa::path(patch, path = "/v1/apps/{app}/me", operation_id = "updateMe", tag = "me", params(("app" = String, Path)),
    request_body = ProfilePatch,
    responses((status = 200, body = UserView),
              (status = 401, description = "invalid_credentials or invalid_code", body = Problem),
              (status = 409, description = "user_exists", body = Problem)))]
async fn me_patch(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    JsonBody(body): JsonBody<ProfilePatch>,
) -> ApiResult<Json<UserView>> {
    let changes = Changes::profile(
        body.email.as_deref(),
        body.username.as_deref(),
        body.phone.as_deref(),
    )?;
    let proof = Proof {
        current_password: body.current_password,
        code: body.code,
        ..Proof::default()
    };
    let (app, user, sid) = (&me.app, &me.user, me.principal.sid);
    let updated =
        account::change_profile(state.mfa(), app, user, sid, &changes, &proof, &ctx).await?;
    Ok(Json(updated.view()))
}

/// Delete the signed-in user's account; every token of it is revoked.
#[utoipa::path(delete, path = "/v1/apps/{app}/me", operation_id = "deleteMe", tag = "me", params(("app" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 401, body = Problem)))]
async fn me_delete(State(state): State<AppState>, ctx: Ctx, me: SignedIn) -> ApiResult<Response> {
    account::delete_user(&state.pool, &state.publisher, &me.user, Actor::User, &ctx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
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
#[utoipa::path(post, path = "/v1/apps/{app}/password/change", operation_id = "changePassword", tag = "me", params(("app" = String, Path)),
    request_body = PasswordChange,
    responses((status = 200, body = PasswordChanged),
              (status = 401, description = "invalid_credentials", body = Problem),
              (status = 422, description = "weak_password", body = Problem)))]
async fn password_change(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    JsonBody(body): JsonBody<PasswordChange>,
) -> ApiResult<Json<PasswordChanged>> {
    let killed = account::change_password(
        state.mfa(),
        &state.publisher,
        &me.app,
        &me.user,
        me.principal.sid,
        &body.current_password,
        &body.new_password,
        body.kill_sessions,
        &ctx,
    )
    .await?;
    Ok(Json(PasswordChanged {
        changed_password: true,
        killed_sessions: killed,
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
#[utoipa::path(get, path = "/v1/apps/{app}/sessions", operation_id = "listSessions", tag = "me", params(("app" = String, Path)),
    responses((status = 200, body = SessionList), (status = 401, body = Problem)))]
async fn sessions_list(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
) -> ApiResult<Json<SessionList>> {
    let client = state.pool.get().await?;
    let sessions = sessions::list(&client, me.user.id, me.principal.sid, ctx.now).await?;
    Ok(Json(SessionList { sessions }))
}

/// Revoke every session of the signed-in user, this one included.
#[utoipa::path(delete, path = "/v1/apps/{app}/sessions", operation_id = "deleteAllSessions", tag = "me", params(("app" = String, Path)),
    responses((status = 200, body = SessionsRevoked), (status = 401, body = Problem)))]
async fn sessions_delete_all(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
) -> ApiResult<Json<SessionsRevoked>> {
    let everywhere = Which::AllOfUser {
        user: me.user.id,
        except: None,
    };
    let revoked = session::revoke(
        state.signin(),
        me.app.id,
        &everywhere,
        "signed_out_everywhere",
        &ctx,
    )
    .await?;
    Ok(Json(SessionsRevoked {
        revoked_sessions: revoked.len(),
    }))
}

/// Revoke one of the signed-in user's sessions.
#[utoipa::path(delete, path = "/v1/apps/{app}/sessions/{sid}", operation_id = "deleteSession", tag = "me",
    params(("app" = String, Path), ("sid" = String, Path)),
    responses((status = 200, body = SessionsRevoked), (status = 404, body = Problem)))]
async fn session_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    me: SignedIn,
    Path((_, sid)): Path<(String, String)>,
) -> ApiResult<Json<SessionsRevoked>> {
    let session = sid
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("session"))?;
    let one = Which::One {
        user: me.user.id,
        session,
    };
    let revoked = session::revoke(state.signin(), me.app.id, &one, "session_deleted", &ctx).await?;
    if revoked.is_empty() {
        return Err(ApiError::not_found("session"));
    }
    Ok(Json(SessionsRevoked {
        revoked_sessions: revoked.len(),
    }))
}
