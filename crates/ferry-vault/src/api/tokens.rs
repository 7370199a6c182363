//! `/api/v1/tokens`: API tokens with roles (SEC-2).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_types::auth::{CreateToken, CreatedToken, Role, TokenInfo};
use uuid::Uuid;

use crate::auth::{hash_secret, new_secret, Auth};
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{parse_id, ApiJson};
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = [TokenInfo])))]
pub async fn list_tokens(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<TokenInfo>>> {
    auth.require(Role::Contributor)?;
    let rows = st.store.list_tokens().await?;
    Ok(Json(
        rows.into_iter()
            .filter_map(|r| {
                Role::parse(&r.role).map(|role| TokenInfo {
                    id: r.id,
                    name: r.name,
                    role,
                    created_at: ferry_store::from_ms(r.created_ms),
                    expires_at: r.expires_ms.map(ferry_store::from_ms),
                })
            })
            .collect(),
    ))
}

/// Create a token (used by the vault at first start for the admin token, too), valid until
/// `expires_at` if given.
pub async fn make_token(
    st: &ferry_store::Store,
    name: &str,
    role: Role,
    now: chrono::DateTime<chrono::Utc>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<CreatedToken, ferry_store::Error> {
    let secret = new_secret("fy_");
    let info = TokenInfo { id: Uuid::new_v4(), name: name.to_string(), role, created_at: now, expires_at };
    st.insert_token(
        &ferry_store::TokenRow {
            id: info.id,
            name: info.name.clone(),
            role: role.as_str().to_string(),
            fabric: None,
            created_ms: now.timestamp_millis(),
            expires_ms: expires_at.map(|t| t.timestamp_millis()),
        },
        &hash_secret(&secret),
    )
    .await?;
    Ok(CreatedToken { info, secret })
}

/// The longest life a token can be given (ten years).
const MAX_TOKEN_DAYS: u32 = 3650;

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken, responses((status = 201, body = CreatedToken), (status = 400, body = ferry_types::ApiError)))]
pub async fn create_token(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    auth.require(Role::Contributor)?;
    if req.name.trim().is_empty() || req.name.len() > 64 {
        return Err(ApiFailure::bad_request("InvalidName", "A token name is 1 to 64 characters"));
    }
    if req.expires_in_days.is_some_and(|d| !(1..=MAX_TOKEN_DAYS).contains(&d)) {
        return Err(ApiFailure::bad_request(
            "InvalidExpiry",
            format!("A token expires in 1 to {MAX_TOKEN_DAYS} days, or not at all"),
        ));
    }
    let now = st.clock.now();
    let expires_at = req.expires_in_days.map(|d| now + chrono::Duration::days(i64::from(d)));
    let t = make_token(&st.store, &req.name, req.role, now, expires_at).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)), responses((status = 204), (status = 404, body = ferry_types::ApiError)))]
pub async fn revoke_token(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.require(Role::Contributor)?;
    let uid = parse_id("Token", &id)?;
    if !st.store.revoke_token(uid, st.clock.now().timestamp_millis()).await? {
        return Err(ApiFailure::not_found("Token", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}
