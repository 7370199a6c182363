//! The job engine (JOB-1): durable jobs with checkpointed tasks.
//!
//! A job is created `NotStarted` with its task list and its input (`params`), then run by a
//! [`JobKind`] chosen by the job's operation. Each task is checkpointed in the store as it
//! starts and ends. When the vault starts, every job still `NotStarted`/`InProgress` is run again:
//! tasks already `Succeeded` are skipped, and site commands carry ids derived from the job id and
//! the task name, so a resumed job waits for the same command instead of sending a new one.
//! A job whose operation is unknown to this build fails cleanly with a reason.
//!
//! Cancel is honoured between tasks; a failed job can be restarted (a new job with the same
//! input, `restart_of` pointing at the old one).

pub mod capacity;
mod ctx;
mod failover;
mod kinds;
mod offline;
mod pause;
mod plans;
mod point_image;
mod repair;
mod reverse;
mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_store::Store;
use ferry_types::job::{Job, JobStatus, JobTask};
use ferry_types::ApiError;
use uuid::Uuid;

pub use ctx::{withdraw as withdraw_command, JobCtx, RESUMABLE_AT};
pub use failover::{
    source_running, test_info, CleanupParams, PlannedParams, TestParams, UnplannedParams, CLEANUP_TASKS, COMMIT_TASKS,
    DEFAULT_SHUTDOWN_TIMEOUT_SECS, DISABLE_TASKS, OP_DISABLE_PROTECTION, OP_FAILOVER_COMMIT, OP_PLANNED_FAILOVER,
    OP_TEST_FAILOVER, OP_TEST_FAILOVER_CLEANUP, OP_UNPLANNED_FAILOVER, PLANNED_TASKS, TEST_TASKS, UNPLANNED_TASKS,
};
pub(crate) use kinds::load_policy;
pub use kinds::{
    host_cn, ItemParams, JobKind, PairParams, PolicyParams, VmActionParams, ENABLE_TASKS, OP_CONFIGURE_PAIR,
    OP_ENABLE_PROTECTION, OP_FINALIZE_PROTECTION, OP_REMOVE_PAIR, OP_UPDATE_POLICY, OP_VM_ACTION,
};
pub use offline::{ImportParams, IMPORT_TASKS, OP_IMPORT_INITIAL};
pub use pause::{OP_PAUSE_REPLICATION, OP_RESUME_REPLICATION, PAUSE_TASKS, RESUME_TASKS};
pub use plans::{
    plan_operation_name, plan_tasks, t_start, waiting_manual_action, ItemPoint, PlanParams, WaitingAction,
    OP_ITEM_REPROTECT, OP_PLAN_PLANNED_FAILOVER, OP_PLAN_TEST_FAILOVER, OP_PLAN_UNPLANNED_FAILOVER,
    RESUME_AFTER_FAILURE,
};
pub use point_image::{PointImageParams, OP_POINT_IMAGES, POINT_IMAGE_TASKS};
pub use repair::{OP_REPAIR_REPLICATION, REPAIR_TASKS};
pub use reverse::{
    ApplyParams, ReProtectParams, APPLY_TASKS, CANCEL_TASKS, OP_APPLY_RECOVERY_POINT, OP_FAILOVER_CANCEL, OP_REPROTECT,
    REPROTECT_TASKS,
};
pub use verify::{VerifyParams, OP_VERIFY_POINTS, VERIFY_TASKS};

use crate::state::AppState;

/// What a new job is about.
pub struct NewJob {
    pub vault: Uuid,
    pub operation: &'static str,
    pub object_type: &'static str,
    pub object_id: String,
    pub object_name: String,
    pub fabric: Option<Uuid>,
    pub params: JobInput,
    pub tasks: Vec<String>,
}

/// A job kind's typed parameters: what the API or another job hands it and what it reads back
/// with `JobCtx::params` — the job's contract, one struct per kind.
pub trait JobParams: serde::Serialize {}

/// A job's input as it is stored with the job, made only from a kind's [`JobParams`] (never
/// from ad-hoc JSON); the engine keeps its own bookkeeping beside it (attempts, task outputs,
/// where a resumed job continues).
#[derive(Debug, Clone)]
pub struct JobInput(serde_json::Value);

impl JobInput {
    pub fn of<P: JobParams>(params: &P) -> Self {
        // Params are ids, strings, numbers and ferry-types values: they always encode. Were one
        // not to, the job would fail reading its params, with that said.
        Self(serde_json::to_value(params).unwrap_or(serde_json::Value::Null))
    }

    /// FO-7: a run of this job that failed can be resumed once its cause is fixed (finished
    /// tasks are kept) instead of started anew.
    pub fn resumable_after_failure(mut self) -> Self {
        if let Some(o) = self.0.as_object_mut() {
            o.insert(plans::RESUME_AFTER_FAILURE.into(), serde_json::Value::Bool(true));
        }
        self
    }

    fn into_value(self) -> serde_json::Value {
        self.0
    }
}

/// A job that only records what happened (site registration): the site manager's name.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RegisterSiteParams {
    pub server_name: String,
}

impl JobParams for RegisterSiteParams {}
impl JobParams for kinds::PairParams {}
impl JobParams for kinds::PolicyParams {}
impl JobParams for kinds::VmActionParams {}
impl JobParams for kinds::ItemParams {}
impl JobParams for verify::VerifyParams {}
impl JobParams for plans::PlanParams {}
impl JobParams for failover::TestParams {}
impl JobParams for failover::CleanupParams {}
impl JobParams for failover::PlannedParams {}
impl JobParams for failover::UnplannedParams {}
impl JobParams for reverse::ApplyParams {}
impl JobParams for reverse::ReProtectParams {}
impl JobParams for offline::ImportParams {}
impl JobParams for capacity::CapacityParams {}
impl JobParams for point_image::PointImageParams {}

/// Namespace for ids of jobs started by other jobs.
const CHILD_NS: Uuid = Uuid::from_u128(0x3e5b_7c1d_40a2_4f6e_9b8a_2d4c_6e1f_0a37);

pub struct JobEngine {
    store: Store,
    cancel_flags: Mutex<HashMap<Uuid, Arc<std::sync::atomic::AtomicBool>>>,
    kinds: HashMap<&'static str, Arc<dyn JobKind>>,
}

impl JobEngine {
    pub fn new(store: Store) -> Self {
        let mut kinds = kinds::registry();
        plans::register(&mut kinds);
        Self { store, cancel_flags: Mutex::new(HashMap::new()), kinds }
    }

    /// Persist a new job and start it.
    pub async fn submit(&self, state: &AppState, new: NewJob) -> Result<Job, ferry_store::Error> {
        self.submit_with_id(state, Uuid::new_v4(), new).await
    }

    /// Start a job on behalf of another one (a plan runs a per-VM operation): its id derives from
    /// the parent job and `key`, so a resumed parent finds the job it started instead of
    /// starting a second one.
    pub async fn submit_child(
        &self,
        state: &AppState,
        parent: &Job,
        key: &str,
        new: NewJob,
    ) -> Result<Job, ferry_store::Error> {
        let id = Uuid::new_v5(&CHILD_NS, format!("{}/{key}", parent.id).as_bytes());
        if let Some(j) = self.store.get_job(parent.vault_id, id).await? {
            return Ok(j);
        }
        self.submit_with_id(state, id, new).await
    }

    /// The job another job started under `key` with [`JobEngine::submit_child`], if any.
    pub async fn child(&self, parent: &Job, key: &str) -> Result<Option<Job>, ferry_store::Error> {
        let id = Uuid::new_v5(&CHILD_NS, format!("{}/{key}", parent.id).as_bytes());
        self.store.get_job(parent.vault_id, id).await
    }

    /// Resume a job an operator was asked to act on (a plan's manual action, PLAN-3): the task
    /// it waits at is done and the job runs on from there. `None` when the job is not parked at
    /// such a task or already runs.
    ///
    /// A failed job whose kind allows it (`params.resume_after_failure`, plan jobs) is resumed
    /// the same way: its succeeded tasks are kept, the failed ones run again with new site
    /// commands (`params.attempt` counts the resumptions).
    pub async fn resume(&self, state: &AppState, mut job: Job) -> Result<Option<Job>, ferry_store::Error> {
        let at = job.params[ctx::RESUMABLE_AT].as_str().map(str::to_string).unwrap_or_default();
        let after_failure =
            job.status == JobStatus::Failed && job.params[plans::RESUME_AFTER_FAILURE].as_bool() == Some(true);
        let at_operator = job.status == JobStatus::WaitingForInput && !at.is_empty();
        if !after_failure && !at_operator {
            return Ok(None);
        }
        {
            let Ok(mut m) = self.cancel_flags.lock() else { return Ok(None) };
            if m.contains_key(&job.id) {
                return Ok(None);
            }
            // Claimed until the job's run starts (spawn replaces the flag).
            m.insert(job.id, Arc::new(std::sync::atomic::AtomicBool::new(false)));
        }
        let now = state.clock.now();
        for t in &mut job.tasks {
            if t.name == at && t.status == JobStatus::WaitingForInput {
                t.status = JobStatus::Succeeded;
                t.ended_at = Some(now);
            }
        }
        if after_failure {
            for t in &mut job.tasks {
                if matches!(t.status, JobStatus::Failed | JobStatus::Cancelled | JobStatus::InProgress) {
                    t.status = JobStatus::NotStarted;
                    t.error = None;
                    t.started_at = None;
                    t.ended_at = None;
                }
            }
            job.errors.clear();
            job.ended_at = None;
            let attempt = job.params["attempt"].as_u64().unwrap_or(0) + 1;
            if let Some(o) = job.params.as_object_mut() {
                o.insert("attempt".into(), serde_json::json!(attempt));
            }
        }
        if let Some(o) = job.params.as_object_mut() {
            o.remove(ctx::RESUMABLE_AT);
        }
        job.status = JobStatus::InProgress;
        job.allowed_actions = Job::actions_for(JobStatus::InProgress);
        if let Err(e) = self.store.update_job(&job).await {
            if let Ok(mut m) = self.cancel_flags.lock() {
                m.remove(&job.id);
            }
            return Err(e);
        }
        self.spawn(state.clone(), job.clone());
        Ok(Some(job))
    }

    async fn submit_with_id(&self, state: &AppState, id: Uuid, new: NewJob) -> Result<Job, ferry_store::Error> {
        let now = state.clock.now();
        let job = Job {
            id,
            vault_id: new.vault,
            operation: new.operation.to_string(),
            object_type: new.object_type.to_string(),
            object_id: new.object_id,
            object_name: new.object_name,
            fabric: new.fabric,
            status: JobStatus::NotStarted,
            tasks: new
                .tasks
                .into_iter()
                .map(|name| JobTask {
                    name,
                    status: JobStatus::NotStarted,
                    started_at: None,
                    ended_at: None,
                    error: None,
                })
                .collect(),
            progress: 0,
            allowed_actions: Job::actions_for(JobStatus::NotStarted),
            errors: Vec::new(),
            params: new.params.into_value(),
            created_at: now,
            started_at: None,
            ended_at: None,
            restart_of: None,
        };
        self.store.insert_job(&job).await?;
        self.spawn(state.clone(), job.clone());
        Ok(job)
    }

    /// Record a job that completed synchronously (e.g. registration), for the job list.
    pub async fn record_done(&self, state: &AppState, new: NewJob) -> Result<Job, ferry_store::Error> {
        let now = state.clock.now();
        let job = Job {
            id: Uuid::new_v4(),
            vault_id: new.vault,
            operation: new.operation.to_string(),
            object_type: new.object_type.to_string(),
            object_id: new.object_id,
            object_name: new.object_name,
            fabric: new.fabric,
            status: JobStatus::Succeeded,
            tasks: new
                .tasks
                .into_iter()
                .map(|name| JobTask {
                    name,
                    status: JobStatus::Succeeded,
                    started_at: Some(now),
                    ended_at: Some(now),
                    error: None,
                })
                .collect(),
            progress: 100,
            allowed_actions: vec![],
            errors: vec![],
            params: new.params.into_value(),
            created_at: now,
            started_at: Some(now),
            ended_at: Some(now),
            restart_of: None,
        };
        self.store.insert_job(&job).await?;
        Ok(job)
    }

    /// Restart a failed job: a new job with the same input.
    pub async fn restart(&self, state: &AppState, old: &Job) -> Result<Job, ferry_store::Error> {
        let now = state.clock.now();
        let mut job = old.clone();
        job.id = Uuid::new_v4();
        job.status = JobStatus::NotStarted;
        job.progress = 0;
        job.errors.clear();
        job.allowed_actions = Job::actions_for(JobStatus::NotStarted);
        job.created_at = now;
        job.started_at = None;
        job.ended_at = None;
        job.restart_of = Some(old.id);
        for t in &mut job.tasks {
            *t = JobTask {
                name: t.name.clone(),
                status: JobStatus::NotStarted,
                started_at: None,
                ended_at: None,
                error: None,
            };
        }
        self.store.insert_job(&job).await?;
        self.spawn(state.clone(), job.clone());
        Ok(job)
    }

    /// Ask a job to stop. Returns the job as it is now.
    pub async fn cancel(&self, state: &AppState, mut job: Job) -> Result<Job, ferry_store::Error> {
        let flag = self.cancel_flags.lock().ok().and_then(|m| m.get(&job.id).cloned());
        match flag {
            Some(f) => {
                f.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(job)
            }
            None => {
                job.status = JobStatus::Cancelled;
                job.ended_at = Some(state.clock.now());
                job.allowed_actions = Job::actions_for(JobStatus::Cancelled);
                self.store.update_job(&job).await?;
                Ok(job)
            }
        }
    }

    /// Whether this build runs jobs of `operation`.
    pub fn knows(&self, operation: &str) -> bool {
        self.kinds.contains_key(operation)
    }

    /// Whether an operator asked this (running) job to stop.
    pub fn cancel_requested(&self, id: Uuid) -> bool {
        self.cancel_flags
            .lock()
            .ok()
            .and_then(|m| m.get(&id).map(|f| f.load(std::sync::atomic::Ordering::SeqCst)))
            .unwrap_or(false)
    }

    /// Resume every unfinished job after a restart.
    pub async fn resume_all(&self, state: &AppState) -> Result<usize, ferry_store::Error> {
        let open = self.store.open_jobs().await?;
        let n = open.len();
        for job in open {
            if job.status == JobStatus::WaitingForInput {
                continue;
            }
            tracing::info!(job = %job.id, operation = %job.operation, "resuming job after restart");
            self.spawn(state.clone(), job);
        }
        Ok(n)
    }

    fn spawn(&self, state: AppState, job: Job) {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Ok(mut m) = self.cancel_flags.lock() {
            m.insert(job.id, flag.clone());
        }
        let kind = self.kinds.get(job.operation.as_str()).cloned();
        tokio::spawn(async move {
            let id = job.id;
            let mut ctx = JobCtx::new(state.clone(), job, flag);
            let outcome = match kind {
                Some(k) => {
                    if let Err(e) = ctx.mark_started().await {
                        tracing::error!(error = ?e, "cannot start job");
                        return;
                    }
                    k.run(&mut ctx).await
                }
                None => Err(ApiError::new(
                    "UnknownOperation",
                    format!("This vault cannot run '{}' jobs", ctx.job().operation),
                )
                .recommend("Run a vault version that supports this operation, or cancel the job")),
            };
            if let Err(e) = ctx.finish(outcome).await {
                tracing::error!(error = ?e, "cannot record job outcome");
            }
            if let Ok(mut m) = state.jobs.cancel_flags.lock() {
                m.remove(&id);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JOB-1: a job's stored input is its kind's typed params, read back as the same type; the
    /// resume flag sits beside them without changing what the kind reads.
    #[test]
    fn job_1_a_jobs_input_is_its_kinds_typed_params() {
        let item = Uuid::new_v4();
        let input =
            JobInput::of(&UnplannedParams { item, point: "rp-1".into(), shutdown_source: true, source_fenced: false })
                .resumable_after_failure();
        let stored = input.into_value();
        assert_eq!(stored[plans::RESUME_AFTER_FAILURE], true);
        let back: UnplannedParams = serde_json::from_value(stored).expect("the kind reads its params");
        assert_eq!((back.item, back.point.as_str(), back.shutdown_source), (item, "rp-1", true));
    }
}
