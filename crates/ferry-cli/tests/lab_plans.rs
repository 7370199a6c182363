//! Recovery plans (PLAN-1..PLAN-4) through the whole lab, on test-guest VMs: a three-group plan
//! of five VMs through test failover (with a manual action), cleanup, planned failover (a
//! failing script stops it; resumed after the fix; the vault is killed in the middle and the
//! plan goes on without starting a VM twice), commit, reverse replication, failback and
//! reverse replication again; a second plan whose failing script does not stop an unplanned
//! failover. Group order is proven from the start times the jobs record.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{kill9, Lab, LabOptions};
use serde_json::Value;

const SHOP: [(&str, u8); 5] = [("db1", 1), ("db2", 1), ("app1", 2), ("web1", 3), ("web2", 3)];
const EDGE: [(&str, u8); 2] = [("u1", 1), ("u2", 2)];

fn job(lab: &Lab, id: &str) -> Value {
    lab.json(&["job-show", id])
}

fn task<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no task {name} in {j}"))
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc)).expect("a time")
}

/// PLAN-2 from the recorded start times: every VM of group N was up before any VM of group N+1
/// was asked to start. Returns the start outputs by VM.
fn assert_group_order(j: &Value, vms: &[(&str, u8)], test: bool) -> HashMap<String, Value> {
    let mut outs = HashMap::new();
    for (vm, g) in vms {
        let name = if test { format!("Group {g}: Start {vm}-test") } else { format!("Group {g}: Start {vm}") };
        let o = j["params"]["outputs"][&name].clone();
        assert!(o["started_at"].is_string(), "{name} recorded its start: {o}");
        outs.insert(vm.to_string(), o);
    }
    let groups: Vec<u8> = {
        let mut g: Vec<u8> = vms.iter().map(|(_, g)| *g).collect();
        g.dedup();
        g
    };
    for w in groups.windows(2) {
        let last_up = vms.iter().filter(|(_, g)| *g == w[0]).map(|(v, _)| time(&outs[*v]["started_at"])).max();
        let first_asked = vms.iter().filter(|(_, g)| *g == w[1]).map(|(v, _)| time(&outs[*v]["requested_at"])).min();
        assert!(
            last_up <= first_asked,
            "group {} was up ({last_up:?}) before group {} started ({first_asked:?})",
            w[0],
            w[1]
        );
    }
    outs
}

fn write_script(lib: &Path, name: &str, body: &str) {
    let p = lib.join(name);
    std::fs::write(&p, body).expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn running_on(lab: &Lab, site: &str, host: &str) -> HashMap<String, u64> {
    let vms = lab.json(&["vm-list", "--site", site, "--host", host]);
    vms.as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["power_state"] == "Running")
        .map(|v| (v["name"].as_str().unwrap_or("").to_string(), v["pid"].as_u64().unwrap_or(0)))
        .collect()
}

/// Start answers (power state Running) the Chicago site gave per VM name.
fn start_answers(lab: &Lab) -> HashMap<String, usize> {
    let p = lab.dir.join("sites/chicago/data/state.json");
    let state: Value = serde_json::from_slice(&std::fs::read(p).unwrap_or_default()).unwrap_or(Value::Null);
    let mut n = HashMap::new();
    for a in state["answered"].as_array().into_iter().flatten() {
        let out = &a[1]["output"];
        if out["power_state"] == "Running" && out["pid"].is_number() {
            *n.entry(out["name"].as_str().unwrap_or("").to_string()).or_insert(0) += 1;
        }
    }
    n
}

#[test]
fn plan_2_plan_3_plan_4_three_group_plan_test_planned_commit_reprotect_failback_scripts_manual_action_vault_kill() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let mut serials = HashMap::new();
    for (vm, _) in SHOP.iter().chain(EDGE.iter()) {
        serials.insert(*vm, common::guest_vm(&lab, vm, 8, None));
    }
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let mut protect = vec!["protect", "--site", "VMM-NewYork"];
    protect.extend(SHOP.iter().chain(EDGE.iter()).map(|(v, _)| *v));
    protect.push("--wait");
    lab.json(&protect);
    for (vm, _) in SHOP.iter().chain(EDGE.iter()) {
        common::wait_records_and_points(&lab, vm, &serials[vm], 3, 1);
    }

    // The script library of both site managers (the lab gives them the same directory).
    let lib = lab.dir.join("scripts");
    std::fs::create_dir_all(&lib).expect("library");
    let marks = lab.tmp.path().join("marks.log");
    let mark = format!(
        "#!/bin/sh\necho \"$1 $FERRY_PLAN_NAME $FERRY_PLAN_GROUP $FERRY_PLAN_STEP $FERRY_FAILOVER_TYPE $FERRY_FAILOVER_DIRECTION $FERRY_SITE_NAME\" >> {}\n",
        marks.display()
    );
    write_script(&lib, "mark.sh", &mark.replace("$1", "mark"));
    let gate = lab.tmp.path().join("gate.open");
    write_script(
        &lib,
        "gate.sh",
        &format!(
            "#!/bin/sh\n[ -e {} ] && exit 0\necho 'the database replica is not verified' >&2\nexit 2\n",
            gate.display()
        ),
    );
    write_script(
        &lib,
        "slow.sh",
        &format!("#!/bin/sh\nsleep 12\n{}", mark.replace("#!/bin/sh\n", "").replace("$1", "slow")),
    );
    write_script(&lib, "fail.sh", "#!/bin/sh\necho 'cannot reach the load balancer' >&2\nexit 1\n");

    // PLAN-1: a three-group plan through the CLI.
    lab.json(&["plan-create", "shop", "--vm", "db1", "--vm", "db2", "--description", "web shop"]);
    lab.json(&["plan-group-add", "shop"]);
    lab.json(&["plan-group-add", "shop"]);
    lab.json(&["plan-add-vm", "shop", "--group", "2", "app1"]);
    lab.json(&["plan-add-vm", "shop", "--group", "3", "web1", "web2"]);
    let steps: [&[&str]; 5] = [
        &["--group", "1", "--post", "--name", "mark", "--script", "mark.sh"],
        &["--group", "2", "--name", "Check DB", "--manual", "Query the orders table on db1", "--failover-type", "test"],
        &["--group", "2", "--name", "gate", "--script", "gate.sh", "--failover-type", "planned"],
        &["--group", "3", "--name", "slow", "--script", "slow.sh", "--failover-type", "planned"],
        &["--group", "3", "--post", "--name", "mark", "--script", "mark.sh"],
    ];
    for s in steps {
        let mut a = vec!["plan-step-add", "shop"];
        a.extend_from_slice(s);
        lab.json(&a);
    }
    // PLAN-1 / SEC-3: bad input is refused and changes nothing.
    let before = lab.json(&["plan-show", "shop"]);
    for _ in 0..4 {
        lab.json(&["plan-group-add", "shop"]);
    }
    let (code, _, err) = lab.cli(&["plan-group-add", "shop"]);
    assert_ne!(code, 0);
    assert!(err.contains("PlanTooManyGroups"), "the 8th group is refused: {err}");
    for _ in 0..4 {
        lab.json(&["plan-group-delete", "shop", "4"]);
    }
    let (code, _, err) = lab.cli(&["plan-group-delete", "shop", "1"]);
    assert!(code != 0 && err.contains("PlanGroupOneCannotBeDeleted"), "{err}");
    let (code, _, err) = lab.cli(&["plan-add-vm", "shop", "--group", "1", "web1"]);
    assert!(code != 0 && err.contains("PlanVmAlreadyInPlan"), "{err}");
    let (code, _, err) = lab.cli(&["plan-step-add", "shop", "--group", "1", "--name", "x", "--script", "../x.sh"]);
    assert!(code != 0 && err.contains("PathTraversal"), "{err}");
    let (code, _, _) = lab.cli(&["plan-add-vm", "shop", "--group", "1", "nosuchvm"]);
    assert_eq!(code, 3, "an unknown VM is not found");
    let after = lab.json(&["plan-show", "shop"]);
    assert_eq!(after["groups"], before["groups"], "the refused edits and the add/delete round trip changed nothing");
    let groups: Vec<Vec<String>> = after["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            g["items"].as_array().expect("items").iter().map(|i| i["name"].as_str().unwrap_or("").to_string()).collect()
        })
        .collect();
    assert_eq!(groups, vec![vec!["db1", "db2"], vec!["app1"], vec!["web1", "web2"]]);
    assert!(
        after["allowed_operations"].as_array().is_some_and(|a| a.iter().any(|o| o == "plannedFailover")),
        "{after}"
    );

    // PLAN-4 test failover; PLAN-3 manual action for test failovers only.
    let tf = lab.json(&["plan-test-failover", "shop", "--wait"]);
    let tf_id = tf["id"].as_str().expect("job id").to_string();
    assert_eq!(tf["status"], "WaitingForInput", "{tf}");
    assert_eq!(task(&tf, "Group 2: Pre-step 1: manual action 'Check DB'")["status"], "WaitingForInput");
    assert_eq!(task(&tf, "Group 1: Start db1-test")["status"], "Succeeded");
    assert_eq!(task(&tf, "Group 2: Start app1-test")["status"], "NotStarted", "group 2 waits for the operator");
    assert!(tf["tasks"].as_array().expect("tasks").iter().all(|t| !t["name"].as_str().unwrap_or("").contains("gate")));
    assert_eq!(running_on(&lab, "VMM-Chicago", "chi1").len(), 2, "only group 1 runs while the plan waits");
    let tf = lab.json(&["job-resume", &tf_id, "--wait"]);
    assert_eq!(tf["status"], "WaitingForInput");
    assert_eq!(task(&tf, "Complete testing")["status"], "WaitingForInput", "{tf}");
    assert_group_order(&tf, &SHOP, true);
    let up = running_on(&lab, "VMM-Chicago", "chi1");
    for (vm, _) in SHOP {
        assert!(up.contains_key(&format!("{vm}-test")), "{vm}-test runs: {up:?}");
    }
    let cleanup = lab.json(&["plan-test-failover-cleanup", "shop", "--notes", "plan drill ok", "--wait"]);
    assert_eq!(cleanup["status"], "Succeeded", "{cleanup}");
    assert_eq!(job(&lab, &tf_id)["status"], "Succeeded", "the test failover job ends with its cleanup");
    assert!(running_on(&lab, "VMM-Chicago", "chi1").is_empty(), "no test VM left");
    assert_eq!(lab.json(&["item-show", "web2"])["last_test_failover"]["notes"], "plan drill ok");

    // Planned failover: the gate script fails, so the plan stops after group 1 (PLAN-2, PLAN-3).
    let (code, out, err) = lab.cli(&["plan-planned-failover", "shop", "--wait", "-o", "json"]);
    assert_eq!(code, 6, "the plan job failed: {out}{err}");
    let jobs = lab.json(&["job-list", "--operation", "RecoveryPlanPlannedFailover"]);
    let pf_id = jobs["items"][0]["id"].as_str().expect("job").to_string();
    let pf = job(&lab, &pf_id);
    assert_eq!(pf["status"], "Failed");
    let gate_task = task(&pf, "Group 2: Pre-step 2: script 'gate'");
    assert_eq!(gate_task["status"], "Failed");
    assert_eq!(gate_task["error"]["code"], "ScriptFailed");
    assert!(gate_task["error"]["message"].as_str().is_some_and(|m| m.contains("the database replica is not verified")));
    assert_eq!(
        pf["errors"].as_array().and_then(|e| e.last()).map(|e| e["code"].clone()),
        Some("RecoveryPlanStopped".into())
    );
    assert_eq!(task(&pf, "Group 2: Start app1")["status"], "NotStarted", "planned failover stops at the first error");
    assert_eq!(task(&pf, "Group 3: Start web1")["status"], "NotStarted");
    let up = running_on(&lab, "VMM-Chicago", "chi1");
    let mut names: Vec<&String> = up.keys().collect();
    names.sort();
    assert_eq!(names, vec!["db1", "db2"], "only group 1 runs at the recovery site");
    let group1_pids: HashMap<String, u64> = up.clone();
    assert!(pf["allowed_actions"].as_array().is_some_and(|a| a.iter().any(|x| x == "Resume")), "{pf}");

    // The operator fixes the cause and resumes; the vault is killed during group 3's pre-step.
    std::fs::write(&gate, b"ok").expect("open the gate");
    lab.json(&["job-resume", &pf_id]);
    lab.wait_for("group 3's slow pre-step to run", Duration::from_secs(120), || {
        (task(&job(&lab, &pf_id), "Group 3: Pre-step 1: script 'slow'")["status"] == "InProgress").then_some(())
    });
    kill9(lab.pid("vault"));
    std::thread::sleep(Duration::from_secs(2));
    let _vault = lab.restart_vault();
    let pf = lab.wait_for("the resumed plan to end", Duration::from_secs(240), || {
        lab.cli(&["job-show", &pf_id, "-o", "json"])
            .0
            .eq(&0)
            .then(|| job(&lab, &pf_id))
            .filter(|j| matches!(j["status"].as_str(), Some("Succeeded") | Some("Failed")))
    });
    assert_eq!(pf["status"], "Succeeded", "{pf}");
    let starts = start_answers(&lab);
    for (vm, _) in SHOP {
        assert_eq!(starts.get(vm), Some(&1), "{vm} was started exactly once: {starts:?}");
    }
    let outs = assert_group_order(&pf, &SHOP, false);
    let up = running_on(&lab, "VMM-Chicago", "chi1");
    for (vm, _) in SHOP {
        assert!(up.contains_key(vm), "{vm} runs at the recovery site: {up:?}");
    }
    for (vm, pid) in &group1_pids {
        assert_eq!(up.get(vm), Some(pid), "{vm} of group 1 kept running through the resume and the vault restart");
        assert_eq!(outs[vm.as_str()]["pid"].as_u64(), Some(*pid));
    }
    let ny = running_on(&lab, "VMM-NewYork", "ny1");
    for (vm, _) in SHOP {
        assert!(!ny.contains_key(vm), "the source of {vm} is shut down");
        assert_eq!(lab.json(&["item-show", vm])["state"], "FailedOverCommitPending");
    }
    let text = std::fs::read_to_string(&marks).expect("marks");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"mark shop 1 Post TestFailover PrimaryToRecovery VMM-Chicago"), "{text}");
    assert!(lines.contains(&"mark shop 3 Post PlannedFailover PrimaryToRecovery VMM-Chicago"), "{text}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("slow ")).count(), 1, "the slow script ran once: {text}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("mark shop 1 Post PlannedFailover")).count(), 1, "{text}");

    // PLAN-4 commit: one job for the plan, the per-VM commits as its children.
    let c = lab.json(&["plan-commit", "shop", "--wait"]);
    assert_eq!(c["status"], "Succeeded", "{c}");
    for (vm, _) in SHOP {
        assert_eq!(lab.json(&["item-show", vm])["state"], "Committed");
    }

    // PLAN-4 reverse replication: every VM replicates from Chicago back to New York.
    let r = lab.json(&["plan-reprotect", "shop", "--wait"]);
    assert_eq!(r["status"], "Succeeded", "{r}");
    assert_eq!(lab.json(&["job-list", "--operation", "ReProtect"])["items"].as_array().map(Vec::len), Some(5));
    for (vm, _) in SHOP {
        lab.wait_for("reverse replication with a point", Duration::from_secs(240), || {
            let it = lab.json(&["item-show", vm]);
            let n = it["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
            (it["state"] == "Protected" && it["direction"] == "Reverse" && n >= 1).then_some(())
        });
    }
    // Failback (FO-6) as a plan: a planned failover in the reverse direction, in group order,
    // with the scripts now run by New York's site manager; then commit.
    let fb = lab.json(&["plan-planned-failover", "shop", "--wait"]);
    assert_eq!(fb["status"], "Succeeded", "{fb}");
    assert_group_order(&fb, &SHOP, false);
    let ny = running_on(&lab, "VMM-NewYork", "ny1");
    for (vm, _) in SHOP {
        assert!(ny.contains_key(vm), "{vm} is back in New York: {ny:?}");
    }
    let text = std::fs::read_to_string(&marks).expect("marks");
    assert!(text.lines().any(|l| l == "mark shop 3 Post PlannedFailover RecoveryToPrimary VMM-NewYork"), "{text}");
    assert_eq!(lab.json(&["plan-commit", "shop", "--wait"])["status"], "Succeeded");
    assert_eq!(lab.json(&["plan-reprotect", "shop", "--wait"])["status"], "Succeeded", "protected again, as paired");
    for (vm, _) in SHOP {
        assert_eq!(lab.json(&["item-show", vm])["direction"], "Forward");
    }

    // An unplanned failover goes on after a failing script and reports it (PLAN-2, PLAN-3).
    lab.json(&["plan-create", "edge", "--vm", "u1"]);
    lab.json(&["plan-group-add", "edge"]);
    lab.json(&["plan-add-vm", "edge", "--group", "2", "u2"]);
    lab.json(&["plan-step-add", "edge", "--group", "1", "--post", "--name", "lb", "--script", "fail.sh"]);
    let (code, _, err) = lab.cli(&["plan-unplanned-failover", "edge"]);
    assert!(code == 4 && err.contains("SourceStillRunning"), "fencing: {err}");
    let (code, _, _) = lab.cli(&["plan-unplanned-failover", "edge", "--shutdown-source", "--wait"]);
    assert_eq!(code, 6, "the job reports its errors");
    let jobs = lab.json(&["job-list", "--operation", "RecoveryPlanUnplannedFailover"]);
    let uf = job(&lab, jobs["items"][0]["id"].as_str().expect("job"));
    assert_eq!(uf["status"], "Failed");
    assert_eq!(task(&uf, "Group 1: Post-step 1: script 'lb'")["error"]["code"], "ScriptFailed");
    assert_eq!(task(&uf, "Group 2: Start u2")["status"], "Succeeded", "the plan went on after the error: {uf}");
    let codes: Vec<&str> = uf["errors"].as_array().expect("errors").iter().filter_map(|e| e["code"].as_str()).collect();
    assert_eq!(codes, vec!["ScriptFailed", "RecoveryPlanCompletedWithErrors"]);
    assert_group_order(&uf, &EDGE, false);
    for (vm, _) in EDGE {
        assert_eq!(lab.json(&["item-show", vm])["state"], "FailedOverCommitPending");
    }
    let up = running_on(&lab, "VMM-Chicago", "chi1");
    assert!(up.contains_key("u1") && up.contains_key("u2"), "{up:?}");
    assert_eq!(lab.json(&["plan-commit", "edge", "--wait"])["status"], "Succeeded");
}
