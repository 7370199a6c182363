//! RP-1 extended in the lab: the replica host's background verifier re-reads every recovery
//! point against its manifest; `ferry point-verify` does it on demand; one flipped bit in a
//! replica layer on disk is found and named, turns the item's health Critical, a test failover
//! refuses the damaged point (never served silently), and `repair-replication` heals the replica
//! from the source with a new point that verifies.

mod common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

/// Flip one bit inside the first data cluster of `layer`; false if the layer holds no data.
fn flip_bit_in_layer(layer: &std::path::Path) -> bool {
    let map = ferry_repl::qcow2::map_layer(layer).expect("map layer");
    let Some(e) = map.iter().find(|e| e.data && e.offset.is_some()) else { return false };
    let host = e.offset.expect("offset") + 777;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(layer).expect("open layer");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, host).expect("read");
    b[0] ^= 0x10;
    f.write_all_at(&b, host).expect("write");
    f.sync_all().expect("sync");
    true
}

#[test]
fn rp_1_a_flipped_bit_in_a_replica_is_found_turns_health_critical_and_a_repair_heals_it() {
    let lab = Lab::start(LabOptions {
        test_copy_interval_ms: Some(1500),
        verify_period_secs: Some(20),
        ..Default::default()
    });
    let serial = common::guest_vm(&lab, "pv1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "pv1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 3);

    // The background verifier re-reads points on its own; the vault hears of it.
    lab.wait_for("the background verifier to verify a point", Duration::from_secs(90), || {
        item(&lab, &id)["recovery_points"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["verification"]["ok"] == true))
            .then_some(())
    });
    // On demand: every point verifies.
    let (code, out, err) = lab.cli(&["point-verify", &id, "--wait"]);
    assert_eq!(code, 0, "healthy replica: {out}{err}");

    // No new points while the bit is flipped: the damage stays in the newest points.
    assert_eq!(lab.json(&["pause-replication", &id, "--wait"])["status"], "Succeeded");
    std::thread::sleep(Duration::from_secs(3));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let points = vm.recovery_points().expect("points");
    let damaged = points
        .iter()
        .rev()
        .find(|p| flip_bit_in_layer(&vm.point_file(&p.id, "vdb").expect("layer")))
        .map(|p| p.id.clone())
        .expect("a point whose layer holds data");

    let (code, out, err) = lab.cli(&["point-verify", &id, "--wait"]);
    assert_ne!(code, 0, "a damaged replica fails the verification: {out}");
    assert!(err.contains("failed verification"), "{err}");
    assert!(out.contains(&damaged) && out.contains("vdb"), "the damaged point and disk are named: {out}");
    lab.wait_for("health Critical with the damaged point named", Duration::from_secs(30), || {
        let it = item(&lab, &id);
        (it["health"] == "Critical"
            && it["health_reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r.as_str().is_some_and(|r| r.starts_with("ReplicaDamaged")))))
        .then_some(())
    });

    // Repair from the source: the newest point verifies again and health leaves Critical; the
    // damaged point stays reported.
    assert_eq!(lab.json(&["resume-replication", &id, "--wait"])["status"], "Succeeded");
    // The replica host's metrics count it.
    let m = common::host_metrics(&lab, "chi1");
    let damaged_line = format!("ferry_replica_recovery_points_damaged{{host=\"chi1\",item=\"{id}\",role=\"target\"}}");
    let n = m
        .lines()
        .find_map(|l| l.strip_prefix(&damaged_line).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("no {damaged_line} in\n{m}"));
    assert!(n >= 1.0, "{n}");

    // Never served silently: a drill on the damaged point is refused with the reason.
    let (code, out, err) = lab.cli(&["test-failover", &id, "--point", &damaged, "--wait"]);
    assert!(code != 0 || out.contains("Failed"), "{out}{err}");
    assert!(format!("{out}{err}").contains("failed verification"), "{out}{err}");

    assert_eq!(lab.json(&["repair-replication", &id, "--wait"])["status"], "Succeeded");
    lab.wait_for("a repaired newest point that verifies", Duration::from_secs(120), || {
        let (code, _, _) = lab.cli(&["point-verify", &id, "--point", "latest", "--wait"]);
        (code == 0).then_some(())
    });
    lab.wait_for("health to leave Critical", Duration::from_secs(60), || {
        let it = item(&lab, &id);
        (it["health"] != "Critical").then_some(it)
    });
    let it = item(&lab, &id);
    let still = it["recovery_points"].as_array().and_then(|a| a.iter().find(|p| p["id"] == damaged.as_str())).cloned();
    if let Some(p) = still {
        assert_eq!(p["verification"]["ok"], false, "the damaged point is still marked: {p}");
    }
}

#[test]
fn rp_3_any_point_becomes_standalone_images_that_hold_its_records() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "pi1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "pi1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 3);
    let points = item(&lab, &id)["recovery_points"].as_array().cloned().expect("points");
    let point = points[points.len() - 2]["id"].as_str().expect("point").to_string();
    let expected = common::records_in_point(&lab, "chi1", &id, &point);
    let storage = lab.storage("chi1", "gold_target");

    // Raw: the guest's records of exactly that point.
    let raw_dir = storage.join("restore-raw");
    let (code, out, err) = lab.cli(&[
        "point-image",
        &id,
        "--point",
        &point,
        "--format",
        "raw",
        "--path",
        raw_dir.to_str().expect("path"),
        "--wait",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&point), "{out}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(ferry_qemu::guest_records::verify_image(&raw_dir.join("vdb.raw"))).expect("records");
    assert_eq!(report.clean_prefix_len, expected, "the image holds the point's records: {report:?}");
    assert!(report.corrupted.is_empty());

    // qcow2: a standalone image, no backing file.
    let q_dir = storage.join("restore-qcow2");
    let (code, out, err) = lab.cli(&["point-image", &id, "--path", q_dir.to_str().expect("path"), "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    for disk in ["vda", "vdb"] {
        let info = rt.block_on(ferry_qemu::img::info(&q_dir.join(format!("{disk}.qcow2")), true)).expect("info");
        assert!(info.backing_filename.is_none(), "{disk} stands alone: {info:?}");
    }

    // Bad input: a folder outside the host's storage, or one that exists, changes nothing.
    let outside = lab.dir.join("not-storage").join("img");
    let (code, out, err) = lab.cli(&["point-image", &id, "--path", outside.to_str().expect("path"), "--wait"]);
    assert_ne!(code, 0, "{out}");
    assert!(format!("{out}{err}").contains("storage locations"), "{out}{err}");
    assert!(!outside.exists());
    let (code, out, err) = lab.cli(&["point-image", &id, "--path", q_dir.to_str().expect("path"), "--wait"]);
    assert_ne!(code, 0, "{out}");
    assert!(format!("{out}{err}").contains("exists already"), "{out}{err}");
    // The point is released: no image export holds it in use any more.
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let held: Vec<String> = vm
        .recovery_points()
        .expect("points")
        .into_iter()
        .flat_map(|p| p.in_use)
        .filter(|t| t.starts_with("image:"))
        .collect();
    assert!(held.is_empty(), "{held:?}");
}

/// SEC-3: a replica layer deleted while the replica host was down is found by the chain check
/// at its start: the item turns Critical naming the point, a test failover on a point reading
/// through the missing layer is refused with the reason, an older point whose chain is intact
/// still serves a drill, and a repair heals the replica.
#[test]
fn sec_3_rep_6_a_replica_layer_lost_while_the_host_was_down_is_found_at_start_refused_and_repaired() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "pc1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "pc1");
    common::wait_records_and_points(&lab, &id, &serial, 6, 4);
    assert_eq!(lab.json(&["pause-replication", &id, "--wait"])["status"], "Succeeded");
    assert_ne!(item(&lab, &id)["health"], "Critical", "healthy before");

    lab.pin_replication_address("chi1");
    common::kill9(lab.pid("host-chi1"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let points: Vec<String> = vm.recovery_points().expect("points").into_iter().map(|p| p.id).collect();
    assert!(points.len() >= 3, "{points:?}");
    let broken = points[points.len() - 2].clone();
    std::fs::remove_file(vm.point_file(&broken, "vdb").expect("layer")).expect("lose the layer");
    let _chi1 = lab.restart_host("chi1");

    lab.wait_for("health Critical naming the broken point", Duration::from_secs(60), || {
        let it = item(&lab, &id);
        (it["health"] == "Critical"
            && it["health_reasons"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r.as_str().is_some_and(|r| r.starts_with("ReplicaDamaged") && r.contains("is missing")))
            }))
        .then_some(())
    });
    let (code, out, err) = lab.cli(&["test-failover", &id, "--point", "latest", "--wait"]);
    assert!(code != 0 || out.contains("Failed"), "{out}{err}");
    assert!(format!("{out}{err}").contains("chain on the replica is broken"), "{out}{err}");
    // The refused drill is cleaned up like any failed one (nothing was created).
    let job = lab.json(&["test-failover-cleanup", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");

    // The point below the lost layer serves a drill.
    let older = &points[points.len() - 3];
    let job = lab.json(&["test-failover", &id, "--point", older, "--network", "none", "--wait"]);
    assert_eq!(job["status"], "WaitingForInput", "the test VM runs: {job}");
    let job = lab.json(&["test-failover-cleanup", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");

    // REP-6: a repair heals it — the unreadable points are set aside, the source's disks are
    // compared with the newest intact point; health leaves Critical and the latest point serves
    // a drill again.
    assert_eq!(lab.json(&["resume-replication", &id, "--wait"])["status"], "Succeeded");
    assert_eq!(lab.json(&["repair-replication", &id, "--wait"])["status"], "Succeeded");
    lab.wait_for("health to leave Critical after the repair", Duration::from_secs(90), || {
        let it = item(&lab, &id);
        (it["health"] != "Critical").then_some(it)
    });
    let listed: Vec<String> = item(&lab, &id)["recovery_points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect();
    assert!(!listed.contains(&broken), "the unreadable point is gone: {listed:?}");
    let job = lab.json(&["test-failover", &id, "--point", "latest", "--network", "none", "--wait"]);
    assert_eq!(job["status"], "WaitingForInput", "the latest point serves a drill: {job}");
    let job = lab.json(&["test-failover-cleanup", &id, "--wait"]);
    assert_eq!(job["status"], "Succeeded", "{job}");
}
