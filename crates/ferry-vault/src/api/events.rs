//! `/api/v1/vaults/{vault}/events`: the timeline (JOB-4).

use axum::extract::{Path, State};
use axum::Json;
use ferry_types::auth::Role;
use ferry_types::event::{Event, Severity};
use ferry_types::Page;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{ApiQuery, PageParams};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub severity: Option<String>,
    pub fabric: Option<Uuid>,
    pub kind: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/events", tag = "events", params(("vault" = String, Path), EventQuery), responses((status = 200, body = Page<Event>)))]
pub async fn list_events(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Json<Page<Event>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let severity = q
        .severity
        .as_deref()
        .map(|s| {
            Severity::parse(s).ok_or_else(|| ApiFailure::bad_request("InvalidQuery", format!("Unknown severity '{s}'")))
        })
        .transpose()?;
    let page = PageParams { limit: q.limit, cursor: q.cursor };
    let (items, next) = st
        .store
        .list_events(v.id, severity, q.fabric, q.kind.as_deref(), page.numeric_cursor()?, page.limit()?)
        .await?;
    Ok(Json(Page { items, next: next.map(|n| n.to_string()) }))
}
