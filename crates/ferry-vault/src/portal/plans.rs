//! Recovery plans (PLAN-1..PLAN-4): the list with a create form, and each plan's page: groups in
//! order with their VMs and pre-/post-steps, every edit the API offers, the operations the API
//! allows now and the plan's jobs.
//!
//! Every edit is one call of the API's update handler with the version the page showed
//! (`expected_version`): an edit made from a stale page is refused (412), and a refused edit
//! changes nothing; the page then shows the API's error. Creating, editing and deleting a plan
//! need a Contributor, its operations an Operator, as the API checks; what the user's role may
//! not do is not offered.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use ferry_types::auth::Role;
use ferry_types::fabric::Fabric;
use ferry_types::job::{Job, JobStatus};
use ferry_types::mapping::ContainerMapping;
use ferry_types::plan::{
    CreatePlan, PlanChange, PlanFailoverType, PlanGroup, PlanJobRef, PlanOperationRequest, PlanStep, RecoveryPlan,
    StepPhase, UpdatePlan, MAX_PLAN_GROUPS, MAX_PLAN_VMS,
};
use ferry_types::protection::{Operation, ProtectedItem};
use ferry_types::vault::Vault;
use maud::{html, Markup};
use uuid::Uuid;

use super::items::{inputs, needed_role, op_label, operation_request, Input};
use super::overview::job_rows;
use super::replicate::all_items;
use super::{
    csrf_field, error_page, fmt_time, health_badge, humanize, page, redirect_with, Form, Frame, Nav, Notice, User,
};
use crate::api::jobs::JobQuery;
use crate::error::ApiFailure;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

/// The recovery points a plan operation takes (the same choice for every VM of the plan).
const PLAN_POINTS: [(&str, &str); 3] = [
    ("latestProcessed", "Latest processed"),
    ("latest", "Latest (process all received data first)"),
    ("latestAppConsistent", "Latest app-consistent"),
];

mod edit_form;
use edit_form::*;

/// "Site / cloud" of a cloud of the inventory.
fn cloud_label(fabrics: &[Fabric], fabric: Uuid, cloud: &str) -> String {
    match fabrics.iter().find(|f| f.id == fabric) {
        Some(f) => {
            let name = f.inventory.cloud(cloud).map(|c| c.name.clone()).unwrap_or_else(|| cloud.to_string());
            format!("{} / {name}", f.name)
        }
        None => format!("{fabric} / {cloud}"),
    }
}

fn pair_label(fabrics: &[Fabric], m: &ContainerMapping) -> String {
    format!(
        "{} → {}",
        cloud_label(fabrics, m.source.fabric, &m.source.id),
        cloud_label(fabrics, m.target.fabric, &m.target.id)
    )
}

fn plan_pair_label(fabrics: &[Fabric], p: &RecoveryPlan) -> String {
    format!(
        "{} → {}",
        cloud_label(fabrics, p.source_fabric, &p.source_cloud),
        cloud_label(fabrics, p.target_fabric, &p.target_cloud)
    )
}

fn phase_name(phase: StepPhase) -> &'static str {
    match phase {
        StepPhase::Pre => "Pre",
        StepPhase::Post => "Post",
    }
}

fn types_text(types: &[PlanFailoverType]) -> String {
    if types.is_empty() {
        "every failover type".into()
    } else {
        types.iter().map(|t| humanize(t.as_str())).collect::<Vec<_>>().join(", ")
    }
}

/// A step as the plan page and the job page show it.
pub fn step_text(s: &PlanStep) -> Markup {
    match s {
        PlanStep::Script { name, path, failover_types } => html! {
            span class="badge info" { "Script" } " " strong class="step-name" { (name) } " " code class="step-path" { (path) }
            span class="muted" { " · " (types_text(failover_types)) }
        },
        PlanStep::ManualAction { name, instructions, failover_types } => html! {
            span class="badge warn" { "Manual action" } " " strong class="step-name" { (name) }
            span class="muted" { " · " (types_text(failover_types)) }
            div class="instructions" { (instructions) }
        },
    }
}

fn last_job_cell(base: &str, r: Option<&PlanJobRef>, j: Option<&Job>) -> Markup {
    match (r, j) {
        (Some(r), Some(j)) => html! {
            a href={ (base) "/jobs/" (j.id) } { (op_label(r.operation)) } " · "
            span class={ "status " (j.status.as_str()) } { (humanize(j.status.as_str())) }
            span class="muted" { " · " (fmt_time(r.at)) }
        },
        (Some(r), None) => html! { (op_label(r.operation)) span class="muted" { " · " (fmt_time(r.at)) } },
        _ => html! { span class="muted" { "None yet" } },
    }
}

async fn last_job(st: &AppState, user: &User, vault: &str, p: &RecoveryPlan) -> Option<Job> {
    let r = p.last_job.as_ref()?;
    crate::api::jobs::get_job(State(st.clone()), user.auth.clone(), Path((vault.to_string(), r.job.to_string())))
        .await
        .ok()
        .map(|Json(j)| j)
}

// ---------------------------------------------------------------------------------------------
// The list and the create form

struct ListData {
    v: Vault,
    plans: Vec<(RecoveryPlan, Option<Job>)>,
    fabrics: Vec<Fabric>,
    pairs: Vec<ContainerMapping>,
    items: Vec<ProtectedItem>,
}

async fn load_list(st: &AppState, user: &User, vault: &str) -> Result<ListData, ApiFailure> {
    let s = || State(st.clone());
    let a = || user.auth.clone();
    let p = || Path(vault.to_string());
    let Json(v) = crate::api::vaults::get_vault(s(), a(), p()).await?;
    let Json(plans) = crate::api::plans::list_plans(s(), a(), p()).await?;
    let Json(fabrics) = crate::api::fabrics::list_fabrics(s(), a(), p()).await?;
    let Json(pairs) = crate::api::mappings::list_container_mappings(s(), a(), p()).await?;
    let mut items = all_items(st, user, vault).await?;
    items.sort_by(|a, b| a.name.cmp(&b.name));
    let mut with_jobs = Vec::new();
    for pl in plans {
        let j = last_job(st, user, vault, &pl).await;
        with_jobs.push((pl, j));
    }
    Ok(ListData { v, plans: with_jobs, fabrics, pairs, items })
}

pub async fn list(State(st): State<AppState>, user: User, Path(vault): Path<String>) -> Response {
    render_list(&st, &user, &vault, None, StatusCode::OK, None).await
}

async fn render_list(
    st: &AppState,
    user: &User,
    vault: &str,
    notice: Option<Notice>,
    status: StatusCode,
    refill: Option<&Form>,
) -> Response {
    let d = match load_list(st, user, vault).await {
        Ok(d) => d,
        Err(e) => return error_page(user, None, e),
    };
    let base = format!("/portal/vaults/{}", d.v.id);
    let contributor = user.can(Role::Contributor);
    let chosen_pair = refill.and_then(|f| f.get("container_mapping")).map(str::to_string);
    let chosen_vms = refill.map(|f| f.all("vm")).unwrap_or_default();
    let content = html! {
        p class="hint" {
            "A recovery plan fails over protected VMs of one cloud pair together: group by group, each group's VMs in parallel, "
            "with scripts and manual actions before and after each group. At most " (MAX_PLAN_VMS) " VMs in " (MAX_PLAN_GROUPS) " groups."
        }
        @if d.plans.is_empty() { p class="muted" id="no-plans" { "No recovery plan yet." } }
        @else {
            table id="plans" {
                thead { tr { th { "Plan" } th { "Source → target" } th { "VMs" } th { "Groups" } th { "Last job" } } }
                tbody {
                    @for (p, j) in &d.plans {
                        tr id={ "plan-" (p.name) } {
                            td {
                                a href={ (base) "/plans/" (p.id) } { (p.name) }
                                @if !p.description.is_empty() { div class="reasons" { (p.description) } }
                            }
                            td { (plan_pair_label(&d.fabrics, p)) }
                            td class="vm-count" { (p.vm_count()) }
                            td class="groups" {
                                (p.groups.len())
                                @for g in &p.groups {
                                    div class="reasons" {
                                        "Group " (g.number) ": "
                                        @if g.items.is_empty() { "—" }
                                        @else { (g.items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")) }
                                    }
                                }
                            }
                            td class="last-job" { (last_job_cell(&base, p.last_job.as_ref(), j.as_ref())) }
                        }
                    }
                }
            }
        }
        @if contributor {
            section id="new-plan" {
                h2 { "Create a recovery plan" }
                @if d.pairs.is_empty() {
                    p class="muted" id="no-pairs" {
                        "No cloud is paired yet: pair clouds under " a href={ (base) "/prepare" } { "Prepare infrastructure" } " first."
                    }
                } @else {
                    form method="post" action={ (base) "/plans" } class="card" id="create-plan-form" {
                        (csrf_field(user))
                        div class="fields" {
                            label { "Name " input type="text" name="name" id="plan-name" maxlength="64" required value=(refill.and_then(|f| f.get("name")).unwrap_or_default()); }
                            label { "Description " input type="text" name="description" id="plan-description" maxlength="1024" value=(refill.and_then(|f| f.get("description")).unwrap_or_default()); }
                        }
                        p class="hint" { "Choose the cloud pair, and the plan's first VMs among the pair's protected VMs (they go to Group 1)." }
                        @for (i, m) in d.pairs.iter().enumerate() {
                            @let members: Vec<&ProtectedItem> = d.items.iter().filter(|it| it.container_mapping == m.id).collect();
                            @let checked = match &chosen_pair { Some(c) => *c == m.id.to_string(), None => i == 0 };
                            fieldset id={ "pair-" (m.id) } {
                                legend {
                                    label class="check" {
                                        input type="radio" name="container_mapping" value=(m.id) checked[checked];
                                        (pair_label(&d.fabrics, m))
                                    }
                                }
                                @if members.is_empty() { p class="muted" { "No protected VM in this pair yet." } }
                                @else {
                                    div class="choices" {
                                        @for it in &members {
                                            label class="check" {
                                                input type="checkbox" name="vm" value=(it.id) id={ "new-vm-" (it.name) } checked[chosen_vms.contains(&it.id.to_string())];
                                                (it.name) span class="muted" { " · " (humanize(&format!("{:?}", it.state))) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        button type="submit" id="create-plan" { "Create plan" }
                    }
                }
            }
        }
    };
    page(
        Frame { user, vault: Some(&d.v), nav: Nav::Plans, title: "Recovery plans", refresh: None, notice },
        content,
        status,
    )
}

pub async fn create(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        let container_mapping = form
            .get("container_mapping")
            .map(|m| {
                Uuid::parse_str(m)
                    .map_err(|_| ApiFailure::bad_request("InvalidValue", format!("'{m}' is not a cloud pair")))
            })
            .transpose()?;
        let req = CreatePlan {
            name: form.get("name").unwrap_or_default().to_string(),
            description: form.get("description").unwrap_or_default().to_string(),
            container_mapping,
            vms: form.all("vm"),
        };
        let (_, Json(p)) =
            crate::api::plans::create_plan(State(st.clone()), user.auth.clone(), Path(vault.clone()), ApiJson(req))
                .await?;
        Ok::<_, ApiFailure>(p)
    }
    .await;
    match res {
        Ok(p) => redirect_with(
            &format!("/portal/vaults/{}/plans/{}", p.vault_id, p.id),
            &format!("Recovery plan {} created with {} VM(s) in Group 1", p.name, p.vm_count()),
        ),
        Err(e) => {
            let status = e.status;
            render_list(&st, &user, &vault, Some(e.into()), status, Some(&form)).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A plan's page

struct Detail {
    v: Vault,
    p: RecoveryPlan,
    fabrics: Vec<Fabric>,
    items: Vec<ProtectedItem>,
    jobs: Vec<Job>,
    last: Option<Job>,
}

async fn load_detail(st: &AppState, user: &User, vault: &str, plan: &str) -> Result<Detail, ApiFailure> {
    let s = || State(st.clone());
    let a = || user.auth.clone();
    let Json(v) = crate::api::vaults::get_vault(s(), a(), Path(vault.to_string())).await?;
    let Json(p) = crate::api::plans::get_plan(s(), a(), Path((vault.to_string(), plan.to_string()))).await?;
    let Json(fabrics) = crate::api::fabrics::list_fabrics(s(), a(), Path(vault.to_string())).await?;
    let mut items = all_items(st, user, vault).await?;
    items.sort_by(|a, b| a.name.cmp(&b.name));
    let Json(jobs) = crate::api::jobs::list_jobs(
        s(),
        a(),
        Path(vault.to_string()),
        ApiQuery(JobQuery { object_id: Some(p.id.to_string()), limit: Some(10), ..Default::default() }),
    )
    .await?;
    let last = last_job(st, user, vault, &p).await;
    Ok(Detail { v, p, fabrics, items, jobs: jobs.items, last })
}

pub async fn detail(State(st): State<AppState>, user: User, Path((vault, plan)): Path<(String, String)>) -> Response {
    render_detail(&st, &user, &vault, &plan, None, StatusCode::OK, None).await
}

/// What the edit forms of a page share: where they post and the plan version they were made from.
struct Editor<'a> {
    user: &'a User,
    action: String,
    version: i64,
}

impl Editor<'_> {
    fn form(&self, id: &str, change: &str, hidden: &[(&str, String)], class: &str, body: Markup) -> Markup {
        html! {
            form method="post" action=(self.action) class=(class) id=(id) {
                (csrf_field(self.user))
                input type="hidden" name="version" value=(self.version);
                input type="hidden" name="change" value=(change);
                @for (k, v) in hidden { input type="hidden" name=(k) value=(v); }
                (body)
            }
        }
    }
}

fn steps_list(ed: Option<&Editor>, group: u8, phase: StepPhase, steps: &[PlanStep]) -> Markup {
    let ph = match phase {
        StepPhase::Pre => "pre",
        StepPhase::Post => "post",
    };
    html! {
        @if steps.is_empty() { p class="muted" id={ "group-" (group) "-" (ph) } { "None." } }
        @else {
            ol class="plan-steps" id={ "group-" (group) "-" (ph) } {
                @for (i, s) in steps.iter().enumerate() {
                    li id={ "group-" (group) "-" (ph) "-" (i + 1) } {
                        (step_text(s))
                        @if let Some(ed) = ed {
                            " "
                            (ed.form(
                                &format!("remove-step-{group}-{ph}-{}", i + 1),
                                "removeStep",
                                &[("group", group.to_string()), ("phase", phase_name(phase).into()), ("index", (i + 1).to_string())],
                                "inline",
                                html! { button type="submit" class="small" { "Remove" } },
                            ))
                        }
                    }
                }
            }
        }
    }
}

fn add_step_form(ed: &Editor, group: u8, refill: Option<&Form>) -> Markup {
    // After a refused step of this group, the form comes back as it was filled in.
    let refill = refill.filter(|f| f.get("change") == Some("addStep") && f.get("group") == Some(&group.to_string()));
    let value = |k: &str| refill.and_then(|f| f.get(k)).unwrap_or_default().to_string();
    let types = refill.map(|f| f.all("failover_type")).unwrap_or_default();
    ed.form(
        &format!("add-step-{group}"),
        "addStep",
        &[("group", group.to_string())],
        "op",
        html! {
            h4 { "Add a step to Group " (group) }
            label { "When"
                select name="phase" {
                    option value="Pre" selected[value("phase") == "Pre"] { "Before the group's VMs start (pre-step)" }
                    option value="Post" selected[value("phase") == "Post"] { "After the group's VMs are up (post-step)" }
                }
            }
            label { "Kind"
                select name="kind" {
                    option value="Script" selected[value("kind") == "Script"] { "Script from the site manager's script library" }
                    option value="ManualAction" selected[value("kind") == "ManualAction"] { "Manual action (the plan waits for an operator)" }
                }
            }
            label { "Name" input type="text" name="name" maxlength="128" value=(value("name")); }
            label { "Script path, relative to the script library (the same on both sites)"
                input type="text" name="path" placeholder="app/check.sh" value=(value("path"));
            }
            label { "Instructions of a manual action" textarea name="instructions" rows="3" { (value("instructions")) } }
            fieldset {
                legend { "Failover types (none checked: every type)" }
                @for t in PlanFailoverType::ALL {
                    label class="check" {
                        input type="checkbox" name="failover_type" value=(t.as_str()) checked[types.iter().any(|x| x == t.as_str())];
                        (humanize(t.as_str()))
                    }
                }
            }
            button type="submit" id={ "do-add-step-" (group) } { "Add step" }
        },
    )
}

fn group_card(
    ed: Option<&Editor>,
    base: &str,
    p: &RecoveryPlan,
    g: &PlanGroup,
    d: &Detail,
    refill: Option<&Form>,
) -> Markup {
    let n = g.number;
    let last = p.groups.len() as u8;
    let candidates: Vec<&ProtectedItem> = d
        .items
        .iter()
        .filter(|it| it.container_mapping == p.container_mapping && !p.items().any(|x| x.id == it.id))
        .collect();
    html! {
        section class="card group" id={ "group-" (n) } {
            h3 {
                "Group " (n)
                span class="muted" {
                    @if n == 1 { " · starts first" } @else { " · starts when every VM of Group " (n - 1) " is up" }
                }
            }
            @if let Some(ed) = ed {
                div class="group-actions" {
                    @if n > 1 {
                        (ed.form(&format!("move-group-{n}-up"), "moveGroup", &[("group", n.to_string()), ("to", (n - 1).to_string())], "inline",
                            html! { button type="submit" class="small" { "Move up (becomes Group " (n - 1) ")" } }))
                    }
                    @if n < last {
                        (ed.form(&format!("move-group-{n}-down"), "moveGroup", &[("group", n.to_string()), ("to", (n + 1).to_string())], "inline",
                            html! { button type="submit" class="small" { "Move down (becomes Group " (n + 1) ")" } }))
                    }
                    @if n > 1 && g.items.is_empty() {
                        (ed.form(&format!("delete-group-{n}"), "deleteGroup", &[("group", n.to_string())], "inline",
                            html! {
                                button type="submit" class="small" { "Delete Group " (n) }
                                @if n < last {
                                    span class="hint" {
                                        " then " @if n + 1 == last { "Group " (last) " becomes Group " (n) }
                                        @else { "Groups " (n + 1) "–" (last) " become Groups " (n) "–" (last - 1) }
                                    }
                                }
                            }))
                    } @else if n > 1 {
                        span class="hint" { "Move or remove its VMs to delete this group." }
                    } @else {
                        span class="hint" { "Group 1 always exists." }
                    }
                }
            }
            h4 { "Pre-steps" }
            (steps_list(ed, n, StepPhase::Pre, &g.pre_steps))
            h4 { "VMs" span class="muted" { " · start in parallel" } }
            @if g.items.is_empty() { p class="muted" id={ "group-" (n) "-no-vms" } { "No VM in this group." } }
            @else {
                table id={ "group-" (n) "-vms" } {
                    thead { tr { th { "VM" } th { "State" } th { "Health" } @if ed.is_some() { th { "Change" } } } }
                    tbody {
                        @for pi in &g.items {
                            @let it = d.items.iter().find(|i| i.id == pi.id);
                            tr id={ "vm-" (pi.name) } {
                                td { a href={ (base) "/items/" (pi.id) } { (pi.name) } }
                                td { @match it { Some(it) => (humanize(&format!("{:?}", it.state))), None => span class="muted" { "No longer protected" } } }
                                td { @if let Some(it) = it { (health_badge(it.health)) } }
                                @if let Some(ed) = ed {
                                    td {
                                        @if last > 1 {
                                            (ed.form(&format!("move-vm-{}", pi.name), "moveVm", &[("vm", pi.id.to_string())], "inline",
                                                html! {
                                                    select name="group" {
                                                        @for o in p.groups.iter().filter(|o| o.number != n) { option value=(o.number) { "Group " (o.number) } }
                                                    }
                                                    " " button type="submit" class="small" { "Move" }
                                                }))
                                            " "
                                        }
                                        (ed.form(&format!("remove-vm-{}", pi.name), "removeVm", &[("vm", pi.id.to_string())], "inline",
                                            html! { button type="submit" class="small" { "Remove from the plan" } }))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h4 { "Post-steps" }
            (steps_list(ed, n, StepPhase::Post, &g.post_steps))
            @if let Some(ed) = ed {
                div class="ops" {
                    @if candidates.is_empty() {
                        p class="muted" id={ "add-vms-" (n) } { "Every protected VM of the plan's cloud pair is in the plan." }
                    } @else {
                        (ed.form(&format!("add-vms-{n}"), "addVms", &[("group", n.to_string())], "op", html! {
                            h4 { "Add VMs to Group " (n) }
                            div class="choices" {
                                @for it in &candidates {
                                    label class="check" {
                                        input type="checkbox" name="vm" value=(it.id) id={ "add-" (n) "-" (it.name) };
                                        (it.name) span class="muted" { " · " (humanize(&format!("{:?}", it.state))) }
                                    }
                                }
                            }
                            button type="submit" id={ "do-add-vms-" (n) } { "Add to Group " (n) }
                        }))
                    }
                    (add_step_form(ed, n, refill))
                }
            }
        }
    }
}

fn operation_form(base: &str, user: &User, d: &Detail, op: Operation) -> Markup {
    let name = op.as_str();
    let p = &d.p;
    // The test VMs start where the plan's VMs replicate to now.
    let target = p
        .items()
        .next()
        .and_then(|first| d.items.iter().find(|i| i.id == first.id))
        .map(|i| i.target.fabric)
        .unwrap_or(p.target_fabric);
    let target = d.fabrics.iter().find(|f| f.id == target);
    html! {
        form method="post" action={ (base) "/plans/" (p.id) "/run/" (name) } class="op" id={ "op-" (name) } {
            (csrf_field(user))
            h3 { (op_label(op)) }
            @for input in inputs(op) {
                @match input {
                    Input::Point(default) => label { "Recovery point of every VM"
                        select name="recovery_point" {
                            @for (v, l) in PLAN_POINTS { option value=(v) selected[v == *default] { (l) } }
                        }
                    },
                    Input::TestNetwork => label { "Network of the test VMs"
                        select name="network" {
                            option value="auto" { "Create an isolated network automatically (deleted at cleanup)" }
                            option value="none" { "No network (NICs disconnected)" }
                            @if let Some(t) = target {
                                @for n in &t.inventory.vm_networks { option value={ "existing:" (n.name) } { "Existing: " (t.name) " / " (n.name) } }
                            }
                        }
                    },
                    Input::Notes => label { "Notes" textarea name="notes" rows="3" {} },
                    Input::ShutdownSource => label class="check" { input type="checkbox" name="shutdown_source"; "Shut down the source VMs and send their last changes first" },
                    Input::SourceFenced => label class="check" { input type="checkbox" name="source_fenced"; "Every source is fenced (its host is powered off or cut from network and storage)" },
                    // Plans do not import initial copies (a per-VM operation).
                    Input::ImportPath => {},
                }
            }
            button type="submit" id={ "do-" (name) } { (op_label(op)) }
        }
    }
}

async fn render_detail(
    st: &AppState,
    user: &User,
    vault: &str,
    plan: &str,
    notice: Option<Notice>,
    status: StatusCode,
    refill: Option<&Form>,
) -> Response {
    let d = match load_detail(st, user, vault, plan).await {
        Ok(d) => d,
        Err(e) => return error_page(user, None, e),
    };
    let p = &d.p;
    let base = format!("/portal/vaults/{}", d.v.id);
    let editor = Editor { user, action: format!("{base}/plans/{}/edit", p.id), version: p.version };
    let ed = user.can(Role::Contributor).then_some(&editor);
    let ops: Vec<Operation> = p.allowed_operations.iter().copied().filter(|op| user.can(needed_role(*op))).collect();
    let refresh = d.jobs.iter().any(|j| matches!(j.status, JobStatus::InProgress | JobStatus::NotStarted)).then_some(5);
    let content = html! {
        p { a href={ (base) "/plans" } { "← Recovery plans" } }
        section id="plan-summary" {
            dl {
                dt { "Cloud pair" } dd id="plan-pair" { (plan_pair_label(&d.fabrics, p)) }
                dt { "Description" } dd id="plan-description" {
                    @if let Some(ed) = ed {
                        (ed.form("description-form", "setDescription", &[], "inline", html! {
                            input type="text" name="description" maxlength="1024" size="60" value=(p.description);
                            " " button type="submit" class="small" { "Save" }
                        }))
                    } @else if p.description.is_empty() { span class="muted" { "—" } } @else { (p.description) }
                }
                dt { "VMs" } dd id="plan-vm-count" { (p.vm_count()) span class="muted" { " of at most " (MAX_PLAN_VMS) } }
                dt { "Groups" } dd id="plan-group-count" { (p.groups.len()) span class="muted" { " of at most " (MAX_PLAN_GROUPS) } }
                dt { "Last job" } dd id="plan-last-job" { (last_job_cell(&base, p.last_job.as_ref(), d.last.as_ref())) }
                dt { "Updated" } dd { (fmt_time(p.updated_at)) span class="muted" { " · version " span id="plan-version" { (p.version) } } }
            }
        }
        section id="operations" {
            h2 { "Operations" }
            @if ops.is_empty() {
                p class="muted" id="no-operations" {
                    @if p.allowed_operations.is_empty() {
                        "No operation is allowed now: a plan operation needs every VM of the plan to allow it (see each VM's state)."
                    } @else { "Your role (" (user.role.as_str()) ") may not run the operations allowed now." }
                }
            }
            div class="ops" { @for op in &ops { (operation_form(&base, user, &d, *op)) } }
        }
        section id="groups" {
            h2 { "Groups" span class="muted" { " · started in this order" } }
            @for g in &p.groups { (group_card(ed, &base, p, g, &d, refill)) }
            @if let Some(ed) = ed {
                (ed.form("add-group-form", "addGroup", &[], "inline", html! {
                    button type="submit" id="add-group" disabled[p.groups.len() >= MAX_PLAN_GROUPS] { "Add a group" }
                    span class="hint" { " Group " (p.groups.len() + 1) " would start after every VM of Group " (p.groups.len()) " is up (" (MAX_PLAN_GROUPS) " groups at most)." }
                }))
            }
        }
        section id="plan-jobs" {
            h2 { "Jobs" a class="more" href={ (base) "/jobs?objectId=" (p.id) } { "All jobs of this plan" } }
            @if d.jobs.is_empty() { p class="muted" { "None." } }
            @else {
                table {
                    thead { tr { th { "Job" } th { "Object" } th { "Status" } th { "Progress" } th { "Created" } } }
                    tbody { (job_rows(&base, &d.jobs)) }
                }
            }
        }
        @if user.can(Role::Contributor) {
            section id="delete" {
                h2 { "Delete the plan" }
                form method="post" action={ (base) "/plans/" (p.id) "/delete" } id="delete-plan-form" class="inline" {
                    (csrf_field(user))
                    button type="submit" id="delete-plan" { "Delete plan " (p.name) }
                    span class="hint" { " Its VMs stay protected. Refused while a job of the plan runs or waits." }
                }
            }
        }
    };
    let title = format!("Recovery plan {}", p.name);
    page(Frame { user, vault: Some(&d.v), nav: Nav::Plans, title: &title, refresh, notice }, content, status)
}

// ---------------------------------------------------------------------------------------------
// Edits, operations, delete

pub async fn edit(
    State(st): State<AppState>,
    user: User,
    Path((vault, plan)): Path<(String, String)>,
    form: Form,
) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        let version: i64 = number(&form, "version", "plan version")?;
        let change = change_of(&form)?;
        let s = || State(st.clone());
        let path = || Path((vault.clone(), plan.clone()));
        let Json(before) = crate::api::plans::get_plan(s(), user.auth.clone(), path()).await?;
        let req = UpdatePlan { expected_version: Some(version), changes: vec![change.clone()] };
        let Json(after) = crate::api::plans::update_plan(s(), user.auth.clone(), path(), ApiJson(req)).await?;
        Ok::<_, ApiFailure>((done_message(&change, &before, &after), after))
    }
    .await;
    match res {
        Ok((done, p)) => redirect_with(&format!("/portal/vaults/{}/plans/{}", p.vault_id, p.id), &done),
        Err(e) => {
            let status = e.status;
            render_detail(&st, &user, &vault, &plan, Some(e.into()), status, Some(&form)).await
        }
    }
}

/// The plan operation input from a submitted form (the inputs an item operation takes).
fn plan_request(op: Operation, form: &Form) -> PlanOperationRequest {
    let r = operation_request(op, form);
    PlanOperationRequest {
        recovery_point: r.recovery_point,
        network: r.network,
        notes: r.notes,
        shutdown_source: r.shutdown_source,
        source_fenced: r.source_fenced,
    }
}

pub async fn operate(
    State(st): State<AppState>,
    user: User,
    Path((vault, plan, operation)): Path<(String, String, String)>,
    form: Form,
) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        let req = Operation::parse(&operation).map(|op| plan_request(op, &form)).unwrap_or_default();
        crate::api::plans::operate_plan(
            State(st.clone()),
            user.auth.clone(),
            Path((vault.clone(), plan.clone(), operation.clone())),
            ApiJson(req),
        )
        .await
    }
    .await;
    match res {
        Ok((_, Json(job))) => redirect_with(
            &format!("/portal/vaults/{}/jobs/{}", job.vault_id, job.id),
            &format!("{} started for plan {}", humanize(&job.operation), job.object_name),
        ),
        Err(e) => {
            let status = e.status;
            render_detail(&st, &user, &vault, &plan, Some(e.into()), status, None).await
        }
    }
}

pub async fn delete(
    State(st): State<AppState>,
    user: User,
    Path((vault, plan)): Path<(String, String)>,
    form: Form,
) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        let path = || Path((vault.clone(), plan.clone()));
        let Json(p) = crate::api::plans::get_plan(State(st.clone()), user.auth.clone(), path()).await?;
        crate::api::plans::delete_plan(State(st.clone()), user.auth.clone(), path()).await?;
        Ok::<_, ApiFailure>(p)
    }
    .await;
    match res {
        Ok(p) => redirect_with(
            &format!("/portal/vaults/{}/plans", p.vault_id),
            &format!("Recovery plan {} deleted; its VMs stay protected", p.name),
        ),
        Err(e) => {
            let status = e.status;
            render_detail(&st, &user, &vault, &plan, Some(e.into()), status, None).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::protection::TestNetwork;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn code<T>(r: Result<T, ApiFailure>) -> String {
        match r {
            Ok(_) => "Ok".into(),
            Err(e) => e.body.code,
        }
    }

    #[test]
    fn plan_1_portal_forms_become_plan_changes() {
        assert_eq!(change_of(&form(&[("change", "addGroup")])).ok(), Some(PlanChange::AddGroup));
        assert_eq!(
            change_of(&form(&[("change", "moveGroup"), ("group", "3"), ("to", "2")])).ok(),
            Some(PlanChange::MoveGroup { group: 3, to: 2 })
        );
        assert_eq!(
            change_of(&form(&[("change", "addVms"), ("group", "2"), ("vm", "a"), ("vm", "b")])).ok(),
            Some(PlanChange::AddVms { group: 2, vms: vec!["a".into(), "b".into()] })
        );
        assert_eq!(
            change_of(&form(&[("change", "moveVm"), ("group", "1"), ("vm", "a")])).ok(),
            Some(PlanChange::MoveVms { vms: vec!["a".into()], group: 1 })
        );
        assert_eq!(
            change_of(&form(&[("change", "removeStep"), ("group", "2"), ("phase", "Post"), ("index", "1")])).ok(),
            Some(PlanChange::RemoveStep { group: 2, phase: StepPhase::Post, index: 1 })
        );
        // Bad input is refused before the API is asked.
        assert_eq!(code(change_of(&form(&[("change", "addVms"), ("group", "2")]))), "InvalidValue");
        assert_eq!(code(change_of(&form(&[("change", "deleteGroup"), ("group", "x")]))), "InvalidValue");
        assert_eq!(code(change_of(&form(&[("change", "deleteGroup"), ("group", "300")]))), "InvalidValue");
        assert_eq!(code(change_of(&form(&[("change", "dropTables")]))), "InvalidValue");
    }

    #[test]
    fn plan_3_portal_step_forms() {
        let manual = change_of(&form(&[
            ("change", "addStep"),
            ("group", "2"),
            ("phase", "Pre"),
            ("kind", "ManualAction"),
            ("name", "Check DNS"),
            ("path", "ignored.sh"),
            ("instructions", " Point app.example to Chicago "),
            ("failover_type", "TestFailover"),
        ]));
        assert_eq!(
            manual.ok(),
            Some(PlanChange::AddStep {
                group: 2,
                phase: StepPhase::Pre,
                step: PlanStep::ManualAction {
                    name: "Check DNS".into(),
                    instructions: "Point app.example to Chicago".into(),
                    failover_types: vec![PlanFailoverType::TestFailover],
                },
            })
        );
        let script = change_of(&form(&[
            ("change", "addStep"),
            ("group", "1"),
            ("phase", "Post"),
            ("kind", "Script"),
            ("name", "db ready"),
            ("path", "lab-app/db-ready.sh"),
        ]));
        assert_eq!(
            script.ok(),
            Some(PlanChange::AddStep {
                group: 1,
                phase: StepPhase::Post,
                step: PlanStep::Script {
                    name: "db ready".into(),
                    path: "lab-app/db-ready.sh".into(),
                    failover_types: vec![]
                },
            })
        );
        let bad = |extra: (&str, &str)| {
            let mut f =
                vec![("change", "addStep"), ("group", "1"), ("phase", "Pre"), ("kind", "Script"), ("name", "x")];
            f.retain(|(k, _)| *k != extra.0);
            f.push(extra);
            code(change_of(&form(&f)))
        };
        assert_eq!(bad(("phase", "During")), "InvalidValue");
        assert_eq!(bad(("kind", "Email")), "InvalidValue");
        assert_eq!(bad(("failover_type", "Drill")), "InvalidValue");
    }

    #[test]
    fn plan_4_portal_operation_inputs() {
        let r = plan_request(
            Operation::TestFailover,
            &form(&[("recovery_point", "latestAppConsistent"), ("network", "none"), ("notes", "ignored")]),
        );
        assert_eq!(r.recovery_point.as_deref(), Some("latestAppConsistent"));
        assert_eq!(r.network, Some(TestNetwork::None));
        assert_eq!(r.notes, None);
        let r = plan_request(Operation::TestFailoverCleanup, &form(&[("notes", "drill ok")]));
        assert_eq!(r.notes.as_deref(), Some("drill ok"));
        let r =
            plan_request(Operation::UnplannedFailover, &form(&[("recovery_point", "latest"), ("source_fenced", "on")]));
        assert!(r.source_fenced && !r.shutdown_source);
        assert_eq!(r.recovery_point.as_deref(), Some("latest"));
        let r = plan_request(Operation::FailoverCommit, &form(&[("recovery_point", "latest")]));
        assert_eq!(r.recovery_point, None, "commit takes no input");
    }

    #[test]
    fn plan_1_portal_messages_name_vms_and_renumbering() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let vm = ferry_types::plan::PlanItem { id: Uuid::from_u128(11), name: "db1".into() };
        let mut g1 = PlanGroup::new(1);
        g1.items.push(vm.clone());
        let before = RecoveryPlan {
            id: Uuid::from_u128(1),
            vault_id: Uuid::from_u128(2),
            name: "shop".into(),
            description: String::new(),
            container_mapping: Uuid::from_u128(3),
            source_fabric: Uuid::from_u128(4),
            source_cloud: "c1".into(),
            target_fabric: Uuid::from_u128(5),
            target_cloud: "c2".into(),
            groups: vec![g1, PlanGroup::new(2), PlanGroup::new(3)],
            created_at: t,
            updated_at: t,
            version: 4,
            last_job: None,
            allowed_operations: vec![],
        };
        let mut after = before.clone();
        after.groups[0].items.clear();
        assert_eq!(
            done_message(&PlanChange::RemoveVms { vms: vec![vm.id.to_string()] }, &before, &after),
            "db1 removed from the plan"
        );
        after.groups.remove(1);
        assert_eq!(
            done_message(&PlanChange::DeleteGroup { group: 2 }, &before, &after),
            "Group 2 deleted; the groups after it were renumbered"
        );
        assert_eq!(done_message(&PlanChange::DeleteGroup { group: 3 }, &before, &after), "Group 3 deleted");
    }
}
