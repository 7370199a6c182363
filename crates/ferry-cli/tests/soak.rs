//! The short soak of CI: `ferry soak` with a fixed seed against a lab of two sites × two hosts
//! and six record-writing VMs, at the policy's real copy frequency (30 s): operations (test,
//! planned and unplanned failover, commit, cancel, re-protect, failback, pause/resume, repair,
//! policy edits) and faults (process kills and restarts, a host on a new port, QEMU killed,
//! processes stopped, connections cut, a replica host down past the stall threshold; in the
//! second soak the recovery plan, disable and re-enable, a bandwidth limit, a partition and a
//! full replica location) overlap,
//! and every invariant holds: new points after each fault (REP-3), clean prefixes (HOST-6),
//! no record lost at planned failover (FO-2), health that tells the truth (JOB-2), nothing left.

mod common;

use std::process::Command;

use serde_json::Value;

/// Stops the soak's lab by its recorded PIDs if the soak itself could not.
struct LabDown(std::path::PathBuf);

impl Drop for LabDown {
    fn drop(&mut self) {
        if self.0.join("pids").exists() {
            let _ = Command::new(common::ferry_bin()).args(["lab", "--down", "--dir"]).arg(&self.0).output();
        }
    }
}

/// Run `ferry soak` with `args` (a fresh lab in a temporary directory) and return its report;
/// fails with the violations and the end of the soak's log when it found any.
fn soak(args: &[&str]) -> Value {
    common::test_guest();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("soak");
    let report = tmp.path().join("soak-report.json");
    let _down = LabDown(dir.clone());
    let out = Command::new(common::ferry_bin())
        .arg("soak")
        .args(args)
        .args(["--keep", "--dir"])
        .arg(&dir)
        .arg("--report")
        .arg(&report)
        .env("FERRY_ACCEL", "tcg")
        .output()
        .expect("ferry soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap_or_default()).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "the soak found violations: {:#}\n{}",
        r["violations"],
        stderr.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(r["violations"], serde_json::json!([]));
    assert_eq!(r["invariant_checks"]["6 nothing left after the lab stopped"], 1, "{}", r["invariant_checks"]);
    r
}

fn total(v: &Value) -> u64 {
    v.as_object().map_or(0, |o| o.values().filter_map(Value::as_u64).sum::<u64>())
}

#[test]
fn rep_3_fo_2_job_2_short_soak_with_a_fixed_seed_keeps_every_invariant() {
    let r = soak(&["--seed", "7", "--duration", "6m", "--long-outage", "true"]);
    assert!(total(&r["operations"]) >= 3, "operations ran: {}", r["operations"]);
    assert!(total(&r["faults"]) >= 2, "faults ran: {}", r["faults"]);
    let checks = &r["invariant_checks"];
    assert!(checks["1 a new point after each fault"].as_u64().unwrap_or(0) >= 1, "{checks}");
    assert!(checks["4 Critical while an item cannot replicate"].as_u64().unwrap_or(0) >= 1, "{checks}");
}

/// The plan (test failover with a manual action the soak resumes, planned failover, commit,
/// re-protect: PLAN-2/3/4), disable and enable again keeping the replica (POL-7, REP-7, also from
/// the site manager: REP-1), under a bandwidth limit, a partition of the replication link and a
/// replica location that runs full (JOB-2: Critical with ReplicaFull, then replicating again);
/// the hosts run in network namespaces of their own, so the partition and the limit act on the
/// veth links between them.
#[test]
fn plan_4_pol_7_rep_7_short_soak_of_plans_disable_partitions_and_a_full_location() {
    let r = soak(&[
        "--seed",
        "3",
        "--duration",
        "6m",
        "--long-outage",
        "false",
        "--ops",
        "PlanTestFailover,PlanPlannedFailoverCommitReprotect,DisableReenable",
        "--faults",
        "BandwidthLimit,Partition,ReplicaLocationFull",
        "--netns",
    ]);
    let ops = &r["operations"];
    assert!(total(ops) >= 3, "operations ran: {ops}");
    assert!(
        ops["PlanTestFailover"].as_u64().unwrap_or(0) + ops["PlanPlannedFailoverCommitReprotect"].as_u64().unwrap_or(0)
            >= 1,
        "{ops}"
    );
    assert!(total(&r["faults"]) >= 2, "faults ran: {}", r["faults"]);
    // The link faults act on the links between the hosts' network namespaces.
    let log = r["log"].to_string();
    let f = &r["faults"];
    if f["Partition"].as_u64().unwrap_or(0) > 0 {
        assert!(log.contains("blackhole routes"), "a partition cuts the namespaces' link: {log}");
    }
    if f["BandwidthLimit"].as_u64().unwrap_or(0) > 0 {
        assert!(log.contains("tc tbf"), "a bandwidth limit shapes the veths: {log}");
    }
    assert!(
        r["invariant_checks"]["1 a new point after each fault"].as_u64().unwrap_or(0) >= 1,
        "{}",
        r["invariant_checks"]
    );
}
