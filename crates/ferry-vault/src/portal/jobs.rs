//! Jobs (JOB-1): list with filters, details with tasks and errors (cause, recommendation),
//! cancel, restart, resume (a manual action of a recovery plan done, PLAN-3, or a failed plan
//! job after its cause was fixed), export as CSV or JSON; and the events timeline (JOB-4).

use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_DISPOSITION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, NaiveDateTime, Utc};
use ferry_types::auth::Role;
use ferry_types::job::{Job, JobAction, JobStatus};
use ferry_types::plan::{PlanStep, StepPhase};
use maud::html;

use super::overview::{event_table, job_rows};
use super::{
    csrf_field, error_page, fmt_opt_time, fmt_time, humanize, page, query, redirect_with, Form, Frame, Nav, Notice,
    User,
};
use crate::api::events::EventQuery;
use crate::api::jobs::JobQuery;
use crate::error::ApiFailure;
use crate::extract::ApiQuery;
use crate::state::AppState;

/// Operations the job filter suggests.
const OPERATIONS: [&str; 21] = [
    "EnableProtection",
    "FinalizeProtection",
    "TestFailover",
    "TestFailoverCleanup",
    "PlannedFailover",
    "UnplannedFailover",
    "FailoverCommit",
    "DisableProtection",
    "ConfigureCloudPair",
    "RemoveCloudPair",
    "UpdatePolicy",
    "VmAction",
    "RegistrationKeyCleanup",
    "RecoveryPlanTestFailover",
    "RecoveryPlanTestFailoverCleanup",
    "RecoveryPlanPlannedFailover",
    "RecoveryPlanUnplannedFailover",
    "RecoveryPlanFailoverCommit",
    "RecoveryPlanReProtect",
    "StartCapacityMeasurement",
    "StopCapacityMeasurement",
];
const OBJECT_TYPES: [&str; 7] = [
    "ProtectedItem",
    "RecoveryPlan",
    "ProtectionContainerMapping",
    "Policy",
    "VirtualMachine",
    "Fabric",
    "CapacityPlan",
];

fn params(raw: Option<String>) -> Form {
    Form(form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect())
}

fn parse_time(raw: Option<&str>, what: &str) -> Result<Option<DateTime<Utc>>, ApiFailure> {
    raw.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").map(|t| t.and_utc()))
            .map_err(|_| ApiFailure::bad_request("InvalidQuery", format!("{what}: '{s}' is not a date and time")))
    })
    .transpose()
}

/// The API's job query from the portal's filter fields.
fn job_query(f: &Form) -> Result<JobQuery, ApiFailure> {
    Ok(JobQuery {
        fabric: f
            .get("fabric")
            .map(|s| {
                uuid::Uuid::parse_str(s)
                    .map_err(|_| ApiFailure::bad_request("InvalidQuery", format!("'{s}' is not a site id")))
            })
            .transpose()?,
        object_type: f.get("objectType").map(str::to_string),
        object_id: f.get("objectId").map(str::to_string),
        status: f.get("status").map(str::to_string),
        operation: f.get("operation").map(str::to_string),
        from: parse_time(f.get("from"), "From")?,
        to: parse_time(f.get("to"), "To")?,
        limit: Some(50),
        cursor: f.get("cursor").map(str::to_string),
        format: None,
    })
}

const FILTERS: [&str; 7] = ["status", "operation", "objectType", "objectId", "fabric", "from", "to"];

fn filter_pairs(f: &Form) -> Vec<(&'static str, String)> {
    FILTERS.iter().map(|k| (*k, f.get(k).unwrap_or_default().to_string())).collect()
}

pub async fn list(
    State(st): State<AppState>,
    user: User,
    Path(vault): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let f = params(raw);
    let res = async {
        let Json(v) = crate::api::vaults::get_vault(State(st.clone()), user.auth.clone(), Path(vault.clone())).await?;
        let Json(fabrics) =
            crate::api::fabrics::list_fabrics(State(st.clone()), user.auth.clone(), Path(vault.clone())).await?;
        Ok::<_, ApiFailure>((v, fabrics))
    }
    .await;
    let (v, fabrics) = match res {
        Ok(x) => x,
        Err(e) => return error_page(&user, None, e),
    };
    let page_result = match job_query(&f) {
        Ok(q) => crate::api::jobs::list_jobs(State(st.clone()), user.auth.clone(), Path(vault.clone()), ApiQuery(q))
            .await
            .map(|Json(p)| p),
        Err(e) => Err(e),
    };
    let base = format!("/portal/vaults/{}", v.id);
    let pairs = filter_pairs(&f);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (jobs, next, notice, status) = match page_result {
        Ok(p) => (p.items, p.next, None, StatusCode::OK),
        Err(e) => {
            let status = e.status;
            (vec![], None, Some(Notice::from(e)), status)
        }
    };
    let export = |format: &str| {
        let mut q = refs.clone();
        q.push(("format", format));
        format!("{base}/jobs/export?{}", query(&q))
    };
    let content = html! {
        form method="get" action={ (base) "/jobs" } class="filters" id="job-filters" {
            label { "Status "
                select name="status" {
                    option value="" { "Any" }
                    @for s in JobStatus::ALL { option value=(s.as_str()) selected[f.get("status") == Some(s.as_str())] { (humanize(s.as_str())) } }
                }
            }
            label { "Operation "
                select name="operation" {
                    option value="" { "Any" }
                    @for o in OPERATIONS { option value=(o) selected[f.get("operation") == Some(o)] { (humanize(o)) } }
                    @if let Some(o) = f.get("operation").filter(|o| !OPERATIONS.contains(o)) { option value=(o) selected { (o) } }
                }
            }
            label { "Object type "
                select name="objectType" {
                    option value="" { "Any" }
                    @for o in OBJECT_TYPES { option value=(o) selected[f.get("objectType") == Some(o)] { (humanize(o)) } }
                }
            }
            label { "Site "
                select name="fabric" {
                    option value="" { "Any" }
                    @for s in &fabrics { option value=(s.id) selected[f.get("fabric") == Some(s.id.to_string().as_str())] { (s.name) } }
                }
            }
            label { "From (UTC) " input type="datetime-local" name="from" value=(f.get("from").unwrap_or_default()); }
            label { "To (UTC) " input type="datetime-local" name="to" value=(f.get("to").unwrap_or_default()); }
            @if let Some(o) = f.get("objectId") { input type="hidden" name="objectId" value=(o); }
            button type="submit" id="apply-filters" { "Filter" }
            a href={ (base) "/jobs" } { "Clear" }
        }
        p class="exports" {
            "Export every matching job: "
            a href=(export("csv")) id="export-csv" { "CSV" } " · "
            a href=(export("json")) id="export-json" { "JSON" }
        }
        @if jobs.is_empty() { p class="muted" id="no-jobs" { "No job matches." } }
        @else {
            table id="jobs" {
                thead { tr { th { "Job" } th { "Object" } th { "Status" } th { "Progress" } th { "Created" } } }
                tbody { (job_rows(&base, &jobs)) }
            }
        }
        @if let Some(n) = &next {
            @let q: Vec<(&str, &str)> = refs.iter().copied().chain([("cursor", n.as_str())]).collect();
            p { a href={ (base) "/jobs?" (query(&q)) } id="next-page" { "Older jobs →" } }
        }
    };
    let refresh = jobs.iter().any(|j| matches!(j.status, JobStatus::InProgress | JobStatus::NotStarted)).then_some(5);
    page(Frame { user: &user, vault: Some(&v), nav: Nav::Jobs, title: "Jobs", refresh, notice }, content, status)
}

/// CSV or JSON of every matching job, as a download.
pub async fn export(
    State(st): State<AppState>,
    user: User,
    Path(vault): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let f = params(raw);
    let format = f.get("format").unwrap_or("csv").to_string();
    let res = async {
        let mut q = job_query(&f)?;
        q.limit = None;
        q.cursor = None;
        q.format = Some(format.clone());
        crate::api::jobs::export_jobs(State(st.clone()), user.auth.clone(), Path(vault.clone()), ApiQuery(q)).await
    }
    .await;
    match res {
        Ok(mut r) => {
            let ext = if format == "csv" { "csv" } else { "json" };
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"ferry-jobs.{ext}\"")) {
                r.headers_mut().insert(CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(e) => error_page(&user, None, e),
    }
}

pub async fn detail(State(st): State<AppState>, user: User, Path((vault, job)): Path<(String, String)>) -> Response {
    render(&st, &user, &vault, &job, None, StatusCode::OK).await
}

async fn render(
    st: &AppState,
    user: &User,
    vault: &str,
    job: &str,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let res = async {
        let Json(v) =
            crate::api::vaults::get_vault(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
        let Json(j) =
            crate::api::jobs::get_job(State(st.clone()), user.auth.clone(), Path((vault.to_string(), job.to_string())))
                .await?;
        let Json(fabrics) =
            crate::api::fabrics::list_fabrics(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
        Ok::<_, ApiFailure>((v, j, fabrics))
    }
    .await;
    let (v, j, fabrics): (_, Job, _) = match res {
        Ok(x) => x,
        Err(e) => return error_page(user, None, e),
    };
    let base = format!("/portal/vaults/{}", v.id);
    let operator = user.can(Role::Operator);
    let refresh = matches!(j.status, JobStatus::InProgress | JobStatus::NotStarted).then_some(2);
    let object_href = match j.object_type.as_str() {
        "ProtectedItem" => Some(format!("{base}/items/{}", j.object_id)),
        "RecoveryPlan" => Some(format!("{base}/plans/{}", j.object_id)),
        _ => None,
    };
    // PLAN-3: the manual action the job waits at, from the plan the job runs.
    let manual = crate::jobs::waiting_manual_action(&j);
    let at_operator = j.status == JobStatus::WaitingForInput && j.params[crate::jobs::RESUMABLE_AT].as_str().is_some();
    // Resume is offered where the API resumes: at an operator's step, or a failed plan job.
    let resume = j.allowed_actions.contains(&JobAction::Resume) && (at_operator || j.status == JobStatus::Failed);
    let content = html! {
        dl id="job-summary" {
            dt { "Operation" } dd { (humanize(&j.operation)) }
            dt { "Object" } dd {
                @if let Some(href) = &object_href { a href=(href) id="job-object" { (j.object_name) } }
                @else { (j.object_name) }
                span class="muted" { " (" (humanize(&j.object_type)) ")" }
            }
            @if let Some(f) = j.fabric { dt { "Site" } dd { (fabrics.iter().find(|x| x.id == f).map(|x| x.name.clone()).unwrap_or_else(|| f.to_string())) } }
            dt { "Status" } dd { span id="job-status" class={ "status " (j.status.as_str()) } { (humanize(j.status.as_str())) } }
            dt { "Progress" } dd { progress max="100" value=(j.progress) {} " " (j.progress) "%" }
            dt { "Created" } dd { (fmt_time(j.created_at)) }
            dt { "Started" } dd { (fmt_opt_time(j.started_at)) }
            dt { "Ended" } dd { (fmt_opt_time(j.ended_at)) }
            @if let Some(r) = j.restart_of { dt { "Restart of" } dd { a href={ (base) "/jobs/" (r) } { (r) } } }
            dt { "Id" } dd { code { (j.id) } }
        }
        @if j.status == JobStatus::WaitingForInput {
            section id="waiting" class="card" {
                @if let Some(w) = &manual {
                    h2 { "Waiting for a manual action" }
                    dl {
                        dt { "Manual action" } dd id="manual-action-name" { (w.step.name()) }
                        dt { "Step" } dd {
                            "Group " (w.group) ", "
                            @match w.phase { StepPhase::Pre => "before its VMs start", StepPhase::Post => "after its VMs are up" }
                        }
                        dt { "Instructions" } dd {
                            div class="instructions" id="manual-action-instructions" {
                                @if let PlanStep::ManualAction { instructions, .. } = &w.step { (instructions) }
                            }
                        }
                    }
                    p class="hint" {
                        @if operator { "Do what the instructions say, then resume the job: the plan goes on with its next step." }
                        @else { "An operator resumes the job once the action is done." }
                    }
                } @else if at_operator {
                    h2 { "Waiting for an operator" }
                    p { "The job waits at " strong { (j.params[crate::jobs::RESUMABLE_AT].as_str().unwrap_or_default()) } "." }
                } @else {
                    h2 { "Waiting for input" }
                    p id="waiting-test" {
                        "The test runs until its cleanup: run " strong { "Cleanup test failover" } " on "
                        @if let Some(href) = &object_href { a href=(href) { (j.object_name) } } @else { (j.object_name) }
                        " when testing is complete."
                    }
                }
            }
        }
        @if operator && (j.allowed_actions.contains(&JobAction::Cancel) || j.allowed_actions.contains(&JobAction::Restart) || resume) {
            div class="ops" id="job-actions" {
                @if resume {
                    form method="post" action={ (base) "/jobs/" (j.id) "/resume" } class="inline" {
                        (csrf_field(user))
                        button type="submit" id="resume-job" {
                            @if j.status == JobStatus::Failed { "Resume job (run the failed steps again)" } @else { "Resume" }
                        }
                    }
                }
                @if j.allowed_actions.contains(&JobAction::Cancel) {
                    form method="post" action={ (base) "/jobs/" (j.id) "/cancel" } class="inline" {
                        (csrf_field(user)) button type="submit" id="cancel-job" { "Cancel job" }
                    }
                }
                @if j.allowed_actions.contains(&JobAction::Restart) {
                    form method="post" action={ (base) "/jobs/" (j.id) "/restart" } class="inline" {
                        (csrf_field(user)) button type="submit" id="restart-job" { "Restart job" }
                    }
                }
            }
        }
        section id="tasks" {
            h2 { "Tasks" }
            table {
                thead { tr { th { "Task" } th { "Status" } th { "Started" } th { "Ended" } th { "Error" } } }
                tbody {
                    @for t in &j.tasks {
                        tr class={ "task " (t.status.as_str()) } {
                            td { (t.name) }
                            td { span class={ "status " (t.status.as_str()) } { (humanize(t.status.as_str())) } }
                            td { (fmt_opt_time(t.started_at)) }
                            td { (fmt_opt_time(t.ended_at)) }
                            td { @if let Some(e) = &t.error { code { (e.code) } " " (e.message) } }
                        }
                    }
                }
            }
        }
        @if !j.errors.is_empty() {
            section id="job-errors" {
                h2 { "Errors" }
                @for e in &j.errors {
                    div class="error-detail" {
                        p { strong class="code" { (e.code) } ": " (e.message) }
                        @if !e.possible_causes.is_empty() {
                            p { "Possible causes:" } ul class="causes" { @for c in &e.possible_causes { li { (c) } } }
                        }
                        @if let Some(r) = &e.recommendation { p class="recommendation" { "Recommendation: " (r) } }
                    }
                }
            }
        }
    };
    let title = format!("Job: {} {}", humanize(&j.operation), j.object_name);
    page(Frame { user, vault: Some(&v), nav: Nav::Jobs, title: &title, refresh, notice }, content, status)
}

pub async fn action(
    State(st): State<AppState>,
    user: User,
    Path((vault, job, action)): Path<(String, String, String)>,
    form: Form,
) -> Response {
    let res = async {
        form.check_csrf(&user)?;
        let path = Path((vault.clone(), job.clone()));
        match action.as_str() {
            "cancel" => crate::api::jobs::cancel_job(State(st.clone()), user.auth.clone(), path).await,
            "restart" => crate::api::jobs::restart_job(State(st.clone()), user.auth.clone(), path).await,
            "resume" => crate::api::jobs::resume_job(State(st.clone()), user.auth.clone(), path).await,
            other => Err(ApiFailure::not_found("Job action", other)),
        }
    }
    .await;
    match res {
        Ok((_, Json(j))) => redirect_with(
            &format!("/portal/vaults/{}/jobs/{}", j.vault_id, j.id),
            &match action.as_str() {
                "restart" => format!("Job restarted as {}", j.id),
                "resume" => "Job resumed".to_string(),
                _ => "Cancellation requested".to_string(),
            },
        ),
        Err(e) => {
            let status = e.status;
            render(&st, &user, &vault, &job, Some(e.into()), status).await
        }
    }
}

pub async fn events(
    State(st): State<AppState>,
    user: User,
    Path(vault): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let f = params(raw);
    let res = async {
        let Json(v) = crate::api::vaults::get_vault(State(st.clone()), user.auth.clone(), Path(vault.clone())).await?;
        let q = EventQuery {
            severity: f.get("severity").map(str::to_string),
            fabric: None,
            kind: f.get("kind").map(str::to_string),
            limit: Some(100),
            cursor: f.get("cursor").map(str::to_string),
        };
        let Json(page) =
            crate::api::events::list_events(State(st.clone()), user.auth.clone(), Path(vault.clone()), ApiQuery(q))
                .await?;
        Ok::<_, ApiFailure>((v, page))
    }
    .await;
    let (v, events) = match res {
        Ok(x) => x,
        Err(e) => return error_page(&user, None, e),
    };
    let base = format!("/portal/vaults/{}", v.id);
    let now = st.clock.now();
    let content = html! {
        form method="get" action={ (base) "/events" } class="filters" {
            label { "Severity "
                select name="severity" {
                    option value="" { "Any" }
                    @for s in ["Info", "Warning", "Error", "Critical"] { option value=(s) selected[f.get("severity") == Some(s)] { (s) } }
                }
            }
            label { "Kind " input name="kind" value=(f.get("kind").unwrap_or_default()); }
            button type="submit" { "Filter" }
        }
        (event_table(&events.items, now))
        @if let Some(n) = &events.next {
            p { a href={ (base) "/events?" (query(&[("severity", f.get("severity").unwrap_or_default()), ("kind", f.get("kind").unwrap_or_default()), ("cursor", n.as_str())])) } { "Older events →" } }
        }
    };
    page(
        Frame { user: &user, vault: Some(&v), nav: Nav::Events, title: "Events", refresh: None, notice: None },
        content,
        StatusCode::OK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_1_portal_filters_become_the_api_query() {
        let f = params(Some(
            "status=Failed&operation=TestFailover&objectType=ProtectedItem&from=2025-06-15T10%3A00&to=&fabric=".into(),
        ));
        let q = job_query(&f).expect("query");
        assert_eq!(q.status.as_deref(), Some("Failed"));
        assert_eq!(q.operation.as_deref(), Some("TestFailover"));
        assert_eq!(q.object_type.as_deref(), Some("ProtectedItem"));
        assert_eq!(q.from.map(|t| t.to_rfc3339()), Some("2025-06-15T10:00:00+00:00".into()));
        assert_eq!(q.to, None, "empty fields are no filter");
        assert_eq!(q.fabric, None);
        let bad = job_query(&params(Some("from=yesterday".into())));
        assert_eq!(bad.err().map(|e| e.body.code), Some("InvalidQuery".into()));
    }
}
