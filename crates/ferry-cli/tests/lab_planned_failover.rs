//! Planned failover (FO-2) with zero data loss and commit (FO-4), with the recovered VM's NIC
//! on the mapped network (FO-8, NET-2..4), through the whole lab.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::{json, Value};

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn fo_2_planned_failover_loses_no_record_and_fo_4_commit() {
    let guest = common::test_guest();
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let gold = lab.storage("ny1", "gold");
    let def = json!({
        "name": "pf1", "vcpus": 1, "memory_mib": 256,
        "disks": [
            {"target": "vda", "path": gold.join("pf1-vda.qcow2"), "format": "qcow2", "create_size": 8u64 << 20},
            {"target": "vdb", "path": gold.join("pf1-vdb.qcow2"), "format": "qcow2", "create_size": 16u64 << 20}
        ],
        "nics": [{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": "10.11.0.40"}],
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
        &lab.vm_def("pf1", &def).display().to_string(),
    ]);
    lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "pf1"]);
    lab.wait_for("the VM in the inventory", Duration::from_secs(30), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"].as_array().is_some_and(|a| a.iter().any(|v| v["name"] == "pf1")).then_some(())
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
    lab.json(&[
        "network-map-create",
        "--source",
        "VMM-NewYork/VMNetwork1-NewYork",
        "--target",
        "VMM-Chicago/VMNetwork1-Chicago",
    ]);
    lab.wait_for("the pair", Duration::from_secs(30), || {
        (lab.json(&["job-list", "--operation", "ConfigureCloudPair"])["items"][0]["status"] == "Succeeded")
            .then_some(())
    });
    let enabled = lab.json(&["protect", "--site", "VMM-NewYork", "pf1", "--wait"]);
    let id = enabled[0]["id"].as_str().expect("id").to_string();
    let serial = lab.host_data("ny1").join("vms/pf1/serial.log");
    lab.wait_for("records and points", Duration::from_secs(150), || {
        let n = ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(&serial).unwrap_or_default())
            .unwrap_or(0);
        let st = item(&lab, &id);
        (n >= 6 && st["state"] == "Protected" && st["recovery_points"].as_array().map(Vec::len).unwrap_or(0) >= 2)
            .then_some(())
    });
    // A not-allowed operation is refused with 409 and the reason (JOB-3).
    let (code, _, err) = lab.cli(&["failover-commit", &id]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("OperationNotAllowed"), "{err}");

    let job = lab.json(&["planned-failover", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    let last_written =
        ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(&serial).expect("serial"))
            .expect("records");
    let st = item(&lab, &id);
    assert_eq!(st["state"], "FailedOverCommitPending");
    assert!(st["allowed_operations"].as_array().is_some_and(|a| a.iter().any(|o| o == "failoverCommit")), "{st}");

    // The VM runs at the recovery site and its guest finds every record written before shutdown.
    let recovered = lab.json(&["vm-show", "--site", "VMM-Chicago", "--host", "chi1", "pf1"]);
    assert_eq!(recovered["power_state"], "Running");
    assert_eq!(recovered["definition"]["nics"][0]["vm_network"], "VMNetwork1-Chicago", "FO-8: mapped network");
    assert_eq!(recovered["definition"]["nics"][0]["ip"], "10.21.0.10", "NET-4: address from the target pool");
    let source = lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "pf1"]);
    assert_ne!(source["power_state"], "Running", "never two live copies");
    let rserial = lab.host_data("chi1").join("vms/pf1/serial.log");
    let found = lab.wait_for("the recovered guest to report its records", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&rserial).unwrap_or_default();
        text.lines().find_map(|l| l.trim().strip_prefix("FERRY FOUND ").and_then(|n| n.trim().parse::<u64>().ok()))
    });
    assert_eq!(found, last_written, "FO-2: no record written before the shutdown is lost");

    let c = lab.json(&["failover-commit", &id, "--wait"]);
    assert_eq!(c["status"], "Succeeded");
    assert_eq!(item(&lab, &id)["state"], "Committed");
}
