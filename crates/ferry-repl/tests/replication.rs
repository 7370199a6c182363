//! REP / RP / POL / CAP: the data plane against real QEMU 7.2 processes (VMs without OS, written
//! through HMP qemu-io) and real mutual TLS on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_qemu::DiskFormat;
use ferry_repl::send::Fault;
use ferry_repl::{ErrorKind, Limiter, RateSchedule, ResyncLimits, ResyncOutcome, TrackingState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_2_initial_replication_copies_allocated_data_at_one_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "ir", &[("vda", 128 * MIB)], false).await;
    vm.write("vda", 0, 4 * MIB, 0x11).await;
    vm.write("vda", 100 * MIB, 2 * MIB, 0x22).await;
    vm.io("vda").await.write_zeroes(MIB, K64).await.expect("zero");
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-ir", rx.local_addr(), &pki);
    let t = Instant::now();
    let r = p.seed_and_initial().await.expect("initial replication");
    eprintln!("initial replication of 6 MiB allocated / 128 MiB: {:?} ({:?} capture)", t.elapsed(), r.capture_time);
    assert!(r.base);
    // Only allocated data travels: 6 MiB minus the zeroed cluster.
    assert_eq!(r.send.data_bytes_sent, 6 * MIB - K64, "{r:?}");
    assert!(r.send.wire_bytes < 7 * MIB);
    assert_eq!(p.tracking().await.expect("tracking"), TrackingState::Tracking { generation: r.cycle });
    let points = rx.store().vm("vm-ir").await.expect("vm").recovery_points().expect("points");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].kind, ferry_repl::replica::PointKind::Initial);
    assert_latest_identical(&rx, "vm-ir", &vm).await;
    // Staging images are gone once the replica acknowledged.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("staging"))
        .expect("staging")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".qcow2"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_3_delta_cycle_sends_only_changed_blocks_crash_consistent_across_disks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "dc", &[("vda", 128 * MIB), ("vdb", 128 * MIB)], false).await;
    vm.write("vda", 0, 8 * MIB, 0x01).await;
    vm.write("vdb", 0, 8 * MIB, 0x02).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-dc", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("seed");
    // Scattered changes: 10 clusters on vda, 5 on vdb, one zeroed cluster on vda.
    for i in 0..10 {
        vm.write("vda", (i * 37 % 60) * MIB + K64, K64, 0xa0 + i as u8).await;
    }
    for i in 0..5 {
        vm.write("vdb", (i * 11 % 60) * MIB, K64, 0xb0 + i as u8).await;
    }
    vm.io("vda").await.write_zeroes(2 * MIB, K64).await.expect("zero");
    let r = p.run_cycle(false).await.expect("cycle");
    eprintln!("delta cycle 15 clusters: total {:?} capture {:?} send {:?}", r.total_time, r.capture_time, r.send_time);
    // 16 changed clusters; the zeroed one travels as a zero extent, without data.
    assert_eq!(r.data_bytes, 16 * K64, "{r:?}");
    assert_eq!(r.send.data_bytes_sent, 15 * K64, "{r:?}");
    assert_eq!(r.send.extents, 16, "15 data runs + 1 zero extent: {r:?}");
    assert_latest_identical(&rx, "vm-dc", &vm).await;

    // Writes race the cycles: record i goes to vda then vdb (write order kept). Every point must
    // hold a prefix of records on each disk, with vdb never ahead of vda and at most one behind.
    let records = 120u64;
    let vm2 = vm.vm.clone();
    let writer = tokio::spawn(async move {
        let ioa = ferry_qemu::iohelp::GuestIo::open(vm2.qmp(), "vda").await.expect("io");
        let iob = ferry_qemu::iohelp::GuestIo::open(vm2.qmp(), "vdb").await.expect("io");
        // HMP qemu-io opens its own BlockBackend on the node, which the backup job's
        // copy-before-write filter refuses while a job runs (guest writes through the device
        // are not affected): retry until the job is done.
        async fn write(io: &ferry_qemu::iohelp::GuestIo<'_>, off: u64, pat: u8) {
            loop {
                match io.write_pattern(off, K64, pat).await {
                    Ok(()) => return,
                    Err(e) if e.to_string().contains("Permission conflict") => {
                        tokio::time::sleep(Duration::from_millis(3)).await
                    }
                    Err(e) => panic!("write: {e}"),
                }
            }
        }
        for i in 0..records {
            let pat = (i % 250) as u8 + 1;
            write(&ioa, 64 * MIB + i * K64, pat).await;
            write(&iob, 64 * MIB + i * K64, pat).await;
        }
    });
    let mut cycles = Vec::new();
    while !writer.is_finished() {
        cycles.push(p.run_cycle(false).await.expect("racing cycle"));
    }
    writer.await.expect("writer");
    cycles.push(p.run_cycle(false).await.expect("final cycle"));
    eprintln!("{} cycles raced the writer", cycles.len());
    assert!(cycles.len() >= 2);
    let mut last_a = 0;
    for c in &cycles {
        let a = point_bytes(&rx, "vm-dc", &c.point_id, "vda", dir.path()).await;
        let b = point_bytes(&rx, "vm-dc", &c.point_id, "vdb", dir.path()).await;
        let prefix = |img: &[u8]| -> u64 {
            let mut n = 0;
            while n < records && img[(64 * MIB + n * K64) as usize] == (n % 250) as u8 + 1 {
                n += 1;
            }
            // Nothing after the prefix.
            for j in n..records {
                assert_eq!(img[(64 * MIB + j * K64) as usize], 0, "hole in the record sequence at {j}");
            }
            n
        };
        let (na, nb) = (prefix(&a), prefix(&b));
        assert!(nb <= na && na <= nb + 1, "point {}: vda has {na} records, vdb {nb}", c.point_id);
        assert!(na >= last_a);
        last_a = na;
    }
    assert_eq!(last_a, records);
    assert_latest_identical(&rx, "vm-dc", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_3_failed_transfer_folds_bitmap_into_next_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "ft", &[("vda", 64 * MIB), ("vdb", 64 * MIB)], false).await;
    let root = dir.path().join("replica");
    let rx = receiver(&root, &pki, 4).await;
    let addr = rx.local_addr();
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-ft", addr, &pki);
    p.seed_and_initial().await.expect("seed");

    // 1. The connection breaks and no retry is allowed: the cycle fails, its bitmap is folded.
    vm.write("vda", 0, 4 * MIB, 0x31).await;
    vm.write("vdb", 8 * MIB, 2 * MIB, 0x32).await;
    p.send_options_mut().retries = 0;
    p.send_options_mut().fault = Fault { cut_after_extents: Some(2) };
    let e = p.run_cycle(false).await.expect_err("cut connection");
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    assert_eq!(p.counters().missed_cycles, 1);
    assert!(p.counters().unsent_bytes > 0);
    match p.tracking().await.expect("tracking") {
        TrackingState::Tracking { .. } => {}
        s => panic!("tracking lost: {s:?}"),
    }
    p.send_options_mut().fault = Fault::default();

    // 2. The receiver dies mid-transfer (throttled so it is surely mid-way).
    vm.write("vda", 20 * MIB, 4 * MIB, 0x33).await;
    p.send_options_mut().limiter = Some(std::sync::Arc::new(Limiter::new(RateSchedule::constant(4 * MIB))));
    let vm_handle = tokio::spawn(async move {
        let r = p.run_cycle(false).await;
        (p, r)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    rx.stop().await;
    let (mut p, r) = vm_handle.await.expect("join");
    assert!(r.is_err(), "cycle must fail when the receiver dies");
    assert_eq!(p.counters().missed_cycles, 2);

    // 3. The receiver comes back (same root, same port): the next cycle ships the union.
    let rx = receiver_at(&root, &pki, 4, addr).await;
    p.send_options_mut().limiter = None;
    p.send_options_mut().retries = 3;
    vm.write("vdb", 30 * MIB, K64, 0x34).await;
    let r = p.run_cycle(false).await.expect("union cycle");
    assert!(r.data_bytes >= 10 * MIB + K64, "the union of all three writes: {r:?}");
    assert_eq!(p.counters().missed_cycles, 0);
    assert_eq!(p.counters().unsent_bytes, 0);
    assert!(p.counters().lag().expect("lag") < chrono::Duration::seconds(30));
    let points = rx.store().vm("vm-ft").await.expect("vm").recovery_points().expect("points");
    assert_eq!(points.len(), 2, "base + the union point; failed cycles left no point");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("vm-ft"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pending"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_latest_identical(&rx, "vm-ft", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_4_compression_on_and_off_give_identical_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "cz", &[("vda", 64 * MIB)], false).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-cz", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("seed");
    let (rnd, txt) = (dir.path().join("rnd"), dir.path().join("txt"));
    let mut ratios = Vec::new();
    for (round, compress) in [(0u64, false), (1, true)] {
        random_file(&rnd, MIB as usize, round);
        text_file(&txt, MIB as usize, round);
        for i in 0..4 {
            write_file(&vm, "vda", (round * 16 + i) * MIB, MIB, &rnd).await;
            write_file(&vm, "vda", (round * 16 + 8 + i) * MIB, MIB, &txt).await;
        }
        p.set_compression(compress);
        let r = p.run_cycle(false).await.expect("cycle");
        let ratio = r.send.wire_bytes as f64 / r.data_bytes as f64;
        eprintln!("compression {compress}: data {} wire {} ratio {ratio:.3}", r.data_bytes, r.send.wire_bytes);
        assert_eq!(r.data_bytes, 8 * MIB);
        ratios.push(ratio);
        assert_latest_identical(&rx, "vm-cz", &vm).await;
    }
    assert!(ratios[0] >= 1.0, "uncompressed wire bytes include the payload: {ratios:?}");
    assert!(ratios[1] < 0.8, "mixed data must compress: {ratios:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_4_resume_from_last_acknowledged_extent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "rs", &[("vda", 64 * MIB)], false).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 4).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-rs", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("seed");
    for i in 0..16 {
        vm.write("vda", i * 2 * MIB, MIB, 0x40 + i as u8).await;
    }
    p.send_options_mut().fault = Fault { cut_after_extents: Some(10) };
    let r = p.run_cycle(false).await.expect("cycle survives a broken connection");
    eprintln!("resume: {:?}", r.send);
    assert_eq!(r.send.extents, 16);
    assert_eq!(r.send.attempts, 2);
    let resumed = r.send.resumed_from[1];
    assert!((8..=10).contains(&resumed), "resumed from {resumed}, acks every 4 extents");
    assert_eq!(r.send.extents_sent, 10 + (16 - resumed));
    assert_latest_identical(&rx, "vm-rs", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_1_each_cycle_is_a_listed_recovery_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "rp", &[("vda", 64 * MIB)], false).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-rp", rx.local_addr(), &pki);
    vm.write("vda", 0, K64, 0x50).await;
    let mut ids = vec![p.seed_and_initial().await.expect("seed").point_id];
    for k in 1..4u8 {
        vm.write("vda", 0, K64, 0x50 + k).await;
        vm.write("vda", k as u64 * MIB, K64, 0x60 + k).await;
        ids.push(p.run_cycle(k == 2).await.expect("cycle").point_id);
    }
    let rep = rx.store().vm("vm-rp").await.expect("vm");
    let points = rep.recovery_points().expect("points");
    assert_eq!(points.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), ids);
    assert!(points.windows(2).all(|w| w[0].time <= w[1].time && w[0].cycle < w[1].cycle));
    assert!(points.iter().all(|p| !p.app_consistent), "no guest agent: crash-consistent only");
    assert!(points[1..].iter().all(|p| p.bytes == 2 * K64));
    // Every point still shows its own content.
    for (k, id) in ids.iter().enumerate() {
        let b = point_bytes(&rx, "vm-rp", id, "vda", dir.path()).await;
        assert_eq!(b[0], 0x50 + k as u8, "point {id}");
    }
    // A crash mid-apply leaves an unreferenced overlay: deleted on reopen, never listed.
    std::fs::write(rep.dir().join(".pending-99-vda.qcow2"), b"partial").expect("fake pending");
    std::fs::write(rep.dir().join("vda-000099.qcow2"), b"renamed, not in catalog").expect("fake");
    let rep = rx.store().vm("vm-rp").await.expect("reopen");
    assert!(!rep.dir().join(".pending-99-vda.qcow2").exists());
    assert!(!rep.dir().join("vda-000099.qcow2").exists());
    assert_eq!(rep.recovery_points().expect("points").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_2_retention_merges_oldest_and_skips_points_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "rt", &[("vda", 64 * MIB)], false).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-rt", rx.local_addr(), &pki);
    vm.write("vda", 0, MIB, 0x70).await;
    let mut ids = vec![p.seed_and_initial().await.expect("seed").point_id];
    for k in 1..6u8 {
        vm.write("vda", 0, K64, 0x70 + k).await;
        vm.write("vda", k as u64 * MIB, MIB, 0x80 + k).await;
        ids.push(p.run_cycle(false).await.expect("cycle").point_id);
    }
    let mut expected = Vec::new();
    for id in &ids {
        expected.push(blake3::hash(&point_bytes(&rx, "vm-rt", id, "vda", dir.path()).await));
    }
    let rep = rx.store().vm("vm-rt").await.expect("vm");
    // A test VM boots on point 3 (QEMU holds its chain open).
    let ov = rep.overlay_for_test(&ids[3], &dir.path().join("testfo")).await.expect("test overlay");
    let test_vm =
        start_existing(dir.path(), "rt-test", vec![("vda".into(), ov.disks[0].1.clone(), 64 * MIB)], false).await;
    test_vm.write("vda", 0, K64, 0xee).await;
    let out = rep.apply_retention(0, 48).await.expect("retention");
    eprintln!("retention with a test VM on {}: {out:?}", ids[3]);
    assert_eq!(out.merged, vec![ids[4].clone()]);
    assert_eq!(out.deferred, ids[..3].to_vec());
    let left: Vec<String> = rep.recovery_points().expect("points").into_iter().map(|p| p.id).collect();
    assert_eq!(left, vec![ids[0].clone(), ids[1].clone(), ids[2].clone(), ids[3].clone(), ids[5].clone()]);
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 4) {
        let h = blake3::hash(&point_bytes(&rx, "vm-rt", id, "vda", dir.path()).await);
        assert_eq!(h, expected[i], "point {id} changed");
    }
    // The test VM ends; now everything but the latest merges.
    test_vm.vm.hard_stop().await.expect("stop test vm");
    drop(test_vm);
    rep.release_test(&ov).await.expect("release");
    assert!(!ov.disks[0].1.exists());
    let out = rep.apply_retention(0, 48).await.expect("retention");
    assert_eq!(out.merged.len(), 4);
    let left = rep.recovery_points().expect("points");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, ids[5]);
    let top = rep.point_file(&ids[5], "vda").expect("file");
    assert!(ferry_qemu::img::check(&top).await.expect("check").is_clean());
    assert_eq!(rep.chain(&ids[5], "vda").expect("chain").len(), 1);
    assert_eq!(blake3::hash(&point_bytes(&rx, "vm-rt", &ids[5], "vda", dir.path()).await), expected[5]);
    assert_latest_identical(&rx, "vm-rt", &vm).await;
    // Replication continues on the merged chain.
    vm.write("vda", 40 * MIB, K64, 0x99).await;
    p.run_cycle(false).await.expect("cycle after retention");
    assert_latest_identical(&rx, "vm-rt", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_6_resync_after_lost_tracking_sends_only_differences_and_keeps_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "rsy", &[("vda", 64 * MIB), ("vdb", 64 * MIB)], false).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let staging = dir.path().join("staging");
    let mut p = primary(&vm, &staging, "vm-rsy", rx.local_addr(), &pki);
    vm.write("vda", 0, 8 * MIB, 0x10).await;
    vm.write("vdb", 0, 8 * MIB, 0x20).await;
    p.seed_and_initial().await.expect("seed");
    vm.write("vda", 10 * MIB, MIB, 0x11).await;
    p.run_cycle(false).await.expect("cycle");
    // Untracked changes, then QEMU dies: the persistent bitmaps come back inconsistent.
    vm.write("vda", 3 * MIB, K64, 0x12).await;
    vm.write("vdb", 50 * MIB, 2 * MIB, 0x22).await;
    vm.flush_all().await;
    drop(p);
    let Vm { vm: old, guard, disks, .. } = vm;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old.pid() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    drop(guard);
    drop(old);
    let vm = start_existing(dir.path(), "rsy2", disks, false).await;
    let mut p = primary(&vm, &staging, "vm-rsy", rx.local_addr(), &pki);
    match p.tracking().await.expect("tracking") {
        TrackingState::ResyncRequired { reason } => eprintln!("resync required: {reason}"),
        s => panic!("expected ResyncRequired, got {s:?}"),
    }
    assert_eq!(p.run_cycle(false).await.expect_err("no cycle without tracking").kind(), ErrorKind::ResyncRequired);
    // Pause after 40 of 128 blocks, then resume.
    let limits = ResyncLimits { max_blocks: Some(40), ..Default::default() };
    match p.resync(&limits).await.expect("resync part 1") {
        ResyncOutcome::Paused { compared_blocks, total_blocks } => {
            assert_eq!((compared_blocks, total_blocks), (40, 128));
        }
        o => panic!("expected a pause: {o:?}"),
    }
    assert!(p.resync_pending());
    // The host agent restarts during the pause: the resync's new bitmap must not pass for
    // intact tracking (a delta from it would miss the differences not sent yet).
    drop(p);
    let mut p = primary(&vm, &staging, "vm-rsy", rx.local_addr(), &pki);
    assert!(
        matches!(p.tracking().await.expect("tracking"), TrackingState::ResyncRequired { .. }),
        "an interrupted resync continues"
    );
    assert_eq!(p.run_cycle(false).await.expect_err("no delta during a resync").kind(), ErrorKind::ResyncRequired);
    // Writes during the pause are tracked by the resync's new bitmap.
    vm.write("vda", 30 * MIB, K64, 0x13).await;
    let out = p.resync(&ResyncLimits::default()).await.expect("resync part 2");
    let ResyncOutcome::Completed { report, compared_blocks, differing_blocks } = out else {
        panic!("expected completion: {out:?}")
    };
    eprintln!(
        "resync: compared {compared_blocks}, differing {differing_blocks}, sent {} bytes",
        report.send.data_bytes_sent
    );
    assert_eq!(compared_blocks, 128);
    assert_eq!(differing_blocks, 3, "1 block on vda + 2 on vdb");
    assert_eq!(report.data_bytes, 3 * MIB);
    let points = rx.store().vm("vm-rsy").await.expect("vm").recovery_points().expect("points");
    assert_eq!(points.len(), 3, "history kept: base, cycle, resync point");
    // The resync point equals the source as of the resync start; the tracked write follows.
    p.run_cycle(false).await.expect("cycle after resync");
    assert_latest_identical(&rx, "vm-rsy", &vm).await;
    assert!(!p.resync_pending());
}

/// REP-9: a large disk (2 TiB virtual, sparse) replicates only its data, wherever it lies, and
/// its deltas beyond 1 TiB arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_9_a_disk_over_1_tib_replicates_only_its_data() {
    const TIB: u64 = 1 << 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "big", &[("vda", 2 * TIB), ("vdb", 64 * MIB)], false).await;
    vm.write("vda", 0, MIB, 0x11).await;
    vm.write("vda", TIB + TIB / 2, MIB, 0x22).await;
    vm.write("vda", 2 * TIB - K64, K64, 0x33).await;
    vm.write("vdb", MIB, K64, 0x34).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-big", rx.local_addr(), &pki);
    let r = p.seed_and_initial().await.expect("initial replication");
    assert_eq!(r.send.data_bytes_sent, 2 * MIB + 2 * K64, "only the data travels: {r:?}");
    vm.write("vda", TIB + 7 * MIB, K64, 0x44).await;
    let r = p.run_cycle(false).await.expect("delta");
    assert_eq!(r.send.data_bytes_sent, K64, "the delta beyond 1 TiB: {r:?}");
    let rep = rx.store().vm("vm-big").await.expect("replica");
    let latest = rep.recovery_points().expect("points").last().expect("a point").id.clone();
    let top = rep.point_file(&latest, "vda").expect("point file");
    assert_eq!(ferry_qemu::img::info(&top, true).await.expect("info").virtual_size, 2 * TIB);
    // Read back where the data is (a full compare would read 2 TiB of zeros).
    let reader = ferry_repl::image::ChainReader::open_chain(&rep.chain(&latest, "vda").expect("chain"), 2 * TIB, true)
        .await
        .expect("chain reader");
    for (off, len, pat) in
        [(0, MIB, 0x11u8), (TIB + TIB / 2, MIB, 0x22), (2 * TIB - K64, K64, 0x33), (TIB + 7 * MIB, K64, 0x44)]
    {
        let mut buf = vec![0u8; len as usize];
        reader.read(off, &mut buf).expect("read");
        assert!(buf.iter().all(|b| *b == pat), "data at {off}");
    }
    let mut buf = vec![0xffu8; K64 as usize];
    reader.read(TIB, &mut buf).expect("read");
    assert!(buf.iter().all(|b| *b == 0), "untouched areas read as zeros");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_7_onboarding_reuses_existing_replica_disks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "ob", &[("vda", 64 * MIB)], false).await;
    vm.write("vda", 0, 16 * MIB, 0x5a).await;
    vm.flush_all().await;
    // An earlier copy of the disk exists on the target (e.g. restored from backup).
    let old_copy = dir.path().join("restored.raw");
    ferry_qemu::img::convert(&vm.path("vda"), &old_copy, DiskFormat::Raw, true).await.expect("copy");
    vm.write("vda", 5 * MIB, K64, 0x5b).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let rep = rx.store().vm("vm-ob").await.expect("vm");
    rep.adopt_existing(&[("vda".into(), old_copy)], chrono::Utc::now()).await.expect("adopt");
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-ob", rx.local_addr(), &pki);
    let ResyncOutcome::Completed { differing_blocks, report, .. } =
        p.resync(&ResyncLimits::default()).await.expect("onboarding resync")
    else {
        panic!("not completed")
    };
    assert_eq!(differing_blocks, 1);
    assert_eq!(report.data_bytes, MIB);
    assert_latest_identical(&rx, "vm-ob", &vm).await;
    vm.write("vda", 40 * MIB, K64, 0x5c).await;
    p.run_cycle(false).await.expect("delta after onboarding");
    assert_latest_identical(&rx, "vm-ob", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_5_app_consistent_falls_back_to_crash_consistent_without_guest_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    // The VM has a guest-agent channel but no OS: nobody answers.
    let vm = start_vm(dir.path(), "ac", &[("vda", 64 * MIB)], true).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-ac", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("seed");
    drop(p);
    let mut cfg = ferry_repl::PrimaryConfig::new(
        "vm-ac",
        "pair-1",
        vm.capture_disks(),
        &dir.path().join("staging"),
        rx.local_addr(),
        "localhost",
        pki.primary.client_config().expect("tls"),
    );
    assert!(vm.vm.paths().qga.exists(), "qga socket at {:?}", vm.vm.paths().qga);
    cfg.qga_socket = Some(vm.vm.paths().qga.clone());
    let mut p = ferry_repl::Primary::new(cfg, vm.vm.clone()).expect("primary");
    p.capture_mut().freeze_timeout = Duration::from_secs(2);
    vm.write("vda", 0, MIB, 0x61).await;
    let t = Instant::now();
    let r = p.run_cycle(true).await.expect("cycle falls back");
    eprintln!("fallback cycle took {:?}: {:?}", t.elapsed(), r.warnings);
    assert!(!r.app_consistent);
    assert!(r.warnings.iter().any(|w| w.contains("crash-consistent")), "{:?}", r.warnings);
    let points = rx.store().vm("vm-ac").await.expect("vm").recovery_points().expect("points");
    assert!(!points.last().expect("point").app_consistent);
    assert_latest_identical(&rx, "vm-ac", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_2_bandwidth_limit_and_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "bw", &[("vda", 64 * MIB)], false).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-bw", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("seed");
    // Unlimited.
    vm.write("vda", 0, 8 * MIB, 0x71).await;
    let fast = p.run_cycle(false).await.expect("cycle");
    // 4 MiB/s through a schedule whose only window covers the whole day.
    let sched = RateSchedule {
        default: None,
        windows: vec![ferry_repl::RateWindow::new("00:00", "24:00", Some(4 * MIB)).expect("window")],
    };
    p.send_options_mut().limiter = Some(std::sync::Arc::new(Limiter::new(sched)));
    vm.write("vda", 16 * MIB, 8 * MIB, 0x72).await;
    let slow = p.run_cycle(false).await.expect("cycle");
    eprintln!("8 MiB unlimited: {:?}; at 4 MiB/s: {:?}", fast.send_time, slow.send_time);
    assert!(slow.send_time >= Duration::from_millis(1700), "{:?}", slow.send_time);
    assert!(slow.send_time < Duration::from_secs(6), "{:?}", slow.send_time);
    assert!(fast.send_time < slow.send_time);
    assert_latest_identical(&rx, "vm-bw", &vm).await;
}

/// FO-5: after a planned failover, the recovered VM (running on an overlay on the failover point)
/// replicates back to its original disks by sending only what it wrote since the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo_5_reverse_replication_sends_only_the_divergence_from_the_failover_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let original = start_vm(dir.path(), "orig", &[("vda", 64 * MIB)], false).await;
    original.write("vda", 0, 16 * MIB, 0x31).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&original, &dir.path().join("staging"), "vm-fwd", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("seed");
    original.write("vda", 20 * MIB, MIB, 0x32).await;
    p.run_cycle(false).await.expect("final cycle");
    assert_latest_identical(&rx, "vm-fwd", &original).await;
    drop(p);
    let original_disk = original.path("vda");
    drop(original);
    // Failover: the recovered VM runs on an overlay on the latest point.
    let rep = rx.store().vm("vm-fwd").await.expect("replica");
    let latest = rep.recovery_points().expect("points").last().expect("point").id.clone();
    let ov = rep.begin_failover(&latest, &dir.path().join("failover")).await.expect("failover overlay");
    let disks = vec![("vda".to_string(), ov.disks[0].1.clone(), 64 * MIB)];
    let recovered = start_existing(dir.path(), "recovered", disks, false).await;
    recovered.write("vda", 2 * MIB, MIB, 0x41).await;
    recovered.write("vda", 40 * MIB, 2 * MIB, 0x42).await;
    recovered.flush_all().await;
    // The original side adopts its own disk as the base of the reverse replica.
    let back = receiver(&dir.path().join("back"), &pki, 64).await;
    let rep_back = back.store().vm("vm-back").await.expect("vm");
    rep_back.adopt_existing(&[("vda".into(), original_disk)], chrono::Utc::now()).await.expect("adopt");
    let mut rev = primary(&recovered, &dir.path().join("staging-back"), "vm-back", back.local_addr(), &pki);
    let r = rev.onboard_top_layer().await.expect("reverse onboarding");
    assert!(!r.base);
    assert_eq!(r.data_bytes, 3 * MIB, "only the blocks written since the failover travel: {r:?}");
    assert_latest_identical(&back, "vm-back", &recovered).await;
    // Tracking continues with ordinary delta cycles.
    assert!(matches!(rev.tracking().await.expect("tracking"), TrackingState::Tracking { .. }));
    recovered.write("vda", 50 * MIB, K64, 0x43).await;
    let d = rev.run_cycle(false).await.expect("delta");
    assert_eq!(d.data_bytes, K64);
    assert_latest_identical(&back, "vm-back", &recovered).await;
}

/// FO-7: a source VM shut down cleanly (planned failover) and started again (failover cancelled)
/// keeps its change tracking: replication continues with deltas, not a new full copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo_7_tracking_survives_a_clean_source_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "rs", &[("vda", 64 * MIB)], false).await;
    vm.write("vda", 0, 4 * MIB, 0x51).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let staging = dir.path().join("staging");
    let mut p = primary(&vm, &staging, "vm-rs", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("seed");
    vm.write("vda", 8 * MIB, MIB, 0x52).await;
    p.run_cycle(false).await.expect("final cycle");
    drop(p);
    // A clean QEMU exit stores the persistent bitmaps in the images.
    let _ = vm.vm.qmp().execute("quit", serde_json::Value::Null).await;
    let pid = vm.vm.pid();
    for _ in 0..250 {
        if !ferry_qemu::process::pid_alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let disks = vm.disks.clone();
    drop(vm);
    let vm = start_existing(dir.path(), "rs2", disks, false).await;
    vm.write("vda", 20 * MIB, MIB, 0x53).await;
    let mut p = primary(&vm, &staging, "vm-rs", rx.local_addr(), &pki);
    assert!(matches!(p.tracking().await.expect("tracking"), TrackingState::Tracking { .. }));
    let r = p.run_cycle(false).await.expect("delta after restart");
    assert_eq!(r.data_bytes, MIB, "only the write after the restart: {r:?}");
    assert_latest_identical(&rx, "vm-rs", &vm).await;
}

/// Copy the files of an export directory (the operator carrying the media).
fn carry(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("media dir");
    for e in std::fs::read_dir(from).expect("export dir").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_8_sec_3_offline_export_import_equals_network_initial_resumable_checksummed_and_sealed() {
    use ferry_repl::offline::{ExportKey, ImportOptions, OfflineStatus};
    // SEC-3: the item's key, from the vault in production; never on the media.
    let key = ExportKey::new([0x5e; 32]);
    let sealed = |stop: Option<usize>| ImportOptions { key: Some(key.clone()), stop_after_segments: stop };
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "off", &[("vda", 64 * MIB), ("vdb", 32 * MIB)], false).await;
    let (rnd, txt) = (dir.path().join("rnd"), dir.path().join("txt"));
    random_file(&rnd, MIB as usize, 7);
    text_file(&txt, MIB as usize, 7);
    for i in 0..6 {
        write_file(&vm, "vda", i * 3 * MIB, MIB, &rnd).await;
        write_file(&vm, "vdb", i * 2 * MIB, MIB, &txt).await;
    }
    vm.write("vda", 40 * MIB, 2 * MIB, 0x5a).await;
    vm.flush_all().await;

    // Network initial replication of the same disks, for comparison.
    let net = receiver(&dir.path().join("replica-net"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging-net"), "vm-off", net.local_addr(), &pki);
    let network = p.seed_and_initial().await.expect("network initial replication");
    drop(p);

    // Offline: the export stops after two segments (host agent killed), a new agent resumes it.
    let rx = receiver(&dir.path().join("replica-off"), &pki, 64).await;
    let export = dir.path().join("usb");
    let staging = dir.path().join("staging-off");
    let mut p = primary(&vm, &staging, "vm-off", rx.local_addr(), &pki);
    p.config_mut().export_segment_bytes = 2 * MIB;
    p.config_mut().export_stop_after_segments = Some(2);
    let err = p.export_initial_sealed(&export, Some(key.clone())).await.expect_err("the export stops");
    assert!(err.to_string().contains("stopped"), "{err}");
    assert_eq!(p.offline_status(), OfflineStatus::NotExported);
    drop(p);
    let mut p = primary(&vm, &staging, "vm-off", rx.local_addr(), &pki);
    p.config_mut().export_segment_bytes = 2 * MIB;
    let report = p.export_initial_sealed(&export, Some(key.clone())).await.expect("export resumes");
    assert!(report.resumed_from_extent > 0, "{report:?}");
    assert!(report.segments > 3, "{report:?}");
    assert_eq!(report.data_bytes, network.data_bytes, "the same allocated data as over the network");
    let total: u64 = std::fs::read_dir(&export)
        .expect("export")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.metadata().expect("meta").len())
        .sum();
    assert!(report.bytes_written < total, "resumed, not rewritten: {report:?}, {total} bytes in all");
    let cycle = report.cycle;
    assert_eq!(p.offline_status(), OfflineStatus::AwaitingImport { cycle, dir: export.clone() });
    // No staging images are left; the tracking bitmap records from the export's point.
    assert_eq!(p.tracking().await.expect("tracking"), TrackingState::Tracking { generation: cycle });
    // Exporting again writes nothing.
    assert!(p.export_initial_sealed(&export, Some(key.clone())).await.expect("again").already_complete);

    // The guest keeps writing while the media travels.
    vm.write("vdb", 20 * MIB, MIB, 0x77).await;

    // Damaged media: refused before anything is applied, naming the segment.
    let media = dir.path().join("import");
    carry(&export, &media);
    let seg = media.join("seg-00001.ferry");
    let mut b = std::fs::read(&seg).expect("segment");
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&seg, b).expect("damage");
    let replica = rx.store().vm("vm-off").await.expect("replica");
    let err = replica.import_initial(&media, sealed(None)).await.expect_err("damaged segment");
    assert!(err.to_string().contains("seg-00001.ferry") && err.to_string().contains("damaged"), "{err}");
    assert!(replica.recovery_points().expect("points").is_empty());

    // Altered media: the segment changed and its checksum rewritten in the manifest to match.
    // The checksums agree, but the manifest's seal does not: refused before anything is applied,
    // as is an export checked with another item's key.
    let manifest_path = media.join(ferry_repl::offline::MANIFEST);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("json");
    let forged = blake3::hash(&std::fs::read(&seg).expect("segment")).to_hex().to_string();
    m["segments"][1]["blake3"] = forged.into();
    std::fs::write(&manifest_path, serde_json::to_vec(&m).expect("json")).expect("forge");
    let err = replica.import_initial(&media, sealed(None)).await.expect_err("forged media");
    assert!(err.to_string().contains("not sealed with this item's key"), "{err}");
    carry(&export, &media);
    let other = ImportOptions { key: Some(ExportKey::new([1; 32])), stop_after_segments: None };
    let err = replica.import_initial(&media, other).await.expect_err("another item's key");
    assert!(err.to_string().contains("not sealed with this item's key"), "{err}");
    assert!(replica.recovery_points().expect("points").is_empty(), "nothing imported");

    // The import stops after two segments and resumes from there.
    let err = replica.import_initial(&media, sealed(Some(2))).await.expect_err("the import stops");
    assert!(err.to_string().contains("stopped"), "{err}");
    assert!(replica.recovery_points().expect("points").is_empty(), "no point before the import completes");
    let imported = replica.import_initial(&media, sealed(None)).await.expect("import resumes");
    assert_eq!(imported.resumed_from_segment, 2, "{imported:?}");
    assert_eq!(imported.point.id, format!("rp-{cycle}"));
    assert_eq!(imported.point.kind, ferry_repl::replica::PointKind::Initial);

    // The imported point holds exactly what network initial replication delivered.
    for t in ["vda", "vdb"] {
        let a = point_bytes(&net, "vm-off", &network.point_id, t, dir.path()).await;
        let b = point_bytes(&rx, "vm-off", &imported.point.id, t, dir.path()).await;
        assert!(a == b, "disk {t}: offline import differs from network initial replication");
    }

    // Deltas continue from the export's point once the import is confirmed: only the change.
    p.confirm_import(cycle).expect("confirm");
    assert_eq!(p.offline_status(), OfflineStatus::Imported);
    let delta = p.run_cycle(false).await.expect("first delta after the import");
    assert_eq!(delta.data_bytes, MIB, "{delta:?}");
    assert_latest_identical(&rx, "vm-off", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_2_initial_replication_interrupted_by_an_agent_crash_starts_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "irc", &[("vda", 32 * MIB)], false).await;
    vm.write("vda", 0, 4 * MIB, 0x31).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let staging = dir.path().join("staging");
    // The agent seeds (new bitmap, fleecing nodes, their jobs and NBD exports) and dies before
    // the replica has the base.
    let p = primary(&vm, &staging, "vm-irc", rx.local_addr(), &pki);
    p_seed_only(&p, &vm).await;
    assert!(staging.join("f42-vda.qcow2").exists());
    let qmp = vm.vm.qmp();
    assert_eq!(qmp.block_exports().await.expect("exports"), vec!["ferry-fl-42-vda".to_string()]);
    drop(p);
    let mut p = primary(&vm, &staging, "vm-irc", rx.local_addr(), &pki);
    assert_eq!(p.tracking().await.expect("tracking"), TrackingState::Untracked, "the initial copy starts over");
    // The new agent released what the dead one left in QEMU.
    assert!(qmp.block_exports().await.expect("exports").is_empty());
    assert!(qmp.block_jobs().await.expect("jobs").is_empty());
    let nodes = qmp.query_named_block_nodes().await.expect("nodes");
    assert!(!nodes.iter().any(|n| n.node_name.starts_with("ferry-fl-")), "fleecing nodes left");
    assert!(!staging.join("f42-vda.qcow2").exists(), "fleecing image left");
    vm.write("vda", 8 * MIB, MIB, 0x32).await;
    p.seed_and_initial().await.expect("initial replication");
    assert_latest_identical(&rx, "vm-irc", &vm).await;
    p.run_cycle(false).await.expect("deltas follow");
}

/// Seed tracking and the pull of the point without shipping (what a crash right after the
/// capture leaves behind).
async fn p_seed_only(p: &ferry_repl::Primary, vm: &Vm) {
    let c = p.capture_clone();
    c.seed_pull(vm.vm.qmp(), 42).await.expect("seed");
}

/// The seed is read from QEMU while the guest keeps writing: the replica's base holds the disk
/// as it was at the seed's instant (copy-before-write into the fleecing node), the writes made
/// during the copy arrive with the first delta, and no full staging copy is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_2_initial_copy_is_read_in_one_pass_at_its_point_while_the_guest_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "irp", &[("vda", 64 * MIB), ("vdb", 32 * MIB)], false).await;
    vm.write("vda", 0, 8 * MIB, 0x51).await;
    vm.write("vdb", 0, 2 * MIB, 0x52).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let staging = dir.path().join("staging");
    let mut p = primary(&vm, &staging, "vm-irp", rx.local_addr(), &pki);
    // Slow enough that the overwrite lands in the middle of the copy.
    p.send_options_mut().limiter = Some(std::sync::Arc::new(Limiter::new(RateSchedule::constant(4 * MIB))));
    let fleece_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (r, ()) = tokio::join!(p.seed_and_initial(), async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        // The copy is running: QEMU's NBD export of each disk's fleecing node is up.
        assert_eq!(vm.vm.qmp().block_exports().await.expect("exports").len(), 2);
        // Through the guest's devices, as the guest writes (above the copy-before-write filter).
        vm.write("vda", 6 * MIB, MIB, 0x99).await;
        vm.write("vdb", 0, MIB, 0x98).await;
        let f: u64 = std::fs::read_dir(&staging)
            .expect("staging")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".qcow2"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        fleece_bytes.store(f, std::sync::atomic::Ordering::Relaxed);
    });
    let r = r.expect("initial replication");
    assert!(r.base);
    assert_eq!(r.data_bytes, 10 * MIB, "{r:?}");
    // Only the overwritten clusters were copied aside (2 MiB plus metadata), not 10 MiB of data.
    let f = fleece_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(f > 0 && f < 4 * MIB, "fleecing images hold {f} bytes");
    let rep = rx.store().vm("vm-irp").await.expect("replica");
    let base = rep.recovery_points().expect("points")[0].id.clone();
    for (t, pat, len) in [("vda", 0x51u8, 8 * MIB), ("vdb", 0x52, 2 * MIB)] {
        let file = rep.point_file(&base, t).expect("point file");
        let out = std::process::Command::new("qemu-io")
            .args(["-r", "-f", "qcow2", "-c", &format!("read -P {pat:#x} 0 {len}")])
            .arg(&file)
            .output()
            .expect("qemu-io");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.contains("Pattern verification failed"), "{t}: {text}");
    }
    // Everything was released; the writes made during the copy are in the first delta.
    assert!(vm.vm.qmp().block_exports().await.expect("exports").is_empty());
    assert!(vm.vm.qmp().block_jobs().await.expect("jobs").is_empty());
    p.send_options_mut().limiter = None;
    let d = p.run_cycle(false).await.expect("delta");
    assert_eq!(d.data_bytes, 2 * MIB, "{d:?}");
    assert_latest_identical(&rx, "vm-irp", &vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_2_agent_crash_after_the_replicas_ack_compares_instead_of_copying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "ira", &[("vda", 32 * MIB)], false).await;
    vm.write("vda", 0, 4 * MIB, 0x41).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let staging = dir.path().join("staging");
    let mut p = primary(&vm, &staging, "vm-ira", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("initial replication");
    // The agent dies before it recorded the success: its state file is gone.
    drop(p);
    std::fs::remove_file(staging.join("primary-state.json")).expect("state file");
    vm.write("vda", 8 * MIB, MIB, 0x42).await;
    let mut p = primary(&vm, &staging, "vm-ira", rx.local_addr(), &pki);
    assert_eq!(p.tracking().await.expect("tracking"), TrackingState::Untracked);
    let r = p.seed_and_initial().await.expect("compared instead of copied");
    assert!(!r.base, "a point on top of the existing base: {r:?}");
    assert_eq!(r.data_bytes, MIB, "only the difference travels");
    let points = rx.store().vm("vm-ira").await.expect("vm").recovery_points().expect("points");
    assert_eq!(points.len(), 2, "the base is kept");
    assert_latest_identical(&rx, "vm-ira", &vm).await;
    p.run_cycle(false).await.expect("deltas follow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_3_a_disk_without_changes_needs_no_copy_and_idle_cycles_still_make_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "idl", &[("vda", 32 * MIB), ("vdb", 32 * MIB)], false).await;
    vm.write("vda", 0, 2 * MIB, 0x51).await;
    vm.write("vdb", 0, 2 * MIB, 0x52).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-idl", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("initial replication");
    // Only vda changes: vdb needs no copy, and the point is still whole and consistent.
    vm.write("vda", 4 * MIB, MIB, 0x53).await;
    let r = p.run_cycle(false).await.expect("cycle");
    assert_eq!((r.copied_disks, r.data_bytes), (1, MIB), "{r:?}");
    assert_latest_identical(&rx, "vm-idl", &vm).await;
    // Nothing changes: no copy at all, but a new point records that the replica is current.
    let idle = p.run_cycle(false).await.expect("idle cycle");
    assert_eq!((idle.copied_disks, idle.data_bytes), (0, 0), "{idle:?}");
    let points = rx.store().vm("vm-idl").await.expect("vm").recovery_points().expect("points");
    assert_eq!(points.len(), 3);
    assert!(points[2].time > points[1].time);
    // Changes after an idle cycle are tracked as usual.
    vm.write("vdb", 8 * MIB, MIB, 0x54).await;
    let r = p.run_cycle(false).await.expect("cycle after idle");
    assert_eq!((r.copied_disks, r.data_bytes), (1, MIB), "{r:?}");
    assert_latest_identical(&rx, "vm-idl", &vm).await;
}

/// FO-1 / RP-3 (found by the soak): a test failover on "the latest point" must not fail because
/// retention merged the point the vault last heard of. The vault sends `latest`; the replica
/// resolves it under its chain lock when it makes the overlays and says which point it used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fo_1_rp_3_the_latest_point_is_resolved_when_the_test_overlays_are_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "lt", &[("vda", 16 * MIB)], false).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-lt", rx.local_addr(), &pki);
    vm.write("vda", 0, MIB, 0x11).await;
    let known = p.seed_and_initial().await.expect("seed").point_id;
    // A newer cycle arrives and retention merges the point the vault still calls the latest.
    vm.write("vda", 0, K64, 0x22).await;
    let newest = p.run_cycle(false).await.expect("cycle").point_id;
    let rep = rx.store().vm("vm-lt").await.expect("vm");
    let out = rep.apply_retention(0, 48).await.expect("retention");
    assert_eq!(out.merged, vec![known.clone()]);
    // The stale id is refused with a clear error; `latest` takes the newest point and holds it.
    let e = rep.overlay_for_test(&known, &dir.path().join("stale")).await.expect_err("merged point");
    assert!(e.to_string().contains(&known), "{e}");
    let ov = rep.overlay_for_test(ferry_repl::replica::LATEST, &dir.path().join("testfo")).await.expect("latest");
    assert_eq!(ov.point_id, newest);
    let points = rep.recovery_points().expect("points");
    assert!(points.iter().any(|p| p.id == newest && !p.in_use.is_empty()), "the point is held: {points:?}");
    // Held: another cycle and retention leave it in place.
    vm.write("vda", 0, K64, 0x33).await;
    p.run_cycle(false).await.expect("cycle");
    rep.apply_retention(0, 48).await.expect("retention");
    assert!(rep.recovery_points().expect("points").iter().any(|p| p.id == newest), "the test VM's point stays");
    rep.release_test(&ov).await.expect("release");
}
