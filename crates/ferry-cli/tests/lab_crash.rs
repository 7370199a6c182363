//! Crash tests at Ferry's durable boundaries (failpoints, `ferry_core::failpoint`): a process is
//! made to die at the exact place (abort, as at a power cut) and is started again; nothing it
//! acknowledged is lost and the system resumes by itself.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{kill9, Lab, LabOptions};
use ferry_core::failpoint;

/// Wait until the process behind `armed` dies at its armed failpoint (abort: SIGABRT).
fn died_at_failpoint(armed: &mut common::ChildGuard, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = armed.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "{who} never reached the failpoint");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.signal(), Some(6), "{who} died by abort at the failpoint: {status:?}");
}

/// REP-3: the replica host dies right after its catalogue recorded a cycle's point and before the
/// source heard of it. Started again it keeps that point; the source sends the cycle again and
/// the replica acknowledges it without applying it twice; replication goes on with no resync,
/// and every point holds a clean prefix of the guest's records.
#[test]
fn rep_3_a_replica_host_dying_between_its_catalogue_and_its_ack_loses_nothing() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "cr1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "cr1");
    common::wait_records_and_points(&lab, &id, &serial, 4, 2);

    lab.pin_replication_address("chi1");
    kill9(lab.pid("host-chi1"));
    let mut armed = lab.restart_host_with("chi1", &[(failpoint::ENV, failpoint::REPLICA_AFTER_CATALOG_WRITE)]);
    died_at_failpoint(&mut armed, "chi1");
    let log = std::fs::read_to_string(lab.dir.join("logs/host-chi1-restarted.log")).expect("log");
    assert!(log.contains("failpoint replica.after_catalog_write"), "{log}");
    drop(armed);

    // What the catalogue recorded before the crash is there, durable.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let recorded = {
        let vm = rt.block_on(store.vm(&id)).expect("replica");
        vm.recovery_points().expect("points").last().expect("a point").clone()
    };

    let _chi1 = lab.restart_host("chi1");
    lab.wait_for("the point recorded before the crash, and newer ones", Duration::from_secs(120), || {
        let it = lab.json(&["item-show", &id]);
        let ids: Vec<String> =
            it["recovery_points"].as_array()?.iter().filter_map(|p| p["id"].as_str().map(str::to_string)).collect();
        let at = ids.iter().position(|p| *p == recorded.id)?;
        (at + 2 < ids.len()).then_some(())
    });
    let log = common::strip_ansi(&std::fs::read_to_string(lab.dir.join("logs/host-chi1-restarted.log")).expect("log"));
    assert!(
        log.contains("Cycle already durable; acknowledged again") && log.contains(&format!("cycle={}", recorded.cycle)),
        "the source sent the cycle again and the replica acknowledged it without applying it twice: {log}"
    );
    assert_eq!(log.matches(&format!("point={} ", recorded.id)).count(), 0, "not recorded a second time");
    let it = lab.json(&["item-show", &id]);
    assert_eq!(it["state"], "Protected", "{it}");
    assert_ne!(it["health"], "Critical", "{it}");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let prefixes = common::clean_prefixes(&rt, &vm);
    assert!(prefixes.iter().any(|p| p.0 == recorded.id), "{prefixes:?}");
    let source = std::fs::read_to_string(lab.dir.join("logs/host-ny1.log")).expect("source log");
    assert!(!source.contains("resync complete"), "no resynchronization was needed");
}

/// JOB-1: the vault dies right after it recorded a job's first task as done (a test failover's
/// test disks prepared on the replica host). Started again it resumes the job after that task —
/// the task is not run a second time — and the test VM comes up.
#[test]
fn job_1_the_vault_dying_after_a_task_checkpoint_resumes_the_job_after_that_task() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "cj1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "cj1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);

    kill9(lab.pid("vault"));
    let mut armed = lab.restart_vault_with(&[(failpoint::ENV, failpoint::JOB_AFTER_TASK_CHECKPOINT)]);
    lab.wait_for("the armed vault to answer", Duration::from_secs(20), || {
        (lab.cli(&["vault-show"]).0 == 0).then_some(())
    });
    let job = lab.json(&["test-failover", &id, "--network", "none"]);
    let job_id = job["id"].as_str().expect("job id").to_string();
    died_at_failpoint(&mut armed, "the vault");
    drop(armed);

    let restarted = chrono::Utc::now();
    let _vault = lab.restart_vault();
    let done = lab.wait_for("the resumed test failover to run its test VM", Duration::from_secs(120), || {
        let (code, out, _) = lab.cli(&["job-show", &job_id, "-o", "json"]);
        let j: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
        matches!(j["status"].as_str(), Some("WaitingForInput") | Some("Failed")).then_some(j)
    });
    assert_eq!(done["status"], "WaitingForInput", "{done}");
    let at = |k: &str, i: usize| {
        done["tasks"][i][k].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.to_utc())
    };
    let first = at("started_at", 0).expect("the first task ran");
    assert!(first < restarted, "the first task ran once, before the crash: {done}");
    assert!(at("started_at", 1).is_some_and(|t| t > restarted), "the job went on after it: {done}");
    let job = lab.json(&["test-failover-cleanup", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
}

/// RP-2: the replica host dies in the middle of a retention merge (one disk's next layer
/// committed into the point's file, the catalogue not yet changed). Started again it finishes the
/// merge from the intent its catalogue recorded: every remaining point's chain is intact and holds
/// a clean prefix of the guest's records, and replication goes on.
#[test]
fn rp_2_a_replica_host_dying_in_the_middle_of_a_merge_finishes_it_on_start() {
    let lab = Lab::start(LabOptions {
        test_copy_interval_ms: Some(1500),
        retention_interval_secs: Some(2),
        ..Default::default()
    });
    let serial = common::guest_vm(&lab, "cm1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30", "--retention-hours", "0"]);
    let id = common::protect(&lab, "cm1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 1);
    let merged = |log: &str| {
        std::fs::read_to_string(lab.dir.join("logs").join(log))
            .unwrap_or_default()
            .matches("merged by retention")
            .count()
    };
    lab.wait_for("retention merging points on chi1", Duration::from_secs(90), || {
        (merged("host-chi1.log") >= 2).then_some(())
    });

    lab.pin_replication_address("chi1");
    kill9(lab.pid("host-chi1"));
    let mut armed = lab.restart_host_with("chi1", &[(failpoint::ENV, failpoint::REPLICA_MID_MERGE)]);
    died_at_failpoint(&mut armed, "chi1");
    drop(armed);

    let _chi1 = lab.restart_host("chi1");
    lab.wait_for("the interrupted merge finished and merges going on", Duration::from_secs(90), || {
        let log = std::fs::read_to_string(lab.dir.join("logs/host-chi1-restarted.log")).unwrap_or_default();
        (log.contains("Finishing an interrupted retention merge") && merged("host-chi1-restarted.log") >= 2)
            .then_some(())
    });
    let before = common::last_record(&serial);
    common::wait_records_and_points(&lab, &id, &serial, before + 2, 1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    assert!(vm.chain_faults().expect("check").is_empty(), "every chain is intact");
    let prefixes = common::clean_prefixes(&rt, &vm);
    assert!(!prefixes.is_empty());
    let it = lab.json(&["item-show", &id]);
    assert_eq!(it["state"], "Protected", "{it}");
}

/// REP-3: the source host dies right after the replica acknowledged a cycle, before it released
/// the cycle's capture. Its VM keeps running; started again, the agent picks the VM up and goes
/// on: what it cannot prove sent travels again, nothing is lost, no resynchronization, and every
/// point holds a clean prefix of the guest's records.
#[test]
fn rep_3_a_source_host_dying_after_the_replicas_ack_loses_nothing() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "cs1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "cs1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);

    kill9(lab.pid("host-ny1"));
    let mut armed = lab.restart_host_with("ny1", &[(failpoint::ENV, failpoint::SOURCE_AFTER_ACK)]);
    died_at_failpoint(&mut armed, "ny1");
    let armed_log = std::fs::read_to_string(lab.dir.join("logs/host-ny1-restarted.log")).expect("log");
    assert!(armed_log.contains("failpoint source.after_ack"), "{armed_log}");
    drop(armed);
    let points = |lab: &Lab| lab.json(&["item-show", &id])["recovery_points"].as_array().map_or(0, Vec::len);
    let before = points(&lab);

    let _ny1 = lab.restart_host("ny1");
    let records = common::last_record(&serial);
    common::wait_records_and_points(&lab, &id, &serial, records + 3, before + 2);
    let restarted_log = std::fs::read_to_string(lab.dir.join("logs/host-ny1-restarted.log")).expect("log");
    assert!(!restarted_log.contains("resync complete") && !armed_log.contains("resync complete"), "no resync");
    let it = lab.json(&["item-show", &id]);
    assert_eq!(it["state"], "Protected", "{it}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let prefixes = common::clean_prefixes(&rt, &vm);
    assert!(
        prefixes.last().is_some_and(|p| p.2 >= records),
        "the newest point holds the records written: {prefixes:?}"
    );
}
