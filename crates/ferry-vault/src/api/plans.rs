//! `/api/v1/vaults/{vault}/replicationRecoveryPlans`: recovery plans (PLAN-1..PLAN-4).
//!
//! Plans are documents (`DocKind::RecoveryPlan`) with a unique name per vault. Edits are a list
//! of changes applied by `ferry_core::plan` to a copy, all or nothing. Operations are POST
//! actions that check every VM's state, record what the operation needs on the VMs (test
//! failover claims, planned failover preparation) and start one plan job.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_core::plan::{Candidate, Change, VmState};
use ferry_core::state::OperationContext;
use ferry_store::DocKind;
use ferry_types::auth::Role;
use ferry_types::job::Job;
use ferry_types::mapping::ContainerMapping;
use ferry_types::plan::{
    CreatePlan, PlanChange, PlanGroup, PlanItem, PlanJobRef, PlanOperationRequest, RecoveryPlan, UpdatePlan,
};
use ferry_types::protection::{Direction, Operation, ProtectedItem, ReplicationState, TestNetwork};
use uuid::Uuid;

use super::vaults::load_fabric;
use crate::auth::Auth;
use crate::error::{ApiFailure, ApiResult};
use crate::extract::ApiJson;
use crate::jobs::{ItemPoint, NewJob, PlanParams};
use crate::state::AppState;

fn core_err(e: ferry_core::Error) -> ApiFailure {
    e.into()
}

fn unique(name: &str) -> String {
    format!("plan:{name}")
}

async fn load_plan(st: &AppState, vault: Uuid, raw: &str) -> ApiResult<ferry_store::Doc<RecoveryPlan>> {
    if let Ok(id) = Uuid::parse_str(raw) {
        if let Some(d) = st.store.get_doc::<RecoveryPlan>(DocKind::RecoveryPlan, vault, &id.to_string()).await? {
            return Ok(d);
        }
    }
    let all = st.store.all_docs::<RecoveryPlan>(DocKind::RecoveryPlan, vault).await?;
    all.into_iter().find(|d| d.body.name == raw).ok_or_else(|| ApiFailure::not_found("Recovery plan", raw))
}

fn vm_state(it: &ProtectedItem) -> VmState {
    VmState {
        name: it.name.clone(),
        state: it.state,
        ctx: OperationContext {
            test_failover_running: it.test_failover.is_some(),
            recovery_points: it.recovery_points.len(),
            reverse_direction: it.direction == Direction::Reverse,
            failover_job_running: false,
            awaiting_import: it.stats.awaiting_import,
        },
    }
}

/// The plan's VMs as protected items now; a VM whose protection was disabled counts as
/// NotEnabled (so no operation allows it).
async fn plan_vms(st: &AppState, plan: &RecoveryPlan) -> ApiResult<(Vec<ProtectedItem>, Vec<VmState>)> {
    let mut items = Vec::new();
    let mut states = Vec::new();
    for pi in plan.items() {
        match st.store.get_doc::<ProtectedItem>(DocKind::ProtectedItem, plan.vault_id, &pi.id.to_string()).await? {
            Some(d) => {
                states.push(vm_state(&d.body));
                items.push(d.body);
            }
            None => states.push(VmState {
                name: pi.name.clone(),
                state: ReplicationState::NotEnabled,
                ctx: OperationContext::default(),
            }),
        }
    }
    Ok((items, states))
}

/// Fill in what is computed when read: version and allowed operations (PLAN-4).
async fn shown(st: &AppState, doc: ferry_store::Doc<RecoveryPlan>) -> ApiResult<RecoveryPlan> {
    let mut p = doc.body;
    p.version = doc.version;
    let (_, states) = plan_vms(st, &p).await?;
    p.allowed_operations = ferry_core::plan::allowed_plan_operations(&states);
    Ok(p)
}

/// Resolve VM references (protected item id or VM name) to candidates.
fn resolve(all: &[ProtectedItem], refs: &[String]) -> ApiResult<Vec<Candidate>> {
    refs.iter()
        .map(|r| {
            let it = all
                .iter()
                .find(|i| i.id.to_string() == *r || i.name == *r)
                .ok_or_else(|| ApiFailure::not_found("Protected item", r))?;
            Ok(Candidate {
                item: PlanItem { id: it.id, name: it.name.clone() },
                container_mapping: it.container_mapping,
            })
        })
        .collect()
}

/// Resolve references to VMs of the plan (by id or name), else of the vault.
fn resolve_ids(plan: &RecoveryPlan, all: &[ProtectedItem], refs: &[String]) -> ApiResult<Vec<Uuid>> {
    refs.iter()
        .map(|r| {
            if let Some(pi) = plan.items().find(|i| i.id.to_string() == *r || i.name == *r) {
                return Ok(pi.id);
            }
            let it = all
                .iter()
                .find(|i| i.id.to_string() == *r || i.name == *r)
                .ok_or_else(|| ApiFailure::not_found("Protected item", r))?;
            Err(core_err(ferry_core::Error::PlanVmNotInPlan { vm: it.name.clone() }))
        })
        .collect()
}

async fn all_items(st: &AppState, vault: Uuid) -> ApiResult<Vec<ProtectedItem>> {
    Ok(st.store.all_docs::<ProtectedItem>(DocKind::ProtectedItem, vault).await?.into_iter().map(|d| d.body).collect())
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationRecoveryPlans", tag = "recoveryPlans", params(("vault" = String, Path)), responses((status = 200, body = [RecoveryPlan])))]
pub async fn list_plans(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<Vec<RecoveryPlan>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let mut out = Vec::new();
    for d in st.store.all_docs::<RecoveryPlan>(DocKind::RecoveryPlan, v.id).await? {
        out.push(shown(&st, d).await?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationRecoveryPlans", tag = "recoveryPlans", request_body = CreatePlan, params(("vault" = String, Path)), responses((status = 201, body = RecoveryPlan), (status = 400, body = ferry_types::ApiError), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn create_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiJson(req): ApiJson<CreatePlan>,
) -> ApiResult<(StatusCode, Json<RecoveryPlan>)> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    ferry_core::plan::validate_name(&req.name).map_err(core_err)?;
    let all = all_items(&st, v.id).await?;
    let vms = resolve(&all, &req.vms)?;
    let mapping_id = match (req.container_mapping, vms.first()) {
        (Some(m), _) => m,
        (None, Some(c)) => c.container_mapping,
        (None, None) => {
            return Err(ApiFailure::bad_request(
                "PlanPairRequired",
                "Give the plan's cloud pair (container_mapping) or at least one VM",
            ))
        }
    };
    let mapping = st
        .store
        .get_doc::<ContainerMapping>(DocKind::ContainerMapping, v.id, &mapping_id.to_string())
        .await?
        .ok_or_else(|| ApiFailure::not_found("Cloud pair", &mapping_id.to_string()))?
        .body;
    let now = st.clock.now();
    let empty = RecoveryPlan {
        id: Uuid::new_v4(),
        vault_id: v.id,
        name: req.name.clone(),
        description: String::new(),
        container_mapping: mapping.id,
        source_fabric: mapping.source.fabric,
        source_cloud: mapping.source.id.clone(),
        target_fabric: mapping.target.fabric,
        target_cloud: mapping.target.id.clone(),
        groups: vec![PlanGroup::new(1)],
        created_at: now,
        updated_at: now,
        version: 0,
        last_job: None,
        allowed_operations: vec![],
    };
    let changes =
        vec![Change::SetDescription { description: req.description.clone() }, Change::AddVms { group: 1, vms }];
    let plan = ferry_core::plan::apply_changes(&empty, &changes).map_err(core_err)?;
    st.store
        .put_doc(
            DocKind::RecoveryPlan,
            v.id,
            &plan.id.to_string(),
            Some(&plan.container_mapping.to_string()),
            Some(&unique(&plan.name)),
            &plan,
            None,
        )
        .await
        .map_err(|e| match e.kind {
            ferry_store::ErrorKind::Conflict => {
                ApiFailure::conflict("NameConflict", format!("A recovery plan named {} exists", plan.name))
            }
            _ => e.into(),
        })?;
    let doc = load_plan(&st, v.id, &plan.id.to_string()).await?;
    Ok((StatusCode::CREATED, Json(shown(&st, doc).await?)))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationRecoveryPlans/{plan}", tag = "recoveryPlans", params(("vault" = String, Path), ("plan" = String, Path, description = "Plan id or name")), responses((status = 200, body = RecoveryPlan), (status = 404, body = ferry_types::ApiError)))]
pub async fn get_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, plan)): Path<(String, String)>,
) -> ApiResult<Json<RecoveryPlan>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let doc = load_plan(&st, v.id, &plan).await?;
    Ok(Json(shown(&st, doc).await?))
}

#[utoipa::path(patch, path = "/api/v1/vaults/{vault}/replicationRecoveryPlans/{plan}", tag = "recoveryPlans", request_body = UpdatePlan, params(("vault" = String, Path), ("plan" = String, Path)), responses((status = 200, body = RecoveryPlan), (status = 400, body = ferry_types::ApiError), (status = 404, body = ferry_types::ApiError), (status = 412, body = ferry_types::ApiError)))]
pub async fn update_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, plan)): Path<(String, String)>,
    ApiJson(req): ApiJson<UpdatePlan>,
) -> ApiResult<Json<RecoveryPlan>> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let doc = load_plan(&st, v.id, &plan).await?;
    if let Some(expected) = req.expected_version {
        if expected != doc.version {
            return Err(ApiFailure::new(
                StatusCode::PRECONDITION_FAILED,
                "VersionMismatch",
                format!("Recovery plan {} is at version {}, not {expected}", doc.body.name, doc.version),
            ));
        }
    }
    if req.changes.is_empty() {
        return Err(ApiFailure::bad_request("InvalidValue", "Give at least one change"));
    }
    let all = all_items(&st, v.id).await?;
    let mut changes = Vec::new();
    for c in &req.changes {
        changes.push(match c {
            PlanChange::AddVms { group, vms } => Change::AddVms { group: *group, vms: resolve(&all, vms)? },
            PlanChange::RemoveVms { vms } => Change::RemoveVms { vms: resolve_ids(&doc.body, &all, vms)? },
            PlanChange::MoveVms { vms, group } => {
                Change::MoveVms { vms: resolve_ids(&doc.body, &all, vms)?, group: *group }
            }
            PlanChange::AddGroup => Change::AddGroup,
            PlanChange::DeleteGroup { group } => Change::DeleteGroup { group: *group },
            PlanChange::MoveGroup { group, to } => Change::MoveGroup { group: *group, to: *to },
            PlanChange::AddStep { group, phase, step } => {
                Change::AddStep { group: *group, phase: *phase, step: step.clone() }
            }
            PlanChange::RemoveStep { group, phase, index } => {
                Change::RemoveStep { group: *group, phase: *phase, index: *index }
            }
            PlanChange::SetDescription { description } => Change::SetDescription { description: description.clone() },
        });
    }
    let mut edited = ferry_core::plan::apply_changes(&doc.body, &changes).map_err(core_err)?;
    edited.updated_at = st.clock.now();
    st.store
        .put_doc(
            DocKind::RecoveryPlan,
            v.id,
            &edited.id.to_string(),
            Some(&edited.container_mapping.to_string()),
            Some(&unique(&edited.name)),
            &edited,
            Some(doc.version),
        )
        .await?;
    let doc = load_plan(&st, v.id, &edited.id.to_string()).await?;
    Ok(Json(shown(&st, doc).await?))
}

/// Whether the plan's last job still runs or waits.
async fn job_open(st: &AppState, plan: &RecoveryPlan) -> ApiResult<Option<Job>> {
    let Some(last) = &plan.last_job else { return Ok(None) };
    Ok(st.store.get_job(plan.vault_id, last.job).await?.filter(|j| !j.status.is_terminal()))
}

#[utoipa::path(delete, path = "/api/v1/vaults/{vault}/replicationRecoveryPlans/{plan}", tag = "recoveryPlans", params(("vault" = String, Path), ("plan" = String, Path)), responses((status = 204), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn delete_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, plan)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let doc = load_plan(&st, v.id, &plan).await?;
    if let Some(j) = job_open(&st, &doc.body).await? {
        return Err(ApiFailure::conflict(
            "PlanJobRunning",
            format!(
                "Job {} ({}) of plan {} is {}; wait for it or cancel it first",
                j.id,
                j.operation,
                doc.body.name,
                j.status.as_str()
            ),
        ));
    }
    st.store.delete_doc(DocKind::RecoveryPlan, v.id, &doc.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// RP-3 for a plan's VM: the point sent to its replica host (`latest` resolved there, as for
/// one VM: [`super::items::overlay_point`]).
fn overlay_point(item: &ProtectedItem, raw: Option<&str>) -> ApiResult<String> {
    let chosen = choose_point(item, raw)?;
    Ok(match raw {
        None | Some("latest") | Some("latestProcessed") => super::items::LATEST_POINT.to_string(),
        Some(_) => chosen,
    })
}

/// RP-3 for a plan's VM: the point an operation uses.
fn choose_point(item: &ProtectedItem, raw: Option<&str>) -> ApiResult<String> {
    use ferry_core::retention::RecoveryPointChoice as C;
    let choice = match raw.unwrap_or("latestProcessed") {
        "latest" => C::Latest,
        "latestProcessed" => C::LatestProcessed,
        "latestAppConsistent" => C::LatestAppConsistent,
        other => {
            return Err(ApiFailure::bad_request(
                "InvalidValue",
                format!("Recovery point '{other}': a plan takes latest, latestProcessed or latestAppConsistent"),
            ))
        }
    };
    super::items::select_point(item, &choice)
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationRecoveryPlans/{plan}/{operation}", tag = "recoveryPlans", request_body = PlanOperationRequest, params(("vault" = String, Path), ("plan" = String, Path), ("operation" = String, Path, description = "testFailover, testFailoverCleanup, plannedFailover, unplannedFailover, failoverCommit, reProtect")), responses((status = 202, body = Job), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError), (status = 501, body = ferry_types::ApiError)))]
pub async fn operate_plan(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, plan, operation)): Path<(String, String, String)>,
    ApiJson(req): ApiJson<PlanOperationRequest>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let op =
        Operation::parse(&operation).filter(|o| crate::jobs::plan_operation_name(*o).is_some()).ok_or_else(|| {
            ApiFailure::not_found("Operation", &operation)
                .into_code("UnknownOperation", format!("'{operation}' is not an operation on recovery plans"))
        })?;
    auth.require(Role::Operator)?;
    let (v, _) = st.vault(&vault).await?;
    let doc = load_plan(&st, v.id, &plan).await?;
    let plan = doc.body.clone();
    if let Some(j) = job_open(&st, &plan).await? {
        // A test failover waits at "Complete testing" until its cleanup: that one may run.
        let cleanup_of_test = op == Operation::TestFailoverCleanup && j.operation == crate::jobs::OP_PLAN_TEST_FAILOVER;
        if !cleanup_of_test {
            return Err(ApiFailure::conflict(
                "PlanJobRunning",
                format!("Job {} ({}) of plan {} is {}", j.id, j.operation, plan.name, j.status.as_str()),
            ));
        }
    }
    let (items, states) = plan_vms(&st, &plan).await?;
    ferry_core::plan::check_plan_operation(&states, op).map_err(core_err)?;
    let job_op = crate::jobs::plan_operation_name(op).unwrap_or_default();
    if op == Operation::ReProtect && !st.jobs.knows(crate::jobs::OP_ITEM_REPROTECT) {
        return Err(ApiFailure::new(
            StatusCode::NOT_IMPLEMENTED,
            "OperationNotImplemented",
            "Reverse replication (reProtect) is not available in this release of Ferry",
        ));
    }
    let first = items.first().ok_or_else(|| core_err(ferry_core::Error::PlanHasNoVms))?;
    if items.iter().any(|i| i.direction != first.direction) {
        return Err(ApiFailure::conflict(
            "PlanMixedDirections",
            format!("The VMs of plan {} do not all replicate in the same direction", plan.name),
        ));
    }
    let direction = match first.direction {
        Direction::Forward => "PrimaryToRecovery",
        Direction::Reverse => "RecoveryToPrimary",
    };
    let mut params = PlanParams {
        plan: plan.clone(),
        operation: op,
        direction: direction.to_string(),
        script_fabric: first.target.fabric,
        points: vec![],
        network: TestNetwork::None,
        bridge: None,
        notes: req.notes.clone().unwrap_or_default(),
        shutdown_source: req.shutdown_source,
        source_fenced: req.source_fenced,
        test_job: None,
        attempt: 0,
    };
    let mut claimed: Vec<Uuid> = Vec::new();
    match op {
        Operation::TestFailover => {
            for it in &items {
                params.points.push(ItemPoint { item: it.id, point: overlay_point(it, req.recovery_point.as_deref())? });
            }
            params.network = match req.network.clone().unwrap_or_default() {
                TestNetwork::Existing { network } => {
                    let target = load_fabric(&st, v.id, &first.target.fabric.to_string()).await?.body;
                    let n = target
                        .inventory
                        .vm_networks
                        .iter()
                        .find(|n| n.name == network || n.id == network)
                        .ok_or_else(|| ApiFailure::not_found("Target VM network", &network))?;
                    TestNetwork::Existing { network: n.name.clone() }
                }
                other => other,
            };
            params.bridge = matches!(params.network, TestNetwork::Automatic)
                .then(|| format!("fyt{}", &Uuid::new_v4().simple().to_string()[..8]));
            // Claim every VM first (one test failover at a time); undo on a refusal.
            let now = st.clock.now();
            for it in &items {
                let point = params.points.iter().find(|p| p.item == it.id).map(|p| p.point.clone()).unwrap_or_default();
                let info = crate::jobs::test_info(
                    Uuid::nil(),
                    format!("{}-test", it.name),
                    point,
                    params.network.clone(),
                    params.bridge.clone(),
                    now,
                );
                let mut ok = false;
                let res = crate::replication::update_item(&st, v.id, it.id, |i| {
                    ok = false;
                    if i.test_failover.is_none() {
                        i.test_failover = Some(info.clone());
                        ok = true;
                    }
                })
                .await;
                if res.is_err() || !ok {
                    release_claims(&st, v.id, &claimed).await;
                    return Err(ApiFailure::conflict(
                        "TestFailoverRunning",
                        format!("A test failover of {} is already running", it.name),
                    ));
                }
                claimed.push(it.id);
            }
        }
        Operation::TestFailoverCleanup => {
            params.test_job = items.iter().find_map(|i| i.test_failover.as_ref().map(|t| t.job));
        }
        Operation::PlannedFailover => {
            for it in &items {
                crate::replication::apply_operation(&st, v.id, it.id, Operation::PlannedFailover).await?;
            }
        }
        Operation::UnplannedFailover => {
            // FO-3 fencing, per VM: a source the vault sees running on a connected host blocks
            // the plan unless the operator has it shut down first or confirms it is fenced.
            if !req.source_fenced && !req.shutdown_source {
                let mut running = Vec::new();
                for it in &items {
                    let source = load_fabric(&st, v.id, &it.source.fabric.to_string()).await?.body;
                    let host_up = source.inventory.host(&it.source.host).is_some_and(|h| h.connected);
                    let up = source
                        .inventory
                        .vm(&it.vm_id)
                        .is_some_and(|vm| vm.power_state == ferry_types::fabric::PowerState::Running);
                    if host_up && up {
                        running.push(it.name.clone());
                    }
                }
                if !running.is_empty() {
                    return Err(ApiFailure::with(
                        StatusCode::CONFLICT,
                        crate::jobs::source_running(&running.join(", ")),
                    ));
                }
            }
            for it in &items {
                let point = overlay_point(it, req.recovery_point.as_deref())?;
                params.points.push(ItemPoint { item: it.id, point });
            }
        }
        _ => {}
    }
    let tasks = crate::jobs::plan_tasks(&params);
    let job = st
        .jobs
        .submit(
            &st,
            NewJob {
                vault: v.id,
                operation: job_op,
                object_type: "RecoveryPlan",
                object_id: plan.id.to_string(),
                object_name: plan.name.clone(),
                fabric: Some(first.target.fabric),
                params: crate::jobs::JobInput::of(&params).resumable_after_failure(),
                tasks,
            },
        )
        .await;
    let job = match job {
        Ok(j) => j,
        Err(e) => {
            release_claims(&st, v.id, &claimed).await;
            return Err(e.into());
        }
    };
    for id in &claimed {
        let jid = job.id;
        let _ = crate::replication::update_item(&st, v.id, *id, |i| {
            if let Some(t) = i.test_failover.as_mut() {
                t.job = jid;
            }
        })
        .await;
    }
    // Remember the plan's last job (retry on a concurrent edit).
    for _ in 0..5 {
        let Ok(d) = load_plan(&st, v.id, &plan.id.to_string()).await else { break };
        let mut p = d.body;
        p.last_job = Some(PlanJobRef { job: job.id, operation: op, at: st.clock.now() });
        let res = st
            .store
            .put_doc(
                DocKind::RecoveryPlan,
                v.id,
                &p.id.to_string(),
                Some(&p.container_mapping.to_string()),
                Some(&unique(&p.name)),
                &p,
                Some(d.version),
            )
            .await;
        if res.is_ok() {
            break;
        }
    }
    Ok((StatusCode::ACCEPTED, Json(job)))
}

async fn release_claims(st: &AppState, vault: Uuid, ids: &[Uuid]) {
    for id in ids {
        let _ = crate::replication::update_item(st, vault, *id, |i| i.test_failover = None).await;
    }
}
