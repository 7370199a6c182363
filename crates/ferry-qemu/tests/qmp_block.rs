//! HOST-1: QMP, block helpers and spec validation against a real QEMU 7.2 (no guest OS needed).

mod common;

use std::time::{Duration, Instant};

use common::{diskless_os_spec, qcow2, VmGuard};
use ferry_qemu::block::action;
use ferry_qemu::iohelp::GuestIo;
use ferry_qemu::{img, ErrorKind, Qemu, VmState};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_1_qmp_connect_status_and_schema_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = qcow2(dir.path(), "d.qcow2", 16 * MIB).await;
    let t = Instant::now();
    let vm = Qemu::start(&diskless_os_spec("qmp1", &[("vda", &disk)]), &dir.path().join("run")).await.expect("start");
    let _guard = VmGuard(vm.pid());
    eprintln!("QEMU start + QMP ready: {:?}", t.elapsed());
    let q = vm.qmp();
    assert_eq!(q.version().map(|v| v.0), Some(7));
    let st = q.query_status().await.expect("query-status");
    assert!(st.running, "{st:?}");
    assert!(matches!(vm.status().await.expect("status"), VmState::Running(_)));
    let t = Instant::now();
    assert!(q.schema_has_command("blockdev-backup").await.expect("schema"));
    assert!(q.schema_has_command("block-dirty-bitmap-merge").await.expect("schema"));
    assert!(!q.schema_has_command("no-such-command").await.expect("schema"));
    assert!(q.schema_has_event("BLOCK_JOB_COMPLETED").await.expect("schema"));
    eprintln!("schema probe (3 lookups, 1 fetch): {:?}", t.elapsed());
    let e = q
        .execute("block-dirty-bitmap-remove", serde_json::json!({"node": "vda", "name": "nope"}))
        .await
        .expect_err("unknown bitmap");
    assert!(matches!(e.kind(), ErrorKind::Qmp { class, .. } if class == "GenericError"), "{e}");
    let nodes = q.query_named_block_nodes().await.expect("nodes");
    assert!(nodes.iter().any(|n| n.node_name == "vda" && n.driver == "qcow2"));
    assert!(nodes.iter().any(|n| n.node_name == "vda-file" && n.driver == "file"));
    vm.hard_stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_1_qemu_io_writes_verified_with_qemu_img_after_quit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = qcow2(dir.path(), "d.qcow2", 16 * MIB).await;
    let vm = Qemu::start(&diskless_os_spec("io1", &[("vda", &disk)]), &dir.path().join("run")).await.expect("start");
    let _guard = VmGuard(vm.pid());
    let io = GuestIo::open(vm.qmp(), "vda").await.expect("open");
    let t = Instant::now();
    io.write_pattern(MIB, 64 * 1024, 0x5a).await.expect("write");
    io.write_pattern(3 * MIB, 4096, 0xa5).await.expect("write");
    io.write_pattern(5 * MIB, 128 * 1024, 0x11).await.expect("write");
    io.write_zeroes(5 * MIB, 64 * 1024).await.expect("zero");
    io.discard(5 * MIB + 64 * 1024, 64 * 1024).await.expect("discard");
    io.flush().await.expect("flush");
    eprintln!("6 qemu-io ops: {:?}", t.elapsed());
    let e = io.write_pattern(16 * MIB, 65536, 1).await.expect_err("past the end");
    assert_eq!(*e.kind(), ErrorKind::InvalidSpec, "{e}");
    let e = vm.qmp().qemu_io("nosuchnode", "write -q -P 0x1 0 4k").await.expect_err("no node");
    assert_eq!(*e.kind(), ErrorKind::Hmp, "{e}");
    vm.hard_stop().await.expect("stop");
    assert!(vm.exit_report().is_some_and(|r| r.kind == ferry_qemu::ExitKind::Stopped));

    // Expected image built independently.
    let mut expected = vec![0u8; 16 * MIB as usize];
    let m = MIB as usize;
    expected[m..m + 65536].fill(0x5a);
    expected[3 * m..3 * m + 4096].fill(0xa5);
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).expect("write expected");
    assert!(img::compare(&disk, &raw, false).await.expect("compare"), "image differs");
    let check = img::check(&disk).await.expect("check");
    assert!(check.is_clean(), "{check:?}");
    let layer = img::map_layer(&disk, false).await.expect("map");
    let data: u64 = layer.iter().filter(|e| e.data).map(|e| e.length).sum();
    let zero: u64 = layer.iter().filter(|e| e.zero && !e.data).map(|e| e.length).sum();
    assert_eq!(data, 2 * 65536, "{layer:?}");
    assert_eq!(zero, 2 * 65536, "{layer:?}");
    let info = img::info(&disk, false).await.expect("info");
    assert_eq!(info.virtual_size, 16 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_1_transaction_bitmap_add_and_full_backup_to_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = qcow2(dir.path(), "d.qcow2", 32 * MIB).await;
    let seed = qcow2(dir.path(), "seed.qcow2", 32 * MIB).await;
    let vm = Qemu::start(&diskless_os_spec("txn1", &[("vda", &disk)]), &dir.path().join("run")).await.expect("start");
    let _guard = VmGuard(vm.pid());
    let q = vm.qmp();
    let io = GuestIo::open(q, "vda").await.expect("open");
    io.write_pattern(0, MIB, 0x42).await.expect("write");
    q.blockdev_add_qcow2("seed", &seed).await.expect("blockdev-add");
    let t = Instant::now();
    q.transaction(vec![action::bitmap_add("vda", "bm0", true), action::backup_full("seed-job", "vda", "seed")])
        .await
        .expect("transaction");
    let end = q.wait_block_job("seed-job", Duration::from_secs(60)).await.expect("job");
    eprintln!("seed transaction + full backup of 32 MiB: {:?}", t.elapsed());
    assert_eq!(end.len, 32 * MIB);
    // A second wait for the same job finds nothing any more and times out quickly.
    let e = q.wait_block_job("seed-job", Duration::from_millis(100)).await.expect_err("gone");
    assert!(e.is_timeout());
    q.blockdev_del("seed").await.expect("blockdev-del");
    io.write_pattern(4 * MIB, 64 * 1024, 0x43).await.expect("write");
    let bms = q.dirty_bitmaps("vda").await.expect("bitmaps");
    let bm0 = bms.iter().find(|b| b.name == "bm0").expect("bm0");
    assert!(bm0.persistent && bm0.recording);
    assert_eq!(bm0.count, 64 * 1024);
    // A failing job: backup into a node that does not exist is refused as a QMP error.
    let e = q.transaction(vec![action::backup_full("bad", "vda", "nosuch")]).await.expect_err("bad target");
    assert!(matches!(e.kind(), ErrorKind::Qmp { .. }), "{e}");
    vm.hard_stop().await.expect("stop");
    // The seed equals the disk as of the transaction: first MiB 0x42, the later write absent.
    let mut expected = vec![0u8; 32 * MIB as usize];
    expected[..MIB as usize].fill(0x42);
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).expect("write expected");
    assert!(img::compare(&seed, &raw, false).await.expect("compare"));
    let info = img::info(&disk, false).await.expect("info");
    assert!(info.bitmaps.iter().any(|b| b.name == "bm0" && b.flags.iter().any(|f| f == "auto")), "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_1_invalid_specs_refused_with_nothing_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = qcow2(dir.path(), "d.qcow2", MIB).await;
    let missing = dir.path().join("missing.qcow2");
    let run = dir.path().join("run");
    for (spec, what) in [
        (diskless_os_spec("bad1", &[("vda", &missing)]), "not accessible"),
        (diskless_os_spec("bad2", &[("vda", &disk), ("vda", &disk)]), "used twice"),
        (diskless_os_spec("bad name", &[("vda", &disk)]), "VM name"),
    ] {
        let e = Qemu::start(&spec, &run).await.expect_err(what);
        assert_eq!(*e.kind(), ErrorKind::InvalidSpec, "{e}");
        assert!(e.to_string().contains(what), "{e}");
        assert!(!run.exists(), "run directory created for an invalid spec");
    }
}
