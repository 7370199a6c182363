//! RP-1 extended: verified recovery points. Every point carries a manifest describing each disk
//! as a whole; re-reading the replica's chain finds one flipped bit in any layer, names the
//! damaged range, stays silent on healthy chains (also after retention merges) and a repair from
//! the source heals the newest point. Real QEMU 7.2 and real mutual TLS on loopback.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use ferry_repl::manifest::{GROUP_BYTES, LEAF};
use ferry_repl::{ResyncLimits, ResyncOutcome, VmReplica};

/// Flip one bit of the data the layer `path` holds for virtual offset `virt` (which must be
/// allocated in that layer). Returns the host offset, to flip it back.
fn flip_bit(path: &Path, virt: u64) -> u64 {
    let map = ferry_repl::qcow2::map_layer(path).expect("map layer");
    let e = map
        .iter()
        .find(|e| e.data && e.start <= virt && virt < e.start + e.length)
        .unwrap_or_else(|| panic!("{} holds no data at {virt}: {map:?}", path.display()));
    let host = e.offset.expect("host offset") + (virt - e.start) + 1234;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open layer");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, host).expect("read byte");
    b[0] ^= 0x08;
    f.write_all_at(&b, host).expect("write byte");
    f.sync_all().expect("sync");
    host
}

fn flip_back(path: &Path, host: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open layer");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, host).expect("read byte");
    b[0] ^= 0x08;
    f.write_all_at(&b, host).expect("write byte");
}

/// (point, damaged offsets) for every point of the replica.
async fn verify_all(rep: &VmReplica) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    for p in rep.recovery_points().expect("points") {
        let (id, check) = rep.verify_point(&p.id, None).await.expect("verify");
        assert!(check.sealed, "point {id} has a manifest");
        out.push((id, check.damage.iter().map(|d| d.offset).collect()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_1_verification_finds_a_flipped_bit_in_any_layer_and_a_repair_heals_the_newest_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    // Three groups: [0, 64 MiB), [64, 128 MiB), [128, 160 MiB).
    let vm = start_vm(dir.path(), "vf", &[("vda", 160 * MIB)], false).await;
    vm.write("vda", 0, 2 * MIB, 0x11).await;
    vm.write("vda", 100 * MIB, MIB, 0x22).await;
    vm.write("vda", 150 * MIB, MIB, 0x33).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-vf", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("initial");
    vm.write("vda", 100 * MIB + LEAF, LEAF, 0x44).await;
    p.run_cycle(false).await.expect("cycle 1");
    vm.write("vda", 10 * MIB, MIB, 0x55).await;
    p.run_cycle(false).await.expect("cycle 2");
    assert_latest_identical(&rx, "vm-vf", &vm).await;
    let rep = rx.store().vm("vm-vf").await.expect("replica");
    let points: Vec<String> = rep.recovery_points().expect("points").into_iter().map(|p| p.id).collect();
    assert_eq!(points.len(), 3);

    // Healthy chain: silent.
    for (id, damage) in verify_all(&rep).await {
        assert!(damage.is_empty(), "healthy point {id} reported {damage:?}");
    }

    // A bit flipped in the base layer, in data no later point overwrote: every point sees it,
    // in the last group.
    let base = rep.point_file(&points[0], "vda").expect("base file");
    let host = flip_bit(&base, 150 * MIB);
    for (id, damage) in verify_all(&rep).await {
        assert_eq!(damage, vec![2 * GROUP_BYTES], "point {id}: the damaged group is named");
    }
    let recorded = rep.recovery_points().expect("points");
    assert!(recorded.iter().all(|p| p.check.as_ref().is_some_and(|c| !c.ok())), "the result is kept with the point");
    flip_back(&base, host);
    for (id, damage) in verify_all(&rep).await {
        assert!(damage.is_empty(), "point {id} after the bit was restored: {damage:?}");
    }

    // A bit flipped in the newest layer: only the newest point is damaged.
    let top = rep.point_file(&points[2], "vda").expect("top file");
    flip_bit(&top, 10 * MIB);
    let found = verify_all(&rep).await;
    assert_eq!(found[0].1, Vec::<u64>::new());
    assert_eq!(found[1].1, Vec::<u64>::new());
    assert_eq!(found[2].1, vec![0], "the newest point's first group");

    // Repair from the source: the comparison finds the damaged block and sends it as a new point,
    // which verifies; the damaged point stays marked.
    let out = p.resync(&ResyncLimits::default()).await.expect("repair");
    let ResyncOutcome::Completed { differing_blocks, .. } = out else { panic!("expected completion: {out:?}") };
    assert_eq!(differing_blocks, 1, "only the damaged block travels");
    let after = verify_all(&rep).await;
    assert_eq!(after.len(), 4);
    assert_eq!(after[3].1, Vec::<u64>::new(), "the repaired newest point verifies");
    assert_eq!(after[2].1, vec![0], "the damaged point is still reported, never served silently");
    assert_latest_identical(&rx, "vm-vf", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_1_rp_2_manifests_stay_valid_across_retention_merges_and_an_inconsistent_leaf_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "vm2", &[("vda", 64 * MIB), ("vdb", 96 * MIB)], false).await;
    vm.write("vda", 0, MIB, 0x01).await;
    vm.write("vdb", 70 * MIB, MIB, 0x02).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-m2", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("initial");
    for i in 0..5u64 {
        vm.write("vda", (i * 7 % 60) * MIB, LEAF, 0x10 + i as u8).await;
        vm.write("vdb", (i * 13 % 90) * MIB, 2 * LEAF, 0x20 + i as u8).await;
        p.run_cycle(false).await.expect("cycle");
    }
    let rep = rx.store().vm("vm-m2").await.expect("replica");
    // A short chain limit: the older points merge into the base.
    let out = rep.apply_retention(24, 3).await.expect("retention");
    assert!(!out.merged.is_empty(), "{out:?}");
    let left = rep.recovery_points().expect("points");
    assert_eq!(left.len(), 6 - out.merged.len());
    for (id, damage) in verify_all(&rep).await {
        assert!(damage.is_empty(), "point {id} after merges: {damage:?}");
    }
    let manifests = std::fs::read_dir(rep.dir().join("manifests")).expect("manifests").count();
    assert_eq!(manifests, left.len(), "a merged point's manifest is deleted");

    // A leaf table left inconsistent (a crash while it was rewritten): the groups the next cycle
    // touches are checked against the previous manifest and re-read from the chain, not trusted.
    let table = rep.dir().join("leaves-vdb.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&table).expect("table");
    f.write_all_at(&[0xffu8; 64], 32).expect("garbage leaves");
    drop(f);
    vm.write("vdb", 5 * MIB, LEAF, 0x77).await;
    p.run_cycle(false).await.expect("cycle after the interrupted table");
    assert_latest_identical(&rx, "vm-m2", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_1_a_new_point_is_verified_where_it_differs_from_an_exact_one_and_in_full_periodically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "inc", &[("vda", 160 * MIB)], false).await;
    for g in 0..3u64 {
        vm.write("vda", g * 64 * MIB, MIB, 0x10 + g as u8).await;
    }
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-inc", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("initial");
    let rep = rx.store().vm("vm-inc").await.expect("replica");
    let p0 = rep.recovery_points().expect("points")[0].id.clone();
    let (_, full) = rep.verify_point(&p0, None).await.expect("verify p0");
    assert!(full.ok() && full.since.is_none());
    // The next cycle changes group 1 only.
    vm.write("vda", 70 * MIB, MIB, 0x77).await;
    p.run_cycle(false).await.expect("cycle");
    let p1 = rep.recovery_points().expect("points")[1].id.clone();
    let (_, inc) = rep.verify_point_since(&p1, Some(&p0), None).await.expect("incremental");
    assert!(inc.ok(), "{inc:?}");
    assert_eq!(inc.since.as_deref(), Some(p0.as_str()));
    assert!(
        inc.bytes_read <= GROUP_BYTES && inc.bytes_read < full.bytes_read,
        "only group 1 is read: {inc:?} vs {full:?}"
    );

    // Damage where the point changed is found incrementally; damage in data it shares with the
    // exact point is left to the full pass, which finds both.
    flip_bit(&rep.point_file(&p1, "vda").expect("top"), 70 * MIB);
    flip_bit(&rep.point_file(&p0, "vda").expect("base"), 128 * MIB);
    let (_, inc) = rep.verify_point_since(&p1, Some(&p0), None).await.expect("incremental");
    assert_eq!(inc.damage.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![GROUP_BYTES]);
    let (_, full) = rep.verify_point(&p1, None).await.expect("full");
    assert_eq!(full.damage.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![GROUP_BYTES, 2 * GROUP_BYTES]);
    // A point known damaged is no base for an incremental check: the whole point is read.
    let (_, again) = rep.verify_point_since(&p1, Some(&p1), None).await.expect("since a damaged point");
    assert!(again.since.is_none() && again.damage.len() == 2, "{again:?}");
}

/// SEC-3: a replica whose catalogue names a layer that is missing, cut short or reading through
/// the wrong backing file is found by the chain check (metadata only; silent on a healthy chain,
/// also after retention merges); the points reading through the broken layer are marked
/// damaged and refused for a failover or a test with the reason, before anything changes; the
/// points below it stay usable; a repair (REP-6) sets the unreadable points aside and sends only
/// what differs from the newest intact point; a broken base needs a full copy and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_rep_6_a_broken_replica_chain_is_found_refused_before_failover_and_healed_by_a_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "vc", &[("vda", 32 * MIB), ("vdb", 32 * MIB)], false).await;
    vm.write("vda", 0, MIB, 0x01).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-c", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("initial");
    for i in 0..5u64 {
        vm.write("vdb", i * 3 * MIB, MIB, 0x40 + i as u8).await;
        p.run_cycle(false).await.expect("cycle");
    }
    let rep = rx.store().vm("vm-c").await.expect("replica");
    let points: Vec<String> = rep.recovery_points().expect("points").into_iter().map(|p| p.id).collect();
    assert_eq!(points.len(), 6, "{points:?}");
    assert!(rep.chain_faults().expect("check").is_empty(), "a healthy chain");
    assert!(rep.check_chains().await.expect("check").is_empty());

    // The newest vdb layer made to read through the base, skipping the layers between.
    let top = rep.point_file(points.last().expect("points"), "vdb").expect("top");
    let below = rep.chain(points.last().expect("points"), "vdb").expect("chain")[1].clone();
    let base_vdb = rep.point_file(&points[0], "vdb").expect("base vdb");
    let rebase = |onto: &std::path::Path| {
        let name = onto.file_name().expect("name").to_string_lossy().into_owned();
        let out = std::process::Command::new("qemu-img")
            .args(["rebase", "-u", "-F", "qcow2", "-b", &name])
            .arg(&top)
            .output()
            .expect("qemu-img");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    rebase(&base_vdb);
    let faults = rep.chain_faults().expect("check");
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert!(faults[0].1[0].detail.contains("reads through"), "{faults:?}");
    rebase(&below);
    assert!(rep.chain_faults().expect("check").is_empty());

    // A middle layer of vdb goes missing: that point and every newer one read through it.
    let k = points.len() - 2;
    let layer = rep.point_file(&points[k], "vdb").expect("layer");
    std::fs::remove_file(&layer).expect("lose the layer");
    let faults = rep.chain_faults().expect("check");
    let named: Vec<&str> = faults.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(named, points[k..].iter().map(String::as_str).collect::<Vec<_>>(), "{faults:?}");
    assert!(faults[0].1.iter().all(|d| d.target == "vdb" && d.detail.contains("is missing")), "{faults:?}");

    // Failover and test on a broken point: refused with the reason, nothing recorded.
    let dest = dir.path().join("failover");
    let err = rep.begin_failover(&points[k + 1], &dest).await.expect_err("refused").to_string();
    assert!(err.contains("chain on the replica is broken") && err.contains("is missing"), "{err}");
    assert_eq!(rep.failover_point().expect("catalogue"), None, "no failover recorded");
    let err = rep.overlay_for_test("latest", &dir.path().join("t1")).await.expect_err("refused").to_string();
    assert!(err.contains("chain on the replica is broken"), "{err}");
    // The check is recorded with the points (the item's health reads it).
    let marked: Vec<String> = rep
        .recovery_points()
        .expect("points")
        .into_iter()
        .filter(|p| p.check.as_ref().is_some_and(|c| !c.damage.is_empty()))
        .map(|p| p.id)
        .collect();
    assert_eq!(marked, points[k..].to_vec());
    // An older point is intact and usable.
    let ov = rep.overlay_for_test(&points[k - 1], &dir.path().join("t2")).await.expect("older point usable");
    rep.release_test(&ov).await.expect("release");

    // REP-6 heals it: the unreadable points are set aside, the resync compares the disks with
    // the newest intact point and sends only what differs; the new point verifies.
    vm.write("vdb", 20 * MIB, MIB, 0x66).await;
    let out = p.resync(&ResyncLimits::default()).await.expect("repair");
    assert!(matches!(out, ResyncOutcome::Completed { .. }), "{out:?}");
    let now: Vec<String> = rep.recovery_points().expect("points").into_iter().map(|p| p.id).collect();
    assert_eq!(now.len(), k + 1, "{now:?}");
    assert_eq!(now[..k], points[..k], "the intact points stay");
    assert!(rep.chain_faults().expect("check").is_empty(), "healed");
    let (_, check) = rep.verify_point(&now[k], None).await.expect("verify");
    assert!(check.ok(), "the repaired point verifies: {check:?}");
    assert_latest_identical(&rx, "vm-c", &vm).await;

    // Retention merges keep the chain intact.
    let merged = rep.apply_retention(24, 3).await.expect("retention").merged;
    assert!(!merged.is_empty());
    assert!(rep.chain_faults().expect("check").is_empty(), "a healthy chain after merges");
    let points: Vec<String> = rep.recovery_points().expect("points").into_iter().map(|p| p.id).collect();

    // The base layer cut short: every point reads through it, and a repair says that only a
    // full copy helps.
    let base = rep.point_file(&points[0], "vda").expect("base");
    let len = std::fs::metadata(&base).expect("stat").len();
    let f = std::fs::OpenOptions::new().write(true).open(&base).expect("open");
    f.set_len(len / 2).expect("cut short");
    drop(f);
    let faults = rep.chain_faults().expect("check");
    assert_eq!(faults.len(), points.len(), "every point reads through the base: {faults:?}");
    let err = p.resync(&ResyncLimits::default()).await.expect_err("no intact point to start from");
    let text = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(text.contains("base of the replica's chain is broken"), "{text}");
}
