//! CAP-1 jobs: start, stop or forget the churn measurements of a capacity plan on the hosts of
//! its VMs (one site command per VM; a resumed job does not send a command twice).

use std::collections::HashMap;
use std::sync::Arc;

use ferry_store::DocKind;
use ferry_types::capacity::{CapacityPlan, CapacityPlanState, ProfileAction};
use ferry_types::site_protocol::SiteCommand;
use ferry_types::ApiError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ctx::JobCtx;
use super::kinds::{store_err, JobKind};
use crate::state::AppState;

pub const OP_CAPACITY_START: &str = "StartCapacityMeasurement";
pub const OP_CAPACITY_STOP: &str = "StopCapacityMeasurement";
pub const CAPACITY_START_TASKS: [&str; 1] = ["Start measuring on the hosts"];
pub const CAPACITY_STOP_TASKS: [&str; 2] = ["Stop measuring on the hosts", "Record the end"];

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_CAPACITY_START, Arc::new(StartJob));
    m.insert(OP_CAPACITY_STOP, Arc::new(StopJob));
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityParams {
    pub plan: Uuid,
    /// Drop the measurements and the plan (the plan is being deleted).
    #[serde(default)]
    pub forget: bool,
}

pub(crate) async fn load_capacity_plan(state: &AppState, vault: Uuid, id: Uuid) -> Result<CapacityPlan, ApiError> {
    state
        .store
        .get_doc::<CapacityPlan>(DocKind::CapacityPlan, vault, &id.to_string())
        .await
        .map_err(store_err)?
        .map(|d| d.body)
        .ok_or_else(|| ApiError::new("NotFound", format!("Capacity plan {id} no longer exists")))
}

/// Commands of one job in flight at once.
const IN_FLIGHT: usize = 16;

/// Send `action(vm)` to the host of every VM of the plan, [`IN_FLIGHT`] at a time; every VM is
/// tried, the errors are reported together.
async fn on_every_vm(
    state: &AppState,
    job: &ferry_types::job::Job,
    plan: &CapacityPlan,
    verb: &str,
    action: impl Fn(String) -> ProfileAction,
) -> Result<(), ApiError> {
    use futures::StreamExt;
    let site = plan.site;
    let commands: Vec<(String, String, SiteCommand)> = plan
        .vms
        .iter()
        .map(|vm| {
            let cmd = SiteCommand::Profile { host: vm.host.clone(), action: action(vm.name.clone()) };
            (vm.name.clone(), format!("{verb}-{}", vm.vm_id), cmd)
        })
        .collect();
    let sends = commands.into_iter().map(|(name, key, cmd)| async move {
        match JobCtx::site_command(state, job, site, &key, cmd).await {
            Ok(r) if r.ok => None,
            Ok(r) => Some(format!("{name}: {}", r.error.map(|e| e.message).unwrap_or_default())),
            Err(e) => Some(format!("{name}: {}", e.message)),
        }
    });
    let mut failed: Vec<String> =
        futures::stream::iter(sends).buffer_unordered(IN_FLIGHT).filter_map(|f| async move { f }).collect().await;
    failed.sort();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new("CapacityMeasurementFailed", format!("Could not {verb} measuring {}", failed.join("; ")))
            .recommend(
                "Check that the VMs are defined on their hosts and the hosts are connected, then restart the job",
            ))
    }
}

struct StartJob;

#[async_trait::async_trait]
impl JobKind for StartJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: CapacityParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        ctx.task(CAPACITY_START_TASKS[0], |state, job| async move {
            let plan = load_capacity_plan(&state, vault, p.plan).await?;
            let until = plan.until;
            on_every_vm(&state, &job, &plan, "start", |vm| ProfileAction::Start { plan: plan.id, vm, until }).await
        })
        .await
    }
}

struct StopJob;

#[async_trait::async_trait]
impl JobKind for StopJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: CapacityParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        ctx.task(CAPACITY_STOP_TASKS[0], |state, job| async move {
            let plan = load_capacity_plan(&state, vault, p.plan).await?;
            match p.forget {
                true => {
                    on_every_vm(&state, &job, &plan, "forget", |vm| ProfileAction::Forget { plan: plan.id, vm }).await
                }
                false => on_every_vm(&state, &job, &plan, "stop", |vm| ProfileAction::Stop { plan: plan.id, vm }).await,
            }
        })
        .await?;
        ctx.task(CAPACITY_STOP_TASKS[1], |state, _job| async move {
            if p.forget {
                state.store.delete_doc(DocKind::CapacityPlan, vault, &p.plan.to_string()).await.map_err(store_err)?;
                return Ok(());
            }
            let now = state.clock.now();
            crate::capacity::update_plan(&state, vault, p.plan, |plan| {
                if plan.state == CapacityPlanState::Measuring {
                    plan.state = CapacityPlanState::Stopped;
                    plan.stopped_at = Some(now);
                }
            })
            .await
        })
        .await
    }
}
