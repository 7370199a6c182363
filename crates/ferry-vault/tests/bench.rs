//! The vault scale bench (JOB-1 scale): a small run in the suite, the full run on demand:
//! `cargo test -p ferry-vault --test bench -- --ignored --nocapture`.

use ferry_vault::bench::{run, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_1_vault_bench_small_runs() {
    let report = run(BenchOptions::small()).await.expect("bench runs");
    println!("{report}");
    assert_eq!(report.jobs, 1_000);
    assert_eq!(report.events, 10_000);
    assert!(report.measures.len() >= 10);
    for m in &report.measures {
        assert!(m.p50 <= m.p99 && m.p99 <= m.max, "{m:?}");
        assert!(m.avg_items > 0.0, "filters select rows: {m:?}");
    }
    assert!(report.resident_bytes.is_some_and(|b| b > 0));
    let text = report.to_string();
    assert!(text.contains("p99") && text.contains("Resident memory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full scale bench: 100,000 jobs and 1,000,000 events (a few minutes)"]
async fn job_1_vault_bench_full() {
    let report = run(BenchOptions::full()).await.expect("bench runs");
    println!("{report}");
    assert!(report.meets_targets(), "{report}");
}
