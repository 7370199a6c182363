//! Operator commands that protect VMs and recover them: enable protection, items and their
//! recovery points, test failover, planned and unplanned failover, commit, recovery plans, and
//! VMs on the sites' hosts (virsh-style hyphenated verbs, like [`crate::api_cmds`]).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::api_cmds::{context, enc, Connection, Ctx, ITEM_COLS, JOB_COLS};
use crate::output::{print, Output};

#[derive(Subcommand, Debug)]
pub enum ProtectionCmd {
    /// Enable protection for VMs of a site (REP-1).
    Protect {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// VM names.
        vms: Vec<String>,
        /// REP-7: start the replica of VM's disk from an existing image on the target host (a
        /// restored backup): `VM/DISK=PATH`, one for every replicated disk of the VM; only the
        /// differences are sent. A replica the target host kept of the VM is found without it.
        #[arg(long = "existing-disk", value_name = "VM/DISK=PATH", value_parser = parse_existing_disk)]
        existing_disks: Vec<Value>,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// List protected items with state and health.
    ItemList,
    /// Show one protected item: state, health, recovery points, statistics.
    ItemShow {
        /// Protected item (id or VM name)
        item: String,
    },
    /// Recovery points of a protected item (RP-1).
    PointList {
        /// Protected item (id or VM name)
        item: String,
    },
    /// Boot `<vm>-test` from a recovery point while replication continues (FO-1).
    TestFailover {
        /// Protected item (id or VM name)
        item: String,
        /// latest, latestProcessed (default), latestAppConsistent, or a point id.
        #[arg(long)]
        point: Option<String>,
        /// none (default), auto (an isolated network created for the test), or a target VM network.
        #[arg(long, default_value = "none")]
        network: String,
        /// Wait until the test VM runs.
        #[arg(long)]
        wait: bool,
    },
    /// Complete testing: delete the test VM and what was created for it, record notes.
    TestFailoverCleanup {
        /// Protected item (id or VM name)
        item: String,
        /// Operator's notes, kept with the job
        #[arg(long, default_value = "")]
        notes: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Stop protecting a VM; the replica is deleted or kept per policy (REP-8, POL-7).
    DisableProtection {
        /// Protected item (id or VM name)
        item: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Planned failover (FO-2): shut the source down, send its last changes, start the VM at
    /// the recovery site. Ends commit pending.
    PlannedFailover {
        /// Protected item (id or VM name)
        item: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
        /// Seconds the guest has to power off when asked (default 120); a guest still running
        /// then is paused, and its last changes are sent all the same.
        #[arg(long, value_name = "SECS")]
        shutdown_timeout: Option<u64>,
    },
    /// Unplanned failover (FO-3): the source may be gone. Refused while the source runs, unless
    /// it is shut down first (--shutdown-source) or confirmed fenced (--source-fenced).
    UnplannedFailover {
        /// Protected item (id or VM name)
        item: String,
        /// latest (default), latestProcessed, latestAppConsistent or a point id.
        #[arg(long)]
        point: Option<String>,
        /// Shut the source VM down first and send its last changes
        #[arg(long)]
        shutdown_source: bool,
        /// The source is fenced (host off, or cut from network and storage): start the replica although the source looks alive
        #[arg(long)]
        source_fenced: bool,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Make a failover final (FO-4).
    FailoverCommit {
        /// Protected item (id or VM name)
        item: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Resume a job that waits for an operator's manual action, or a failed recovery plan job
    /// after its cause was fixed.
    JobResume {
        /// Job id
        id: String,
        /// Wait until the job ends or waits for an operator again.
        #[arg(long)]
        wait: bool,
    },
    /// Create a recovery plan (PLAN-1); the VMs go to Group 1.
    PlanCreate {
        /// Plan name
        name: String,
        /// Protected VMs (names or ids); they decide the plan's cloud pair.
        #[arg(long = "vm")]
        vms: Vec<String>,
        /// The cloud pair id (needed when no VM is given).
        #[arg(long)]
        pair: Option<String>,
        /// Free text shown with it
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List recovery plans.
    PlanList,
    /// A plan with its groups, steps and allowed operations.
    PlanShow {
        /// Recovery plan (id or name)
        plan: String,
    },
    /// Delete a recovery plan (its VMs stay protected).
    PlanDelete {
        /// Recovery plan (id or name)
        plan: String,
    },
    /// Add protected VMs to a group of a plan.
    PlanAddVm {
        /// Recovery plan (id or name)
        plan: String,
        /// Group number in the plan (1 = first to start)
        #[arg(long, default_value_t = 1)]
        group: u8,
        /// Protected items (ids or VM names)
        vms: Vec<String>,
    },
    /// Remove VMs from a plan.
    PlanRemoveVm {
        /// Recovery plan (id or name)
        plan: String,
        /// Protected items (ids or VM names)
        vms: Vec<String>,
    },
    /// Move VMs of a plan to another group.
    PlanMoveVm {
        /// Recovery plan (id or name)
        plan: String,
        /// Group number in the plan (1 = first to start)
        #[arg(long)]
        group: u8,
        /// Protected items (ids or VM names)
        vms: Vec<String>,
    },
    /// Add a group at the end of a plan (at most 7).
    PlanGroupAdd {
        /// Recovery plan (id or name)
        plan: String,
    },
    /// Delete an empty group (not Group 1); later groups are renumbered.
    PlanGroupDelete {
        /// Recovery plan (id or name)
        plan: String,
        /// Group number in the plan (1 = first to start)
        group: u8,
    },
    /// Move a group to another position; groups are renumbered.
    PlanGroupMove {
        /// Recovery plan (id or name)
        plan: String,
        /// Group number to move
        group: u8,
        /// New position of the group (1 = first)
        #[arg(long)]
        to: u8,
    },
    /// Add a pre- or post-step to a group: a script from the site managers' script library or a
    /// manual action (PLAN-3).
    PlanStepAdd {
        /// Recovery plan (id or name)
        plan: String,
        /// Group number in the plan (1 = first to start)
        #[arg(long)]
        group: u8,
        /// Run after the group's VMs started (default: before).
        #[arg(long)]
        post: bool,
        /// Step name
        #[arg(long)]
        name: String,
        /// Script path relative to the script library.
        #[arg(long, conflicts_with = "manual", required_unless_present = "manual")]
        script: Option<String>,
        /// Instructions of a manual action.
        #[arg(long)]
        manual: Option<String>,
        /// test, planned or unplanned (repeat; default: all).
        #[arg(long = "failover-type")]
        failover_types: Vec<String>,
    },
    /// Remove a step (1-based index among the group's pre- or post-steps).
    PlanStepRemove {
        /// Recovery plan (id or name)
        plan: String,
        /// Group number in the plan (1 = first to start)
        #[arg(long)]
        group: u8,
        /// A step after the group (default: a step before it)
        #[arg(long)]
        post: bool,
        /// Position of the step in its list (0 = first)
        index: usize,
    },
    /// Test failover of a plan (PLAN-4): test VMs started group by group; waits at Complete
    /// testing until the cleanup.
    PlanTestFailover {
        /// Recovery plan (id or name)
        plan: String,
        /// latestProcessed (default), latest or latestAppConsistent.
        #[arg(long)]
        point: Option<String>,
        /// none (default), auto or a target VM network.
        #[arg(long, default_value = "none")]
        network: String,
        /// Wait until the job ends or waits for an operator.
        #[arg(long)]
        wait: bool,
    },
    /// Clean up a plan's test failover: its test VMs go.
    PlanTestFailoverCleanup {
        /// Recovery plan (id or name)
        plan: String,
        /// Operator's notes, kept with the job
        #[arg(long, default_value = "")]
        notes: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Planned failover of a plan: sources shut down, groups started in order; stops at the
    /// first error.
    PlanPlannedFailover {
        /// Recovery plan (id or name)
        plan: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Unplanned failover of a plan: goes on after errors and reports them all.
    PlanUnplannedFailover {
        /// Recovery plan (id or name)
        plan: String,
        /// Recovery point of every VM: latest, latestProcessed (default), latestAppConsistent
        #[arg(long)]
        point: Option<String>,
        /// Shut the source VM down first and send its last changes
        #[arg(long)]
        shutdown_source: bool,
        /// The source is fenced (host off, or cut from network and storage): start the replica although the source looks alive
        #[arg(long)]
        source_fenced: bool,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Commit a plan's failover: every VM's other recovery points are discarded.
    PlanCommit {
        /// Recovery plan (id or name)
        plan: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Reverse replication of every VM of a plan (FO-5).
    PlanReprotect {
        /// Recovery plan (id or name)
        plan: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Define a VM on a host from a JSON definition file (HOST-1).
    VmCreate {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Host (its name in the site)
        #[arg(long)]
        host: String,
        /// VM definition (JSON file)
        #[arg(long)]
        file: PathBuf,
    },
    /// List the VMs a host runs or defines.
    VmList {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Host (its name in the site)
        #[arg(long)]
        host: String,
    },
    /// Show one VM of a host: power state and definition.
    VmShow {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Host (its name in the site)
        #[arg(long)]
        host: String,
        /// VM name on the host
        vm: String,
    },
    /// Start a VM on its host.
    VmStart {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Host (its name in the site)
        #[arg(long)]
        host: String,
        /// VM name on the host
        vm: String,
    },
    /// Shut a VM down through its guest (ACPI), stopping it after the timeout.
    VmShutdown {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Host (its name in the site)
        #[arg(long)]
        host: String,
        /// VM name on the host
        vm: String,
        /// Seconds the guest has to power off
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop a VM at once (power off).
    VmStop {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Host (its name in the site)
        #[arg(long)]
        host: String,
        /// VM name on the host
        vm: String,
    },
    /// Delete a stopped VM from its host.
    VmDelete {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Host (its name in the site)
        #[arg(long)]
        host: String,
        /// VM name on the host
        vm: String,
        /// Also delete the VM's disk images
        #[arg(long)]
        delete_disks: bool,
    },
}

pub async fn run(conn: &Connection, cmd: ProtectionCmd) -> Result<()> {
    let ctx = context(conn)?;
    let out = ctx.out;
    let c = &ctx.c;
    match cmd {
        ProtectionCmd::Protect { site, vms, existing_disks, wait } => {
            let mut body = json!({"source_site": site, "vms": vms});
            if !existing_disks.is_empty() {
                body["existing_disks"] = json!(existing_disks);
            }
            let r: Value = c.post(&ctx.v("/replicationProtectedItems"), &body).await?;
            if wait {
                for e in r.as_array().into_iter().flatten() {
                    ctx.wait_job(&e["job"]).await?;
                }
            }
            let items: Vec<Value> = r.as_array().into_iter().flatten().map(|e| e["item"].clone()).collect();
            print(out, &json!(items), ITEM_COLS);
        }
        ProtectionCmd::ItemList => {
            print(out, &c.get(&ctx.v("/replicationProtectedItems?limit=1000")).await?, ITEM_COLS)
        }
        ProtectionCmd::ItemShow { item } => {
            let i: Value = c.get(&ctx.v(&format!("/replicationProtectedItems/{}", enc(&item)))).await?;
            match out {
                Output::Json => print(out, &i, &[]),
                Output::Table => print!("{}", crate::output::item_text(&i)),
            }
        }
        ProtectionCmd::PointList { item } => {
            let i: Value = c.get(&ctx.v(&format!("/replicationProtectedItems/{}", enc(&item)))).await?;
            print(
                out,
                &i["recovery_points"],
                &[("ID", "/id"), ("TIME", "/time"), ("APP-CONSISTENT", "/app_consistent"), ("SIZE", "/size_bytes")],
            );
        }
        ProtectionCmd::TestFailover { item, point, network, wait } => {
            let net = match network.as_str() {
                "none" => json!({"mode": "None"}),
                "auto" => json!({"mode": "Automatic"}),
                name => json!({"mode": "Existing", "network": name}),
            };
            let mut body = json!({"network": net});
            if let Some(p) = point {
                body["recovery_point"] = json!(p);
            }
            let j: Value =
                c.post(&ctx.v(&format!("/replicationProtectedItems/{}/testFailover", enc(&item))), &body).await?;
            let j = if wait { ctx.wait_input_or_end(&j).await? } else { j };
            print(out, &j, JOB_COLS);
        }
        ProtectionCmd::TestFailoverCleanup { item, notes, wait } => {
            let j: Value = c
                .post(
                    &ctx.v(&format!("/replicationProtectedItems/{}/testFailoverCleanup", enc(&item))),
                    &json!({"notes": notes}),
                )
                .await?;
            let j = if wait { ctx.wait_job(&j).await? } else { j };
            print(out, &j, JOB_COLS);
        }
        ProtectionCmd::PlannedFailover { item, wait, shutdown_timeout } => {
            let mut body = json!({});
            if let Some(secs) = shutdown_timeout {
                body["shutdown_timeout_secs"] = json!(secs);
            }
            let j: Value =
                c.post(&ctx.v(&format!("/replicationProtectedItems/{}/plannedFailover", enc(&item))), &body).await?;
            let j = if wait { ctx.wait_job(&j).await? } else { j };
            print(out, &j, JOB_COLS);
        }
        ProtectionCmd::UnplannedFailover { item, point, shutdown_source, source_fenced, wait } => {
            let mut body = json!({"shutdown_source": shutdown_source, "source_fenced": source_fenced});
            if let Some(p) = point {
                body["recovery_point"] = json!(p);
            }
            let j: Value =
                c.post(&ctx.v(&format!("/replicationProtectedItems/{}/unplannedFailover", enc(&item))), &body).await?;
            let j = if wait { ctx.wait_job(&j).await? } else { j };
            print(out, &j, JOB_COLS);
        }
        ProtectionCmd::FailoverCommit { item, wait } => {
            let j: Value = c
                .post(&ctx.v(&format!("/replicationProtectedItems/{}/failoverCommit", enc(&item))), &json!({}))
                .await?;
            let j = if wait { ctx.wait_job(&j).await? } else { j };
            print(out, &j, JOB_COLS);
        }
        ProtectionCmd::DisableProtection { item, wait } => {
            let j: Value = c
                .post(&ctx.v(&format!("/replicationProtectedItems/{}/disableProtection", enc(&item))), &json!({}))
                .await?;
            let j = if wait { ctx.wait_job(&j).await? } else { j };
            print(out, &j, JOB_COLS);
        }
        ProtectionCmd::JobResume { id, wait } => {
            let j: Value = c.post(&ctx.v(&format!("/replicationJobs/{}/resume", enc(&id))), &json!(null)).await?;
            let j = if wait { ctx.wait_input_or_end(&j).await? } else { j };
            print(out, &j, JOB_COLS);
        }
        ProtectionCmd::PlanCreate { name, vms, pair, description } => {
            let mut body = json!({"name": name, "description": description, "vms": vms});
            if let Some(p) = pair {
                body["container_mapping"] = json!(p);
            }
            let p: Value = c.post(&ctx.v("/replicationRecoveryPlans"), &body).await?;
            print_plan(out, &p);
        }
        ProtectionCmd::PlanList => print(
            out,
            &c.get(&ctx.v("/replicationRecoveryPlans")).await?,
            &[("ID", "/id"), ("NAME", "/name"), ("GROUPS", "/groups"), ("ALLOWED", "/allowed_operations")],
        ),
        ProtectionCmd::PlanShow { plan } => {
            print_plan(out, &c.get(&ctx.v(&format!("/replicationRecoveryPlans/{}", enc(&plan)))).await?)
        }
        ProtectionCmd::PlanDelete { plan } => {
            c.delete(&ctx.v(&format!("/replicationRecoveryPlans/{}", enc(&plan)))).await?;
        }
        ProtectionCmd::PlanAddVm { plan, group, vms } => {
            plan_edit(&ctx, &plan, json!({"change": "addVms", "group": group, "vms": vms})).await?
        }
        ProtectionCmd::PlanRemoveVm { plan, vms } => {
            plan_edit(&ctx, &plan, json!({"change": "removeVms", "vms": vms})).await?
        }
        ProtectionCmd::PlanMoveVm { plan, group, vms } => {
            plan_edit(&ctx, &plan, json!({"change": "moveVms", "group": group, "vms": vms})).await?
        }
        ProtectionCmd::PlanGroupAdd { plan } => plan_edit(&ctx, &plan, json!({"change": "addGroup"})).await?,
        ProtectionCmd::PlanGroupDelete { plan, group } => {
            plan_edit(&ctx, &plan, json!({"change": "deleteGroup", "group": group})).await?
        }
        ProtectionCmd::PlanGroupMove { plan, group, to } => {
            plan_edit(&ctx, &plan, json!({"change": "moveGroup", "group": group, "to": to})).await?
        }
        ProtectionCmd::PlanStepAdd { plan, group, post, name, script, manual, failover_types } => {
            let types = failover_types
                .iter()
                .map(|t| match t.to_ascii_lowercase().as_str() {
                    "test" => Ok("TestFailover"),
                    "planned" => Ok("PlannedFailover"),
                    "unplanned" => Ok("UnplannedFailover"),
                    other => Err(anyhow!("Unknown failover type '{other}': use test, planned or unplanned")),
                })
                .collect::<Result<Vec<_>>>()?;
            let step = match (script, manual) {
                (Some(path), _) => json!({"kind": "Script", "name": name, "path": path, "failover_types": types}),
                (None, Some(instructions)) => {
                    json!({"kind": "ManualAction", "name": name, "instructions": instructions, "failover_types": types})
                }
                (None, None) => bail!("Give --script PATH or --manual INSTRUCTIONS"),
            };
            let phase = if post { "Post" } else { "Pre" };
            plan_edit(&ctx, &plan, json!({"change": "addStep", "group": group, "phase": phase, "step": step})).await?
        }
        ProtectionCmd::PlanStepRemove { plan, group, post, index } => {
            let phase = if post { "Post" } else { "Pre" };
            plan_edit(&ctx, &plan, json!({"change": "removeStep", "group": group, "phase": phase, "index": index}))
                .await?
        }
        ProtectionCmd::PlanTestFailover { plan, point, network, wait } => {
            let net = match network.as_str() {
                "none" => json!({"mode": "None"}),
                "auto" => json!({"mode": "Automatic"}),
                name => json!({"mode": "Existing", "network": name}),
            };
            let mut body = json!({"network": net});
            if let Some(p) = point {
                body["recovery_point"] = json!(p);
            }
            plan_op(&ctx, &plan, "testFailover", body, wait).await?
        }
        ProtectionCmd::PlanTestFailoverCleanup { plan, notes, wait } => {
            plan_op(&ctx, &plan, "testFailoverCleanup", json!({"notes": notes}), wait).await?
        }
        ProtectionCmd::PlanPlannedFailover { plan, wait } => {
            plan_op(&ctx, &plan, "plannedFailover", json!({}), wait).await?
        }
        ProtectionCmd::PlanUnplannedFailover { plan, point, shutdown_source, source_fenced, wait } => {
            let mut body = json!({"shutdown_source": shutdown_source, "source_fenced": source_fenced});
            if let Some(p) = point {
                body["recovery_point"] = json!(p);
            }
            plan_op(&ctx, &plan, "unplannedFailover", body, wait).await?
        }
        ProtectionCmd::PlanCommit { plan, wait } => plan_op(&ctx, &plan, "failoverCommit", json!({}), wait).await?,
        ProtectionCmd::PlanReprotect { plan, wait } => plan_op(&ctx, &plan, "reProtect", json!({}), wait).await?,
        ProtectionCmd::VmCreate { site, host, file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("Cannot read {}", file.display()))?;
            let definition: Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            vm_action(&ctx, &site, &host, json!({"action": "create", "definition": definition})).await?;
        }
        ProtectionCmd::VmList { site, host } => vm_action(&ctx, &site, &host, json!({"action": "list"})).await?,
        ProtectionCmd::VmShow { site, host, vm } => {
            vm_action(&ctx, &site, &host, json!({"action": "status", "vm": vm})).await?
        }
        ProtectionCmd::VmStart { site, host, vm } => {
            vm_action(&ctx, &site, &host, json!({"action": "start", "vm": vm})).await?
        }
        ProtectionCmd::VmShutdown { site, host, vm, timeout } => {
            vm_action(&ctx, &site, &host, json!({"action": "shutdown", "vm": vm, "timeout_secs": timeout})).await?
        }
        ProtectionCmd::VmStop { site, host, vm } => {
            vm_action(&ctx, &site, &host, json!({"action": "stop", "vm": vm})).await?
        }
        ProtectionCmd::VmDelete { site, host, vm, delete_disks } => {
            vm_action(&ctx, &site, &host, json!({"action": "delete", "vm": vm, "delete_disks": delete_disks})).await?
        }
    }
    Ok(())
}

const VM_COLS: &[(&str, &str)] =
    &[("NAME", "/name"), ("STATE", "/power_state"), ("PID", "/pid"), ("REASON", "/reason")];

/// VM actions run as jobs through vault → site → host; wait and print the host's answer.
async fn vm_action(ctx: &Ctx, site: &str, host: &str, action: Value) -> Result<()> {
    let job: Value = ctx.c.post(&ctx.f(site, &format!("/hosts/{}/vmActions", enc(host))), &action).await?;
    let done = ctx.wait_job(&job).await?;
    let output = &done["params"]["outputs"]["Run on host"];
    if !output.is_null() {
        print(ctx.out, output, VM_COLS);
    }
    Ok(())
}

/// Apply one change to a plan and print the result.
async fn plan_edit(ctx: &Ctx, plan: &str, change: Value) -> Result<()> {
    let p: Value =
        ctx.c.patch(&ctx.v(&format!("/replicationRecoveryPlans/{}", enc(plan))), &json!({"changes": [change]})).await?;
    print_plan(ctx.out, &p);
    Ok(())
}

/// Start a plan operation; with `wait`, follow it until it ends or waits for an operator
/// (a manual action, or Complete testing after a test failover).
async fn plan_op(ctx: &Ctx, plan: &str, op: &str, body: Value, wait: bool) -> Result<()> {
    let j: Value = ctx.c.post(&ctx.v(&format!("/replicationRecoveryPlans/{}/{op}", enc(plan))), &body).await?;
    let j = if wait { ctx.wait_input_or_end(&j).await? } else { j };
    if ctx.out == Output::Table && j["status"] == "WaitingForInput" {
        if let Some(t) = j["tasks"].as_array().and_then(|t| t.iter().find(|t| t["status"] == "WaitingForInput")) {
            eprintln!("Waiting for an operator at: {}", t["name"].as_str().unwrap_or(""));
        }
    }
    print(ctx.out, &j, JOB_COLS);
    Ok(())
}

/// A plan as text: its groups in order with their VMs and steps (or JSON).
fn print_plan(out: Output, p: &Value) {
    if out == Output::Json {
        print(out, p, &[]);
        return;
    }
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    println!("Plan {} ({}), version {}", s(&p["name"]), s(&p["id"]), p["version"]);
    if !s(&p["description"]).is_empty() {
        println!("  {}", s(&p["description"]));
    }
    let step = |st: &Value| match st["kind"].as_str() {
        Some("Script") => format!("script '{}' ({})", s(&st["name"]), s(&st["path"])),
        _ => format!("manual action '{}': {}", s(&st["name"]), s(&st["instructions"])),
    };
    for g in p["groups"].as_array().into_iter().flatten() {
        let vms: Vec<String> = g["items"].as_array().into_iter().flatten().map(|i| s(&i["name"])).collect();
        println!("Group {}: {}", g["number"], if vms.is_empty() { "(no VM)".to_string() } else { vms.join(", ") });
        for (phase, key) in [("pre ", "pre_steps"), ("post", "post_steps")] {
            for (i, st) in g[key].as_array().into_iter().flatten().enumerate() {
                let types: Vec<String> = st["failover_types"].as_array().into_iter().flatten().map(s).collect();
                let types = if types.is_empty() { String::new() } else { format!(" [{}]", types.join(", ")) };
                println!("  {phase} {} {}{types}", i + 1, step(st));
            }
        }
    }
    let allowed: Vec<String> = p["allowed_operations"].as_array().into_iter().flatten().map(s).collect();
    println!("Allowed operations: {}", if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") });
}

/// `VM/DISK=PATH` of `ferry protect --existing-disk` (REP-7).
fn parse_existing_disk(s: &str) -> Result<Value, String> {
    let (vm_disk, path) = s.split_once('=').ok_or("expected VM/DISK=PATH")?;
    let (vm, disk) = vm_disk.rsplit_once('/').ok_or("expected VM/DISK=PATH")?;
    if vm.is_empty() || disk.is_empty() || path.is_empty() {
        return Err("expected VM/DISK=PATH with none of the three empty".into());
    }
    Ok(json!({"vm": vm, "disk": disk, "path": path}))
}
