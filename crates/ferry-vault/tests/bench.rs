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

/// SEC-3: a simulated stretch of a busy vault; with the retention the database keeps only the
/// window (no row older than it) and stays smaller than without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_retention_bench_keeps_the_database_at_its_window() {
    let opts = ferry_vault::bench_year::YearOptions::small();
    let report = ferry_vault::bench_year::run(opts.clone()).await.expect("bench runs");
    println!("{report}");
    let (w, k) = (report.written, report.retained);
    assert!(w.events > 0 && w.jobs > 0 && w.site_commands > 0 && w.alerts > 0, "{report}");
    // 10 of 40 days kept: about a quarter of each kind (chance moves it a little).
    for (written, kept) in [(w.events, k.events), (w.jobs, k.jobs), (w.site_commands, k.site_commands)] {
        let share = kept as f64 / written as f64;
        assert!((0.2..0.32).contains(&share), "kept {kept} of {written}: {report}");
    }
    assert!(report.pruned_bytes < report.unpruned_bytes * 6 / 10, "{report}");
    assert!(report.to_string().contains("Database after the year"));
}
