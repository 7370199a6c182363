//! `/api/v1/vaults/{vault}/replicationJobs`: list, filter, export, cancel, restart (JOB-1).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use ferry_types::auth::Role;
use ferry_types::job::{Job, JobAction, JobFilter, JobStatus};
use ferry_types::Page;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{parse_id, ApiQuery, PageParams};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    pub fabric: Option<Uuid>,
    #[serde(rename = "objectType")]
    pub object_type: Option<String>,
    #[serde(rename = "objectId")]
    pub object_id: Option<String>,
    pub status: Option<String>,
    pub operation: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    /// Export format: `json` or `csv`.
    pub format: Option<String>,
}

impl JobQuery {
    fn filter(&self) -> ApiResult<JobFilter> {
        let status = self
            .status
            .as_deref()
            .map(|s| {
                JobStatus::parse(s)
                    .ok_or_else(|| ApiFailure::bad_request("InvalidQuery", format!("Unknown job status '{s}'")))
            })
            .transpose()?;
        Ok(JobFilter {
            fabric: self.fabric,
            object_type: self.object_type.clone(),
            object_id: self.object_id.clone(),
            status,
            operation: self.operation.clone(),
            from: self.from,
            to: self.to,
        })
    }
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationJobs", tag = "jobs", params(("vault" = String, Path), JobQuery), responses((status = 200, body = Page<Job>)))]
pub async fn list_jobs(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> ApiResult<Json<Page<Job>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let filter = q.filter()?;
    let page = PageParams { limit: q.limit, cursor: q.cursor.clone() };
    let (items, next) = st.store.list_jobs(v.id, &filter, page.numeric_cursor()?, page.limit()?).await?;
    Ok(Json(Page { items, next: next.map(|n| n.to_string()) }))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV line per job.
pub fn job_csv_row(j: &Job) -> String {
    let errors: Vec<String> = j.errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect();
    [
        j.id.to_string(),
        j.operation.clone(),
        j.object_type.clone(),
        j.object_name.clone(),
        j.fabric.map(|f| f.to_string()).unwrap_or_default(),
        j.status.as_str().to_string(),
        j.progress.to_string(),
        j.created_at.to_rfc3339(),
        j.ended_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        errors.join("; "),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

pub const JOB_CSV_HEADER: &str =
    "id,operation,object_type,object_name,fabric,status,progress,created_at,ended_at,errors";

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationJobs/export", tag = "jobs", params(("vault" = String, Path), JobQuery), responses((status = 200, description = "Every matching job as CSV or a JSON array")))]
pub async fn export_jobs(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> ApiResult<Response> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let filter = q.filter()?;
    let format = q.format.as_deref().unwrap_or("json");
    if format != "json" && format != "csv" {
        return Err(ApiFailure::bad_request(
            "InvalidQuery",
            format!("Unknown export format '{format}'; use json or csv"),
        ));
    }
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let (items, next) = st.store.list_jobs(v.id, &filter, cursor, 1000).await?;
        all.extend(items);
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    if format == "csv" {
        let mut out = String::from(JOB_CSV_HEADER);
        out.push('\n');
        for j in &all {
            out.push_str(&job_csv_row(j));
            out.push('\n');
        }
        Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response())
    } else {
        Ok(Json(all).into_response())
    }
}

async fn load_job(st: &AppState, vault: &str, id: &str) -> ApiResult<Job> {
    let (v, _) = st.vault(vault).await?;
    let jid = parse_id("Job", id)?;
    st.store.get_job(v.id, jid).await?.ok_or_else(|| ApiFailure::not_found("Job", id))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/replicationJobs/{job}", tag = "jobs", params(("vault" = String, Path), ("job" = String, Path)), responses((status = 200, body = Job), (status = 404, body = ferry_types::ApiError)))]
pub async fn get_job(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, job)): Path<(String, String)>,
) -> ApiResult<Json<Job>> {
    auth.require(Role::Reader)?;
    Ok(Json(load_job(&st, &vault, &job).await?))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationJobs/{job}/cancel", tag = "jobs", params(("vault" = String, Path), ("job" = String, Path)), responses((status = 202, body = Job), (status = 409, body = ferry_types::ApiError)))]
pub async fn cancel_job(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, job)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    auth.require(Role::Operator)?;
    let j = load_job(&st, &vault, &job).await?;
    if !j.allowed_actions.contains(&JobAction::Cancel) {
        return Err(ApiFailure::conflict(
            "JobActionNotAllowed",
            format!("Job {} is {} and cannot be cancelled", j.id, j.status.as_str()),
        ));
    }
    let j = st.jobs.cancel(&st, j).await?;
    Ok((StatusCode::ACCEPTED, Json(j)))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationJobs/{job}/restart", tag = "jobs", params(("vault" = String, Path), ("job" = String, Path)), responses((status = 202, body = Job), (status = 409, body = ferry_types::ApiError)))]
pub async fn restart_job(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, job)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    auth.require(Role::Operator)?;
    let j = load_job(&st, &vault, &job).await?;
    if !j.allowed_actions.contains(&JobAction::Restart) {
        return Err(ApiFailure::conflict(
            "JobActionNotAllowed",
            format!("Job {} is {} and cannot be restarted", j.id, j.status.as_str()),
        ));
    }
    let new = st.jobs.restart(&st, &j).await?;
    Ok((StatusCode::ACCEPTED, Json(new)))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/replicationJobs/{job}/resume", tag = "jobs", params(("vault" = String, Path), ("job" = String, Path)), responses((status = 202, body = Job), (status = 409, body = ferry_types::ApiError)))]
/// Resume a job that waits for an operator's manual action (PLAN-3), or a failed recovery plan
/// job after its cause was fixed: finished tasks are kept, the job runs on from where it stopped.
pub async fn resume_job(
    State(st): State<AppState>,
    auth: Auth,
    Path((vault, job)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    auth.require(Role::Operator)?;
    let j = load_job(&st, &vault, &job).await?;
    let (id, status) = (j.id, j.status);
    match st.jobs.resume(&st, j).await? {
        Some(resumed) => Ok((StatusCode::ACCEPTED, Json(resumed))),
        None => Err(ApiFailure::conflict(
            "JobActionNotAllowed",
            format!("Job {id} is {} and does not wait for an operator's manual action", status.as_str()),
        )),
    }
}
