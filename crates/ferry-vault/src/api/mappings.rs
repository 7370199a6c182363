//! Cloud pairs (container mappings), network mappings (NET-1) and storage classification
//! mappings (STO-1, STO-4).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_store::DocKind;
use ferry_types::auth::Role;
use ferry_types::event::Severity;
use ferry_types::fabric::Fabric;
use ferry_types::job::Job;
use ferry_types::mapping::{
    ContainerMapping, CreateContainerMapping, CreateNetworkMapping, CreateStorageMapping, NetworkAvailability,
    NetworkMapping, SiteObjectRef, StorageMapping,
};
use ferry_types::policy::{Policy, PolicySpec};
use ferry_types::vault::Vault;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{parse_id, ApiJson};
use crate::jobs::{NewJob, OP_CONFIGURE_PAIR, OP_REMOVE_PAIR};
use crate::state::AppState;

async fn fabric(st: &AppState, vault: Uuid, id: Uuid) -> ApiResult<Fabric> {
    st.store
        .get_doc::<Fabric>(DocKind::Fabric, vault, &id.to_string())
        .await?
        .map(|d| d.body)
        .ok_or_else(|| ApiFailure::not_found("Site", &id.to_string()))
}

/// FAB-5/6/7 checks for a new pair, without writing anything.
pub async fn validate_pair(
    st: &AppState,
    v: &Vault,
    source: &SiteObjectRef,
    target: &SiteObjectRef,
    spec: &PolicySpec,
) -> ApiResult<()> {
    let src = fabric(st, v.id, source.fabric).await?;
    let tgt = fabric(st, v.id, target.fabric).await?;
    let existing: Vec<ContainerMapping> = st
        .store
        .all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id)
        .await?
        .into_iter()
        .map(|d| d.body)
        .collect();
    let req = CreateContainerMapping { source: source.clone(), target: target.clone(), policy: Uuid::nil() };
    ferry_core::fabric_rules::validate_container_mapping(
        &req,
        &src.inventory,
        &tgt.inventory,
        v.protection_goal.as_ref(),
        &existing,
    )?;
    check_pair_software(&src, source, &tgt, target)?;
    check_pair_hosts(st, v, source, target, spec).await
}

/// FAB-5: the agent version a site's hosts must run (same `major.minor` series): the version its
/// active site manager reports, since a site's hosts are upgraded with their site manager; the
/// vault's own version for a site whose managers report no usable version.
pub(crate) fn expected_agent_version(f: &Fabric) -> &str {
    f.providers
        .iter()
        .filter(|p| p.active)
        .chain(f.providers.iter())
        .map(|p| p.version.as_str())
        .find(|v| ferry_core::version::agent_series(v).is_some())
        .unwrap_or(env!("CARGO_PKG_VERSION"))
}

/// FAB-5: every host of both clouds has its agent joined, of its site manager's series, and runs
/// a supported QEMU.
fn check_pair_software(src: &Fabric, source: &SiteObjectRef, tgt: &Fabric, target: &SiteObjectRef) -> ApiResult<()> {
    for (f, r) in [(src, source), (tgt, target)] {
        let Some(cloud) = f.inventory.cloud(&r.id) else {
            continue;
        };
        let expected = expected_agent_version(f);
        for host in f.inventory.hosts_of_cloud(cloud) {
            ferry_core::fabric_rules::check_host_software(host, expected)?;
        }
    }
    Ok(())
}

/// POL-1: every host of both clouds reports the policy's host version.
pub async fn check_pair_hosts(
    st: &AppState,
    v: &Vault,
    source: &SiteObjectRef,
    target: &SiteObjectRef,
    spec: &PolicySpec,
) -> ApiResult<()> {
    let src = fabric(st, v.id, source.fabric).await?;
    let tgt = fabric(st, v.id, target.fabric).await?;
    let mut hosts = Vec::new();
    if let Some(c) = src.inventory.cloud(&source.id) {
        hosts.extend(src.inventory.hosts_of_cloud(c).cloned());
    }
    if let Some(c) = tgt.inventory.cloud(&target.id) {
        hosts.extend(tgt.inventory.hosts_of_cloud(c).cloned());
    }
    ferry_core::policy::check_host_versions(spec, hosts.iter())?;
    Ok(())
}

/// A new pair and the job that configures both sites.
#[derive(Debug, Serialize, ToSchema)]
pub struct PairCreated {
    pub mapping: ContainerMapping,
    pub job: Job,
}

/// Store a validated pair and start its configuration job.
pub async fn create_pair(
    st: &AppState,
    v: &Vault,
    source: &SiteObjectRef,
    target: &SiteObjectRef,
    policy: Uuid,
) -> ApiResult<PairCreated> {
    let mapping = ContainerMapping {
        id: Uuid::new_v4(),
        source: source.clone(),
        target: target.clone(),
        policy,
        created_at: st.clock.now(),
    };
    // The unique name makes "a cloud in at most one pair" hold even under concurrent requests.
    let unique = format!("{}/{}", source.fabric, source.id);
    st.store
        .put_doc(
            DocKind::ContainerMapping,
            v.id,
            &mapping.id.to_string(),
            Some(&policy.to_string()),
            Some(&unique),
            &mapping,
            None,
        )
        .await?;
    let src = fabric(st, v.id, source.fabric).await?;
    let name = format!(
        "{} -> {}",
        src.inventory.cloud(&source.id).map(|c| c.name.clone()).unwrap_or_default(),
        fabric(st, v.id, target.fabric).await?.inventory.cloud(&target.id).map(|c| c.name.clone()).unwrap_or_default()
    );
    let job = st
        .jobs
        .submit(
            st,
            NewJob {
                vault: v.id,
                operation: OP_CONFIGURE_PAIR,
                object_type: "ProtectionContainerMapping",
                object_id: mapping.id.to_string(),
                object_name: name.clone(),
                fabric: Some(source.fabric),
                params: crate::jobs::JobInput::of(&crate::jobs::PairParams { mapping: mapping.id }),
                tasks: vec!["Configure source site (pair)".into(), "Configure target site (pair)".into()],
            },
        )
        .await?;
    st.event(
        v.id,
        Severity::Info,
        "CloudsPaired",
        &format!("Clouds paired: {name}"),
        Some(source.fabric),
        Some(&mapping.id.to_string()),
    )
    .await;
    Ok(PairCreated { mapping, job })
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationProtectionContainerMappings", tag = "mappings", params(("vault" = String, Path)), responses((status = 200, body = [ContainerMapping])))]
pub async fn list_container_mappings(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<ContainerMapping>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    Ok(Json(
        st.store
            .all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id)
            .await?
            .into_iter()
            .map(|d| d.body)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationProtectionContainerMappings", tag = "mappings", request_body = CreateContainerMapping, params(("vault" = String, Path)), responses((status = 202, body = PairCreated), (status = 400, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn create_container_mapping(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(req): ApiJson<CreateContainerMapping>,
) -> ApiResult<(StatusCode, Json<PairCreated>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let policy = st
        .store
        .get_doc::<Policy>(DocKind::Policy, v.id, &req.policy.to_string())
        .await?
        .ok_or_else(|| ApiFailure::not_found("Policy", &req.policy.to_string()))?;
    validate_pair(&st, &v, &req.source, &req.target, &policy.body.spec).await?;
    Ok((StatusCode::ACCEPTED, Json(create_pair(&st, &v, &req.source, &req.target, req.policy).await?)))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}/replicationProtectionContainerMappings/{mapping}", tag = "mappings", params(("vault" = String, Path), ("mapping" = String, Path)), responses((status = 202, body = Job), (status = 404, body = ferry_types::ApiError)))]
pub async fn delete_container_mapping(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, mapping)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let id = parse_id("Cloud pair", &mapping)?;
    let m = st
        .store
        .get_doc::<ContainerMapping>(DocKind::ContainerMapping, v.id, &id.to_string())
        .await?
        .ok_or_else(|| ApiFailure::not_found("Cloud pair", &mapping))?;
    let job = st
        .jobs
        .submit(
            &st,
            NewJob {
                vault: v.id,
                operation: OP_REMOVE_PAIR,
                object_type: "ProtectionContainerMapping",
                object_id: id.to_string(),
                object_name: id.to_string(),
                fabric: Some(m.body.source.fabric),
                params: crate::jobs::JobInput::of(&crate::jobs::PairParams { mapping: id }),
                tasks: vec![
                    "Remove from source site".into(),
                    "Remove from target site".into(),
                    "Delete cloud pair".into(),
                ],
            },
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationNetworkMappings", tag = "mappings", params(("vault" = String, Path)), responses((status = 200, body = [NetworkMapping])))]
pub async fn list_network_mappings(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<NetworkMapping>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    Ok(Json(
        st.store.all_docs::<NetworkMapping>(DocKind::NetworkMapping, v.id).await?.into_iter().map(|d| d.body).collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationNetworkMappings", tag = "mappings", request_body = CreateNetworkMapping, params(("vault" = String, Path)), responses((status = 201, body = NetworkMapping), (status = 400, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn create_network_mapping(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(req): ApiJson<CreateNetworkMapping>,
) -> ApiResult<(StatusCode, Json<NetworkMapping>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let src = fabric(&st, v.id, req.source.fabric).await?;
    let tgt = fabric(&st, v.id, req.target.fabric).await?;
    let pairs: Vec<ContainerMapping> = st
        .store
        .all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id)
        .await?
        .into_iter()
        .map(|d| d.body)
        .collect();
    let existing: Vec<NetworkMapping> =
        st.store.all_docs::<NetworkMapping>(DocKind::NetworkMapping, v.id).await?.into_iter().map(|d| d.body).collect();
    ferry_core::network::validate_network_mapping(&req, &src.inventory, &tgt.inventory, &pairs, &existing)?;
    let sn = src
        .inventory
        .vm_network(&req.source.id)
        .ok_or_else(|| ApiFailure::not_found("Source VM network", &req.source.id))?;
    let tn = tgt
        .inventory
        .vm_network(&req.target.id)
        .ok_or_else(|| ApiFailure::not_found("Target VM network", &req.target.id))?;
    let m = NetworkMapping {
        id: Uuid::new_v4(),
        source: req.source.clone(),
        target: req.target.clone(),
        created_at: st.clock.now(),
    };
    // One mapping per source network (per target site).
    let unique = format!("{}/{}->{}", req.source.fabric, req.source.id, req.target.fabric);
    st.store.put_doc(DocKind::NetworkMapping, v.id, &m.id.to_string(), None, Some(&unique), &m, None).await.map_err(
        |e| match e.kind {
            ferry_store::ErrorKind::Conflict => ApiFailure::conflict(
                "NetworkAlreadyMapped",
                format!("VM network {} is already mapped to a network of that site", sn.name),
            ),
            _ => e.into(),
        },
    )?;
    st.event(
        v.id,
        Severity::Info,
        "NetworkMapped",
        &format!("VM network {} mapped to {}", sn.name, tn.name),
        Some(req.source.fabric),
        Some(&m.id.to_string()),
    )
    .await;
    replanned(&st, v.id).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}/replicationNetworkMappings/{mapping}", tag = "mappings", params(("vault" = String, Path), ("mapping" = String, Path)), responses((status = 204), (status = 404, body = ferry_types::ApiError)))]
pub async fn delete_network_mapping(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, mapping)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let id = parse_id("Network mapping", &mapping)?;
    let Some(m) = st.store.get_doc::<NetworkMapping>(DocKind::NetworkMapping, v.id, &id.to_string()).await? else {
        return Err(ApiFailure::not_found("Network mapping", &mapping));
    };
    if !st.store.delete_doc(DocKind::NetworkMapping, v.id, &id.to_string()).await? {
        return Err(ApiFailure::not_found("Network mapping", &mapping));
    }
    let (from, to) =
        mapped_names(&st, v.id, &m.body.source, &m.body.target, |inv, id| inv.vm_network(id).map(|n| n.name.clone()))
            .await;
    st.event(
        v.id,
        Severity::Info,
        "NetworkUnmapped",
        &format!("VM network {from} no longer mapped to {to}"),
        Some(m.body.source.fabric),
        Some(&id.to_string()),
    )
    .await;
    replanned(&st, v.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// NET-2: existing replicas follow a mapping change; an event names the VMs whose NICs changed.
async fn replanned(st: &AppState, vault: Uuid) -> ApiResult<()> {
    let changed = crate::nic_plan::replan_after_mapping_change(st, vault).await?;
    if !changed.is_empty() {
        let msg = format!("Replica NICs planned again after a network mapping change: {}", changed.join(", "));
        st.event(vault, Severity::Info, "ReplicaNicsUpdated", &msg, None, None).await;
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationNetworkMappings/availability", tag = "mappings", params(("vault" = String, Path)), responses((status = 200, body = [NetworkAvailability])))]
pub async fn network_availability(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<NetworkAvailability>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let mut out = Vec::new();
    for m in st.store.all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id).await? {
        let m = m.body;
        let src = fabric(&st, v.id, m.source.fabric).await?;
        let tgt = fabric(&st, v.id, m.target.fabric).await?;
        let (Some(sc), Some(tc)) = (src.inventory.cloud(&m.source.id), tgt.inventory.cloud(&m.target.id)) else {
            continue;
        };
        let nets = ferry_core::network::available_target_networks(&tgt.inventory, tc);
        out.push(NetworkAvailability {
            container_mapping: m.id,
            source_cloud: sc.name.clone(),
            target_cloud: tc.name.clone(),
            target_networks: nets.into_iter().map(|n| SiteObjectRef { fabric: tgt.id, id: n.id.clone() }).collect(),
        });
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationStorageClassificationMappings", tag = "mappings", params(("vault" = String, Path)), responses((status = 200, body = [StorageMapping])))]
pub async fn list_storage_mappings(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<StorageMapping>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    Ok(Json(
        st.store.all_docs::<StorageMapping>(DocKind::StorageMapping, v.id).await?.into_iter().map(|d| d.body).collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationStorageClassificationMappings", tag = "mappings", request_body = CreateStorageMapping, params(("vault" = String, Path)), responses((status = 201, body = StorageMapping), (status = 400, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn create_storage_mapping(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(req): ApiJson<CreateStorageMapping>,
) -> ApiResult<(StatusCode, Json<StorageMapping>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let src = fabric(&st, v.id, req.source.fabric).await?;
    let tgt = fabric(&st, v.id, req.target.fabric).await?;
    let existing: Vec<StorageMapping> =
        st.store.all_docs::<StorageMapping>(DocKind::StorageMapping, v.id).await?.into_iter().map(|d| d.body).collect();
    ferry_core::storage::validate_storage_mapping(&req, &src.inventory, &tgt.inventory, &existing)?;
    // STO-4: usable by a cloud pair between the two sites (when there is one).
    let pairs: Vec<ContainerMapping> = st
        .store
        .all_docs::<ContainerMapping>(DocKind::ContainerMapping, v.id)
        .await?
        .into_iter()
        .map(|d| d.body)
        .collect();
    ferry_core::storage::check_mapping_available_to_pairs(&req, &src.inventory, &tgt.inventory, &pairs)?;
    let m = StorageMapping {
        id: Uuid::new_v4(),
        source: req.source.clone(),
        target: req.target.clone(),
        created_at: st.clock.now(),
    };
    let unique = format!("{}/{}->{}", req.source.fabric, req.source.id, req.target.fabric);
    st.store.put_doc(DocKind::StorageMapping, v.id, &m.id.to_string(), None, Some(&unique), &m, None).await.map_err(
        |e| match e.kind {
            ferry_store::ErrorKind::Conflict => ApiFailure::conflict(
                "ClassificationAlreadyMapped",
                "This storage classification is already mapped for that site",
            ),
            _ => e.into(),
        },
    )?;
    st.event(
        v.id,
        Severity::Info,
        "StorageMapped",
        &format!(
            "Storage classification {} mapped to {}",
            classification_name(&src.inventory, &req.source.id),
            classification_name(&tgt.inventory, &req.target.id)
        ),
        Some(req.source.fabric),
        Some(&m.id.to_string()),
    )
    .await;
    Ok((StatusCode::CREATED, Json(m)))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}/replicationStorageClassificationMappings/{mapping}", tag = "mappings", params(("vault" = String, Path), ("mapping" = String, Path)), responses((status = 204), (status = 404, body = ferry_types::ApiError)))]
pub async fn delete_storage_mapping(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, mapping)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let id = parse_id("Storage mapping", &mapping)?;
    let Some(m) = st.store.get_doc::<StorageMapping>(DocKind::StorageMapping, v.id, &id.to_string()).await? else {
        return Err(ApiFailure::not_found("Storage mapping", &mapping));
    };
    if !st.store.delete_doc(DocKind::StorageMapping, v.id, &id.to_string()).await? {
        return Err(ApiFailure::not_found("Storage mapping", &mapping));
    }
    let (from, to) =
        mapped_names(&st, v.id, &m.body.source, &m.body.target, |inv, id| Some(classification_name(inv, id))).await;
    st.event(
        v.id,
        Severity::Info,
        "StorageUnmapped",
        &format!("Storage classification {from} no longer mapped to {to}"),
        Some(m.body.source.fabric),
        Some(&id.to_string()),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The name of a storage classification of a site (its id if the site does not list it).
/// The names of a mapping's two ends as their sites report them (the id when a site no longer
/// reports the object).
async fn mapped_names(
    st: &AppState,
    vault: Uuid,
    source: &ferry_types::mapping::SiteObjectRef,
    target: &ferry_types::mapping::SiteObjectRef,
    name: impl Fn(&ferry_types::fabric::SiteInventory, &str) -> Option<String>,
) -> (String, String) {
    let mut out = Vec::new();
    for end in [source, target] {
        let found = match fabric(st, vault, end.fabric).await {
            Ok(f) => name(&f.inventory, &end.id),
            Err(_) => None,
        };
        out.push(found.unwrap_or_else(|| end.id.clone()));
    }
    let to = out.pop().unwrap_or_default();
    (out.pop().unwrap_or_default(), to)
}

fn classification_name(inv: &ferry_types::fabric::SiteInventory, id: &str) -> String {
    inv.storage_classifications.iter().find(|c| c.id == id).map(|c| c.name.clone()).unwrap_or_else(|| id.to_string())
}
