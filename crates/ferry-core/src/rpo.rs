//! Explainable RPO (REP-5, JOB-2): the RPO of an item is the age of the newest recovery point on
//! its replica; this module says where the time between points went over the last cycles —
//! capture, transfer, apply, and waiting (the copy interval, the bandwidth limit, retries after
//! errors, a pause, a time window) — and whether the VM's churn fits the bandwidth available.

pub use ferry_types::protection::RpoExplanation;
use ferry_types::site_protocol::CycleTiming;

fn avg(cycles: &[CycleTiming], f: fn(&CycleTiming) -> u64) -> u64 {
    if cycles.is_empty() {
        return 0;
    }
    cycles.iter().map(|c| u128::from(f(c))).sum::<u128>() as u64 / cycles.len() as u64
}

/// "1.2 s", "35 ms", "4 min 10 s".
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => crate::health::fmt_age(chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))),
    }
}

/// "12.0 MiB/s".
pub fn fmt_rate(bytes_per_sec: u64) -> String {
    format!("{:.1} MiB/s", bytes_per_sec as f64 / (1024.0 * 1024.0))
}

/// Explain the time between the last points from `cycles` (newest last), the copy interval in
/// force, the VM's churn and the host's bandwidth limit.
pub fn explain(
    cycles: &[CycleTiming],
    interval_secs: u64,
    churn_bytes_per_sec: u64,
    bandwidth_bytes_per_sec: Option<u64>,
) -> RpoExplanation {
    let mut e = RpoExplanation {
        cycles: cycles.len() as u64,
        avg_between_points_ms: avg(cycles, CycleTiming::total_ms),
        capture_ms: avg(cycles, |c| c.capture_ms),
        transfer_ms: avg(cycles, |c| c.transfer_ms),
        apply_ms: avg(cycles, |c| c.apply_ms),
        throttled_ms: avg(cycles, |c| c.throttled_ms),
        schedule_ms: avg(cycles, |c| c.waited_schedule_ms),
        backoff_ms: avg(cycles, |c| c.waited_backoff_ms),
        paused_ms: avg(cycles, |c| c.waited_paused_ms),
        window_ms: avg(cycles, |c| c.waited_window_ms),
        churn_bytes_per_sec,
        bandwidth_bytes_per_sec,
        findings: Vec::new(),
    };
    if cycles.is_empty() {
        e.findings.push("No delta cycle has completed since the host agent started.".into());
        return e;
    }
    let work = e.capture_ms + e.transfer_ms + e.apply_ms;
    let mut parts: Vec<(u64, String)> = vec![
        (
            e.schedule_ms,
            format!("waiting for the copy interval ({interval_secs} s): {} per point", fmt_ms(e.schedule_ms)),
        ),
        (
            work,
            format!(
                "the cycle itself: {} (capture {}, transfer {}, apply on the replica {})",
                fmt_ms(work),
                fmt_ms(e.capture_ms),
                fmt_ms(e.transfer_ms),
                fmt_ms(e.apply_ms)
            ),
        ),
        (e.throttled_ms, format!("the bandwidth limit: {} per point", fmt_ms(e.throttled_ms))),
        (e.backoff_ms, format!("failed attempts and retries: {} per point", fmt_ms(e.backoff_ms))),
        (e.paused_ms, format!("paused by an operator: {} per point", fmt_ms(e.paused_ms))),
        (e.window_ms, format!("a time window: {} per point", fmt_ms(e.window_ms))),
    ];
    parts.retain(|(ms, _)| *ms > 0);
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    e.findings.push(format!(
        "A point every {} on average over the last {} cycle(s).",
        fmt_ms(e.avg_between_points_ms),
        e.cycles
    ));
    for (_, p) in parts {
        e.findings.push(format!("Time between points: {p}."));
    }
    match bandwidth_bytes_per_sec {
        Some(b) if churn_bytes_per_sec > b => e.findings.push(format!(
            "The VM changes {} but the bandwidth limit is {}: the RPO grows until churn drops or the limit rises.",
            fmt_rate(churn_bytes_per_sec),
            fmt_rate(b)
        )),
        Some(b) => e.findings.push(format!(
            "Churn {} fits the bandwidth limit {}.",
            fmt_rate(churn_bytes_per_sec),
            fmt_rate(b)
        )),
        None => e.findings.push(format!("Churn {}; no bandwidth limit.", fmt_rate(churn_bytes_per_sec))),
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(schedule: u64, capture: u64, transfer: u64, apply: u64, backoff: u64) -> CycleTiming {
        CycleTiming {
            at: chrono::Utc::now(),
            bytes: 1 << 20,
            capture_ms: capture,
            transfer_ms: transfer,
            apply_ms: apply,
            waited_schedule_ms: schedule,
            waited_backoff_ms: backoff,
            ..Default::default()
        }
    }

    #[test]
    fn rep_5_explains_where_the_time_between_points_went() {
        let cycles = [cycle(28_000, 5, 1500, 400, 0), cycle(28_000, 5, 1500, 400, 60_000)];
        let e = explain(&cycles, 30, 2 << 20, None);
        assert_eq!(e.cycles, 2);
        assert_eq!((e.schedule_ms, e.backoff_ms, e.transfer_ms), (28_000, 30_000, 1500));
        assert_eq!(e.avg_between_points_ms, 28_000 + 1905 + 30_000);
        assert!(e.findings[1].contains("failed attempts"), "the largest part first: {:?}", e.findings);
        assert!(e.findings[2].contains("copy interval (30 s)"), "{:?}", e.findings);
        assert!(e.findings[3].contains("transfer 1.5 s"), "{:?}", e.findings);
    }

    #[test]
    fn rep_5_churn_above_the_bandwidth_limit_is_called_out() {
        let e = explain(&[cycle(25_000, 5, 5000, 100, 0)], 30, 12 << 20, Some(5 << 20));
        assert!(e
            .findings
            .last()
            .is_some_and(|f| f.contains("12.0 MiB/s") && f.contains("5.0 MiB/s") && f.contains("grows")));
        let e = explain(&[], 30, 0, None);
        assert_eq!(e.findings, vec!["No delta cycle has completed since the host agent started.".to_string()]);
    }
}
