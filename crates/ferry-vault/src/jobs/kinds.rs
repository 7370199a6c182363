//! The operations the job engine knows, one [`JobKind`] each.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_store::DocKind;
use ferry_types::mapping::ContainerMapping;
use ferry_types::policy::Policy;
use ferry_types::site_protocol::{CommandResult, PairRole, SiteCommand, VmAction};
use ferry_types::ApiError;
use uuid::Uuid;

use super::ctx::JobCtx;
use crate::state::AppState;

pub const OP_CONFIGURE_PAIR: &str = "ConfigureCloudPair";
pub const OP_REMOVE_PAIR: &str = "RemoveCloudPair";
pub const OP_UPDATE_POLICY: &str = "UpdatePolicy";
pub const OP_VM_ACTION: &str = "VmAction";

#[async_trait::async_trait]
pub trait JobKind: Send + Sync {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError>;
}

pub fn registry() -> HashMap<&'static str, Arc<dyn JobKind>> {
    let mut m: HashMap<&'static str, Arc<dyn JobKind>> = HashMap::new();
    m.insert(OP_CONFIGURE_PAIR, Arc::new(ConfigurePair));
    m.insert(OP_REMOVE_PAIR, Arc::new(RemovePair));
    m.insert(OP_UPDATE_POLICY, Arc::new(UpdatePolicy));
    m.insert(OP_VM_ACTION, Arc::new(VmActionJob));
    m.insert(OP_ENABLE_PROTECTION, Arc::new(EnableProtectionJob));
    super::failover::register(&mut m);
    super::offline::register(&mut m);
    super::repair::register(&mut m);
    super::verify::register(&mut m);
    super::point_image::register(&mut m);
    super::capacity::register(&mut m);
    m
}

pub(crate) fn store_err(e: ferry_store::Error) -> ApiError {
    ApiError::new("StoreError", e.to_string())
}

pub(crate) async fn load_mapping(state: &AppState, vault: Uuid, id: Uuid) -> Result<ContainerMapping, ApiError> {
    state
        .store
        .get_doc::<ContainerMapping>(DocKind::ContainerMapping, vault, &id.to_string())
        .await
        .map_err(store_err)?
        .map(|d| d.body)
        .ok_or_else(|| ApiError::new("NotFound", format!("Cloud pair {id} no longer exists")))
}

pub(crate) async fn load_policy(state: &AppState, vault: Uuid, id: Uuid) -> Result<(Policy, i64), ApiError> {
    state
        .store
        .get_doc::<Policy>(DocKind::Policy, vault, &id.to_string())
        .await
        .map_err(store_err)?
        .map(|d| (d.body, d.version))
        .ok_or_else(|| ApiError::new("NotFound", format!("Policy {id} no longer exists")))
}

pub(crate) fn check(result: CommandResult, what: &str) -> Result<(), ApiError> {
    if result.ok {
        return Ok(());
    }
    Err(result.error.unwrap_or_else(|| ApiError::new("SiteCommandFailed", format!("{what} failed on the site"))))
}

/// Send both sites their side of a pair (create or policy update).
async fn configure_sides(ctx: &mut JobCtx, mapping_id: Uuid, key: &str) -> Result<(), ApiError> {
    let vault = ctx.job().vault_id;
    for role in [PairRole::Source, PairRole::Target] {
        let task = match role {
            PairRole::Source => format!("Configure source site ({key})"),
            PairRole::Target => format!("Configure target site ({key})"),
        };
        let key = format!("{key}/{role:?}");
        ctx.task(&task, |state, job| async move {
            let mapping = load_mapping(&state, vault, mapping_id).await?;
            let (policy, version) = load_policy(&state, vault, mapping.policy).await?;
            let fabric = match role {
                PairRole::Source => mapping.source.fabric,
                PairRole::Target => mapping.target.fabric,
            };
            let cmd = SiteCommand::ConfigurePair {
                mapping: mapping.id,
                role,
                source_cloud: mapping.source.id.clone(),
                target_cloud: mapping.target.id.clone(),
                policy_id: policy.id,
                policy_version: version,
                policy: policy.spec.clone(),
            };
            check(JobCtx::site_command(&state, &job, fabric, &key, cmd).await?, "Configuring the cloud pair")
        })
        .await?;
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct PairParams {
    pub mapping: Uuid,
}

struct ConfigurePair;

#[async_trait::async_trait]
impl JobKind for ConfigurePair {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: PairParams = ctx.params()?;
        configure_sides(ctx, p.mapping, "pair").await
    }
}

struct RemovePair;

#[async_trait::async_trait]
impl JobKind for RemovePair {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: PairParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let mapping = load_mapping(&ctx.state, vault, p.mapping).await?;
        for (name, fabric) in
            [("Remove from source site", mapping.source.fabric), ("Remove from target site", mapping.target.fabric)]
        {
            ctx.task(name, |state, job| async move {
                let r =
                    JobCtx::site_command(&state, &job, fabric, name, SiteCommand::RemovePair { mapping: p.mapping })
                        .await?;
                check(r, "Removing the cloud pair")
            })
            .await?;
        }
        ctx.task("Delete cloud pair", |state, _job| async move {
            state
                .store
                .delete_doc(DocKind::ContainerMapping, vault, &p.mapping.to_string())
                .await
                .map_err(store_err)?;
            Ok(())
        })
        .await
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct PolicyParams {
    pub policy: Uuid,
    pub version: i64,
}

struct UpdatePolicy;

#[async_trait::async_trait]
impl JobKind for UpdatePolicy {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: PolicyParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let mappings =
            ctx.state.store.all_docs::<ContainerMapping>(DocKind::ContainerMapping, vault).await.map_err(store_err)?;
        for m in mappings.into_iter().filter(|m| m.body.policy == p.policy) {
            let key = format!("mapping {} v{}", m.body.id, p.version);
            configure_sides(ctx, m.body.id, &key).await?;
        }
        Ok(())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct VmActionParams {
    pub fabric: Uuid,
    pub host: String,
    pub action: VmAction,
}

struct VmActionJob;

#[async_trait::async_trait]
impl JobKind for VmActionJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: VmActionParams = ctx.params()?;
        let cmd = SiteCommand::Vm { host: p.host.clone(), action: p.action.clone() };
        let fabric = p.fabric;
        ctx.task_with_output("Run on host", |state, job| async move {
            let r = JobCtx::site_command(&state, &job, fabric, "vm", cmd).await?;
            let output = r.output.clone();
            check(r, "The VM action")?;
            Ok(output)
        })
        .await
    }
}

pub const OP_ENABLE_PROTECTION: &str = "EnableProtection";
pub const OP_FINALIZE_PROTECTION: &str = "FinalizeProtection";
pub const ENABLE_TASKS: [&str; 3] =
    ["Check prerequisites", "Prepare replica on target host", "Start initial replication"];

#[derive(serde::Serialize, serde::Deserialize)]
pub struct ItemParams {
    pub item: Uuid,
}

/// The vault CA names host certificates `host-<fabric>-<host>`.
pub fn host_cn(fabric: Uuid, host: &str) -> String {
    format!("host-{fabric}-{host}")
}

pub(crate) async fn load_item(
    state: &AppState,
    vault: Uuid,
    id: Uuid,
) -> Result<ferry_types::protection::ProtectedItem, ApiError> {
    state
        .store
        .get_doc::<ferry_types::protection::ProtectedItem>(DocKind::ProtectedItem, vault, &id.to_string())
        .await
        .map_err(store_err)?
        .map(|d| d.body)
        .ok_or_else(|| ApiError::new("NotFound", format!("Protected item {id} no longer exists")))
}

pub(crate) async fn load_fabric(
    state: &AppState,
    vault: Uuid,
    id: Uuid,
) -> Result<ferry_types::fabric::Fabric, ApiError> {
    state
        .store
        .get_doc::<ferry_types::fabric::Fabric>(DocKind::Fabric, vault, &id.to_string())
        .await
        .map_err(store_err)?
        .map(|d| d.body)
        .ok_or_else(|| ApiError::new("NotFound", format!("Site {id} is no longer registered")))
}

/// REP-7: a VM's identity across protections, by which its target host finds a replica it kept.
pub fn replica_origin(item: &ferry_types::protection::ProtectedItem) -> String {
    format!("{}/{}", item.source.fabric, item.vm_id)
}

/// REP-7: what the target host's answer to "prepare the replica" says it reused, recorded on the
/// item (initial replication then compares hashes) and as events.
async fn record_existing_replica(
    state: &AppState,
    item: &ferry_types::protection::ProtectedItem,
    out: &serde_json::Value,
) -> Result<(), ApiError> {
    use ferry_types::event::Severity;
    use ferry_types::site_protocol::{ExistingReplica, ExistingReplicaSource};
    let vault = item.vault_id;
    for why in out["existing_replica_refused"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        state
            .event(
                vault,
                Severity::Warning,
                "ExistingReplicaNotUsed",
                &format!("A replica of {} on {} was not reused: {why}", item.name, item.target.host_name),
                Some(item.target.fabric),
                Some(&item.id.to_string()),
            )
            .await;
    }
    let existing: Option<ExistingReplica> = match out.get("existing_replica") {
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
            ApiError::new("SiteProtocolError", format!("The host's replica answer is unreadable: {e}"))
        })?),
        None => None,
    };
    let Some(e) = existing else { return Ok(()) };
    if item.existing_replica.as_ref() == Some(&e) {
        return Ok(()); // the task ran again (vault restart): already recorded
    }
    let what = match e.source {
        ExistingReplicaSource::KeptReplica => "a replica of it kept",
        ExistingReplicaSource::ExistingImages => "the existing images given",
    };
    let latest = e.latest.map(|t| format!(", latest {}", t.format("%Y-%m-%d %H:%M:%S UTC"))).unwrap_or_default();
    state
        .event(
            vault,
            Severity::Info,
            "ExistingReplicaReused",
            &format!(
                "{} starts from {what} on {} ({} recovery point(s){latest}); only the differences are sent",
                item.name, item.target.host_name, e.points
            ),
            Some(item.target.fabric),
            Some(&item.id.to_string()),
        )
        .await;
    crate::replication::update_item(state, vault, item.id, |i| {
        if let Some(loc) = &e.location {
            for d in &mut i.disks {
                d.location = loc.clone();
                d.placement = "KeptReplica".into();
            }
        }
        i.existing_replica = Some(e.clone());
    })
    .await
    .map(|_| ())
}

/// Enable protection (REP-1): check, prepare the replica on the target host, start initial
/// replication on the source host. Finalize protection follows when initial replication ends.
pub struct EnableProtectionJob;

#[async_trait::async_trait]
impl JobKind for EnableProtectionJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: ItemParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        ctx.task(ENABLE_TASKS[0], |state, _job| async move {
            let item = load_item(&state, vault, p.item).await?;
            let source = load_fabric(&state, vault, item.source.fabric).await?;
            let target = load_fabric(&state, vault, item.target.fabric).await?;
            if !source.inventory.vms.iter().any(|v| v.id == item.vm_id) {
                return Err(ApiError::new(
                    "VmNotFound",
                    format!("VM {} is no longer in the inventory of {}", item.name, source.name),
                ));
            }
            for (f, h) in [(&source, &item.source.host), (&target, &item.target.host)] {
                let host = f
                    .inventory
                    .host(h)
                    .ok_or_else(|| ApiError::new("HostNotFound", format!("Host {h} is not in {}", f.name)))?;
                if !host.connected {
                    return Err(ApiError::new(
                        "HostNotConnected",
                        format!("Host {} of {} is not connected", host.name, f.name),
                    )
                    .recommend("Check the host agent and its site manager, then restart the job"));
                }
            }
            let th =
                target.inventory.host(&item.target.host).map(|h| h.replication_address.clone()).unwrap_or_default();
            if th.is_empty() {
                return Err(ApiError::new(
                    "ReplicationListenerDown",
                    format!("Host {} does not receive replication", item.target.host_name),
                ));
            }
            if item.definition.is_none() {
                // The VM's definition (CPU, memory, boot, NICs) for VMs started at the recovery site.
                let cmd = SiteCommand::Vm {
                    host: item.source.host.clone(),
                    action: VmAction::Status { vm: item.name.clone() },
                };
                let r = JobCtx::site_command(&state, &_job, item.source.fabric, "definition", cmd).await?;
                let out = r.output.clone();
                check(r, "Reading the VM definition")?;
                let def: ferry_types::fabric::VmDefinition = serde_json::from_value(out["definition"].clone())
                    .map_err(|e| ApiError::new("SiteProtocolError", format!("The VM definition is unreadable: {e}")))?;
                crate::replication::update_item(&state, vault, item.id, |i| i.definition = Some(def.clone())).await?;
            }
            Ok(())
        })
        .await?;
        ctx.task(ENABLE_TASKS[1], |state, job| async move {
            let item = load_item(&state, vault, p.item).await?;
            let (policy, policy_version) = load_policy(&state, vault, item.policy).await?;
            let replica = ferry_types::site_protocol::ReplicaSpec {
                retention_hours: policy.spec.recovery_point_retention_hours,
                mapping: Some(item.container_mapping),
                policy_version,
                item: item.id,
                vm_name: item.name.clone(),
                disks: item.disks.iter().map(|d| (d.target.clone(), d.virtual_size, d.location.clone())).collect(),
                source_host_cn: host_cn(item.source.fabric, &item.source.host),
                origin: Some(replica_origin(&item)),
                existing_disks: item
                    .disks
                    .iter()
                    .filter_map(|d| d.existing_image.clone().map(|p| (d.target.clone(), p)))
                    .collect(),
            };
            let cmd = SiteCommand::PrepareReplica { host: item.target.host.clone(), replica };
            let r = JobCtx::site_command(&state, &job, item.target.fabric, "prepare", cmd).await?;
            let out = r.output.clone();
            check(r, "Preparing the replica")?;
            record_existing_replica(&state, &item, &out).await
        })
        .await?;
        ctx.task(ENABLE_TASKS[2], |state, job| async move {
            let item = load_item(&state, vault, p.item).await?;
            let target = load_fabric(&state, vault, item.target.fabric).await?;
            let (policy, policy_version) = load_policy(&state, vault, item.policy).await?;
            let address =
                target.inventory.host(&item.target.host).map(|h| h.replication_address.clone()).unwrap_or_default();
            let replication = ferry_types::site_protocol::ReplicationSpec {
                item: item.id,
                vm_name: item.name.clone(),
                disks: item.disks.iter().map(|d| d.target.clone()).collect(),
                target_address: address,
                target_host_cn: host_cn(item.target.fabric, &item.target.host),
                target_host_name: item.target.host_name.clone(),
                policy: policy.spec,
                policy_version,
                mapping: Some(item.container_mapping),
                // REP-7: a replica that already holds the VM's data gets only the differences.
                initial: match item.existing_replica {
                    Some(_) => ferry_types::site_protocol::InitialReplication::CompareHashes,
                    None => ferry_types::site_protocol::InitialReplication::Full,
                },
                offline_key: None,
            };
            let mut replication = replication;
            if matches!(replication.policy.initial_replication, ferry_types::policy::InitialReplication::Offline { .. }) {
                replication.offline_key = Some(super::offline::offline_key(&state, vault, item.id).await?);
            }
            // POL-8: a scheduled initial replication waits on the source host until its time.
            let waits = matches!(&replication.policy.initial_replication,
                ferry_types::policy::InitialReplication::OverNetworkScheduled { start_at } if *start_at > state.clock.now());
            let cmd = SiteCommand::StartReplication { host: item.source.host.clone(), replication };
            check(JobCtx::site_command(&state, &job, item.source.fabric, "start", cmd).await?, "Starting replication")?;
            if waits {
                return Ok(());
            }
            match crate::replication::apply_event(&state, vault, item.id, ferry_core::state::Event::InitialReplicationStarted).await {
                // The host's report moved it on already (a quick initial copy).
                Err(e) if e.code == "InvalidStateTransition" => Ok(()),
                r => r.map(|_| ()),
            }
        })
        .await
    }
}
