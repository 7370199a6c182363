//! SGL-1: one site manager with two clouds. GoldCloud1 (host ny1) and SilverCloud1 (host ny2)
//! of VMM-NewYork protect each other: test failover and cleanup, planned failover, commit,
//! reverse replication and failback work exactly as between two sites.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

fn wait_protected(lab: &Lab, id: &str, source_host: &str) -> Value {
    lab.wait_for("the item to be protected", Duration::from_secs(180), || {
        let it = item(lab, id);
        let n = it["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
        (it["state"] == "Protected" && it["source"]["host_name"] == source_host && n >= 2).then_some(it)
    })
}

#[test]
fn sgl_1_two_clouds_of_one_site_manager_fail_over_and_back() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), sgl: true, ..Default::default() });
    let serial = common::guest_vm(&lab, "sg1", 16, None);
    lab.json(&[
        "policy-create",
        "--name",
        "local",
        "--copy-frequency",
        "30",
        "--associate",
        "VMM-NewYork/GoldCloud1=VMM-NewYork/SilverCloud1",
    ]);
    lab.wait_for("the pair to be configured", Duration::from_secs(30), || {
        (lab.json(&["job-list", "--operation", "ConfigureCloudPair"])["items"][0]["status"] == "Succeeded")
            .then_some(())
    });
    let id = common::protect(&lab, "sg1");
    let it = item(&lab, &id);
    assert_eq!(it["source"]["fabric"], it["target"]["fabric"], "one site manager");
    assert_eq!(it["target"]["host_name"], "ny2");
    common::wait_records_and_points(&lab, &id, &serial, 4, 2);

    // Test failover and cleanup.
    let job = lab.json(&["test-failover", &id, "--wait"]);
    assert_eq!(job["status"], "WaitingForInput", "{job}");
    let point = item(&lab, &id)["test_failover"]["recovery_point"].as_str().expect("point").to_string();
    let expected = common::records_in_point(&lab, "ny2", &id, &point);
    assert_eq!(common::found_records(&lab, "ny2", "sg1-test"), expected, "the test VM sees its point");
    assert_eq!(lab.json(&["test-failover-cleanup", &id, "--wait"])["status"], "Succeeded");

    // Planned failover to SilverCloud1, commit, reverse replication.
    assert_eq!(lab.json(&["planned-failover", &id, "--wait"])["status"], "Succeeded");
    let written = common::last_record(&serial);
    assert_eq!(common::found_records(&lab, "ny2", "sg1"), written, "no record lost");
    assert_eq!(lab.json(&["failover-commit", &id, "--wait"])["status"], "Succeeded");
    let rev = lab.json(&["reprotect", &id, "--wait"]);
    assert_eq!(rev["direction"], "Reverse", "{rev}");
    let rev = wait_protected(&lab, &id, "ny2");
    let sent = rev["stats"]["initial_bytes"].as_u64().expect("bytes");
    let disks: u64 = rev["disks"].as_array().into_iter().flatten().filter_map(|d| d["virtual_size"].as_u64()).sum();
    assert!(sent * 8 < disks, "only the changes travel back ({sent} of {disks})");

    // Failback to GoldCloud1.
    let (code, _, err) = lab.cli(&["failback", &id]);
    assert_eq!(code, 0, "{err}");
    let back = wait_protected(&lab, &id, "ny1");
    assert_eq!(back["direction"], "Forward");
    assert_eq!(back["target"]["host_name"], "ny2");
    let vm = lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "sg1"]);
    assert_eq!(vm["power_state"], "Running");
    assert!(common::found_records(&lab, "ny1", "sg1") > written, "records written on ny2 came back");
}
