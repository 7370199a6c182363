//! `ferry soak`: random operations and faults against a running lab, with invariants checked
//! throughout (see [`invariants`]).
//!
//! The soak starts a lab of two sites × two hosts on its own directory (the three demo VMs on
//! ny1, three more on ny3, all running the record workload and protected to Chicago under the
//! lab's policy at its real copy frequency; with `--netns` each host in a network namespace of its
//! own, joined to the site managers' bridge by a veth pair), then draws a schedule from `--seed`: each step is an
//! operation on a protected item ([`ops`]) or a fault ([`faults`]); faults run beside the
//! operations. The same seed draws the same schedule; what each step meets depends on timing
//! (an operation the item does not allow at that moment goes to the next item or kind that
//! fits, in a fixed order). At the end it stops the lab and checks nothing is left, prints a
//! summary and writes `soak-report.json`; the exit code is 1 on any violation.

pub mod faults;
pub mod full_disk;
pub mod invariants;
pub mod lab_control;
pub mod link;
pub mod ops;
mod own_faults;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Args;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use faults::{FaultKind, ALL_FAULTS};
use lab_control::LabUnderTest;
use ops::{OpKind, ALL_OPS};

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Seed of the schedule (the same seed draws the same steps).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to run, e.g. `600` (seconds), `10m`, `2h`.
    #[arg(long, default_value = "10m")]
    pub duration: String,
    /// At most this many steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Lab directory (created; removed at the end unless `--keep`).
    #[arg(long, default_value = "soak-data")]
    pub dir: PathBuf,
    /// Keep the lab directory (logs, replicas) after the soak.
    #[arg(long)]
    pub keep: bool,
    /// Where the JSON report goes (default: `<dir>/../soak-report.json`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also run one outage of a replica host longer than the stall threshold (its items must
    /// turn Critical); on by default for soaks of 8 minutes or more.
    #[arg(long)]
    pub long_outage: Option<bool>,
    /// Only these operations, comma-separated (default: all), e.g. `PlanTestFailover,Repair`.
    #[arg(long, value_delimiter = ',')]
    pub ops: Vec<String>,
    /// Only these faults, comma-separated (default: all; `none` for none), e.g. `Partition`.
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<String>,
    /// Run every host agent and its VMs in a network namespace of its own, joined by veth pairs
    /// (the link faults then act on those links; without it they shape the replication ports on
    /// loopback).
    #[arg(long)]
    pub netns: bool,
}

/// The kinds named in `names` (all of `all` when none is named), or a clear error.
fn chosen<T: Copy + std::fmt::Debug>(all: &[T], names: &[String], what: &str) -> Result<Vec<T>> {
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    if names.len() == 1 && names[0] == "none" {
        return Ok(Vec::new());
    }
    names
        .iter()
        .map(|n| {
            all.iter().copied().find(|k| format!("{k:?}") == *n).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown {what} {n:?}; known: {}",
                    all.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}

/// One line of the operation log.
#[derive(Debug, Clone, serde::Serialize)]
struct LogLine {
    at: String,
    step: usize,
    what: String,
    result: String,
}

#[derive(Default)]
struct State {
    log: Vec<LogLine>,
    violations: Vec<Value>,
    ops: BTreeMap<String, u64>,
    op_errors: BTreeMap<String, u64>,
    faults: BTreeMap<String, u64>,
    checks: BTreeMap<&'static str, u64>,
    recoveries: Vec<Duration>,
    /// Items an operation holds now (they are not expected to make points meanwhile).
    busy: HashSet<String>,
    /// Items whose change tracking a fault destroyed.
    resync_allowed: HashSet<String>,
}

struct Soak {
    lab: LabUnderTest,
    /// The operations and faults this soak draws from.
    ops: Vec<OpKind>,
    faults: Vec<FaultKind>,
    /// Replica locations that a fault can fill (None without root).
    locations: Option<full_disk::SmallLocations>,
    state: Mutex<State>,
    started: Instant,
}

impl Soak {
    fn note(&self, step: usize, what: &str, result: &str) {
        let line = LogLine { at: Utc::now().to_rfc3339(), step, what: what.into(), result: result.into() };
        eprintln!("[{:>5.0}s] #{step:<3} {what}: {result}", self.started.elapsed().as_secs_f64());
        if let Ok(mut s) = self.state.lock() {
            s.log.push(line);
        }
    }

    fn violation(&self, step: usize, invariant: u8, message: String) {
        eprintln!("VIOLATION of invariant {invariant} at step {step}: {message}");
        if let Ok(mut s) = self.state.lock() {
            let around: Vec<LogLine> = s.log.iter().rev().take(8).rev().cloned().collect();
            s.violations.push(json!({"invariant": invariant, "step": step, "message": message, "log": around}));
        }
    }

    fn checked(&self, what: &'static str) {
        if let Ok(mut s) = self.state.lock() {
            *s.checks.entry(what).or_default() += 1;
        }
    }
}

/// Parse `600`, `90s`, `10m`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("{s:?} is not a duration like 600, 10m or 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("{s:?} is not a duration like 600, 10m or 2h"),
    };
    Ok(Duration::from_secs(secs))
}

/// A drawn step: an operation (kind, item, variant) or a fault (kind, target, hold).
#[derive(Debug, Clone, Copy)]
enum Step {
    Op { kind: usize, item: usize, flip: bool },
    Fault { kind: usize, pick: usize, hold_ms: u64 },
}

fn schedule(seed: u64, n: usize) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            if rng.gen_bool(0.55) {
                Step::Op { kind: rng.gen_range(0..64), item: rng.gen_range(0..64), flip: rng.gen_bool(0.5) }
            } else {
                Step::Fault {
                    kind: rng.gen_range(0..64),
                    pick: rng.gen_range(0..64),
                    hold_ms: rng.gen_range(1000..15000),
                }
            }
        })
        .collect()
}

/// The copy frequency of the lab's policy, and the recovery window of invariant 1.
const COPY_FREQUENCY: Duration = Duration::from_secs(30);

fn recovery_window() -> Duration {
    (COPY_FREQUENCY * 2).max(Duration::from_secs(60))
}

pub async fn run(args: SoakArgs) -> Result<()> {
    let duration = parse_duration(&args.duration)?;
    let ops = chosen(&ALL_OPS, &args.ops, "operation")?;
    if ops.is_empty() {
        bail!("a soak needs at least one operation");
    }
    let faults = chosen(&ALL_FAULTS, &args.faults, "fault")?;
    let dir = std::path::absolute(&args.dir)?;
    if dir.join("pids").exists() {
        bail!("{} holds a running lab; stop it first (ferry lab --down --dir …)", dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let report_path = args.report.clone().unwrap_or_else(|| dir.with_extension("report.json"));
    eprintln!("soak: seed {}, {} s, lab in {}", args.seed, duration.as_secs(), dir.display());
    let locations = match full_disk::SmallLocations::mount(&dir, 2048) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("soak: without the full replica location fault: {e:#}");
            None
        }
    };
    let mut lab_args: Vec<String> = vec!["--retention-interval-secs".into(), "120".into()];
    if args.netns {
        // Hosts in namespaces of their own, joined by veth pairs: partitions and bandwidth
        // limits act on real links between the sites' hosts.
        lab_args.push("--netns".into());
    }
    let lab = LabUnderTest::start(&dir, &lab_args).await?;
    let soak = Arc::new(Soak { lab, ops, faults, locations, state: Mutex::default(), started: Instant::now() });
    let outcome = drive(&soak, &args, duration).await;
    if let Err(e) = &outcome {
        soak.violation(0, 0, format!("the soak could not go on: {e:#}"));
    }
    // The end: every point of every item, then stop everything and look for leftovers.
    final_checks(&soak).await;
    if let Err(e) = soak.lab.down() {
        soak.violation(0, 6, format!("stopping the lab failed: {e:#}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The small replica locations go with the lab.
    let soak = match Arc::try_unwrap(soak) {
        Ok(mut s) => {
            drop(s.locations.take());
            Arc::new(s)
        }
        Err(s) => s,
    };
    for l in invariants::leftovers(&dir, "sk") {
        soak.violation(0, 6, l);
    }
    for m in full_disk::SmallLocations::mounted_under(&dir) {
        soak.violation(0, 6, format!("file system still mounted on {m}"));
    }
    soak.checked("6 nothing left after the lab stopped");
    let report = summary(&soak, &args, duration);
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("report: {}", report_path.display());
    if !args.keep && report["violations"].as_array().is_some_and(|v| v.is_empty()) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if report["violations"].as_array().is_some_and(|v| !v.is_empty()) {
        bail!(
            "{} invariant violation(s); see {}",
            report["violations"].as_array().map_or(0, Vec::len),
            report_path.display()
        );
    }
    Ok(())
}

/// Three more VMs on ny3 (the demo VMs run on ny1), protected; wait for all six.
async fn setup(soak: &Soak) -> Result<()> {
    let lab = &soak.lab;
    let guest = crate::lab::test_guest_dir();
    let path = lab.v("/replicationFabrics/VMM-NewYork/hosts/ny3/vmActions");
    let store = lab.dir.join("storage").join("ny3").join("gold");
    for (i, name) in ["soak1", "soak2", "soak3"].iter().enumerate() {
        let def = json!({
            "name": name, "vcpus": 1, "memory_mib": 256, "guest_agent": true,
            "disks": [
                {"target": "vda", "path": store.join(format!("{name}-vda.qcow2")), "format": "qcow2", "create_size": 16u64 << 20},
                {"target": "vdb", "path": store.join(format!("{name}-vdb.qcow2")), "format": "qcow2", "create_size": 32u64 << 20}
            ],
            "nics": [{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": format!("10.11.0.{}", 60 + i)}],
            "kernel_boot": {"kernel": guest.join("vmlinuz"), "initrd": guest.join("initrd.img"),
                "append": "console=ttyS0 quiet panic=-1 ferry.workload=records ferry.disk=/dev/vdb ferry.interval_ms=1000 ferry.count=1000000"}
        });
        for action in [json!({"action": "create", "definition": def}), json!({"action": "start", "vm": name})] {
            let j: Value = lab.client.post(&path, &action).await?;
            ops::wait_job(lab, &j, false, Duration::from_secs(120)).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p: Value = lab.client.get(&lab.v("/replicationFabrics/VMM-NewYork/protectableItems?limit=1000")).await?;
        let n = p["items"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with("soak"))).count());
        if n == 3 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the soak's VMs did not reach the vault's inventory");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _: Value = lab
        .client
        .post(
            &lab.v("/replicationProtectedItems"),
            &json!({"source_site": "VMM-NewYork", "vms": ["soak1", "soak2", "soak3"]}),
        )
        .await?;
    // The lab's plan also asks for a manual check in test failovers (the soak resumes it).
    let _: Value = lab
        .client
        .patch(
            &lab.v(&format!("/replicationRecoveryPlans/{}", ops::PLAN)),
            &json!({"changes": [{"change": "addStep", "group": 2, "phase": "Pre",
                "step": {"kind": "ManualAction", "name": "Check the database", "instructions": "Query db1-test",
                    "failover_types": ["TestFailover"]}}]}),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let all = ops::items(lab).await?;
        if all.len() == 6 && all.iter().all(|i| i["state"] == "Protected") {
            soak.note(0, "setup", "6 VMs protected, New York → Chicago (2 × 2 hosts)");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the six VMs were not protected within 10 min: {:?}",
                all.iter().map(|i| (&i["name"], &i["state"])).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn drive(soak: &Arc<Soak>, args: &SoakArgs, duration: Duration) -> Result<()> {
    setup(soak).await?;
    let start = Instant::now();
    let steps = schedule(args.seed, args.steps.unwrap_or(100_000));
    let long_outage = args.long_outage.unwrap_or(duration >= Duration::from_secs(480));
    let mut outage_done = !long_outage;
    let mut fault_task: Option<tokio::task::JoinHandle<()>> = None;
    for (n, step) in steps.into_iter().enumerate() {
        let n = n + 1;
        if start.elapsed() >= duration {
            break;
        }
        // The long outage halfway through, alone.
        if !outage_done && start.elapsed() >= duration / 2 {
            if let Some(t) = fault_task.take() {
                let _ = t.await;
            }
            long_replica_outage(soak, n).await;
            outage_done = true;
            continue;
        }
        match step {
            Step::Op { kind, item, flip } => run_op(soak, n, kind, item, flip).await,
            Step::Fault { kind, pick, hold_ms } => {
                if soak.faults.is_empty() || fault_task.as_ref().is_some_and(|t| !t.is_finished()) {
                    continue;
                }
                let fault = soak.faults[kind % soak.faults.len()];
                let soak = soak.clone();
                fault_task = Some(tokio::spawn(async move {
                    run_fault(&soak, n, fault, pick, Duration::from_millis(hold_ms)).await;
                }));
                // Let the fault start before the next operation overlaps it.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    if let Some(t) = fault_task.take() {
        let _ = t.await;
    }
    Ok(())
}

/// Pick an item and an operation that fits it now (the drawn ones first, then in order).
async fn run_op(soak: &Soak, n: usize, kind: usize, item: usize, flip: bool) {
    let all = match ops::items(&soak.lab).await {
        Ok(a) => a,
        Err(e) => {
            soak.note(n, "list items", &format!("failed: {e:#}"));
            // The vault may be down (a fault): wait, do not run through the schedule.
            tokio::time::sleep(Duration::from_secs(5)).await;
            return;
        }
    };
    let busy = soak.state.lock().map(|s| s.busy.clone()).unwrap_or_default();
    let mut sorted: Vec<&Value> = all.iter().filter(|i| !busy.contains(i["id"].as_str().unwrap_or(""))).collect();
    sorted.sort_by_key(|i| i["name"].as_str().unwrap_or("").to_string());
    if sorted.is_empty() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return;
    }
    // A plan operation when it is drawn and the plan allows it with all its items free.
    let drawn = soak.ops[kind % soak.ops.len()];
    if drawn.on_plan() {
        match plan_items(&soak.lab, drawn, &all, &busy).await {
            Some(items) => return run_plan_op(soak, n, drawn, items, flip).await,
            None => soak.note(n, &format!("{drawn:?}"), "not allowed now; an item operation instead"),
        }
    }
    let mut chosen = None;
    'find: for k in 0..soak.ops.len() {
        let op = soak.ops[(kind + k) % soak.ops.len()];
        for j in 0..sorted.len() {
            let it = sorted[(item + j) % sorted.len()];
            let allowed: Vec<String> = it["allowed_operations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect();
            let in_plan = plan_member(it);
            if it["state"] == "Protected"
                && op.fits(&allowed, it["direction"] == "Reverse")
                && !(in_plan && op == OpKind::DisableReenable)
            {
                chosen = Some((op, (*it).clone()));
                break 'find;
            }
        }
    }
    let Some((op, it)) = chosen else {
        soak.note(n, "operation", "none allowed now");
        // Something else holds every item (a fault, a job): give it time.
        tokio::time::sleep(Duration::from_secs(5)).await;
        return;
    };
    let id = it["id"].as_str().unwrap_or_default().to_string();
    let name = it["name"].as_str().unwrap_or_default().to_string();
    let what = format!("{op:?} on {name}");
    if let Ok(mut s) = soak.state.lock() {
        s.busy.insert(id.clone());
        *s.ops.entry(format!("{op:?}")).or_default() += 1;
        // A repair is a resynchronization the operator asked for.
        if op == OpKind::Repair {
            s.resync_allowed.insert(id.clone());
        }
    }
    let t0 = Instant::now();
    let result = ops::run(&soak.lab, op, &it, flip).await;
    match &result {
        Ok(out) => {
            soak.note(n, &what, &format!("done in {:.0} s", t0.elapsed().as_secs_f64()));
            for _ in 0..out.planned_checked {
                soak.checked("3 planned failover loses no record");
            }
            for _ in 0..out.unplanned_checked {
                soak.checked("3 unplanned failover keeps its point's records");
            }
            for v in &out.lost_records {
                soak.violation(n, 3, v.clone());
            }
            for v in &out.full_copies {
                soak.violation(n, 1, v.clone());
            }
        }
        Err(e) => {
            soak.note(n, &what, &format!("failed: {e:#}"));
            if let Ok(mut s) = soak.state.lock() {
                *s.op_errors.entry(format!("{op:?}")).or_default() += 1;
            }
        }
    }
    // The item replicates again: its newest point is a clean prefix (invariant 2).
    let now_id = result.as_ref().ok().and_then(|o| o.new_id.clone()).unwrap_or_else(|| id.clone());
    if let Ok(it) = ops::item(&soak.lab, &now_id).await {
        let target = it["target"]["host_name"].as_str().unwrap_or_default().to_string();
        soak.checked("2 newest point is a clean prefix");
        if let Some(v) = invariants::clean_prefixes(&soak.lab, &target, &now_id, &name, true).await {
            soak.violation(n, 2, v);
        }
    }
    if let Ok(mut s) = soak.state.lock() {
        s.busy.remove(&id);
    }
}

/// The VMs of the lab's recovery plan.
const PLAN_VMS: [&str; 3] = ["db1", "app1", "web1"];

fn plan_member(it: &Value) -> bool {
    it["name"].as_str().is_some_and(|n| PLAN_VMS.contains(&n))
}

/// The plan's items when the plan allows `op` now and none of them is held by an operation.
async fn plan_items(lab: &LabUnderTest, op: OpKind, all: &[Value], busy: &HashSet<String>) -> Option<Vec<Value>> {
    let plan: Value = lab.client.get(&lab.v(&format!("/replicationRecoveryPlans/{}", ops::PLAN))).await.ok()?;
    let allowed: Vec<String> =
        plan["allowed_operations"].as_array()?.iter().filter_map(|o| o.as_str().map(str::to_string)).collect();
    let items: Vec<Value> = all.iter().filter(|i| plan_member(i)).cloned().collect();
    let free = items.len() == PLAN_VMS.len()
        && items.iter().all(|i| i["state"] == "Protected" && !busy.contains(i["id"].as_str().unwrap_or("")));
    (free && op.plan_fits(&allowed)).then_some(items)
}

/// Run a plan operation on all the plan's items, then check each one's newest point.
async fn run_plan_op(soak: &Soak, n: usize, op: OpKind, items: Vec<Value>, flip: bool) {
    let ids: Vec<String> = items.iter().map(|i| i["id"].as_str().unwrap_or_default().to_string()).collect();
    if let Ok(mut s) = soak.state.lock() {
        s.busy.extend(ids.iter().cloned());
        *s.ops.entry(format!("{op:?}")).or_default() += 1;
    }
    let what = format!("{op:?} of plan {}", ops::PLAN);
    let t0 = Instant::now();
    match ops::run_plan(&soak.lab, op, &items, flip).await {
        Ok(out) => {
            soak.note(
                n,
                &what,
                &format!(
                    "done in {:.0} s ({} manual action(s) resumed, {} resume(s) after a failure)",
                    t0.elapsed().as_secs_f64(),
                    out.manual_actions_resumed,
                    out.resumed_after_failure
                ),
            );
            for _ in 0..out.planned_checked {
                soak.checked("3 planned failover loses no record");
            }
            for v in &out.lost_records {
                soak.violation(n, 3, v.clone());
            }
        }
        Err(e) => {
            soak.note(n, &what, &format!("failed: {e:#}"));
            if let Ok(mut s) = soak.state.lock() {
                *s.op_errors.entry(format!("{op:?}")).or_default() += 1;
            }
        }
    }
    for (id, it) in ids.iter().zip(&items) {
        let name = it["name"].as_str().unwrap_or_default();
        if let Ok(now) = ops::item(&soak.lab, id).await {
            let target = now["target"]["host_name"].as_str().unwrap_or_default().to_string();
            soak.checked("2 newest point is a clean prefix");
            if let Some(v) = invariants::clean_prefixes(&soak.lab, &target, id, name, true).await {
                soak.violation(n, 2, v);
            }
        }
    }
    if let Ok(mut s) = soak.state.lock() {
        for id in &ids {
            s.busy.remove(id);
        }
    }
}

/// Inject one fault; when it ends, every item that should replicate must make a point within
/// the recovery window (invariant 1).
async fn run_fault(soak: &Soak, n: usize, kind: FaultKind, pick: usize, hold: Duration) {
    let items = ops::items(&soak.lab).await.unwrap_or_default();
    let effect = match kind {
        FaultKind::ReplicaLocationFull => own_faults::replica_location_full(soak, n, pick, &items).await,
        FaultKind::ClockOffset => own_faults::clock_offset(soak, n, pick, hold).await,
        FaultKind::BitFlip => own_faults::bit_flip(soak, n, pick, &items).await,
        _ => faults::inject(&soak.lab, kind, pick, hold, &items).await,
    };
    let ended_at = Instant::now();
    let effect = match effect {
        Ok(e) => e,
        Err(e) => return soak.note(n, &format!("fault {kind:?}"), &format!("not injected: {e:#}")),
    };
    soak.note(
        n,
        &format!("fault {kind:?}"),
        &format!("{} for {:.0} s, ended", effect.target, effect.held.unwrap_or(hold).as_secs_f64()),
    );
    if let Ok(mut s) = soak.state.lock() {
        *s.faults.entry(format!("{kind:?}")).or_default() += 1;
        s.resync_allowed.extend(effect.tracking_lost.iter().cloned());
    }
    expect_recovery(soak, n, ended_at, &format!("{kind:?}")).await;
}

/// Invariant 1: every Protected item not held by an operation has a new point within the
/// recovery window after the fault ended (`ended_at`; new: not among its points when the fault
/// ended, whatever its date, which a host's wrong clock may have moved).
async fn expect_recovery(soak: &Soak, n: usize, ended_at: Instant, what: &str) {
    let window = recovery_window();
    let items = ops::items(&soak.lab).await.unwrap_or_default();
    let mut pending: Vec<(String, String, String)> = items
        .iter()
        .filter(|i| i["state"] == "Protected")
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                i["name"].as_str().unwrap_or_default().to_string(),
                i["target"]["host_name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut before: HashMap<String, HashSet<String>> = HashMap::new();
    for (id, _, host) in &pending {
        before.insert(id.clone(), invariants::points(&soak.lab, host, id).await.into_iter().map(|p| p.0).collect());
    }
    while !pending.is_empty() {
        let busy = soak.state.lock().map(|s| s.busy.clone()).unwrap_or_default();
        let mut still = Vec::new();
        for (id, name, host) in pending {
            if busy.contains(&id) {
                continue;
            }
            let had = before.get(&id);
            if invariants::points(&soak.lab, &host, &id).await.iter().any(|p| had.is_some_and(|h| !h.contains(&p.0))) {
                soak.checked("1 a new point after each fault");
                if let Ok(mut s) = soak.state.lock() {
                    s.recoveries.push(ended_at.elapsed());
                }
            } else {
                still.push((id, name, host));
            }
        }
        pending = still;
        if !pending.is_empty() && ended_at.elapsed() > window {
            for (id, name, host) in &pending {
                // An item an operation took meanwhile, or that left Protected, is excused.
                let it = ops::item(&soak.lab, id).await.unwrap_or(Value::Null);
                if it["state"] != "Protected" || busy.contains(id) {
                    continue;
                }
                soak.checked("1 a new point after each fault");
                soak.violation(
                    n,
                    1,
                    format!(
                        "{name} has no new point on {host} {} s after fault {what} ended (health {}: {})",
                        window.as_secs(),
                        it["health"],
                        it["health_reasons"]
                    ),
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The replica host of the most protected items not taken by an operation (failovers and
/// re-protects move replicas between sites, so a fixed host may hold none at that moment);
/// `chi1` when no item is protected.
async fn outage_host(soak: &Soak) -> String {
    let items = ops::items(&soak.lab).await.unwrap_or_default();
    let busy = soak.state.lock().map(|s| s.busy.clone()).unwrap_or_default();
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for it in items.iter().filter(|i| i["state"] == "Protected" && !busy.contains(i["id"].as_str().unwrap_or(""))) {
        if let Some(h) = it["target"]["host_name"].as_str() {
            *per_host.entry(h.to_string()).or_default() += 1;
        }
    }
    // Most items first; the smallest name among equals, so a replay chooses the same host.
    per_host.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).map_or_else(|| "chi1".to_string(), |(h, _)| h)
}

/// A replica host down longer than the stall threshold: its items turn Critical with the
/// cause (invariant 4), and recover when it is back.
async fn long_replica_outage(soak: &Soak, n: usize) {
    let host = outage_host(soak).await;
    let host = host.as_str();
    let name = format!("host-{host}");
    let argv = match soak.lab.kill(&name) {
        Ok(a) => a,
        Err(e) => return soak.note(n, "fault LongReplicaOutage", &format!("not injected: {e:#}")),
    };
    if let Ok(mut s) = soak.state.lock() {
        *s.faults.entry("LongReplicaOutage".into()).or_default() += 1;
    }
    soak.note(n, "fault LongReplicaOutage", &format!("{name} killed for 150 s"));
    let threshold = Duration::from_secs(ferry_core::health::stall_after(COPY_FREQUENCY.as_secs()).num_seconds() as u64);
    tokio::time::sleep(threshold + Duration::from_secs(30)).await;
    let items = ops::items(&soak.lab).await.unwrap_or_default();
    let busy = soak.state.lock().map(|s| s.busy.clone()).unwrap_or_default();
    for it in items.iter().filter(|i| i["target"]["host_name"] == host && i["state"] == "Protected") {
        if busy.contains(it["id"].as_str().unwrap_or("")) {
            continue;
        }
        soak.checked("4 Critical while an item cannot replicate");
        if it["health"] != "Critical" || !invariants::stalled(it) {
            soak.violation(
                n,
                4,
                format!(
                    "{} cannot replicate to {host} for {} s but is {} ({})",
                    it["name"],
                    threshold.as_secs() + 30,
                    it["health"],
                    it["health_reasons"]
                ),
            );
        }
    }
    if let Err(e) = soak.lab.restart(&name, &argv) {
        return soak.violation(n, 0, format!("cannot start {name} again: {e:#}"));
    }
    let ended_at = Instant::now();
    soak.note(n, "fault LongReplicaOutage", "ended");
    expect_recovery(soak, n, ended_at, "LongReplicaOutage").await;
    // One copy frequency after the items recovered, their health follows (invariant 4).
    tokio::time::sleep(COPY_FREQUENCY).await;
    for it in ops::items(&soak.lab)
        .await
        .unwrap_or_default()
        .iter()
        .filter(|i| i["target"]["host_name"] == host && i["state"] == "Protected")
    {
        soak.checked("4 not Critical once an item replicates again");
        if invariants::stalled(it) {
            soak.violation(
                n,
                4,
                format!("{} replicates again but still shows a stall: {}", it["name"], it["health_reasons"]),
            );
        }
    }
}

/// Invariant 2 on every point of every item, at the end.
async fn final_checks(soak: &Soak) {
    for it in ops::items(&soak.lab).await.unwrap_or_default() {
        let (id, name) = (it["id"].as_str().unwrap_or_default(), it["name"].as_str().unwrap_or_default());
        let host = it["target"]["host_name"].as_str().unwrap_or_default();
        soak.checked("2 every point is a clean prefix");
        if let Some(v) = invariants::clean_prefixes(&soak.lab, host, id, name, false).await {
            soak.violation(0, 2, v);
        }
        let allowed = soak.state.lock().map(|s| s.resync_allowed.contains(id)).unwrap_or(false);
        let log = std::fs::read_to_string(
            soak.lab.dir.join("logs").join(format!("host-{}.log", it["source"]["host_name"].as_str().unwrap_or(""))),
        )
        .unwrap_or_default();
        soak.checked("1 no resync unless tracking was lost");
        if !allowed && log.lines().any(|l| l.contains("change tracking lost; resynchronizing") && l.contains(id)) {
            soak.violation(0, 1, format!("{name} resynchronized although its tracking was never lost"));
        }
    }
}

fn summary(soak: &Soak, args: &SoakArgs, duration: Duration) -> Value {
    let s = soak.state.lock().map(|s| {
        let mut r = s.recoveries.clone();
        r.sort();
        let q = |x: f64| r.get(((r.len() as f64 - 1.0) * x).round() as usize).map(|d| d.as_secs_f64());
        json!({
            "seed": args.seed,
            "duration_secs": duration.as_secs(),
            "ran_secs": soak.started.elapsed().as_secs(),
            "operations": s.ops, "operation_errors": s.op_errors, "faults": s.faults,
            "invariant_checks": s.checks,
            "recovery_secs": {"count": r.len(), "p50": q(0.5), "p99": q(0.99), "max": r.last().map(|d| d.as_secs_f64())},
            "violations": s.violations,
            "log": s.log,
        })
    });
    let report = s.unwrap_or(Value::Null);
    println!("Soak seed {} ran {} s", args.seed, report["ran_secs"]);
    let table = |title: &str, v: &Value| {
        println!("{title}");
        for (k, n) in v.as_object().into_iter().flatten() {
            println!("  {k:<45} {n}");
        }
    };
    table("Operations", &report["operations"]);
    table("Operations that failed", &report["operation_errors"]);
    table("Faults", &report["faults"]);
    table("Invariant checks", &report["invariant_checks"]);
    let r = &report["recovery_secs"];
    println!(
        "Time from a fault's end to the next point: p50 {} s, p99 {} s, max {} s ({} measured)",
        r["p50"], r["p99"], r["max"], r["count"]
    );
    println!("Violations: {}", report["violations"].as_array().map_or(0, Vec::len));
    for v in report["violations"].as_array().into_iter().flatten() {
        println!("  invariant {} at step {}: {}", v["invariant"], v["step"], v["message"].as_str().unwrap_or(""));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let a: Vec<String> = schedule(7, 50).iter().map(|s| format!("{s:?}")).collect();
        let b: Vec<String> = schedule(7, 50).iter().map(|s| format!("{s:?}")).collect();
        let c: Vec<String> = schedule(8, 50).iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().any(|s| s.starts_with("Op")) && a.iter().any(|s| s.starts_with("Fault")));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("600").ok(), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("10m").ok(), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h").ok(), Some(Duration::from_secs(7200)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn operations_and_faults_are_chosen_by_name() {
        assert_eq!(chosen(&ALL_OPS, &[], "operation").ok(), Some(ALL_OPS.to_vec()));
        let some = vec!["Repair".to_string(), "PlanTestFailover".to_string()];
        assert_eq!(chosen(&ALL_OPS, &some, "operation").ok(), Some(vec![OpKind::Repair, OpKind::PlanTestFailover]));
        assert_eq!(chosen(&ALL_FAULTS, &["none".to_string()], "fault").ok(), Some(vec![]));
        let e = chosen(&ALL_FAULTS, &["Meteor".to_string()], "fault").expect_err("unknown");
        assert!(e.to_string().contains("Meteor") && e.to_string().contains("Partition"), "{e}");
    }
}
