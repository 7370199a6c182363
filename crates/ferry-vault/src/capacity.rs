//! CAP-1 in the vault: capacity plans are documents (`DocKind::CapacityPlan`, unique name per
//! vault); the churn profiles sites report are folded into them, and the report is computed on
//! request by `ferry_core::capacity` from what was measured.

use ferry_store::DocKind;
use ferry_types::capacity::{CapacityPlan, CapacityPlanState, ChurnProfile};
use ferry_types::ApiError;
use uuid::Uuid;

use crate::state::AppState;

/// The unique key of a plan name.
pub fn unique(name: &str) -> String {
    format!("capacity:{name}")
}

/// Change a plan with optimistic retries; `Ok(())` also when it no longer exists.
pub async fn update_plan<F>(state: &AppState, vault: Uuid, id: Uuid, mut f: F) -> Result<(), ApiError>
where
    F: FnMut(&mut CapacityPlan),
{
    for _ in 0..10 {
        let Some(doc) = state
            .store
            .get_doc::<CapacityPlan>(DocKind::CapacityPlan, vault, &id.to_string())
            .await
            .map_err(|e| ApiError::new("StoreError", e.to_string()))?
        else {
            return Ok(());
        };
        let mut plan = doc.body;
        let before = plan.clone();
        f(&mut plan);
        if plan == before {
            return Ok(());
        }
        match state
            .store
            .put_doc(
                DocKind::CapacityPlan,
                vault,
                &id.to_string(),
                None,
                Some(&unique(&plan.name)),
                &plan,
                Some(doc.version),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.kind == ferry_store::ErrorKind::VersionMismatch => continue,
            Err(e) => return Err(ApiError::new("StoreError", e.to_string())),
        }
    }
    Err(ApiError::new("Busy", "The capacity plan changed concurrently; retry"))
}

/// Fold the profiles a site reported into its plans: each replaces the VM's earlier one. A plan
/// whose measuring time is over is marked Stopped (its hosts stop by themselves).
pub async fn apply_profiles(state: &AppState, vault: Uuid, site: Uuid, profiles: &[ChurnProfile]) {
    let mut plans: Vec<Uuid> = profiles.iter().map(|p| p.plan).collect();
    plans.sort();
    plans.dedup();
    let now = state.clock.now();
    for id in plans {
        let res = update_plan(state, vault, id, |plan| {
            if plan.site != site {
                return; // not this site's plan: ignore what it claims
            }
            for p in profiles.iter().filter(|p| p.plan == id) {
                let Some(vm) = plan.vms.iter().find(|v| v.name == p.vm_name) else { continue };
                let mut p = p.clone();
                p.vm_id = vm.vm_id.clone();
                plan.profiles.retain(|x| x.vm_id != p.vm_id);
                plan.profiles.push(p);
            }
            plan.profiles.sort_by(|a, b| a.vm_name.cmp(&b.vm_name));
            if plan.state == CapacityPlanState::Measuring && plan.until.is_some_and(|u| u <= now) {
                plan.state = CapacityPlanState::Stopped;
                plan.stopped_at = plan.until;
            }
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(plan = %id, error = %e.message, "cannot record churn measurements");
        }
    }
}
