//! Jobs after a failover and before the next one: change the recovery point and cancel (FO-4,
//! FO-7), and reverse replication (re-protect, FO-5), which with a planned failover makes the
//! failback of FO-6.
//!
//! Re-protect turns the item around. The original VM (off) becomes the base of a replica on its
//! own host: its disks are taken into that host's replica store. The item's sides are swapped
//! (`source` is now the recovery site), its NICs follow the failback rules of NET-6, and the
//! recovered VM starts replicating back. After a planned failover the original disks equal the
//! failover point, so only what the recovered VM wrote since travels (QEMU's own record of the
//! overlay's top layer); otherwise block hashes are compared and only differing blocks are sent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ferry_core::network::{failback_nic, FailbackNic, ReplicaNicAfterFailover};
use ferry_store::DocKind;
use ferry_types::fabric::Fabric;
use ferry_types::mapping::{NetworkMapping, SiteObjectRef};
use ferry_types::protection::{
    Direction, FailoverRecord, ItemSide, ProtectedItem, ReplicaDisk, ReplicaNic, ReplicationStats,
};
use ferry_types::site_protocol::{
    InitialReplication, ReplicaSpec, ReplicationAction, ReplicationSpec, SiteCommand, VmAction,
};
use ferry_types::ApiError;
use uuid::Uuid;

use super::ctx::JobCtx;
use super::failover::{recover, stop_and_delete_vm, CleanupParams, REIP_TASK};
use super::kinds::{check, host_cn, load_fabric, load_item, load_policy, store_err, JobKind};
use crate::state::AppState;

pub const OP_APPLY_RECOVERY_POINT: &str = "ApplyRecoveryPoint";
pub const OP_FAILOVER_CANCEL: &str = "FailoverCancel";
pub const OP_REPROTECT: &str = "ReProtect";

pub const APPLY_TASKS: [&str; 6] = [
    "Stop the recovered VM",
    "Release the failover disks",
    "Prepare the failover disks",
    "Create the VM at the recovery site",
    "Start the VM at the recovery site",
    REIP_TASK,
];
pub const CANCEL_TASKS: [&str; 4] =
    ["Stop the recovered VM", "Release the failover disks", "Start the source VM", "Resume replication"];
pub const REPROTECT_TASKS: [&str; 4] = [
    "Turn off the original VM",
    "Prepare the original site to receive",
    "Reverse the direction",
    "Start replication from the active site",
];

/// How long a job waits for the original site before it reports it unreachable.
const ORIGINAL_SITE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_APPLY_RECOVERY_POINT, Arc::new(ApplyRecoveryPointJob));
    m.insert(OP_FAILOVER_CANCEL, Arc::new(FailoverCancelJob));
    m.insert(OP_REPROTECT, Arc::new(ReProtectJob));
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct ApplyParams {
    pub item: Uuid,
    pub point: String,
}

/// FO-4: before commit, restart the recovered VM on another recovery point.
struct ApplyRecoveryPointJob;

#[async_trait::async_trait]
impl JobKind for ApplyRecoveryPointJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: ApplyParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let (t1, vm, fo) = (item.target.clone(), item.name.clone(), item.failover.clone());
        ctx.task(APPLY_TASKS[0], |state, job| async move { remove_recovered_vm(&state, &job, t1, vm, fo).await })
            .await?;
        let t2 = item.target.clone();
        ctx.task(APPLY_TASKS[1], |state, job| async move {
            let cmd =
                SiteCommand::Replication { host: t2.host, action: ReplicationAction::ReleaseFailover { item: p.item } };
            check(JobCtx::site_command(&state, &job, t2.fabric, "release", cmd).await?, "Releasing the failover disks")
        })
        .await?;
        let tasks = [APPLY_TASKS[2], APPLY_TASKS[3], APPLY_TASKS[4], APPLY_TASKS[5]];
        recover(ctx, p.item, item.target.clone(), item.name.clone(), p.point.clone(), false, tasks).await
    }
}

/// FO-4 / FO-7: undo a failover that is not committed: the recovered VM goes, the replica
/// accepts replication again, the source VM starts and replication resumes where it stopped.
struct FailoverCancelJob;

#[async_trait::async_trait]
impl JobKind for FailoverCancelJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: CleanupParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let (t1, vm, fo) = (item.target.clone(), item.name.clone(), item.failover.clone());
        ctx.task(CANCEL_TASKS[0], |state, job| async move { remove_recovered_vm(&state, &job, t1, vm, fo).await })
            .await?;
        let t2 = item.target.clone();
        ctx.task(CANCEL_TASKS[1], |state, job| async move {
            let cmd =
                SiteCommand::Replication { host: t2.host, action: ReplicationAction::ReleaseFailover { item: p.item } };
            check(JobCtx::site_command(&state, &job, t2.fabric, "release", cmd).await?, "Releasing the failover disks")
        })
        .await?;
        let (s1, vm) = (item.source.clone(), item.name.clone());
        ctx.task(CANCEL_TASKS[2], |state, job| async move {
            let status = SiteCommand::Vm { host: s1.host.clone(), action: VmAction::Status { vm: vm.clone() } };
            let r = JobCtx::site_command_within(&state, &job, s1.fabric, "status", status, ORIGINAL_SITE_WAIT).await?;
            let out = r.output.clone();
            check(r, "Reading the source VM")?;
            if out["power_state"] == "Running" {
                return Ok(());
            }
            let start = SiteCommand::Vm { host: s1.host, action: VmAction::Start { vm } };
            check(JobCtx::site_command(&state, &job, s1.fabric, "start", start).await?, "Starting the source VM")
        })
        .await?;
        ctx.task(CANCEL_TASKS[3], |state, job| async move {
            let item = load_item(&state, vault, p.item).await?;
            let spec = replication_spec(&state, vault, &item, InitialReplication::Full).await?;
            let cmd = SiteCommand::StartReplication { host: item.source.host.clone(), replication: spec };
            check(
                JobCtx::site_command(&state, &job, item.source.fabric, "resume", cmd).await?,
                "Resuming replication",
            )?;
            let cancel = ferry_core::state::Event::Operation(ferry_types::protection::Operation::FailoverCancel);
            crate::replication::apply_event_with(&state, vault, p.item, cancel, |i| i.failover = None).await.map(|_| ())
        })
        .await
    }
}

/// Stop and delete the VM this item's failover created on the recovery host. A VM of that name
/// whose disks are not the failover disks is someone else's (a failover that failed to create
/// its VM because the name was taken): it is left alone.
async fn remove_recovered_vm(
    state: &AppState,
    job: &ferry_types::job::Job,
    side: ItemSide,
    vm: String,
    failover: Option<FailoverRecord>,
) -> Result<(), ApiError> {
    let Some(failover) = failover else { return Ok(()) };
    let status = SiteCommand::Vm { host: side.host.clone(), action: VmAction::Status { vm: vm.clone() } };
    let r = JobCtx::site_command(state, job, side.fabric, "inspect", status).await?;
    if !r.ok {
        return match r.error.as_ref().map(|e| e.code.as_str()) {
            Some("VmNotFound") => Ok(()),
            _ => check(r, "Reading the recovered VM"),
        };
    }
    let ours = r.output["definition"]["disks"].as_array().is_some_and(|disks| {
        !disks.is_empty()
            && disks.iter().all(|d| failover.disks.iter().any(|(_, p)| d["path"].as_str() == Some(p.as_str())))
    });
    if !ours {
        tracing::warn!(vm = %vm, "a VM of that name exists on the recovery host but is not the recovered VM; left alone");
        return Ok(());
    }
    stop_and_delete_vm(state, job, side.fabric, side.host, vm, "the recovered VM").await
}

/// What the source host of `item` needs to replicate it to its target host.
pub(super) async fn replication_spec(
    state: &AppState,
    vault: Uuid,
    item: &ProtectedItem,
    initial: InitialReplication,
) -> Result<ReplicationSpec, ApiError> {
    let target = load_fabric(state, vault, item.target.fabric).await?;
    let (policy, policy_version) = load_policy(state, vault, item.policy).await?;
    let address = target.inventory.host(&item.target.host).map(|h| h.replication_address.clone()).unwrap_or_default();
    if address.is_empty() {
        return Err(ApiError::new(
            "ReplicationListenerDown",
            format!("Host {} does not receive replication", item.target.host_name),
        ));
    }
    let offline_key = match policy.spec.initial_replication {
        ferry_types::policy::InitialReplication::Offline { .. } => {
            Some(super::offline::offline_key(state, vault, item.id).await?)
        }
        _ => None,
    };
    Ok(ReplicationSpec {
        item: item.id,
        vm_name: item.name.clone(),
        disks: item.disks.iter().map(|d| d.target.clone()).collect(),
        target_address: address,
        target_host_cn: host_cn(item.target.fabric, &item.target.host),
        target_host_name: item.target.host_name.clone(),
        policy: policy.spec,
        policy_version,
        mapping: Some(item.container_mapping),
        initial,
        offline_key,
    })
}

/// Input of a re-protect: the item and its sides at the time of the request.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ReProtectParams {
    pub item: Uuid,
    /// The side the VM ran on before the failover (it receives now).
    pub original: ItemSide,
    /// The side the VM runs on now (it replicates now).
    pub active: ItemSide,
}

/// FO-5: replicate from the active side back to the original side.
struct ReProtectJob;

#[async_trait::async_trait]
impl JobKind for ReProtectJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: ReProtectParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        // The sides as they were when the operation was requested (the third task swaps them).
        let (original, active) = (p.original.clone(), p.active.clone());
        let (o1, vm) = (original.clone(), item.name.clone());
        ctx.task(REPROTECT_TASKS[0], |state, job| async move {
            let status = SiteCommand::Vm { host: o1.host.clone(), action: VmAction::Status { vm: vm.clone() } };
            let r = JobCtx::site_command_within(&state, &job, o1.fabric, "status", status, ORIGINAL_SITE_WAIT)
                .await
                .map_err(|e| unreachable_original(e, &o1))?;
            if r.ok && r.output["power_state"] == "Running" {
                let stop = SiteCommand::Vm { host: o1.host, action: VmAction::Stop { vm } };
                check(
                    JobCtx::site_command(&state, &job, o1.fabric, "stop", stop).await?,
                    "Turning off the original VM",
                )?;
            }
            Ok(())
        })
        .await?;
        let (o2, a2) = (original.clone(), active.clone());
        ctx.task(REPROTECT_TASKS[1], |state, job| async move {
            let item = load_item(&state, vault, p.item).await?;
            let site = load_fabric(&state, vault, o2.fabric).await?;
            let (policy, policy_version) = load_policy(&state, vault, item.policy).await?;
            let replica = ReplicaSpec {
                mapping: Some(item.container_mapping),
                policy_version,
                item: item.id,
                vm_name: item.name.clone(),
                disks: item
                    .disks
                    .iter()
                    .map(|d| (d.target.clone(), d.virtual_size, location_of(&site, &o2.host, &d.source_path)))
                    .collect(),
                source_host_cn: host_cn(a2.fabric, &a2.host),
                retention_hours: policy.spec.recovery_point_retention_hours,
                // REP-7: once reversed, the replica is the one of the VM on the active site; a
                // disable that keeps it and a later enable find it by this origin.
                origin: Some(format!("{}/{}", a2.fabric, item.vm_id)),
                existing_disks: vec![],
            };
            let cmd = SiteCommand::Replication {
                host: o2.host,
                action: ReplicationAction::AdoptVm { vm: item.name.clone(), replica },
            };
            check(JobCtx::site_command(&state, &job, o2.fabric, "adopt", cmd).await?, "Taking the original disks")
        })
        .await?;
        let (o3, a3) = (original.clone(), active.clone());
        ctx.task(REPROTECT_TASKS[2], |state, _job| async move {
            let original_site = load_fabric(&state, vault, o3.fabric).await?;
            let active_site = load_fabric(&state, vault, a3.fabric).await?;
            let mappings: Vec<NetworkMapping> = state
                .store
                .all_docs::<NetworkMapping>(DocKind::NetworkMapping, vault)
                .await
                .map_err(store_err)?
                .into_iter()
                .map(|d| d.body)
                .collect();
            let item = load_item(&state, vault, p.item).await?;
            if item.source == a3 {
                return Ok(()); // already reversed (the task is re-run after a vault restart)
            }
            let reversed = reversed_item(&item, &original_site, &active_site, &mappings);
            // The state stays ReverseReplicating (re-protect's own event, applied before the job).
            crate::replication::update_item(&state, vault, p.item, |i| {
                *i = ProtectedItem { state: i.state, ..reversed.clone() }
            })
            .await
            .map(|_| ())
        })
        .await?;
        ctx.task(REPROTECT_TASKS[3], |state, job| async move {
            let item = load_item(&state, vault, p.item).await?;
            let initial = match &item.failover {
                Some(f) if f.exact() => InitialReplication::SinceFailover,
                _ => InitialReplication::CompareHashes,
            };
            let spec = replication_spec(&state, vault, &item, initial).await?;
            let cmd = SiteCommand::StartReplication { host: item.source.host.clone(), replication: spec };
            check(
                JobCtx::site_command(&state, &job, item.source.fabric, "start", cmd).await?,
                "Starting reverse replication",
            )
        })
        .await
    }
}

fn unreachable_original(e: ApiError, side: &ItemSide) -> ApiError {
    ApiError::new(
        "OriginalSiteUnreachable",
        format!("The original host {} does not answer: {}", side.host_name, e.message),
    )
    .recommend("Bring the original site back (its site manager and host agent), then restart the job")
}

/// The storage location of `host` that holds `path` (the deepest one), else the host's default
/// replica location, else none (the host's own replica directory).
fn location_of(site: &Fabric, host: &str, path: &str) -> String {
    let Some(h) = site.inventory.host(host) else { return String::new() };
    h.storage_locations
        .iter()
        .filter(|l| Path::new(path).starts_with(&l.path))
        .max_by_key(|l| l.path.len())
        .or_else(|| h.storage_locations.iter().find(|l| l.default_replica))
        .map(|l| l.path.clone())
        .unwrap_or_default()
}

/// The item replicating the other way: sides swapped, disks on the original host, NICs per the
/// failback rules (NET-6), statistics and points reset (the new replica has its own).
pub(super) fn reversed_item(
    item: &ProtectedItem,
    original_site: &Fabric,
    active_site: &Fabric,
    mappings: &[NetworkMapping],
) -> ProtectedItem {
    let mut r = item.clone();
    r.source = item.target.clone();
    r.target = item.source.clone();
    r.direction = match item.direction {
        Direction::Forward => Direction::Reverse,
        Direction::Reverse => Direction::Forward,
    };
    r.stats = ReplicationStats::default();
    r.recovery_points.clear();
    r.existing_replica = None;
    r.test_failover = None;
    let failover_paths: HashMap<&str, &str> = item
        .failover
        .as_ref()
        .map(|f| f.disks.iter().map(|(t, p)| (t.as_str(), p.as_str())).collect())
        .unwrap_or_default();
    r.disks = item
        .disks
        .iter()
        .map(|d| ReplicaDisk {
            target: d.target.clone(),
            source_path: failover_paths.get(d.target.as_str()).map(|p| p.to_string()).unwrap_or_default(),
            virtual_size: d.virtual_size,
            location: location_of(original_site, &item.source.host, &d.source_path),
            placement: "the original VM's storage location (reverse replication)".into(),
            existing_image: None,
        })
        .collect();
    let recovered = active_site.inventory.vm(&item.vm_id);
    let def_nics = item.definition.as_ref().map(|d| d.nics.clone()).unwrap_or_default();
    r.nics = item
        .nics
        .iter()
        .map(|n| {
            let now = recovered.and_then(|vm| vm.nics.iter().find(|x| x.mac.eq_ignore_ascii_case(&n.mac)));
            let current = now.and_then(|x| x.vm_network.clone());
            let after = match (&n.target_network, &current) {
                (_, None) | (None, _) => ReplicaNicAfterFailover::Disconnected,
                (Some(at), Some(c)) if at == c => ReplicaNicAfterFailover::Unchanged,
                (Some(_), Some(c)) => {
                    ReplicaNicAfterFailover::MovedTo(SiteObjectRef { fabric: active_site.id, id: c.clone() })
                }
            };
            let back = match (&n.source_network, &n.target_network) {
                (Some(orig), Some(at)) => failback_nic(
                    &SiteObjectRef { fabric: original_site.id, id: orig.clone() },
                    &SiteObjectRef { fabric: active_site.id, id: at.clone() },
                    &after,
                    mappings,
                ),
                _ => FailbackNic::Disconnected,
            };
            let target_network = match back {
                FailbackNic::StayOnOriginal => n.source_network.clone(),
                FailbackNic::Connect(to) => Some(to.id),
                FailbackNic::Disconnected => None,
            };
            let original = def_nics.iter().find(|d| d.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&n.mac)));
            ReplicaNic {
                mac: n.mac.clone(),
                source_network: current,
                subnet: target_network.as_ref().and(original.and_then(|d| d.subnet.clone())),
                ip: target_network.as_ref().and(original.and_then(|d| d.ip.clone())),
                target_network,
            }
        })
        .collect();
    r
}
