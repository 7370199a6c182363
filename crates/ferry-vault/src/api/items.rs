//! `/api/v1/vaults/{vault}/replicationProtectedItems`: replicated VMs (REP-1, JOB-2, JOB-3).

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use ferry_core::network::ReplicaNic as NicConnection;
use ferry_core::state::OperationContext;
use ferry_store::DocKind;
use ferry_types::auth::Role;
use ferry_types::fabric::{Cloud, Fabric, Host, Vm};
use ferry_types::job::Job;
use ferry_types::mapping::{ContainerMapping, NetworkMapping, StorageMapping};
use ferry_types::protection::{
    Direction, EnableProtection, ExistingDisk, Health, ItemSide, Operation, OperationRequest, ProtectedItem,
    ReplicaDisk, ReplicationState, ReplicationStats, TestNetwork,
};
use ferry_types::Page;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::vaults::load_fabric;
use crate::auth::Auth;
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{ApiJson, ApiQuery, PageParams};
use crate::jobs::{JobInput, NewJob};
use crate::state::AppState;

/// Fill in what is computed from the state: allowed operations (JOB-3) and the RPO as of `now`
/// (REP-5). Whether a failover job still runs is only checked when an operation is requested.
pub fn with_allowed(mut item: ProtectedItem, now: chrono::DateTime<chrono::Utc>) -> ProtectedItem {
    crate::replication::present(&mut item, now);
    let ctx = OperationContext {
        test_failover_running: item.test_failover.is_some(),
        recovery_points: item.recovery_points.len(),
        reverse_direction: item.direction == Direction::Reverse,
        failover_job_running: false,
        awaiting_import: item.stats.awaiting_import,
    };
    item.allowed_operations = ferry_core::state::allowed_operations(item.state, &ctx);
    item
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationProtectedItems", tag = "protectedItems", params(("vault" = String, Path), PageParams), responses((status = 200, body = Page<ProtectedItem>)))]
pub async fn list_items(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<ProtectedItem>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let limit = p.limit()?;
    let docs =
        st.store.list_docs::<ProtectedItem>(DocKind::ProtectedItem, v.id, None, p.cursor.as_deref(), limit + 1).await?;
    let more = docs.len() as i64 > limit;
    let items: Vec<ProtectedItem> =
        docs.into_iter().take(limit as usize).map(|d| with_allowed(d.body, st.clock.now())).collect();
    let next = if more { items.last().map(|i| i.id.to_string()) } else { None };
    Ok(Json(Page { items, next }))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationProtectedItems/{item}", tag = "protectedItems", params(("vault" = String, Path), ("item" = String, Path)), responses((status = 200, body = ProtectedItem), (status = 404, body = ferry_types::ApiError)))]
pub async fn get_item(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, item)): Path<(String, String)>,
) -> ApiResult<Json<ProtectedItem>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    Ok(Json(with_allowed(load_item(&st, v.id, &item).await?.body, st.clock.now())))
}

pub async fn load_item(st: &AppState, vault: Uuid, raw: &str) -> ApiResult<ferry_store::Doc<ProtectedItem>> {
    if let Ok(id) = Uuid::parse_str(raw) {
        if let Some(d) = st.store.get_doc::<ProtectedItem>(DocKind::ProtectedItem, vault, &id.to_string()).await? {
            return Ok(d);
        }
    }
    // By VM name (unique among protected items through the unique name).
    let all = st.store.all_docs::<ProtectedItem>(DocKind::ProtectedItem, vault).await?;
    all.into_iter().find(|d| d.body.name == raw).ok_or_else(|| ApiFailure::not_found("Protected item", raw))
}

/// A protected item and its Enable protection job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enabled {
    pub item: ProtectedItem,
    pub job: Job,
}

fn core_err(e: ferry_core::Error) -> ApiFailure {
    e.into()
}

/// Everything that can be decided before anything is written: the pair, placement (STO-2/3,
/// NET-5) and replica NICs (NET-2/3/4).
pub async fn plan_item(st: &AppState, vault: Uuid, source: &Fabric, vm: &Vm) -> ApiResult<ProtectedItem> {
    let cloud = vm.cloud.clone().ok_or_else(|| {
        ApiFailure::bad_request("VmNotInCloud", format!("VM {} is not in a synced cloud of {}", vm.name, source.name))
    })?;
    let pairs = st.store.all_docs::<ContainerMapping>(DocKind::ContainerMapping, vault).await?;
    let pair =
        pairs.into_iter().map(|d| d.body).find(|m| m.source.fabric == source.id && m.source.id == cloud).ok_or_else(
            || {
                ApiFailure::bad_request(
                    "CloudNotPaired",
                    format!("The cloud of VM {} is not paired with a target cloud; pair it first", vm.name),
                )
            },
        )?;
    // REP-9: supported VMs.
    if vm.disks.iter().filter(|d| !d.excluded).count() == 0 {
        return Err(ApiFailure::bad_request("NoDiskToReplicate", format!("VM {} has no disk to replicate", vm.name)));
    }
    if vm.disks.len() > 16 {
        return Err(ApiFailure::bad_request("TooManyDisks", format!("VM {} has more than 16 disks", vm.name)));
    }
    for d in vm.disks.iter().filter(|d| !d.excluded) {
        if d.encrypted {
            return Err(ApiFailure::bad_request(
                "EncryptedDiskNotSupported",
                format!(
                    "Disk {} of VM {} is an encrypted image; encrypted images cannot be replicated",
                    d.target, vm.name
                ),
            ));
        }
        if let Some(other) =
            source.inventory.vms.iter().find(|o| {
                o.id != vm.id && o.disks.iter().any(|x| x.path == d.path) && same_image(source, vm, o, &d.path)
            })
        {
            return Err(ApiFailure::bad_request(
                "SharedDiskNotSupported",
                format!(
                    "Disk {} of VM {} ({}) is also a disk of VM {}; shared disks cannot be replicated",
                    d.target, vm.name, d.path, other.name
                ),
            ));
        }
    }
    let target = st
        .store
        .get_doc::<Fabric>(DocKind::Fabric, vault, &pair.target.fabric.to_string())
        .await?
        .ok_or_else(|| ApiFailure::not_found("Target site", &pair.target.fabric.to_string()))?
        .body;
    let target_cloud = target
        .inventory
        .cloud(&pair.target.id)
        .ok_or_else(|| ApiFailure::not_found("Target cloud", &pair.target.id))?
        .clone();
    let source_cloud =
        source.inventory.cloud(&cloud).ok_or_else(|| ApiFailure::not_found("Source cloud", &cloud))?.clone();
    let source_host = source.inventory.host(&vm.host).ok_or_else(|| ApiFailure::not_found("Source host", &vm.host))?;
    check_pair_host(source_host, source, source, &source_cloud, &target, &target_cloud)?;
    let net_maps: Vec<NetworkMapping> = st
        .store
        .all_docs(DocKind::NetworkMapping, vault)
        .await?
        .into_iter()
        .map(|d: ferry_store::Doc<NetworkMapping>| d.body)
        .collect();
    let sto_maps: Vec<StorageMapping> = st
        .store
        .all_docs(DocKind::StorageMapping, vault)
        .await?
        .into_iter()
        .map(|d: ferry_store::Doc<StorageMapping>| d.body)
        .collect();
    // Addresses already used on the target side: its VMs and other replicas.
    let mut used = crate::nic_plan::used_addresses(st, vault, &target, None).await?;
    let nic_plans =
        ferry_core::network::plan_replica_nics(vm, source.id, target.id, &target.inventory, &net_maps, &mut used)
            .map_err(core_err)?;
    let connections: Vec<NicConnection> = nic_plans.iter().map(|p| p.connection.clone()).collect();
    // REP-7: a replica of this VM kept on a host of the cloud is where it goes again (that host
    // starts from it and sends only the differences), if that host can hold every disk.
    let kept: Option<ferry_types::protection::KeptReplicaRecord> = st
        .store
        .get_doc(DocKind::KeptReplica, vault, &format!("{}/{}", source.id, vm.id))
        .await?
        .map(|d| d.body)
        .filter(|k: &ferry_types::protection::KeptReplicaRecord| k.fabric == target.id);
    let keeper: Vec<&Host> = kept
        .as_ref()
        .and_then(|k| ferry_core::network::kept_replica_host(&target.inventory, &target_cloud, &connections, &k.host))
        .into_iter()
        .collect();
    let placement = match ferry_core::storage::place_vm(vm, &keeper, &target.inventory, source.id, target.id, &sto_maps)
    {
        Ok(p) if !keeper.is_empty() => p,
        _ => {
            let candidates = ferry_core::network::placement_candidates(&target.inventory, &target_cloud, &connections)
                .map_err(core_err)?;
            ferry_core::storage::place_vm(vm, &candidates, &target.inventory, source.id, target.id, &sto_maps)
                .map_err(core_err)?
        }
    };
    let target_host = target
        .inventory
        .host(&placement.host)
        .ok_or_else(|| ApiFailure::not_found("Target host", &placement.host))?
        .clone();
    check_pair_host(&target_host, &target, source, &source_cloud, &target, &target_cloud)?;
    let disks = vm
        .disks
        .iter()
        .filter(|d| !d.excluded)
        .map(|d| {
            let p = placement.disks.iter().find(|p| p.disk == d.target);
            ReplicaDisk {
                target: d.target.clone(),
                source_path: d.path.clone(),
                virtual_size: d.virtual_size,
                location: p.map(|p| p.location.clone()).unwrap_or_default(),
                placement: p.map(|p| format!("{:?}", p.kind)).unwrap_or_default(),
                existing_image: None,
            }
        })
        .collect();
    let nics = crate::nic_plan::replica_nics(vm, &nic_plans);
    Ok(ProtectedItem {
        id: Uuid::new_v4(),
        vault_id: vault,
        name: vm.name.clone(),
        vm_id: vm.id.clone(),
        container_mapping: pair.id,
        policy: pair.policy,
        source: ItemSide {
            fabric: source.id,
            cloud,
            host: source_host.id.clone(),
            host_name: source_host.name.clone(),
        },
        target: ItemSide {
            fabric: target.id,
            cloud: target_cloud.id.clone(),
            host: target_host.id.clone(),
            host_name: target_host.name.clone(),
        },
        direction: Direction::Forward,
        state: ferry_core::state::transition(ReplicationState::NotEnabled, ferry_core::state::Event::EnableProtection)
            .map_err(core_err)?,
        health: Health::Warning,
        health_reasons: vec!["Initial replication is not complete".into()],
        disks,
        nics,
        stats: ReplicationStats::default(),
        recovery_points: vec![],
        allowed_operations: vec![],
        created_at: st.clock.now(),
        definition: None,
        test_failover: None,
        last_test_failover: None,
        failover: None,
        existing_replica: None,
    })
}

/// FAB-5: a host an item uses (`site` is the host's site) is in a host group of the pair's
/// source or target cloud, and runs a supported QEMU and an agent of its site manager's series.
fn check_pair_host(
    host: &Host,
    site: &Fabric,
    source: &Fabric,
    source_cloud: &Cloud,
    target: &Fabric,
    target_cloud: &Cloud,
) -> ApiResult<()> {
    ferry_core::fabric_rules::check_host_in_pair(
        &host.id,
        &source.inventory,
        source_cloud,
        &target.inventory,
        target_cloud,
    )
    .map_err(core_err)?;
    let expected = super::mappings::expected_agent_version(site);
    ferry_core::fabric_rules::check_host_software(host, expected).map_err(core_err)
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationProtectedItems", tag = "protectedItems", request_body = EnableProtection, params(("vault" = String, Path)), responses((status = 202, body = [Enabled]), (status = 400, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn enable_protection(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(req): ApiJson<EnableProtection>,
) -> ApiResult<(StatusCode, Json<Vec<Enabled>>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    if req.vms.is_empty() {
        return Err(ApiFailure::bad_request("InvalidValue", "Give at least one VM"));
    }
    let source = load_fabric(&st, v.id, &req.source_site).await?.body;
    let out = enable_on_site(&st, v.id, &source, &req.vms, &req.existing_disks, None).await?;
    Ok((StatusCode::ACCEPTED, Json(out)))
}

/// REP-1: enable protection for `vms` of the site `source` (VM names or ids). Every VM is planned
/// first: one bad VM refuses the request and changes nothing. `existing` names images on the
/// target hosts to start replicas from (REP-7). `from_site` names the site manager when the
/// request came from the site side (recorded in the events).
pub async fn enable_on_site(
    st: &AppState,
    vault: Uuid,
    source: &ferry_types::fabric::Fabric,
    vms: &[String],
    existing: &[ExistingDisk],
    from_site: Option<&str>,
) -> ApiResult<Vec<Enabled>> {
    // Plan every VM first: one bad VM refuses the request and changes nothing.
    let mut planned = Vec::new();
    let mut seen = HashSet::new();
    for name in vms {
        let vm = source
            .inventory
            .vms
            .iter()
            .find(|x| &x.name == name || &x.id == name)
            .ok_or_else(|| ApiFailure::not_found("VM", name))?;
        if !seen.insert(vm.id.clone()) {
            return Err(ApiFailure::bad_request("DuplicateVm", format!("VM {} is listed twice", vm.name)));
        }
        let protected = st.store.all_docs::<ProtectedItem>(DocKind::ProtectedItem, vault).await?;
        if protected.iter().any(|d| d.body.vm_id == vm.id) {
            return Err(ApiFailure::conflict("AlreadyProtected", format!("VM {} is already protected", vm.name)));
        }
        let mut item = plan_item(st, vault, source, vm).await?;
        let target = st
            .store
            .get_doc::<Fabric>(DocKind::Fabric, vault, &item.target.fabric.to_string())
            .await?
            .ok_or_else(|| ApiFailure::not_found("Target site", &item.target.fabric.to_string()))?
            .body;
        attach_existing_images(&mut item, vm, existing, &target)?;
        planned.push(item);
    }
    for e in existing {
        if !planned.iter().any(|i| i.name == e.vm || i.vm_id == e.vm) {
            return Err(ApiFailure::bad_request(
                "InvalidExistingDisk",
                format!("Existing image for VM {}, which is not among the VMs to protect", e.vm),
            ));
        }
    }
    let mut out = Vec::new();
    for item in planned {
        let unique = format!("vm:{}/{}", item.source.fabric, item.vm_id);
        st.store
            .put_doc(
                DocKind::ProtectedItem,
                vault,
                &item.id.to_string(),
                Some(&item.container_mapping.to_string()),
                Some(&unique),
                &item,
                None,
            )
            .await
            .map_err(|e| match e.kind {
                ferry_store::ErrorKind::Conflict => {
                    ApiFailure::conflict("AlreadyProtected", format!("VM {} is already protected", item.name))
                }
                _ => e.into(),
            })?;
        let job = st
            .jobs
            .submit(
                st,
                NewJob {
                    vault,
                    operation: crate::jobs::OP_ENABLE_PROTECTION,
                    object_type: "ProtectedItem",
                    object_id: item.id.to_string(),
                    object_name: item.name.clone(),
                    fabric: Some(item.source.fabric),
                    params: JobInput::of(&crate::jobs::ItemParams { item: item.id }),
                    tasks: crate::jobs::ENABLE_TASKS.iter().map(|t| t.to_string()).collect(),
                },
            )
            .await?;
        st.event(
            vault,
            ferry_types::event::Severity::Info,
            "ProtectionEnabled",
            &match from_site {
                Some(site) => format!(
                    "Protection enabled for {} ({} → {}) from site manager {site}",
                    item.name, item.source.host_name, item.target.host_name
                ),
                None => {
                    format!(
                        "Protection enabled for {} ({} → {})",
                        item.name, item.source.host_name, item.target.host_name
                    )
                }
            },
            Some(item.source.fabric),
            Some(&item.id.to_string()),
        )
        .await;
        out.push(Enabled { item: with_allowed(item, st.clock.now()), job });
    }
    Ok(out)
}

/// REP-9: whether `path`, a disk path of both `a` and `b`, is one image: on one host, or in a
/// storage location both hosts share. The same local path on two hosts is two files.
fn same_image(site: &Fabric, a: &Vm, b: &Vm, path: &str) -> bool {
    if a.host == b.host {
        return true;
    }
    let shared_on = |host: &str| {
        site.inventory.host(host).is_some_and(|h| {
            h.storage_locations.iter().any(|l| l.shared && std::path::Path::new(path).starts_with(&l.path))
        })
    };
    shared_on(&a.host) && shared_on(&b.host)
}

/// REP-7: record the operator's existing images (one per replicated disk of `vm`, inside a
/// storage location of the item's target host) on the planned item's disks.
fn attach_existing_images(
    item: &mut ProtectedItem,
    vm: &Vm,
    existing: &[ExistingDisk],
    target: &Fabric,
) -> ApiResult<()> {
    let bad = |m: String| ApiFailure::bad_request("InvalidExistingDisk", m);
    let mine: Vec<&ExistingDisk> = existing.iter().filter(|e| e.vm == vm.name || e.vm == vm.id).collect();
    if mine.is_empty() {
        return Ok(());
    }
    let host = target
        .inventory
        .host(&item.target.host)
        .ok_or_else(|| ApiFailure::not_found("Target host", &item.target.host))?;
    for e in &mine {
        let path = std::path::Path::new(&e.path);
        if !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(bad(format!(
                "Existing image {} for {}/{}: give an absolute path without '..'",
                e.path, vm.name, e.disk
            )));
        }
        if !host.storage_locations.iter().any(|l| path.starts_with(&l.path)) {
            return Err(ApiFailure::with(
                StatusCode::BAD_REQUEST,
                ferry_types::ApiError::new(
                    "InvalidExistingDisk",
                    format!(
                        "Existing image {} for {}/{} is not inside a storage location of the target host {}",
                        e.path, vm.name, e.disk, host.name
                    ),
                )
                .recommend("Put the image into one of the host's storage locations (ferry host-list shows them)"),
            ));
        }
        let disk = item
            .disks
            .iter_mut()
            .find(|d| d.target == e.disk)
            .ok_or_else(|| bad(format!("VM {} has no replicated disk {}", vm.name, e.disk)))?;
        if disk.existing_image.is_some() {
            return Err(bad(format!("Two existing images given for {}/{}", vm.name, e.disk)));
        }
        disk.existing_image = Some(e.path.clone());
    }
    if let Some(d) = item.disks.iter().find(|d| d.existing_image.is_none()) {
        return Err(bad(format!(
            "No existing image given for {}/{}: give one for every replicated disk of the VM",
            vm.name, d.target
        )));
    }
    Ok(())
}

fn point_choice(raw: Option<&str>) -> ferry_core::retention::RecoveryPointChoice {
    use ferry_core::retention::RecoveryPointChoice as C;
    match raw.unwrap_or("latestProcessed") {
        "latest" => C::Latest,
        "latestProcessed" => C::LatestProcessed,
        "latestAppConsistent" => C::LatestAppConsistent,
        id => C::Specific(id.to_string()),
    }
}

/// RP-3: the recovery point an operation uses.
/// A failover-type job of the item has not ended yet (FO-7: no rollback under a running job).
async fn failover_job_running(st: &AppState, vault: Uuid, it: &ProtectedItem) -> ApiResult<bool> {
    for status in [ferry_types::job::JobStatus::InProgress, ferry_types::job::JobStatus::NotStarted] {
        let f = ferry_types::job::JobFilter {
            status: Some(status),
            object_id: Some(it.id.to_string()),
            ..Default::default()
        };
        let (jobs, _) = st.store.list_jobs(vault, &f, None, 20).await?;
        let failover = [
            crate::jobs::OP_PLANNED_FAILOVER,
            crate::jobs::OP_UNPLANNED_FAILOVER,
            crate::jobs::OP_APPLY_RECOVERY_POINT,
        ];
        if jobs.iter().any(|j| failover.contains(&j.operation.as_str())) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn choose_point(item: &ProtectedItem, raw: Option<&str>) -> ApiResult<String> {
    select_point(item, &point_choice(raw))
}

/// RP-3: the point a test failover or failover sends to the replica host. The latest point
/// (`latestProcessed` too: every point is applied when it arrives) goes as `latest`, which the
/// replica host resolves when it makes the overlays, under its chain lock: retention can merge
/// the point the vault last heard of between the choice and its use, never the newest one. The
/// job records the point the host used. An item without the chosen kind of point is refused here.
pub(crate) fn overlay_point(item: &ProtectedItem, raw: Option<&str>) -> ApiResult<String> {
    let chosen = choose_point(item, raw)?;
    Ok(match raw {
        None | Some("latest") | Some("latestProcessed") => LATEST_POINT.to_string(),
        Some(_) => chosen,
    })
}

/// The point id that designates the replica's newest point when the replica host uses it.
pub const LATEST_POINT: &str = "latest";

/// RP-3: the item's recovery point a choice designates (per-VM operations and plans).
pub(crate) fn select_point(
    item: &ProtectedItem,
    choice: &ferry_core::retention::RecoveryPointChoice,
) -> ApiResult<String> {
    let infos: Vec<ferry_core::retention::PointInfo> = item
        .recovery_points
        .iter()
        .map(|p| ferry_core::retention::PointInfo {
            id: p.id.clone(),
            time: p.time,
            app_consistent: p.app_consistent,
            in_use: false,
            processed: true,
        })
        .collect();
    let chosen = ferry_core::retention::select_recovery_point(&infos, choice).map_err(core_err)?;
    Ok(chosen.id.clone())
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationProtectedItems/{item}/recoveryPoints/image", tag = "protectedItems", request_body = ferry_types::protection::PointImagesRequest, params(("vault" = String, Path), ("item" = String, Path)), responses((status = 202, body = Job), (status = 400, body = ferry_types::ApiError), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
/// RP-3: write one recovery point's disks as standalone images on the replica host.
pub async fn point_images(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, item)): Path<(String, String)>,
    ApiJson(req): ApiJson<ferry_types::protection::PointImagesRequest>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    auth.require(Role::Operator)?;
    let (v, _) = st.vault(&vault).await?;
    let it = load_item(&st, v.id, &item).await?.body;
    ferry_core::paths::validate_absolute_path("path", &req.path).map_err(core_err)?;
    let point = replica_point(&it, req.recovery_point.as_deref())?.unwrap_or_else(|| LATEST_POINT.to_string());
    let params = crate::jobs::PointImageParams {
        item: it.id,
        point,
        format: req.format.unwrap_or(ferry_types::fabric::DiskFormat::Qcow2),
        path: req.path.clone(),
    };
    submit_replica_job(&st, v.id, &it, crate::jobs::OP_POINT_IMAGES, &params, &crate::jobs::POINT_IMAGE_TASKS).await
}

/// A point of the item's replica that a request names (`latest` or an id it lists); none when
/// the request names none. Refused when the replica holds no points yet.
fn replica_point(it: &ProtectedItem, raw: Option<&str>) -> ApiResult<Option<String>> {
    if it.recovery_points.is_empty() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "NoRecoveryPoints",
            format!("{} has no recovery points on its replica host", it.name),
        ));
    }
    match raw {
        None => Ok(None),
        Some(LATEST_POINT) => Ok(Some(LATEST_POINT.to_string())),
        Some(p) if it.recovery_points.iter().any(|rp| rp.id == p) => Ok(Some(p.to_string())),
        Some(p) => Err(ApiFailure::not_found("Recovery point", p)),
    }
}

/// Start a job that runs on the item's replica host (its target site).
async fn submit_replica_job(
    st: &AppState,
    vault: Uuid,
    it: &ProtectedItem,
    operation: &'static str,
    params: &impl crate::jobs::JobParams,
    tasks: &[&str],
) -> ApiResult<(StatusCode, Json<Job>)> {
    let params = JobInput::of(params);
    let job = st
        .jobs
        .submit(
            st,
            crate::jobs::NewJob {
                vault,
                params,
                operation,
                object_type: "ProtectedItem",
                object_id: it.id.to_string(),
                object_name: it.name.clone(),
                fabric: Some(it.target.fabric),
                tasks: tasks.iter().map(|t| t.to_string()).collect(),
            },
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationProtectedItems/{item}/recoveryPoints/verify", tag = "protectedItems", request_body = ferry_types::protection::VerifyPointsRequest, params(("vault" = String, Path), ("item" = String, Path)), responses((status = 202, body = Job), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
/// RP-1: re-read recovery points on the replica host and compare them with their manifests.
pub async fn verify_points(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, item)): Path<(String, String)>,
    ApiJson(req): ApiJson<ferry_types::protection::VerifyPointsRequest>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let it = load_item(&st, v.id, &item).await?.body;
    let point = replica_point(&it, req.recovery_point.as_deref())?;
    let params = crate::jobs::VerifyParams { item: it.id, point };
    submit_replica_job(&st, v.id, &it, crate::jobs::OP_VERIFY_POINTS, &params, &crate::jobs::VERIFY_TASKS).await
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationProtectedItems/{item}/{operation}", tag = "protectedItems", request_body = OperationRequest, params(("vault" = String, Path), ("item" = String, Path), ("operation" = String, Path, description = "testFailover, testFailoverCleanup, disableProtection, ...")), responses((status = 202, body = Job), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError), (status = 501, body = ferry_types::ApiError)))]
pub async fn operate(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, item, operation)): Path<(String, String, String)>,
    ApiJson(req): ApiJson<OperationRequest>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let op = Operation::parse(&operation).ok_or_else(|| {
        ApiFailure::not_found("Operation", &operation)
            .into_code("UnknownOperation", format!("'{operation}' is not an operation on protected items"))
    })?;
    auth.require(if op.is_failover_type() { Role::Operator } else { Role::Contributor })?;
    let (v, _) = st.vault(&vault).await?;
    let doc = load_item(&st, v.id, &item).await?;
    let it = doc.body;
    let failover_job_running = op == Operation::FailoverCancel && failover_job_running(&st, v.id, &it).await?;
    let ctx = OperationContext {
        test_failover_running: it.test_failover.is_some(),
        recovery_points: it.recovery_points.len(),
        reverse_direction: it.direction == Direction::Reverse,
        failover_job_running,
        awaiting_import: it.stats.awaiting_import,
    };
    ferry_core::state::check_operation(it.state, &ctx, op).map_err(core_err)?;
    let new_job = |operation: &'static str, params: JobInput, tasks: &[&str]| NewJob {
        vault: v.id,
        // FO-7: a failover-type job that failed can be resumed once its cause is fixed
        // (finished tasks are kept); test failover and disable are started anew instead.
        params: if matches!(op, Operation::TestFailover | Operation::DisableProtection) {
            params
        } else {
            params.resumable_after_failure()
        },
        operation,
        object_type: "ProtectedItem",
        object_id: it.id.to_string(),
        object_name: it.name.clone(),
        fabric: Some(it.target.fabric),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
    };
    let job = match op {
        Operation::TestFailover => {
            let point = overlay_point(&it, req.recovery_point.as_deref())?;
            let network = req.network.clone().unwrap_or_default();
            let network = match network {
                TestNetwork::Existing { network } => {
                    let target = load_fabric(&st, v.id, &it.target.fabric.to_string()).await?.body;
                    let n = target
                        .inventory
                        .vm_networks
                        .iter()
                        .find(|n| n.name == network || n.id == network)
                        .ok_or_else(|| ApiFailure::not_found("Target VM network", &network))?;
                    TestNetwork::Existing { network: n.name.clone() }
                }
                other => other,
            };
            let bridge = matches!(network, TestNetwork::Automatic)
                .then(|| format!("fyt{}", &Uuid::new_v4().simple().to_string()[..8]));
            // Claim the item first: one test failover at a time, even under concurrent requests.
            let now = st.clock.now();
            let vm_name = format!("{}-test", it.name);
            let info = crate::jobs::test_info(
                Uuid::nil(),
                vm_name.clone(),
                point.clone(),
                network.clone(),
                bridge.clone(),
                now,
            );
            let mut claimed = false;
            crate::replication::update_item(&st, v.id, it.id, |i| {
                claimed = false;
                if i.test_failover.is_none() {
                    i.test_failover = Some(info.clone());
                    claimed = true;
                }
            })
            .await
            .map_err(|e| ApiFailure::with(StatusCode::CONFLICT, e))?;
            if !claimed {
                return Err(ApiFailure::conflict(
                    "TestFailoverRunning",
                    format!("A test failover of {} is already running", it.name),
                ));
            }
            let params = JobInput::of(&crate::jobs::TestParams { item: it.id, point, network, bridge });
            let job =
                st.jobs.submit(&st, new_job(crate::jobs::OP_TEST_FAILOVER, params, &crate::jobs::TEST_TASKS)).await?;
            let jid = job.id;
            crate::replication::update_item(&st, v.id, it.id, |i| {
                if let Some(t) = i.test_failover.as_mut() {
                    t.job = jid;
                }
            })
            .await
            .map_err(|e| ApiFailure::with(StatusCode::CONFLICT, e))?;
            job
        }
        Operation::TestFailoverCleanup => {
            let params =
                JobInput::of(&crate::jobs::CleanupParams { item: it.id, notes: req.notes.clone().unwrap_or_default() });
            st.jobs
                .submit(&st, new_job(crate::jobs::OP_TEST_FAILOVER_CLEANUP, params, &crate::jobs::CLEANUP_TASKS))
                .await?
        }
        Operation::PlannedFailover => {
            let shutdown_timeout = match req.shutdown_timeout_secs {
                None => crate::jobs::DEFAULT_SHUTDOWN_TIMEOUT_SECS,
                Some(s) if (1..=3600).contains(&s) => s,
                Some(s) => {
                    return Err(ApiFailure::bad_request(
                        "InvalidShutdownTimeout",
                        format!("shutdown_timeout_secs {s} is outside 1..=3600"),
                    ))
                }
            };
            crate::replication::apply_operation(&st, v.id, it.id, Operation::PlannedFailover).await?;
            let params =
                JobInput::of(&crate::jobs::PlannedParams { item: it.id, shutdown_timeout_secs: shutdown_timeout });
            st.jobs.submit(&st, new_job(crate::jobs::OP_PLANNED_FAILOVER, params, &crate::jobs::PLANNED_TASKS)).await?
        }
        Operation::UnplannedFailover => {
            // FO-3 fencing: a source VM the vault sees running on a connected host blocks the
            // failover unless the operator confirms the source is fenced.
            if !req.source_fenced && !req.shutdown_source {
                let source = load_fabric(&st, v.id, &it.source.fabric.to_string()).await?.body;
                let host_up = source.inventory.host(&it.source.host).is_some_and(|h| h.connected);
                let running = source
                    .inventory
                    .vm(&it.vm_id)
                    .is_some_and(|vm| vm.power_state == ferry_types::fabric::PowerState::Running);
                if host_up && running {
                    return Err(ApiFailure::with(StatusCode::CONFLICT, crate::jobs::source_running(&it.name)));
                }
            }
            let point = overlay_point(&it, req.recovery_point.as_deref())?;
            let params = JobInput::of(&crate::jobs::UnplannedParams {
                item: it.id,
                point,
                shutdown_source: req.shutdown_source,
                source_fenced: req.source_fenced,
            });
            st.jobs
                .submit(&st, new_job(crate::jobs::OP_UNPLANNED_FAILOVER, params, &crate::jobs::UNPLANNED_TASKS))
                .await?
        }
        Operation::FailoverCommit => {
            let params = JobInput::of(&crate::jobs::ItemParams { item: it.id });
            st.jobs.submit(&st, new_job(crate::jobs::OP_FAILOVER_COMMIT, params, &crate::jobs::COMMIT_TASKS)).await?
        }
        Operation::ApplyRecoveryPoint => {
            let point = choose_point(&it, req.recovery_point.as_deref())?;
            let params = JobInput::of(&crate::jobs::ApplyParams { item: it.id, point });
            st.jobs
                .submit(&st, new_job(crate::jobs::OP_APPLY_RECOVERY_POINT, params, &crate::jobs::APPLY_TASKS))
                .await?
        }
        Operation::FailoverCancel => {
            let params = JobInput::of(&crate::jobs::ItemParams { item: it.id });
            st.jobs.submit(&st, new_job(crate::jobs::OP_FAILOVER_CANCEL, params, &crate::jobs::CANCEL_TASKS)).await?
        }
        Operation::ReProtect => {
            crate::replication::apply_operation(&st, v.id, it.id, Operation::ReProtect).await?;
            let params = JobInput::of(&crate::jobs::ReProtectParams {
                item: it.id,
                original: it.source.clone(),
                active: it.target.clone(),
            });
            st.jobs.submit(&st, new_job(crate::jobs::OP_REPROTECT, params, &crate::jobs::REPROTECT_TASKS)).await?
        }
        Operation::RepairReplication => {
            let params = JobInput::of(&crate::jobs::ItemParams { item: it.id });
            st.jobs.submit(&st, new_job(crate::jobs::OP_REPAIR_REPLICATION, params, &crate::jobs::REPAIR_TASKS)).await?
        }
        Operation::PauseReplication => {
            let params = JobInput::of(&crate::jobs::ItemParams { item: it.id });
            st.jobs.submit(&st, new_job(crate::jobs::OP_PAUSE_REPLICATION, params, &crate::jobs::PAUSE_TASKS)).await?
        }
        Operation::ResumeReplication => {
            let params = JobInput::of(&crate::jobs::ItemParams { item: it.id });
            st.jobs.submit(&st, new_job(crate::jobs::OP_RESUME_REPLICATION, params, &crate::jobs::RESUME_TASKS)).await?
        }
        Operation::ImportInitialReplica => {
            let import_path = match req.import_path.clone() {
                Some(p) => p,
                None => match crate::jobs::load_policy(&st, v.id, it.policy)
                    .await
                    .map_err(|e| ApiFailure::with(StatusCode::NOT_FOUND, e))?
                    .0
                    .spec
                    .initial_replication
                {
                    ferry_types::policy::InitialReplication::Offline { import_path, .. } => import_path,
                    _ => {
                        return Err(ApiFailure::new(
                            StatusCode::BAD_REQUEST,
                            "ImportPathRequired",
                            "The policy has no offline import path; give importPath",
                        ))
                    }
                },
            };
            ferry_core::paths::validate_absolute_path("importPath", &import_path).map_err(core_err)?;
            let params = JobInput::of(&crate::jobs::ImportParams { item: it.id, import_path });
            st.jobs.submit(&st, new_job(crate::jobs::OP_IMPORT_INITIAL, params, &crate::jobs::IMPORT_TASKS)).await?
        }
        Operation::DisableProtection => {
            let params = JobInput::of(&crate::jobs::ItemParams { item: it.id });
            st.jobs
                .submit(&st, new_job(crate::jobs::OP_DISABLE_PROTECTION, params, &crate::jobs::DISABLE_TASKS))
                .await?
        }
    };
    Ok((StatusCode::ACCEPTED, Json(job)))
}
