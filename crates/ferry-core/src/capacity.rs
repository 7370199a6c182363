//! CAP-1: the capacity report of a plan, from the churn its hosts measured.
//!
//! Per VM, from its [`ChurnProfile`] (unique changed bytes per window of 30 s, 5 min, 15 min, 1 h):
//! - **daily churn**: the mean hourly churn (over every hour measured) × 24. Before an hour has
//!   been measured, the mean of the longest window measured, scaled to a day: an upper bound (a
//!   cluster rewritten in two windows counts twice), said so in the basis.
//! - **bandwidth per copy frequency F**: a cycle sends its window's changes within the next window,
//!   so keeping up needs the window's bytes / F. *Peak* is the largest window, *average* the mean;
//!   the plan's figure sums the VMs' (peaks as if they coincided: an upper bound).
//! - **initial replication time**: all allocated data at the given bandwidth.
//! - **replica storage** for retention R at copy frequency F: Ferry keeps the latest point and one
//!   point per hour for R hours (RP-2), so the chain holds the allocated data, at most R hours of
//!   unique churn (the largest hour, each) and the latest point's window (the largest F window).
//!   Before an hour has been measured, an hour is bounded by the 15-min (or shorter) windows.
//!
//! Figures that need a window not measured yet are left out and a note says why.

use std::collections::HashSet;

use ferry_types::capacity::{
    BandwidthNeed, CapacityPlan, CapacityReport, ChurnProfile, ReportParams, VmCapacity, MAX_PLAN_VMS, WINDOW_SECS,
};

use crate::error::Error;

const COPY_FREQUENCIES: [u32; 3] = [30, 300, 900];
const DAY: f64 = 86_400.0;

/// Check a plan's name, VM list and duration before anything is created.
pub fn validate_plan(name: &str, vms: &[String], duration_hours: Option<u32>) -> Result<(), Error> {
    let bad = |reason: &str| Error::CapacityPlanInvalidName { reason: reason.into() };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("use 1 to 64 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(bad("use letters, digits, '-', '_' and '.'"));
    }
    if vms.is_empty() || vms.len() > MAX_PLAN_VMS {
        return Err(Error::CapacityPlanVmCount { count: vms.len(), max: MAX_PLAN_VMS });
    }
    let mut seen = HashSet::new();
    for v in vms {
        if !seen.insert(v.as_str()) {
            return Err(Error::CapacityPlanDuplicateVm { vm: v.clone() });
        }
    }
    if let Some(h) = duration_hours {
        if !(1..=720).contains(&h) {
            return Err(Error::CapacityPlanInvalidDuration { hours: h });
        }
    }
    Ok(())
}

/// Check the report's inputs.
pub fn validate_params(p: &ReportParams) -> Result<(), Error> {
    if !(p.bandwidth_mbps.is_finite() && p.bandwidth_mbps > 0.0 && p.bandwidth_mbps <= 1_000_000.0) {
        return Err(Error::CapacityReportInvalidParam {
            name: "bandwidth_mbps",
            value: p.bandwidth_mbps.to_string(),
            range: "more than 0, at most 1000000",
        });
    }
    if p.retention_hours > 24 {
        return Err(Error::CapacityReportInvalidParam {
            name: "retention_hours",
            value: p.retention_hours.to_string(),
            range: "0..=24",
        });
    }
    if !COPY_FREQUENCIES.contains(&p.copy_frequency_secs) {
        return Err(Error::CapacityReportInvalidParam {
            name: "copy_frequency_secs",
            value: p.copy_frequency_secs.to_string(),
            range: "30, 300 or 900",
        });
    }
    Ok(())
}

fn mbps(bytes_per_sec: f64) -> f64 {
    bytes_per_sec * 8.0 / 1e6
}

/// Daily churn of one VM and the window length it comes from (3600 = measured hours).
fn daily_churn(p: &ChurnProfile) -> Option<(u64, u32)> {
    WINDOW_SECS.iter().rev().find_map(|w| {
        p.window(*w).map(|s| {
            let mean = s.total_bytes as f64 / s.windows as f64;
            ((mean * DAY / f64::from(*w)) as u64, *w)
        })
    })
}

/// The largest hour of one VM: measured, else bounded by its shorter windows.
fn peak_hour(p: &ChurnProfile) -> Option<u64> {
    WINDOW_SECS.iter().rev().find_map(|w| p.window(*w).map(|s| s.max_bytes * u64::from(3600 / w)))
}

fn vm_bandwidth(p: &ChurnProfile, f: u32) -> BandwidthNeed {
    match p.window(f) {
        Some(s) => BandwidthNeed {
            copy_frequency_secs: f,
            windows: s.windows,
            average_mbps: Some(mbps(s.total_bytes as f64 / s.windows as f64 / f64::from(f))),
            peak_mbps: Some(mbps(s.max_bytes as f64 / f64::from(f))),
        },
        None => BandwidthNeed { copy_frequency_secs: f, windows: 0, average_mbps: None, peak_mbps: None },
    }
}

fn vm_storage(p: &ChurnProfile, params: &ReportParams) -> Option<u64> {
    let allocated: u64 = p.disks.iter().map(|d| d.allocated_bytes).sum();
    let latest = p.window(params.copy_frequency_secs)?.max_bytes;
    let hours = match params.retention_hours {
        0 => 0,
        r => u64::from(r) * peak_hour(p)?,
    };
    Some(allocated + hours + latest)
}

const BASIS: [(u32, &str); 4] = [
    (3600, "measured hourly windows"),
    (900, "15-minute windows scaled to a day (an upper bound until an hour is measured)"),
    (300, "5-minute windows scaled to a day (an upper bound until an hour is measured)"),
    (30, "30-second windows scaled to a day (an upper bound until an hour is measured)"),
];

/// CAP-1: the report of `plan` under `params` (validated with [`validate_params`]).
pub fn report(plan: &CapacityPlan, params: &ReportParams) -> CapacityReport {
    let measured: Vec<&ChurnProfile> =
        plan.vms.iter().filter_map(|v| plan.profiles.iter().find(|p| p.vm_id == v.vm_id)).collect();
    let mut notes = Vec::new();
    let missing: Vec<&str> =
        plan.vms.iter().filter(|v| !measured.iter().any(|p| p.vm_id == v.vm_id)).map(|v| v.name.as_str()).collect();
    if !missing.is_empty() {
        notes.push(format!(
            "No measurement yet for {} of {} VMs: {}",
            missing.len(),
            plan.vms.len(),
            missing.join(", ")
        ));
    }
    for p in measured.iter().filter(|p| p.error.is_some()) {
        notes.push(format!("{}: {}", p.vm_name, p.error.as_deref().unwrap_or_default()));
    }
    let per_vm: Vec<VmCapacity> = measured
        .iter()
        .map(|p| VmCapacity {
            vm: p.vm_name.clone(),
            state: p.state,
            measured_secs: p.measured_secs,
            disks: p.disks.clone(),
            allocated_bytes: p.disks.iter().map(|d| d.allocated_bytes).sum(),
            daily_churn_bytes: daily_churn(p).map(|d| d.0),
            bandwidth: COPY_FREQUENCIES.iter().map(|f| vm_bandwidth(p, *f)).collect(),
            replica_storage_bytes: vm_storage(p, params),
        })
        .collect();
    let disks: u32 = measured.iter().map(|p| p.disks.len() as u32).sum();
    let allocated: u64 = per_vm.iter().map(|v| v.allocated_bytes).sum();
    let all_or_none = |values: Vec<Option<u64>>| -> Option<u64> {
        if values.is_empty() {
            return None;
        }
        values.into_iter().sum()
    };
    let daily = all_or_none(per_vm.iter().map(|v| v.daily_churn_bytes).collect());
    let basis = measured
        .iter()
        .filter_map(|p| daily_churn(p).map(|d| d.1))
        .min()
        .and_then(|w| BASIS.iter().find(|b| b.0 == w))
        .map_or("not measured yet (no window has ended)", |b| b.1)
        .to_string();
    if daily.is_none() && !measured.is_empty() {
        notes.push("Daily churn needs an ended window on every VM".into());
    }
    let bandwidth: Vec<BandwidthNeed> = COPY_FREQUENCIES
        .iter()
        .map(|f| {
            let each: Vec<&BandwidthNeed> =
                per_vm.iter().flat_map(|v| v.bandwidth.iter().filter(|b| b.copy_frequency_secs == *f)).collect();
            let complete = !each.is_empty() && each.iter().all(|b| b.windows > 0);
            BandwidthNeed {
                copy_frequency_secs: *f,
                windows: each.iter().map(|b| b.windows).min().unwrap_or(0),
                average_mbps: complete.then(|| each.iter().filter_map(|b| b.average_mbps).sum()),
                peak_mbps: complete.then(|| each.iter().filter_map(|b| b.peak_mbps).sum()),
            }
        })
        .collect();
    for b in bandwidth.iter().filter(|b| b.peak_mbps.is_none()) {
        notes.push(format!(
            "Bandwidth at a {} s copy frequency needs a {} s window ended on every VM",
            b.copy_frequency_secs, b.copy_frequency_secs
        ));
    }
    if per_vm.len() > 1 {
        notes.push("Peak bandwidth adds the VMs' peaks as if they coincided (an upper bound)".into());
    }
    let storage = all_or_none(per_vm.iter().map(|v| v.replica_storage_bytes).collect());
    notes.push(format!(
        "Replica storage = allocated data + {} h × the largest hour of churn + the latest point's window at {} s; qcow2 metadata adds well under 1 %",
        params.retention_hours, params.copy_frequency_secs
    ));
    let measured_secs = measured.iter().map(|p| p.measured_secs).min().unwrap_or(0);
    if !measured.is_empty() && measured_secs < DAY as u64 {
        notes.push(format!(
            "Measured for {} min so far: a day with other patterns (backups, batch jobs) is not in the figures yet",
            measured_secs / 60
        ));
    }
    CapacityReport {
        plan: plan.name.clone(),
        state: plan.state,
        params: *params,
        vms_measured: measured.len() as u32,
        vms: plan.vms.len() as u32,
        disks,
        disks_per_vm_max: measured.iter().map(|p| p.disks.len() as u32).max().unwrap_or(0),
        disks_per_vm_average: if measured.is_empty() { 0.0 } else { f64::from(disks) / measured.len() as f64 },
        virtual_bytes: measured.iter().flat_map(|p| p.disks.iter()).map(|d| d.virtual_size).sum(),
        allocated_bytes: allocated,
        measured_secs,
        daily_churn_bytes: daily,
        daily_churn_basis: basis,
        bandwidth,
        initial_replication_secs: allocated as f64 * 8.0 / (params.bandwidth_mbps * 1e6),
        replica_storage_bytes: storage,
        per_vm,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use ferry_types::capacity::{CapacityPlanState, PlannedVm, ProfileState, ProfiledDisk, WindowStats};
    use uuid::Uuid;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn profile(vm: &str, allocated: u64, windows: &[(u32, u64, u64, u64)], hours: &[u64]) -> ChurnProfile {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time");
        ChurnProfile {
            plan: Uuid::nil(),
            vm_id: vm.into(),
            vm_name: vm.into(),
            state: ProfileState::Measuring,
            started_at: t,
            updated_at: t,
            measured_secs: 7200,
            disks: vec![
                ProfiledDisk { target: "vda".into(), virtual_size: 10 << 30, allocated_bytes: allocated / 2 },
                ProfiledDisk { target: "vdb".into(), virtual_size: 20 << 30, allocated_bytes: allocated / 2 },
            ],
            windows: windows
                .iter()
                .map(|(w, n, total, max)| WindowStats {
                    window_secs: *w,
                    windows: *n,
                    total_bytes: *total,
                    max_bytes: *max,
                })
                .collect(),
            hours: hours.to_vec(),
            error: None,
        }
    }

    fn plan(n: usize, profiles: Vec<ChurnProfile>) -> CapacityPlan {
        CapacityPlan {
            id: Uuid::nil(),
            vault_id: Uuid::nil(),
            name: "p".into(),
            site: Uuid::nil(),
            site_name: "ny".into(),
            vms: (0..n)
                .map(|i| PlannedVm { vm_id: format!("vm{i}"), name: format!("vm{i}"), host: "h".into() })
                .collect(),
            state: CapacityPlanState::Measuring,
            created_at: Utc::now(),
            until: None,
            stopped_at: None,
            profiles,
        }
    }

    #[test]
    fn cap_1_report_from_measured_windows() {
        // 240 windows of 30 s (2 h): 480 MiB in all, the largest 12 MiB; two hours of 100 and 140 MiB.
        let w = [
            (30, 240, 480 * MIB, 12 * MIB),
            (300, 24, 360 * MIB, 30 * MIB),
            (900, 8, 240 * MIB, 50 * MIB),
            (3600, 2, 240 * MIB, 140 * MIB),
        ];
        let p = plan(1, vec![profile("vm0", 4096 * MIB, &w, &[100 * MIB, 140 * MIB])]);
        let params = ReportParams { bandwidth_mbps: 100.0, retention_hours: 4, copy_frequency_secs: 300 };
        validate_params(&params).expect("valid");
        let r = report(&p, &params);
        assert_eq!((r.vms, r.vms_measured, r.disks, r.disks_per_vm_max), (1, 1, 2, 2));
        assert_eq!(r.virtual_bytes, 30 << 30);
        assert_eq!(r.allocated_bytes, 4096 * MIB);
        assert_eq!(r.daily_churn_bytes, Some(120 * MIB * 24), "mean hour × 24");
        assert_eq!(r.daily_churn_basis, "measured hourly windows");
        let b30 = &r.bandwidth[0];
        assert_eq!(b30.copy_frequency_secs, 30);
        let close = |a: Option<f64>, b: f64| assert!((a.expect("figure") - b).abs() < 1e-9, "{a:?} vs {b}");
        close(b30.average_mbps, (2 * MIB) as f64 / 30.0 * 8.0 / 1e6);
        close(b30.peak_mbps, (12 * MIB) as f64 / 30.0 * 8.0 / 1e6);
        close(r.bandwidth[2].peak_mbps, (50 * MIB) as f64 / 900.0 * 8.0 / 1e6);
        // 4 GiB at 100 Mbit/s.
        assert!((r.initial_replication_secs - 4096.0 * MIB as f64 * 8.0 / 1e8).abs() < 1e-6);
        // allocated + 4 h × the largest hour + the largest 5-min window.
        assert_eq!(r.replica_storage_bytes, Some(4096 * MIB + 4 * 140 * MIB + 30 * MIB));
        // Retention 0: only the latest point on top of the data.
        let r0 = report(&p, &ReportParams { retention_hours: 0, copy_frequency_secs: 30, ..params });
        assert_eq!(r0.replica_storage_bytes, Some(4096 * MIB + 12 * MIB));
    }

    #[test]
    fn cap_1_before_an_hour_the_figures_are_bounds_and_missing_ones_are_named() {
        // Only 30-s and 5-min windows so far.
        let w = [(30, 20, 40 * MIB, 4 * MIB), (300, 2, 30 * MIB, 20 * MIB)];
        let mut short = profile("vm0", 1024 * MIB, &w, &[]);
        short.measured_secs = 600;
        let p = plan(2, vec![short]);
        let params = ReportParams::default();
        let r = report(&p, &params);
        assert_eq!(r.vms_measured, 1);
        assert!(r.notes.iter().any(|n| n.contains("No measurement yet for 1 of 2 VMs: vm1")), "{:?}", r.notes);
        assert_eq!(r.daily_churn_bytes, Some(15 * MIB * 288), "mean 5-min window × 288");
        assert!(r.daily_churn_basis.starts_with("5-minute windows"), "{}", r.daily_churn_basis);
        assert!(r.bandwidth[2].peak_mbps.is_none(), "no 15-min window ended");
        assert!(r.notes.iter().any(|n| n.contains("900 s copy frequency")), "{:?}", r.notes);
        // An hour bounded by 12 of the largest 5-min windows.
        assert_eq!(r.replica_storage_bytes, Some(1024 * MIB + 24 * 12 * 20 * MIB + 20 * MIB));
        assert!(r.notes.iter().any(|n| n.contains("Measured for 10 min")), "{:?}", r.notes);
        // Nothing measured at all.
        let empty = report(&plan(3, vec![]), &params);
        assert_eq!((empty.vms, empty.vms_measured, empty.allocated_bytes), (3, 0, 0));
        assert!(empty.daily_churn_bytes.is_none() && empty.replica_storage_bytes.is_none());
        assert!(empty.bandwidth.iter().all(|b| b.peak_mbps.is_none()));
    }

    #[test]
    fn cap_1_one_hundred_vms_add_up() {
        let w = [
            (30, 120, 120 * MIB, 3 * MIB),
            (300, 12, 60 * MIB, 10 * MIB),
            (900, 4, 40 * MIB, 12 * MIB),
            (3600, 1, 40 * MIB, 40 * MIB),
        ];
        let profiles: Vec<ChurnProfile> =
            (0..100).map(|i| profile(&format!("vm{i}"), (i + 1) * 64 * MIB, &w, &[40 * MIB])).collect();
        let r = report(&plan(100, profiles), &ReportParams::default());
        assert_eq!((r.vms, r.vms_measured, r.disks), (100, 100, 200));
        assert_eq!(r.allocated_bytes, 64 * MIB * (100 * 101 / 2));
        assert_eq!(r.daily_churn_bytes, Some(100 * 40 * MIB * 24));
        let one = (3 * MIB) as f64 / 30.0 * 8.0 / 1e6;
        assert!((r.bandwidth[0].peak_mbps.expect("peak") - 100.0 * one).abs() < 1e-6);
        assert_eq!(r.per_vm.len(), 100);
        assert!(r.notes.iter().any(|n| n.contains("as if they coincided")));
    }

    #[test]
    fn cap_1_bad_plans_and_parameters_are_refused() {
        let vms = |n: usize| (0..n).map(|i| format!("vm{i}")).collect::<Vec<_>>();
        assert!(validate_plan("churn-2026.q1", &vms(100), Some(720)).is_ok());
        assert_eq!(validate_plan("", &vms(1), None).map_err(|e| e.code()), Err("CapacityPlanInvalidName"));
        assert_eq!(validate_plan("a/b", &vms(1), None).map_err(|e| e.code()), Err("CapacityPlanInvalidName"));
        assert_eq!(validate_plan("a", &vms(0), None).map_err(|e| e.code()), Err("CapacityPlanVmCount"));
        assert_eq!(validate_plan("a", &vms(101), None).map_err(|e| e.code()), Err("CapacityPlanVmCount"));
        let twice = vec!["web".to_string(), "web".to_string()];
        assert_eq!(validate_plan("a", &twice, None).map_err(|e| e.code()), Err("CapacityPlanDuplicateVm"));
        for h in [0, 721] {
            assert_eq!(validate_plan("a", &vms(1), Some(h)).map_err(|e| e.code()), Err("CapacityPlanInvalidDuration"));
        }
        let d = ReportParams::default();
        for p in [
            ReportParams { bandwidth_mbps: 0.0, ..d },
            ReportParams { bandwidth_mbps: f64::NAN, ..d },
            ReportParams { retention_hours: 25, ..d },
            ReportParams { copy_frequency_secs: 60, ..d },
        ] {
            assert_eq!(validate_params(&p).map_err(|e| e.code()), Err("CapacityReportInvalidParam"), "{p:?}");
        }
    }
}
