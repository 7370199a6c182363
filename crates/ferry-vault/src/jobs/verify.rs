//! Verify recovery points (RP-1): the replica host re-reads one point (or every point) of a
//! protected item and compares it with the point's hash manifest. The outcome is kept with the
//! points on the replica host, reported with its status (a damaged point turns the item's health
//! Critical, `ReplicaDamaged`), and recorded as the job's output.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_types::site_protocol::{ReplicationAction, SiteCommand};
use ferry_types::ApiError;
use uuid::Uuid;

use super::ctx::JobCtx;
use super::kinds::{check, load_item, JobKind};

pub const OP_VERIFY_POINTS: &str = "VerifyRecoveryPoints";
pub const VERIFY_TASKS: [&str; 1] = ["Verify the recovery points on the replica host"];

/// What to verify.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyParams {
    pub item: Uuid,
    /// A point id or `latest`; none: every point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
}

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_VERIFY_POINTS, Arc::new(VerifyJob));
}

struct VerifyJob;

#[async_trait::async_trait]
impl JobKind for VerifyJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: VerifyParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        ctx.task_with_output(VERIFY_TASKS[0], |state, job| async move {
            let cmd = SiteCommand::Replication {
                host: item.target.host.clone(),
                action: ReplicationAction::VerifyPoints { item: p.item, point: p.point.clone() },
            };
            let r = JobCtx::site_command(&state, &job, item.target.fabric, "verify", cmd).await?;
            let output = r.output.clone();
            check(r, "Verifying recovery points")?;
            let damaged: Vec<String> = output["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["verification"]["ok"] == false && v["verification"]["sealed"] == true)
                .filter_map(|v| v["point"].as_str().map(str::to_string))
                .collect();
            if !damaged.is_empty() {
                tracing::error!(item = %p.item, points = ?damaged, "Recovery points failed verification");
            }
            Ok(output)
        })
        .await
    }
}
