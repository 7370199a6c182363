//! The recovery drill (FO-6): test failover → cleanup → planned failover → commit → reverse
//! replication → failback on one VM, with progress, ending protected in the original direction.

mod common;

use common::{Lab, LabOptions};

#[test]
fn fo_6_drill_runs_test_failover_to_failback_and_ends_protected() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "dr1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "dr1");
    common::wait_records_and_points(&lab, &id, &serial, 4, 2);
    let (code, _, err) = lab.cli(&["drill", "dr1", "--step-timeout", "300"]);
    assert_eq!(code, 0, "{err}");
    for step in ["test failover", "planned failover", "reverse replication", "failback", "drill of dr1 complete"] {
        assert!(err.contains(step), "progress shows '{step}': {err}");
    }
    let it = lab.json(&["item-show", &id]);
    assert_eq!(it["state"], "Protected");
    assert_eq!(it["direction"], "Forward");
    assert_eq!(it["source"]["host_name"], "ny1");
    assert!(it["last_test_failover"]["notes"] == "recovery drill", "{it}");
    let vm = lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "dr1"]);
    assert_eq!(vm["power_state"], "Running");
    let (code, _, _) = lab.cli(&["vm-show", "--site", "VMM-Chicago", "--host", "chi1", "dr1-test"]);
    assert_ne!(code, 0, "the test VM is gone");
}
