//! REP-3 / REP-4 end to end, on a test guest writing records while replication runs: the replica
//! agent killed while it applies a cycle, the primary agent killed while its cycle's capture is
//! being sent, and the connection cut in the middle of a transfer each end with replication
//! resuming by itself — no corrupt recovery point, no full resynchronization, and after a
//! graceful shutdown the newest point holds every record the guest wrote.
//!
//! The hosts' bandwidth is limited (CAP-2) so that every transfer lasts about a second: the
//! test waits until the replica's log shows a cycle started and not yet recorded, then strikes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{kill9, Lab, LabOptions};

/// (cycle started, point recorded) for `item` in a receiver's log: the cycle ids in order.
fn receiver_progress(log: &Path, item: &str) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut started = Vec::new();
    let mut recorded = Vec::new();
    for l in text.lines().map(common::strip_ansi).filter(|l| l.contains(&format!("vm={item}"))) {
        let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k).map(str::to_string));
        if l.contains("Cycle started") {
            started.extend(field("cycle="));
        } else if l.contains("Recovery point recorded") {
            recorded.extend(field("point=rp-"));
        }
    }
    (started, recorded)
}

/// Wait until the receiver logging to `log` has started a cycle of `item` it has not recorded.
fn wait_mid_transfer(lab: &Lab, log: &Path, item: &str) {
    lab.wait_for("a transfer in progress", Duration::from_secs(120), || {
        let (started, recorded) = receiver_progress(log, item);
        started.last().filter(|c| !recorded.contains(c)).map(|_| ())
    });
}

/// Wait until the receiver logging to `log` recorded `n` more points of `item` than `before`.
fn wait_points_after(lab: &Lab, log: &Path, item: &str, n: usize) {
    lab.wait_for("replication to resume", Duration::from_secs(120), || {
        (receiver_progress(log, item).1.len() >= n).then_some(())
    });
}

fn logs(lab: &Lab, host: &str) -> Vec<PathBuf> {
    ["", "-restarted"].iter().map(|s| lab.dir.join("logs").join(format!("host-{host}{s}.log"))).collect()
}

fn text_of(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

#[test]
fn rep_3_rep_4_killed_agents_and_a_cut_connection_mid_transfer_resume_without_corrupt_points_or_resync() {
    let lab =
        Lab::start(LabOptions { test_copy_interval_ms: Some(1500), bandwidth_mib_s: Some(0.1), ..Default::default() });
    let mut def = common::guest_vm_def(&lab, "ir1", 32, None, true, "");
    let append = def["kernel_boot"]["append"].as_str().expect("append").replace("interval_ms=300", "interval_ms=100");
    def["kernel_boot"]["append"] = append.into();
    let serial = common::create_and_start(&lab, "ir1", &def);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "ir1");
    common::wait_records_and_points(&lab, &id, &serial, 5, 2);
    let [chi1_log, chi1_restarted] = <[PathBuf; 2]>::try_from(logs(&lab, "chi1")).expect("two logs");

    // 1. The replica agent dies while it applies a cycle; it comes back at its address.
    wait_mid_transfer(&lab, &chi1_log, &id);
    lab.pin_replication_address("chi1");
    kill9(lab.pid("host-chi1"));
    let _chi1 = lab.restart_host("chi1");
    wait_points_after(&lab, &chi1_restarted, &id, 2);

    // 2. The primary agent dies while its cycle is being sent (QEMU and the guest run on).
    wait_mid_transfer(&lab, &chi1_restarted, &id);
    kill9(lab.pid("host-ny1"));
    let _ny1 = lab.restart_host("ny1");
    let recorded = receiver_progress(&chi1_restarted, &id).1.len();
    wait_points_after(&lab, &chi1_restarted, &id, recorded + 2);

    // 3. The connection is cut in the middle of a transfer (both ends stay up).
    let port = lab.replication_address("chi1").rsplit(':').next().expect("port").to_string();
    let failures = || {
        let text = text_of(&logs(&lab, "ny1"));
        text.matches("Cycle transfer interrupted; resuming").count() + text.matches("ycle failed").count()
    };
    let failed_before = failures();
    let cut_at = Instant::now();
    let mut cut = false;
    while !cut && cut_at.elapsed() < Duration::from_secs(120) {
        wait_mid_transfer(&lab, &chi1_restarted, &id);
        let out = Command::new("ss").args(["-K", "-t", "dst", "127.0.0.1", "dport", "=", &format!(":{port}")]).output();
        let out = out.expect("ss runs");
        // `ss -K` lists what it closed: a line with the port is a killed connection.
        cut = String::from_utf8_lossy(&out.stdout).lines().skip(1).any(|l| l.contains(&format!(":{port}")));
    }
    assert!(cut, "a replication connection was cut");
    let recorded = receiver_progress(&chi1_restarted, &id).1.len();
    wait_points_after(&lab, &chi1_restarted, &id, recorded + 2);
    assert!(failures() > failed_before, "the sender saw the cut (and resumed the transfer or folded the cycle)");

    // No full resynchronization and no second initial copy happened.
    let all = text_of(&logs(&lab, "ny1"));
    for marker in ["resynchronizing", "resync complete", "Comparison paused"] {
        assert!(!all.contains(marker), "no resync: {marker}");
    }
    lab.wait_for("Protected", Duration::from_secs(60), || {
        (lab.json(&["item-show", &id])["state"] == "Protected").then_some(())
    });

    // After a graceful shutdown every point holds a clean prefix and the newest one all records.
    lab.json(&["vm-shutdown", "--site", "VMM-NewYork", "--host", "ny1", "ir1", "--timeout", "60"]);
    let last = common::last_record(&serial);
    lab.wait_for("the final cycle", Duration::from_secs(120), || {
        let (started, recorded) = receiver_progress(&chi1_restarted, &id);
        let newest = recorded.last()?;
        (started.last() == Some(newest) && common::records_in_point(&lab, "chi1", &id, &format!("rp-{newest}")) == last)
            .then_some(())
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let points = vm.recovery_points().expect("points");
    let initial = points.iter().filter(|p| p.kind == ferry_repl::replica::PointKind::Initial).count();
    assert_eq!(initial, 1, "one initial copy: {points:?}");
    let prefixes = common::clean_prefixes(&rt, &vm);
    assert_eq!(prefixes.last().map(|p| p.2), Some(last), "the newest point holds every record");
}
