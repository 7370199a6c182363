//! Replication health (JOB-2) and replication statistics.
//!
//! Health is the worst of its reasons: Critical when the primary cannot send, a resync is
//! required or the replica is paused; Warning when more than 20% of the expected cycles in the
//! window were missed, the last sync is over an hour old, initial replication is incomplete, the
//! item is failed over but not re-protected, or replication is paused; Normal otherwise.
//! NotApplicable when protection is not enabled. Each reason has a stable code.

use chrono::{DateTime, Duration, Utc};
use ferry_types::protection::{Health, ReplicationState};

/// Missed-cycle share above which health turns Warning (20%).
pub const MISSED_CYCLES_WARNING_PERCENT: u64 = 20;
/// Time since the last sync after which health turns Warning.
pub const SYNC_OVERDUE_AFTER_MINUTES: i64 = 60;

/// Facts about one protected item, gathered by the vault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthInput {
    pub enabled: bool,
    /// Cycles expected in the observation window (window / copy frequency).
    pub cycles_expected: u64,
    pub cycles_missed: u64,
    pub last_sync: Option<DateTime<Utc>>,
    pub initial_replication_complete: bool,
    pub failed_over_not_reprotected: bool,
    pub paused: bool,
    pub primary_cannot_send: bool,
    pub resync_required: bool,
    pub replica_paused: bool,
}

impl HealthInput {
    /// The flags that follow from the replication state alone; counters stay zero.
    pub fn for_state(state: ReplicationState) -> Self {
        Self {
            enabled: state != ReplicationState::NotEnabled,
            initial_replication_complete: !matches!(
                state,
                ReplicationState::WaitingForInitialReplication | ReplicationState::InitialReplicationInProgress
            ),
            failed_over_not_reprotected: matches!(
                state,
                ReplicationState::FailedOverCommitPending | ReplicationState::Committed
            ),
            paused: state == ReplicationState::Paused,
            resync_required: state == ReplicationState::ResyncRequired,
            ..Default::default()
        }
    }
}

/// One reason behind a health value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReason {
    /// Stable code, e.g. `MissedCycles`.
    pub code: &'static str,
    pub health: Health,
    pub message: String,
}

fn reason(code: &'static str, health: Health, message: String) -> HealthReason {
    HealthReason { code, health, message }
}

/// JOB-2: the health and every reason for it, most severe first.
pub fn compute_health(input: &HealthInput, now: DateTime<Utc>) -> (Health, Vec<HealthReason>) {
    if !input.enabled {
        return (Health::NotApplicable, Vec::new());
    }
    let mut reasons = Vec::new();
    if input.primary_cannot_send {
        reasons.push(reason(
            "PrimaryCannotSend",
            Health::Critical,
            "The primary host cannot send replication data".into(),
        ));
    }
    if input.resync_required {
        reasons.push(reason("ResyncRequired", Health::Critical, "Resynchronization is required".into()));
    }
    if input.replica_paused {
        reasons.push(reason("ReplicaPaused", Health::Critical, "Replication is paused on the replica".into()));
    }
    if input.cycles_expected > 0 && input.cycles_missed * 100 > input.cycles_expected * MISSED_CYCLES_WARNING_PERCENT {
        reasons.push(reason(
            "MissedCycles",
            Health::Warning,
            format!("{} of {} replication cycles were missed", input.cycles_missed, input.cycles_expected),
        ));
    }
    if input.initial_replication_complete && !input.failed_over_not_reprotected {
        let overdue = match input.last_sync {
            Some(t) => now - t > Duration::minutes(SYNC_OVERDUE_AFTER_MINUTES),
            None => true,
        };
        if overdue {
            reasons.push(reason("SyncOverdue", Health::Warning, "More than 1 hour since the last sync".into()));
        }
    }
    if !input.initial_replication_complete {
        reasons.push(reason(
            "InitialReplicationIncomplete",
            Health::Warning,
            "Initial replication is not complete".into(),
        ));
    }
    if input.failed_over_not_reprotected {
        reasons.push(reason("FailedOverNotReprotected", Health::Warning, "Failed over but not re-protected".into()));
    }
    if input.paused {
        reasons.push(reason("ReplicationPaused", Health::Warning, "Replication is paused".into()));
    }
    let health = reasons.iter().map(|r| r.health).max().unwrap_or(Health::Normal);
    (health, reasons)
}

/// One replication cycle as measured (REP-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleSample {
    pub succeeded: bool,
    pub delta_bytes: u64,
    /// Time from capture to the replica's acknowledgement.
    pub latency_ms: u64,
}

/// Statistics over a window of cycles (JOB-2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicationStatistics {
    pub successful_cycles: u64,
    pub missed_cycles: u64,
    /// Over successful cycles; 0 when there is none.
    pub avg_delta_bytes: u64,
    pub max_delta_bytes: u64,
    pub avg_latency_ms: u64,
}

/// Averages and maxima over the successful cycles; failed ones count as missed.
pub fn statistics(samples: &[CycleSample]) -> ReplicationStatistics {
    let ok: Vec<&CycleSample> = samples.iter().filter(|s| s.succeeded).collect();
    let n = ok.len() as u64;
    let sum = |f: fn(&CycleSample) -> u64| ok.iter().map(|s| u128::from(f(s))).sum::<u128>();
    let avg = |total: u128| {
        if n == 0 {
            0
        } else {
            u64::try_from(total / u128::from(n)).unwrap_or(u64::MAX)
        }
    };
    ReplicationStatistics {
        successful_cycles: n,
        missed_cycles: samples.len() as u64 - n,
        avg_delta_bytes: avg(sum(|s| s.delta_bytes)),
        max_delta_bytes: ok.iter().map(|s| s.delta_bytes).max().unwrap_or(0),
        avg_latency_ms: avg(sum(|s| s.latency_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).single().expect("valid time")
    }

    fn healthy() -> HealthInput {
        HealthInput {
            enabled: true,
            cycles_expected: 12,
            cycles_missed: 0,
            last_sync: Some(now() - Duration::minutes(5)),
            initial_replication_complete: true,
            ..Default::default()
        }
    }

    fn codes(input: &HealthInput) -> (Health, Vec<&'static str>) {
        let (h, r) = compute_health(input, now());
        (h, r.iter().map(|r| r.code).collect())
    }

    #[test]
    fn job_2_normal_when_all_good() {
        assert_eq!(codes(&healthy()), (Health::Normal, vec![]));
    }

    #[test]
    fn job_2_not_applicable_when_not_enabled() {
        let input = HealthInput { enabled: false, primary_cannot_send: true, ..healthy() };
        assert_eq!(codes(&input), (Health::NotApplicable, vec![]));
        assert_eq!(codes(&HealthInput::for_state(ReplicationState::NotEnabled)), (Health::NotApplicable, vec![]));
    }

    #[test]
    fn job_2_missed_cycles_over_20_percent_is_warning() {
        let mut input = HealthInput { cycles_expected: 10, cycles_missed: 2, ..healthy() };
        assert_eq!(codes(&input), (Health::Normal, vec![]));
        input.cycles_missed = 3;
        let (h, reasons) = compute_health(&input, now());
        assert_eq!(h, Health::Warning);
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].code, "MissedCycles");
        assert_eq!(reasons[0].message, "3 of 10 replication cycles were missed");
    }

    #[test]
    fn job_2_sync_older_than_an_hour_is_warning() {
        let input = HealthInput { last_sync: Some(now() - Duration::minutes(60)), ..healthy() };
        assert_eq!(codes(&input), (Health::Normal, vec![]));
        let input = HealthInput { last_sync: Some(now() - Duration::minutes(61)), ..healthy() };
        assert_eq!(codes(&input), (Health::Warning, vec!["SyncOverdue"]));
        let input = HealthInput { last_sync: None, ..healthy() };
        assert_eq!(codes(&input), (Health::Warning, vec!["SyncOverdue"]));
    }

    #[test]
    fn job_2_warning_reasons() {
        let input = HealthInput { initial_replication_complete: false, last_sync: None, ..healthy() };
        assert_eq!(codes(&input), (Health::Warning, vec!["InitialReplicationIncomplete"]));
        let input = HealthInput { failed_over_not_reprotected: true, last_sync: None, ..healthy() };
        assert_eq!(codes(&input), (Health::Warning, vec!["FailedOverNotReprotected"]));
        let input = HealthInput { paused: true, ..healthy() };
        assert_eq!(codes(&input), (Health::Warning, vec!["ReplicationPaused"]));
    }

    #[test]
    fn job_2_critical_reasons_outrank_warnings() {
        let input = HealthInput { primary_cannot_send: true, paused: true, ..healthy() };
        assert_eq!(codes(&input), (Health::Critical, vec!["PrimaryCannotSend", "ReplicationPaused"]));
        let input = HealthInput { resync_required: true, ..healthy() };
        assert_eq!(codes(&input), (Health::Critical, vec!["ResyncRequired"]));
        let input = HealthInput { replica_paused: true, ..healthy() };
        assert_eq!(codes(&input), (Health::Critical, vec!["ReplicaPaused"]));
    }

    #[test]
    fn job_2_flags_from_state() {
        let input = HealthInput::for_state(ReplicationState::ResyncRequired);
        assert!(input.enabled && input.resync_required && input.initial_replication_complete);
        let input = HealthInput::for_state(ReplicationState::InitialReplicationInProgress);
        assert!(!input.initial_replication_complete);
        let input = HealthInput::for_state(ReplicationState::Committed);
        assert!(input.failed_over_not_reprotected);
        let input = HealthInput { last_sync: Some(now()), ..HealthInput::for_state(ReplicationState::Paused) };
        assert_eq!(codes(&input), (Health::Warning, vec!["ReplicationPaused"]));
    }

    #[test]
    fn job_2_statistics() {
        let samples = [
            CycleSample { succeeded: true, delta_bytes: 100, latency_ms: 10 },
            CycleSample { succeeded: false, delta_bytes: 999_999, latency_ms: 9_999 },
            CycleSample { succeeded: true, delta_bytes: 300, latency_ms: 30 },
            CycleSample { succeeded: true, delta_bytes: 200, latency_ms: 50 },
        ];
        assert_eq!(
            statistics(&samples),
            ReplicationStatistics {
                successful_cycles: 3,
                missed_cycles: 1,
                avg_delta_bytes: 200,
                max_delta_bytes: 300,
                avg_latency_ms: 30
            }
        );
        assert_eq!(statistics(&[]), ReplicationStatistics::default());
    }
}
