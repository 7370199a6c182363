//! The vault list and the vault overview dashboard (JOB-4).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use ferry_types::auth::Role;
use ferry_types::event::Severity;
use ferry_types::job::Job;
use ferry_types::vault::CreateVault;
use maud::{html, Markup};

use super::{
    csrf_field, error_page, fmt_age, fmt_opt_time, fmt_time, health_badge, humanize, load_vault, page, query, redirect,
    redirect_with, Form, Frame, Nav, Notice, User,
};
use crate::dashboard::TestStatus;
use crate::extract::ApiJson;
use crate::state::AppState;

#[derive(serde::Deserialize)]
pub struct ListQuery {
    list: Option<String>,
}

/// `/portal/`: the vaults of this server; straight to the only one when there is one.
pub async fn vault_list(State(st): State<AppState>, user: User, Query(q): Query<ListQuery>) -> Response {
    vault_list_page(&st, &user, q.list.is_some(), None).await
}

async fn vault_list_page(st: &AppState, user: &User, show: bool, notice: Option<Notice>) -> Response {
    let vaults = match crate::api::vaults::list_vaults(State(st.clone()), user.auth.clone()).await {
        Ok(Json(v)) => v,
        Err(e) => return error_page(user, None, e),
    };
    if vaults.len() == 1 && !show && notice.is_none() {
        return redirect(&format!("/portal/vaults/{}", vaults[0].id));
    }
    let status = match &notice {
        Some(Notice::Error(_)) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    let content = html! {
        @if vaults.is_empty() { p { "No vault yet." } }
        @else {
            table id="vaults" {
                thead { tr { th { "Name" } th { "Description" } th { "Region" } th { "Created" } } }
                tbody {
                    @for v in &vaults {
                        tr { td { a href={ "/portal/vaults/" (v.id) } { (v.name) } } td { (v.description) } td { (v.region) } td { (fmt_time(v.created_at)) } }
                    }
                }
            }
        }
        @if user.can(Role::Contributor) {
            section {
                h2 { "Create a vault" }
                form method="post" action="/portal/" class="grid" id="create-vault" {
                    (csrf_field(user))
                    label { "Name" input name="name" required; }
                    label { "Description" input name="description"; }
                    label { "Region" input name="region"; }
                    button type="submit" { "Create vault" }
                }
            }
        }
    };
    page(Frame { user, vault: None, nav: Nav::None, title: "Vaults", refresh: None, notice }, content, status)
}

/// FAB-1 from the portal.
pub async fn create_vault(State(st): State<AppState>, user: User, form: Form) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        let req = CreateVault {
            name: form.get("name").unwrap_or_default().to_string(),
            description: form.get("description").unwrap_or_default().to_string(),
            region: form.get("region").unwrap_or_default().to_string(),
        };
        crate::api::vaults::create_vault(State(st.clone()), user.auth.clone(), ApiJson(req)).await
    }
    .await;
    match res {
        Ok((_, Json(v))) => redirect_with(&format!("/portal/vaults/{}", v.id), &format!("Vault {} created", v.name)),
        Err(e) => vault_list_page(&st, &user, true, Some(e.into())).await,
    }
}

fn tile(id: &str, label: &str, value: usize, class: &str, href: Option<String>) -> Markup {
    html! {
        div class={ "tile " (class) } id=(id) {
            @if let Some(h) = href { a href=(h) { span class="value" { (value) } span class="label" { (label) } } }
            @else { span class="value" { (value) } span class="label" { (label) } }
        }
    }
}

pub fn job_rows(base: &str, jobs: &[Job]) -> Markup {
    html! {
        @for j in jobs {
            tr {
                td { a href={ (base) "/jobs/" (j.id) } { (humanize(&j.operation)) } }
                td { (j.object_name) }
                td { span class={ "status " (j.status.as_str()) } { (humanize(j.status.as_str())) } }
                td { (j.progress) "%" }
                td { (fmt_time(j.created_at)) }
            }
        }
    }
}

/// `/portal/vaults/{vault}`: the overview.
pub async fn dashboard(State(st): State<AppState>, user: User, Path(vault): Path<String>) -> Response {
    let v = match load_vault(&st, &vault).await {
        Ok(v) => v,
        Err(e) => return error_page(&user, None, e),
    };
    let d = match crate::api::dashboard::get_dashboard(State(st.clone()), user.auth.clone(), Path(vault)).await {
        Ok(Json(d)) => d,
        Err(e) => return error_page(&user, Some(&v), e),
    };
    let base = format!("/portal/vaults/{}", v.id);
    let now = st.clock.now();
    let items_href = |h: &str| Some(format!("{base}/items?{}", query(&[("health", h)])));
    let jobs_href = |s: &str| Some(format!("{base}/jobs?{}", query(&[("status", s)])));
    let events_href = |s: &str| Some(format!("{base}/events?{}", query(&[("severity", s)])));
    let content = html! {
        section id="health" {
            h2 { "Replicated items by health" span class="muted" { " · " (d.items) " replicated items" } }
            div class="tiles" {
                (tile("health-normal", "Normal", d.health.normal, "ok", items_href("Normal")))
                (tile("health-warning", "Warning", d.health.warning, "warn", items_href("Warning")))
                (tile("health-critical", "Critical", d.health.critical, "crit", items_href("Critical")))
                (tile("health-na", "Not applicable", d.health.not_applicable, "na", items_href("NotApplicable")))
            }
            @if !d.attention.is_empty() {
                table id="attention" {
                    thead { tr { th { "Item" } th { "Health" } th { "Reasons" } } }
                    tbody {
                        @for a in &d.attention {
                            tr { td { a href={ (base) "/items/" (a.id) } { (a.name) } } td { (health_badge(a.health)) } td { (a.reasons.join("; ")) } }
                        }
                    }
                }
            }
        }
        div class="columns" {
            section id="tests" {
                h2 { "Test failover" }
                div class="tiles" {
                    (tile("tests-recommended", "Test recommended", d.tests.test_recommended, "warn", None))
                    (tile("tests-running", "Running", d.tests.running, "info", None))
                    (tile("tests-done", "Tested (6 months)", d.tests.tested, "ok", None))
                }
                @if !d.test_status.is_empty() {
                    table id="test-status" {
                        thead { tr { th { "VM" } th { "Status" } th { "Last test" } } }
                        tbody {
                            @for t in &d.test_status {
                                tr {
                                    td { a href={ (base) "/items/" (t.id) } { (t.name) } }
                                    td { @match t.status {
                                        TestStatus::TestRecommended => span class="badge warn" { "Test recommended" },
                                        TestStatus::Running => span class="badge info" { "Test running" },
                                        TestStatus::Tested => span class="badge ok" { "Tested" },
                                    } }
                                    td { (fmt_opt_time(t.last_test)) }
                                }
                            }
                        }
                    }
                }
            }
            section id="errors" {
                h2 { "Errors by severity" span class="muted" { " · last 24 h" } }
                div class="tiles" {
                    (tile("errors-critical", "Critical", d.errors.critical, "crit", events_href("Critical")))
                    (tile("errors-error", "Error", d.errors.error, "crit", events_href("Error")))
                    (tile("errors-warning", "Warning", d.errors.warning, "warn", events_href("Warning")))
                }
                @if d.errors.truncated { p class="muted" { "More events than the overview reads: counts are lower bounds." } }
            }
        }
        section id="config-issues" {
            h2 { "Configuration issues" span class="muted" { " · " (d.config_issues.len()) } }
            @if d.config_issues.is_empty() { p class="muted" { "None." } }
            @else {
                table {
                    thead { tr { th { "Severity" } th { "Issue" } th { "Details" } } }
                    tbody {
                        @for i in &d.config_issues {
                            tr {
                                td { span class={ "badge " (sev_class(i.severity)) } { (i.severity.as_str()) } }
                                td { code { (i.code) } }
                                td { (i.message) }
                            }
                        }
                    }
                }
            }
        }
        section id="jobs" {
            h2 { "Jobs" }
            div class="tiles" {
                (tile("jobs-failed", "Failed (24 h)", d.jobs.failed, "crit", jobs_href("Failed")))
                (tile("jobs-in-progress", "In progress", d.jobs.in_progress, "info", jobs_href("InProgress")))
                (tile("jobs-waiting", "Waiting for input", d.jobs.waiting_for_input, "warn", jobs_href("WaitingForInput")))
            }
            @let listed: Vec<Job> = d.waiting_jobs.iter().chain(&d.active_jobs).chain(&d.failed_jobs).cloned().collect();
            @if !listed.is_empty() {
                table id="dashboard-jobs" {
                    thead { tr { th { "Job" } th { "Object" } th { "Status" } th { "Progress" } th { "Created" } } }
                    tbody { (job_rows(&base, &listed)) }
                }
            }
        }
        section id="events" {
            h2 { "Recent events" a class="more" href={ (base) "/events" } { "All events" } }
            (event_table(&d.recent_events, now))
        }
    };
    page(
        Frame { user: &user, vault: Some(&v), nav: Nav::Overview, title: "Overview", refresh: Some(30), notice: None },
        content,
        StatusCode::OK,
    )
}

pub fn sev_class(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warn",
        Severity::Error | Severity::Critical => "crit",
    }
}

pub fn event_table(events: &[ferry_types::event::Event], now: chrono::DateTime<chrono::Utc>) -> Markup {
    html! {
        @if events.is_empty() { p class="muted" { "No events." } }
        @else {
            table class="events" {
                thead { tr { th { "Time" } th { "Severity" } th { "Kind" } th { "Message" } } }
                tbody {
                    @for e in events {
                        tr {
                            td title=(fmt_time(e.time)) { (fmt_age((now - e.time).num_seconds())) " ago" }
                            td { span class={ "badge " (sev_class(e.severity)) } { (e.severity.as_str()) } }
                            td { code { (e.kind) } }
                            td { (e.message) }
                        }
                    }
                }
            }
        }
    }
}
