//! `/api/v1/vaults/{vault}/capacityPlans`: capacity planning (CAP-1).
//!
//! Creating a plan names up to 100 VMs of one site and starts measuring their churn on their
//! hosts (a StartCapacityMeasurement job). The plan collects what the hosts measure; its
//! `report` computes, from those measurements, the VMs, disks and storage, the daily churn, the
//! bandwidth each copy frequency needs, the initial replication time at a bandwidth and the
//! replica storage for a retention window. Stop ends the measurements and keeps the figures;
//! delete forgets them.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_store::DocKind;
use ferry_types::auth::Role;
use ferry_types::capacity::{
    CapacityPlan, CapacityPlanState, CapacityReport, CreateCapacityPlan, PlannedVm, ReportParams,
};
use ferry_types::job::Job;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::vaults::load_fabric;
use crate::auth::Auth;
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::jobs::capacity::{
    CapacityParams, CAPACITY_START_TASKS, CAPACITY_STOP_TASKS, OP_CAPACITY_START, OP_CAPACITY_STOP,
};
use crate::jobs::NewJob;
use crate::state::AppState;

/// A plan and the job that acts on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CapacityPlanJob {
    pub plan: CapacityPlan,
    pub job: Job,
}

/// Report inputs that are not measured (defaults: 100 Mbit/s, 24 h, 300 s).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Bandwidth for the initial replication time, Mbit/s.
    pub bandwidth_mbps: Option<f64>,
    /// Recovery point retention, hours (0–24).
    pub retention_hours: Option<u32>,
    /// Copy frequency for the replica storage figure: 30, 300 or 900 seconds.
    pub copy_frequency_secs: Option<u32>,
}

async fn load(st: &AppState, vault: Uuid, raw: &str) -> ApiResult<ferry_store::Doc<CapacityPlan>> {
    if let Ok(id) = Uuid::parse_str(raw) {
        if let Some(d) = st.store.get_doc::<CapacityPlan>(DocKind::CapacityPlan, vault, &id.to_string()).await? {
            return Ok(d);
        }
    }
    let all = st.store.all_docs::<CapacityPlan>(DocKind::CapacityPlan, vault).await?;
    all.into_iter().find(|d| d.body.name == raw).ok_or_else(|| ApiFailure::not_found("Capacity plan", raw))
}

async fn submit(st: &AppState, plan: &CapacityPlan, operation: &'static str, forget: bool) -> ApiResult<Job> {
    let tasks: &[&str] = if operation == OP_CAPACITY_START { &CAPACITY_START_TASKS } else { &CAPACITY_STOP_TASKS };
    Ok(st
        .jobs
        .submit(
            st,
            NewJob {
                vault: plan.vault_id,
                operation,
                object_type: "CapacityPlan",
                object_id: plan.id.to_string(),
                object_name: plan.name.clone(),
                fabric: Some(plan.site),
                params: crate::jobs::JobInput::of(&CapacityParams { plan: plan.id, forget }),
                tasks: tasks.iter().map(|t| t.to_string()).collect(),
            },
        )
        .await?)
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/capacityPlans", tag = "capacityPlans", params(("vault" = String, Path)), responses((status = 200, body = [CapacityPlan])))]
pub async fn list_capacity_plans(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<CapacityPlan>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let mut out: Vec<CapacityPlan> =
        st.store.all_docs::<CapacityPlan>(DocKind::CapacityPlan, v.id).await?.into_iter().map(|d| d.body).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/capacityPlans", tag = "capacityPlans", request_body = CreateCapacityPlan, params(("vault" = String, Path)), responses((status = 201, body = CapacityPlanJob), (status = 400, body = ferry_types::ApiError), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn create_capacity_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(req): ApiJson<CreateCapacityPlan>,
) -> ApiResult<(StatusCode, Json<CapacityPlanJob>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    ferry_core::capacity::validate_plan(&req.name, &req.vms, req.duration_hours)?;
    let site = load_fabric(&st, v.id, &req.source_site).await?.body;
    let mut vms = Vec::new();
    let mut seen = HashSet::new();
    for raw in &req.vms {
        let vm = site
            .inventory
            .vms
            .iter()
            .find(|x| &x.name == raw || &x.id == raw)
            .ok_or_else(|| ApiFailure::not_found("VM", raw))?;
        if !seen.insert(vm.id.clone()) {
            return Err(ApiFailure::bad_request("CapacityPlanDuplicateVm", format!("VM {} is listed twice", vm.name)));
        }
        vms.push(PlannedVm { vm_id: vm.id.clone(), name: vm.name.clone(), host: vm.host.clone() });
    }
    let now = st.clock.now();
    let plan = CapacityPlan {
        id: Uuid::new_v4(),
        vault_id: v.id,
        name: req.name.clone(),
        site: site.id,
        site_name: site.name.clone(),
        vms,
        state: CapacityPlanState::Measuring,
        created_at: now,
        until: req.duration_hours.map(|h| now + chrono::Duration::hours(i64::from(h))),
        stopped_at: None,
        profiles: vec![],
    };
    st.store
        .put_doc(
            DocKind::CapacityPlan,
            v.id,
            &plan.id.to_string(),
            None,
            Some(&crate::capacity::unique(&plan.name)),
            &plan,
            None,
        )
        .await
        .map_err(|e| match e.kind {
            ferry_store::ErrorKind::Conflict => {
                ApiFailure::conflict("NameConflict", format!("A capacity plan named {} exists", plan.name))
            }
            _ => e.into(),
        })?;
    let job = submit(&st, &plan, OP_CAPACITY_START, false).await?;
    Ok((StatusCode::CREATED, Json(CapacityPlanJob { plan, job })))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/capacityPlans/{plan}", tag = "capacityPlans", params(("vault" = String, Path), ("plan" = String, Path, description = "Plan id or name")), responses((status = 200, body = CapacityPlan), (status = 404, body = ferry_types::ApiError)))]
pub async fn get_capacity_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, plan)): Path<(String, String)>,
) -> ApiResult<Json<CapacityPlan>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    Ok(Json(load(&st, v.id, &plan).await?.body))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/capacityPlans/{plan}/report", tag = "capacityPlans", params(("vault" = String, Path), ("plan" = String, Path), ReportQuery), responses((status = 200, body = CapacityReport), (status = 400, body = ferry_types::ApiError), (status = 404, body = ferry_types::ApiError)))]
pub async fn capacity_report(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, plan)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> ApiResult<Json<CapacityReport>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let d = ReportParams::default();
    let params = ReportParams {
        bandwidth_mbps: q.bandwidth_mbps.unwrap_or(d.bandwidth_mbps),
        retention_hours: q.retention_hours.unwrap_or(d.retention_hours),
        copy_frequency_secs: q.copy_frequency_secs.unwrap_or(d.copy_frequency_secs),
    };
    ferry_core::capacity::validate_params(&params)?;
    let plan = load(&st, v.id, &plan).await?.body;
    Ok(Json(ferry_core::capacity::report(&plan, &params)))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/capacityPlans/{plan}/stop", tag = "capacityPlans", params(("vault" = String, Path), ("plan" = String, Path)), responses((status = 202, body = Job), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn stop_capacity_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, plan)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let plan = load(&st, v.id, &plan).await?.body;
    if plan.state == CapacityPlanState::Stopped {
        return Err(ApiFailure::conflict(
            "CapacityPlanStopped",
            format!("Capacity plan {} is not measuring", plan.name),
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(submit(&st, &plan, OP_CAPACITY_STOP, false).await?)))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}/capacityPlans/{plan}", tag = "capacityPlans", params(("vault" = String, Path), ("plan" = String, Path)), responses((status = 202, body = Job), (status = 404, body = ferry_types::ApiError)))]
pub async fn delete_capacity_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, plan)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let plan = load(&st, v.id, &plan).await?.body;
    Ok((StatusCode::ACCEPTED, Json(submit(&st, &plan, OP_CAPACITY_STOP, true).await?)))
}
