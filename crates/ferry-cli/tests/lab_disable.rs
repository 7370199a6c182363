//! POL-7 / REP-8: with "delete replica on disable: no", disabling protection stops replication
//! and removes its tracking state but keeps the replica disks.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::json;

#[test]
fn pol_7_disable_protection_keeps_the_replica_when_the_policy_says_no() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1000), ..Default::default() });
    let gold = lab.storage("ny1", "gold");
    // A VM without a guest OS: its disk is replicated all the same.
    let def = json!({"name": "keep1", "memory_mib": 64,
        "disks": [{"target": "vda", "path": gold.join("keep1-vda.qcow2"), "format": "qcow2", "create_size": 16u64 << 20}]});
    lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def("keep1", &def).display().to_string(),
    ]);
    lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "keep1"]);
    lab.wait_for("the VM in the inventory", Duration::from_secs(30), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"].as_array().is_some_and(|a| a.iter().any(|v| v["name"] == "keep1")).then_some(())
    });
    lab.json(&[
        "policy-create",
        "--name",
        "silver",
        "--copy-frequency",
        "300",
        "--associate",
        "VMM-NewYork/GoldCloud1=VMM-Chicago/GoldCloud2",
    ]);
    let policy = lab.json(&["policy-show", "silver"]);
    assert_eq!(policy["delete_replica_on_disable"], false);
    lab.wait_for("the pair", Duration::from_secs(30), || {
        (lab.json(&["job-list", "--operation", "ConfigureCloudPair"])["items"][0]["status"] == "Succeeded")
            .then_some(())
    });
    let enabled = lab.json(&["protect", "--site", "VMM-NewYork", "keep1", "--wait"]);
    let id = enabled[0]["id"].as_str().expect("id").to_string();
    lab.wait_for("Protected with points", Duration::from_secs(60), || {
        let it = lab.json(&["item-show", &id]);
        (it["state"] == "Protected" && it["recovery_points"].as_array().is_some_and(|a| a.len() >= 2)).then_some(())
    });
    let replica = std::fs::canonicalize(lab.host_data("chi1").join("replicas").join(&id)).expect("replica dir");
    assert!(
        replica.starts_with(std::fs::canonicalize(lab.storage("chi1", "replica")).expect("default location")),
        "unmapped GOLD: default replica location (STO-3)"
    );
    assert!(lab.host_data("ny1").join("staging").join(&id).exists());

    let j = lab.json(&["disable-protection", &id, "--wait"]);
    assert_eq!(j["status"], "Succeeded");
    assert_eq!(lab.cli(&["item-show", &id]).0, 3, "the protected item is gone");
    assert!(!lab.host_data("ny1").join("staging").join(&id).exists(), "tracking state removed");
    let files: Vec<_> = std::fs::read_dir(&replica).expect("replica kept").flatten().collect();
    assert!(
        files.iter().any(|f| f.file_name().to_string_lossy().ends_with(".qcow2")),
        "the replica disks are kept: {files:?}"
    );
    // No more cycles arrive for it.
    let count = files.len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(std::fs::read_dir(&replica).expect("replica").count(), count, "replication stopped");
}
