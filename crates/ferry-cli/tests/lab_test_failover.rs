//! Test failover (FO-1) at a chosen recovery point (RP-3) while replication continues, its
//! cleanup, and disable protection (REP-8, POL-7), on a test guest writing records.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::{json, Value};

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn fo_1_test_failover_sees_the_chosen_point_and_cleanup_leaves_nothing_then_rep_8_disable() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "tf1", 16, Some("10.11.0.30"));
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30", "--delete-replica-on-disable"]);
    let id = common::protect(&lab, "tf1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 4);

    // RP-3: a specific, older point; its content decides what the test VM must see.
    let rps = item(&lab, &id)["recovery_points"].as_array().cloned().expect("points");
    let point = rps[rps.len() - 2]["id"].as_str().expect("point id").to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let top = vm.chain(&point, "vdb").expect("chain")[0].clone();
    let expected = rt.block_on(ferry_qemu::guest_records::verify_image(&top)).expect("verify").clean_prefix_len;

    let job = lab.json(&["test-failover", &id, "--point", &point, "--network", "auto", "--wait"]);
    assert_eq!(job["status"], "WaitingForInput", "FO-1: the job waits at Complete testing: {job}");
    assert_eq!(job["tasks"][3]["name"], "Complete testing");
    let it = item(&lab, &id);
    let bridge = it["test_failover"]["created_bridge"].as_str().expect("bridge").to_string();
    assert_eq!(it["test_failover"]["recovery_point"], point.as_str());
    // One test failover at a time.
    let (code, _, err) = lab.cli(&["test-failover", &id]);
    assert_eq!(code, 4, "{err}");

    // The test VM runs from the chosen point: its guest finds exactly that point's records.
    let test_serial = lab.host_data("chi1").join("vms/tf1-test/serial.log");
    let found = lab.wait_for("the test VM's guest to report its records", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&test_serial).unwrap_or_default();
        text.lines().find_map(|l| l.trim().strip_prefix("FERRY FOUND ").and_then(|n| n.trim().parse::<u64>().ok()))
    });
    assert_eq!(found, expected, "the test VM sees exactly the records of point {point}");
    let tested = lab.json(&["vm-show", "--site", "VMM-Chicago", "--host", "chi1", "tf1-test"]);
    assert_eq!(tested["power_state"], "Running");
    let out = std::process::Command::new("ip").args(["-o", "link", "show", "master", &bridge]).output().expect("ip");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "the test VM is on its isolated bridge");
    // Replication continues meanwhile.
    let before = item(&lab, &id)["stats"]["cycles_ok"].as_u64().unwrap_or(0);
    lab.wait_for("replication to continue during the test", Duration::from_secs(60), || {
        (item(&lab, &id)["stats"]["cycles_ok"].as_u64().unwrap_or(0) >= before + 2).then_some(())
    });

    // Cleanup: the test VM, its overlays and its network are gone; the notes are recorded.
    let cleanup = lab.json(&["test-failover-cleanup", &id, "--notes", "drill ok", "--wait"]);
    assert_eq!(cleanup["status"], "Succeeded", "{cleanup}");
    let first = lab.json(&["job-show", job["id"].as_str().expect("job id")]);
    assert_eq!(first["status"], "Succeeded", "the test failover job ends with the cleanup");
    let it = item(&lab, &id);
    assert!(it["test_failover"].is_null());
    assert_eq!(it["last_test_failover"]["notes"], "drill ok");
    let vms = lab.json(&["vm-list", "--site", "VMM-Chicago", "--host", "chi1"]);
    assert_eq!(vms, json!([]), "no test VM left");
    assert!(!lab.host_data("chi1").join("vms/tf1-test").exists());
    let replica_dir = std::fs::canonicalize(lab.host_data("chi1").join("replicas").join(&id)).expect("replica dir");
    assert!(!replica_dir.join("test").exists(), "no overlay left");
    assert!(!std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists(), "no bridge left");
    assert!(vm.recovery_points().expect("points").iter().all(|p| p.in_use.is_empty()), "the point is released");

    // REP-8 / POL-7: disable protection deletes the replica when the policy says so.
    let j = lab.json(&["disable-protection", &id, "--wait"]);
    assert_eq!(j["status"], "Succeeded");
    let (code, _, _) = lab.cli(&["item-show", &id]);
    assert_eq!(code, 3, "the protected item is gone");
    assert!(!replica_dir.exists(), "the replica was deleted (delete_replica_on_disable)");
    assert!(!lab.host_data("ny1").join("staging").join(&id).exists(), "tracking state removed on the source");
}
