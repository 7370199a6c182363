//! The replication bench: a small smoke run in the suite, the full default run on demand
//! (`cargo test -p ferry-repl --test bench -- --ignored --nocapture`).

use ferry_repl::bench::{run, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_5_bench_smoke_reports_throughput_and_costs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = BenchOptions::new(dir.path());
    o.data_mib = 64;
    o.delta_mib = 16;
    o.mixed_mib = 16;
    o.idle_disk_gib = 10;
    let r = run(&o).await.expect("bench");
    eprintln!("{r}");
    assert!(r.data_bytes >= 64 << 20);
    assert!(r.delta_bytes >= 15 << 20);
    assert!(r.wire_ratio_zstd < r.wire_ratio_raw);
    assert!(r.idle_wire_bytes < 4096, "an idle cycle sends almost nothing");
    assert!(r.peak_rss_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full-size bench (1 GiB); run on demand"]
async fn bench_full_default_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(&BenchOptions::new(dir.path())).await.expect("bench");
    eprintln!("{r}");
}
