//! Replicated items: health with reasons, state, RPO, recovery points, and the operations the
//! API allows now (JOB-2, JOB-3, RP-1, FO-1..4).
//!
//! Operations are rendered from the item's `allowedOperations`, whatever they are: an operation
//! the portal knows gets its inputs (recovery point, test network, notes, source shutdown and
//! fencing), any other gets a plain button, so operations added to the API later appear without
//! a portal change. Operations the user's role may not run are not offered.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use ferry_types::auth::Role;
use ferry_types::fabric::Fabric;
use ferry_types::protection::{Health, Operation, OperationRequest, ProtectedItem, TestNetwork};
use maud::{html, Markup};

use super::overview::job_rows;
use super::replicate::all_items;
use super::{
    csrf_field, error_page, fmt_age, fmt_bytes, fmt_opt_time, fmt_time, health_badge, humanize, page, redirect_with,
    Form, Frame, Nav, Notice, User,
};
use crate::api::jobs::JobQuery;
use crate::error::ApiFailure;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

/// The inputs an operation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Recovery point (RP-3); the first value is the default.
    Point(&'static str),
    TestNetwork,
    Notes,
    ShutdownSource,
    SourceFenced,
    /// Offline import (POL-8): the folder holding the carried export (empty: the policy's).
    ImportPath,
}

/// What the portal asks for each operation; unknown operations take no input.
pub fn inputs(op: Operation) -> &'static [Input] {
    match op {
        Operation::TestFailover => &[Input::Point("latestProcessed"), Input::TestNetwork],
        Operation::TestFailoverCleanup => &[Input::Notes],
        Operation::UnplannedFailover => &[Input::Point("latest"), Input::ShutdownSource, Input::SourceFenced],
        Operation::ApplyRecoveryPoint => &[Input::Point("latestProcessed")],
        Operation::ImportInitialReplica => &[Input::ImportPath],
        _ => &[],
    }
}

/// The role an operation needs (the API checks the same).
pub fn needed_role(op: Operation) -> Role {
    if op.is_failover_type() {
        Role::Operator
    } else {
        Role::Contributor
    }
}

pub fn op_label(op: Operation) -> String {
    match op {
        Operation::TestFailover => "Test failover".into(),
        Operation::TestFailoverCleanup => "Cleanup test failover".into(),
        Operation::PlannedFailover => "Planned failover".into(),
        Operation::UnplannedFailover => "Unplanned failover".into(),
        Operation::ApplyRecoveryPoint => "Change recovery point".into(),
        Operation::FailoverCommit => "Commit".into(),
        Operation::FailoverCancel => "Cancel failover".into(),
        Operation::ReProtect => "Re-protect (reverse replication)".into(),
        Operation::DisableProtection => "Disable protection".into(),
        other => humanize(other.as_str()),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    health: Option<String>,
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Normal => "Normal",
        Health::Warning => "Warning",
        Health::Critical => "Critical",
        Health::NotApplicable => "NotApplicable",
    }
}

fn site_name(fabrics: &[Fabric], id: uuid::Uuid) -> String {
    fabrics.iter().find(|f| f.id == id).map(|f| f.name.clone()).unwrap_or_else(|| id.to_string())
}

/// Recovery point objective: the age of the newest recovery point on the replica.
fn rpo(item: &ProtectedItem, now: chrono::DateTime<chrono::Utc>) -> String {
    match item.stats.latest_point.or(item.stats.last_sync) {
        Some(t) => fmt_age((now - t).num_seconds()),
        None => "—".into(),
    }
}

pub async fn list(
    State(st): State<AppState>,
    user: User,
    Path(vault): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let res = async {
        let Json(v) = crate::api::vaults::get_vault(State(st.clone()), user.auth.clone(), Path(vault.clone())).await?;
        let Json(fabrics) =
            crate::api::fabrics::list_fabrics(State(st.clone()), user.auth.clone(), Path(vault.clone())).await?;
        let items = all_items(&st, &user, &vault).await?;
        Ok::<_, ApiFailure>((v, fabrics, items))
    }
    .await;
    let (v, fabrics, mut items) = match res {
        Ok(x) => x,
        Err(e) => return error_page(&user, None, e),
    };
    if let Some(h) = q.health.as_deref().filter(|h| !h.is_empty()) {
        items.retain(|i| health_name(i.health).eq_ignore_ascii_case(h));
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    let base = format!("/portal/vaults/{}", v.id);
    let now = st.clock.now();
    let content = html! {
        form method="get" action={ (base) "/items" } class="filters" {
            label { "Health "
                select name="health" {
                    option value="" { "Any" }
                    @for h in ["Normal", "Warning", "Critical", "NotApplicable"] {
                        option value=(h) selected[q.health.as_deref() == Some(h)] { (humanize(h)) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if items.is_empty() { p class="muted" { "No replicated item." } }
        @else {
            table id="items" {
                thead { tr { th { "VM" } th { "Health" } th { "State" } th { "Source" } th { "Target" } th { "RPO" } th { "Recovery points" } th { "Last test" } } }
                tbody {
                    @for i in &items {
                        tr id={ "item-" (i.name) } {
                            td { a href={ (base) "/items/" (i.id) } { (i.name) } }
                            td { (health_badge(i.health)) @if !i.health_reasons.is_empty() { div class="reasons" { (i.health_reasons.join("; ")) } } }
                            td class="state" { (humanize(&format!("{:?}", i.state))) }
                            td { (site_name(&fabrics, i.source.fabric)) " / " (i.source.host_name) }
                            td { (site_name(&fabrics, i.target.fabric)) " / " (i.target.host_name) }
                            td { (rpo(i, now)) }
                            td { (i.recovery_points.len()) }
                            td { (fmt_opt_time(i.last_test_failover.as_ref().map(|t| t.at))) }
                        }
                    }
                }
            }
        }
    };
    page(
        Frame { user: &user, vault: Some(&v), nav: Nav::Items, title: "Replicated items", refresh: None, notice: None },
        content,
        StatusCode::OK,
    )
}

pub async fn detail(State(st): State<AppState>, user: User, Path((vault, item)): Path<(String, String)>) -> Response {
    render(&st, &user, &vault, &item, None, StatusCode::OK).await
}

fn point_select(item: &ProtectedItem, default: &str) -> Markup {
    html! {
        label { "Recovery point"
            select name="recovery_point" {
                @for (v, l) in [("latestProcessed", "Latest processed"), ("latest", "Latest (process all received data first)"), ("latestAppConsistent", "Latest app-consistent")] {
                    option value=(v) selected[v == default] { (l) }
                }
                @for p in item.recovery_points.iter().rev() {
                    option value=(p.id) { (fmt_time(p.time)) @if p.app_consistent { " · app-consistent" } @else { " · crash-consistent" } " · " (p.id) }
                }
            }
        }
    }
}

fn operation_form(base: &str, user: &User, item: &ProtectedItem, target: Option<&Fabric>, op: Operation) -> Markup {
    let name = op.as_str();
    html! {
        form method="post" action={ (base) "/items/" (item.id) "/" (name) } class="op" id={ "op-" (name) } {
            (csrf_field(user))
            h3 { (op_label(op)) }
            @for input in inputs(op) {
                @match input {
                    Input::Point(default) => (point_select(item, default)),
                    Input::TestNetwork => label { "Network of the test VM"
                        select name="network" {
                            option value="auto" { "Create an isolated network automatically (deleted at cleanup)" }
                            option value="none" { "No network (NICs disconnected)" }
                            @if let Some(t) = target {
                                @for n in &t.inventory.vm_networks { option value={ "existing:" (n.name) } { "Existing: " (t.name) " / " (n.name) } }
                            }
                        }
                    },
                    Input::Notes => label { "Notes" textarea name="notes" rows="3" {} },
                    Input::ShutdownSource => label class="check" { input type="checkbox" name="shutdown_source"; "Shut down the source VM and send its last changes first" },
                    Input::SourceFenced => label class="check" { input type="checkbox" name="source_fenced"; "The source is fenced (its host is powered off or cut from network and storage)" },
                    Input::ImportPath => label { "Folder on the target host holding the export folder " code { (item.id) } " (empty: the policy's import path)"
                        input type="text" name="import_path";
                    },
                }
            }
            button type="submit" id={ "do-" (name) } { (op_label(op)) }
        }
    }
}

/// The operation input from a submitted form.
pub fn operation_request(op: Operation, form: &Form) -> OperationRequest {
    let mut req = OperationRequest::default();
    for input in inputs(op) {
        match input {
            Input::Point(_) => req.recovery_point = form.get("recovery_point").map(str::to_string),
            Input::TestNetwork => {
                req.network = Some(match form.get("network") {
                    Some("none") => TestNetwork::None,
                    Some(n) if n.starts_with("existing:") => {
                        TestNetwork::Existing { network: n.trim_start_matches("existing:").to_string() }
                    }
                    _ => TestNetwork::Automatic,
                })
            }
            Input::Notes => req.notes = form.get("notes").map(str::to_string),
            Input::ShutdownSource => req.shutdown_source = form.checked("shutdown_source"),
            Input::SourceFenced => req.source_fenced = form.checked("source_fenced"),
            Input::ImportPath => {
                req.import_path = form.get("import_path").map(str::trim).filter(|p| !p.is_empty()).map(str::to_string)
            }
        }
    }
    req
}

async fn render(
    st: &AppState,
    user: &User,
    vault: &str,
    item: &str,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let res = async {
        let Json(v) =
            crate::api::vaults::get_vault(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
        let Json(it) = crate::api::items::get_item(
            State(st.clone()),
            user.auth.clone(),
            Path((vault.to_string(), item.to_string())),
        )
        .await?;
        let Json(fabrics) =
            crate::api::fabrics::list_fabrics(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
        let Json(policies) =
            crate::api::policies::list_policies(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
        let Json(jobs) = crate::api::jobs::list_jobs(
            State(st.clone()),
            user.auth.clone(),
            Path(vault.to_string()),
            ApiQuery(JobQuery { object_id: Some(it.id.to_string()), limit: Some(10), ..Default::default() }),
        )
        .await?;
        Ok::<_, ApiFailure>((v, it, fabrics, policies, jobs.items))
    }
    .await;
    let (v, it, fabrics, policies, jobs) = match res {
        Ok(x) => x,
        Err(e) => return error_page(user, None, e),
    };
    let base = format!("/portal/vaults/{}", v.id);
    let now = st.clock.now();
    let target = fabrics.iter().find(|f| f.id == it.target.fabric);
    let cloud_name = |fabric: uuid::Uuid, cloud: &str| {
        fabrics
            .iter()
            .find(|f| f.id == fabric)
            .and_then(|f| f.inventory.cloud(cloud))
            .map(|c| c.name.clone())
            .unwrap_or_else(|| cloud.to_string())
    };
    let net_name = |fabric: uuid::Uuid, id: &str| {
        fabrics
            .iter()
            .find(|f| f.id == fabric)
            .and_then(|f| f.inventory.vm_network(id))
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let ops: Vec<Operation> = it.allowed_operations.iter().copied().filter(|op| user.can(needed_role(*op))).collect();
    let refresh = jobs.iter().any(|j| !j.status.is_terminal() && j.status.as_str() != "WaitingForInput").then_some(5);
    let s = &it.stats;
    let content = html! {
        div class="columns" {
            section id="summary" {
                h2 { "Replication" }
                dl {
                    dt { "Health" } dd id="health" { (health_badge(it.health)) }
                    @if !it.health_reasons.is_empty() {
                        dt { "Reasons" } dd id="health-reasons" { ul { @for r in &it.health_reasons { li { (r) } } } }
                    }
                    dt { "State" } dd id="state" { (humanize(&format!("{:?}", it.state))) }
                    dt { "Direction" } dd { (format!("{:?}", it.direction)) }
                    dt { "Source" } dd { (site_name(&fabrics, it.source.fabric)) " / " (cloud_name(it.source.fabric, &it.source.cloud)) " / " (it.source.host_name) }
                    dt { "Target" } dd { (site_name(&fabrics, it.target.fabric)) " / " (cloud_name(it.target.fabric, &it.target.cloud)) " / " (it.target.host_name) }
                    dt { "Policy" } dd { (policies.iter().find(|p| p.id == it.policy).map(|p| p.spec.name.clone()).unwrap_or_default()) }
                    dt { "Protected since" } dd { (fmt_time(it.created_at)) }
                    @if let Some(f) = &it.failover {
                        dt { "Failed over" } dd id="failover" { (fmt_time(f.at)) " at point " code { (f.point) } }
                    }
                }
            }
            section id="stats" {
                h2 { "Statistics" }
                dl {
                    dt { "RPO (age of the newest point)" } dd id="rpo" { (rpo(&it, now)) }
                    dt { "Newest recovery point" } dd { (fmt_opt_time(s.latest_point)) }
                    dt { "Last synchronized" } dd { (fmt_opt_time(s.last_sync)) }
                    dt { "Copy interval" } dd id="interval" { @if s.interval_secs > 0 { (s.interval_secs) " s" } @else { "—" } }
                    dt { "Initial replication" } dd { (s.initial_progress) "%" }
                    dt { "Cycles missed, last hour" } dd id="missed-hour" { (s.cycles_missed_hour) " of " (s.cycles_expected_hour) " expected" }
                    dt { "Cycles done / failed since the agent started" } dd { (s.cycles_ok) " / " (s.cycles_missed) }
                    @if let Some(e) = &s.last_error {
                        dt { "Failing" } dd id="failing" { @if let Some(t) = s.failing_since { "since " (fmt_time(t)) ": " } (e) }
                    }
                    dt { "Average / maximum delta" } dd { (fmt_bytes(s.avg_delta_bytes)) " / " (fmt_bytes(s.max_delta_bytes)) }
                    dt { "Average latency" } dd { (s.avg_latency_ms) " ms" }
                    dt { "Data waiting" } dd { (fmt_bytes(s.data_waiting_bytes)) }
                }
                @if let Some(x) = &s.rpo_explanation {
                    h3 { "Why this RPO" }
                    ul id="rpo-explanation" { @for f in &x.findings { li { (f) } } }
                    @if x.cycles > 0 {
                        table id="rpo-split" {
                            thead { tr { th { "Per point (average)" } th { "Time" } } }
                            tbody {
                                @for (label, ms) in [("Copy interval", x.schedule_ms), ("Capture", x.capture_ms), ("Transfer", x.transfer_ms), ("Apply on the replica", x.apply_ms), ("Bandwidth limit", x.throttled_ms), ("Retries after errors", x.backoff_ms), ("Paused", x.paused_ms), ("Time window", x.window_ms)] {
                                    tr { td { (label) } td { (ferry_core::rpo::fmt_ms(ms)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section id="test-failover" {
            h2 { "Test failover" }
            @match &it.test_failover {
                Some(t) => p id="test-running" {
                    "Test VM " strong { (t.vm_name) } " runs from point " code { (t.recovery_point) } " since " (fmt_time(t.started_at))
                    " (network: " (match &t.network { TestNetwork::None => "none".to_string(), TestNetwork::Automatic => format!("automatic{}", t.created_bridge.as_deref().map(|b| format!(", bridge {b}")).unwrap_or_default()), TestNetwork::Existing { network } => network.clone() }) "). "
                    a href={ (base) "/jobs/" (t.job) } { "Job" }
                },
                None => p class="muted" { "No test failover running." },
            }
            @match &it.last_test_failover {
                Some(t) => p id="last-test" { "Last test cleaned up " (fmt_time(t.at)) " (point " code { (t.recovery_point) } "). Notes: " span id="last-test-notes" { (t.notes) } },
                None => p id="last-test" class="muted" { "Never tested: a test failover is recommended." },
            }
        }
        section id="operations" {
            h2 { "Operations" }
            @if ops.is_empty() {
                p class="muted" id="no-operations" {
                    @if it.allowed_operations.is_empty() { "No operation is allowed in this state." }
                    @else { "Your role (" (user.role.as_str()) ") may not run the operations allowed now." }
                }
            }
            div class="ops" { @for op in &ops { (operation_form(&base, user, &it, target, *op)) } }
        }
        section id="recovery-points" {
            h2 { "Recovery points" span class="muted" { " · " (it.recovery_points.len()) } }
            @if let Some(e) = &it.existing_replica {
                p id="existing-replica" {
                    "Started from " (match e.source {
                        ferry_types::site_protocol::ExistingReplicaSource::KeptReplica => "a replica kept on the target host",
                        ferry_types::site_protocol::ExistingReplicaSource::ExistingImages => "existing images on the target host",
                    }) " with " (e.points) " recovery point(s); only the differences were sent (REP-7)."
                }
            }
            @if it.recovery_points.is_empty() { p class="muted" { "None yet." } }
            @else {
                @if user.can(Role::Contributor) {
                    form method="post" action={ (base) "/items/" (it.id) "/" (VERIFY_POINTS) } id="op-verify" {
                        (csrf_field(user))
                        "Re-read the points on the replica host and compare them with their manifests: "
                        button type="submit" id="do-verify" { "Verify all points" }
                    }
                }
                table id="points" {
                    thead { tr { th { "Time" } th { "Type" } th { "Size" } th { "Verified" } th { "Id" } } }
                    tbody {
                        @for p in it.recovery_points.iter().rev() {
                            tr {
                                td { (fmt_time(p.time)) }
                                td { @if p.app_consistent { "App-consistent" } @else { "Crash-consistent" } }
                                td { (fmt_bytes(p.size_bytes)) }
                                td class="verified" {
                                    @match &p.verification {
                                        None => span class="muted" { "Not yet" },
                                        Some(v) if !v.sealed => span class="muted" { "No manifest" },
                                        Some(v) if v.ok => { "Exact · " (fmt_time(v.at)) },
                                        Some(v) => strong class="badge crit" { "Damaged: " (v.damage.join("; ")) },
                                    }
                                }
                                td { code { (p.id) } }
                            }
                        }
                    }
                }
            }
        }
        div class="columns" {
            section id="disks" {
                h2 { "Disks" }
                table {
                    thead { tr { th { "Disk" } th { "Size" } th { "Replica location" } th { "Placement" } } }
                    tbody { @for d in &it.disks { tr { td { (d.target) } td { (fmt_bytes(d.virtual_size)) } td { code { (d.location) } } td { (humanize(&d.placement)) } } } }
                }
            }
            section id="nics" {
                h2 { "Network adapters" }
                table {
                    thead { tr { th { "MAC" } th { "Source network" } th { "Replica network" } th { "Subnet" } th { "IP" } } }
                    tbody {
                        @for n in &it.nics {
                            tr {
                                td { code { (n.mac) } }
                                td { (n.source_network.as_deref().map(|x| net_name(it.source.fabric, x)).unwrap_or_else(|| "—".into())) }
                                td { (n.target_network.as_deref().map(|x| net_name(it.target.fabric, x)).unwrap_or_else(|| "disconnected (not mapped)".into())) }
                                td { (n.subnet.clone().unwrap_or_default()) }
                                td { (n.ip.clone().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
        section id="item-jobs" {
            h2 { "Jobs" a class="more" href={ (base) "/jobs?objectId=" (it.id) } { "All jobs of this item" } }
            @if jobs.is_empty() { p class="muted" { "None." } }
            @else {
                table {
                    thead { tr { th { "Job" } th { "Object" } th { "Status" } th { "Progress" } th { "Created" } } }
                    tbody { (job_rows(&base, &jobs)) }
                }
            }
        }
    };
    let title = it.name.clone();
    page(Frame { user, vault: Some(&v), nav: Nav::Items, title: &title, refresh, notice }, content, status)
}

/// The portal's action that verifies every recovery point of an item (RP-1).
const VERIFY_POINTS: &str = "verifyRecoveryPoints";

pub async fn operate(
    State(st): State<AppState>,
    user: User,
    Path((vault, item, operation)): Path<(String, String, String)>,
    form: Form,
) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        if operation == VERIFY_POINTS {
            return crate::api::items::verify_points(
                State(st.clone()),
                user.auth.clone(),
                Path((vault.clone(), item.clone())),
                ApiJson(ferry_types::protection::VerifyPointsRequest { recovery_point: None }),
            )
            .await;
        }
        let req = Operation::parse(&operation).map(|op| operation_request(op, &form)).unwrap_or_default();
        crate::api::items::operate(
            State(st.clone()),
            user.auth.clone(),
            Path((vault.clone(), item.clone(), operation.clone())),
            ApiJson(req),
        )
        .await
    }
    .await;
    match res {
        Ok((_, Json(job))) => redirect_with(
            &format!("/portal/vaults/{}/jobs/{}", job.vault_id, job.id),
            &format!("{} started for {}", humanize(&job.operation), job.object_name),
        ),
        Err(e) => {
            let status = e.status;
            render(&st, &user, &vault, &item, Some(e.into()), status).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn fo_1_portal_operation_inputs() {
        let r = operation_request(
            Operation::TestFailover,
            &form(&[("recovery_point", "rp-7"), ("network", "existing:VMNetwork2-Chicago"), ("notes", "ignored")]),
        );
        assert_eq!(r.recovery_point.as_deref(), Some("rp-7"));
        assert_eq!(r.network, Some(TestNetwork::Existing { network: "VMNetwork2-Chicago".into() }));
        assert_eq!(r.notes, None, "a test failover takes no notes");
        let r = operation_request(Operation::TestFailover, &form(&[("network", "auto")]));
        assert_eq!(r.network, Some(TestNetwork::Automatic));
        assert_eq!(r.recovery_point, None);
        let r = operation_request(Operation::TestFailoverCleanup, &form(&[("notes", "drill ok")]));
        assert_eq!(r.notes.as_deref(), Some("drill ok"));
        let r = operation_request(
            Operation::UnplannedFailover,
            &form(&[("recovery_point", "latestAppConsistent"), ("source_fenced", "on")]),
        );
        assert_eq!(r.recovery_point.as_deref(), Some("latestAppConsistent"));
        assert!(r.source_fenced && !r.shutdown_source);
        let r = operation_request(Operation::ImportInitialReplica, &form(&[("import_path", " /srv/import ")]));
        assert_eq!(r.import_path.as_deref(), Some("/srv/import"));
        let r = operation_request(Operation::ImportInitialReplica, &form(&[("import_path", "")]));
        assert_eq!(r.import_path, None, "empty means the policy's import path");
        // Operations the portal has no inputs for still get a button and an empty request.
        assert!(inputs(Operation::ReProtect).is_empty());
        assert_eq!(operation_request(Operation::FailoverCommit, &form(&[("notes", "x")])).notes, None);
    }

    #[test]
    fn sec_2_portal_operations_follow_roles() {
        assert_eq!(needed_role(Operation::TestFailover), Role::Operator);
        assert_eq!(needed_role(Operation::UnplannedFailover), Role::Operator);
        assert_eq!(needed_role(Operation::DisableProtection), Role::Contributor);
        assert!(!Role::Reader.allows(needed_role(Operation::FailoverCommit)));
        assert_eq!(op_label(Operation::PauseReplication), "Pause replication", "unknown operations get a label");
    }
}
