//! Operations the soak runs on protected items, through the vault's REST API as an operator
//! does: test failover (each network option) and cleanup, planned failover then commit and
//! re-protect or cancel, failback of a VM replicating in reverse, unplanned failover at a point,
//! pause and resume, repair, a policy edit, disable and re-enable keeping the replica (through
//! the API or from the site manager), and the recovery plan `lab-app`'s test failover (its
//! manual action resumed by the soak) and planned failover with commit and re-protect (in either
//! direction, so also its failback). Each waits for its jobs and returns what an invariant needs
//! to know.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::lab_control::LabUnderTest;

/// The operations, in a fixed order (the schedule indexes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum OpKind {
    TestFailoverNone,
    TestFailoverAutomatic,
    PlannedFailoverCommitReprotect,
    PlannedFailoverCancel,
    UnplannedFailoverCommitReprotect,
    Failback,
    PauseResume,
    Repair,
    PolicyEdit,
    DisableReenable,
    PlanTestFailover,
    PlanPlannedFailoverCommitReprotect,
}

/// The recovery plan of the lab the plan operations run.
pub const PLAN: &str = "lab-app";

pub const ALL_OPS: [OpKind; 12] = [
    OpKind::TestFailoverNone,
    OpKind::TestFailoverAutomatic,
    OpKind::PlannedFailoverCommitReprotect,
    OpKind::PlannedFailoverCancel,
    OpKind::UnplannedFailoverCommitReprotect,
    OpKind::Failback,
    OpKind::PauseResume,
    OpKind::Repair,
    OpKind::PolicyEdit,
    OpKind::DisableReenable,
    OpKind::PlanTestFailover,
    OpKind::PlanPlannedFailoverCommitReprotect,
];

impl OpKind {
    /// Whether the op can start on an item with these allowed operations and direction.
    pub fn fits(self, allowed: &[String], reverse: bool) -> bool {
        let has = |op: &str| allowed.iter().any(|a| a == op);
        match self {
            OpKind::TestFailoverNone | OpKind::TestFailoverAutomatic => has("testFailover"),
            OpKind::PlannedFailoverCommitReprotect | OpKind::PlannedFailoverCancel => {
                has("plannedFailover") && !reverse
            }
            OpKind::UnplannedFailoverCommitReprotect => has("unplannedFailover") && !reverse,
            OpKind::Failback => has("plannedFailover") && reverse,
            OpKind::PauseResume => has("pauseReplication"),
            OpKind::Repair => has("repairReplication"),
            OpKind::PolicyEdit => true,
            // Items of the plan stay in it: only the others are disabled and enabled again.
            OpKind::DisableReenable => has("disableProtection") && !reverse,
            OpKind::PlanTestFailover | OpKind::PlanPlannedFailoverCommitReprotect => false,
        }
    }

    /// The operation runs on the recovery plan (all its items at once).
    pub fn on_plan(self) -> bool {
        matches!(self, OpKind::PlanTestFailover | OpKind::PlanPlannedFailoverCommitReprotect)
    }

    /// The plan operation the plan allows now.
    pub fn plan_fits(self, plan_allowed: &[String]) -> bool {
        let has = |op: &str| plan_allowed.iter().any(|a| a == op);
        match self {
            OpKind::PlanTestFailover => has("testFailover"),
            OpKind::PlanPlannedFailoverCommitReprotect => has("plannedFailover"),
            _ => false,
        }
    }
}

/// What an operation did, for the invariants.
#[derive(Debug, Default)]
pub struct OpOutcome {
    /// Planned failovers checked for lost records (invariant 3), and what they found wrong.
    pub planned_checked: u32,
    /// Unplanned failovers at a chosen point checked for records the point held (invariant 3).
    pub unplanned_checked: u32,
    pub lost_records: Vec<String>,
    /// The item stops making points while this runs (and until it is protected again).
    pub interrupts_replication: bool,
    /// Manual actions of a plan the soak resumed.
    pub manual_actions_resumed: u32,
    /// Failed plan jobs the soak resumed once their cause had passed.
    pub resumed_after_failure: u32,
    /// The item's id after the operation, when it changed (disable and enable again).
    pub new_id: Option<String>,
    /// Violations of invariant 1 (a re-enabled item copied everything although its replica was
    /// kept).
    pub full_copies: Vec<String>,
}

pub async fn items(lab: &LabUnderTest) -> Result<Vec<Value>> {
    let v: Value = lab.client.get(&lab.v("/replicationProtectedItems?limit=1000")).await?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

pub async fn item(lab: &LabUnderTest, id: &str) -> Result<Value> {
    Ok(lab.client.get(&lab.v(&format!("/replicationProtectedItems/{id}"))).await?)
}

/// Start `op` on the item and wait for its job to end (or to wait for input, with `input_ok`).
async fn operate(
    lab: &LabUnderTest,
    id: &str,
    op: &str,
    body: Value,
    input_ok: bool,
    limit: Duration,
) -> Result<Value> {
    let j: Value = lab.client.post(&lab.v(&format!("/replicationProtectedItems/{id}/{op}")), &body).await?;
    wait_job(lab, &j, input_ok, limit).await
}

pub async fn wait_job(lab: &LabUnderTest, job: &Value, input_ok: bool, limit: Duration) -> Result<Value> {
    let id = job["id"].as_str().ok_or_else(|| anyhow!("no job id in {job}"))?.to_string();
    let t0 = Instant::now();
    loop {
        let j: Value = lab.client.get(&lab.v(&format!("/replicationJobs/{id}"))).await?;
        match j["status"].as_str() {
            Some("Succeeded") => return Ok(j),
            Some("WaitingForInput") if input_ok => return Ok(j),
            Some("Failed") | Some("Cancelled") => {
                bail!("job {} {} ended {}: {}", j["operation"], id, j["status"], j["errors"])
            }
            _ if t0.elapsed() > limit => bail!("job {} {id} did not end within {limit:?}", j["operation"]),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Wait until the item is Protected (after a re-protect, in either direction).
pub async fn wait_protected(lab: &LabUnderTest, id: &str, limit: Duration) -> Result<Value> {
    let t0 = Instant::now();
    loop {
        let it = item(lab, id).await?;
        if it["state"] == "Protected" {
            return Ok(it);
        }
        if t0.elapsed() > limit {
            bail!("{} is still {} after {limit:?}", it["name"], it["state"]);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Run `kind` on item `it`; `flip` picks between variants (from the schedule).
pub async fn run(lab: &LabUnderTest, kind: OpKind, it: &Value, flip: bool) -> Result<OpOutcome> {
    let id = it["id"].as_str().ok_or_else(|| anyhow!("item without id"))?.to_string();
    let name = it["name"].as_str().unwrap_or_default().to_string();
    let long = Duration::from_secs(600);
    let mut out = OpOutcome::default();
    match kind {
        OpKind::TestFailoverNone | OpKind::TestFailoverAutomatic => {
            // FO-1's three network options: none, an isolated network made for the test, and an
            // existing VM network of the recovery site.
            let recovery_net = if it["target"]["host_name"].as_str().is_some_and(|h| h.starts_with("ny")) {
                "VMNetwork1-NewYork"
            } else {
                "VMNetwork1-Chicago"
            };
            let network = match (kind, flip) {
                (OpKind::TestFailoverNone, false) => json!({"mode": "None"}),
                (OpKind::TestFailoverNone, true) => json!({"mode": "Existing", "network": recovery_net}),
                _ => json!({"mode": "Automatic"}),
            };
            let point = if flip { "latest" } else { "latestProcessed" };
            let j = operate(lab, &id, "testFailover", json!({"network": network, "recovery_point": point}), true, long)
                .await?;
            if j["status"] != "WaitingForInput" {
                bail!("test failover of {name} ended {} instead of waiting at Complete testing", j["status"]);
            }
            operate(lab, &id, "testFailoverCleanup", json!({"notes": "soak"}), false, long).await?;
        }
        OpKind::PlannedFailoverCommitReprotect | OpKind::PlannedFailoverCancel | OpKind::Failback => {
            out.interrupts_replication = true;
            let from = it["source"]["host_name"].as_str().unwrap_or_default().to_string();
            let to = it["target"]["host_name"].as_str().unwrap_or_default().to_string();
            let j: Value = lab
                .client
                .post(
                    &lab.v(&format!("/replicationProtectedItems/{id}/plannedFailover")),
                    &json!({"shutdown_timeout_secs": 60}),
                )
                .await?;
            // As an operator: a failover that failed (its final cycle could not reach the
            // replica host) is resumed once the cause passed (FO-7).
            let j = follow_retrying(lab, j, "resume", &mut out, long).await?;
            if j["status"] != "Succeeded" {
                bail!("planned failover of {name} ended {}", j["status"]);
            }
            // Invariant 3, before commit or cancel change the VMs: the recovered guest finds every
            // record the source guest wrote.
            let written = super::invariants::last_written(&super::invariants::serial_of(lab, &from, &name));
            out.planned_checked += 1;
            if let Some(v) = super::invariants::planned_failover_lost_nothing(lab, &name, &from, &to, written).await {
                out.lost_records.push(v);
            }
            if kind == OpKind::PlannedFailoverCancel {
                operate(lab, &id, "failoverCancel", json!({}), false, long).await?;
            } else {
                operate(lab, &id, "failoverCommit", json!({}), false, long).await?;
                operate(lab, &id, "reProtect", json!({}), false, long).await?;
                wait_protected(lab, &id, long).await?;
            }
        }
        OpKind::UnplannedFailoverCommitReprotect => {
            out.interrupts_replication = true;
            let body = if flip {
                // FO-3 with fencing and a chosen point: the operator powers the source off (as
                // fencing a lost site would), confirms it, and recovers the point before the
                // newest; then (FO-4) applies the newest processed one before committing.
                let (site, host) = (
                    it["source"]["fabric"].as_str().unwrap_or_default().to_string(),
                    it["source"]["host_name"].as_str().unwrap_or_default().to_string(),
                );
                let path = lab.v(&format!("/replicationFabrics/{site}/hosts/{host}/vmActions"));
                let j: Value = lab.client.post(&path, &json!({"action": "stop", "vm": name})).await?;
                wait_job(lab, &j, false, Duration::from_secs(120)).await?;
                let points: Vec<&str> =
                    it["recovery_points"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_str()).collect();
                let chosen =
                    points.len().checked_sub(2).and_then(|i| points.get(i)).copied().unwrap_or("latestProcessed");
                json!({"recovery_point": chosen, "source_fenced": true})
            } else {
                json!({"recovery_point": "latestProcessed", "shutdown_source": true})
            };
            // Invariant 3: the records the chosen point holds, read on its replica before the
            // failover makes it the VM's disk.
            let to = it["target"]["host_name"].as_str().unwrap_or_default().to_string();
            let chosen = body["recovery_point"].as_str().filter(|p| p.starts_with("rp-")).map(str::to_string);
            let held = match &chosen {
                Some(p) => super::invariants::records_in_point(lab, &to, &id, p).await,
                None => None,
            };
            if let Err(e) = operate(lab, &id, "unplannedFailover", body, false, long).await {
                if flip {
                    // The operator powered the source off for this failover: a failover that did
                    // not happen gives the source its VM back.
                    let (site, host) = (
                        it["source"]["fabric"].as_str().unwrap_or_default(),
                        it["source"]["host_name"].as_str().unwrap_or_default(),
                    );
                    let path = lab.v(&format!("/replicationFabrics/{site}/hosts/{host}/vmActions"));
                    if let Ok(j) = lab.client.post::<_, Value>(&path, &json!({"action": "start", "vm": name})).await {
                        let _ = wait_job(lab, &j, false, Duration::from_secs(120)).await;
                    }
                }
                return Err(e);
            }
            if let (Some(p), Some(held)) = (&chosen, held) {
                out.unplanned_checked += 1;
                if let Some(v) = super::invariants::recovered_holds(lab, &name, &to, p, held).await {
                    out.lost_records.push(v);
                }
            }
            if flip {
                operate(lab, &id, "applyRecoveryPoint", json!({"recovery_point": "latestProcessed"}), false, long)
                    .await?;
            }
            operate(lab, &id, "failoverCommit", json!({}), false, long).await?;
            operate(lab, &id, "reProtect", json!({}), false, long).await?;
            wait_protected(lab, &id, long).await?;
        }
        OpKind::PauseResume => {
            out.interrupts_replication = true;
            operate(lab, &id, "pauseReplication", json!({}), false, long).await?;
            tokio::time::sleep(Duration::from_secs(if flip { 20 } else { 5 })).await;
            operate(lab, &id, "resumeReplication", json!({}), false, long).await?;
        }
        OpKind::Repair => {
            operate(lab, &id, "repairReplication", json!({}), false, long).await?;
        }
        OpKind::PolicyEdit => edit_policy(lab, flip).await?,
        OpKind::DisableReenable => {
            out.interrupts_replication = true;
            let site = it["source"]["fabric"].as_str().unwrap_or_default().to_string();
            let kept_on = it["target"]["host_name"].clone();
            operate(lab, &id, "disableProtection", json!({}), false, long).await?;
            let (new_id, job) =
                if flip { enable_from_site(lab, &site, &name).await? } else { enable(lab, &site, &name).await? };
            // As an operator: an enable that failed (e.g. on a full replica location) is
            // restarted once its cause passed.
            follow_retrying(lab, job, "restart", &mut out, long).await?;
            let it = wait_protected(lab, &new_id, long).await?;
            // The policy keeps the replica on disable (POL-7): the new protection starts from it.
            if it["existing_replica"]["source"] != "KeptReplica" {
                out.full_copies.push(format!(
                    "{name} enabled again {} copied everything to {} although its replica was kept on {}: {}",
                    if flip { "from its site manager" } else { "through the API" },
                    it["target"]["host_name"],
                    kept_on,
                    it["existing_replica"]
                ));
            }
            out.new_id = Some(new_id);
        }
        OpKind::PlanTestFailover | OpKind::PlanPlannedFailoverCommitReprotect => {
            bail!("{kind:?} runs on the plan, not on one item")
        }
    }
    Ok(out)
}

/// Enable protection of VM `name` of `site` again through the API; the new item's id and its
/// enable job.
async fn enable(lab: &LabUnderTest, site: &str, name: &str) -> Result<(String, Value)> {
    let r: Value =
        lab.client.post(&lab.v("/replicationProtectedItems"), &json!({"source_site": site, "vms": [name]})).await?;
    new_item_id(&r, name)
}

/// Enable protection of VM `name` from its site manager (`ferry site protect`, with the site's
/// own credential), as the site's operator does.
async fn enable_from_site(lab: &LabUnderTest, site: &str, name: &str) -> Result<(String, Value)> {
    let fabric: Value = lab.client.get(&lab.v(&format!("/replicationFabrics/{site}"))).await?;
    let key = match fabric["name"].as_str().unwrap_or_default() {
        "VMM-NewYork" => "newyork",
        "VMM-Chicago" => "chicago",
        other => bail!("the soak's lab has no site {other}"),
    };
    let sdir = lab.dir.join("sites").join(key);
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["site", "protect", "--config"])
        .arg(sdir.join("site.toml"))
        .arg("--data-dir")
        .arg(sdir.join("data"))
        .arg(name)
        .output()
        .await?;
    if !out.status.success() {
        bail!("ferry site protect {name} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let r: Value = serde_json::from_slice(&out.stdout)?;
    new_item_id(&r, name)
}

/// The id of the item an enable answer created for `name` (`[{item, job}]`), and its job.
fn new_item_id(answer: &Value, name: &str) -> Result<(String, Value)> {
    answer
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["item"]["name"] == name)
        .and_then(|e| e["item"]["id"].as_str().map(|id| (id.to_string(), e["job"].clone())))
        .ok_or_else(|| anyhow!("enabling {name} answered no item: {answer}"))
}

/// A plan operation: test failover (waiting manual actions resumed, then cleanup), or planned
/// failover (manual actions resumed; every VM checked for lost records) then commit and
/// re-protect. `items` are the plan's items as listed (id, name, source host, target host).
pub async fn run_plan(lab: &LabUnderTest, kind: OpKind, items: &[Value], flip: bool) -> Result<OpOutcome> {
    let long = Duration::from_secs(900);
    let mut out = OpOutcome::default();
    let plan = |op: &str| lab.v(&format!("/replicationRecoveryPlans/{PLAN}/{op}"));
    match kind {
        OpKind::PlanTestFailover => {
            let network = if flip { json!({"mode": "Automatic"}) } else { json!({"mode": "None"}) };
            let j: Value = lab.client.post(&plan("testFailover"), &json!({"network": network})).await?;
            let j = follow_plan_job(lab, j, &mut out, long).await?;
            if waiting_task(&j).as_deref() != Some("Complete testing") {
                bail!("the plan's test failover ended {} instead of waiting at Complete testing", j["status"]);
            }
            let c: Value = lab.client.post(&plan("testFailoverCleanup"), &json!({"notes": "soak"})).await?;
            wait_job(lab, &c, false, long).await?;
        }
        OpKind::PlanPlannedFailoverCommitReprotect => {
            out.interrupts_replication = true;
            let j: Value = lab.client.post(&plan("plannedFailover"), &json!({})).await?;
            let j = follow_plan_job(lab, j, &mut out, long).await?;
            if j["status"] != "Succeeded" {
                bail!("the plan's planned failover ended {}", j["status"]);
            }
            // Invariant 3 for every VM of the plan, before commit changes them.
            for it in items {
                let name = it["name"].as_str().unwrap_or_default();
                let from = it["source"]["host_name"].as_str().unwrap_or_default();
                let to = it["target"]["host_name"].as_str().unwrap_or_default();
                let written = super::invariants::last_written(&super::invariants::serial_of(lab, from, name));
                out.planned_checked += 1;
                if let Some(v) = super::invariants::planned_failover_lost_nothing(lab, name, from, to, written).await {
                    out.lost_records.push(v);
                }
            }
            let c: Value = lab.client.post(&plan("failoverCommit"), &json!({})).await?;
            wait_job(lab, &c, false, long).await?;
            let r: Value = lab.client.post(&plan("reProtect"), &json!({})).await?;
            wait_job(lab, &r, false, long).await?;
            for it in items {
                wait_protected(lab, it["id"].as_str().unwrap_or_default(), long).await?;
            }
        }
        other => bail!("{other:?} is not a plan operation"),
    }
    Ok(out)
}

/// Follow a plan job as its operator: resume it at each manual action; when it failed (a fault
/// such as a full replica location), wait for the cause to pass and resume it, as the job's
/// recommendation says, up to four times. Returns the job when it succeeded or waits at
/// Complete testing.
async fn follow_plan_job(lab: &LabUnderTest, mut j: Value, out: &mut OpOutcome, limit: Duration) -> Result<Value> {
    let mut retries = 0;
    loop {
        j = wait_settled(lab, &j, limit).await?;
        match (j["status"].as_str(), waiting_task(&j).as_deref()) {
            (Some("Succeeded"), _) | (_, Some("Complete testing")) => return Ok(j),
            (Some("WaitingForInput"), Some(_)) => {
                j = resume(lab, &j).await?;
                out.manual_actions_resumed += 1;
            }
            (Some("Failed"), _) if retries < 4 => {
                retries += 1;
                out.resumed_after_failure += 1;
                tokio::time::sleep(Duration::from_secs(30)).await;
                j = resume(lab, &j).await?;
            }
            _ => bail!("plan job {} ended {}: {}", j["id"], j["status"], j["errors"]),
        }
    }
}

/// Follow a job to its end; a failed one is resumed or restarted (`action`: the job endpoint)
/// after 30 s, up to four times.
async fn follow_retrying(
    lab: &LabUnderTest,
    mut j: Value,
    action: &str,
    out: &mut OpOutcome,
    limit: Duration,
) -> Result<Value> {
    for attempt in 0.. {
        j = wait_settled(lab, &j, limit).await?;
        if j["status"] != "Failed" || attempt == 4 {
            break;
        }
        out.resumed_after_failure += 1;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let id = j["id"].as_str().ok_or_else(|| anyhow!("no job id in {j}"))?.to_string();
        j = lab.client.post(&lab.v(&format!("/replicationJobs/{id}/{action}")), &Value::Null).await?;
    }
    Ok(j)
}

/// Wait until a job succeeded, failed, was cancelled or waits for input.
async fn wait_settled(lab: &LabUnderTest, job: &Value, limit: Duration) -> Result<Value> {
    let id = job["id"].as_str().ok_or_else(|| anyhow!("no job id in {job}"))?.to_string();
    let t0 = Instant::now();
    loop {
        let j: Value = lab.client.get(&lab.v(&format!("/replicationJobs/{id}"))).await?;
        if matches!(j["status"].as_str(), Some("Succeeded" | "Failed" | "Cancelled" | "WaitingForInput")) {
            return Ok(j);
        }
        if t0.elapsed() > limit {
            bail!("job {} {id} did not end within {limit:?}", j["operation"]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The name of the task a job waits at, if it waits.
fn waiting_task(job: &Value) -> Option<String> {
    (job["status"] == "WaitingForInput").then_some(())?;
    job["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["status"] == "WaitingForInput")
        .and_then(|t| t["name"].as_str())
        .map(str::to_string)
}

/// Resume a job waiting for an operator (a manual action done).
async fn resume(lab: &LabUnderTest, job: &Value) -> Result<Value> {
    let id = job["id"].as_str().ok_or_else(|| anyhow!("no job id in {job}"))?;
    Ok(lab.client.post(&lab.v(&format!("/replicationJobs/{id}/resume")), &Value::Null).await?)
}

/// POL-9: toggle the lab policy's compression and app-consistent frequency (its copy frequency
/// stays, so the recovery windows of the invariants stay).
async fn edit_policy(lab: &LabUnderTest, flip: bool) -> Result<()> {
    let mut spec: Value = lab.client.get(&lab.v("/replicationPolicies/lab-gold")).await?;
    let Some(fields) = spec.as_object_mut() else { bail!("policy lab-gold is not an object") };
    // The policy as read carries its identity and bookkeeping beside its settings.
    for k in ["id", "associated_clouds", "version", "created_at"] {
        fields.remove(k);
    }
    spec["compression"] = json!(!spec["compression"].as_bool().unwrap_or(false));
    spec["app_consistent_frequency_hours"] = if flip { json!(1) } else { Value::Null };
    let r: Value = lab.client.put(&lab.v("/replicationPolicies/lab-gold"), &spec).await?;
    if !r["job"].is_null() {
        wait_job(lab, &r["job"], false, Duration::from_secs(300)).await?;
    }
    Ok(())
}
