//! `/api/v1/vaults/{vault}/replicationPolicies` (POL-1..POL-9).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ferry_core::policy::{validate_policy, PolicyContext};
use ferry_store::DocKind;
use ferry_types::auth::Role;
use ferry_types::event::Severity;
use ferry_types::fabric::Fabric;
use ferry_types::mapping::ContainerMapping;
use ferry_types::policy::{CreatePolicy, Policy, PolicySpec};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::mappings::{create_pair, PairCreated};
use crate::auth::Auth;
use crate::error::{ApiFailure, ApiResult};
use crate::extract::ApiJson;
use crate::jobs::{NewJob, OP_UPDATE_POLICY};
use crate::state::AppState;

/// The validation context of a vault: where replication hosts keep data (offline paths must
/// stay out of them) and whether Kerberos is available (it is not in this release).
pub async fn policy_context(st: &AppState, vault: Uuid) -> ApiResult<PolicyContext> {
    let fabrics = st.store.all_docs::<Fabric>(DocKind::Fabric, vault).await?;
    let replication_host_paths = fabrics
        .iter()
        .flat_map(|f| f.body.inventory.hosts.iter())
        .flat_map(|h| h.storage_locations.iter())
        .map(|l| l.path.clone())
        .collect();
    Ok(PolicyContext { kerberos_realm_configured: false, replication_host_paths })
}

/// Policies with their associated clouds filled in from the cloud pairs (POL-9).
async fn with_associations(st: &AppState, vault: Uuid, mut p: Policy) -> ApiResult<Policy> {
    let pairs = st.store.all_docs::<ContainerMapping>(DocKind::ContainerMapping, vault).await?;
    p.associated_clouds = pairs.iter().filter(|m| m.body.policy == p.id).map(|m| m.body.source.id.clone()).collect();
    Ok(p)
}

async fn load(st: &AppState, vault: Uuid, raw: &str) -> ApiResult<ferry_store::Doc<Policy>> {
    if let Ok(id) = Uuid::parse_str(raw) {
        if let Some(d) = st.store.get_doc::<Policy>(DocKind::Policy, vault, &id.to_string()).await? {
            return Ok(d);
        }
    }
    let all = st.store.all_docs::<Policy>(DocKind::Policy, vault).await?;
    all.into_iter().find(|d| d.body.spec.name == raw).ok_or_else(|| ApiFailure::not_found("Policy", raw))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationPolicies", tag = "policies", params(("vault" = String, Path)), responses((status = 200, body = [Policy])))]
pub async fn list_policies(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<Policy>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let mut out = Vec::new();
    for d in st.store.all_docs::<Policy>(DocKind::Policy, v.id).await? {
        let mut p = d.body;
        p.version = d.version;
        out.push(with_associations(&st, v.id, p).await?);
    }
    Ok(Json(out))
}

/// A created policy and the cloud pairs created with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyCreated {
    pub policy: Policy,
    pub pairs: Vec<PairCreated>,
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationPolicies", tag = "policies", request_body = CreatePolicy, params(("vault" = String, Path)), responses((status = 201, body = PolicyCreated), (status = 400, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn create_policy(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(req): ApiJson<CreatePolicy>,
) -> ApiResult<(StatusCode, Json<PolicyCreated>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let ctx = policy_context(&st, v.id).await?;
    validate_policy(&req.spec, &ctx, st.clock.now())?;
    // Validate every association before writing anything.
    let policy = Policy {
        id: Uuid::new_v4(),
        spec: req.spec,
        associated_clouds: vec![],
        version: 1,
        created_at: st.clock.now(),
    };
    for pair in &req.associate {
        super::mappings::validate_pair(&st, &v, &pair.source, &pair.target, &policy.spec).await?;
    }
    st.store
        .put_doc(DocKind::Policy, v.id, &policy.id.to_string(), None, Some(&policy.spec.name), &policy, None)
        .await
        .map_err(|e| name_conflict(e, &policy.spec.name))?;
    let mut pairs = Vec::new();
    for pair in &req.associate {
        pairs.push(create_pair(&st, &v, &pair.source, &pair.target, policy.id).await?);
    }
    st.event(
        v.id,
        Severity::Info,
        "PolicyCreated",
        &format!("Replication policy {} created", policy.spec.name),
        None,
        Some(&policy.id.to_string()),
    )
    .await;
    let policy = with_associations(&st, v.id, policy).await?;
    Ok((StatusCode::CREATED, Json(PolicyCreated { policy, pairs })))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationPolicies/{policy}", tag = "policies", params(("vault" = String, Path), ("policy" = String, Path)), responses((status = 200, body = Policy), (status = 404, body = ferry_types::ApiError)))]
pub async fn get_policy(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, policy)): Path<(String, String)>,
) -> ApiResult<Json<Policy>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let d = load(&st, v.id, &policy).await?;
    let mut p = d.body;
    p.version = d.version;
    Ok(Json(with_associations(&st, v.id, p).await?))
}

/// The result of a policy update: the policy and the job that applies it to every site.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyUpdated {
    pub policy: Policy,
    pub job: Option<ferry_types::job::Job>,
}

#[utoipa::path(put, path = "/api/v1/vaults/{vault}/replicationPolicies/{policy}", tag = "policies", request_body = PolicySpec, params(("vault" = String, Path), ("policy" = String, Path), ("If-Match" = Option<String>, Header, description = "Version the change is based on")), responses((status = 202, body = PolicyUpdated), (status = 400, body = ferry_types::ApiError), (status = 412, body = ferry_types::ApiError)))]
pub async fn update_policy(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, policy)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<PolicySpec>,
) -> ApiResult<(StatusCode, Json<PolicyUpdated>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let d = load(&st, v.id, &policy).await?;
    let expected = match headers.get("if-match") {
        Some(h) => h
            .to_str()
            .ok()
            .map(|s| s.trim_matches('"'))
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| ApiFailure::bad_request("InvalidHeader", "If-Match must be the policy version number"))?,
        None => d.version,
    };
    let ctx = policy_context(&st, v.id).await?;
    validate_policy(&spec, &ctx, st.clock.now())?;
    // POL-1: every host already paired under this policy must report the (new) host version.
    let pairs = st.store.all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id).await?;
    for m in pairs.iter().filter(|m| m.body.policy == d.body.id) {
        super::mappings::check_pair_hosts(&st, &v, &m.body.source, &m.body.target, &spec).await?;
    }
    let mut p = d.body;
    p.spec = spec;
    let version = st
        .store
        .put_doc(DocKind::Policy, v.id, &p.id.to_string(), None, Some(&p.spec.name), &p, Some(expected))
        .await
        .map_err(|e| name_conflict(e, &p.spec.name))?;
    p.version = version;
    let job = if pairs.iter().any(|m| m.body.policy == p.id) {
        Some(
            st.jobs
                .submit(
                    &st,
                    NewJob {
                        vault: v.id,
                        operation: OP_UPDATE_POLICY,
                        object_type: "Policy",
                        object_id: p.id.to_string(),
                        object_name: p.spec.name.clone(),
                        fabric: None,
                        params: crate::jobs::JobInput::of(&crate::jobs::PolicyParams { policy: p.id, version }),
                        tasks: vec![],
                    },
                )
                .await?,
        )
    } else {
        None
    };
    st.event(
        v.id,
        Severity::Info,
        "PolicyUpdated",
        &format!("Replication policy {} updated to version {version}", p.spec.name),
        None,
        Some(&p.id.to_string()),
    )
    .await;
    let policy = with_associations(&st, v.id, p).await?;
    Ok((StatusCode::ACCEPTED, Json(PolicyUpdated { policy, job })))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}/replicationPolicies/{policy}", tag = "policies", params(("vault" = String, Path), ("policy" = String, Path)), responses((status = 204), (status = 409, body = ferry_types::ApiError)))]
pub async fn delete_policy(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, policy)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let d = load(&st, v.id, &policy).await?;
    let pairs = st.store.all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id).await?;
    if pairs.iter().any(|m| m.body.policy == d.body.id) {
        return Err(ApiFailure::conflict(
            "PolicyInUse",
            format!("Policy {} is associated with cloud pairs; remove them first", d.body.spec.name),
        ));
    }
    st.store.delete_doc(DocKind::Policy, v.id, &d.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A policy name taken by another policy, said with the name (not the store's ids).
fn name_conflict(e: ferry_store::Error, name: &str) -> ApiFailure {
    match e.kind {
        ferry_store::ErrorKind::Conflict => {
            ApiFailure::conflict("NameConflict", format!("A replication policy named '{name}' exists already"))
        }
        _ => e.into(),
    }
}
