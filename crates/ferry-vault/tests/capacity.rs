//! CAP-1 through the vault's HTTPS API: a capacity plan of 100 VMs starts one measurement per VM
//! on its host, folds the churn the site reports into a report, stops and is deleted; bad input
//! is refused and changes nothing; roles are checked. The site is played by the test.

mod common;

use chrono::Utc;
use common::*;
use ferry_types::capacity::{CapacityPlan, CapacityReport, ProfileAction};
use ferry_types::fabric::Vm;
use ferry_types::job::JobStatus;
use ferry_types::site_protocol::SiteCommand;
use serde_json::{json, Value};

const PLANS: &str = "/api/v1/vaults/v1/capacityPlans";
const MIB: u64 = 1 << 20;

fn vms(base: &Vm, n: usize) -> Vec<Vm> {
    (0..n)
        .map(|i| {
            let mut v = base.clone();
            v.id = format!("id-{i}");
            v.name = format!("vm{i}");
            v.disks[0].path = format!("/var/lib/ferry/ny/vm{i}.qcow2");
            v
        })
        .collect()
}

/// The churn profile a host would report for `vm` of `plan`.
fn profile(plan: uuid::Uuid, vm: &str, window_max: u64) -> Value {
    let now = Utc::now();
    json!({"plan": plan, "vm_id": "", "vm_name": vm, "state": "Measuring", "started_at": now, "updated_at": now,
        "measured_secs": 7200,
        "disks": [{"target": "vda", "virtual_size": 1u64 << 30, "allocated_bytes": 256 * MIB}],
        "windows": [
            {"window_secs": 30, "windows": 240, "total_bytes": 240 * MIB, "max_bytes": window_max},
            {"window_secs": 300, "windows": 24, "total_bytes": 120 * MIB, "max_bytes": 4 * window_max},
            {"window_secs": 900, "windows": 8, "total_bytes": 80 * MIB, "max_bytes": 8 * window_max},
            {"window_secs": 3600, "windows": 2, "total_bytes": 60 * MIB, "max_bytes": 40 * MIB}],
        "hours": [20 * MIB, 40 * MIB]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_1_plan_of_100_vms_measures_reports_stops_and_refuses_bad_input() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let mut inv = ny.inventory.clone();
    inv.vms = vms(&ny.inventory.vms[0], 101);
    ny.report_inv(&inv).await;
    let (_l, seen) = ny.spawn_loop();
    let a = &tv.admin;
    let names: Vec<String> = (0..100).map(|i| format!("vm{i}")).collect();

    // Bad input: refused, nothing created, no command sent.
    let before = snapshot(a, "v1").await;
    let mut too_many = names.clone();
    too_many.push("vm100".into());
    for (body, want) in [
        (json!({"name": "p", "source_site": "ny", "vms": too_many}), (400, "CapacityPlanVmCount")),
        (json!({"name": "p", "source_site": "ny", "vms": []}), (400, "CapacityPlanVmCount")),
        (json!({"name": "bad name", "source_site": "ny", "vms": ["vm0"]}), (400, "CapacityPlanInvalidName")),
        (json!({"name": "p", "source_site": "ny", "vms": ["vm0", "id-0"]}), (400, "CapacityPlanDuplicateVm")),
        (json!({"name": "p", "source_site": "ny", "vms": ["vm0", "nope"]}), (404, "NotFound")),
        (json!({"name": "p", "source_site": "nowhere", "vms": ["vm0"]}), (404, "NotFound")),
        (
            json!({"name": "p", "source_site": "ny", "vms": ["vm0"], "duration_hours": 721}),
            (400, "CapacityPlanInvalidDuration"),
        ),
        (json!({"name": "p", "source_site": "ny", "vms": ["vm0"], "extra": 1}), (400, "InvalidBody")),
    ] {
        let e = expect_err(a.post::<_, Value>(PLANS, &body).await);
        assert_eq!((e.0, e.1.as_str()), want, "{body}");
    }
    let listed: Vec<CapacityPlan> = a.get(PLANS).await.expect("list");
    assert!(listed.is_empty());
    assert_eq!(snapshot(a, "v1").await.0, before.0);
    // A reader sees plans but cannot create one.
    let (reader, _) = make_token(a, "r", "Reader").await;
    let reader = tv.client(Some(&reader));
    let e =
        expect_err(reader.post::<_, Value>(PLANS, &json!({"name": "p", "source_site": "ny", "vms": ["vm0"]})).await);
    assert_eq!(e.0, 403);

    // 100 VMs: one measurement started per VM on its host.
    let created: Value =
        a.post(PLANS, &json!({"name": "q1", "source_site": "ny", "vms": names})).await.expect("create");
    let plan: CapacityPlan = serde_json::from_value(created["plan"].clone()).expect("plan");
    let job = uuid::Uuid::parse_str(created["job"]["id"].as_str().expect("job")).expect("uuid");
    wait_status(a, "v1", job, JobStatus::Succeeded, 60).await;
    let starts: Vec<(String, String)> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|c| match &c.command {
            SiteCommand::Profile { host, action: ProfileAction::Start { plan: p, vm, .. } } if *p == plan.id => {
                Some((host.clone(), vm.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 100, "one start per VM");
    assert!(starts.iter().all(|(h, _)| h == &ny.inventory.vms[0].host));
    let e = expect_err(a.post::<_, Value>(PLANS, &json!({"name": "q1", "source_site": "ny", "vms": ["vm0"]})).await);
    assert_eq!(e, (409, "NameConflict".into()));

    // Nothing measured yet: the report says so.
    let r: CapacityReport = reader.get(&format!("{PLANS}/q1/report")).await.expect("report");
    assert_eq!((r.vms, r.vms_measured), (100, 0));
    assert!(r.notes.iter().any(|n| n.contains("No measurement yet for 100 of 100 VMs")), "{:?}", r.notes);

    // The site reports every VM's churn (and a claim for a plan of another site, ignored).
    let churn: Vec<Value> = (0..100).map(|i| profile(plan.id, &format!("vm{i}"), MIB)).collect();
    let rep = json!({"provider_id": ny.provider_id, "version": SITE_VERSION, "inventory": inv, "churn": churn});
    let _: Value = ny.client.post("/api/v1/agent/report", &rep).await.expect("report");
    let foreign = json!({"provider_id": chi.provider_id, "version": SITE_VERSION, "inventory": chi.inventory,
        "churn": [profile(plan.id, "vm0", 999 * MIB)]});
    let _: Value = chi.client.post("/api/v1/agent/report", &foreign).await.expect("foreign report");
    let r: CapacityReport = reader
        .get(&format!("{PLANS}/q1/report?bandwidth_mbps=1000&retention_hours=2&copy_frequency_secs=900"))
        .await
        .expect("report");
    assert_eq!((r.vms, r.vms_measured, r.disks), (100, 100, 100));
    assert_eq!(r.allocated_bytes, 100 * 256 * MIB);
    assert_eq!(r.daily_churn_bytes, Some(100 * 30 * MIB * 24));
    let peak30 = r.bandwidth[0].peak_mbps.expect("peak");
    assert!(
        (peak30 - 100.0 * MIB as f64 / 30.0 * 8.0 / 1e6).abs() < 1e-6,
        "the other site's claim is ignored: {peak30}"
    );
    assert!((r.initial_replication_secs - (100 * 256 * MIB) as f64 * 8.0 / 1e9).abs() < 1e-6);
    assert_eq!(r.replica_storage_bytes, Some(100 * (256 * MIB + 2 * 40 * MIB + 8 * MIB)));
    let shown: CapacityPlan = a.get(&format!("{PLANS}/q1")).await.expect("plan");
    assert!(shown.profiles.iter().all(|p| p.vm_id.starts_with("id-")), "profiles carry the plan's VM ids");
    for q in ["bandwidth_mbps=0", "retention_hours=25", "copy_frequency_secs=45", "nope=1"] {
        let e = expect_err(a.get::<Value>(&format!("{PLANS}/q1/report?{q}")).await);
        assert_eq!(e.0, 400, "{q}");
    }

    // Stop, then delete: one command per VM each, the plan goes at the end.
    let j: Value = a.post(&format!("{PLANS}/q1/stop"), &json!({})).await.expect("stop");
    let jid = uuid::Uuid::parse_str(j["id"].as_str().expect("job")).expect("uuid");
    wait_status(a, "v1", jid, JobStatus::Succeeded, 60).await;
    let shown: CapacityPlan = a.get(&format!("{PLANS}/q1")).await.expect("plan");
    assert_eq!(shown.state, ferry_types::capacity::CapacityPlanState::Stopped);
    assert!(shown.stopped_at.is_some());
    let e = expect_err(a.post::<_, Value>(&format!("{PLANS}/q1/stop"), &json!({})).await);
    assert_eq!(e, (409, "CapacityPlanStopped".into()));
    let j: Value = a.delete(&format!("{PLANS}/q1")).await.expect("delete");
    let jid = uuid::Uuid::parse_str(j["id"].as_str().expect("job")).expect("uuid");
    wait_status(a, "v1", jid, JobStatus::Succeeded, 60).await;
    let count = |f: fn(&ProfileAction) -> bool| {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|c| matches!(&c.command, SiteCommand::Profile { action, .. } if f(action)))
            .count()
    };
    assert_eq!(count(|a| matches!(a, ProfileAction::Stop { .. })), 100);
    assert_eq!(count(|a| matches!(a, ProfileAction::Forget { .. })), 100);
    assert_eq!(expect_err(a.get::<Value>(&format!("{PLANS}/q1")).await).0, 404);
}
