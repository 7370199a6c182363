//! `/api/v1/vaults/{vault}/replicationFabrics`: registered sites and their inventory (FAB-3,
//! FAB-4, FAB-7).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_store::DocKind;
use ferry_types::auth::Role;
use ferry_types::event::Severity;
use ferry_types::fabric::{
    Cloud, CloudSyncUpdate, Fabric, Host, HostGroup, LogicalNetwork, StorageClassification, Vm, VmNetwork,
};
use ferry_types::mapping::ContainerMapping;
use ferry_types::Page;
use serde::{Deserialize, Serialize};

use super::vaults::load_fabric;
use crate::auth::Auth;
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{ApiJson, ApiQuery, PageParams};
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics", tag = "fabrics", params(("vault" = String, Path)), responses((status = 200, body = [Fabric])))]
pub async fn list_fabrics(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<Fabric>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let docs = st.store.all_docs::<Fabric>(DocKind::Fabric, v.id).await?;
    Ok(Json(docs.into_iter().map(|d| d.body).collect()))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path, description = "Site id or friendly name")), responses((status = 200, body = Fabric), (status = 404, body = ferry_types::ApiError)))]
pub async fn get_fabric(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
) -> ApiResult<Json<Fabric>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    Ok(Json(load_fabric(&st, v.id, &fabric).await?.body))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path)), responses((status = 204), (status = 409, body = ferry_types::ApiError)))]
pub async fn delete_fabric(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let f = load_fabric(&st, v.id, &fabric).await?.body;
    let pairs = st.store.all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id).await?;
    if pairs.iter().any(|m| m.body.source.fabric == f.id || m.body.target.fabric == f.id) {
        return Err(ApiFailure::conflict(
            "SiteInUse",
            format!("Site {} has clouds in a cloud pair; remove the pairs first", f.name),
        ));
    }
    st.store.delete_doc(DocKind::Fabric, v.id, &f.id.to_string()).await?;
    st.peers.remove_fabric(v.id, f.id);
    // Its hosts' certificates are refused by every other host from the next heartbeat (SEC-1).
    crate::certificates::revoke_site(&st.store, v.id, f.id, st.clock.now()).await?;
    st.event(v.id, Severity::Info, "SiteUnregistered", &format!("Site {} unregistered", f.name), Some(f.id), None)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Host `host` (id or name) of site `f`'s inventory.
fn site_host<'a>(f: &'a Fabric, host: &str) -> ApiResult<&'a ferry_types::fabric::Host> {
    f.inventory.hosts.iter().find(|h| h.id == host || h.name == host).ok_or_else(|| ApiFailure::not_found("Host", host))
}

/// A host certificate revoked on request (`renewCertificate`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CertificateRenewal {
    pub host: String,
    /// SHA-256 of the revoked certificate (hex); every host refuses it from its next report.
    pub revoked_sha256: String,
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/hosts/{host}/renewCertificate", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path), ("host" = String, Path, description = "Host id or name")), responses((status = 202, body = CertificateRenewal), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
/// SEC-3: rotate a host's certificate now (a key that may have leaked, or the operator's own
/// rotation schedule): the current certificate is revoked at once — every host refuses it from
/// its next report — and the host's agent, told with its site's next heartbeat, renews it with a
/// new key through its site.
pub async fn renew_certificate(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric, host)): Path<(String, String, String)>,
) -> ApiResult<(StatusCode, Json<CertificateRenewal>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let f = load_fabric(&st, v.id, &fabric).await?.body;
    let h = site_host(&f, &host)?;
    let cn = crate::jobs::host_cn(f.id, &h.id);
    let Some(revoked) = crate::certificates::revoke_host(&st.store, v.id, f.id, &cn, st.clock.now()).await? else {
        return Err(ApiFailure::conflict(
            "NoHostCertificate",
            format!("The vault has issued no certificate to host {} that it could revoke", h.name),
        ));
    };
    st.event(
        v.id,
        Severity::Warning,
        "HostCertificateRevoked",
        &format!("The certificate of host {} was revoked on request; the agent renews it with its next report", h.name),
        Some(f.id),
        Some(&h.id),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(CertificateRenewal { host: h.name.clone(), revoked_sha256: revoked })))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CloudQuery {
    /// Only clouds whose metadata is synced (the ones that can be paired, FAB-7).
    pub synced: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/protectionContainers", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path), CloudQuery), responses((status = 200, body = [Cloud])))]
pub async fn list_clouds(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<CloudQuery>,
) -> ApiResult<Json<Vec<Cloud>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let f = load_fabric(&st, v.id, &fabric).await?.body;
    let clouds = f.inventory.clouds.into_iter().filter(|c| q.synced.is_none_or(|s| c.sync_enabled == s)).collect();
    Ok(Json(clouds))
}

#[utoipa::path(patch, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/protectionContainers/{cloud}", tag = "fabrics", request_body = CloudSyncUpdate, params(("vault" = String, Path), ("fabric" = String, Path), ("cloud" = String, Path, description = "Cloud id or name")), responses((status = 200, body = Cloud), (status = 404, body = ferry_types::ApiError)))]
pub async fn set_cloud_sync(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric, cloud)): Path<(String, String, String)>,
    ApiJson(req): ApiJson<CloudSyncUpdate>,
) -> ApiResult<Json<Cloud>> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let doc = load_fabric(&st, v.id, &fabric).await?;
    let mut f = doc.body;
    let c = f
        .inventory
        .clouds
        .iter_mut()
        .find(|c| c.id == cloud || c.name == cloud)
        .ok_or_else(|| ApiFailure::not_found("Cloud", &cloud))?;
    if !req.sync_enabled {
        let pairs = st.store.all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id).await?;
        let cid = c.id.clone();
        if pairs.iter().any(|m| {
            (m.body.source.fabric == f.id && m.body.source.id == cid)
                || (m.body.target.fabric == f.id && m.body.target.id == cid)
        }) {
            return Err(ApiFailure::conflict(
                "CloudInUse",
                format!("Cloud {} is paired; its metadata sync cannot be turned off", c.name),
            ));
        }
    }
    c.sync_enabled = req.sync_enabled;
    let out = c.clone();
    st.store.put_doc(DocKind::Fabric, v.id, &f.id.to_string(), None, Some(&f.name), &f, Some(doc.version)).await?;
    st.event(
        v.id,
        Severity::Info,
        "CloudSyncChanged",
        &format!("Cloud {} metadata sync {}", out.name, if out.sync_enabled { "on" } else { "off" }),
        Some(f.id),
        Some(&out.id),
    )
    .await;
    Ok(Json(out))
}

async fn inventory_of(st: &AppState, auth: &Auth, vault: &str, fabric: &str) -> ApiResult<Fabric> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(vault).await?;
    Ok(load_fabric(st, v.id, fabric).await?.body)
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/hostGroups", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path)), responses((status = 200, body = [HostGroup])))]
pub async fn list_host_groups(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
) -> ApiResult<Json<Vec<HostGroup>>> {
    Ok(Json(inventory_of(&st, &auth, &vault, &fabric).await?.inventory.host_groups))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/hosts", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path)), responses((status = 200, body = [Host])))]
pub async fn list_hosts(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Host>>> {
    Ok(Json(inventory_of(&st, &auth, &vault, &fabric).await?.inventory.hosts))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/logicalNetworks", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path)), responses((status = 200, body = [LogicalNetwork])))]
pub async fn list_logical_networks(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
) -> ApiResult<Json<Vec<LogicalNetwork>>> {
    Ok(Json(inventory_of(&st, &auth, &vault, &fabric).await?.inventory.logical_networks))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/vmNetworks", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path)), responses((status = 200, body = [VmNetwork])))]
pub async fn list_vm_networks(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
) -> ApiResult<Json<Vec<VmNetwork>>> {
    Ok(Json(inventory_of(&st, &auth, &vault, &fabric).await?.inventory.vm_networks))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/storageClassifications", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path)), responses((status = 200, body = [StorageClassification])))]
pub async fn list_storage_classifications(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
) -> ApiResult<Json<Vec<StorageClassification>>> {
    Ok(Json(inventory_of(&st, &auth, &vault, &fabric).await?.inventory.storage_classifications))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/protectableItems", tag = "fabrics", params(("vault" = String, Path), ("fabric" = String, Path), PageParams), responses((status = 200, body = Page<Vm>)))]
pub async fn list_protectable_items(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric)): Path<(String, String)>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Vm>>> {
    let limit = p.limit()? as usize;
    let mut vms = inventory_of(&st, &auth, &vault, &fabric).await?.inventory.vms;
    vms.sort_by(|a, b| a.id.cmp(&b.id));
    let start = match &p.cursor {
        Some(c) => vms.iter().position(|v| &v.id > c).unwrap_or(vms.len()),
        None => 0,
    };
    let items: Vec<Vm> = vms.into_iter().skip(start).take(limit + 1).collect();
    let next = if items.len() > limit { items.get(limit - 1).map(|v| v.id.clone()) } else { None };
    Ok(Json(Page { items: items.into_iter().take(limit).collect(), next }))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationFabrics/{fabric}/hosts/{host}/vmActions", tag = "fabrics", request_body = ferry_types::site_protocol::VmAction, params(("vault" = String, Path), ("fabric" = String, Path), ("host" = String, Path, description = "Host id or name")), responses((status = 202, body = ferry_types::job::Job), (status = 404, body = ferry_types::ApiError)))]
pub async fn vm_action(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, fabric, host)): Path<(String, String, String)>,
    ApiJson(action): ApiJson<ferry_types::site_protocol::VmAction>,
) -> ApiResult<(StatusCode, Json<ferry_types::job::Job>)> {
    use ferry_types::site_protocol::VmAction;
    let needed = match action {
        VmAction::Create { .. } | VmAction::Delete { .. } => Role::Contributor,
        VmAction::Status { .. } | VmAction::List => Role::Reader,
        _ => Role::Operator,
    };
    auth.require(needed)?;
    let (v, _) = st.vault(&vault).await?;
    let f = load_fabric(&st, v.id, &fabric).await?.body;
    let h = site_host(&f, &host)?;
    let (op_name, vm_name) = match &action {
        VmAction::Create { definition } => {
            ("CreateVm", definition.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string())
        }
        VmAction::Start { vm } => ("StartVm", vm.clone()),
        VmAction::Shutdown { vm, .. } => ("ShutdownVm", vm.clone()),
        VmAction::Stop { vm } => ("StopVm", vm.clone()),
        VmAction::Delete { vm, .. } => ("DeleteVm", vm.clone()),
        VmAction::Status { vm } => ("VmStatus", vm.clone()),
        VmAction::List => ("ListVms", h.name.clone()),
        VmAction::ConfigureGuestNetwork { vm, .. } => ("ConfigureGuestNetwork", vm.clone()),
    };
    let job = st
        .jobs
        .submit(
            &st,
            crate::jobs::NewJob {
                vault: v.id,
                operation: crate::jobs::OP_VM_ACTION,
                object_type: "VirtualMachine",
                object_id: format!("{}/{}", h.id, vm_name),
                object_name: format!("{op_name} {vm_name}"),
                fabric: Some(f.id),
                params: crate::jobs::JobInput::of(&crate::jobs::VmActionParams {
                    fabric: f.id,
                    host: h.id.clone(),
                    action,
                }),
                tasks: vec!["Run on host".into()],
            },
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}
