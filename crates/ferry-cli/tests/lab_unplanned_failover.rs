//! Unplanned failover (FO-3): refused while the source runs (fencing); after the source is gone,
//! the VM comes up at the recovery site from an older chosen point (RP-3) with exactly its records.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::{json, Value};

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn fo_3_unplanned_failover_fences_a_running_source_then_recovers_a_chosen_point() {
    let guest = common::test_guest();
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let gold = lab.storage("ny1", "gold");
    let def = json!({
        "name": "uf1", "vcpus": 1, "memory_mib": 256,
        "disks": [
            {"target": "vda", "path": gold.join("uf1-vda.qcow2"), "format": "qcow2", "create_size": 8u64 << 20},
            {"target": "vdb", "path": gold.join("uf1-vdb.qcow2"), "format": "qcow2", "create_size": 16u64 << 20}
        ],
        "kernel_boot": {"kernel": guest.kernel, "initrd": guest.initrd,
            "append": "console=ttyS0 quiet panic=-1 ferry.workload=records ferry.disk=/dev/vdb ferry.interval_ms=300 ferry.count=100000"}
    });
    lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def("uf1", &def).display().to_string(),
    ]);
    lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "uf1"]);
    lab.wait_for("the VM in the inventory", Duration::from_secs(30), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"].as_array().is_some_and(|a| a.iter().any(|v| v["name"] == "uf1")).then_some(())
    });
    lab.json(&[
        "policy-create",
        "--name",
        "gold",
        "--copy-frequency",
        "30",
        "--associate",
        "VMM-NewYork/GoldCloud1=VMM-Chicago/GoldCloud2",
    ]);
    lab.wait_for("the pair", Duration::from_secs(30), || {
        (lab.json(&["job-list", "--operation", "ConfigureCloudPair"])["items"][0]["status"] == "Succeeded")
            .then_some(())
    });
    let enabled = lab.json(&["protect", "--site", "VMM-NewYork", "uf1", "--wait"]);
    let id = enabled[0]["id"].as_str().expect("id").to_string();
    let serial = lab.host_data("ny1").join("vms/uf1/serial.log");
    lab.wait_for("records and points", Duration::from_secs(150), || {
        let n = ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(&serial).unwrap_or_default())
            .unwrap_or(0);
        let rps = item(&lab, &id)["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
        (n >= 6 && rps >= 4).then_some(())
    });

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

    // The primary is lost (its VM is stopped hard, as in a crash).
    lab.json(&["vm-stop", "--site", "VMM-NewYork", "--host", "ny1", "uf1"]);
    lab.wait_for("the vault to see the source stopped", Duration::from_secs(30), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == "uf1"))
            .filter(|v| v["power_state"] != "Running")
            .map(|_| ())
    });
    let job = lab.json(&["unplanned-failover", &id, "--point", &point, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    assert_eq!(item(&lab, &id)["state"], "FailedOverCommitPending");
    let rserial = lab.host_data("chi1").join("vms/uf1/serial.log");
    let found = lab.wait_for("the recovered guest to report its records", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&rserial).unwrap_or_default();
        text.lines().find_map(|l| l.trim().strip_prefix("FERRY FOUND ").and_then(|n| n.trim().parse::<u64>().ok()))
    });
    assert_eq!(found, expected, "the recovered VM holds exactly the records of point {point}");
}
