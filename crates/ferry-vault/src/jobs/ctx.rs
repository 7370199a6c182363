//! What a running job sees: its checkpointed tasks and the site command channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_types::job::{Job, JobStatus};
use ferry_types::site_protocol::{CommandResult, SiteCommand};
use ferry_types::ApiError;
use uuid::Uuid;

use crate::state::AppState;

pub struct JobCtx {
    pub state: AppState,
    job: Job,
    cancel: Arc<AtomicBool>,
}

/// Namespace for command ids derived from (job, task).
const COMMAND_NS: Uuid = Uuid::from_u128(0x6a1c_52f4_9b1e_4f0a_8d5e_3c2b_1a09_f7e6);

impl JobCtx {
    pub(crate) fn new(state: AppState, job: Job, cancel: Arc<AtomicBool>) -> Self {
        Self { state, job, cancel }
    }

    pub fn job(&self) -> &Job {
        &self.job
    }

    pub fn params<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_value(self.job.params.clone())
            .map_err(|e| ApiError::new("InvalidJobInput", format!("The job's input cannot be read: {e}")))
    }

    async fn save(&self) -> Result<(), ApiError> {
        self.state
            .store
            .update_job(&self.job)
            .await
            .map_err(|e| ApiError::new("StoreError", format!("Cannot record job progress: {e}")))
    }

    pub(crate) async fn mark_started(&mut self) -> Result<(), ApiError> {
        if self.job.status == JobStatus::NotStarted {
            self.job.started_at = Some(self.state.clock.now());
        }
        self.job.status = JobStatus::InProgress;
        self.job.allowed_actions = Job::actions_for(JobStatus::InProgress);
        self.save().await
    }

    fn progress(&mut self) {
        let total = self.job.tasks.len().max(1);
        let done = self.job.tasks.iter().filter(|t| t.status == JobStatus::Succeeded).count();
        self.job.progress = ((done * 100) / total) as u8;
    }

    /// Run task `name` unless it already succeeded (a resumed job). Cancels between tasks.
    pub async fn task<F, Fut>(&mut self, name: &str, f: F) -> Result<(), ApiError>
    where
        F: FnOnce(AppState, Job) -> Fut,
        Fut: std::future::Future<Output = Result<(), ApiError>>,
    {
        self.task_with_output(name, |s, j| async move { f(s, j).await.map(|()| serde_json::Value::Null) }).await
    }

    /// Like [`JobCtx::task`]; a non-null output is kept in the job's `params.outputs[name]`.
    pub async fn task_with_output<F, Fut>(&mut self, name: &str, f: F) -> Result<(), ApiError>
    where
        F: FnOnce(AppState, Job) -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>>,
    {
        let idx = match self.job.tasks.iter().position(|t| t.name == name) {
            Some(i) => i,
            None => {
                self.job.tasks.push(ferry_types::job::JobTask {
                    name: name.to_string(),
                    status: JobStatus::NotStarted,
                    started_at: None,
                    ended_at: None,
                    error: None,
                });
                self.job.tasks.len() - 1
            }
        };
        if self.job.tasks[idx].status == JobStatus::Succeeded {
            return Ok(());
        }
        if self.cancel.load(Ordering::SeqCst) {
            return Err(cancelled());
        }
        self.job.tasks[idx].status = JobStatus::InProgress;
        self.job.tasks[idx].started_at = Some(self.state.clock.now());
        self.save().await?;
        let res = f(self.state.clone(), self.job.clone()).await;
        self.job.tasks[idx].ended_at = Some(self.state.clock.now());
        match &res {
            Ok(output) => {
                self.job.tasks[idx].status = JobStatus::Succeeded;
                if !output.is_null() {
                    if !self.job.params.is_object() {
                        self.job.params = serde_json::json!({});
                    }
                    if let Some(obj) = self.job.params.as_object_mut() {
                        let outputs = obj.entry("outputs").or_insert_with(|| serde_json::json!({}));
                        if let Some(o) = outputs.as_object_mut() {
                            o.insert(name.to_string(), output.clone());
                        }
                    }
                }
            }
            Err(e) if e.code == "JobCancelled" => self.job.tasks[idx].status = JobStatus::Cancelled,
            Err(e) => {
                self.job.tasks[idx].status = JobStatus::Failed;
                self.job.tasks[idx].error = Some(e.clone());
            }
        }
        self.progress();
        self.save().await?;
        if res.is_ok() {
            ferry_core::failpoint::hit(ferry_core::failpoint::JOB_AFTER_TASK_CHECKPOINT);
        }
        res.map(|_| ())
    }

    /// Run several tasks at once (one per VM, say): each is checkpointed as it starts and as it
    /// ends, so the job shows progress while the others still run. Tasks that already succeeded
    /// (a resumed job) are not run again; their recorded output is returned. `f(i, state, job)`
    /// runs the task `names[i]`. Returns each task's result, in the order of `names`.
    pub async fn parallel_tasks<F, Fut>(&mut self, names: &[String], f: F) -> Vec<Result<serde_json::Value, ApiError>>
    where
        F: Fn(usize, AppState, Job) -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>>,
    {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut results: Vec<Option<Result<serde_json::Value, ApiError>>> = vec![None; names.len()];
        let mut running = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let idx = self.task_index(name);
            if self.job.tasks[idx].status == JobStatus::Succeeded {
                results[i] = Some(Ok(self.output(name)));
                continue;
            }
            if self.cancel.load(Ordering::SeqCst) {
                results[i] = Some(Err(cancelled()));
                continue;
            }
            self.job.tasks[idx].status = JobStatus::InProgress;
            self.job.tasks[idx].started_at = Some(self.state.clock.now());
            self.job.tasks[idx].error = None;
            running.push((i, idx));
        }
        if !running.is_empty() {
            if let Err(e) = self.save().await {
                for (i, _) in &running {
                    results[*i] = Some(Err(e.clone()));
                }
                return results.into_iter().map(|r| r.unwrap_or_else(|| Err(cancelled()))).collect();
            }
        }
        let mut pending: FuturesUnordered<_> = running
            .iter()
            .map(|&(i, idx)| {
                let fut = f(i, self.state.clone(), self.job.clone());
                async move { (i, idx, fut.await) }
            })
            .collect();
        while let Some((i, idx, res)) = pending.next().await {
            self.record(idx, &res);
            self.progress();
            if let Err(e) = self.save().await {
                tracing::error!(error = ?e, "cannot record a task's end");
            }
            results[i] = Some(res);
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(cancelled()))).collect()
    }

    fn task_index(&mut self, name: &str) -> usize {
        match self.job.tasks.iter().position(|t| t.name == name) {
            Some(i) => i,
            None => {
                self.job.tasks.push(ferry_types::job::JobTask {
                    name: name.to_string(),
                    status: JobStatus::NotStarted,
                    started_at: None,
                    ended_at: None,
                    error: None,
                });
                self.job.tasks.len() - 1
            }
        }
    }

    /// The recorded output of a task (null when none).
    pub fn output(&self, name: &str) -> serde_json::Value {
        self.job.params["outputs"][name].clone()
    }

    fn record(&mut self, idx: usize, res: &Result<serde_json::Value, ApiError>) {
        self.job.tasks[idx].ended_at = Some(self.state.clock.now());
        match res {
            Ok(output) => {
                self.job.tasks[idx].status = JobStatus::Succeeded;
                if !output.is_null() {
                    if !self.job.params.is_object() {
                        self.job.params = serde_json::json!({});
                    }
                    let name = self.job.tasks[idx].name.clone();
                    if let Some(obj) = self.job.params.as_object_mut() {
                        let outputs = obj.entry("outputs").or_insert_with(|| serde_json::json!({}));
                        if let Some(o) = outputs.as_object_mut() {
                            o.insert(name, output.clone());
                        }
                    }
                }
            }
            Err(e) if e.code == "JobCancelled" => self.job.tasks[idx].status = JobStatus::Cancelled,
            Err(e) => {
                self.job.tasks[idx].status = JobStatus::Failed;
                self.job.tasks[idx].error = Some(e.clone());
            }
        }
    }

    /// Record an error in the job's error list without ending it (a plan that goes on after a
    /// VM failed, PLAN-2).
    pub fn add_error(&mut self, e: ApiError) {
        self.job.errors.push(e);
    }

    /// Park the job at task `name` for an operator's manual action: the job shows
    /// WaitingForInput and an operator resumes it (`replicationJobs/{job}/resume`), which marks
    /// the task done and runs the job on from there.
    pub async fn wait_for_operator(&mut self, name: &str) -> Result<(), ApiError> {
        let idx = self.task_index(name);
        if self.job.tasks[idx].status == JobStatus::Succeeded {
            return Ok(());
        }
        if let Some(obj) = self.job.params.as_object_mut() {
            obj.insert(RESUMABLE_AT.to_string(), serde_json::json!(name));
        }
        self.wait_for_input(name).await
    }

    /// Park the job at task `name` until an operator acts (the job shows WaitingForInput).
    pub async fn wait_for_input(&mut self, name: &str) -> Result<(), ApiError> {
        if let Some(t) = self.job.tasks.iter_mut().find(|t| t.name == name) {
            if t.status == JobStatus::Succeeded {
                return Ok(());
            }
            t.status = JobStatus::WaitingForInput;
            t.started_at = Some(self.state.clock.now());
        }
        self.job.status = JobStatus::WaitingForInput;
        self.job.allowed_actions = Job::actions_for(JobStatus::WaitingForInput);
        self.save().await?;
        Err(ApiError::new(AWAITING_INPUT, format!("Waiting for an operator at '{name}'")))
    }

    pub(crate) async fn finish(&mut self, outcome: Result<(), ApiError>) -> Result<(), ApiError> {
        if matches!(&outcome, Err(e) if e.code == AWAITING_INPUT) {
            return Ok(());
        }
        let status = match outcome {
            Ok(()) => {
                self.job.progress = 100;
                JobStatus::Succeeded
            }
            Err(e) if e.code == "JobCancelled" => {
                for t in &mut self.job.tasks {
                    if t.status == JobStatus::NotStarted {
                        t.status = JobStatus::Cancelled;
                    }
                }
                JobStatus::Cancelled
            }
            Err(e) => {
                self.job.errors.push(e);
                JobStatus::Failed
            }
        };
        self.job.status = status;
        self.job.ended_at = Some(self.state.clock.now());
        self.job.allowed_actions = Job::actions_for(status);
        if status == JobStatus::Failed && self.job.params[super::plans::RESUME_AFTER_FAILURE].as_bool() == Some(true) {
            self.job.allowed_actions.push(ferry_types::job::JobAction::Resume);
        }
        self.save().await?;
        if status == JobStatus::Failed {
            let msg = format!("Job {} ({}) on {} failed", self.job.operation, self.job.id, self.job.object_name);
            let (vault, severity, fabric) = (self.job.vault_id, ferry_types::event::Severity::Error, self.job.fabric);
            // JOB-4: a failed failover also raises an alert, with the job's errors.
            if crate::alerts::FAILOVER_OPERATIONS.contains(&self.job.operation.as_str()) {
                let why: Vec<String> = self.job.errors.iter().map(|e| e.to_string()).collect();
                let msg = if why.is_empty() { msg } else { format!("{msg}: {}", why.join("; ")) };
                let of = crate::alerts::AlertOf {
                    kind: ferry_types::alert::AlertKind::FailoverFailed,
                    object: Some(ferry_types::alert::AlertObject {
                        object_type: self.job.object_type.clone(),
                        id: self.job.object_id.clone(),
                        name: self.job.object_name.clone(),
                    }),
                };
                self.state
                    .event_alerting(vault, severity, "JobFailed", &msg, fabric, Some(&self.job.object_id), of)
                    .await;
            } else {
                self.state.event(vault, severity, "JobFailed", &msg, fabric, Some(&self.job.object_id)).await;
            }
        }
        Ok(())
    }

    /// Like [`JobCtx::site_command`] with its own time limit (probing a site that may be gone).
    pub async fn site_command_within(
        state: &AppState,
        job: &Job,
        fabric: Uuid,
        key: &str,
        command: SiteCommand,
        limit: Duration,
    ) -> Result<CommandResult, ApiError> {
        Self::site_command_limited(state, job, fabric, key, command, Some(limit)).await
    }

    /// Send a command to a site and wait for its answer (or, past the site command timeout,
    /// withdraw it). The command id is derived from the
    /// job and `key`, so a resumed job waits for the command it already sent.
    pub async fn site_command(
        state: &AppState,
        job: &Job,
        fabric: Uuid,
        key: &str,
        command: SiteCommand,
    ) -> Result<CommandResult, ApiError> {
        Self::site_command_limited(state, job, fabric, key, command, None).await
    }

    async fn site_command_limited(
        state: &AppState,
        job: &Job,
        fabric: Uuid,
        key: &str,
        command: SiteCommand,
        limit: Option<Duration>,
    ) -> Result<CommandResult, ApiError> {
        // A job resumed after a failure (`attempt` > 0) sends its remaining commands afresh; a
        // job resumed after a vault restart waits for the commands it already sent.
        let seed = match job.params["attempt"].as_u64().unwrap_or(0) {
            0 => format!("{}/{key}", job.id),
            n => format!("{}/a{n}/{key}", job.id),
        };
        let id = Uuid::new_v5(&COMMAND_NS, seed.as_bytes());
        let body = serde_json::to_value(&command).map_err(|e| ApiError::new("InternalError", e.to_string()))?;
        state
            .store
            .enqueue_command(id, job.vault_id, fabric, Some(job.id), &body)
            .await
            .map_err(|e| ApiError::new("StoreError", format!("Cannot queue the site command: {e}")))?;
        state.commands_queued.notify_waiters();
        let deadline = Instant::now() + limit.unwrap_or(state.config.site_command_timeout);
        loop {
            let row = state
                .store
                .get_command(id)
                .await
                .map_err(|e| ApiError::new("StoreError", format!("Cannot read the site command: {e}")))?;
            if let Some(result) = row.and_then(|r| r.result) {
                let result: CommandResult = serde_json::from_value(result)
                    .map_err(|e| ApiError::new("SiteProtocolError", format!("The site's answer is unreadable: {e}")))?;
                return Ok(result);
            }
            // A job waiting for a site that does not answer can be cancelled (JOB-1). Its command
            // is withdrawn: a site that reconnects later must not run it (a recovered VM started
            // after its source came back would make two live copies).
            if state.jobs.cancel_requested(job.id) {
                withdraw(state, id, "the job was cancelled").await;
                return Err(cancelled());
            }
            if Instant::now() >= deadline {
                withdraw(state, id, "the job stopped waiting for it").await;
                return Err(ApiError::new("SiteUnreachable", "The site did not answer the command in time")
                    .cause("The site manager is stopped or cannot reach the vault")
                    .recommend(
                        "Check the site manager's service and its connection to the vault, then restart the job",
                    ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Job parameter naming the task an operator may resume the job at (a manual action).
pub const RESUMABLE_AT: &str = "resumable_at";

/// Internal marker: the job parked itself waiting for input.
pub const AWAITING_INPUT: &str = "AwaitingInput";

pub fn cancelled() -> ApiError {
    ApiError::new("JobCancelled", "The job was cancelled by an operator")
}

/// Withdraw an unanswered site command (see [`ferry_store::Store::withdraw_command`]).
pub async fn withdraw(state: &AppState, id: Uuid, why: &str) {
    let result = CommandResult {
        ok: false,
        error: Some(ApiError::new(
            "CommandWithdrawn",
            format!("The command was withdrawn before a site ran it: {why}"),
        )),
        output: serde_json::Value::Null,
    };
    let value = serde_json::to_value(&result).unwrap_or(serde_json::Value::Null);
    match state.store.withdraw_command(id, &value).await {
        Ok(true) => tracing::info!(command = %id, why, "site command withdrawn"),
        Ok(false) => {}
        Err(e) => tracing::warn!(command = %id, error = %e, "cannot withdraw a site command"),
    }
}
