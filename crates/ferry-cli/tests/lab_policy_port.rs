//! POL-2: hosts listen at the replication port of their policy (not at a port of their own
//! file), and an edit of the policy's port moves every host of the pair: the replica host
//! listens at the new port and no longer at the old one, and its sources follow it, found
//! through their sites and the vault.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn listens(ip: &str, port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&format!("{ip}:{port}").parse().expect("addr"), Duration::from_secs(2)).is_ok()
}

#[test]
fn pol_2_hosts_listen_at_the_policy_port_and_follow_its_edit() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(2000), policy_ports: true, ..Default::default() });
    let first = free_port();
    let serial = common::guest_vm(&lab, "port1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30", "--port", &first.to_string()]);
    let id = common::protect(&lab, "port1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);
    // chi1 listens on its own loopback address, at the policy's port.
    let chi1_ip = lab
        .replication_address("chi1")
        .rsplit_once(':')
        .map(|(ip, _)| ip.to_string())
        .expect("chi1's replication address");
    assert_ne!(chi1_ip, "127.0.0.1", "each lab host has an address of its own");
    lab.wait_for("chi1 to listen at the policy's port", Duration::from_secs(30), || {
        listens(&chi1_ip, first).then_some(())
    });

    // The policy's port changes: chi1 moves, ny1 follows, points keep coming.
    let second = free_port();
    let (code, out, err) = lab.cli(&[
        "policy-update",
        "gold",
        "--name",
        "gold",
        "--copy-frequency",
        "30",
        "--port",
        &second.to_string(),
        "--wait",
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    lab.wait_for("chi1 to listen at the new port", Duration::from_secs(30), || listens(&chi1_ip, second).then_some(()));
    lab.wait_for("chi1 to stop listening at the old port", Duration::from_secs(30), || {
        (!listens(&chi1_ip, first)).then_some(())
    });
    let points = lab.json(&["item-show", &id])["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
    let it = lab.wait_for("new points through the new port", Duration::from_secs(60), || {
        let it = lab.json(&["item-show", &id]);
        (it["recovery_points"].as_array().map(Vec::len).unwrap_or(0) >= points + 2).then_some(it)
    });
    assert_eq!(it["health"], "Normal", "{it}");
    // The source resolves the replica host at the policy's new port once chi1 reported it (until
    // then it may use chi1's first listener, which stays).
    lab.wait_for("ny1 to follow chi1 to the new port", Duration::from_secs(30), || {
        let ny1 = std::fs::read_to_string(lab.dir.join("logs/host-ny1.log")).unwrap_or_default();
        ny1.lines()
            .map(common::strip_ansi)
            .any(|l| l.contains("listens at a new address") && l.contains(&format!("to={chi1_ip}:{second}")))
            .then_some(())
    });
    let before = lab.json(&["item-show", &id])["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
    lab.wait_for("points through the policy's port", Duration::from_secs(60), || {
        let n = lab.json(&["item-show", &id])["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
        (n >= before + 2).then_some(())
    });
}
