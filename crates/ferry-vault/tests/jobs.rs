//! JOB-1 through the vault's HTTPS API: filters, pagination without a cap, export, cancel,
//! restart, and a job that survives a vault restart without re-sending site commands.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use common::*;
use ferry_types::event::Event;
use ferry_types::job::{Job, JobAction, JobStatus, JobTask};
use ferry_types::Page;
use uuid::Uuid;

const OPS: [&str; 4] = ["EnableProtection", "TestFailover", "PlannedFailover", "DisableProtection"];
const STATUSES: [JobStatus; 3] = [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled];

fn synthetic_job(vault: Uuid, i: usize) -> Job {
    let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("time");
    let created = t0 + chrono::Duration::minutes(i as i64);
    let status = STATUSES[i % 3];
    Job {
        id: Uuid::new_v4(),
        vault_id: vault,
        operation: OPS[i % 4].to_string(),
        object_type: if i % 2 == 1 { "RecoveryPlan" } else { "ProtectedItem" }.to_string(),
        object_id: format!("obj-{i}"),
        object_name: format!("VM, \"{i}\""),
        fabric: None,
        status,
        tasks: vec![JobTask {
            name: "Prerequisites check".into(),
            status,
            started_at: Some(created),
            ended_at: Some(created),
            error: None,
        }],
        progress: 100,
        allowed_actions: Job::actions_for(status),
        errors: vec![],
        params: serde_json::json!({"i": i}),
        created_at: created,
        started_at: Some(created),
        ended_at: Some(created),
        restart_of: None,
    }
}

fn t(i: i64) -> String {
    let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("time");
    (t0 + chrono::Duration::minutes(i)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_1_jobs_filter_paginate_and_export_without_cap() {
    let tv = start_vault().await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    const N: usize = 300;
    for i in 0..N {
        tv.store().insert_job(&synthetic_job(v.id, i)).await.expect("insert job");
    }
    let total = N + 1; // + RegisterSiteManager
    let count = |q: &str| {
        let q = q.to_string();
        let c = tv.admin.clone();
        async move { all_jobs(&c, "v1", &q).await.len() }
    };
    assert_eq!(count("status=Failed").await, N / 3);
    assert_eq!(count("status=Succeeded").await, N / 3 + 1);
    assert_eq!(count("operation=TestFailover").await, N / 4);
    assert_eq!(count("objectType=RecoveryPlan").await, N / 2);
    assert_eq!(count("objectType=ProtectedItem&objectId=obj-42").await, 1);
    assert_eq!(count("status=Failed&operation=TestFailover").await, N / 12);
    assert_eq!(count(&format!("from={}&to={}", t(100), t(199))).await, 100);
    assert_eq!(count(&format!("to={}", t(9))).await, 10);
    assert_eq!(count(&format!("fabric={}", ny.fabric_id)).await, 1);
    assert_eq!(count("operation=RegisterSiteManager").await, 1);
    assert_eq!(count("status=InProgress").await, 0);

    // Pagination: default page, cursors, newest first, every job once.
    let first: Page<Job> = tv.admin.get("/api/v1/vaults/v1/replicationJobs").await.expect("page");
    assert_eq!(first.items.len(), 100);
    assert!(first.next.is_some());
    let all = all_jobs(&tv.admin, "v1", "limit=7").await;
    assert_eq!(all.len(), total);
    let ids: HashSet<Uuid> = all.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), total);
    // Newest (last recorded) first.
    assert_eq!(all[0].object_id, format!("obj-{}", N - 1));
    assert_eq!(all[total - 1].operation, "RegisterSiteManager");
    let one_page: Page<Job> = tv.admin.get("/api/v1/vaults/v1/replicationJobs?limit=1000").await.expect("page");
    assert_eq!(one_page.items.len(), total);
    assert!(one_page.next.is_none());

    // Export: everything, in both formats, filters apply.
    let json: Vec<Job> = tv.admin.get("/api/v1/vaults/v1/replicationJobs/export?format=json").await.expect("json");
    assert_eq!(json.len(), total);
    assert_eq!(json.iter().map(|j| j.id).collect::<HashSet<_>>(), ids);
    let csv = tv.admin.get_text("/api/v1/vaults/v1/replicationJobs/export?format=csv").await.expect("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), total + 1);
    assert!(lines[0].starts_with("id,operation,"));
    for id in &ids {
        assert!(csv.contains(&id.to_string()));
    }
    // Quotes and commas are escaped.
    assert!(csv.contains("\"VM, \"\"7\"\"\""), "csv escaping");
    let failed_csv =
        tv.admin.get_text("/api/v1/vaults/v1/replicationJobs/export?format=csv&status=Failed").await.expect("csv");
    assert_eq!(failed_csv.lines().count(), N / 3 + 1);
    let e = expect_err(tv.admin.get_text("/api/v1/vaults/v1/replicationJobs/export?format=xml").await);
    assert_eq!(e, (400, "InvalidQuery".to_string()));
    let e = expect_err(tv.admin.get::<Page<Job>>("/api/v1/vaults/v1/replicationJobs?status=Weird").await);
    assert_eq!(e, (400, "InvalidQuery".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_1_cancel_in_progress_pair_job() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (_pid, job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    // Nobody answers: the job waits on its first task.
    let j = wait_job(&tv.admin, "v1", job, 10, |j| {
        j.status == JobStatus::InProgress && j.tasks[0].status == JobStatus::InProgress
    })
    .await;
    assert_eq!(j.operation, "ConfigureCloudPair");
    assert_eq!(j.allowed_actions, vec![JobAction::Cancel]);
    let e = expect_err(tv.admin.post::<_, Job>(&format!("/api/v1/vaults/v1/replicationJobs/{job}/restart"), &()).await);
    assert_eq!(e, (409, "JobActionNotAllowed".to_string()));
    let _: Job = tv.admin.post(&format!("/api/v1/vaults/v1/replicationJobs/{job}/cancel"), &()).await.expect("cancel");
    let done = wait_status(&tv.admin, "v1", job, JobStatus::Cancelled, 10).await;
    assert!(done.tasks.iter().all(|t| t.status == JobStatus::Cancelled), "{:?}", done.tasks);
    assert!(done.ended_at.is_some());
    assert!(done.allowed_actions.is_empty());
    let e = expect_err(tv.admin.post::<_, Job>(&format!("/api/v1/vaults/v1/replicationJobs/{job}/cancel"), &()).await);
    assert_eq!(e, (409, "JobActionNotAllowed".to_string()));
    // The cancelled job's command is withdrawn: a site that polls only now never gets it (it
    // would run a step the operator called off), and a late answer does not revive the job.
    assert!(ny.pending(0).await.is_empty(), "a cancelled job's command is not delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_job(&tv.admin, "v1", job).await.status, JobStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_1_a_command_past_its_timeout_is_withdrawn_not_run_late() {
    let tv = start_vault_with(|c| c.site_command_timeout = Duration::from_secs(1)).await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (_pid, job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    // The site is away while the job waits; the job fails when the command times out.
    let done = wait_status(&tv.admin, "v1", job, JobStatus::Failed, 15).await;
    assert!(done.errors.iter().any(|e| e.code == "SiteUnreachable"), "{:?}", done.errors);
    // The site comes back: the stale command is not delivered.
    assert!(ny.pending(0).await.is_empty(), "a timed-out job's command is not run late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_1_restart_failed_job() {
    let tv = start_vault_with(|c| c.site_command_timeout = Duration::from_secs(1)).await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (_l1, _) = ny.spawn_loop();
    let (_pid, job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    let failed = wait_status(&tv.admin, "v1", job, JobStatus::Failed, 15).await;
    assert_eq!(failed.tasks[0].status, JobStatus::Succeeded);
    assert_eq!(failed.tasks[1].status, JobStatus::Failed);
    assert_eq!(failed.errors.len(), 1);
    let err = &failed.errors[0];
    assert_eq!(err.code, "SiteUnreachable");
    assert!(!err.possible_causes.is_empty());
    assert!(err.recommendation.is_some());
    assert_eq!(failed.allowed_actions, vec![JobAction::Restart]);
    assert_eq!(failed.progress, 50);
    let events: Page<Event> =
        tv.admin.get("/api/v1/vaults/v1/events?kind=JobFailed&severity=Error").await.expect("events");
    assert_eq!(events.items.len(), 1);

    let (_l2, _) = chi.spawn_loop();
    let new: Job =
        tv.admin.post(&format!("/api/v1/vaults/v1/replicationJobs/{job}/restart"), &()).await.expect("restart");
    assert_ne!(new.id, job);
    assert_eq!(new.restart_of, Some(job));
    assert_eq!(new.operation, failed.operation);
    assert_eq!(new.params, failed.params);
    let done = wait_status(&tv.admin, "v1", new.id, JobStatus::Succeeded, 15).await;
    assert_eq!(done.restart_of, Some(job));
    assert_eq!(get_job(&tv.admin, "v1", job).await.status, JobStatus::Failed);
    let restarts = all_jobs(&tv.admin, "v1", "operation=ConfigureCloudPair").await;
    assert_eq!(restarts.len(), 2);
}

/// What the first vault run hands to the second.
struct Phase1 {
    job: Uuid,
    chi_token: String,
    ny_token: String,
    chi_command: Uuid,
    commands: i64,
    source_task: JobTask,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_1_job_resumes_after_vault_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    // Phase 1 runs in its own runtime, dropped afterwards: every task of the first vault (the
    // running job included) dies with it, like a killed process.
    let p1 = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let out = rt.block_on(async {
            let tv = start_vault_in(&path, |_| {}).await;
            let (ny, chi) = two_sites(&tv, "v1").await;
            let (_l, ny_seen) = ny.spawn_loop();
            let (_pid, job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
            let j = wait_job(&tv.admin, "v1", job, 15, |j| {
                j.tasks[0].status == JobStatus::Succeeded && j.tasks[1].status == JobStatus::InProgress
            })
            .await;
            // The task is in progress once its command is queued for the site (the long poll
            // returns as soon as it is).
            let pending = chi.pending(10).await;
            assert_eq!(pending.len(), 1);
            assert_eq!(ny_seen.lock().expect("lock").len(), 1);
            let commands = tv.store().count("site_commands").await.expect("count");
            assert_eq!(commands, 2);
            tv.handle.shutdown().await;
            Phase1 {
                job,
                chi_token: chi.token.clone(),
                ny_token: ny.token.clone(),
                chi_command: pending[0].id,
                commands,
                source_task: j.tasks[0].clone(),
            }
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        out
    })
    .join()
    .expect("phase 1");

    // Phase 2: a new vault on the same data directory resumes the job.
    let tv = start_vault_in(dir.path(), |_| {}).await;
    assert!(tv.handle.new_admin_token.is_none());
    let j = get_job(&tv.admin, "v1", p1.job).await;
    assert!(!j.status.is_terminal(), "{j:?}");
    let chi = tv.client(Some(&p1.chi_token));
    let ny = tv.client(Some(&p1.ny_token));
    let pending: Vec<ferry_types::site_protocol::SiteCommandEnvelope> =
        chi.get("/api/v1/agent/commands?wait=2").await.expect("chi commands");
    assert_eq!(pending.iter().map(|c| c.id).collect::<Vec<_>>(), vec![p1.chi_command], "same command, same id");
    let ny_pending: Vec<ferry_types::site_protocol::SiteCommandEnvelope> =
        ny.get("/api/v1/agent/commands?wait=1").await.expect("ny commands");
    assert!(ny_pending.is_empty(), "the source side is not asked again: {ny_pending:?}");
    assert_eq!(tv.store().count("site_commands").await.expect("count"), p1.commands);

    let res = ferry_types::site_protocol::CommandResult { ok: true, error: None, output: serde_json::Value::Null };
    let _: serde_json::Value =
        chi.post(&format!("/api/v1/agent/commands/{}/result", p1.chi_command), &res).await.expect("answer");
    let done = wait_status(&tv.admin, "v1", p1.job, JobStatus::Succeeded, 15).await;
    assert_eq!(done.id, p1.job);
    assert_eq!(done.tasks[0], p1.source_task, "the finished task was not run again");
    assert_eq!(done.progress, 100);
    assert_eq!(tv.store().count("site_commands").await.expect("count"), p1.commands);
    let pairs = all_jobs(&tv.admin, "v1", "operation=ConfigureCloudPair").await;
    assert_eq!(pairs.len(), 1, "no new job was created");
}
