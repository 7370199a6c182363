//! JOB-1: batch inserts and filtered keyset listing agree with a naive filter over every row.

use chrono::{TimeZone, Utc};
use ferry_store::{NewEvent, Store};
use ferry_types::event::Severity;
use ferry_types::job::{Job, JobFilter, JobStatus};
use uuid::Uuid;

fn job(vault: Uuid, fabric: Uuid, i: usize) -> Job {
    let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().expect("time") + chrono::Duration::minutes(i as i64);
    let status = [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled][i % 3];
    Job {
        id: Uuid::new_v4(),
        vault_id: vault,
        operation: ["A", "B", "C", "D"][i % 4].into(),
        object_type: if i % 5 == 1 { "RecoveryPlan" } else { "ProtectedItem" }.into(),
        object_id: format!("o{}", i % 7),
        object_name: String::new(),
        fabric: (i % 2 == 1).then_some(fabric),
        status,
        tasks: vec![],
        progress: 0,
        allowed_actions: Job::actions_for(status),
        errors: vec![],
        params: serde_json::Value::Null,
        created_at: t,
        started_at: None,
        ended_at: None,
        restart_of: None,
    }
}

async fn list_all(store: &Store, vault: Uuid, f: &JobFilter, limit: i64) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let (items, next) = store.list_jobs(vault, f, cursor, limit).await.expect("list");
        assert!(items.len() as i64 <= limit);
        out.extend(items.into_iter().map(|j| j.id));
        match next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
}

#[tokio::test]
async fn job_1_filtered_listing_matches_naive_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("v.db")).await.expect("open");
    let (vault, other, fabric) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let jobs: Vec<Job> = (0..1234).map(|i| job(vault, fabric, i)).collect();
    store.insert_jobs(&jobs).await.expect("batch insert");
    store.insert_jobs(&(0..50).map(|i| job(other, fabric, i)).collect::<Vec<_>>()).await.expect("other vault");
    let t =
        |m: i64| Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().expect("time") + chrono::Duration::minutes(m));
    let filters = vec![
        JobFilter::default(),
        JobFilter { status: Some(JobStatus::Failed), ..Default::default() },
        JobFilter { operation: Some("B".into()), status: Some(JobStatus::Cancelled), ..Default::default() },
        JobFilter { fabric: Some(fabric), object_type: Some("RecoveryPlan".into()), ..Default::default() },
        JobFilter { object_type: Some("ProtectedItem".into()), object_id: Some("o3".into()), ..Default::default() },
        JobFilter { from: t(100), to: t(350), ..Default::default() },
        JobFilter { from: t(1000), operation: Some("A".into()), ..Default::default() },
    ];
    for f in &filters {
        let expected: Vec<Uuid> = jobs
            .iter()
            .rev()
            .filter(|j| f.status.is_none_or(|s| j.status == s))
            .filter(|j| f.operation.as_ref().is_none_or(|o| &j.operation == o))
            .filter(|j| f.fabric.is_none_or(|x| j.fabric == Some(x)))
            .filter(|j| f.object_type.as_ref().is_none_or(|o| &j.object_type == o))
            .filter(|j| f.object_id.as_ref().is_none_or(|o| &j.object_id == o))
            .filter(|j| f.from.is_none_or(|x| j.created_at >= x))
            .filter(|j| f.to.is_none_or(|x| j.created_at <= x))
            .map(|j| j.id)
            .collect();
        assert!(!expected.is_empty(), "{f:?}");
        assert_eq!(list_all(&store, vault, f, 37).await, expected, "{f:?}");
        assert_eq!(list_all(&store, vault, f, 1000).await, expected, "{f:?}");
    }
    assert_eq!(store.count("jobs").await.expect("count"), 1284);
}

#[tokio::test]
async fn job_4_batch_events_list_by_severity_and_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("v.db")).await.expect("open");
    let (vault, fabric) = (Uuid::new_v4(), Uuid::new_v4());
    let sev = [Severity::Info, Severity::Warning, Severity::Error, Severity::Critical];
    let kinds = ["K0", "K1", "K2"];
    let evs: Vec<NewEvent> = (0..2000)
        .map(|i| NewEvent {
            vault,
            time: Utc::now(),
            severity: sev[i % 4],
            kind: kinds[i % 3],
            message: "m",
            fabric: (i % 2 == 0).then_some(fabric),
            object_id: None,
        })
        .collect();
    store.append_events(&evs).await.expect("batch");
    let mut n = 0;
    let mut cursor = None;
    loop {
        let (items, next) =
            store.list_events(vault, Some(Severity::Critical), None, Some("K1"), cursor, 10).await.expect("list");
        assert!(items.iter().all(|e| e.severity == Severity::Critical && e.kind == "K1" && e.id > 0));
        n += items.len();
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    // i % 4 == 3 and i % 3 == 1: i ≡ 7 (mod 12).
    assert_eq!(n, (0..2000).filter(|i| i % 12 == 7).count());
    let (items, _) = store.list_events(vault, None, Some(fabric), None, None, 5000).await.expect("list");
    assert_eq!(items.len(), 1000);
}
