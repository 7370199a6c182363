//! Replication through the whole control plane (REP-1, REP-2, REP-3, RP-1, STO-2, NET-2..4):
//! a test-guest VM writing checksummed records is protected from ny1 to chi1; every recovery
//! point holds a clean prefix of records, and after a graceful shutdown the latest point has
//! every record the guest wrote.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::{json, Value};

fn item(lab: &Lab, name: &str) -> Value {
    lab.json(&["item-show", name])
}

#[test]
fn rep_1_protected_guest_replicates_with_crash_consistent_points_and_no_loss_at_shutdown() {
    let guest = common::test_guest();
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let gold = lab.storage("ny1", "gold");
    let def = json!({
        "name": "rep1", "vcpus": 1, "memory_mib": 256,
        "disks": [
            {"target": "vda", "path": gold.join("rep1-vda.qcow2"), "format": "qcow2", "create_size": 32u64 << 20},
            {"target": "vdb", "path": gold.join("rep1-vdb.qcow2"), "format": "qcow2", "create_size": 16u64 << 20}
        ],
        "nics": [{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": "10.11.0.10"}],
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
        &lab.vm_def("rep1", &def).display().to_string(),
    ]);
    lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "rep1"]);
    lab.wait_for("the VM in the vault's inventory", Duration::from_secs(30), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"].as_array().is_some_and(|a| a.iter().any(|v| v["name"] == "rep1")).then_some(())
    });
    lab.json(&[
        "policy-create",
        "--name",
        "gold",
        "--copy-frequency",
        "30",
        "--retention-hours",
        "1",
        "--associate",
        "VMM-NewYork/GoldCloud1=VMM-Chicago/GoldCloud2",
    ]);
    common::map_network1(&lab);
    lab.json(&["storage-map-create", "--source", "VMM-NewYork/GOLD", "--target", "VMM-Chicago/GOLD_TARGET"]);
    lab.wait_for("the pair to be configured", Duration::from_secs(30), || {
        let jobs = lab.json(&["job-list", "--operation", "ConfigureCloudPair"]);
        (jobs["items"][0]["status"] == "Succeeded").then_some(())
    });

    // REP-1: an Enable protection job with its tasks.
    let enabled = lab.json(&["protect", "--site", "VMM-NewYork", "rep1", "--wait"]);
    let id = enabled[0]["id"].as_str().expect("item id").to_string();
    let jobs = lab.json(&["job-list", "--operation", "EnableProtection"]);
    let job = &jobs["items"][0];
    assert_eq!(job["status"], "Succeeded");
    let tasks: Vec<&str> = job["tasks"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(tasks, vec!["Check prerequisites", "Prepare replica on target host", "Start initial replication"]);

    // Placement and NICs follow the mappings.
    let it = item(&lab, &id);
    assert_eq!(it["target"]["host_name"], "chi1");
    for d in it["disks"].as_array().expect("disks") {
        assert!(d["location"].as_str().is_some_and(|l| l.ends_with("chi1/gold_target")), "STO-2: {d}");
        assert_eq!(d["placement"], "Mapped");
    }
    let chicago_nets = lab.json(&["network-list", "--site", "VMM-Chicago"]);
    let vmn1 = chicago_nets
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "VMNetwork1-Chicago"))
        .map(|n| n["id"].clone());
    assert_eq!(Some(it["nics"][0]["target_network"].clone()), vmn1, "NET-2: mapped network");
    assert_eq!(it["nics"][0]["subnet"], "Subnet1", "NET-3: same subnet name");
    assert_eq!(it["nics"][0]["ip"], "10.21.0.10", "NET-4: 10.11.0.10 is outside Chicago's pool: first free address");

    // Initial replication completes: Protected, Finalize protection job, points accumulate.
    lab.wait_for("Protected", Duration::from_secs(120), || (item(&lab, &id)["state"] == "Protected").then_some(()));
    let fin = lab.json(&["job-list", "--operation", "FinalizeProtection"]);
    assert_eq!(fin["items"][0]["status"], "Succeeded");
    lab.wait_for("several recovery points", Duration::from_secs(120), || {
        (item(&lab, &id)["recovery_points"].as_array().map(Vec::len).unwrap_or(0) >= 4).then_some(())
    });
    let serial = lab.host_data("ny1").join("vms/rep1/serial.log");
    lab.wait_for("records written", Duration::from_secs(120), || {
        ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(&serial).unwrap_or_default())
            .filter(|n| *n >= 10)
    });
    // The newest point on the replica trails the primary by at most two copy frequencies
    // (the test interval stands for the copy frequency here).
    let interval = Duration::from_millis(1500);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("replica store");
    let mut trails = Vec::new();
    for _ in 0..12 {
        let newest = rt.block_on(store.vm(&id)).expect("replica").recovery_points().expect("points");
        let at = newest.last().expect("a point").time;
        trails.push((chrono::Utc::now() - at).to_std().unwrap_or_default());
        std::thread::sleep(Duration::from_millis(700));
    }
    let worst = trails.iter().max().copied().unwrap_or_default();
    eprintln!("trail of the newest point behind the primary: worst {worst:?} of {trails:?}");
    assert!(worst <= 2 * interval, "the newest point trails by at most two copy frequencies: {trails:?}");
    let it = item(&lab, &id);
    assert_eq!(it["health"], "Normal", "{it}");
    assert!(it["stats"]["cycles_ok"].as_u64().unwrap_or(0) >= 3);

    // Graceful shutdown; the next cycles carry the final state.
    lab.json(&["vm-shutdown", "--site", "VMM-NewYork", "--host", "ny1", "rep1", "--timeout", "60"]);
    let last_rec = ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(&serial).expect("serial"))
        .expect("records");
    // The shutdown ran a final cycle before QEMU stopped; let the reports settle.
    std::thread::sleep(Duration::from_secs(4));

    // Every recovery point holds a clean prefix of records (crash consistency); the latest one
    // holds every record the guest wrote (no loss).
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let points = vm.recovery_points().expect("points");
    assert!(points.len() >= 4);
    let listed: Vec<String> = item(&lab, &id)["recovery_points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect();
    let stored: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
    assert!(
        stored.ends_with(&listed[listed.len().saturating_sub(2)..]) || listed == stored,
        "RP-1: the vault lists the replica's points: {listed:?} vs {stored:?}"
    );
    let seen = common::clean_prefixes(&rt, &vm);
    let prev = seen.last().map_or(0, |p| p.2);
    let host_log = std::fs::read_to_string(lab.dir.join("logs/host-ny1.log")).unwrap_or_default();
    let notes: Vec<&str> = host_log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    assert_eq!(prev, last_rec, "the latest point has every record written before shutdown; host warnings: {notes:#?}; points: {seen:?}; host log: {}", host_log.lines().rev().take(30).collect::<Vec<_>>().join("\n"));
}
