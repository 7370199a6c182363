//! CAP-1: the churn meter against a real QEMU (a VM without OS written through HMP qemu-io).

mod common;

use common::*;
use ferry_repl::churn::{ChurnMeter, WindowChurn};

/// The bitmap names of `node`, sorted.
fn bitmaps(nodes: &[ferry_qemu::block::BlockNode], node: &str) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .find(|n| n.node_name == node)
        .map(|n| n.dirty_bitmaps.iter().map(|b| b.name.clone()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_1_churn_meter_counts_unique_changed_clusters_per_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = start_vm(dir.path(), "ch", &[("vda", 64 * MIB), ("vdb", 32 * MIB)], false).await;
    let qmp = vm.vm.qmp();
    // Replication's own bitmap on the same disk is left alone by the meter.
    qmp.execute("block-dirty-bitmap-add", serde_json::json!({"node": "vda", "name": "ferry-7"})).await.expect("add");
    let disks = vec!["vda".to_string(), "vdb".to_string()];
    let mut m = ChurnMeter::start(qmp, "p1", &disks, &[1, 3]).await.expect("start");
    // A meter of another plan on the same VM has bitmaps of its own.
    let other = ChurnMeter::start(qmp, "p2", &["vda".to_string()], &[1]).await.expect("other meter");

    // Window 1: 1 MiB on vda, its first cluster written twice more, one cluster on vdb.
    vm.write("vda", 0, MIB, 0x11).await;
    vm.write("vda", 0, K64, 0x12).await;
    vm.write("vda", 0, K64, 0x13).await;
    vm.write("vdb", 5 * MIB, K64, 0x14).await;
    assert_eq!(m.tick(qmp).await.expect("tick 1"), vec![WindowChurn { window: 1, bytes: vec![MIB, K64] }]);
    // Window 2: 128 KiB elsewhere on vda, and 4 KiB inside one cluster counts as that cluster.
    vm.write("vda", 10 * MIB, 2 * K64, 0x21).await;
    vm.io("vda").await.write_pattern(20 * MIB + 4096, 4096, 0x22).await.expect("small write");
    assert_eq!(m.tick(qmp).await.expect("tick 2"), vec![WindowChurn { window: 1, bytes: vec![3 * K64, 0] }]);
    // Window 3 ends the first 3-tick window too: the union of the three short ones.
    vm.write("vda", 0, K64, 0x31).await;
    let w = m.tick(qmp).await.expect("tick 3");
    assert_eq!(
        w,
        vec![
            WindowChurn { window: 1, bytes: vec![K64, 0] },
            WindowChurn { window: 3, bytes: vec![MIB + 3 * K64, K64] },
        ]
    );
    assert_eq!(w[1].total(), MIB + 4 * K64);
    // No change: empty windows, still one bitmap per window length per disk.
    assert_eq!(m.tick(qmp).await.expect("tick 4"), vec![WindowChurn { window: 1, bytes: vec![0, 0] }]);
    let nodes = qmp.query_named_block_nodes().await.expect("nodes");
    assert_eq!(bitmaps(&nodes, "vda"), vec!["churn-p1-1-4", "churn-p1-3-1", "churn-p2-1-0", "ferry-7"]);

    // A new meter (agent restart) starts fresh; stopping removes only the meter's bitmaps.
    let m = ChurnMeter::start(qmp, "p1", &disks, &[1, 3]).await.expect("restart");
    assert_eq!(m.ticks(), 0);
    m.stop(qmp).await.expect("stop");
    let nodes = qmp.query_named_block_nodes().await.expect("nodes");
    assert_eq!(bitmaps(&nodes, "vda"), vec!["churn-p2-1-0", "ferry-7"]);
    other.stop(qmp).await.expect("stop the other");
    let nodes = qmp.query_named_block_nodes().await.expect("nodes");
    assert_eq!(bitmaps(&nodes, "vda"), vec!["ferry-7"]);
    assert!(ChurnMeter::start(qmp, "a-b", &disks, &[1]).await.is_err(), "a tag of letters and digits only");
    assert!(bitmaps(&nodes, "vdb").is_empty());
    assert!(ChurnMeter::start(qmp, "p1", &disks, &[0]).await.is_err(), "a window of no ticks is refused");
}

/// A protected VM can be measured: replication cycles and the meter run side by side on the
/// same disks, each with its own bitmaps, and each sees the same change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_1_churn_meter_runs_beside_replication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let vm = start_vm(dir.path(), "cr", &[("vda", 64 * MIB)], false).await;
    let rx = receiver(&dir.path().join("replica"), &pki, 64).await;
    let mut p = primary(&vm, &dir.path().join("staging"), "vm-cr", rx.local_addr(), &pki);
    p.seed_and_initial().await.expect("initial replication");
    let qmp = vm.vm.qmp();
    let mut m = ChurnMeter::start(qmp, "p1", &["vda".to_string()], &[1]).await.expect("meter");
    vm.write("vda", 3 * MIB, 3 * K64, 0x41).await;
    let r = p.run_cycle(false).await.expect("cycle beside the meter");
    assert_eq!(r.data_bytes, 3 * K64);
    assert_eq!(m.tick(qmp).await.expect("tick"), vec![WindowChurn { window: 1, bytes: vec![3 * K64] }]);
    vm.write("vda", 9 * MIB, K64, 0x42).await;
    assert_eq!(m.tick(qmp).await.expect("tick"), vec![WindowChurn { window: 1, bytes: vec![K64] }]);
    let r = p.run_cycle(false).await.expect("the next cycle");
    assert_eq!(r.data_bytes, K64, "the meter's rotation does not touch replication's bitmaps");
    m.stop(qmp).await.expect("stop");
    assert_latest_identical(&rx, "vm-cr", &vm).await;
}
