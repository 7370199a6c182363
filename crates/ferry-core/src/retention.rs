//! Recovery point retention (RP-2, POL-4) and recovery point selection (RP-3).
//!
//! A replica disk is a forward chain `base ← rp1 ← … ← rpN`; removing a point means merging it
//! into its neighbour (oldest ones into the base). The plan says which points to keep and which
//! to merge, by keep-rules:
//! 1. the latest point is always kept;
//! 2. points in use (test failover, failover pending commit) are never merged;
//! 3. for each of the last N hours (N = retention hours) one point is kept: the latest
//!    app-consistent point of that hour, else its latest point. Hour k (1..=N) holds the points
//!    whose age, measured from the latest point, is in ((k-1) h, k h]. Anchoring on the latest
//!    point, not the wall clock, keeps history intact while replication is stopped;
//! 4. the chain stays at most `max_chain_depth` points deep: the oldest kept points that are not
//!    in use and not the latest are merged first.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Chain depth past which reads slow down sharply; the plan keeps chains within it.
pub const DEFAULT_MAX_CHAIN_DEPTH: usize = 48;

/// What retention and selection need to know about one recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointInfo {
    pub id: String,
    pub time: DateTime<Utc>,
    pub app_consistent: bool,
    /// Used by a test failover or a failover pending commit: never merged.
    pub in_use: bool,
    /// Applied to the replica chain (received data is processed into points in order).
    pub processed: bool,
}

/// Point ids to keep and to merge, each oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    pub keep: Vec<String>,
    pub merge: Vec<String>,
}

/// RP-2: the retention plan for one VM's points.
pub fn plan_retention(points: &[PointInfo], retention_hours: u32, max_chain_depth: usize) -> RetentionPlan {
    let mut sorted: Vec<&PointInfo> = points.iter().collect();
    sorted.sort_by_key(|p| p.time);
    let Some(latest) = sorted.last().copied() else {
        return RetentionPlan::default();
    };
    let mut keep = vec![false; sorted.len()];
    let last = sorted.len() - 1;
    keep[last] = true;
    for (i, p) in sorted.iter().enumerate() {
        if p.in_use {
            keep[i] = true;
        }
    }
    // One point per hour bucket: the latest app-consistent, else the latest.
    let mut chosen: Vec<Option<(usize, bool)>> = vec![None; retention_hours as usize + 1];
    for (i, p) in sorted.iter().enumerate().take(last) {
        let age = (latest.time - p.time).num_seconds().max(0);
        let bucket = (age + 3599) / 3600;
        let Some(slot) = usize::try_from(bucket).ok().filter(|b| *b >= 1).and_then(|b| chosen.get_mut(b)) else {
            continue;
        };
        // Iterating oldest first, a later point replaces an earlier one of the same kind.
        match slot {
            Some((_, true)) if !p.app_consistent => {}
            _ => *slot = Some((i, p.app_consistent)),
        }
    }
    for (i, _) in chosen.into_iter().flatten() {
        keep[i] = true;
    }
    // Chain depth: merge the oldest mergeable kept points.
    let mut depth = keep.iter().filter(|k| **k).count();
    for i in 0..last {
        if depth <= max_chain_depth {
            break;
        }
        if keep[i] && !sorted[i].in_use {
            keep[i] = false;
            depth -= 1;
        }
    }
    let mut plan = RetentionPlan::default();
    for (p, k) in sorted.iter().zip(keep) {
        if k { &mut plan.keep } else { &mut plan.merge }.push(p.id.clone());
    }
    plan
}

/// Which point a failover uses (RP-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryPointChoice {
    /// The latest point already applied to the replica (fastest).
    LatestProcessed,
    /// The latest point received; pending data is processed first (least data loss).
    Latest,
    LatestAppConsistent,
    Specific(String),
}

/// RP-3: the point a choice designates.
pub fn select_recovery_point<'a>(
    points: &'a [PointInfo],
    choice: &RecoveryPointChoice,
) -> Result<&'a PointInfo, Error> {
    let latest_where = |f: &dyn Fn(&PointInfo) -> bool| points.iter().filter(|p| f(p)).max_by_key(|p| p.time);
    match choice {
        RecoveryPointChoice::Specific(id) => {
            points.iter().find(|p| &p.id == id).ok_or_else(|| Error::RecoveryPointNotFound { id: id.clone() })
        }
        _ if points.is_empty() => Err(Error::NoRecoveryPoints),
        RecoveryPointChoice::Latest => latest_where(&|_| true).ok_or(Error::NoRecoveryPoints),
        RecoveryPointChoice::LatestProcessed => latest_where(&|p| p.processed).ok_or(Error::NoProcessedRecoveryPoint),
        RecoveryPointChoice::LatestAppConsistent => {
            latest_where(&|p| p.app_consistent).ok_or(Error::NoAppConsistentRecoveryPoint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).single().expect("valid time")
    }

    /// A point `mins` minutes before t0.
    fn p(id: &str, mins: i64, app: bool) -> PointInfo {
        PointInfo {
            id: id.into(),
            time: t0() - Duration::minutes(mins),
            app_consistent: app,
            in_use: false,
            processed: true,
        }
    }

    /// Points every 30 minutes for 4 hours: ids m0 (latest) .. m240.
    fn half_hourly() -> Vec<PointInfo> {
        (0..=8).map(|i| p(&format!("m{}", i * 30), i * 30, false)).collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rp_2_zero_retention_keeps_only_latest() {
        let plan = plan_retention(&half_hourly(), 0, DEFAULT_MAX_CHAIN_DEPTH);
        assert_eq!(plan.keep, ids(&["m0"]));
        assert_eq!(plan.merge, ids(&["m240", "m210", "m180", "m150", "m120", "m90", "m60", "m30"]));
    }

    #[test]
    fn rp_2_one_point_per_hour_for_retention_window() {
        // Hour 1 = (0, 60] min: m30, m60 → latest is m30. Hour 2 = (60, 120]: m90, m120 → m90.
        let plan = plan_retention(&half_hourly(), 2, DEFAULT_MAX_CHAIN_DEPTH);
        assert_eq!(plan.keep, ids(&["m90", "m30", "m0"]));
        assert_eq!(plan.merge, ids(&["m240", "m210", "m180", "m150", "m120", "m60"]));
    }

    #[test]
    fn rp_2_prefers_app_consistent_within_hour() {
        let mut points = half_hourly();
        points[2].app_consistent = true; // m60, hour 1
        points[4].app_consistent = true; // m120, hour 2
        let plan = plan_retention(&points, 2, DEFAULT_MAX_CHAIN_DEPTH);
        assert_eq!(plan.keep, ids(&["m120", "m60", "m0"]));
    }

    #[test]
    fn rp_2_never_merges_points_in_use() {
        let mut points = half_hourly();
        points[8].in_use = true; // m240, used by a test failover
        let plan = plan_retention(&points, 1, DEFAULT_MAX_CHAIN_DEPTH);
        assert_eq!(plan.keep, ids(&["m240", "m30", "m0"]));
        assert!(!plan.merge.contains(&"m240".to_string()));
    }

    #[test]
    fn rp_2_chain_depth_limit_merges_oldest() {
        let mut points = half_hourly();
        points[7].in_use = true; // m210
                                 // Hours 1..=4 keep m30, m90, m150, m210 (also in use); plus the latest m0.
        let plan = plan_retention(&points, 4, DEFAULT_MAX_CHAIN_DEPTH);
        assert_eq!(plan.keep, ids(&["m210", "m150", "m90", "m30", "m0"]));
        let plan = plan_retention(&points, 4, 3);
        assert_eq!(plan.keep, ids(&["m210", "m30", "m0"]));
        assert_eq!(plan.merge, ids(&["m240", "m180", "m150", "m120", "m90", "m60"]));
    }

    #[test]
    fn rp_2_unsorted_input_and_empty() {
        let mut points = half_hourly();
        points.reverse();
        let plan = plan_retention(&points, 2, DEFAULT_MAX_CHAIN_DEPTH);
        assert_eq!(plan.keep, ids(&["m90", "m30", "m0"]));
        assert_eq!(plan_retention(&[], 24, DEFAULT_MAX_CHAIN_DEPTH), RetentionPlan::default());
    }

    #[test]
    fn rp_3_select_points() {
        let mut points = vec![p("a", 120, true), p("b", 60, false), p("c", 5, false)];
        points[2].processed = false;
        let pick = |c: RecoveryPointChoice| select_recovery_point(&points, &c).map(|p| p.id.as_str());
        assert_eq!(pick(RecoveryPointChoice::Latest), Ok("c"));
        assert_eq!(pick(RecoveryPointChoice::LatestProcessed), Ok("b"));
        assert_eq!(pick(RecoveryPointChoice::LatestAppConsistent), Ok("a"));
        assert_eq!(pick(RecoveryPointChoice::Specific("b".into())), Ok("b"));
        assert_eq!(
            pick(RecoveryPointChoice::Specific("zz".into())),
            Err(Error::RecoveryPointNotFound { id: "zz".into() })
        );
    }

    #[test]
    fn rp_3_errors_when_none() {
        let none: Vec<PointInfo> = vec![];
        assert_eq!(select_recovery_point(&none, &RecoveryPointChoice::Latest), Err(Error::NoRecoveryPoints));
        assert_eq!(
            select_recovery_point(&none, &RecoveryPointChoice::LatestAppConsistent),
            Err(Error::NoRecoveryPoints)
        );
        let crash_only = vec![p("a", 10, false)];
        assert_eq!(
            select_recovery_point(&crash_only, &RecoveryPointChoice::LatestAppConsistent),
            Err(Error::NoAppConsistentRecoveryPoint)
        );
        let mut unprocessed = vec![p("a", 10, false)];
        unprocessed[0].processed = false;
        assert_eq!(
            select_recovery_point(&unprocessed, &RecoveryPointChoice::LatestProcessed),
            Err(Error::NoProcessedRecoveryPoint)
        );
    }
}
