//! Operations the soak runs on protected items, through the vault's REST API as an operator
//! does: test failover (each network option) and cleanup, planned failover then commit and
//! re-protect or cancel, failback of a VM replicating in reverse, unplanned failover at a point,
//! pause and resume, repair, a policy edit. Each waits for its jobs and returns what an
//! invariant needs to know.

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
}

pub const ALL_OPS: [OpKind; 9] = [
    OpKind::TestFailoverNone,
    OpKind::TestFailoverAutomatic,
    OpKind::PlannedFailoverCommitReprotect,
    OpKind::PlannedFailoverCancel,
    OpKind::UnplannedFailoverCommitReprotect,
    OpKind::Failback,
    OpKind::PauseResume,
    OpKind::Repair,
    OpKind::PolicyEdit,
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
        }
    }
}

/// What an operation did, for the invariants.
#[derive(Debug, Default)]
pub struct OpOutcome {
    /// Planned failovers checked for lost records (invariant 3), and what they found wrong.
    pub planned_checked: u32,
    pub lost_records: Vec<String>,
    /// The item stops making points while this runs (and until it is protected again).
    pub interrupts_replication: bool,
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
            let network =
                if kind == OpKind::TestFailoverNone { json!({"mode": "None"}) } else { json!({"mode": "Automatic"}) };
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
            operate(lab, &id, "plannedFailover", json!({"shutdown_timeout_secs": 60}), false, long).await?;
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
            let body = json!({"recovery_point": "latestProcessed", "shutdown_source": true});
            operate(lab, &id, "unplannedFailover", body, false, long).await?;
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
    }
    Ok(out)
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
