//! REP-6 end to end: a QEMU crash loses change tracking; replication resynchronizes by comparing
//! block hashes, sends less than the disk, keeps the earlier recovery points, and the replica
//! ends with every record the guest wrote.

mod common;

use std::time::Duration;

use common::{kill9, Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn rep_6_qemu_crash_resyncs_sending_only_differences_and_keeps_points() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "rs1", 64, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "rs1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 3);
    let before: Vec<String> = item(&lab, &id)["recovery_points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect();

    // QEMU crashes; the VM is started again and its guest continues after its last record.
    let pid =
        lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "rs1"])["pid"].as_u64().expect("pid") as u32;
    kill9(pid);
    lab.wait_for("the crash to be seen", Duration::from_secs(20), || {
        (lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "rs1"])["power_state"] == "Crashed")
            .then_some(())
    });
    lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "rs1"]);
    let host_log = lab.dir.join("logs/host-ny1.log");
    let line = lab.wait_for("the resync to complete", Duration::from_secs(120), || {
        let text = std::fs::read_to_string(&host_log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("resync complete"))
            .map(|l| l.replace("\u{1b}[3m", "").replace("\u{1b}[0m", "").replace("\u{1b}[2m", ""))
    });
    let num = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    let (compared, differing) = (num("compared_blocks"), num("differing_blocks"));
    assert!(differing < compared, "only differing blocks are sent: {differing} of {compared}");
    lab.wait_for("Protected again with new points", Duration::from_secs(60), || {
        let it = item(&lab, &id);
        (it["state"] == "Protected" && it["recovery_points"].as_array().map(Vec::len).unwrap_or(0) > before.len())
            .then_some(())
    });
    let after: Vec<String> = item(&lab, &id)["recovery_points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect();
    assert!(before.iter().all(|p| after.contains(p)), "earlier points are kept: {before:?} ⊆ {after:?}");

    // The replica catches up completely: after a graceful shutdown every record is there.
    lab.wait_for("new records after the restart", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        text.contains("FERRY FOUND").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    lab.json(&["vm-shutdown", "--site", "VMM-NewYork", "--host", "ny1", "rs1", "--timeout", "60"]);
    std::thread::sleep(Duration::from_secs(3));
    let last = ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(&serial).expect("serial"))
        .expect("records");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let newest = vm.recovery_points().expect("points").last().expect("a point").id.clone();
    let report = rt
        .block_on(ferry_qemu::guest_records::verify_image(&vm.chain(&newest, "vdb").expect("chain")[0]))
        .expect("verify");
    assert_eq!(report.clean_prefix_len, last, "{report:?}");
}

/// REP-6 repair: an operator asks for a resynchronization of a healthy protected VM (e.g. after
/// its replica was restored from a backup): the host compares block hashes although its tracking
/// is intact, sends only differing blocks as a new point, keeps the earlier points, and the item
/// is Protected again.
#[test]
fn rep_6_repair_resyncs_on_request_and_keeps_points() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "rp1", 32, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "rp1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);
    let it = item(&lab, &id);
    assert!(it["allowed_operations"].as_array().expect("ops").iter().any(|o| o == "repairReplication"), "{it}");
    let before: Vec<Value> = it["recovery_points"].as_array().cloned().unwrap_or_default();
    let host_log = lab.dir.join("logs/host-ny1.log");
    let resyncs = || std::fs::read_to_string(&host_log).unwrap_or_default().matches("resync complete").count();
    assert_eq!(resyncs(), 0, "tracking is intact: no resync so far");

    let job = lab.json(&["repair-replication", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    lab.wait_for("the repair's resync", Duration::from_secs(120), || (resyncs() == 1).then_some(()));
    let after = lab.wait_for("Protected again with a new point", Duration::from_secs(60), || {
        let it = item(&lab, &id);
        let points = it["recovery_points"].as_array().cloned().unwrap_or_default();
        (it["state"] == "Protected" && points.len() > before.len()).then_some(points)
    });
    for p in &before {
        assert!(after.iter().any(|a| a["id"] == p["id"]), "earlier point {} kept", p["id"]);
    }
    // Only once: the request is cleared when the resync completed.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(resyncs(), 1);
}
