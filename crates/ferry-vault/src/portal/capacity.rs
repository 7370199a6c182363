//! Portal: capacity planning (CAP-1). The plans with their state, a form that starts measuring
//! VMs of one site, and a plan's page with the report computed from what its hosts measured
//! (inputs that are not measured — bandwidth, retention, copy frequency — in a form of their
//! own), stop and delete. Every change goes through the REST API's handlers.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use ferry_types::auth::Role;
use ferry_types::capacity::{CapacityPlan, CapacityPlanState, CapacityReport, CreateCapacityPlan};
use ferry_types::fabric::Fabric;
use maud::{html, Markup};

use super::{
    csrf_field, error_page, fmt_bytes, fmt_opt_time, fmt_time, load_vault, page, redirect_with, Form, Frame, Nav,
    Notice, User,
};
use crate::api::capacity::ReportQuery;
use crate::error::ApiFailure;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

fn state_label(s: CapacityPlanState) -> &'static str {
    match s {
        CapacityPlanState::Measuring => "Measuring",
        CapacityPlanState::Stopped => "Stopped",
    }
}

fn mbps(v: Option<f64>) -> String {
    v.map_or_else(|| "not measured yet".into(), |m| format!("{m:.3} Mbit/s"))
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or_else(|| "not measured yet".into(), fmt_bytes)
}

fn duration(secs: f64) -> String {
    match secs {
        s if s < 60.0 => format!("{s:.1} s"),
        s if s < 3600.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

async fn plans_and_sites(
    st: &AppState,
    user: &User,
    vault: &str,
) -> Result<(Vec<CapacityPlan>, Vec<Fabric>), ApiFailure> {
    let Json(plans) =
        crate::api::capacity::list_capacity_plans(State(st.clone()), user.auth.clone(), Path(vault.to_string()))
            .await?;
    let Json(sites) =
        crate::api::fabrics::list_fabrics(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
    Ok((plans, sites))
}

/// The plans and, for a Contributor, the form that starts one.
pub async fn list(State(st): State<AppState>, user: User, Path(vault): Path<String>) -> Response {
    render_list(&st, &user, &vault, None, None, StatusCode::OK).await
}

async fn render_list(
    st: &AppState,
    user: &User,
    vault: &str,
    notice: Option<Notice>,
    prev: Option<&Form>,
    status: StatusCode,
) -> Response {
    let v = match load_vault(st, vault).await {
        Ok(v) => v,
        Err(e) => return error_page(user, None, e),
    };
    let (plans, sites) = match plans_and_sites(st, user, vault).await {
        Ok(x) => x,
        Err(e) => return error_page(user, Some(&v), e),
    };
    let base = format!("/portal/vaults/{}/capacity", v.id);
    let chosen = |vm: &str| prev.is_some_and(|f| f.all("vm").iter().any(|x| x == vm));
    let content = html! {
        p { "Measure the churn of up to 100 VMs of a site — unique changed blocks per 30 s, 5 min, 15 min and hour, as replication would send them — and read what protecting them needs: bandwidth for each copy frequency, initial replication time, replica storage." }
        @if plans.is_empty() { p class="muted" id="no-capacity-plans" { "No capacity plan yet." } }
        @else {
            table id="capacity-plans" {
                thead { tr { th { "Name" } th { "Site" } th { "VMs" } th { "State" } th { "Started" } th { "Until" } } }
                tbody {
                    @for p in &plans {
                        tr {
                            td { a href={ (base) "/" (p.id) } { (p.name) } }
                            td { (p.site_name) }
                            td { (p.vms.len()) }
                            td { (state_label(p.state)) }
                            td { (fmt_time(p.created_at)) }
                            td { (fmt_opt_time(p.until)) }
                        }
                    }
                }
            }
        }
        @if user.can(Role::Contributor) {
            div class="card" {
                h3 { "Start measuring" }
                form method="post" action=(base) class="grid" id="capacity-form" {
                    (csrf_field(user))
                    label { "Name" input name="name" value=(prev.and_then(|f| f.get("name")).unwrap_or_default()); }
                    label { "Stop after … hours (blank: when stopped)" input name="hours" value=(prev.and_then(|f| f.get("hours")).unwrap_or_default()); }
                    @for s in &sites {
                        fieldset {
                            legend { (s.name) }
                            @for vm in &s.inventory.vms {
                                @let value = format!("{}|{}", s.id, vm.id);
                                label class="check" { input type="checkbox" name="vm" value=(value) checked[chosen(&value)]; (vm.name) }
                            }
                        }
                    }
                    button type="submit" id="start-capacity" { "Start measuring" }
                }
            }
        }
    };
    page(
        Frame { user, vault: Some(&v), nav: Nav::Capacity, title: "Capacity planning", refresh: None, notice },
        content,
        status,
    )
}

/// The request a create form makes: every chosen VM must be of one site.
fn create_request(form: &Form) -> Result<CreateCapacityPlan, ApiFailure> {
    let chosen = form.all("vm");
    let mut site = None;
    let mut vms = Vec::new();
    for c in &chosen {
        let (s, vm) = c
            .split_once('|')
            .ok_or_else(|| ApiFailure::bad_request("InvalidValue", format!("'{c}' is not a VM of a site")))?;
        match site {
            None => site = Some(s.to_string()),
            Some(ref x) if x != s => {
                return Err(ApiFailure::bad_request("CapacityPlanSites", "Choose VMs of one site for a capacity plan"))
            }
            Some(_) => {}
        }
        vms.push(vm.to_string());
    }
    let duration_hours = form
        .get("hours")
        .map(|h| {
            h.parse::<u32>()
                .map_err(|_| ApiFailure::bad_request("InvalidValue", format!("Hours: '{h}' is not a whole number")))
        })
        .transpose()?;
    Ok(CreateCapacityPlan {
        name: form.get("name").unwrap_or_default().to_string(),
        source_site: site.unwrap_or_default(),
        vms,
        duration_hours,
    })
}

pub async fn create(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        let req = create_request(&form)?;
        let (_, Json(created)) = crate::api::capacity::create_capacity_plan(
            State(st.clone()),
            user.auth.clone(),
            Path(vault.clone()),
            ApiJson(req),
        )
        .await?;
        Ok::<_, ApiFailure>(created)
    }
    .await;
    match res {
        Ok(c) => redirect_with(
            &format!("/portal/vaults/{}/capacity/{}", c.plan.vault_id, c.plan.id),
            &format!("Measuring the churn of {} VMs for capacity plan {}", c.plan.vms.len(), c.plan.name),
        ),
        Err(e) => {
            let status = e.status;
            render_list(&st, &user, &vault, Some(e.into()), Some(&form), status).await
        }
    }
}

/// A plan's report under the inputs of the query, with stop and delete.
pub async fn detail(
    State(st): State<AppState>,
    user: User,
    Path((vault, plan)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let v = match load_vault(&st, &vault).await {
        Ok(v) => v,
        Err(e) => return error_page(&user, None, e),
    };
    let query: Result<ReportQuery, ApiFailure> = serde_urlencoded_query(q.as_deref());
    let res = async {
        let q = query?;
        let Json(p) = crate::api::capacity::get_capacity_plan(
            State(st.clone()),
            user.auth.clone(),
            Path((vault.clone(), plan.clone())),
        )
        .await?;
        let Json(r) = crate::api::capacity::capacity_report(
            State(st.clone()),
            user.auth.clone(),
            Path((vault.clone(), plan.clone())),
            ApiQuery(q),
        )
        .await?;
        Ok::<_, ApiFailure>((p, r))
    }
    .await;
    let (p, r) = match res {
        Ok(x) => x,
        Err(e) => return error_page(&user, Some(&v), e),
    };
    let base = format!("/portal/vaults/{}/capacity/{}", v.id, p.id);
    let refresh = (p.state == CapacityPlanState::Measuring).then_some(10);
    page(
        Frame { user: &user, vault: Some(&v), nav: Nav::Capacity, title: "Capacity plan", refresh, notice: None },
        report_markup(&user, &base, &p, &r),
        StatusCode::OK,
    )
}

/// Parse the report inputs of a page's query (the API's rules then check the values).
fn serde_urlencoded_query(q: Option<&str>) -> Result<ReportQuery, ApiFailure> {
    let mut out = ReportQuery::default();
    for (k, val) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        if val.trim().is_empty() {
            continue;
        }
        let bad = || ApiFailure::bad_request("InvalidQuery", format!("{k}: '{val}' is not a number"));
        match k.as_ref() {
            "bandwidth_mbps" => out.bandwidth_mbps = Some(val.trim().parse().map_err(|_| bad())?),
            "retention_hours" => out.retention_hours = Some(val.trim().parse().map_err(|_| bad())?),
            "copy_frequency_secs" => out.copy_frequency_secs = Some(val.trim().parse().map_err(|_| bad())?),
            "refresh" => {}
            other => return Err(ApiFailure::bad_request("InvalidQuery", format!("Unknown parameter '{other}'"))),
        }
    }
    Ok(out)
}

fn report_markup(user: &User, base: &str, p: &CapacityPlan, r: &CapacityReport) -> Markup {
    html! {
        h2 id="capacity-name" { (p.name) " · " (p.site_name) " · " span id="capacity-state" { (state_label(p.state)) } }
        form method="get" action=(base) class="grid" id="report-form" {
            label { "Bandwidth for the initial copy, Mbit/s" input name="bandwidth_mbps" value=(r.params.bandwidth_mbps); }
            label { "Recovery point retention, hours" input name="retention_hours" value=(r.params.retention_hours); }
            label { "Copy frequency"
                select name="copy_frequency_secs" {
                    @for (s, l) in [(30, "30 seconds"), (300, "5 minutes"), (900, "15 minutes")] {
                        option value=(s) selected[r.params.copy_frequency_secs == s] { (l) }
                    }
                }
            }
            button type="submit" id="recompute" { "Compute" }
        }
        table id="capacity-summary" {
            tbody {
                tr { th { "VMs" } td id="cap-vms" { (r.vms_measured) " measured of " (r.vms) } }
                tr { th { "Disks" } td id="cap-disks" { (r.disks) " (at most " (r.disks_per_vm_max) " per VM, " (format!("{:.1}", r.disks_per_vm_average)) " on average)" } }
                tr { th { "Storage" } td id="cap-storage" { (fmt_bytes(r.virtual_bytes)) " virtual, " (fmt_bytes(r.allocated_bytes)) " allocated" } }
                tr { th { "Daily churn" } td id="cap-daily" { (opt_bytes(r.daily_churn_bytes)) " (" (r.daily_churn_basis) ")" } }
                tr { th { "Initial replication" } td id="cap-initial" { (duration(r.initial_replication_secs)) " at " (r.params.bandwidth_mbps) " Mbit/s" } }
                tr { th { "Replica storage" } td id="cap-replica" { (opt_bytes(r.replica_storage_bytes)) " for " (r.params.retention_hours) " h of retention at a " (r.params.copy_frequency_secs) " s copy frequency" } }
                tr { th { "Measured" } td { (r.measured_secs / 60) " min" } }
            }
        }
        h3 { "Bandwidth needed per copy frequency" }
        table id="capacity-bandwidth" {
            thead { tr { th { "Copy frequency" } th { "Average" } th { "Peak" } th { "Windows" } } }
            tbody {
                @for b in &r.bandwidth {
                    tr { td { (b.copy_frequency_secs) " s" } td { (mbps(b.average_mbps)) } td { (mbps(b.peak_mbps)) } td { (b.windows) } }
                }
            }
        }
        h3 { "Per VM" }
        table id="capacity-vms" {
            thead { tr { th { "VM" } th { "State" } th { "Disks" } th { "Allocated" } th { "Daily churn" } th { "Peak at 30 / 300 / 900 s" } th { "Replica storage" } } }
            tbody {
                @for vm in &r.per_vm {
                    tr {
                        td { (vm.vm) }
                        td { (format!("{:?}", vm.state)) }
                        td { @for d in &vm.disks { (d.target) " " (fmt_bytes(d.virtual_size)) br; } }
                        td { (fmt_bytes(vm.allocated_bytes)) }
                        td { (opt_bytes(vm.daily_churn_bytes)) }
                        td { (vm.bandwidth.iter().map(|b| mbps(b.peak_mbps)).collect::<Vec<_>>().join(" / ")) }
                        td { (opt_bytes(vm.replica_storage_bytes)) }
                    }
                }
            }
        }
        @if !r.notes.is_empty() { ul id="capacity-notes" { @for n in &r.notes { li { (n) } } } }
        @if user.can(Role::Contributor) {
            div class="ops" {
                @if p.state == CapacityPlanState::Measuring {
                    form method="post" action={ (base) "/stop" } class="inline" {
                        (csrf_field(user))
                        button type="submit" id="stop-capacity" { "Stop measuring" }
                    }
                }
                form method="post" action={ (base) "/delete" } class="inline" {
                    (csrf_field(user))
                    button type="submit" id="delete-capacity" class="danger" { "Delete plan" }
                }
            }
        }
    }
}

/// Stop measuring (`/stop`) or delete the plan (`/delete`); each starts a job.
pub async fn act(
    State(st): State<AppState>,
    user: User,
    Path((vault, plan, action)): Path<(String, String, String)>,
    form: Form,
) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        let (s, a, p) = (State(st.clone()), user.auth.clone(), Path((vault.clone(), plan.clone())));
        let (_, Json(job)) = match action.as_str() {
            "stop" => crate::api::capacity::stop_capacity_plan(s, a, p).await?,
            "delete" => crate::api::capacity::delete_capacity_plan(s, a, p).await?,
            other => return Err(ApiFailure::not_found("Capacity plan action", other)),
        };
        Ok(job)
    }
    .await;
    match res {
        Ok(job) => redirect_with(
            &format!("/portal/vaults/{}/jobs/{}", job.vault_id, job.id),
            &format!("{} started", job.operation),
        ),
        Err(e) => match load_vault(&st, &vault).await {
            Ok(v) => error_page(&user, Some(&v), e),
            Err(_) => error_page(&user, None, e),
        },
    }
}
