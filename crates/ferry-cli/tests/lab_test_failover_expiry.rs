//! FO-1: a test failover left running past the limit (14 days by default; 20 s in this lab) is
//! cleaned up by the vault itself: test VM, overlays and isolated network gone, note recorded.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

#[test]
fn fo_1_test_failover_left_running_is_cleaned_up_automatically() {
    let lab = Lab::start(LabOptions {
        test_copy_interval_ms: Some(1500),
        test_failover_max_age_secs: Some(20),
        ..Default::default()
    });
    let serial = common::guest_vm(&lab, "ex1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "ex1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);
    let job = lab.json(&["test-failover", &id, "--network", "auto", "--wait"]);
    assert_eq!(job["status"], "WaitingForInput");
    let bridge = lab.json(&["item-show", &id])["test_failover"]["created_bridge"].as_str().expect("bridge").to_string();
    // Nobody cleans up: the vault does once the test is older than the limit.
    let done = lab.wait_for("the automatic cleanup", Duration::from_secs(120), || {
        let it = lab.json(&["item-show", &id]);
        (it["test_failover"].is_null() && !it["last_test_failover"].is_null()).then_some(it)
    });
    assert!(done["last_test_failover"]["notes"].as_str().is_some_and(|n| n.contains("automatically")), "{done}");
    let (code, _, err) = lab.cli(&["vm-show", "--site", "VMM-Chicago", "--host", "chi1", "ex1-test"]);
    assert!(code != 0 && err.contains("VmNotFound"), "the test VM is gone: {err}");
    assert!(!std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists(), "the test network is gone");
    let test_job = lab.json(&["job-show", job["id"].as_str().expect("job id")]);
    assert_eq!(test_job["status"], "Succeeded", "the test failover job ends with its cleanup");
    let events = lab.json(&["event-list"]);
    assert!(
        events["items"].as_array().is_some_and(|a| a.iter().any(|e| e["kind"] == "TestFailoverExpired")),
        "a warning event says why: {events}"
    );
}
