//! Recovery plans through the vault's HTTPS API (PLAN-1, PLAN-2, PLAN-4): rules and refusals
//! that change nothing, and plan jobs driven against site managers played by the test, which
//! see every command in the order the vault sends it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry_client::Client;
use ferry_store::DocKind;
use ferry_types::job::{Job, JobStatus};
use ferry_types::plan::RecoveryPlan;
use ferry_types::site_protocol::{CommandResult, SiteCommand, SiteCommandEnvelope, VmAction};
use serde_json::{json, Value};
use uuid::Uuid;

const PLANS: &str = "/api/v1/vaults/v1/replicationRecoveryPlans";

/// Store a cloud pair between two sites (the pairing job itself is tested elsewhere).
async fn pair(tv: &TestVault, vault: Uuid, source: Uuid, target: Uuid) -> Uuid {
    let id = Uuid::new_v4();
    let m = json!({"id": id, "source": {"fabric": source, "id": "gold"}, "target": {"fabric": target, "id": "gold2"},
        "policy": Uuid::new_v4(), "created_at": "2024-01-01T00:00:00Z"});
    tv.store().put_doc(DocKind::ContainerMapping, vault, &id.to_string(), None, None, &m, None).await.expect("pair");
    id
}

/// Store a protected item of a pair in `state`, with one recovery point.
async fn item(tv: &TestVault, vault: Uuid, mapping: Uuid, sites: (Uuid, Uuid), name: &str, state: &str) -> Uuid {
    let id = Uuid::new_v4();
    let it = json!({
        "id": id, "vault_id": vault, "name": name, "vm_id": format!("vm-{name}"), "container_mapping": mapping,
        "policy": Uuid::new_v4(),
        "source": {"fabric": sites.0, "cloud": "gold", "host": "h1", "host_name": "ny1"},
        "target": {"fabric": sites.1, "cloud": "gold2", "host": "h2", "host_name": "chi1"},
        "direction": "Forward", "state": state, "health": "Normal", "created_at": "2024-01-01T00:00:00Z",
        "recovery_points": [{"id": "rp1", "time": "2024-01-01T00:00:00Z", "app_consistent": false, "size_bytes": 1}],
        "definition": {"name": name, "disks": [{"target": "vda", "path": format!("/s/{name}.qcow2"), "format": "qcow2"}]}
    });
    tv.store()
        .put_doc(
            DocKind::ProtectedItem,
            vault,
            &id.to_string(),
            Some(&mapping.to_string()),
            Some(&format!("vm:{}/vm-{name}", sites.0)),
            &it,
            None,
        )
        .await
        .expect("item");
    id
}

async fn edit(c: &Client, plan: &str, changes: Value) -> ferry_client::Result<RecoveryPlan> {
    c.patch(&format!("{PLANS}/{plan}"), &json!({"changes": changes})).await
}

async fn show(c: &Client, plan: &str) -> RecoveryPlan {
    c.get(&format!("{PLANS}/{plan}")).await.expect("plan")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_1_plans_through_the_api_and_bad_input_changes_nothing() {
    let tv = start_vault().await;
    let v = create_vault(&tv.admin, "v1").await;
    let sites = (Uuid::new_v4(), Uuid::new_v4());
    let pa = pair(&tv, v.id, sites.0, sites.1).await;
    let pb = pair(&tv, v.id, Uuid::new_v4(), sites.1).await;
    for i in 0..101 {
        item(&tv, v.id, pa, sites, &format!("vm{i}"), "Protected").await;
    }
    item(&tv, v.id, pb, (Uuid::new_v4(), sites.1), "other", "Protected").await;
    let a = &tv.admin;

    // Create: the VMs go to Group 1; the pair follows from them.
    let p: RecoveryPlan = a.post(PLANS, &json!({"name": "shop", "vms": ["vm0", "vm1"]})).await.expect("create");
    assert_eq!(p.groups.len(), 1);
    assert_eq!(p.groups[0].number, 1);
    assert_eq!(p.container_mapping, pa);
    assert_eq!(p.vm_count(), 2);
    let more: Vec<String> = (2..100).map(|i| format!("vm{i}")).collect();
    let p = edit(a, "shop", json!([{"change": "addVms", "group": 1, "vms": more}])).await.expect("100 VMs");
    assert_eq!(p.vm_count(), 100);
    let v100 = p.version;

    // Refused, each with a stable code, and nothing changes.
    let refusals: Vec<(Value, u16, &str)> = vec![
        (json!([{"change": "addVms", "group": 1, "vms": ["vm100"]}]), 400, "PlanTooManyVms"),
        (
            json!([{"change": "removeVms", "vms": ["vm99"]}, {"change": "addVms", "group": 1, "vms": ["other"]}]),
            400,
            "PlanVmNotInPair",
        ),
        (json!([{"change": "addVms", "group": 1, "vms": ["nosuchvm"]}]), 404, "NotFound"),
        (
            json!([{"change": "removeVms", "vms": ["vm99"]}, {"change": "addVms", "group": 1, "vms": ["vm0"]}]),
            400,
            "PlanVmAlreadyInPlan",
        ),
        (
            json!([{"change": "removeVms", "vms": ["vm98", "vm99"]}, {"change": "addVms", "group": 1, "vms": ["vm100", "vm100"]}]),
            400,
            "PlanVmAlreadyInPlan",
        ),
        (json!([{"change": "deleteGroup", "group": 1}]), 400, "PlanGroupOneCannotBeDeleted"),
        (json!([{"change": "moveVms", "group": 2, "vms": ["vm0"]}]), 400, "PlanGroupNotFound"),
        (json!([{"change": "removeVms", "vms": ["vm100"]}]), 400, "PlanVmNotInPlan"),
        (
            json!([{"change": "addStep", "group": 1, "phase": "Pre", "step": {"kind": "Script", "name": "s", "path": "../etc/x.sh"}}]),
            400,
            "PathTraversal",
        ),
        (
            json!([{"change": "addStep", "group": 1, "phase": "Pre", "step": {"kind": "ManualAction", "name": "m", "instructions": ""}}]),
            400,
            "PlanStepInvalid",
        ),
        (json!([]), 400, "InvalidValue"),
        (json!([{"change": "renameEverything"}]), 400, "InvalidBody"),
    ];
    for (changes, status, code) in refusals {
        assert_eq!(expect_err(edit(a, "shop", changes.clone()).await), (status, code.to_string()), "{changes}");
    }
    assert_eq!(show(a, "shop").await.version, v100, "no refused edit changed the plan");

    // Groups: up to 7; the 8th is refused; deleting renumbers; moving reorders.
    let mut p = show(a, "shop").await;
    for _ in 0..6 {
        p = edit(a, "shop", json!([{"change": "addGroup"}])).await.expect("group");
    }
    assert_eq!(p.groups.iter().map(|g| g.number).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(expect_err(edit(a, "shop", json!([{"change": "addGroup"}])).await), (400, "PlanTooManyGroups".into()));
    let p = edit(
        a,
        "shop",
        json!([{"change": "moveVms", "group": 3, "vms": ["vm0"]}, {"change": "deleteGroup", "group": 2},
               {"change": "deleteGroup", "group": 6}, {"change": "deleteGroup", "group": 5}]),
    )
    .await
    .expect("delete groups");
    assert_eq!(p.groups.len(), 4);
    assert_eq!(
        p.groups[1].items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        vec!["vm0"],
        "group 3 became group 2"
    );
    assert_eq!(
        expect_err(edit(a, "shop", json!([{"change": "deleteGroup", "group": 2}])).await),
        (400, "PlanGroupNotEmpty".into())
    );
    let p = edit(a, "shop", json!([{"change": "moveGroup", "group": 2, "to": 1}])).await.expect("move group");
    assert_eq!(p.groups[0].items.len(), 1);
    assert_eq!(p.groups[1].items.len(), 99);
    // Optimistic concurrency.
    let stale = json!({"expected_version": p.version - 1, "changes": [{"change": "addGroup"}]});
    let r: ferry_client::Result<RecoveryPlan> = a.patch(&format!("{PLANS}/shop"), &stale).await;
    assert_eq!(expect_err(r), (412, "VersionMismatch".into()));

    // Names are unique; a plan needs a pair; a VM may be in several plans.
    let r: ferry_client::Result<RecoveryPlan> = a.post(PLANS, &json!({"name": "shop", "vms": ["vm100"]})).await;
    assert_eq!(expect_err(r), (409, "NameConflict".into()));
    let r: ferry_client::Result<RecoveryPlan> = a.post(PLANS, &json!({"name": "empty"})).await;
    assert_eq!(expect_err(r), (400, "PlanPairRequired".into()));
    let r: ferry_client::Result<RecoveryPlan> = a.post(PLANS, &json!({"name": "bad/name", "vms": ["vm0"]})).await;
    assert_eq!(expect_err(r), (400, "PlanInvalidName".into()));
    let too_many: Vec<String> = (0..101).map(|i| format!("vm{i}")).collect();
    let r: ferry_client::Result<RecoveryPlan> = a.post(PLANS, &json!({"name": "big", "vms": too_many})).await;
    assert_eq!(expect_err(r), (400, "PlanTooManyVms".into()));
    let other: RecoveryPlan = a.post(PLANS, &json!({"name": "db", "vms": ["vm0"]})).await.expect("second plan");
    assert_eq!(other.vm_count(), 1);
    let empty: RecoveryPlan =
        a.post(PLANS, &json!({"name": "later", "container_mapping": pb})).await.expect("empty plan of a pair");
    assert_eq!(empty.vm_count(), 0);
    let all: Vec<RecoveryPlan> = a.get(PLANS).await.expect("list");
    assert_eq!(all.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["db", "later", "shop"]);
    // Roles: a reader sees plans but cannot change them.
    let t: Value = a.post("/api/v1/tokens", &json!({"name": "r", "role": "Reader"})).await.expect("token");
    let reader = tv.client(t["secret"].as_str());
    let _: Vec<RecoveryPlan> = reader.get(PLANS).await.expect("reader lists");
    assert_eq!(expect_err(edit(&reader, "db", json!([{"change": "addGroup"}])).await).0, 403);
    a.delete(&format!("{PLANS}/db")).await.expect("delete");
    let r: ferry_client::Result<RecoveryPlan> = a.get(&format!("{PLANS}/db")).await;
    assert_eq!(expect_err(r), (404, "NotFound".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_4_operations_need_every_vm_to_allow_them() {
    let tv = start_vault().await;
    let v = create_vault(&tv.admin, "v1").await;
    let sites = (Uuid::new_v4(), Uuid::new_v4());
    let pa = pair(&tv, v.id, sites.0, sites.1).await;
    item(&tv, v.id, pa, sites, "web", "Protected").await;
    item(&tv, v.id, pa, sites, "db", "InitialReplicationInProgress").await;
    let a = &tv.admin;
    let _: RecoveryPlan = a.post(PLANS, &json!({"name": "app", "vms": ["web", "db"]})).await.expect("plan");
    assert!(show(a, "app").await.allowed_operations.is_empty());
    let r: ferry_client::Result<Job> = a.post(&format!("{PLANS}/app/plannedFailover"), &json!({})).await;
    match r {
        Err(ferry_client::Error::Api { status, api }) => {
            assert_eq!((status, api.code.as_str()), (409, "PlanOperationNotAllowed"));
            assert!(
                api.message
                    .contains("db: Operation plannedFailover is not allowed in state InitialReplicationInProgress"),
                "{}",
                api.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let web: Value = a.get("/api/v1/vaults/v1/replicationProtectedItems/web").await.expect("item");
    assert_eq!(web["state"], "Protected", "nothing changed");
    let r: ferry_client::Result<Job> = a.post(&format!("{PLANS}/app/disableProtection"), &json!({})).await;
    assert_eq!(expect_err(r), (404, "UnknownOperation".into()));
    let r: ferry_client::Result<Job> = a.post(&format!("{PLANS}/app/failoverCommit"), &json!({})).await;
    assert_eq!(expect_err(r).1, "PlanOperationNotAllowed");
    let p = edit(a, "app", json!([{"change": "removeVms", "vms": ["db"]}])).await.expect("remove");
    assert_eq!(
        p.allowed_operations.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
        vec!["testFailover", "plannedFailover", "unplannedFailover"]
    );
    let jobs = all_jobs(a, "v1", "").await;
    assert!(jobs.is_empty(), "no job was started: {jobs:?}");
}

/// A site manager played by the test: answers every command, fails scripts whose path is in
/// `failing`, and records each command it receives.
fn fake_site(
    site: &FakeSite,
    failing: Arc<Mutex<Vec<String>>>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<SiteCommand>>>) {
    fake_site_with(site, failing, Arc::default())
}

/// [`fake_site`] whose VMs still run for `running_polls` status answers after a shutdown was
/// asked (a guest slow to power off); the shutdown itself is answered as timed out.
fn fake_site_with(
    site: &FakeSite,
    failing: Arc<Mutex<Vec<String>>>,
    running_polls: Arc<std::sync::atomic::AtomicU32>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<SiteCommand>>>) {
    use std::sync::atomic::Ordering;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s2, site) = (seen.clone(), site.clone());
    let h = tokio::spawn(async move {
        let mut answered = std::collections::HashSet::new();
        loop {
            let cmds: Vec<SiteCommandEnvelope> = match site.client.get("/api/v1/agent/commands?wait=1").await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            for c in cmds {
                if !answered.insert(c.id) {
                    continue;
                }
                s2.lock().expect("lock").push(c.command.clone());
                let (ok, output) = match &c.command {
                    SiteCommand::Replication { .. } => {
                        (true, json!({"disks": [{"target": "vda", "path": "/replica/vda.qcow2"}]}))
                    }
                    SiteCommand::Vm { action: VmAction::Start { vm }, .. } => {
                        (true, json!({"name": vm, "power_state": "Running", "pid": 4242}))
                    }
                    SiteCommand::RunScript { script } => {
                        (!failing.lock().expect("lock").contains(&script.path), json!({"exit_code": 0}))
                    }
                    SiteCommand::Vm { action: VmAction::Shutdown { .. }, .. }
                        if running_polls.load(Ordering::SeqCst) > 0 =>
                    {
                        (false, Value::Null)
                    }
                    SiteCommand::Vm { action: VmAction::Status { vm }, .. } => {
                        let still = running_polls
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let power = if still { "Running" } else { "ShutOff" };
                        (true, json!({"name": vm, "power_state": power}))
                    }
                    _ => (true, Value::Null),
                };
                let error = (!ok).then(|| ferry_types::ApiError::new("ScriptFailed", "Script exited with code 1"));
                let res = CommandResult { ok, error, output: if ok { output } else { Value::Null } };
                let _ = site.client.post::<_, Value>(&format!("/api/v1/agent/commands/{}/result", c.id), &res).await;
            }
        }
    });
    (h, seen)
}

/// (command kind, VM or script) in the order the site received them.
fn order(seen: &Arc<Mutex<Vec<SiteCommand>>>) -> Vec<(String, String)> {
    seen.lock()
        .expect("lock")
        .iter()
        .map(|c| match c {
            SiteCommand::Vm { action: VmAction::Shutdown { vm, .. }, .. } => ("shutdown".into(), vm.clone()),
            SiteCommand::Vm { action: VmAction::Start { vm }, .. } => ("start".into(), vm.clone()),
            SiteCommand::Vm { action: VmAction::Create { definition }, .. } => {
                ("create".into(), definition["name"].as_str().unwrap_or("").to_string())
            }
            SiteCommand::RunScript { script } => ("script".into(), script.path.clone()),
            SiteCommand::Replication { action, .. } => ("replication".into(), format!("{action:?}")),
            SiteCommand::StopReplication { .. } => ("stop".into(), String::new()),
            other => ("other".into(), format!("{other:?}")),
        })
        .collect()
}

fn pos(o: &[(String, String)], kind: &str, what: &str) -> usize {
    o.iter().position(|(k, w)| k == kind && w == what).unwrap_or_else(|| panic!("no {kind} {what} in {o:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_2_groups_start_in_order_planned_stops_at_first_error_unplanned_goes_on() {
    let tv = start_vault().await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let failing = Arc::new(Mutex::new(vec!["fail.sh".to_string()]));
    let (h1, seen_ny) = fake_site(&ny, failing.clone());
    let (h2, seen_chi) = fake_site(&chi, failing.clone());
    let sites = (ny.fabric_id, chi.fabric_id);
    let pa = pair(&tv, v.id, sites.0, sites.1).await;
    for n in ["a", "b", "c", "d", "e", "f"] {
        item(&tv, v.id, pa, sites, n, "Protected").await;
    }
    let a = &tv.admin;
    let step = |path: &str| json!({"kind": "Script", "name": path, "path": path});
    for (plan, vms) in [("p1", ["a", "b", "c", "d"]), ("p2", ["e", "f", "", ""])] {
        let _: RecoveryPlan = a.post(PLANS, &json!({"name": plan, "vms": [vms[0]]})).await.expect("plan");
        let mut ch = vec![json!({"change": "addGroup"}), json!({"change": "addGroup"})];
        if plan == "p1" {
            ch.push(json!({"change": "addVms", "group": 2, "vms": ["b", "c"]}));
            ch.push(json!({"change": "addVms", "group": 3, "vms": ["d"]}));
        } else {
            ch.push(json!({"change": "addVms", "group": 3, "vms": ["f"]}));
        }
        ch.push(json!({"change": "addStep", "group": 2, "phase": "Post", "step": step("fail.sh")}));
        ch.push(json!({"change": "addStep", "group": 3, "phase": "Pre", "step": step("ok.sh")}));
        edit(a, plan, json!(ch)).await.expect("edit");
    }

    // Planned: every source shut down before any disk is failed over; group 2 starts after
    // group 1, in parallel; the failing post-step of group 2 stops the plan before group 3.
    let j: Job = a.post(&format!("{PLANS}/p1/plannedFailover"), &json!({})).await.expect("planned");
    let j = wait_job(a, "v1", j.id, 60, |j| j.status.is_terminal()).await;
    assert_eq!(j.status, JobStatus::Failed, "{j:?}");
    assert_eq!(j.errors.last().map(|e| e.code.as_str()), Some("RecoveryPlanStopped"));
    let (src, tgt) = (order(&seen_ny), order(&seen_chi));
    let last_shutdown = ["a", "b", "c", "d"].iter().map(|v| pos(&src, "shutdown", v)).max();
    assert_eq!(last_shutdown, Some(3), "the four shutdowns come first: {src:?}");
    let first_start = ["a", "b", "c"].iter().map(|v| pos(&tgt, "start", v)).min().unwrap_or(0);
    assert!(
        ["a", "b", "c", "d"].iter().all(|v| pos(&tgt, "create", v) < first_start),
        "VMs are created before any starts: {tgt:?}"
    );
    assert!(pos(&tgt, "start", "a") < pos(&tgt, "start", "b") && pos(&tgt, "start", "a") < pos(&tgt, "start", "c"));
    assert!(pos(&tgt, "start", "b").max(pos(&tgt, "start", "c")) < pos(&tgt, "script", "fail.sh"));
    assert!(!tgt.iter().any(|(k, w)| (k == "start" && w == "d") || w == "ok.sh"), "nothing after the error: {tgt:?}");
    let d: Value = a.get("/api/v1/vaults/v1/replicationProtectedItems/d").await.expect("d");
    assert_eq!(d["state"], "FailoverInProgress");
    assert!(j.allowed_actions.contains(&ferry_types::job::JobAction::Resume));

    // Fixed and resumed: the failed step runs again, group 3 starts; no VM starts twice.
    failing.lock().expect("lock").clear();
    let r: Job =
        a.post(&format!("/api/v1/vaults/v1/replicationJobs/{}/resume", j.id), &json!(null)).await.expect("resume");
    assert_eq!(r.id, j.id, "the same job goes on");
    let j = wait_job(a, "v1", j.id, 60, |j| j.status.is_terminal()).await;
    assert_eq!(j.status, JobStatus::Succeeded, "{j:?}");
    let tgt = order(&seen_chi);
    for v in ["a", "b", "c", "d"] {
        assert_eq!(tgt.iter().filter(|(k, w)| k == "start" && w == v).count(), 1, "{v} started once: {tgt:?}");
        let it: Value = a.get(&format!("/api/v1/vaults/v1/replicationProtectedItems/{v}")).await.expect("item");
        assert_eq!(it["state"], "FailedOverCommitPending");
    }
    assert_eq!(tgt.iter().filter(|(k, w)| k == "script" && w == "fail.sh").count(), 2, "the failed step ran again");
    assert!(pos(&tgt, "script", "ok.sh") < pos(&tgt, "start", "d"));
    let started = |v: &str, what: &str| {
        let o = &j.params["outputs"][format!(
            "Group {}: Start {v}",
            if v == "a" {
                1
            } else if v == "d" {
                3
            } else {
                2
            }
        )];
        chrono::DateTime::parse_from_rfc3339(o[what].as_str().expect("time")).expect("rfc3339")
    };
    assert!(started("a", "started_at") <= started("b", "requested_at"));
    assert!(started("c", "started_at") <= started("d", "requested_at"));
    let r: ferry_client::Result<Job> =
        a.post(&format!("/api/v1/vaults/v1/replicationJobs/{}/resume", j.id), &json!(null)).await;
    assert_eq!(expect_err(r), (409, "JobActionNotAllowed".into()));

    // Unplanned (sources fenced): the failing script is reported, group 3 still starts.
    failing.lock().expect("lock").push("fail.sh".into());
    let j: Job =
        a.post(&format!("{PLANS}/p2/unplannedFailover"), &json!({"source_fenced": true})).await.expect("unplanned");
    let j = wait_job(a, "v1", j.id, 60, |j| j.status.is_terminal()).await;
    assert_eq!(j.status, JobStatus::Failed);
    let codes: Vec<&str> = j.errors.iter().map(|e| e.code.as_str()).collect();
    assert_eq!(codes, vec!["ScriptFailed", "RecoveryPlanCompletedWithErrors"]);
    assert!(j.errors[0].message.starts_with("Group 2: Post-step 1: script 'fail.sh'"), "{:?}", j.errors);
    let tgt = order(&seen_chi);
    assert!(pos(&tgt, "start", "e") < pos(&tgt, "start", "f"));
    let f = j.tasks.iter().find(|t| t.name == "Group 3: Start f").expect("task");
    assert_eq!(f.status, JobStatus::Succeeded, "an unplanned failover goes on after an error");
    h1.abort();
    h2.abort();
}

/// FO-3: an unplanned failover that shuts the source down waits for a guest slow to power off
/// (the shutdown goes on at the source host after the job stopped waiting for its answer)
/// instead of failing with SourceStillRunning and leaving the source off and the item stuck;
/// without the shutdown, a running source still blocks it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo_3_unplanned_failover_waits_for_the_source_shutdown_it_asked_for() {
    let tv = start_vault().await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let running = Arc::new(std::sync::atomic::AtomicU32::new(3));
    let (h1, seen_ny) = fake_site_with(&ny, Arc::default(), running.clone());
    let (h2, _) = fake_site(&chi, Arc::default());
    let sites = (ny.fabric_id, chi.fabric_id);
    let pa = pair(&tv, v.id, sites.0, sites.1).await;
    let slow = item(&tv, v.id, pa, sites, "slow", "Protected").await;
    let a = &tv.admin;
    let items = "/api/v1/vaults/v1/replicationProtectedItems";

    let j: Job = a
        .post(
            &format!("{items}/{slow}/unplannedFailover"),
            &json!({"recovery_point": "latest", "shutdown_source": true}),
        )
        .await
        .expect("unplanned");
    let j = wait_job(a, "v1", j.id, 90, |j| j.status.is_terminal()).await;
    assert_eq!(j.status, JobStatus::Succeeded, "{j:?}");
    let polls = seen_ny
        .lock()
        .expect("lock")
        .iter()
        .filter(|c| matches!(c, SiteCommand::Vm { action: VmAction::Status { .. }, .. }))
        .count();
    assert_eq!(polls, 4, "asked until the source was off");

    // No shutdown asked: a source that runs blocks the failover at the first answer.
    running.store(5, std::sync::atomic::Ordering::SeqCst);
    let other = item(&tv, v.id, pa, sites, "other", "Protected").await;
    let j: Job = a
        .post(&format!("{items}/{other}/unplannedFailover"), &json!({"recovery_point": "latest"}))
        .await
        .expect("unplanned");
    let j = wait_job(a, "v1", j.id, 60, |j| j.status.is_terminal()).await;
    assert_eq!(j.status, JobStatus::Failed, "{j:?}");
    assert_eq!(j.errors.last().map(|e| e.code.as_str()), Some("SourceStillRunning"));
    let it: Value = a.get(&format!("{items}/{other}")).await.expect("item");
    assert_eq!(it["state"], "Protected", "a refused failover changes nothing");
    h1.abort();
    h2.abort();
}
