//! Planned failover (FO-2) with zero data loss and commit (FO-4), with the recovered VM's NIC
//! on the mapped network (FO-8, NET-2..4), through the whole lab.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

#[test]
fn fo_2_planned_failover_no_record_lost_fo_8_net_4_reip_in_guest_fo_4_commit() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "pf1", 16, Some("10.11.0.40"));
    common::map_network1(&lab);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "pf1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 2);
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
    // NET-4 / FO-8: the address is applied inside the guest, which reports it through its agent.
    let reip = &job["params"]["outputs"]["Apply the addresses inside the guest (re-IP)"]["nics"][0];
    assert_eq!(reip["mac"], recovered["definition"]["nics"][0]["mac"], "{job}");
    let addresses: Vec<&str> = reip["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
    assert!(addresses.contains(&"10.21.0.10/24"), "the guest reports its new address: {job}");
    assert!(!addresses.iter().any(|a| a.starts_with("10.11.")), "no source address left: {addresses:?}");
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
