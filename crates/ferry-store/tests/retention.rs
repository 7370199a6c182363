//! SEC-3: retention prunes old events, ended jobs, answered commands and finished alerts, and
//! never what is still in use (an open job, its commands, an alert still being delivered).

use chrono::{DateTime, Duration as Days, Utc};
use ferry_store::{CommandRecord, NewEvent, Retention, Store};
use ferry_types::alert::{Alert, AlertKind, AlertVault};
use ferry_types::event::Severity;
use ferry_types::job::{Job, JobStatus};
use uuid::Uuid;

fn job(vault: Uuid, created: DateTime<Utc>, status: JobStatus) -> Job {
    Job {
        id: Uuid::new_v4(),
        vault_id: vault,
        operation: "TestFailover".into(),
        object_type: "ProtectedItem".into(),
        object_id: "pi-1".into(),
        object_name: "web1".into(),
        fabric: None,
        status,
        tasks: vec![],
        progress: 0,
        allowed_actions: Job::actions_for(status),
        errors: vec![],
        params: serde_json::Value::Null,
        created_at: created,
        started_at: Some(created),
        ended_at: None,
        restart_of: None,
    }
}

fn command(vault: Uuid, job: Option<Uuid>, created: DateTime<Utc>, done: bool) -> CommandRecord {
    CommandRecord {
        id: Uuid::new_v4(),
        vault,
        fabric: Uuid::nil(),
        job,
        body: serde_json::json!({"kind": "StartVm"}),
        created_ms: created.timestamp_millis(),
        done_ms: done.then(|| created.timestamp_millis() + 1000),
        result: done.then(|| serde_json::json!({"ok": true})),
    }
}

fn alert(vault: Uuid, raised: DateTime<Utc>) -> Alert {
    Alert {
        id: Uuid::new_v4(),
        vault: AlertVault { id: vault, name: "v".into() },
        kind: AlertKind::CriticalHealth,
        severity: Severity::Critical,
        subject: "s".into(),
        message: "m".into(),
        object: None,
        raised_at: raised,
    }
}

#[tokio::test]
async fn sec_3_retention_prunes_what_is_old_and_keeps_what_is_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("v.db")).await.expect("open");
    let vault = Uuid::new_v4();
    let now = Utc::now();
    let old = now - Days::days(120);
    let recent = now - Days::days(5);

    let old_done = job(vault, old, JobStatus::Succeeded);
    let old_open = job(vault, old, JobStatus::WaitingForInput);
    let recent_done = job(vault, recent, JobStatus::Failed);
    store.insert_jobs(&[old_done.clone(), old_open.clone(), recent_done.clone()]).await.expect("jobs");
    let commands = vec![
        command(vault, Some(old_done.id), old, true),       // goes with its job
        command(vault, Some(old_open.id), old, true),       // kept: its job is open
        command(vault, None, old, false),                   // stale, no job: goes
        command(vault, Some(recent_done.id), recent, true), // recent: kept
    ];
    store.insert_command_records(&commands).await.expect("commands");
    let events: Vec<NewEvent> = [old, old, recent]
        .iter()
        .map(|t| NewEvent {
            vault,
            time: *t,
            severity: Severity::Info,
            kind: "K",
            message: "m",
            fabric: None,
            object_id: None,
        })
        .collect();
    store.append_events(&events).await.expect("events");
    let delivered_old = alert(vault, old);
    let pending_old = alert(vault, old);
    let delivered_recent = alert(vault, recent);
    store
        .insert_alert_records(
            &[
                (delivered_old, Some(old.timestamp_millis())),
                (pending_old.clone(), None),
                (delivered_recent, Some(recent.timestamp_millis())),
            ],
            "email",
        )
        .await
        .expect("alerts");

    let pruned = store.prune(now.timestamp_millis(), &Retention::default()).await.expect("prune");
    assert_eq!((pruned.events, pruned.jobs, pruned.site_commands, pruned.alerts), (2, 1, 2, 1), "{pruned:?}");
    let left = store.retained_counts().await.expect("counts");
    assert_eq!((left.events, left.jobs, left.site_commands, left.alerts), (1, 2, 2, 2), "{left:?}");
    assert!(store.get_job(vault, old_done.id).await.expect("read").is_none());
    assert!(store.get_job(vault, old_open.id).await.expect("read").is_some(), "an open job is kept");
    assert!(store.get_command(commands[1].id).await.expect("read").is_some(), "an open job's command is kept");
    assert!(store.get_command(commands[2].id).await.expect("read").is_none());
    let due = store.due_alerts(now.timestamp_millis(), 10).await.expect("due");
    assert_eq!(due.len(), 1, "the alert still being delivered is kept");
    assert_eq!(due[0].alert.id, pending_old.id);

    // Pruning again removes nothing; once the open job ended, it and its command go.
    assert_eq!(store.prune(now.timestamp_millis(), &Retention::default()).await.expect("prune").total(), 0);
    let mut ended = old_open.clone();
    ended.status = JobStatus::Cancelled;
    store.update_job(&ended).await.expect("end the job");
    let pruned = store.prune(now.timestamp_millis(), &Retention::default()).await.expect("prune");
    assert_eq!((pruned.jobs, pruned.site_commands), (1, 1), "{pruned:?}");
}

#[test]
fn sec_3_a_retention_out_of_range_is_refused_with_its_setting() {
    assert_eq!(Retention::days("events_days", 7).expect("ok").as_secs(), 7 * 24 * 3600);
    for bad in [0, 3651] {
        let e = Retention::days("events_days", bad).expect_err("refused").to_string();
        assert!(e.contains("events_days") && e.contains(&bad.to_string()), "{e}");
    }
}
