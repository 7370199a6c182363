//! Recovery plan jobs (PLAN-2..PLAN-4): one job per plan operation, with a task per step and
//! per VM.
//!
//! A failover of a plan (test, planned, unplanned) runs:
//!
//! 1. planned: shut down every source VM and send its last changes, stop replication;
//!    unplanned: optionally try to shut the sources down, check fencing, stop replication;
//!    test: nothing (the sources keep running and replicating);
//! 2. the failover (or test) disks of every VM, in parallel, then every VM defined at the
//!    recovery site, in parallel;
//! 3. group by group: the group's pre-steps, then its VMs started in parallel (and, for a
//!    real failover, their planned addresses applied inside the guests, NET-4), then its
//!    post-steps. Group N+1 begins only when every VM of group N is up. Each start task records
//!    when the VM came up (`params.outputs["Group N: Start vm"].started_at`).
//!
//! Steps are scripts (run by the recovery site's manager from its script library, PLAN-3) or
//! manual actions (the job waits for an operator to resume it). A planned failover stops at the
//! first error; an unplanned one goes on with the VMs that did not fail, records every error and
//! fails at the end when any step failed. A failed plan job can be resumed after its cause is
//! fixed: succeeded tasks are kept, the failed ones run again (FO-7).
//!
//! Every task is checkpointed by the job engine and site commands carry ids derived from the job
//! and the task, so a plan job resumed after a vault restart neither repeats a finished step nor
//! starts a VM twice. Commit and reverse replication run the per-VM jobs (`FailoverCommit`,
//! `ReProtect`) as child jobs whose ids derive from the plan job, one task per VM.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_types::job::JobStatus;
use ferry_types::plan::{PlanFailoverType, PlanItem, PlanStep, RecoveryPlan, ScriptRun, StepPhase};
use ferry_types::protection::{Operation, ProtectedItem, TestNetwork};
use ferry_types::site_protocol::{ReplicationAction, SiteCommand, VmAction};
use ferry_types::ApiError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ctx::{cancelled, JobCtx, AWAITING_INPUT};
use super::failover::{
    record_failover, recovered_definition, reip_keyed, source_fenced, stop_keeping_tracking, test_definition,
    TestParams, REIP_TASK, SHUTDOWN_TIMEOUT_SECS, SOURCE_PROBE,
};
use super::kinds::{check, load_fabric, load_item, store_err, JobKind};
use crate::state::AppState;

pub const OP_PLAN_TEST_FAILOVER: &str = "RecoveryPlanTestFailover";
pub const OP_PLAN_TEST_FAILOVER_CLEANUP: &str = "RecoveryPlanTestFailoverCleanup";
pub const OP_PLAN_PLANNED_FAILOVER: &str = "RecoveryPlanPlannedFailover";
pub const OP_PLAN_UNPLANNED_FAILOVER: &str = "RecoveryPlanUnplannedFailover";
pub const OP_PLAN_FAILOVER_COMMIT: &str = "RecoveryPlanFailoverCommit";
pub const OP_PLAN_REPROTECT: &str = "RecoveryPlanReProtect";
/// The per-VM job kind a plan's reverse replication runs for each VM (FO-5).
pub const OP_ITEM_REPROTECT: &str = super::OP_REPROTECT;
/// Job parameter: a failed job of this kind may be resumed (see [`super::JobEngine::resume`]).
pub const RESUME_AFTER_FAILURE: &str = "resume_after_failure";

/// Time a script may run on its site manager, plus the margin for the answer to arrive.
const SCRIPT_WAIT: Duration = Duration::from_secs(ferry_types::plan::SCRIPT_TIMEOUT_SECS + 60);

/// The job operation of a plan operation.
pub fn plan_operation_name(op: Operation) -> Option<&'static str> {
    Some(match op {
        Operation::TestFailover => OP_PLAN_TEST_FAILOVER,
        Operation::TestFailoverCleanup => OP_PLAN_TEST_FAILOVER_CLEANUP,
        Operation::PlannedFailover => OP_PLAN_PLANNED_FAILOVER,
        Operation::UnplannedFailover => OP_PLAN_UNPLANNED_FAILOVER,
        Operation::FailoverCommit => OP_PLAN_FAILOVER_COMMIT,
        Operation::ReProtect => OP_PLAN_REPROTECT,
        _ => return None,
    })
}

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    for op in [
        OP_PLAN_TEST_FAILOVER,
        OP_PLAN_TEST_FAILOVER_CLEANUP,
        OP_PLAN_PLANNED_FAILOVER,
        OP_PLAN_UNPLANNED_FAILOVER,
        OP_PLAN_FAILOVER_COMMIT,
        OP_PLAN_REPROTECT,
    ] {
        m.insert(op, Arc::new(PlanJob));
    }
}

/// A VM's recovery point for the operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemPoint {
    pub item: Uuid,
    pub point: String,
}

/// Input of a plan job: the plan as it was when the operation started, and the options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanParams {
    pub plan: RecoveryPlan,
    pub operation: Operation,
    /// `PrimaryToRecovery` or `RecoveryToPrimary` (told to scripts).
    pub direction: String,
    /// The site whose manager runs the scripts: where the VMs start.
    pub script_fabric: Uuid,
    #[serde(default)]
    pub points: Vec<ItemPoint>,
    #[serde(default)]
    pub network: TestNetwork,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub shutdown_source: bool,
    #[serde(default)]
    pub source_fenced: bool,
    /// Cleanup: the test failover job it completes.
    #[serde(default)]
    pub test_job: Option<Uuid>,
    /// Incremented each time a failed job is resumed, so failed steps send new commands.
    #[serde(default)]
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Test,
    Planned,
    Unplanned,
}

impl Mode {
    fn failover_type(self) -> PlanFailoverType {
        match self {
            Mode::Test => PlanFailoverType::TestFailover,
            Mode::Planned => PlanFailoverType::PlannedFailover,
            Mode::Unplanned => PlanFailoverType::UnplannedFailover,
        }
    }
}

// ---- task names (the API lists them up front, the job runs them) ----

fn t_shutdown(vm: &str) -> String {
    format!("{vm}: Shut down the source VM and send its final changes")
}
fn t_try_shutdown(vm: &str) -> String {
    format!("{vm}: Try to shut down the source VM")
}
fn t_fence(vm: &str) -> String {
    format!("{vm}: Check that the source is not running (fencing)")
}
fn t_stop_replication(vm: &str) -> String {
    format!("{vm}: Stop replication on the source host")
}
fn t_disks(vm: &str, mode: Mode) -> String {
    match mode {
        Mode::Test => format!("{vm}: Prepare test disks"),
        _ => format!("{vm}: Prepare the failover disks"),
    }
}
fn t_create(vm: &str, mode: Mode) -> String {
    match mode {
        Mode::Test => format!("{vm}: Create the test VM"),
        _ => format!("{vm}: Create the VM at the recovery site"),
    }
}
/// The task that starts a VM of a group (its output holds `started_at`).
pub fn t_start(group: u8, vm: &str, test: bool) -> String {
    if test {
        format!("Group {group}: Start {vm}-test")
    } else {
        format!("Group {group}: Start {vm}")
    }
}
fn t_reip(group: u8, vm: &str) -> String {
    format!("Group {group}: {vm}: {REIP_TASK}")
}
fn t_step(group: u8, phase: StepPhase, index: usize, step: &PlanStep) -> String {
    let phase = match phase {
        StepPhase::Pre => "Pre-step",
        StepPhase::Post => "Post-step",
    };
    match step {
        PlanStep::Script { name, .. } => format!("Group {group}: {phase} {index}: script '{name}'"),
        PlanStep::ManualAction { name, .. } => format!("Group {group}: {phase} {index}: manual action '{name}'"),
    }
}
const T_COMPLETE_TESTING: &str = "Complete testing";
fn t_cleanup_vm(vm: &str) -> String {
    format!("{vm}: Delete the test VM and its disks")
}
const T_CLEANUP_NETWORK: &str = "Delete the test networks";
const T_RECORD_NOTES: &str = "Record notes";
fn t_child(vm: &str, op: Operation) -> String {
    match op {
        Operation::ReProtect => format!("{vm}: Re-protect (reverse replication)"),
        _ => format!("{vm}: Commit the failover"),
    }
}

fn mode_of(op: Operation) -> Option<Mode> {
    match op {
        Operation::TestFailover => Some(Mode::Test),
        Operation::PlannedFailover => Some(Mode::Planned),
        Operation::UnplannedFailover => Some(Mode::Unplanned),
        _ => None,
    }
}

/// The manual action a plan job waits at (PLAN-3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingAction {
    /// The job's task that waits.
    pub task: String,
    pub group: u8,
    pub phase: StepPhase,
    /// The step as the plan held it when the job started.
    pub step: PlanStep,
}

/// The manual action `job` waits at for an operator, if it waits at one: found in the plan the
/// job runs (its parameters), by the task the job is parked at.
pub fn waiting_manual_action(job: &ferry_types::job::Job) -> Option<WaitingAction> {
    if job.status != JobStatus::WaitingForInput {
        return None;
    }
    let at = job.params[super::RESUMABLE_AT].as_str()?;
    let plan: RecoveryPlan = serde_json::from_value(job.params["plan"].clone()).ok()?;
    for g in &plan.groups {
        for phase in [StepPhase::Pre, StepPhase::Post] {
            for (i, step) in g.steps(phase).iter().enumerate() {
                if matches!(step, PlanStep::ManualAction { .. }) && t_step(g.number, phase, i + 1, step) == at {
                    return Some(WaitingAction { task: at.to_string(), group: g.number, phase, step: step.clone() });
                }
            }
        }
    }
    None
}

/// The tasks of a plan job, in the order it runs them (PLAN-4: progress per step).
pub fn plan_tasks(p: &PlanParams) -> Vec<String> {
    let vms: Vec<&str> = p.plan.items().map(|i| i.name.as_str()).collect();
    let mut t = Vec::new();
    match p.operation {
        Operation::TestFailoverCleanup => {
            t.extend(vms.iter().map(|v| t_cleanup_vm(v)));
            t.push(T_CLEANUP_NETWORK.into());
            t.push(T_RECORD_NOTES.into());
        }
        Operation::FailoverCommit | Operation::ReProtect => {
            t.extend(vms.iter().map(|v| t_child(v, p.operation)));
        }
        op => {
            let Some(mode) = mode_of(op) else { return t };
            match mode {
                Mode::Planned => {
                    t.extend(vms.iter().map(|v| t_shutdown(v)));
                    t.extend(vms.iter().map(|v| t_stop_replication(v)));
                }
                Mode::Unplanned => {
                    t.extend(vms.iter().map(|v| t_try_shutdown(v)));
                    t.extend(vms.iter().map(|v| t_fence(v)));
                    t.extend(vms.iter().map(|v| t_stop_replication(v)));
                }
                Mode::Test => {}
            }
            t.extend(vms.iter().map(|v| t_disks(v, mode)));
            t.extend(vms.iter().map(|v| t_create(v, mode)));
            for g in &p.plan.groups {
                for (phase, steps) in [(StepPhase::Pre, &g.pre_steps), (StepPhase::Post, &g.post_steps)] {
                    if phase == StepPhase::Post {
                        t.extend(g.items.iter().map(|i| t_start(g.number, &i.name, mode == Mode::Test)));
                        if mode != Mode::Test {
                            t.extend(g.items.iter().map(|i| t_reip(g.number, &i.name)));
                        }
                    }
                    for (i, s) in steps.iter().enumerate() {
                        if s.applies_to(mode.failover_type()) {
                            t.push(t_step(g.number, phase, i + 1, s));
                        }
                    }
                }
            }
            if mode == Mode::Test {
                t.push(T_COMPLETE_TESTING.into());
            }
        }
    }
    t
}

/// The job kind of every plan operation.
struct PlanJob;

#[async_trait::async_trait]
impl JobKind for PlanJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: PlanParams = ctx.params()?;
        match p.operation {
            Operation::TestFailoverCleanup => cleanup(ctx, &p).await,
            Operation::FailoverCommit => children(ctx, &p, super::OP_FAILOVER_COMMIT).await,
            Operation::ReProtect => children(ctx, &p, super::OP_REPROTECT).await,
            op => match mode_of(op) {
                Some(mode) => failover(ctx, &p, mode).await,
                None => {
                    Err(ApiError::new("PlanOperationUnknown", format!("'{}' is not a plan operation", op.as_str())))
                }
            },
        }
    }
}

/// What went wrong so far, per VM or step (unplanned failover goes on and reports them all).
struct Outcome {
    mode: Mode,
    errors: Vec<(String, ApiError)>,
}

impl Outcome {
    /// Record the failed tasks of a phase. Cancellation ends the job; a planned or test failover
    /// stops at the first error.
    fn phase(
        &mut self,
        ctx: &mut JobCtx,
        names: &[String],
        results: &[Result<serde_json::Value, ApiError>],
    ) -> Result<(), ApiError> {
        let mut failed = false;
        for (name, r) in names.iter().zip(results) {
            match r {
                Err(e) if e.code == "JobCancelled" => return Err(cancelled()),
                Err(e) if e.code == AWAITING_INPUT => return Err(e.clone()),
                Err(e) => {
                    failed = true;
                    let mut e2 = e.clone();
                    e2.message = format!("{name}: {}", e.message);
                    ctx.add_error(e2.clone());
                    self.errors.push((name.clone(), e2));
                }
                Ok(_) => {}
            }
        }
        if failed && self.mode != Mode::Unplanned {
            return Err(self.summary());
        }
        Ok(())
    }

    fn summary(&self) -> ApiError {
        let list: Vec<String> = self.errors.iter().map(|(_, e)| format!("{} ({})", e.message, e.code)).collect();
        match self.mode {
            Mode::Unplanned => ApiError::new(
                "RecoveryPlanCompletedWithErrors",
                format!("{} step(s) of the unplanned failover failed: {}", self.errors.len(), list.join("; ")),
            )
            .cause("The other VMs of the plan were failed over; an unplanned failover does not stop at an error")
            .recommend("Fix the failed VMs or steps, then resume the job to run the failed steps again"),
            _ => ApiError::new(
                "RecoveryPlanStopped",
                format!("The plan stopped at its first error: {}", list.join("; ")),
            )
            .cause("A planned or test failover of a plan stops at the first failed step")
            .recommend("Fix the cause, then resume the job: finished steps are kept, the failed ones run again"),
        }
    }
}

fn key(p: &PlanParams, base: String) -> String {
    format!("a{}/{base}", p.attempt)
}

async fn load_items(ctx: &JobCtx, p: &PlanParams) -> Result<HashMap<Uuid, ProtectedItem>, ApiError> {
    let vault = ctx.job().vault_id;
    let mut m = HashMap::new();
    for it in p.plan.items() {
        m.insert(it.id, load_item(&ctx.state, vault, it.id).await?);
    }
    Ok(m)
}

/// Run one task per VM of `vms` in parallel; returns the VMs whose task succeeded.
async fn per_vm<F, Fut>(
    ctx: &mut JobCtx,
    out: &mut Outcome,
    vms: &[ProtectedItem],
    name: impl Fn(&str) -> String,
    f: F,
) -> Result<Vec<ProtectedItem>, ApiError>
where
    F: Fn(ProtectedItem, AppState, ferry_types::job::Job) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>>,
{
    let names: Vec<String> = vms.iter().map(|v| name(&v.name)).collect();
    let results = ctx.parallel_tasks(&names, |i, st, job| f(vms[i].clone(), st, job)).await;
    out.phase(ctx, &names, &results)?;
    Ok(vms.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(v, _)| v.clone()).collect())
}

async fn failover(ctx: &mut JobCtx, p: &PlanParams, mode: Mode) -> Result<(), ApiError> {
    let vault = ctx.job().vault_id;
    let items = load_items(ctx, p).await?;
    let mut out = Outcome { mode, errors: Vec::new() };
    // Plan order: group by group.
    let mut alive: Vec<ProtectedItem> = p.plan.items().filter_map(|i| items.get(&i.id).cloned()).collect();

    // 1. The sources.
    match mode {
        Mode::Planned => {
            alive = per_vm(ctx, &mut out, &alive, t_shutdown, |it, st, job| {
                let k = key(p, format!("{}/shutdown", it.id));
                async move {
                    let cmd = SiteCommand::Vm {
                        host: it.source.host.clone(),
                        action: VmAction::Shutdown { vm: it.name.clone(), timeout_secs: 120, final_sync: true },
                    };
                    check(
                        JobCtx::site_command(&st, &job, it.source.fabric, &k, cmd).await?,
                        "Shutting down the source VM",
                    )?;
                    crate::replication::apply_event(&st, vault, it.id, ferry_core::state::Event::FailoverStarted)
                        .await?;
                    Ok(serde_json::Value::Null)
                }
            })
            .await?;
            alive = per_vm(ctx, &mut out, &alive, t_stop_replication, |it, st, job| {
                let k = key(p, format!("{}/stop", it.id));
                async move {
                    let cmd = stop_keeping_tracking(it.source.host.clone(), it.id);
                    check(JobCtx::site_command(&st, &job, it.source.fabric, &k, cmd).await?, "Stopping replication")?;
                    Ok(serde_json::Value::Null)
                }
            })
            .await?;
        }
        Mode::Unplanned => {
            let (shutdown, fenced) = (p.shutdown_source, p.source_fenced);
            alive = per_vm(ctx, &mut out, &alive, t_try_shutdown, |it, st, job| {
                let k = key(p, format!("{}/shutdown", it.id));
                async move {
                    if shutdown {
                        let cmd = SiteCommand::Vm {
                            host: it.source.host.clone(),
                            action: VmAction::Shutdown {
                                vm: it.name.clone(),
                                timeout_secs: SHUTDOWN_TIMEOUT_SECS,
                                final_sync: false,
                            },
                        };
                        // The source may be gone: a failed or unanswered shutdown does not stop it.
                        let _ = JobCtx::site_command_within(&st, &job, it.source.fabric, &k, cmd, SOURCE_PROBE).await;
                    }
                    Ok(serde_json::Value::Null)
                }
            })
            .await?;
            alive = per_vm(ctx, &mut out, &alive, t_fence, |it, st, job| {
                let k = key(p, format!("{}/fence-check", it.id));
                async move {
                    if !fenced {
                        source_fenced(&st, &job, it.source.fabric, &it.source.host, &it.name, &k, shutdown).await?;
                    }
                    let unplanned = ferry_core::state::Event::Operation(Operation::UnplannedFailover);
                    crate::replication::apply_event(&st, vault, it.id, unplanned).await?;
                    Ok(serde_json::Value::Null)
                }
            })
            .await?;
            alive = per_vm(ctx, &mut out, &alive, t_stop_replication, |it, st, job| {
                let k = key(p, format!("{}/stop", it.id));
                async move {
                    let cmd = stop_keeping_tracking(it.source.host.clone(), it.id);
                    let _ = JobCtx::site_command_within(&st, &job, it.source.fabric, &k, cmd, SOURCE_PROBE).await;
                    Ok(serde_json::Value::Null)
                }
            })
            .await?;
        }
        Mode::Test => {}
    }

    // 2. Disks of every VM in parallel, then every VM defined at the recovery site.
    let point_of = |id: Uuid| p.points.iter().find(|x| x.item == id).map(|x| x.point.clone());
    alive = per_vm(
        ctx,
        &mut out,
        &alive,
        |v| t_disks(v, mode),
        |it, st, job| {
            let point = point_of(it.id).unwrap_or_else(|| "latest".into());
            let latest = point == "latest";
            let (k1, k2) = (key(p, format!("{}/release-tests", it.id)), key(p, format!("{}/disks", it.id)));
            async move {
                let tgt = it.target.clone();
                let action = if mode == Mode::Test {
                    ReplicationAction::TestOverlays { item: it.id, point }
                } else {
                    // Test overlays left from a test failover would hold the point: release them.
                    let release = SiteCommand::Replication {
                        host: tgt.host.clone(),
                        action: ReplicationAction::ReleaseTest { item: it.id },
                    };
                    let _ = JobCtx::site_command(&st, &job, tgt.fabric, &k1, release).await?;
                    ReplicationAction::FailoverOverlays { item: it.id, point }
                };
                let cmd = SiteCommand::Replication { host: tgt.host.clone(), action };
                let r = JobCtx::site_command(&st, &job, tgt.fabric, &k2, cmd).await?;
                let output = r.output.clone();
                check(r, "Preparing the disks")?;
                if mode == Mode::Test {
                    crate::jobs::failover::record_test_point(&st, vault, it.id, &output).await?;
                } else {
                    // What the per-VM operations after a failover need (FO-4, FO-5).
                    let source_final = mode == Mode::Planned && latest;
                    record_failover(&st, vault, it.id, &output, source_final).await?;
                }
                Ok(output)
            }
        },
    )
    .await?;
    let disk_outputs: HashMap<Uuid, serde_json::Value> =
        alive.iter().map(|it| (it.id, ctx.output(&t_disks(&it.name, mode))["disks"].clone())).collect();
    let disk_outputs = &disk_outputs;
    alive = per_vm(
        ctx,
        &mut out,
        &alive,
        |v| t_create(v, mode),
        |it, st, job| {
            let k = key(p, format!("{}/create", it.id));
            let disks = disk_outputs.get(&it.id).cloned().unwrap_or_default();
            let (network, bridge, point) = (p.network.clone(), p.bridge.clone(), point_of(it.id).unwrap_or_default());
            async move {
                let def = it.definition.clone().ok_or_else(|| {
                    ApiError::new("NoDefinition", format!("The definition of {} was not recorded", it.name))
                })?;
                let d = if mode == Mode::Test {
                    test_definition(&def, &disks, &TestParams { item: it.id, point, network, bridge })?
                } else {
                    let target = load_fabric(&st, vault, it.target.fabric).await?;
                    recovered_definition(&it, &def, &disks, &target)?
                };
                let definition = serde_json::to_value(&d).map_err(|e| ApiError::new("InternalError", e.to_string()))?;
                let cmd = SiteCommand::Vm { host: it.target.host.clone(), action: VmAction::Create { definition } };
                check(JobCtx::site_command(&st, &job, it.target.fabric, &k, cmd).await?, "Creating the VM")?;
                Ok(serde_json::Value::Null)
            }
        },
    )
    .await?;

    // 3. Group by group: pre-steps, VMs in parallel, post-steps.
    for g in &p.plan.groups {
        run_steps(ctx, p, &mut out, mode, g.number, StepPhase::Pre, &g.pre_steps).await?;
        let members: Vec<ProtectedItem> =
            alive.iter().filter(|it| g.items.iter().any(|x| x.id == it.id)).cloned().collect();
        let group = g.number;
        let started = per_vm(
            ctx,
            &mut out,
            &members,
            |v| t_start(group, v, mode == Mode::Test),
            |it, st, job| {
                let k = key(p, format!("{}/start", it.id));
                async move {
                    let vm = if mode == Mode::Test { format!("{}-test", it.name) } else { it.name.clone() };
                    let requested_at = st.clock.now();
                    let cmd =
                        SiteCommand::Vm { host: it.target.host.clone(), action: VmAction::Start { vm: vm.clone() } };
                    let r = JobCtx::site_command(&st, &job, it.target.fabric, &k, cmd).await?;
                    let pid = r.output["pid"].clone();
                    check(r, "Starting the VM")?;
                    if mode != Mode::Test {
                        crate::replication::apply_event(&st, vault, it.id, ferry_core::state::Event::FailoverCompleted)
                            .await?;
                    }
                    Ok(serde_json::json!({
                        "vm": vm, "group": group, "host": it.target.host_name,
                        "requested_at": requested_at, "started_at": st.clock.now(), "pid": pid,
                    }))
                }
            },
        )
        .await?;
        // VMs that did not come up stay out of later phases (unplanned goes on without them).
        alive.retain(|it| !g.items.iter().any(|x| x.id == it.id) || started.iter().any(|s| s.id == it.id));
        if mode != Mode::Test {
            // NET-4 / FO-8: the planned addresses inside each guest, as every failover does; the
            // group is up when its guests have their addresses (a guest that cannot be reached
            // is reported, not failed).
            per_vm(
                ctx,
                &mut out,
                &started,
                |v| t_reip(group, v),
                |it, st, job| {
                    let k = key(p, format!("{}/reip", it.id));
                    async move { reip_keyed(&st, &job, vault, it.id, it.target.clone(), it.name.clone(), &k).await }
                },
            )
            .await?;
        }
        run_steps(ctx, p, &mut out, mode, g.number, StepPhase::Post, &g.post_steps).await?;
    }

    if !out.errors.is_empty() {
        return Err(out.summary());
    }
    if mode == Mode::Test {
        return ctx.wait_for_input(T_COMPLETE_TESTING).await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_steps(
    ctx: &mut JobCtx,
    p: &PlanParams,
    out: &mut Outcome,
    mode: Mode,
    group: u8,
    phase: StepPhase,
    steps: &[PlanStep],
) -> Result<(), ApiError> {
    for (i, step) in steps.iter().enumerate() {
        if !step.applies_to(mode.failover_type()) {
            continue;
        }
        let name = t_step(group, phase, i + 1, step);
        let res = match step {
            PlanStep::ManualAction { .. } => match ctx.wait_for_operator(&name).await {
                Ok(()) => Ok(serde_json::Value::Null),
                Err(e) => return Err(e),
            },
            PlanStep::Script { path, .. } => {
                let run = ScriptRun {
                    path: path.clone(),
                    plan: p.plan.name.clone(),
                    group,
                    phase,
                    failover_type: mode.failover_type(),
                    direction: p.direction.clone(),
                    timeout_secs: ferry_types::plan::SCRIPT_TIMEOUT_SECS,
                };
                let (fabric, k) = (p.script_fabric, key(p, format!("script/{group}/{phase:?}/{}", i + 1)));
                let r = ctx
                    .parallel_tasks(std::slice::from_ref(&name), |_, st, job| {
                        let (run, k) = (run.clone(), k.clone());
                        async move {
                            let cmd = SiteCommand::RunScript { script: run };
                            let r = JobCtx::site_command_within(&st, &job, fabric, &k, cmd, SCRIPT_WAIT).await?;
                            let output = r.output.clone();
                            check(r, "The script")?;
                            Ok(output)
                        }
                    })
                    .await;
                r.into_iter().next().unwrap_or_else(|| Err(cancelled()))
            }
        };
        out.phase(ctx, std::slice::from_ref(&name), std::slice::from_ref(&res))?;
    }
    Ok(())
}

/// Test failover cleanup of a plan: every test VM, its disks and networks go; notes recorded on
/// every VM; the plan's test failover job ends.
async fn cleanup(ctx: &mut JobCtx, p: &PlanParams) -> Result<(), ApiError> {
    let vault = ctx.job().vault_id;
    let items = load_items(ctx, p).await?;
    let vms: Vec<ProtectedItem> = p.plan.items().filter_map(|i| items.get(&i.id).cloned()).collect();
    let mut out = Outcome { mode: Mode::Planned, errors: Vec::new() };
    per_vm(ctx, &mut out, &vms, t_cleanup_vm, |it, st, job| {
        let (k1, k2, k3) = (
            key(p, format!("{}/stop-test", it.id)),
            key(p, format!("{}/delete-test", it.id)),
            key(p, format!("{}/release", it.id)),
        );
        async move {
            let (fabric, host) = (it.target.fabric, it.target.host.clone());
            let vm =
                it.test_failover.as_ref().map(|t| t.vm_name.clone()).unwrap_or_else(|| format!("{}-test", it.name));
            let stop = SiteCommand::Vm { host: host.clone(), action: VmAction::Stop { vm: vm.clone() } };
            let r = JobCtx::site_command(&st, &job, fabric, &k1, stop).await?;
            if !r.ok && r.error.as_ref().is_none_or(|e| e.code != "VmNotFound") {
                check(r, "Stopping the test VM")?;
            }
            let del = SiteCommand::Vm { host: host.clone(), action: VmAction::Delete { vm, delete_disks: false } };
            let r = JobCtx::site_command(&st, &job, fabric, &k2, del).await?;
            if !r.ok && r.error.as_ref().is_none_or(|e| e.code != "VmNotFound") {
                check(r, "Deleting the test VM")?;
            }
            let rel = SiteCommand::Replication { host, action: ReplicationAction::ReleaseTest { item: it.id } };
            check(JobCtx::site_command(&st, &job, fabric, &k3, rel).await?, "Releasing the test disks")?;
            Ok(serde_json::Value::Null)
        }
    })
    .await?;
    // One isolated network per target host (the plan's VMs share it there).
    let mut bridges: Vec<(Uuid, String, String)> = Vec::new();
    for it in &vms {
        if let Some(b) = it.test_failover.as_ref().and_then(|t| t.created_bridge.clone()) {
            if !bridges.iter().any(|(f, h, x)| *f == it.target.fabric && *h == it.target.host && *x == b) {
                bridges.push((it.target.fabric, it.target.host.clone(), b));
            }
        }
    }
    let k = key(p, "networks".into());
    ctx.task(T_CLEANUP_NETWORK, |st, job| async move {
        for (i, (fabric, host, bridge)) in bridges.into_iter().enumerate() {
            let cmd = SiteCommand::Replication { host, action: ReplicationAction::RemoveTestNetwork { bridge } };
            check(
                JobCtx::site_command(&st, &job, fabric, &format!("{k}/{i}"), cmd).await?,
                "Deleting the test network",
            )?;
        }
        Ok(())
    })
    .await?;
    let (notes, ids, test_job) = (p.notes.clone(), vms.iter().map(|v| v.id).collect::<Vec<_>>(), p.test_job);
    ctx.task(T_RECORD_NOTES, |st, _job| async move {
        let now = st.clock.now();
        for id in ids {
            crate::replication::update_item(&st, vault, id, |i| {
                if let Some(t) = i.test_failover.take() {
                    i.last_test_failover = Some(ferry_types::protection::CompletedTest {
                        at: now,
                        notes: notes.clone(),
                        recovery_point: t.recovery_point,
                    });
                }
            })
            .await?;
        }
        // The plan's test failover job ends now that testing is complete.
        if let Some(tj) = test_job {
            if let Some(mut j) = st.store.get_job(vault, tj).await.map_err(store_err)? {
                if j.status == JobStatus::WaitingForInput {
                    for t in &mut j.tasks {
                        if t.status == JobStatus::WaitingForInput {
                            t.status = JobStatus::Succeeded;
                            t.ended_at = Some(now);
                        }
                    }
                    j.status = JobStatus::Succeeded;
                    j.progress = 100;
                    j.ended_at = Some(now);
                    j.allowed_actions = vec![];
                    st.store.update_job(&j).await.map_err(store_err)?;
                }
            }
        }
        Ok(())
    })
    .await
}

/// Commit or reverse replication of a plan: the per-VM job for every VM, in parallel, each a
/// child job of this one. Every VM is attempted; the plan job fails when one of them failed.
async fn children(ctx: &mut JobCtx, p: &PlanParams, operation: &'static str) -> Result<(), ApiError> {
    let vms: Vec<PlanItem> = p.plan.items().cloned().collect();
    let names: Vec<String> = vms.iter().map(|v| t_child(&v.name, p.operation)).collect();
    let attempt = p.attempt;
    let results = ctx
        .parallel_tasks(&names, |i, st, job| {
            let it = vms[i].clone();
            async move {
                let vault = job.vault_id;
                let key = format!("a{attempt}/{}/{operation}", it.id);
                let child = match st.jobs.child(&job, &key).await.map_err(store_err)? {
                    Some(existing) => existing,
                    None => {
                        let item = load_item(&st, vault, it.id).await?;
                        // The per-VM operation's own preparation, as its API does.
                        let (params, tasks): (super::JobInput, &[&str]) = if operation == super::OP_REPROTECT {
                            let reprotect = ferry_core::state::Event::Operation(Operation::ReProtect);
                            crate::replication::apply_event(&st, vault, it.id, reprotect).await?;
                            let p = super::ReProtectParams {
                                item: it.id,
                                original: item.source.clone(),
                                active: item.target.clone(),
                            };
                            (super::JobInput::of(&p), &super::REPROTECT_TASKS)
                        } else {
                            (super::JobInput::of(&super::ItemParams { item: it.id }), &super::COMMIT_TASKS)
                        };
                        let new = super::NewJob {
                            vault,
                            operation,
                            object_type: "ProtectedItem",
                            object_id: it.id.to_string(),
                            object_name: it.name.clone(),
                            fabric: Some(item.target.fabric),
                            params,
                            tasks: tasks.iter().map(|t| t.to_string()).collect(),
                        };
                        st.jobs.submit_child(&st, &job, &key, new).await.map_err(store_err)?
                    }
                };
                loop {
                    let j = st
                        .store
                        .get_job(vault, child.id)
                        .await
                        .map_err(store_err)?
                        .ok_or_else(|| ApiError::new("NotFound", format!("Job {} disappeared", child.id)))?;
                    match j.status {
                        JobStatus::Succeeded => return Ok(serde_json::json!({"job": j.id})),
                        JobStatus::Failed | JobStatus::Cancelled => {
                            let e = j.errors.last().cloned().unwrap_or_else(|| {
                                ApiError::new("JobFailed", format!("Job {} ended {}", j.id, j.status.as_str()))
                            });
                            return Err(e);
                        }
                        _ if st.jobs.cancel_requested(job.id) => return Err(cancelled()),
                        _ => tokio::time::sleep(Duration::from_millis(300)).await,
                    }
                }
            }
        })
        .await;
    let mut out = Outcome { mode: Mode::Unplanned, errors: Vec::new() };
    out.phase(ctx, &names, &results)?;
    if out.errors.is_empty() {
        Ok(())
    } else {
        let list: Vec<String> = out.errors.iter().map(|(_, e)| format!("{} ({})", e.message, e.code)).collect();
        Err(ApiError::new(
            "RecoveryPlanCompletedWithErrors",
            format!("{} VM(s) failed: {}", out.errors.len(), list.join("; ")),
        )
        .recommend("Fix the failed VMs, then resume the job to run their steps again"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::job::Job;
    use ferry_types::plan::PlanGroup;

    fn plan() -> RecoveryPlan {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let mut g2 = PlanGroup::new(2);
        g2.pre_steps.push(PlanStep::Script { name: "warm".into(), path: "warm.sh".into(), failover_types: vec![] });
        g2.pre_steps.push(PlanStep::ManualAction {
            name: "Check DNS".into(),
            instructions: "Point app.example to Chicago".into(),
            failover_types: vec![PlanFailoverType::TestFailover],
        });
        RecoveryPlan {
            id: Uuid::from_u128(1),
            vault_id: Uuid::from_u128(2),
            name: "shop".into(),
            description: String::new(),
            container_mapping: Uuid::from_u128(3),
            source_fabric: Uuid::from_u128(4),
            source_cloud: "GoldCloud1".into(),
            target_fabric: Uuid::from_u128(5),
            target_cloud: "GoldCloud2".into(),
            groups: vec![PlanGroup::new(1), g2],
            created_at: t,
            updated_at: t,
            version: 3,
            last_job: None,
            allowed_operations: vec![],
        }
    }

    fn job(status: JobStatus, at: Option<&str>) -> Job {
        let p = PlanParams {
            plan: plan(),
            operation: Operation::TestFailover,
            direction: "PrimaryToRecovery".into(),
            script_fabric: Uuid::from_u128(5),
            points: vec![],
            network: TestNetwork::None,
            bridge: None,
            notes: String::new(),
            shutdown_source: false,
            source_fenced: false,
            test_job: None,
            attempt: 0,
        };
        let mut params = serde_json::to_value(&p).unwrap_or_default();
        if let (Some(o), Some(at)) = (params.as_object_mut(), at) {
            o.insert(super::super::RESUMABLE_AT.into(), serde_json::json!(at));
        }
        Job {
            id: Uuid::from_u128(9),
            vault_id: Uuid::from_u128(2),
            operation: OP_PLAN_TEST_FAILOVER.into(),
            object_type: "RecoveryPlan".into(),
            object_id: Uuid::from_u128(1).to_string(),
            object_name: "shop".into(),
            fabric: None,
            status,
            tasks: plan_tasks(&p)
                .into_iter()
                .map(|name| ferry_types::job::JobTask {
                    name,
                    status: JobStatus::NotStarted,
                    started_at: None,
                    ended_at: None,
                    error: None,
                })
                .collect(),
            progress: 0,
            allowed_actions: Job::actions_for(status),
            errors: vec![],
            params,
            created_at: p.plan.created_at,
            started_at: None,
            ended_at: None,
            restart_of: None,
        }
    }

    #[test]
    fn plan_3_waiting_manual_action_is_found_from_the_job() {
        let task = "Group 2: Pre-step 2: manual action 'Check DNS'";
        let j = job(JobStatus::WaitingForInput, Some(task));
        assert!(j.tasks.iter().any(|t| t.name == task), "the job lists the step as a task");
        let w = waiting_manual_action(&j).expect("the job waits at the manual action");
        assert_eq!((w.task.as_str(), w.group, w.phase), (task, 2, StepPhase::Pre));
        assert!(
            matches!(&w.step, PlanStep::ManualAction { instructions, .. } if instructions == "Point app.example to Chicago")
        );
        // Waiting at "Complete testing" (no manual action), or not waiting at all.
        assert_eq!(waiting_manual_action(&job(JobStatus::WaitingForInput, None)), None);
        assert_eq!(waiting_manual_action(&job(JobStatus::InProgress, Some(task))), None);
        // A script's task is not a manual action.
        assert_eq!(
            waiting_manual_action(&job(JobStatus::WaitingForInput, Some("Group 2: Pre-step 1: script 'warm'"))),
            None
        );
    }
}
