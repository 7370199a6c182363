//! FO-7: a failover interrupted half-way (its VM cannot be created at the recovery site) is
//! rolled back (the item is protected again and replication resumes) or, once the cause is
//! removed, resumed where it stopped.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn fo_7_interrupted_failover_rolls_back_or_resumes() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "rb1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "rb1");
    common::wait_records_and_points(&lab, &id, &serial, 4, 2);

    // Someone else's VM holds the name at the recovery site: the failover stops half-way.
    let blocker = serde_json::json!({"name": "rb1", "vcpus": 1, "memory_mib": 64, "disks": [], "nics": []});
    lab.json(&[
        "vm-create",
        "--site",
        "VMM-Chicago",
        "--host",
        "chi1",
        "--file",
        &common::path_str(&lab.vm_def("blocker", &blocker)),
    ]);
    let (code, _, err) = lab.cli(&["planned-failover", &id, "--wait"]);
    assert_eq!(code, 6, "the failover job fails: {err}");
    let stuck = item(&lab, &id);
    assert_eq!(stuck["state"], "FailoverInProgress");
    assert_eq!(stuck["allowed_operations"], serde_json::json!(["failoverCancel"]), "{stuck}");

    // Roll back: the source VM runs again, replication resumes, the other VM is untouched.
    let written = common::last_record(&serial);
    let job = lab.json(&["failover-cancel", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    let blocker_vm = lab.json(&["vm-show", "--site", "VMM-Chicago", "--host", "chi1", "rb1"]);
    assert_eq!(blocker_vm["definition"]["memory_mib"], 64, "the foreign VM is left alone");
    let before = item(&lab, &id)["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
    // Records written after the restart reach a new point: the guest runs and is replicated.
    lab.wait_for("replication to resume", Duration::from_secs(120), || {
        let it = item(&lab, &id);
        let rps = it["recovery_points"].as_array().cloned().unwrap_or_default();
        let latest = rps.last()?["id"].as_str()?.to_string();
        (it["state"] == "Protected"
            && rps.len() > before
            && common::records_in_point(&lab, "chi1", &id, &latest) > written)
            .then_some(())
    });

    // Interrupted again; this time the cause is removed and the same job resumes where it
    // stopped (its finished tasks are not run again).
    let (code, out, err) = lab.cli(&["planned-failover", &id, "--wait", "-o", "json"]);
    assert_eq!(code, 6, "{err}");
    let failed: serde_json::Value = serde_json::from_str(&out).expect("job json");
    let job_id = failed["id"].as_str().expect("job id").to_string();
    let shutdown_ended = failed["tasks"][0]["ended_at"].clone();
    let last = common::last_record(&serial);
    lab.json(&["vm-delete", "--site", "VMM-Chicago", "--host", "chi1", "rb1"]);
    let resumed = lab.json(&["job-resume", &job_id, "--wait"]);
    assert_eq!(resumed["status"], "Succeeded", "{resumed}");
    assert_eq!(resumed["tasks"][0]["ended_at"], shutdown_ended, "the source was not shut down twice");
    assert_eq!(item(&lab, &id)["state"], "FailedOverCommitPending");
    assert_eq!(common::found_records(&lab, "chi1", "rb1"), last, "no record lost");
}
