//! `GET /v1/apps/{app}/audit`: the application's security events, newest first (API.md §3
//! "Application administration"), for its API key or its owner.

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::AppAdmin;
use crate::domain::audit::{self, EventView, Filter};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct AuditQuery {
    user_id: Option<String>,
    /// Exact event name, like `login.failed`.
    event: Option<String>,
    /// RFC 3339: events at or after.
    since: Option<String>,
    /// RFC 3339: events before.
    until: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1..=200, default 50.
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditPage {
    events: Vec<EventView>,
    /// Present when older events follow.
    next_cursor: Option<String>,
}

fn uuid(value: Option<&str>, what: &str) -> Result<Option<Uuid>, ApiError> {
    value
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("{what} is not valid")))
        })
        .transpose()
}

fn time(value: Option<&str>, what: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|_| ApiError::bad_request(format!("{what} must be an RFC 3339 time")))
        })
        .transpose()
}

/// Security events of the application, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/apps/{app}/audit", operation_id = "listAuditEvents", tag = "admin", params(("app" = String, Path), AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem), (status = 401, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    AppAdmin(app): AppAdmin,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1..=200"));
    }
    let filter = Filter {
        user: uuid(q.user_id.as_deref(), "user_id")?,
        event: q.event,
        since: time(q.since.as_deref(), "since")?,
        until: time(q.until.as_deref(), "until")?,
        before: uuid(q.cursor.as_deref(), "cursor")?,
        limit,
    };
    let client = state.pool.get().await?;
    let (events, more) = audit::page(&client, app.id, &filter).await?;
    let next_cursor = more
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(AuditPage {
        events,
        next_cursor,
    }))
}
