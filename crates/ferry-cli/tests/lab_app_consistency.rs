//! POL-5: an app-consistent cycle of a VM whose guest agent cannot freeze it falls back to a
//! crash-consistent point, and the vault raises a warning event saying so.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

#[test]
fn pol_5_app_consistent_fallback_raises_a_warning_event() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm_with(&lab, "ac1", 8, None, false);
    common::pair_gold(
        &lab,
        &["--name", "gold", "--copy-frequency", "30", "--retention-hours", "2", "--app-consistent-hours", "1"],
    );
    let id = common::protect(&lab, "ac1");
    common::wait_records_and_points(&lab, &id, &serial, 1, 2);
    let event = lab.wait_for("the fallback warning", Duration::from_secs(60), || {
        let events = lab.json(&["event-list"]);
        events["items"].as_array()?.iter().find(|e| e["kind"] == "AppConsistencyFallback").cloned()
    });
    assert_eq!(event["severity"], "Warning");
    assert!(event["message"].as_str().is_some_and(|m| m.contains("ac1") && m.contains("crash-consistent")), "{event}");
    let it = lab.json(&["item-show", &id]);
    assert!(it["stats"]["consistency_fallbacks"].as_u64().is_some_and(|n| n >= 1), "{it}");
    assert!(it["recovery_points"].as_array().is_some_and(|p| p.iter().all(|p| p["app_consistent"] == false)));
}
