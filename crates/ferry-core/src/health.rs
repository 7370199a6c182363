//! Replication health (JOB-2) and replication statistics.
//!
//! Health is the worst of its reasons: Critical when replication stalled (no recovery point for
//! max(3 × copy frequency, 2 min) while cycles are expected, or cycles have failed that long;
//! the reason names the cause), the primary cannot send, a resync is required, or the replica
//! is full or paused; Warning when more than 20% of the cycles expected in the last hour were
//! missed, the last sync is over an hour old, initial replication is incomplete, the item is
//! failed over but not re-protected, or replication is paused; Normal otherwise.
//! NotApplicable when protection is not enabled. Each reason has a stable code.
//!
//! The RPO of an item is the age of the newest recovery point on its replica ([`rpo_secs`]).

use chrono::{DateTime, Duration, Utc};
use ferry_types::protection::{Health, ReplicationState};
use ferry_types::site_protocol::FailureCause;

/// Missed-cycle share above which health turns Warning (20%).
pub const MISSED_CYCLES_WARNING_PERCENT: u64 = 20;
/// Time since the last sync after which health turns Warning.
pub const SYNC_OVERDUE_AFTER_MINUTES: i64 = 60;
/// The shortest time without a recovery point that counts as a stall.
pub const STALL_FLOOR_SECS: i64 = 120;
/// A source host clock further than this from the vault's raises a Warning (`ClockSkew`).
pub const CLOCK_SKEW_WARNING_SECS: i64 = 30;
/// Code of the stall reason (its transitions are the `ReplicationStalled` / `ReplicationRecovered`
/// events).
pub const STALLED: &str = "ReplicationStalled";

/// How long an item may go without a recovery point before it counts as stalled:
/// max(3 × copy frequency, 2 min).
pub fn stall_after(copy_frequency_secs: u64) -> Duration {
    Duration::seconds((3 * i64::try_from(copy_frequency_secs).unwrap_or(i64::MAX / 4)).max(STALL_FLOOR_SECS))
}

/// RPO now: seconds since the newest recovery point on the replica.
pub fn rpo_secs(latest_point: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<u64> {
    latest_point.map(|t| u64::try_from((now - t).num_seconds()).unwrap_or(0))
}

/// `2026-03-01 11:58:00 UTC`.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// "3 min 20 s", "45 s", "2 h 5 min".
pub fn fmt_age(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 if s % 60 == 0 => format!("{} min", s / 60),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Why a replicated item is not getting new points (JOB-2 stall detection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StallInput {
    /// Cycles are expected now (protected, resynchronizing; not paused, not failed over).
    pub cycles_expected: bool,
    pub copy_frequency_secs: u64,
    /// The newest recovery point on the replica (or the last sync the source reported).
    pub last_good: Option<DateTime<Utc>>,
    /// When protection was enabled: the reference while no point is known.
    pub protected_since: Option<DateTime<Utc>>,
    /// Since when the source's cycles fail, why, and its message.
    pub failing_since: Option<DateTime<Utc>>,
    pub failure: Option<FailureCause>,
    pub failure_message: Option<String>,
    /// The source host and when it last reported this item.
    pub source_host: String,
    pub source_last_report: Option<DateTime<Utc>>,
    /// The replica host (for messages).
    pub target_host: String,
}

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
    pub replica_full: bool,
    /// Stall detection input; `None` when not known (only the flags above count).
    pub stall: Option<StallInput>,
    /// The source host and how far its clock is ahead of the vault's (negative: behind), when
    /// measured.
    pub source_clock: Option<(String, Duration)>,
    /// RP-1: the newest recovery point that failed verification, if any.
    pub point_damage: Option<PointDamage>,
}

/// A recovery point that failed verification (RP-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PointDamage {
    pub point: String,
    pub detail: String,
    /// A newer point was verified exact since (a repair healed the replica).
    pub newer_point_verified: bool,
}

/// RP-1: the newest damaged point of `points` (oldest first), and whether a newer one verified.
pub fn point_damage(points: &[ferry_types::protection::RecoveryPoint]) -> Option<PointDamage> {
    let k = points.iter().rposition(|p| p.verification.as_ref().is_some_and(|v| v.sealed && !v.ok))?;
    let v = points[k].verification.as_ref()?;
    Some(PointDamage {
        point: points[k].id.clone(),
        detail: v.damage.first().cloned().unwrap_or_default(),
        newer_point_verified: points[k + 1..].iter().any(|p| p.verification.as_ref().is_some_and(|v| v.ok)),
    })
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

/// The stall reason, if `s` shows one at `now`: no point for max(3 × frequency, 2 min) while
/// cycles are expected, or cycles failing that long (also during an initial copy). The message
/// names the cause.
pub fn stall_reason(s: &StallInput, now: DateTime<Utc>) -> Option<HealthReason> {
    let limit = stall_after(s.copy_frequency_secs);
    let reference = s.last_good.or(s.protected_since);
    let no_point = s.cycles_expected && reference.is_none_or(|t| now - t > limit);
    let failing = s.failing_since.is_some_and(|t| now - t > limit);
    if !no_point && !failing {
        return None;
    }
    let silent = s.source_last_report.is_none_or(|t| now - t > limit);
    let cause = if silent {
        match s.source_last_report {
            Some(t) => format!("no report from host {} since {}", s.source_host, fmt_time(t)),
            None => format!("no report from host {}", s.source_host),
        }
    } else {
        match (&s.failure_message, s.failure) {
            (Some(m), _) => m.clone(),
            (None, Some(c)) => format!("{c:?}"),
            (None, None) => format!("a cycle to {} has been running for long", s.target_host),
        }
    };
    // Times, not ages: the reason stays the same while the stall lasts.
    let since = match (s.last_good, s.failing_since) {
        (Some(t), _) if no_point => format!("No recovery point since {}", fmt_time(t)),
        (None, _) if no_point => match s.protected_since {
            Some(t) => format!("No recovery point since protection was enabled at {}", fmt_time(t)),
            None => "No recovery point yet".to_string(),
        },
        (_, Some(t)) => format!("Cycles fail since {}", fmt_time(t)),
        _ => "Replication stalled".to_string(),
    };
    Some(reason(STALLED, Health::Critical, format!("{since}: {cause}")))
}

/// JOB-2: the health and every reason for it, most severe first.
pub fn compute_health(input: &HealthInput, now: DateTime<Utc>) -> (Health, Vec<HealthReason>) {
    if !input.enabled {
        return (Health::NotApplicable, Vec::new());
    }
    let mut reasons = Vec::new();
    if let Some(r) = input.stall.as_ref().and_then(|s| stall_reason(s, now)) {
        reasons.push(r);
    }
    if input.replica_full {
        let target = input.stall.as_ref().map(|s| s.target_host.as_str()).unwrap_or("the replica host");
        reasons.push(reason(
            "ReplicaFull",
            Health::Critical,
            format!("The replica location on {target} is full; free space or map the VM to other storage"),
        ));
    }
    if let Some(d) = &input.point_damage {
        let target = input.stall.as_ref().map(|s| s.target_host.as_str()).unwrap_or("the replica host");
        if d.newer_point_verified {
            reasons.push(reason(
                "DamagedRecoveryPoints",
                Health::Warning,
                format!(
                    "Recovery point {} on {target} (and older ones that share its data) failed verification ({}); \
                     newer points verify, choose one of them",
                    d.point, d.detail
                ),
            ));
        } else {
            reasons.push(reason(
                "ReplicaDamaged",
                Health::Critical,
                format!(
                    "Recovery point {} on {target} failed verification ({}); repair replication to heal it from the \
                     source",
                    d.point, d.detail
                ),
            ));
        }
    }
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
            format!(
                "{} of {} replication cycles expected in the last hour were missed",
                input.cycles_missed, input.cycles_expected
            ),
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
    if let Some((host, offset)) =
        input.source_clock.as_ref().filter(|(_, o)| o.num_seconds().abs() > CLOCK_SKEW_WARNING_SECS)
    {
        let secs = offset.num_seconds();
        reasons.push(reason(
            "ClockSkew",
            Health::Warning,
            format!(
                "The clock of host {host} is {} s {} the vault's: Ferry corrects the times it reports, but its \
                 recovery points are dated by that clock; synchronize it (NTP)",
                secs.abs(),
                if secs > 0 { "ahead of" } else { "behind" }
            ),
        ));
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
        assert_eq!(reasons[0].message, "3 of 10 replication cycles expected in the last hour were missed");
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

    fn stall_input() -> StallInput {
        StallInput {
            cycles_expected: true,
            copy_frequency_secs: 30,
            last_good: Some(now() - Duration::seconds(20)),
            source_host: "ny1".into(),
            source_last_report: Some(now() - Duration::seconds(3)),
            target_host: "chi1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn job_2_stall_threshold_is_three_copy_frequencies_but_at_least_two_minutes() {
        assert_eq!(stall_after(30), Duration::seconds(120));
        assert_eq!(stall_after(300), Duration::seconds(900));
        assert_eq!(stall_after(900), Duration::seconds(2700));
        assert_eq!(stall_after(5), Duration::seconds(120));
    }

    #[test]
    fn job_2_a_stall_is_critical_and_names_its_cause() {
        let base = healthy();
        let mut s = stall_input();
        let input = HealthInput { stall: Some(s.clone()), ..base.clone() };
        assert_eq!(codes(&input), (Health::Normal, vec![]));
        // Unreachable replica: no point for 2 min 1 s.
        s.last_good = Some(now() - Duration::seconds(121));
        s.failing_since = Some(now() - Duration::seconds(100));
        s.failure = Some(FailureCause::Unreachable);
        s.failure_message = Some("cannot connect to chi1 at 127.0.0.1:40515: connection refused".into());
        let (h, r) = compute_health(&HealthInput { stall: Some(s.clone()), ..base.clone() }, now());
        assert_eq!(h, Health::Critical);
        assert_eq!(r[0].code, STALLED);
        assert_eq!(
            r[0].message,
            "No recovery point since 2025-03-01 11:57:59 UTC: cannot connect to chi1 at 127.0.0.1:40515: connection refused"
        );
        // The source host went silent: the cause says so.
        s.source_last_report = Some(now() - Duration::seconds(300));
        let (_, r) = compute_health(&HealthInput { stall: Some(s.clone()), ..base.clone() }, now());
        assert!(r[0].message.ends_with("no report from host ny1 since 2025-03-01 11:55:00 UTC"), "{}", r[0].message);
        // Paused or failed over: no cycle is expected, no stall.
        s.cycles_expected = false;
        s.failing_since = None;
        assert_eq!(codes(&HealthInput { stall: Some(s.clone()), ..base.clone() }).0, Health::Normal);
        // During an initial copy, cycles failing for long are a stall too.
        s.failing_since = Some(now() - Duration::seconds(200));
        s.source_last_report = Some(now());
        s.failure_message = Some("chi1 refuses this host: not authorised".into());
        let (h, r) = compute_health(&HealthInput { stall: Some(s), ..base }, now());
        assert_eq!(
            (h, r[0].message.as_str()),
            (Health::Critical, "Cycles fail since 2025-03-01 11:56:40 UTC: chi1 refuses this host: not authorised")
        );
    }

    #[test]
    fn job_2_a_full_replica_is_critical_at_once() {
        let input = HealthInput { replica_full: true, stall: Some(stall_input()), ..healthy() };
        assert_eq!(codes(&input), (Health::Critical, vec!["ReplicaFull"]));
    }

    #[test]
    fn job_2_rpo_is_the_age_of_the_newest_point() {
        assert_eq!(rpo_secs(Some(now() - Duration::seconds(42)), now()), Some(42));
        assert_eq!(rpo_secs(None, now()), None);
        assert_eq!(fmt_age(Duration::seconds(7325)), "2 h 2 min");
        assert_eq!(fmt_age(Duration::seconds(180)), "3 min");
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

    #[test]
    fn rp_1_a_damaged_point_is_critical_until_a_newer_point_verifies() {
        let p = |id: &str, v: Option<bool>| ferry_types::protection::RecoveryPoint {
            id: id.into(),
            time: now(),
            app_consistent: false,
            size_bytes: 0,
            verification: v.map(|ok| ferry_types::protection::PointVerification {
                at: now(),
                sealed: true,
                ok,
                damage: if ok { vec![] } else { vec![format!("vda 0+64 MiB of {id}")] },
            }),
        };
        assert_eq!(point_damage(&[p("a", Some(true)), p("b", None)]), None);
        let damaged = point_damage(&[p("a", Some(false)), p("b", Some(false)), p("c", None)]).expect("damage");
        assert_eq!((damaged.point.as_str(), damaged.newer_point_verified), ("b", false));
        let input = HealthInput { point_damage: Some(damaged), ..healthy() };
        assert_eq!(codes(&input), (Health::Critical, vec!["ReplicaDamaged"]));
        let healed = point_damage(&[p("a", Some(false)), p("b", Some(true))]).expect("damage");
        assert!(healed.newer_point_verified);
        let input = HealthInput { point_damage: Some(healed), ..healthy() };
        assert_eq!(codes(&input), (Health::Warning, vec!["DamagedRecoveryPoints"]));
    }

    #[test]
    fn rp_1_job_2_a_source_clock_off_by_more_than_30_s_is_a_warning_with_the_host_named() {
        let skew = |secs: i64| HealthInput { source_clock: Some(("ny1".into(), Duration::seconds(secs))), ..healthy() };
        assert_eq!(codes(&skew(29)), (Health::Normal, vec![]));
        assert_eq!(codes(&skew(-30)), (Health::Normal, vec![]));
        assert_eq!(codes(&skew(31)), (Health::Warning, vec!["ClockSkew"]));
        let (_, r) = compute_health(&skew(-240), now());
        assert!(r[0].message.contains("host ny1 is 240 s behind the vault's"), "{}", r[0].message);
        let (_, r) = compute_health(&skew(95), now());
        assert!(r[0].message.contains("95 s ahead of"), "{}", r[0].message);
    }
}
