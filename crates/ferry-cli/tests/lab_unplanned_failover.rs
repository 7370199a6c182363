//! Unplanned failover (FO-3): refused while the source runs (fencing); once the operator confirms
//! the source fenced, the VM comes up at the recovery site from an older chosen point (RP-3) with
//! exactly its records — also while the fenced source still runs on a host that shares the
//! machine's network (its tap must not block the recovered VM's).

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn fo_3_unplanned_failover_fences_a_running_source_then_recovers_a_chosen_point_fo_4_change_point_and_commit() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "uf1", 16, Some("10.11.0.42"));
    common::map_network1(&lab);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30", "--delete-replica-on-disable"]);
    let id = common::protect(&lab, "uf1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 4);

    // Fencing: the source runs and its host answers, so no second live copy is started.
    let (code, _, err) = lab.cli(&["unplanned-failover", &id]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("SourceStillRunning"), "{err}");
    assert_eq!(item(&lab, &id)["state"], "Protected", "nothing changed");

    // An older point, chosen by id (RP-3); its content is what the recovered VM must see.
    let rps = item(&lab, &id)["recovery_points"].as_array().cloned().expect("points");
    let point = rps[rps.len() - 3]["id"].as_str().expect("point").to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let top = vm.chain(&point, "vdb").expect("chain")[0].clone();
    let expected = rt.block_on(ferry_qemu::guest_records::verify_image(&top)).expect("verify").clean_prefix_len;

    // The operator fences the primary (its storage and uplink cut) and says so; its QEMU still
    // runs here, on a host that shares this machine's network namespace.
    let job = lab.json(&["unplanned-failover", &id, "--point", &point, "--source-fenced", "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    let source = lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "uf1"]);
    assert_eq!(source["power_state"], "Running", "the fenced source was left alone: {source}");
    let recovered = lab.json(&["vm-show", "--site", "VMM-Chicago", "--host", "chi1", "uf1"]);
    assert_eq!(recovered["definition"]["nics"].as_array().map(Vec::len), Some(1), "mapped NIC: {recovered}");
    assert_eq!(item(&lab, &id)["state"], "FailedOverCommitPending");
    let rserial = lab.host_data("chi1").join("vms/uf1/serial.log");
    let found = lab.wait_for("the recovered guest to report its records", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&rserial).unwrap_or_default();
        text.lines().find_map(|l| l.trim().strip_prefix("FERRY FOUND ").and_then(|n| n.trim().parse::<u64>().ok()))
    });
    assert_eq!(found, expected, "the recovered VM holds exactly the records of point {point}");

    // FO-4: change the recovery point to the newest one, then commit.
    let newest = rps.last().and_then(|p| p["id"].as_str()).expect("newest point").to_string();
    let in_newest = common::records_in_point(&lab, "chi1", &id, &newest);
    let job = lab.json(&["apply-recovery-point", &id, "--point", &newest, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    assert_eq!(common::found_records(&lab, "chi1", "uf1"), in_newest, "the applied point's records");
    assert!(in_newest >= expected);
    assert_eq!(lab.json(&["failover-commit", &id, "--wait"])["status"], "Succeeded");
    let committed = item(&lab, &id);
    assert_eq!(committed["state"], "Committed");
    assert_eq!(committed["failover"]["point"], newest.as_str());
    assert!(committed["recovery_points"].as_array().is_none_or(|p| p.is_empty()), "commit discards the other points");

    // Disabling protection after the failover keeps the replica: it is the running VM's disk now.
    assert_eq!(lab.json(&["disable-protection", &id, "--wait"])["status"], "Succeeded");
    let vm = lab.json(&["vm-show", "--site", "VMM-Chicago", "--host", "chi1", "uf1"]);
    assert_eq!(vm["power_state"], "Running");
    for d in vm["definition"]["disks"].as_array().expect("disks") {
        let path = d["path"].as_str().expect("path");
        assert!(std::path::Path::new(path).exists(), "{path} kept");
        let info = std::process::Command::new("qemu-img")
            .args(["info", "-U", "--backing-chain", path])
            .output()
            .expect("qemu-img runs");
        assert!(
            info.status.success(),
            "the backing chain of {path} is kept: {}",
            String::from_utf8_lossy(&info.stderr)
        );
    }
}
