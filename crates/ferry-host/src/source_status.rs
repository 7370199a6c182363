//! What a host knows about each VM it replicates (REP-5, JOB-2): counters, the outcomes of the
//! last hour against the cycles expected at the copy interval, why cycles fail now, and where
//! the time between two points went (explainable RPO).
//!
//! The capture loop records every attempt and every wait here; the host's report carries the
//! result to the vault, which turns it into health, RPO and its explanation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_types::site_protocol::{CycleTiming, FailureCause, ReplicationPhase};

/// The window of the missed-cycle share (JOB-2).
pub const HOUR: Duration = Duration::from_secs(3600);
/// Cycles kept for the statistics (average and maximum delta, latency).
const STATS_WINDOW: usize = 1000;
/// Cycles kept for the explainable RPO.
const RECENT_CYCLES: usize = 20;

/// Upper bounds, in seconds, of the cycle-duration histograms.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// A cumulative histogram of durations (Prometheus semantics: counts per upper bound).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurationHistogram {
    /// Observations at or below each bound of [`DURATION_BUCKETS`].
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum_secs: f64,
}

impl DurationHistogram {
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum_secs += secs;
    }
}

/// Cycle durations of one VM since the agent started, by part.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleHistograms {
    pub capture: DurationHistogram,
    pub transfer: DurationHistogram,
    pub apply: DurationHistogram,
    pub total: DurationHistogram,
    /// Data bytes of each successful cycle.
    pub bytes: ferry_core::metrics::Histogram,
}

/// Upper bounds, in bytes, of the cycle-size histogram (64 KiB … 64 GiB, ×16).
pub const CYCLE_BYTES_BUCKETS: &[f64] = &[65536.0, 1048576.0, 16777216.0, 268435456.0, 4294967296.0, 68719476736.0];

impl Default for CycleHistograms {
    fn default() -> Self {
        CycleHistograms {
            capture: DurationHistogram::default(),
            transfer: DurationHistogram::default(),
            apply: DurationHistogram::default(),
            total: DurationHistogram::default(),
            bytes: ferry_core::metrics::Histogram::new(CYCLE_BYTES_BUCKETS),
        }
    }
}

/// Where a wait between two points is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The copy frequency's next tick.
    Schedule,
    /// After a failed attempt (and the attempt itself).
    Backoff,
    /// A scheduled initial replication or a resync window.
    Window,
}

#[derive(Debug, Clone, Default)]
struct Waits {
    schedule: Duration,
    backoff: Duration,
    paused: Duration,
    window: Duration,
}

/// One VM's replication as its source host sees it.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub phase: ReplicationPhase,
    pub last_sync: Option<DateTime<Utc>>,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    delta_sizes: VecDeque<u64>,
    latencies_ms: VecDeque<u64>,
    pub data_waiting: u64,
    pub initial_bytes: u64,
    /// App-consistent cycles that fell back to crash-consistent (POL-5).
    pub consistency_fallbacks: u64,
    pub last_warning: Option<String>,
    pub last_error: Option<String>,
    /// The copy interval in force.
    pub interval: Duration,
    /// The policy version the loop applies (POL-9).
    pub policy_version: Option<i64>,
    /// Since when delta cycles are expected (the first success; reset when the loop restarts
    /// after a pause, since a paused item expects no cycle).
    counting_since: Option<Instant>,
    /// Outcomes of the last hour: (when, succeeded).
    outcomes: VecDeque<(Instant, bool)>,
    /// Capture time of the newest point the replica acknowledged.
    pub last_point: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub failure: Option<FailureCause>,
    waits: Waits,
    paused_at: Option<Instant>,
    recent: VecDeque<CycleTiming>,
    /// Cycle durations (capture, transfer, apply, whole cycle) for the host's metrics.
    pub histograms: CycleHistograms,
}

/// What one successful cycle took (from the engine's report).
#[derive(Debug, Clone, Copy, Default)]
pub struct CycleCost {
    pub bytes: u64,
    pub capture: Duration,
    pub send: Duration,
    pub throttled: Duration,
    pub apply: Duration,
    pub total: Duration,
}

impl CycleCost {
    pub fn of(r: &ferry_repl::CycleReport) -> Self {
        CycleCost {
            bytes: r.data_bytes,
            capture: r.capture_time,
            send: r.send_time,
            throttled: r.send.throttled,
            apply: r.send.apply_wait,
            total: r.total_time,
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SourceStatus {
    pub fn new(interval: Duration) -> Self {
        SourceStatus {
            phase: ReplicationPhase::Waiting,
            last_sync: None,
            cycles_ok: 0,
            cycles_failed: 0,
            delta_sizes: VecDeque::new(),
            latencies_ms: VecDeque::new(),
            data_waiting: 0,
            initial_bytes: 0,
            consistency_fallbacks: 0,
            last_warning: None,
            last_error: None,
            interval,
            policy_version: None,
            counting_since: None,
            outcomes: VecDeque::new(),
            last_point: None,
            failing_since: None,
            failure: None,
            waits: Waits::default(),
            paused_at: None,
            recent: VecDeque::new(),
            histograms: CycleHistograms::default(),
        }
    }

    /// A cycle succeeded: its point (captured at `point_time`) is durable on the replica.
    pub fn record_success(&mut self, cost: CycleCost, point_time: DateTime<Utc>, now: Instant, initial: bool) {
        self.phase = ReplicationPhase::Replicating;
        self.cycles_ok += 1;
        self.last_sync = Some(Utc::now());
        self.last_point = Some(point_time);
        push_bounded(&mut self.delta_sizes, cost.bytes, STATS_WINDOW);
        push_bounded(&mut self.latencies_ms, ms(cost.total), STATS_WINDOW);
        self.last_error = None;
        self.failing_since = None;
        self.failure = None;
        if initial {
            self.initial_bytes = cost.bytes;
        }
        if self.counting_since.is_none() || initial {
            // Delta cycles are expected from the end of the initial copy on.
            self.counting_since = Some(now);
        } else {
            self.push_outcome(now, true);
        }
        let w = std::mem::take(&mut self.waits);
        let transfer = cost.send.saturating_sub(cost.throttled).saturating_sub(cost.apply);
        self.histograms.capture.observe(cost.capture);
        self.histograms.transfer.observe(transfer);
        self.histograms.apply.observe(cost.apply);
        self.histograms.total.observe(cost.total);
        self.histograms.bytes.observe(cost.bytes as f64);
        let timing = CycleTiming {
            at: point_time,
            bytes: cost.bytes,
            capture_ms: ms(cost.capture),
            transfer_ms: ms(transfer),
            apply_ms: ms(cost.apply),
            throttled_ms: ms(cost.throttled),
            waited_schedule_ms: ms(w.schedule),
            waited_backoff_ms: ms(w.backoff),
            waited_paused_ms: ms(w.paused),
            waited_window_ms: ms(w.window),
        };
        // The initial copy (or a resync) is not a cycle of the copy interval: it would skew the
        // explanation of the time between points.
        if !initial {
            push_bounded(&mut self.recent, timing, RECENT_CYCLES);
        }
    }

    /// A cycle failed after `took`; `cause` classifies the error.
    pub fn record_failure(&mut self, cause: FailureCause, message: String, took: Duration, now: Instant) {
        self.cycles_failed += 1;
        self.last_error = Some(message);
        self.failure = Some(cause);
        if self.failing_since.is_none() {
            self.failing_since = Some(Utc::now());
        }
        self.waits.backoff += took;
        if self.counting_since.is_some() {
            self.push_outcome(now, false);
        }
    }

    /// Time spent waiting before the next cycle.
    pub fn add_wait(&mut self, kind: Wait, d: Duration) {
        match kind {
            Wait::Schedule => self.waits.schedule += d,
            Wait::Backoff => self.waits.backoff += d,
            Wait::Window => self.waits.window += d,
        }
    }

    /// An operator paused replication (JOB-3).
    pub fn paused(&mut self, now: Instant) {
        self.phase = ReplicationPhase::Paused;
        self.paused_at.get_or_insert(now);
    }

    /// The loop starts (again): a pause ends; cycles are expected again from now on.
    pub fn loop_started(&mut self, now: Instant) {
        if let Some(at) = self.paused_at.take() {
            self.waits.paused += now.saturating_duration_since(at);
            if self.counting_since.is_some() {
                self.counting_since = Some(now);
                self.outcomes.clear();
            }
        }
    }

    fn push_outcome(&mut self, now: Instant, ok: bool) {
        self.outcomes.push_back((now, ok));
        while self.outcomes.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > HOUR) {
            self.outcomes.pop_front();
        }
    }

    /// (expected, succeeded) cycles in the last hour, or since delta cycles started if later.
    pub fn hour_counts(&self, now: Instant) -> (u64, u64) {
        let Some(since) = self.counting_since else { return (0, 0) };
        let window = now.saturating_duration_since(since).min(HOUR);
        let expected = (window.as_secs_f64() / self.interval.as_secs_f64().max(0.001)).floor() as u64;
        let ok = self.outcomes.iter().filter(|(t, ok)| *ok && now.saturating_duration_since(*t) <= HOUR).count() as u64;
        (expected, ok)
    }

    pub fn avg_delta_bytes(&self) -> u64 {
        self.delta_sizes.iter().sum::<u64>() / self.delta_sizes.len().max(1) as u64
    }

    pub fn max_delta_bytes(&self) -> u64 {
        self.delta_sizes.iter().copied().max().unwrap_or(0)
    }

    pub fn avg_latency_ms(&self) -> u64 {
        self.latencies_ms.iter().sum::<u64>() / self.latencies_ms.len().max(1) as u64
    }

    pub fn recent_cycles(&self) -> Vec<CycleTiming> {
        self.recent.iter().cloned().collect()
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, max: usize) {
    q.push_back(v);
    while q.len() > max {
        q.pop_front();
    }
}

/// Why a cycle failed, for the health reason (JOB-2).
pub fn classify(e: &ferry_repl::Error) -> FailureCause {
    use ferry_repl::ErrorKind;
    if e.is_no_space() {
        return FailureCause::ReplicaFull;
    }
    match e.kind() {
        ErrorKind::Disconnected => FailureCause::Unreachable,
        ErrorKind::Tls if e.chain().contains("the peer is") => FailureCause::Refused,
        ErrorKind::Tls => FailureCause::Unreachable,
        ErrorKind::Unauthorized => FailureCause::Refused,
        ErrorKind::Busy if e.chain().contains("failed over") || e.chain().contains("failover") => {
            FailureCause::ReplicaPaused
        }
        _ => FailureCause::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(bytes: u64) -> CycleCost {
        CycleCost {
            bytes,
            capture: Duration::from_millis(5),
            send: Duration::from_millis(100),
            throttled: Duration::from_millis(30),
            apply: Duration::from_millis(20),
            total: Duration::from_millis(110),
        }
    }

    #[test]
    fn job_2_missed_cycles_count_against_expected_cycles_of_the_last_hour() {
        let t0 = Instant::now();
        let mut s = SourceStatus::new(Duration::from_secs(30));
        assert_eq!(s.hour_counts(t0 + HOUR), (0, 0), "nothing is expected before the initial copy ended");
        s.record_success(cost(1 << 20), Utc::now(), t0, true);
        // 10 ticks: 7 succeed, 3 fail.
        for i in 1..=10u64 {
            let at = t0 + Duration::from_secs(30 * i);
            if i % 3 == 0 {
                s.record_failure(FailureCause::Unreachable, "refused".into(), Duration::from_secs(1), at);
            } else {
                s.record_success(cost(4096), Utc::now(), at, false);
            }
        }
        assert_eq!(s.hour_counts(t0 + Duration::from_secs(300)), (10, 7));
        // A loop that stopped running at all: expected cycles keep growing, none succeed.
        assert_eq!(s.hour_counts(t0 + Duration::from_secs(600)), (20, 7));
        // Past the hour, old successes leave the window.
        let later = t0 + HOUR + Duration::from_secs(301);
        assert_eq!(s.hour_counts(later), (120, 0));
    }

    #[test]
    fn rep_5_a_cycle_explains_where_its_time_went() {
        let t0 = Instant::now();
        let mut s = SourceStatus::new(Duration::from_secs(30));
        s.record_success(cost(1 << 20), Utc::now(), t0, true);
        s.add_wait(Wait::Schedule, Duration::from_secs(30));
        s.record_failure(FailureCause::Unreachable, "Cannot connect".into(), Duration::from_secs(2), t0);
        assert!(s.failing_since.is_some());
        s.add_wait(Wait::Backoff, Duration::from_secs(28));
        s.paused(t0);
        s.loop_started(t0 + Duration::from_secs(60));
        s.record_success(cost(8192), Utc::now(), t0 + Duration::from_secs(90), false);
        let c = s.recent_cycles().pop().expect("timing");
        assert_eq!(
            (c.waited_schedule_ms, c.waited_backoff_ms, c.waited_paused_ms, c.waited_window_ms),
            (30_000, 30_000, 60_000, 0)
        );
        assert_eq!((c.capture_ms, c.transfer_ms, c.throttled_ms, c.apply_ms), (5, 50, 30, 20));
        assert_eq!(c.bytes, 8192);
        assert!(
            s.failing_since.is_none() && s.failure.is_none() && s.last_error.is_none(),
            "a success clears the failure"
        );
    }

    #[test]
    fn rep_5_cycle_durations_are_cumulative_histograms() {
        let mut h = DurationHistogram::default();
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(4000));
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 1, "≤ 10 ms");
        assert_eq!(h.buckets[4], 2, "≤ 500 ms");
        assert_eq!(h.buckets[DURATION_BUCKETS.len() - 1], 2, "the longest is only in +Inf");
        assert!((h.sum_secs - 4000.307).abs() < 1e-6);
    }

    #[test]
    fn job_2_failures_are_classified_for_the_health_reason() {
        use ferry_repl::{Error, ErrorKind};
        let io = std::io::Error::from_raw_os_error(111);
        assert_eq!(
            classify(&Error::with_source(ErrorKind::Disconnected, "Cannot connect to x", io)),
            FailureCause::Unreachable
        );
        assert_eq!(classify(&Error::new(ErrorKind::Unauthorized, "not authorised")), FailureCause::Refused);
        let full = Error::io("Cannot write", std::io::Error::from_raw_os_error(28));
        assert_eq!(classify(&full), FailureCause::ReplicaFull);
        assert_eq!(classify(&Error::new(ErrorKind::NoSpace, "Replica refused")), FailureCause::ReplicaFull);
        assert_eq!(classify(&Error::new(ErrorKind::Qemu, "QMP failed")), FailureCause::Other);
    }
}
