//! JOB-3 / JOB-2: pausing replication stops the cycles (the item says so in its state and
//! health); resuming sends everything written meanwhile in one delta, no resync.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn job_3_pause_and_resume_loses_nothing_rep_5_cap_2_metrics_show_it() {
    let lab =
        Lab::start(LabOptions { test_copy_interval_ms: Some(1500), bandwidth_mib_s: Some(64.0), ..Default::default() });
    let serial = common::guest_vm(&lab, "pz1", 8, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "pz1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);

    assert_eq!(lab.json(&["pause-replication", &id, "--wait"])["status"], "Succeeded");
    let paused = item(&lab, &id);
    assert_eq!(paused["state"], "Paused");
    let ops = paused["allowed_operations"].as_array().cloned().unwrap_or_default();
    assert!(ops.iter().any(|o| o == "resumeReplication"), "{paused}");
    assert!(!ops.iter().any(|o| o == "pauseReplication" || o == "plannedFailover"), "{paused}");
    let at_pause = common::last_record(&serial);
    // No new points while paused (one cycle may have been in flight).
    std::thread::sleep(Duration::from_secs(3));
    let n0 = item(&lab, &id)["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(5));
    let it = item(&lab, &id);
    assert_eq!(it["recovery_points"].as_array().map(Vec::len).unwrap_or(0), n0, "no cycles while paused");
    assert_ne!(it["health"], "Normal", "JOB-2: a paused item is not healthy: {it}");
    assert!(common::last_record(&serial) > at_pause + 5, "the guest kept writing");
    // REP-5: the source host's Prometheus metrics say the same.
    let m = common::host_metrics(&lab, "ny1");
    assert!(m.contains(&format!("ferry_replication_phase{{host=\"ny1\",item=\"{id}\",phase=\"paused\"}} 1")), "{m}");
    let cycles = m
        .lines()
        .find(|l| l.starts_with(&format!("ferry_replication_cycles_total{{host=\"ny1\",item=\"{id}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("cycles series");
    assert!(cycles >= 1.0, "{m}");
    assert!(common::host_metrics(&lab, "chi1").contains("ferry_replica_recovery_points{host=\"chi1\""));
    // CAP-2: the host's bandwidth limit is the one in force for its replication.
    assert!(m.contains("ferry_bandwidth_limit_bytes_per_second{host=\"ny1\"} 67108864"), "{m}");

    assert_eq!(lab.json(&["resume-replication", &id, "--wait"])["status"], "Succeeded");
    let written = common::last_record(&serial);
    lab.wait_for("the writes of the pause in a new point", Duration::from_secs(60), || {
        let it = item(&lab, &id);
        let latest = it["recovery_points"].as_array()?.last()?["id"].as_str()?.to_string();
        (it["state"] == "Protected" && common::records_in_point(&lab, "chi1", &id, &latest) >= written).then_some(())
    });
    assert_eq!(item(&lab, &id)["stats"]["initial_bytes"], 0, "a delta, not a new copy");
}
