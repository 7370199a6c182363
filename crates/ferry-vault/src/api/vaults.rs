//! `/api/v1/vaults`: vaults (FAB-1), protection goal (FAB-6), registration keys (FAB-2).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use ferry_pki::RegistrationKey;
use ferry_store::DocKind;
use ferry_types::auth::Role;
use ferry_types::event::Severity;
use ferry_types::fabric::Fabric;
use ferry_types::vault::{CreateVault, ProtectionGoal, Vault};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{new_secret, Auth};
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{parse_id, ApiJson};
use crate::state::AppState;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
}

#[utoipa::path(get, path = "/api/v1/vaults", tag = "vaults", responses((status = 200, body = [Vault])))]
pub async fn list_vaults(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<Vault>>> {
    auth.require(Role::Reader)?;
    let mut out = Vec::new();
    for (body, _) in st.store.list_vaults().await? {
        out.push(serde_json::from_value(body).map_err(|e| ApiFailure::internal(e.to_string()))?);
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/vaults", tag = "vaults", request_body = CreateVault, responses((status = 201, body = Vault), (status = 400, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn create_vault(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateVault>,
) -> ApiResult<(StatusCode, Json<Vault>)> {
    auth.require(Role::Contributor)?;
    if !valid_name(&req.name) {
        return Err(ApiFailure::bad_request(
            "InvalidName",
            "A vault name is 1 to 64 letters, digits, spaces, '-', '_' or '.'",
        ));
    }
    if req.description.len() > 1024 || req.region.len() > 64 {
        return Err(ApiFailure::bad_request(
            "InvalidValue",
            "Description is at most 1024 characters and region at most 64",
        ));
    }
    let vault = Vault {
        id: Uuid::new_v4(),
        name: req.name,
        description: req.description,
        region: req.region,
        created_at: st.clock.now(),
        protection_goal: None,
    };
    let body = serde_json::to_value(&vault).map_err(|e| ApiFailure::internal(e.to_string()))?;
    st.store.insert_vault(vault.id, &vault.name, &body, &new_secret(""), vault.created_at.timestamp_millis()).await?;
    st.event(vault.id, Severity::Info, "VaultCreated", &format!("Vault {} created", vault.name), None, None).await;
    Ok((StatusCode::CREATED, Json(vault)))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}", tag = "vaults", params(("vault" = String, Path, description = "Vault id or name")), responses((status = 200, body = Vault), (status = 404, body = ferry_types::ApiError)))]
pub async fn get_vault(State(st): State<AppState>, auth: Auth, Path(vault): Path<String>) -> ApiResult<Json<Vault>> {
    auth.require(Role::Reader)?;
    Ok(Json(st.vault(&vault).await?.0))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}", tag = "vaults", params(("vault" = String, Path)), responses((status = 204), (status = 409, body = ferry_types::ApiError)))]
pub async fn delete_vault(State(st): State<AppState>, auth: Auth, Path(vault): Path<String>) -> ApiResult<StatusCode> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let fabrics = st.store.list_docs::<serde_json::Value>(DocKind::Fabric, v.id, None, None, 1).await?;
    if !fabrics.is_empty() {
        return Err(ApiFailure::conflict(
            "VaultNotEmpty",
            format!("Vault {} still has registered sites; unregister them first", v.name),
        ));
    }
    st.store.delete_vault(v.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/vaults/{vault}/protectionGoal", tag = "vaults", request_body = ProtectionGoal, params(("vault" = String, Path)), responses((status = 200, body = Vault), (status = 400, body = ferry_types::ApiError)))]
pub async fn set_protection_goal(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(goal): ApiJson<ProtectionGoal>,
) -> ApiResult<Json<Vault>> {
    auth.require(Role::Contributor)?;
    let (mut v, _) = st.vault(&vault).await?;
    ferry_core::fabric_rules::validate_protection_goal(&goal)?;
    v.protection_goal = Some(goal);
    let body = serde_json::to_value(&v).map_err(|e| ApiFailure::internal(e.to_string()))?;
    st.store.update_vault_body(v.id, &body).await?;
    Ok(Json(v))
}

/// A registration key as listed (the secret is only in the issued file).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegistrationKeyInfo {
    pub id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub used_by_fabric: Option<Uuid>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// FAB-8: the site this key adds another site manager instance to (absent: the key
    /// registers a new site only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_site: Option<Uuid>,
}

/// What a registration key is for.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueKey {
    /// An existing site (name or id): the key adds another instance of its site manager
    /// (FAB-8). Without it, the key registers a new site and cannot join an existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// A freshly issued registration key: `file` is the key file to give to the site manager.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedKey {
    pub info: RegistrationKeyInfo,
    pub file: String,
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/registrationKeys", tag = "registration", params(("vault" = String, Path)), request_body = Option<IssueKey>, responses((status = 201, body = IssuedKey), (status = 404, body = ferry_types::ApiError)))]
pub async fn issue_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(req): ApiJson<Option<IssueKey>>,
) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    auth.require(Role::Contributor)?;
    let (v, secret) = st.vault(&vault).await?;
    let for_site = match req.and_then(|r| r.site) {
        Some(site) => Some(load_fabric(&st, v.id, &site).await?.body.id),
        None => None,
    };
    let now = st.clock.now();
    let (key, file) = RegistrationKey::issue(
        v.id,
        &v.name,
        std::slice::from_ref(&st.public_url),
        st.ca.fingerprint(),
        secret.as_bytes(),
        now,
    )
    .map_err(|e| ApiFailure::internal(e.to_string()))?;
    st.store.insert_key(key.key_id(), v.id, &key.secret_hash(), now.timestamp_millis(), for_site).await?;
    st.event(
        v.id,
        Severity::Info,
        "RegistrationKeyIssued",
        &format!("Registration key {} issued", key.key_id()),
        None,
        None,
    )
    .await;
    let info = RegistrationKeyInfo {
        id: key.key_id(),
        issued_at: key.issued_at(),
        expires_at: key.expires_at(ferry_pki::regkey::default_validity()),
        used_at: None,
        used_by_fabric: None,
        revoked_at: None,
        for_site,
    };
    Ok((StatusCode::CREATED, Json(IssuedKey { info, file })))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/registrationKeys", tag = "registration", params(("vault" = String, Path)), responses((status = 200, body = [RegistrationKeyInfo])))]
pub async fn list_keys(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<RegistrationKeyInfo>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let validity = ferry_pki::regkey::default_validity();
    let rows = st.store.list_keys(v.id).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| RegistrationKeyInfo {
                id: r.id,
                issued_at: ferry_store::from_ms(r.issued_ms),
                expires_at: ferry_store::from_ms(r.issued_ms) + validity,
                used_at: r.used_ms.map(ferry_store::from_ms),
                used_by_fabric: r.used_by_fabric,
                revoked_at: r.revoked_ms.map(ferry_store::from_ms),
                for_site: r.for_fabric,
            })
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}/registrationKeys/{key}", tag = "registration", params(("vault" = String, Path), ("key" = String, Path)), responses((status = 204), (status = 404, body = ferry_types::ApiError)))]
pub async fn revoke_key(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let id = parse_id("Registration key", &key)?;
    if !st.store.revoke_key(v.id, id, st.clock.now().timestamp_millis()).await? {
        return Err(ApiFailure::not_found("Registration key", &key));
    }
    st.event(v.id, Severity::Info, "RegistrationKeyRevoked", &format!("Registration key {id} revoked"), None, None)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Load a fabric of a vault by id or friendly name.
pub async fn load_fabric(st: &AppState, vault: Uuid, raw: &str) -> ApiResult<ferry_store::Doc<Fabric>> {
    if let Ok(id) = Uuid::parse_str(raw) {
        if let Some(d) = st.store.get_doc::<Fabric>(DocKind::Fabric, vault, &id.to_string()).await? {
            return Ok(d);
        }
    }
    let all = st.store.all_docs::<Fabric>(DocKind::Fabric, vault).await?;
    all.into_iter().find(|d| d.body.name == raw).ok_or_else(|| ApiFailure::not_found("Site", raw))
}
