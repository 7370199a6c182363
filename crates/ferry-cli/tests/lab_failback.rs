//! Reverse replication (FO-5) and failback (FO-6) through the whole lab: planned failover to
//! Chicago, commit, re-protect (only what the recovered VM wrote travels back), then failback to
//! New York, where the VM comes back on its original network (NET-6, FO-8) and protected in the
//! original direction, with every record intact; disabled then (keeping the replica) and enabled
//! again, it starts from the replica kept in Chicago (REP-7).

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

fn disk_bytes(it: &Value) -> u64 {
    it["disks"].as_array().into_iter().flatten().filter_map(|d| d["virtual_size"].as_u64()).sum()
}

fn wait_protected_with_points(lab: &Lab, id: &str, points: usize) -> Value {
    lab.wait_for("the item to be protected with points", Duration::from_secs(180), || {
        let it = item(lab, id);
        let n = it["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
        (it["state"] == "Protected" && n >= points).then_some(it)
    })
}

#[test]
fn fo_6_failback_round_trip_keeps_every_record_and_fo_5_sends_only_the_changes() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "fb1", 16, Some("10.11.0.41"));
    common::map_network1(&lab);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "fb1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 2);
    let ny_network = item(&lab, &id)["nics"][0]["source_network"].clone();

    // Failover to Chicago, committed: the recovered VM holds every record and goes on writing.
    assert_eq!(lab.json(&["planned-failover", &id, "--wait"])["status"], "Succeeded");
    let written_in_ny = common::last_record(&serial);
    assert_eq!(common::found_records(&lab, "chi1", "fb1"), written_in_ny, "FO-2: nothing lost");
    assert_eq!(lab.json(&["failover-commit", &id, "--wait"])["status"], "Succeeded");
    let committed = item(&lab, &id);
    assert_eq!(committed["state"], "Committed");
    assert!(committed["allowed_operations"].as_array().is_some_and(|a| a.iter().any(|o| o == "reProtect")));
    let chi_serial = lab.host_data("chi1").join("vms/fb1/serial.log");
    lab.wait_for("the recovered guest to write more records", Duration::from_secs(60), || {
        (common::last_record(&chi_serial) >= written_in_ny + 10).then_some(())
    });

    // Re-protect: Chicago replicates back to New York, sending only what changed since failover.
    let rev = lab.json(&["reprotect", &id, "--wait"]);
    assert_eq!(rev["state"], "Protected", "{rev}");
    let rev = wait_protected_with_points(&lab, &id, 2);
    assert_eq!(rev["direction"], "Reverse");
    assert_eq!(rev["source"]["host_name"], "chi1");
    assert_eq!(rev["target"]["host_name"], "ny1");
    let sent = rev["stats"]["initial_bytes"].as_u64().expect("bytes sent");
    let disks = disk_bytes(&rev);
    eprintln!("FO-5: reverse replication sent {sent} bytes for {disks} bytes of disks");
    assert!(sent > 0 && sent * 8 < disks, "FO-5: only the changes since the failover travel ({sent} of {disks})");
    // NET-6: the NIC goes back to the original network (the replica NIC was left unchanged).
    assert_eq!(rev["nics"][0]["target_network"], ny_network, "{rev}");
    let (code, _, err) = lab.cli(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "fb1"]);
    assert!(code != 0 && err.contains("VmNotFound"), "the original VM became the reverse replica's base: {err}");

    // Failback (FO-6): planned failover to New York, commit, re-protect in the original
    // direction. The steps one by one here, to read the Chicago guest's last record between
    // them; `ferry failback` runs the same three steps (the drill test runs it).
    assert_eq!(lab.json(&["planned-failover", &id, "--wait"])["status"], "Succeeded");
    let written_in_chicago = common::last_record(&chi_serial);
    assert!(written_in_chicago > written_in_ny);
    assert_eq!(common::found_records(&lab, "ny1", "fb1"), written_in_chicago, "FO-6: every record is back");
    assert_eq!(lab.json(&["failover-commit", &id, "--wait"])["status"], "Succeeded");
    let back = lab.json(&["reprotect", &id, "--wait"]);
    assert_eq!(back["state"], "Protected", "{back}");
    let back = wait_protected_with_points(&lab, &id, 2);
    assert_eq!(back["direction"], "Forward");
    assert_eq!(back["source"]["host_name"], "ny1");
    assert_eq!(back["target"]["host_name"], "chi1");
    let sent_back = back["stats"]["initial_bytes"].as_u64().expect("bytes sent");
    assert!(sent_back > 0 && sent_back * 8 < disks, "FO-5 again: {sent_back} of {disks}");
    let vm = lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "fb1"]);
    assert_eq!(vm["power_state"], "Running");
    assert_eq!(vm["definition"]["nics"][0]["vm_network"], "VMNetwork1-NewYork", "NET-6 / FO-8: original network");
    assert_eq!(vm["definition"]["nics"][0]["ip"], "10.11.0.41", "the original address");
    // Replication in the original direction goes on producing points with every record.
    let ny_serial = lab.host_data("ny1").join("vms/fb1/serial.log");
    lab.wait_for("new records and points after failback", Duration::from_secs(90), || {
        let it = item(&lab, &id);
        let n = it["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
        (common::last_record(&ny_serial) > written_in_chicago + 5 && n >= 3).then_some(())
    });

    // REP-7 after a round trip (found by the soak): the replica that failback's re-protect made
    // of the Chicago VM's disks is kept on disable and taken up again by a new protection, which
    // sends only the differences.
    let kept_points = item(&lab, &id)["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(lab.json(&["disable-protection", &id, "--wait"])["status"], "Succeeded");
    let again = common::protect(&lab, "fb1");
    let again = wait_protected_with_points(&lab, &again, 1);
    assert_eq!(again["existing_replica"]["source"], "KeptReplica", "REP-7: {again}");
    assert!(again["existing_replica"]["points"].as_u64().unwrap_or(0) >= kept_points as u64, "{again}");
    assert_eq!(again["target"]["host_name"], "chi1");
    let sent_again = again["stats"]["initial_bytes"].as_u64().expect("bytes sent");
    assert!(sent_again * 8 < disks, "REP-7: only the differences travel ({sent_again} of {disks})");
}
