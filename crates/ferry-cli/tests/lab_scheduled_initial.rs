//! POL-8: initial replication at a scheduled time: the VM waits for initial replication until
//! then, and its first recovery point comes after the scheduled time.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

#[test]
fn pol_8_scheduled_initial_replication_starts_at_its_time() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "si1", 8, None);
    let start_at = chrono::Utc::now() + chrono::Duration::seconds(25);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30", "--schedule", &start_at.to_rfc3339()]);
    let id = common::protect(&lab, "si1");
    std::thread::sleep(Duration::from_secs(8));
    let waiting = lab.json(&["item-show", &id]);
    assert_eq!(waiting["state"], "WaitingForInitialReplication", "{waiting}");
    assert!(waiting["recovery_points"].as_array().is_none_or(|p| p.is_empty()));
    common::wait_records_and_points(&lab, &id, &serial, 1, 1);
    let it = lab.json(&["item-show", &id]);
    let first: chrono::DateTime<chrono::Utc> =
        it["recovery_points"][0]["time"].as_str().and_then(|t| t.parse().ok()).expect("point time");
    assert!(first >= start_at, "the first point ({first}) comes after the scheduled time ({start_at})");
}
