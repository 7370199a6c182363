//! Jobs on protected items: test failover and its cleanup (FO-1), disable protection (REP-8,
//! POL-7).
//!
//! A test failover boots `<vm>-test` on the recovery host from throwaway overlays on the chosen
//! recovery point (the point stays in use, so retention never merges it), while replication
//! continues. The job then waits at "Complete testing" until an operator runs the cleanup, which
//! deletes the test VM, its overlays and any network created for it, and records the notes.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_store::DocKind;
use ferry_types::fabric::{NicDefinition, VmDefinition};
use ferry_types::job::JobStatus;
use ferry_types::protection::{CompletedTest, TestFailoverInfo, TestNetwork};
use ferry_types::site_protocol::{GuestNicAddress, ReplicationAction, SiteCommand, VmAction};
use ferry_types::ApiError;
use uuid::Uuid;

use super::ctx::JobCtx;
use super::kinds::{check, load_item, load_policy, store_err, JobKind};

pub const OP_TEST_FAILOVER: &str = "TestFailover";
pub const OP_TEST_FAILOVER_CLEANUP: &str = "TestFailoverCleanup";
pub const OP_DISABLE_PROTECTION: &str = "DisableProtection";

pub const TEST_TASKS: [&str; 4] = ["Prepare test disks", "Create test VM", "Start test VM", "Complete testing"];
pub const CLEANUP_TASKS: [&str; 4] = ["Delete test VM", "Release test disks", "Delete test network", "Record notes"];
pub const DISABLE_TASKS: [&str; 3] =
    ["Stop replication on the source host", "Handle the replica", "Remove protected item"];

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_TEST_FAILOVER, Arc::new(TestFailoverJob));
    m.insert(OP_TEST_FAILOVER_CLEANUP, Arc::new(TestFailoverCleanupJob));
    m.insert(OP_DISABLE_PROTECTION, Arc::new(DisableProtectionJob));
    register_failover(m);
    register_unplanned(m);
    super::reverse::register(m);
    super::pause::register(m);
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct TestParams {
    pub item: Uuid,
    pub point: String,
    pub network: TestNetwork,
    #[serde(default)]
    pub bridge: Option<String>,
}

/// The test VM: the source VM's definition on the overlays, new identity, NICs per option.
pub(crate) fn test_definition(
    def: &VmDefinition,
    disks: &serde_json::Value,
    p: &TestParams,
) -> Result<VmDefinition, ApiError> {
    let mut t = def.clone();
    t.name = format!("{}-test", def.name);
    t.uuid = None;
    for d in &mut t.disks {
        let path = disks
            .as_array()
            .and_then(|a| a.iter().find(|x| x["target"] == d.target.as_str()))
            .and_then(|x| x["path"].as_str())
            .ok_or_else(|| ApiError::new("SiteProtocolError", format!("No test overlay for disk {}", d.target)))?;
        d.path = path.to_string();
        d.format = ferry_types::fabric::DiskFormat::Qcow2;
        d.create_size = None;
    }
    t.disks.retain(|d| !d.excluded);
    t.nics = def
        .nics
        .iter()
        .map(|_| {
            let mut n = NicDefinition {
                mac: None,
                vm_network: None,
                logical_network: None,
                bridge: None,
                subnet: None,
                ip: None,
            };
            match &p.network {
                TestNetwork::None => {}
                TestNetwork::Existing { network } => n.vm_network = Some(network.clone()),
                TestNetwork::Automatic => n.bridge = p.bridge.clone(),
            }
            n
        })
        .collect();
    Ok(t)
}

struct TestFailoverJob;

#[async_trait::async_trait]
impl JobKind for TestFailoverJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: TestParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let (fabric, host) = (item.target.fabric, item.target.host.clone());
        let (h1, point) = (host.clone(), p.point.clone());
        ctx.task_with_output(TEST_TASKS[0], |state, job| async move {
            let cmd =
                SiteCommand::Replication { host: h1, action: ReplicationAction::TestOverlays { item: p.item, point } };
            let r = JobCtx::site_command(&state, &job, fabric, "overlays", cmd).await?;
            let out = r.output.clone();
            check(r, "Preparing the test disks")?;
            record_test_point(&state, vault, p.item, &out).await?;
            Ok(out)
        })
        .await?;
        let def = item
            .definition
            .clone()
            .ok_or_else(|| ApiError::new("NoDefinition", "The VM definition was not recorded"))?;
        let h2 = host.clone();
        ctx.task(TEST_TASKS[1], |state, job| async move {
            let disks = job.params["outputs"][TEST_TASKS[0]]["disks"].clone();
            let t = test_definition(&def, &disks, &p)?;
            let definition = serde_json::to_value(&t).map_err(|e| ApiError::new("InternalError", e.to_string()))?;
            let cmd = SiteCommand::Vm { host: h2, action: VmAction::Create { definition } };
            check(JobCtx::site_command(&state, &job, fabric, "create", cmd).await?, "Creating the test VM")
        })
        .await?;
        let (h3, vm) = (host.clone(), format!("{}-test", item.name));
        ctx.task(TEST_TASKS[2], |state, job| async move {
            let cmd = SiteCommand::Vm { host: h3, action: VmAction::Start { vm } };
            check(JobCtx::site_command(&state, &job, fabric, "start", cmd).await?, "Starting the test VM")
        })
        .await?;
        ctx.wait_for_input(TEST_TASKS[3]).await
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct CleanupParams {
    pub item: Uuid,
    #[serde(default)]
    pub notes: String,
}

struct TestFailoverCleanupJob;

#[async_trait::async_trait]
impl JobKind for TestFailoverCleanupJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: CleanupParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let info =
            item.test_failover.clone().ok_or_else(|| ApiError::new("NoTestFailover", "No test failover is running"))?;
        let (fabric, host) = (item.target.fabric, item.target.host.clone());
        let (h1, vm) = (host.clone(), info.vm_name.clone());
        ctx.task(CLEANUP_TASKS[0], |state, job| async move {
            stop_and_delete_vm(&state, &job, fabric, h1, vm, "the test VM").await
        })
        .await?;
        let h2 = host.clone();
        ctx.task(CLEANUP_TASKS[1], |state, job| async move {
            let cmd = SiteCommand::Replication { host: h2, action: ReplicationAction::ReleaseTest { item: p.item } };
            check(JobCtx::site_command(&state, &job, fabric, "release", cmd).await?, "Releasing the test disks")
        })
        .await?;
        let (h3, bridge) = (host.clone(), info.created_bridge.clone());
        ctx.task(CLEANUP_TASKS[2], |state, job| async move {
            let Some(bridge) = bridge else { return Ok(()) };
            let cmd = SiteCommand::Replication { host: h3, action: ReplicationAction::RemoveTestNetwork { bridge } };
            check(JobCtx::site_command(&state, &job, fabric, "network", cmd).await?, "Deleting the test network")
        })
        .await?;
        let notes = p.notes.clone();
        ctx.task(CLEANUP_TASKS[3], |state, _job| async move {
            let now = state.clock.now();
            crate::replication::update_item(&state, vault, p.item, |i| {
                if let Some(t) = i.test_failover.take() {
                    i.last_test_failover =
                        Some(CompletedTest { at: now, notes: notes.clone(), recovery_point: t.recovery_point });
                }
            })
            .await?;
            // The test failover job ends now that testing is complete.
            if let Some(mut tj) = state.store.get_job(vault, info.job).await.map_err(store_err)? {
                for t in &mut tj.tasks {
                    if t.status == JobStatus::WaitingForInput {
                        t.status = JobStatus::Succeeded;
                        t.ended_at = Some(now);
                    }
                }
                tj.status = JobStatus::Succeeded;
                tj.progress = 100;
                tj.ended_at = Some(now);
                tj.allowed_actions = vec![];
                state.store.update_job(&tj).await.map_err(store_err)?;
            }
            Ok(())
        })
        .await
    }
}

/// Hard-stop and delete a VM's definition (its disks stay: they are overlays the caller
/// releases). A VM that does not exist is not an error.
pub(super) async fn stop_and_delete_vm(
    state: &crate::state::AppState,
    job: &ferry_types::job::Job,
    fabric: Uuid,
    host: String,
    vm: String,
    what: &str,
) -> Result<(), ApiError> {
    let stop = SiteCommand::Vm { host: host.clone(), action: VmAction::Stop { vm: vm.clone() } };
    let r = JobCtx::site_command(state, job, fabric, "stop", stop).await?;
    if !r.ok && r.error.as_ref().is_none_or(|e| e.code != "VmNotFound") {
        return check(r, &format!("Stopping {what}"));
    }
    let del = SiteCommand::Vm { host, action: VmAction::Delete { vm, delete_disks: false } };
    let r = JobCtx::site_command(state, job, fabric, "delete", del).await?;
    if !r.ok && r.error.as_ref().is_some_and(|e| e.code == "VmNotFound") {
        return Ok(());
    }
    check(r, &format!("Deleting {what}"))
}

struct DisableProtectionJob;

#[async_trait::async_trait]
impl JobKind for DisableProtectionJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: CleanupParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let (policy, _) = load_policy(&ctx.state, vault, item.policy).await?;
        let src = item.source.clone();
        ctx.task(DISABLE_TASKS[0], |state, job| async move {
            let cmd = SiteCommand::StopReplication { host: src.host, item: p.item, delete_replica: false };
            check(JobCtx::site_command(&state, &job, src.fabric, "source", cmd).await?, "Stopping replication")
        })
        .await?;
        let tgt = item.target.clone();
        // After a failover the replica's chain is the recovered VM's disk: never delete it then.
        let delete = policy.spec.delete_replica_on_disable && item.failover.is_none();
        ctx.task(DISABLE_TASKS[1], |state, job| async move {
            let cmd = SiteCommand::StopReplication { host: tgt.host, item: p.item, delete_replica: delete };
            check(JobCtx::site_command(&state, &job, tgt.fabric, "target", cmd).await?, "Removing the replica")
        })
        .await?;
        let kept = (!delete).then(|| ferry_types::protection::KeptReplicaRecord {
            origin: super::kinds::replica_origin(&item),
            fabric: item.target.fabric,
            host: item.target.host.clone(),
            host_name: item.target.host_name.clone(),
            kept_at: ctx.state.clock.now(),
        });
        ctx.task(DISABLE_TASKS[2], |state, _job| async move {
            // REP-7: enabling the VM again places it where its replica is kept.
            use ferry_store::Store;
            let mut tx = state.store.begin().await.map_err(store_err)?;
            if let Some(k) = &kept {
                Store::delete_doc_tx(&mut tx, DocKind::KeptReplica, vault, &k.origin).await.map_err(store_err)?;
                Store::put_doc_tx(&mut tx, DocKind::KeptReplica, vault, &k.origin, None, None, k, None)
                    .await
                    .map_err(store_err)?;
            }
            Store::delete_doc_tx(&mut tx, DocKind::ProtectedItem, vault, &p.item.to_string())
                .await
                .map_err(store_err)?;
            Store::commit(tx).await.map_err(store_err)
        })
        .await
    }
}

/// The point the replica host made a test VM's overlays on (it resolves `latest`), recorded
/// on the item's test failover.
pub async fn record_test_point(
    state: &crate::state::AppState,
    vault: Uuid,
    item: Uuid,
    output: &serde_json::Value,
) -> Result<(), ApiError> {
    let Some(used) = output["point"].as_str().filter(|p| !p.is_empty()) else { return Ok(()) };
    crate::replication::update_item(state, vault, item, |i| {
        if let Some(t) = i.test_failover.as_mut() {
            t.recovery_point = used.to_string();
        }
    })
    .await
    .map(|_| ())
}

/// Record a test failover on its item before its job starts (one at a time, FO-1).
pub fn test_info(
    job: Uuid,
    vm_name: String,
    point: String,
    network: TestNetwork,
    bridge: Option<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> TestFailoverInfo {
    TestFailoverInfo { job, vm_name, recovery_point: point, network, created_bridge: bridge, started_at: now }
}

pub const OP_PLANNED_FAILOVER: &str = "PlannedFailover";
pub const OP_FAILOVER_COMMIT: &str = "FailoverCommit";
pub const COMMIT_TASKS: [&str; 2] = ["Discard the other recovery points", "Commit the failover"];
pub const PLANNED_TASKS: [&str; 6] = [
    "Shut down the source VM and send its final changes",
    "Stop replication on the source host",
    "Prepare the failover disks",
    "Create the VM at the recovery site",
    "Start the VM at the recovery site",
    REIP_TASK,
];

/// The last task of every failover: the planned addresses applied inside the guest (NET-4, FO-8).
pub const REIP_TASK: &str = "Apply the addresses inside the guest (re-IP)";

#[derive(serde::Serialize, serde::Deserialize)]
pub struct PlannedParams {
    pub item: Uuid,
    #[serde(default = "default_shutdown")]
    pub shutdown_timeout_secs: u64,
}

fn default_shutdown() -> u64 {
    DEFAULT_SHUTDOWN_TIMEOUT_SECS
}

/// Seconds a planned failover gives the source guest to power off.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 120;

/// The recovered VM: the source definition on the failover disks, NICs per the replica NIC plan
/// (NET-2, NET-3, NET-4).
pub(crate) fn recovered_definition(
    item: &ferry_types::protection::ProtectedItem,
    def: &VmDefinition,
    disks: &serde_json::Value,
    target: &ferry_types::fabric::Fabric,
) -> Result<VmDefinition, ApiError> {
    let p = TestParams { item: item.id, point: String::new(), network: TestNetwork::None, bridge: None };
    let mut t = test_definition(def, disks, &p)?;
    t.name = def.name.clone();
    t.uuid = def.uuid;
    t.nics = item
        .nics
        .iter()
        .map(|n| {
            let net = n.target_network.as_ref().and_then(|id| target.inventory.vm_network(id)).map(|v| v.name.clone());
            NicDefinition {
                mac: Some(n.mac.clone()),
                vm_network: net.clone(),
                logical_network: None,
                bridge: None,
                subnet: net.and(n.subnet.clone()),
                ip: n.ip.clone(),
            }
        })
        .collect();
    Ok(t)
}

/// Planned failover (FO-2): the source guest shuts down, its last changes are replicated, then
/// the VM starts at the recovery site from the latest point — no data loss. Ends commit pending.
struct PlannedFailoverJob;

#[async_trait::async_trait]
impl JobKind for PlannedFailoverJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: PlannedParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let (src, tgt) = (item.source.clone(), item.target.clone());
        let (s1, vm1) = (src.clone(), item.name.clone());
        ctx.task(PLANNED_TASKS[0], |state, job| async move {
            let cmd = SiteCommand::Vm {
                host: s1.host,
                action: VmAction::Shutdown { vm: vm1, timeout_secs: p.shutdown_timeout_secs, final_sync: true },
            };
            check(
                JobCtx::site_command(&state, &job, s1.fabric, "shutdown", cmd).await?,
                "Shutting down the source VM",
            )?;
            crate::replication::apply_event(&state, vault, p.item, ferry_core::state::Event::FailoverStarted)
                .await
                .map(|_| ())
        })
        .await?;
        let s2 = src.clone();
        ctx.task(PLANNED_TASKS[1], |state, job| async move {
            let cmd = stop_keeping_tracking(s2.host, p.item);
            check(JobCtx::site_command(&state, &job, s2.fabric, "stop", cmd).await?, "Stopping replication")
        })
        .await?;
        recover(
            ctx,
            p.item,
            tgt,
            item.name.clone(),
            "latest".into(),
            true,
            [PLANNED_TASKS[2], PLANNED_TASKS[3], PLANNED_TASKS[4], PLANNED_TASKS[5]],
        )
        .await
    }
}

/// Commit (FO-4): the failover is final.
struct FailoverCommitJob;

#[async_trait::async_trait]
impl JobKind for FailoverCommitJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: CleanupParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let tgt = item.target.clone();
        ctx.task(COMMIT_TASKS[0], |state, job| async move {
            let cmd =
                SiteCommand::Replication { host: tgt.host, action: ReplicationAction::CommitFailover { item: p.item } };
            check(JobCtx::site_command(&state, &job, tgt.fabric, "commit", cmd).await?, "Discarding the other points")
        })
        .await?;
        ctx.task(COMMIT_TASKS[1], |state, _job| async move {
            let commit = ferry_core::state::Event::Operation(ferry_types::protection::Operation::FailoverCommit);
            crate::replication::apply_event_with(&state, vault, p.item, commit, |i| i.recovery_points.clear())
                .await
                .map(|_| ())
        })
        .await
    }
}

pub fn register_failover(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_PLANNED_FAILOVER, Arc::new(PlannedFailoverJob));
    m.insert(OP_FAILOVER_COMMIT, Arc::new(FailoverCommitJob));
}

pub const OP_UNPLANNED_FAILOVER: &str = "UnplannedFailover";
pub const UNPLANNED_TASKS: [&str; 7] = [
    "Try to shut down the source VM",
    "Check that the source is not running (fencing)",
    "Stop replication on the source host",
    "Prepare the failover disks",
    "Create the VM at the recovery site",
    "Start the VM at the recovery site",
    REIP_TASK,
];

#[derive(serde::Serialize, serde::Deserialize)]
pub struct UnplannedParams {
    pub item: Uuid,
    pub point: String,
    #[serde(default)]
    pub shutdown_source: bool,
    #[serde(default)]
    pub source_fenced: bool,
}

/// How long an unplanned failover waits for the source site before taking it as gone.
pub(crate) const SOURCE_PROBE: std::time::Duration = std::time::Duration::from_secs(20);

/// How long the source's guest may take to shut down when the failover asked it to (the
/// shutdown command's own timeout), before a source still running blocks the failover.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(SHUTDOWN_TIMEOUT_SECS + 5);
pub(crate) const SHUTDOWN_TIMEOUT_SECS: u64 = 60;

/// Unplanned failover (FO-3): the source may be gone. Optionally shut it down and sync first; a
/// source that answers and runs blocks the failover unless the operator confirms it is fenced.
struct UnplannedFailoverJob;

#[async_trait::async_trait]
impl JobKind for UnplannedFailoverJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: UnplannedParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let (src, tgt, name) = (item.source.clone(), item.target.clone(), item.name.clone());
        let (s1, n1) = (src.clone(), name.clone());
        ctx.task(UNPLANNED_TASKS[0], |state, job| async move {
            if !p.shutdown_source {
                return Ok(());
            }
            let cmd = SiteCommand::Vm {
                host: s1.host,
                action: VmAction::Shutdown { vm: n1, timeout_secs: SHUTDOWN_TIMEOUT_SECS, final_sync: false },
            };
            // The source may be gone: a failed or unanswered shutdown does not stop the failover.
            let _ = JobCtx::site_command_within(&state, &job, s1.fabric, "shutdown", cmd, SOURCE_PROBE).await;
            Ok(())
        })
        .await?;
        let (s2, n2) = (src.clone(), name.clone());
        ctx.task(UNPLANNED_TASKS[1], |state, job| async move {
            if p.source_fenced {
                return Ok(());
            }
            source_fenced(&state, &job, s2.fabric, &s2.host, &n2, "fence-check", p.shutdown_source).await
        })
        .await?;
        // Not when an earlier run of this job got the recovered VM running already (it is resumed
        // after a later step failed): the failover is past its start.
        if item.state != ferry_types::protection::ReplicationState::FailedOverCommitPending {
            let unplanned = ferry_core::state::Event::Operation(ferry_types::protection::Operation::UnplannedFailover);
            crate::replication::apply_event(&ctx.state, vault, p.item, unplanned).await?;
        }
        let s3 = src.clone();
        ctx.task(UNPLANNED_TASKS[2], |state, job| async move {
            let cmd = stop_keeping_tracking(s3.host, p.item);
            let _ = JobCtx::site_command_within(&state, &job, s3.fabric, "stop", cmd, SOURCE_PROBE).await;
            Ok(())
        })
        .await?;
        recover(
            ctx,
            p.item,
            tgt,
            name,
            p.point.clone(),
            false,
            [UNPLANNED_TASKS[3], UNPLANNED_TASKS[4], UNPLANNED_TASKS[5], UNPLANNED_TASKS[6]],
        )
        .await
    }
}

/// FO-3 fencing, for one VM and for each VM of a plan: Ok when the source VM does not run or
/// does not answer (the source may be gone). A shutdown the failover asked for goes on at the
/// source host after the job stopped waiting for its answer, so a source that still runs is
/// asked again until the shutdown's own timeout has passed; without a shutdown, or after that,
/// a running source blocks the failover. `key` derives the commands' ids (a resumed job asks
/// with the same ids).
pub(crate) async fn source_fenced(
    state: &crate::state::AppState,
    job: &ferry_types::job::Job,
    fabric: Uuid,
    host: &str,
    vm: &str,
    key: &str,
    shutdown_asked: bool,
) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
    for attempt in 0u32.. {
        let cmd = SiteCommand::Vm { host: host.to_string(), action: VmAction::Status { vm: vm.to_string() } };
        let key = if attempt == 0 { key.to_string() } else { format!("{key}-{attempt}") };
        match JobCtx::site_command_within(state, job, fabric, &key, cmd, SOURCE_PROBE).await {
            Ok(r) if r.ok && r.output["power_state"] == "Running" => {
                if !shutdown_asked || tokio::time::Instant::now() >= deadline {
                    return Err(source_running(vm));
                }
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// The fencing refusal (FO-3).
pub fn source_running(vm: &str) -> ApiError {
    ApiError::new("SourceStillRunning", format!("The source VM {vm} is running and reachable; starting the replica would make two live copies"))
        .cause("The primary site is up")
        .recommend("Use a planned failover, or fence the source (power its host off or isolate it) and run the unplanned failover with source_fenced")
}

pub fn register_unplanned(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_UNPLANNED_FAILOVER, Arc::new(UnplannedFailoverJob));
}

/// Record the failover in effect on the item: the point the recovered VM runs on, its disks, and — after a planned failover on the latest point — that
/// the point holds the source's final state (reverse replication then sends only the changes).
pub(super) async fn record_failover(
    st: &crate::state::AppState,
    vault: Uuid,
    item: Uuid,
    output: &serde_json::Value,
    source_final: bool,
) -> Result<(), ApiError> {
    let used = output["point"].as_str().unwrap_or_default().to_string();
    let disks: Vec<(String, String)> = output["disks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| Some((d["target"].as_str()?.to_string(), d["path"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let now = st.clock.now();
    crate::replication::update_item(st, vault, item, |i| {
        let keep_final = i.failover.as_ref().and_then(|f| f.source_final_point.clone());
        i.failover = Some(ferry_types::protection::FailoverRecord {
            point: used.clone(),
            source_final_point: if source_final { Some(used.clone()) } else { keep_final },
            disks: disks.clone(),
            at: now,
        });
    })
    .await
    .map(|_| ())
}

/// Stop a source's replication but keep its tracking state, so that a cancelled failover
/// resumes with deltas (FO-4, FO-7).
pub(super) fn stop_keeping_tracking(host: String, item: Uuid) -> SiteCommand {
    SiteCommand::Replication {
        host,
        action: ReplicationAction::Stop { item, delete_replica: false, keep_tracking: true },
    }
}

/// The last steps of every failover: failover disks on `point` (`latest`: the newest point the
/// target holds, final cycle included), the recovered VM, and its start; then commit pending.
/// `source_final`: the source was shut down and its last changes replicated (planned failover),
/// so the latest point equals the original disks (what reverse replication relies on, FO-5).
pub(super) async fn recover(
    ctx: &mut JobCtx,
    item: Uuid,
    tgt: ferry_types::protection::ItemSide,
    name: String,
    point: String,
    source_final: bool,
    tasks: [&'static str; 4],
) -> Result<(), ApiError> {
    let vault = ctx.job().vault_id;
    let t1 = tgt.clone();
    ctx.task_with_output(tasks[0], |state, job| async move {
        // Test overlays left from a test failover would hold the point: release them first.
        let release =
            SiteCommand::Replication { host: t1.host.clone(), action: ReplicationAction::ReleaseTest { item } };
        let _ = JobCtx::site_command(&state, &job, t1.fabric, "release-tests", release).await?;
        let latest = point == "latest";
        let cmd =
            SiteCommand::Replication { host: t1.host, action: ReplicationAction::FailoverOverlays { item, point } };
        let r = JobCtx::site_command(&state, &job, t1.fabric, "failover-disks", cmd).await?;
        let out = r.output.clone();
        check(r, "Preparing the failover disks")?;
        record_failover(&state, vault, item, &out, source_final && latest).await?;
        Ok(out)
    })
    .await?;
    let t2 = tgt.clone();
    let disks_task = tasks[0];
    ctx.task(tasks[1], |state, job| async move {
        let it = load_item(&state, vault, item).await?;
        let def =
            it.definition.clone().ok_or_else(|| ApiError::new("NoDefinition", "The VM definition was not recorded"))?;
        let target = super::kinds::load_fabric(&state, vault, t2.fabric).await?;
        let disks = job.params["outputs"][disks_task]["disks"].clone();
        let d = recovered_definition(&it, &def, &disks, &target)?;
        let definition = serde_json::to_value(&d).map_err(|e| ApiError::new("InternalError", e.to_string()))?;
        let cmd = SiteCommand::Vm { host: t2.host, action: VmAction::Create { definition } };
        check(JobCtx::site_command(&state, &job, t2.fabric, "create", cmd).await?, "Creating the recovered VM")
    })
    .await?;
    let (t3, n3) = (tgt.clone(), name.clone());
    ctx.task(tasks[2], |state, job| async move {
        let cmd = SiteCommand::Vm { host: t3.host, action: VmAction::Start { vm: n3 } };
        check(JobCtx::site_command(&state, &job, t3.fabric, "start", cmd).await?, "Starting the recovered VM")?;
        crate::replication::apply_event(&state, vault, item, ferry_core::state::Event::FailoverCompleted)
            .await
            .map(|_| ())
    })
    .await?;
    ctx.task_with_output(tasks[3], |state, job| async move { reip(&state, &job, vault, item, tgt, name).await }).await
}

/// How long re-IP waits for the recovered guest's agent (the guest is still booting).
const GUEST_AGENT_WAIT_SECS: u64 = 180;

/// NET-4 / FO-8: apply each NIC's planned address inside the recovered guest through its guest
/// agent. The VM already runs, so a guest that cannot be reached does not fail the failover: the
/// task records why and a warning event tells the operator to set the address by hand.
async fn reip(
    state: &crate::state::AppState,
    job: &ferry_types::job::Job,
    vault: Uuid,
    item: Uuid,
    tgt: ferry_types::protection::ItemSide,
    name: String,
) -> Result<serde_json::Value, ApiError> {
    reip_keyed(state, job, vault, item, tgt, name, "reip").await
}

/// [`reip`] with the site command's key given (a plan job re-IPs many VMs).
pub(super) async fn reip_keyed(
    state: &crate::state::AppState,
    job: &ferry_types::job::Job,
    vault: Uuid,
    item: Uuid,
    tgt: ferry_types::protection::ItemSide,
    name: String,
    key: &str,
) -> Result<serde_json::Value, ApiError> {
    let it = load_item(state, vault, item).await?;
    let target = super::kinds::load_fabric(state, vault, tgt.fabric).await?;
    let nics: Vec<GuestNicAddress> = it
        .nics
        .iter()
        .filter_map(|n| {
            let (net, ip) = (n.target_network.as_ref()?, n.ip.as_ref()?);
            let net = target.inventory.vm_network(net)?;
            let subnet = net.subnets.iter().find(|s| Some(&s.name) == n.subnet.as_ref()).or(net.subnets.first())?;
            let prefix = subnet.cidr.split_once('/')?.1;
            Some(GuestNicAddress {
                mac: n.mac.clone(),
                address: format!("{ip}/{prefix}"),
                gateway: subnet.gateway.clone(),
            })
        })
        .collect();
    if nics.is_empty() {
        return Ok(serde_json::json!({"skipped": "no NIC has a planned static address"}));
    }
    if !it.definition.as_ref().is_some_and(|d| d.guest_agent) {
        return Ok(serde_json::json!({"skipped": "the VM has no guest agent channel", "planned": nics}));
    }
    let cmd = SiteCommand::Vm {
        host: tgt.host,
        action: VmAction::ConfigureGuestNetwork {
            vm: name.clone(),
            nics: nics.clone(),
            timeout_secs: GUEST_AGENT_WAIT_SECS,
        },
    };
    let r = JobCtx::site_command(state, job, tgt.fabric, key, cmd).await?;
    if r.ok {
        return Ok(r.output);
    }
    let why = r.error.map(|e| e.message).unwrap_or_else(|| "unknown error".into());
    let msg = format!("The addresses of {name} were not applied inside the guest: {why}; set them by hand");
    state
        .event(
            vault,
            ferry_types::event::Severity::Warning,
            "ReIpFailed",
            &msg,
            Some(tgt.fabric),
            Some(&item.to_string()),
        )
        .await;
    Ok(serde_json::json!({"failed": why, "planned": nics}))
}
