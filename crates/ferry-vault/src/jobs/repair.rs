//! Repair replication (REP-6): the operator asks the source host to resynchronize a protected
//! item now by comparing block hashes with its replica (after a replica was restored, a disk was
//! edited offline, or when an automatic resync keeps failing). Only differing blocks travel and
//! the existing recovery points are kept; the item reports Resynchronizing until the new point
//! is on the replica.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_types::site_protocol::{ReplicationAction, SiteCommand};
use ferry_types::ApiError;

use super::ctx::JobCtx;
use super::failover::CleanupParams;
use super::kinds::{check, load_item, JobKind};

pub const OP_REPAIR_REPLICATION: &str = "RepairReplication";
pub const REPAIR_TASKS: [&str; 1] = ["Resynchronize on the source host"];

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_REPAIR_REPLICATION, Arc::new(RepairJob));
}

struct RepairJob;

#[async_trait::async_trait]
impl JobKind for RepairJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: CleanupParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        ctx.task(REPAIR_TASKS[0], |state, job| async move {
            let cmd = SiteCommand::Replication {
                host: item.source.host.clone(),
                action: ReplicationAction::Repair { item: p.item },
            };
            check(
                JobCtx::site_command(&state, &job, item.source.fabric, "repair", cmd).await?,
                "Repairing replication",
            )?;
            let repair = ferry_core::state::Event::Operation(ferry_types::protection::Operation::RepairReplication);
            match crate::replication::apply_event(&state, vault, p.item, repair).await {
                // Paused meanwhile: the source resynchronizes once resumed.
                Err(e) if e.code == "OperationNotAllowed" => Ok(()),
                r => r.map(|_| ()),
            }
        })
        .await
    }
}
