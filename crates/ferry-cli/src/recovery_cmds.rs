//! Operator verbs after a failover and the flows built from them: change the recovery point and
//! cancel (FO-4), re-protect (FO-5), failback (FO-6) and a full recovery drill on one VM.
//!
//! Failback is documented as one flow: a planned failover back to the original site, its
//! commit, and re-protect, which makes the VM replicate in its original direction again.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::api_cmds::{context, enc, Connection, Ctx, ITEM_COLS, JOB_COLS};
use crate::output::print;

#[derive(Subcommand)]
pub enum RecoveryCmd {
    /// Before commit, restart the recovered VM on another recovery point (FO-4).
    ApplyRecoveryPoint {
        /// Protected item (id or VM name)
        item: String,
        /// latest, latestProcessed (default), latestAppConsistent, or a point id.
        #[arg(long)]
        point: Option<String>,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Undo a failover that is not committed: the recovered VM goes, the source VM starts and
    /// replication resumes where it stopped (FO-4, FO-7).
    FailoverCancel {
        /// Protected item (id or VM name)
        item: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Reverse replication after a committed failover (FO-5): the active side replicates back to
    /// the original side, sending only what differs.
    Reprotect {
        /// Protected item (id or VM name)
        item: String,
        /// Wait until the VM is protected in the new direction; print the item and what was sent.
        #[arg(long)]
        wait: bool,
    },
    /// Resynchronize now by comparing block hashes with the replica (REP-6): only differing
    /// blocks travel and the recovery points are kept.
    RepairReplication {
        /// Protected item (id or VM name)
        item: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Re-read recovery points on the replica host and compare them with their hash manifests
    /// (RP-1): every point, or one. With --wait, prints each point's result and fails when a
    /// point is damaged.
    PointVerify {
        /// Protected item (id or VM name)
        item: String,
        /// A point id or `latest`; default: every point.
        #[arg(long)]
        point: Option<String>,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Write a recovery point's disks as standalone images on the replica host (RP-3): to mount
    /// them, copy files from them or attach them to another VM. The point itself is untouched.
    PointImage {
        /// Protected item (id or VM name)
        item: String,
        /// A point id or `latest` (default).
        #[arg(long)]
        point: Option<String>,
        /// qcow2 (default) or raw.
        #[arg(long, default_value = "qcow2", value_parser = ["qcow2", "raw"])]
        format: String,
        /// A new folder inside one of the replica host's storage locations.
        #[arg(long)]
        path: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Pause replication of a protected VM (no cycles; changes are still tracked).
    PauseReplication {
        /// Protected item (id or VM name)
        item: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Resume a paused replication: what was written meanwhile goes in one delta.
    ResumeReplication {
        /// Protected item (id or VM name)
        item: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Offline initial replication (POL-8): import the carried export on the target side, then
    /// delta replication starts. The export folder (named after the protected item's id) must
    /// have been copied into the import path.
    ImportInitial {
        /// Protected item (id or VM name)
        item: String,
        /// Folder on the target host holding the export folder (default: the policy's import path).
        #[arg(long)]
        path: Option<String>,
        /// Wait until the VM is protected.
        #[arg(long)]
        wait: bool,
    },
    /// Failback (FO-6): planned failover to the original site, commit, re-protect.
    Failback {
        /// Protected item (id or VM name)
        item: String,
    },
    /// A recovery drill on one protected VM: test failover, cleanup, planned failover, commit,
    /// reverse replication, then failback, with progress.
    Drill {
        /// Protected item (id or VM name)
        item: String,
        /// How long each step may take, in seconds.
        #[arg(long, default_value_t = 900)]
        step_timeout: u64,
    },
}

pub async fn run(conn: &Connection, cmd: RecoveryCmd) -> Result<()> {
    let ctx = context(conn)?;
    match cmd {
        RecoveryCmd::ApplyRecoveryPoint { item, point, wait } => {
            let mut body = json!({});
            if let Some(p) = point {
                body["recovery_point"] = json!(p);
            }
            let j = operate(&ctx, &item, "applyRecoveryPoint", body, wait).await?;
            print(ctx.out, &j, JOB_COLS);
        }
        RecoveryCmd::FailoverCancel { item, wait } => {
            let j = operate(&ctx, &item, "failoverCancel", json!({}), wait).await?;
            print(ctx.out, &j, JOB_COLS);
        }
        RecoveryCmd::Reprotect { item, wait } => {
            let j = operate(&ctx, &item, "reProtect", json!({}), wait).await?;
            if wait {
                report_reverse(&ctx, &wait_protected(&ctx, &item, Duration::from_secs(3600)).await?);
            } else {
                print(ctx.out, &j, JOB_COLS);
            }
        }
        RecoveryCmd::RepairReplication { item, wait } => {
            let j = operate(&ctx, &item, "repairReplication", json!({}), wait).await?;
            print(ctx.out, &j, JOB_COLS);
        }
        RecoveryCmd::PointVerify { item, point, wait } => point_verify(&ctx, &item, point, wait).await?,
        RecoveryCmd::PointImage { item, point, format, path, wait } => {
            let mut body = json!({ "format": format, "path": path });
            if let Some(p) = point {
                body["recovery_point"] = json!(p);
            }
            let j: Value = ctx
                .c
                .post(&ctx.v(&format!("/replicationProtectedItems/{}/recoveryPoints/image", enc(&item))), &body)
                .await?;
            if !wait {
                print(ctx.out, &j, JOB_COLS);
            } else {
                let j = ctx.wait_job(&j).await?;
                if j["status"] != "Succeeded" {
                    print(ctx.out, &j, JOB_COLS);
                    bail!("The images were not written: {}", j["errors"]);
                }
                let out = &j["params"]["outputs"]["Write the point's disks as standalone images on the replica host"];
                println!("point {}", out["point"].as_str().unwrap_or("?"));
                print(ctx.out, &out["images"], &[("DISK", "/target"), ("PATH", "/path"), ("BYTES", "/bytes")]);
            }
        }
        RecoveryCmd::PauseReplication { item, wait } => {
            let j = operate(&ctx, &item, "pauseReplication", json!({}), wait).await?;
            print(ctx.out, &j, JOB_COLS);
        }
        RecoveryCmd::ResumeReplication { item, wait } => {
            let j = operate(&ctx, &item, "resumeReplication", json!({}), wait).await?;
            print(ctx.out, &j, JOB_COLS);
        }
        RecoveryCmd::ImportInitial { item, path, wait } => {
            let body = match path {
                Some(p) => json!({ "import_path": p }),
                None => json!({}),
            };
            let j = operate(&ctx, &item, "importInitialReplica", body, wait).await?;
            if wait {
                print(ctx.out, &wait_protected(&ctx, &item, Duration::from_secs(3600)).await?, ITEM_COLS);
            } else {
                print(ctx.out, &j, JOB_COLS);
            }
        }
        RecoveryCmd::Failback { item } => failback(&ctx, &item, Duration::from_secs(3600)).await?,
        RecoveryCmd::Drill { item, step_timeout } => drill(&ctx, &item, Duration::from_secs(step_timeout)).await?,
    }
    Ok(())
}

/// Start an operation on a protected item; with `wait`, until its job ends.
async fn operate(ctx: &Ctx, item: &str, op: &str, body: Value, wait: bool) -> Result<Value> {
    let j: Value = ctx.c.post(&ctx.v(&format!("/replicationProtectedItems/{}/{op}", enc(item))), &body).await?;
    if wait {
        ctx.wait_job(&j).await
    } else {
        Ok(j)
    }
}

/// RP-1: start a verification; with `wait`, print each point's result and fail on damage.
async fn point_verify(ctx: &Ctx, item: &str, point: Option<String>, wait: bool) -> Result<()> {
    let body = match point {
        Some(p) => json!({ "recovery_point": p }),
        None => json!({}),
    };
    let j: Value =
        ctx.c.post(&ctx.v(&format!("/replicationProtectedItems/{}/recoveryPoints/verify", enc(item))), &body).await?;
    if !wait {
        print(ctx.out, &j, JOB_COLS);
        return Ok(());
    }
    let j = ctx.wait_job(&j).await?;
    if j["status"] != "Succeeded" {
        print(ctx.out, &j, JOB_COLS);
        bail!("The verification did not finish: {}", j["errors"]);
    }
    let points = j["params"]["outputs"]["Verify the recovery points on the replica host"]["points"].clone();
    print(
        ctx.out,
        &points,
        &[
            ("POINT", "/point"),
            ("SEALED", "/verification/sealed"),
            ("OK", "/verification/ok"),
            ("DAMAGE", "/verification/damage"),
        ],
    );
    let damaged = points
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["verification"]["sealed"] == true && p["verification"]["ok"] == false)
        .count();
    if damaged > 0 {
        bail!("{damaged} recovery point(s) failed verification; repair replication to heal the replica");
    }
    Ok(())
}

async fn item(ctx: &Ctx, item: &str) -> Result<Value> {
    Ok(ctx.c.get(&ctx.v(&format!("/replicationProtectedItems/{}", enc(item)))).await?)
}

/// Wait until the item is Protected (initial or reverse replication done).
async fn wait_protected(ctx: &Ctx, name: &str, limit: Duration) -> Result<Value> {
    let t0 = Instant::now();
    loop {
        let i = item(ctx, name).await?;
        if i["state"] == "Protected" && i["recovery_points"].as_array().is_some_and(|p| !p.is_empty()) {
            return Ok(i);
        }
        if t0.elapsed() > limit {
            bail!("{name} is not protected after {limit:?} (state {})", i["state"]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn report_reverse(ctx: &Ctx, i: &Value) {
    let sent = i["stats"]["initial_bytes"].as_u64().unwrap_or(0);
    let disks: u64 = i["disks"].as_array().into_iter().flatten().filter_map(|d| d["virtual_size"].as_u64()).sum();
    let pct = if disks > 0 { sent as f64 * 100.0 / disks as f64 } else { 0.0 };
    eprintln!(
        "{} replicates {} → {}: reverse replication sent {sent} bytes for {disks} bytes of disks ({pct:.2}%)",
        i["name"].as_str().unwrap_or(""),
        i["source"]["host_name"].as_str().unwrap_or(""),
        i["target"]["host_name"].as_str().unwrap_or(""),
    );
    print(
        ctx.out,
        i,
        &[("NAME", "/name"), ("STATE", "/state"), ("DIRECTION", "/direction"), ("SENT", "/stats/initial_bytes")],
    );
}

/// FO-6: planned failover to the original site, commit, re-protect.
async fn failback(ctx: &Ctx, name: &str, limit: Duration) -> Result<()> {
    let i = item(ctx, name).await?;
    if i["state"] != "Protected" {
        bail!("{name} is {}; failback needs it protected (re-protect first)", i["state"]);
    }
    step(ctx, name, "planned failover", "plannedFailover").await?;
    step(ctx, name, "commit", "failoverCommit").await?;
    step(ctx, name, "re-protect", "reProtect").await?;
    report_reverse(ctx, &wait_protected(ctx, name, limit).await?);
    Ok(())
}

async fn step(ctx: &Ctx, name: &str, what: &str, op: &str) -> Result<Value> {
    let t0 = Instant::now();
    eprintln!("==> {name}: {what}");
    let j = operate(ctx, name, op, json!({}), true).await?;
    eprintln!("    done in {:.1} s (job {})", t0.elapsed().as_secs_f64(), j["id"].as_str().unwrap_or(""));
    Ok(j)
}

/// Test failover → cleanup → planned failover → commit → re-protect → failback.
async fn drill(ctx: &Ctx, name: &str, limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    let i = item(ctx, name).await?;
    if i["state"] != "Protected" {
        bail!("{name} is {}; a drill starts from a protected VM", i["state"]);
    }
    eprintln!("==> {name}: test failover (isolated network)");
    let body = json!({"network": {"mode": "Automatic"}});
    let j: Value = ctx.c.post(&ctx.v(&format!("/replicationProtectedItems/{}/testFailover", enc(name))), &body).await?;
    let j = ctx.wait_input_or_end(&j).await?;
    if j["status"] != "WaitingForInput" {
        return Err(anyhow!("The test failover ended as {}", j["status"]));
    }
    eprintln!("    {name}-test runs; completing the test");
    let cleanup = json!({"notes": "recovery drill"});
    operate(ctx, name, "testFailoverCleanup", cleanup, true).await?;
    step(ctx, name, "planned failover", "plannedFailover").await?;
    step(ctx, name, "commit", "failoverCommit").await?;
    step(ctx, name, "reverse replication", "reProtect").await?;
    report_reverse(ctx, &wait_protected(ctx, name, limit).await?);
    eprintln!("==> {name}: failback");
    failback(ctx, name, limit).await?;
    eprintln!("==> drill of {name} complete in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
