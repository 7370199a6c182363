//! Before commit (FO-4): change the recovery point, then cancel; a cancelled failover leaves
//! the VM replicating with deltas from where it stopped, without a new full copy (FO-7).

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn fo_4_change_recovery_point_then_cancel_and_fo_7_replication_resumes() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "cp1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "cp1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 4);

    assert_eq!(lab.json(&["planned-failover", &id, "--wait"])["status"], "Succeeded");
    let written = common::last_record(&serial);
    assert_eq!(common::found_records(&lab, "chi1", "cp1"), written);
    // A not-allowed operation is refused (JOB-3): re-protect needs a committed failover.
    let (code, _, err) = lab.cli(&["reprotect", &id]);
    assert_eq!(code, 4, "{err}");

    // FO-4: apply an older point; the recovered VM restarts with exactly its records.
    let rps = item(&lab, &id)["recovery_points"].as_array().cloned().expect("points");
    let older = rps[rps.len() - 3]["id"].as_str().expect("point").to_string();
    let expected = common::records_in_point(&lab, "chi1", &id, &older);
    assert!(expected < written, "the older point holds fewer records ({expected} < {written})");
    let job = lab.json(&["apply-recovery-point", &id, "--point", &older, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    let it = item(&lab, &id);
    assert_eq!(it["state"], "FailedOverCommitPending");
    assert_eq!(it["failover"]["point"], older.as_str());
    assert_eq!(common::found_records(&lab, "chi1", "cp1"), expected, "FO-4: the applied point's records");

    // Cancel: the recovered VM goes, the source VM starts again and replication resumes.
    let job = lab.json(&["failover-cancel", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    let (code, _, err) = lab.cli(&["vm-show", "--site", "VMM-Chicago", "--host", "chi1", "cp1"]);
    assert!(code != 0 && err.contains("VmNotFound"), "the recovered VM is gone: {err}");
    assert_eq!(common::found_records(&lab, "ny1", "cp1"), written, "the source kept every record");
    let points_before = it["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
    // Replication resumes: new points hold the records written after the restart.
    let resumed = lab.wait_for("new records in a new recovery point", Duration::from_secs(120), || {
        let it = item(&lab, &id);
        let rps = it["recovery_points"].as_array().cloned().unwrap_or_default();
        let latest = rps.last()?["id"].as_str()?.to_string();
        (it["state"] == "Protected"
            && rps.len() > points_before
            && common::records_in_point(&lab, "chi1", &id, &latest) > written)
            .then_some(it)
    });
    assert!(resumed["failover"].is_null());
    assert_eq!(resumed["stats"]["initial_bytes"], 0, "FO-7: deltas continue, no new full copy: {resumed}");
}
