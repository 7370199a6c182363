//! SEC-1 / REP-3: a deployment in which every host has its own address. Each host agent and its
//! VMs run in a network namespace of their own, joined by veth pairs to a bridge on which the
//! site managers listen (`ferry lab --netns`): hosts join their sites at that address, replicate
//! host to host across the bridge, and a planned failover loses no record; when the lab stops,
//! none of its namespaces, veths or bridges is left.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

fn netns_of(pid: u32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("network namespace")
}

fn leftovers(prefix: &str) -> Vec<String> {
    let ns = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip").stdout;
    let links = std::process::Command::new("ip").args(["-o", "link", "show"]).output().expect("ip").stdout;
    let mut out: Vec<String> = String::from_utf8_lossy(&ns)
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .map(|l| format!("namespace {l}"))
        .collect();
    // The bridge and the root ends of the hosts' veths, by their exact names.
    let ours: Vec<String> = std::iter::once(format!("{prefix}lnk"))
        .chain(["ny1", "ny2", "ny3", "chi1", "chi2"].iter().map(|h| format!("{prefix}v{h}")))
        .collect();
    for l in String::from_utf8_lossy(&links).lines() {
        let name = l.split(':').nth(1).unwrap_or("").trim().split('@').next().unwrap_or("").to_string();
        if ours.contains(&name) {
            out.push(format!("link {name}"));
        }
    }
    out
}

#[test]
fn sec_1_rep_3_hosts_at_their_own_addresses_join_replicate_and_fail_over() {
    let lab = Lab::start(LabOptions { netns: true, test_copy_interval_ms: Some(1500), ..Default::default() });
    let prefix = lab.bridge_prefix.clone();
    let root = netns_of(std::process::id());
    for h in ["ny1", "chi1"] {
        assert_ne!(netns_of(lab.pid(&format!("host-{h}"))), root, "{h} runs in a namespace of its own");
    }
    // The replica host receives at its namespace's address, not on loopback.
    let chi1 = lab.replication_address("chi1");
    assert!(chi1.starts_with("10.") && !chi1.starts_with("127."), "{chi1}");
    assert_ne!(chi1.rsplit_once(':').map(|a| a.0), lab.replication_address("ny1").rsplit_once(':').map(|a| a.0));

    let serial = common::guest_vm(&lab, "nx1", 8, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "nx1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);
    // The VM's QEMU runs in its host's namespace.
    let qemu: u32 = std::fs::read_to_string(lab.host_data("ny1").join("vms/nx1/qemu.pid"))
        .expect("qemu pid")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(netns_of(qemu), netns_of(lab.pid("host-ny1")));

    let job = lab.json(&["planned-failover", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
    let last_written =
        ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(&serial).expect("serial"))
            .expect("records");
    let rserial = lab.host_data("chi1").join("vms/nx1/serial.log");
    let found = lab.wait_for("the recovered guest to report its records", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&rserial).unwrap_or_default();
        text.lines().find_map(|l| l.trim().strip_prefix("FERRY FOUND ").and_then(|n| n.trim().parse::<u64>().ok()))
    });
    assert_eq!(found, last_written, "no record written before the shutdown is lost");
    assert_eq!(lab.json(&["failover-commit", &id, "--wait"])["status"], "Succeeded");

    assert!(!leftovers(&prefix).is_empty(), "the lab's namespaces exist while it runs");
    drop(lab);
    assert_eq!(leftovers(&prefix), Vec::<String>::new(), "nothing of the lab's network is left");
}
