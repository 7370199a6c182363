//! `/api/v1/vaults/{vault}/dashboard`: the vault overview (JOB-4), computed in the vault.

use axum::extract::{Path, State};
use axum::Json;
use ferry_types::auth::Role;

use crate::auth::Auth;
use crate::dashboard::Dashboard;
use crate::error::ApiResult;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/dashboard", tag = "dashboard", params(("vault" = String, Path)), responses((status = 200, body = Dashboard), (status = 404, body = ferry_types::ApiError)))]
pub async fn get_dashboard(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Dashboard>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    Ok(Json(crate::dashboard::load(&st, &v).await?))
}
