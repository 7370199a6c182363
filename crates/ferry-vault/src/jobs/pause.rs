//! Pause and resume replication of a protected item (JOB-3). A paused item takes no cycles; the
//! source keeps tracking changes, so resuming sends what was written meanwhile as one delta.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_types::protection::Operation;
use ferry_types::site_protocol::{ReplicationAction, SiteCommand};
use ferry_types::ApiError;

use super::ctx::JobCtx;
use super::failover::CleanupParams;
use super::kinds::{check, load_item, JobKind};

pub const OP_PAUSE_REPLICATION: &str = "PauseReplication";
pub const OP_RESUME_REPLICATION: &str = "ResumeReplication";
pub const PAUSE_TASKS: [&str; 1] = ["Pause replication on the source host"];
pub const RESUME_TASKS: [&str; 1] = ["Resume replication on the source host"];

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_PAUSE_REPLICATION, Arc::new(PauseJob { resume: false }));
    m.insert(OP_RESUME_REPLICATION, Arc::new(PauseJob { resume: true }));
}

struct PauseJob {
    resume: bool,
}

#[async_trait::async_trait]
impl JobKind for PauseJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: CleanupParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let resume = self.resume;
        let task = if resume { RESUME_TASKS[0] } else { PAUSE_TASKS[0] };
        ctx.task(task, |state, job| async move {
            let (action, op, what) = if resume {
                (ReplicationAction::Resume { item: p.item }, Operation::ResumeReplication, "Resuming replication")
            } else {
                (ReplicationAction::Pause { item: p.item }, Operation::PauseReplication, "Pausing replication")
            };
            let cmd = SiteCommand::Replication { host: item.source.host.clone(), action };
            check(JobCtx::site_command(&state, &job, item.source.fabric, "pause", cmd).await?, what)?;
            crate::replication::apply_event(&state, vault, p.item, ferry_core::state::Event::Operation(op))
                .await
                .map(|_| ())
        })
        .await
    }
}
