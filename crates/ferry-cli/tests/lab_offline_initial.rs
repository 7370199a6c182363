//! POL-8 / REP-2: offline initial replication end to end. The source host exports the initial
//! copy to the policy's export path while the guest keeps writing records; the operator carries
//! the export folder to the import path; `ferry import-initial` imports it on the target host and
//! delta replication starts from the export's point, so every record reaches the replica.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("media folder");
    for e in std::fs::read_dir(from).expect("export folder").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[test]
fn pol_8_sec_3_offline_export_carry_import_then_deltas() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let export = lab.dir.join("media-export");
    let import = lab.dir.join("media-import");
    let serial = common::guest_vm(&lab, "of1", 8, None);
    common::pair_gold(
        &lab,
        &[
            "--name",
            "gold",
            "--copy-frequency",
            "30",
            "--export-path",
            export.to_str().expect("path"),
            "--import-path",
            import.to_str().expect("path"),
        ],
    );
    let id = common::protect(&lab, "of1");

    // The export completes; the VM waits for the import and offers it.
    let waiting = lab.wait_for("the export to complete", Duration::from_secs(120), || {
        let it = lab.json(&["item-show", &id]);
        (it["stats"]["awaiting_import"] == true && it["state"] == "WaitingForInitialReplication").then_some(it)
    });
    assert!(
        waiting["allowed_operations"].as_array().expect("ops").iter().any(|o| o == "importInitialReplica"),
        "{waiting}"
    );
    assert!(waiting["recovery_points"].as_array().is_none_or(|p| p.is_empty()), "{waiting}");
    let folder = export.join(&id);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(folder.join("ferry-export.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["complete"], true, "{manifest}");
    let cycle = manifest["cycle"].as_u64().expect("cycle");
    let events = lab.json(&["event-list", "--kind", "InitialCopyExported"]);
    assert!(events["items"].as_array().is_some_and(|e| !e.is_empty()), "{events}");

    // Importing before the media arrived fails clearly and changes nothing.
    let (code, out, err) = lab.cli(&["import-initial", &id, "--wait"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("copy the export folder"), "{err}");
    let still = lab.json(&["item-show", &id]);
    assert_eq!(still["stats"]["awaiting_import"], true, "{still}");

    // The guest keeps writing while the media travels; then the import.
    let before = lab.wait_for("the guest to write records", Duration::from_secs(120), || {
        ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(&serial).unwrap_or_default())
            .filter(|n| *n >= 3)
    });
    copy_dir(&folder, &import.join(&id));
    // SEC-3: the manifest is sealed with the item's key from the vault; media altered on the
    // way (here its date) is refused and nothing is imported, the original media imports.
    assert!(manifest["mac"].as_str().is_some_and(|m| m.len() == 64), "sealed: {manifest}");
    let carried = import.join(&id).join("ferry-export.json");
    let mut altered = manifest.clone();
    altered["created_at"] = "2020-01-01T00:00:00Z".into();
    std::fs::write(&carried, serde_json::to_vec(&altered).expect("json")).expect("alter");
    let (code, out, err) = lab.cli(&["import-initial", &id, "--wait"]);
    assert_ne!(code, 0, "{out}");
    assert!(format!("{out}{err}").contains("not sealed with this item's key"), "{out}{err}");
    assert_eq!(lab.json(&["item-show", &id])["stats"]["awaiting_import"], true);
    std::fs::copy(folder.join("ferry-export.json"), &carried).expect("the original manifest");
    let protected = lab.json(&["import-initial", &id, "--wait"]);
    assert_eq!(protected["state"], "Protected", "{protected}");
    let points = protected["recovery_points"].as_array().expect("points");
    assert_eq!(points[0]["id"], format!("rp-{cycle}"), "the first point is the exported one: {protected}");

    // Deltas carry everything written since the export: later points and records keep coming.
    common::wait_records_and_points(&lab, &id, &serial, before + 3, 3);
    let exported = common::records_in_point(&lab, "chi1", &id, &format!("rp-{cycle}"));
    let now = lab.wait_for("the records of the guest in the latest point", Duration::from_secs(90), || {
        let it = lab.json(&["item-show", &id]);
        let latest = it["recovery_points"].as_array().and_then(|p| p.last())?["id"].as_str()?.to_string();
        let n = common::records_in_point(&lab, "chi1", &id, &latest);
        (n >= before).then_some(n)
    });
    assert!(now > exported, "records: exported {exported}, latest {now}, before import {before}");
    let jobs = lab.json(&["job-list", "--operation", "ImportInitialReplica"]);
    let statuses: Vec<&Value> = jobs["items"].as_array().expect("jobs").iter().map(|j| &j["status"]).collect();
    assert!(statuses.contains(&&Value::from("Failed")) && statuses.contains(&&Value::from("Succeeded")), "{jobs}");
    let finalize = lab.json(&["job-list", "--operation", "FinalizeProtection"]);
    assert!(finalize["items"].as_array().is_some_and(|j| !j.is_empty()), "{finalize}");
    let _ = std::fs::remove_dir_all(&export);
    let _ = std::fs::remove_dir_all(&import);
}
