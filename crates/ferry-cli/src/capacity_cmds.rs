//! Capacity planning verbs (CAP-1): measure the churn of up to 100 VMs of a site, then read what
//! replicating them needs (bandwidth per copy frequency, initial replication time, replica
//! storage) computed from the measurements.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::api_cmds::{context, enc, Connection};
use crate::output::{print, Output};

#[derive(Subcommand)]
pub enum CapacityCmd {
    /// Start measuring the churn of VMs of a site for a capacity plan (CAP-1).
    #[command(name = "capacity-create")]
    Create {
        /// Capacity plan name
        name: String,
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// VM names or ids (up to 100).
        vms: Vec<String>,
        /// Stop measuring after this many hours (1–720); without it, until capacity-stop.
        #[arg(long)]
        hours: Option<u32>,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Capacity plans with their state.
    #[command(name = "capacity-list")]
    List,
    /// The capacity report of a plan, from what was measured so far.
    #[command(name = "capacity-report")]
    Report {
        /// Recovery plan (id or name)
        plan: String,
        /// Bandwidth for the initial replication time, Mbit/s.
        #[arg(long)]
        bandwidth_mbps: Option<f64>,
        /// Recovery point retention for the replica storage, hours (0–24).
        #[arg(long)]
        retention_hours: Option<u32>,
        /// Copy frequency for the replica storage, seconds (30, 300, 900).
        #[arg(long)]
        copy_frequency: Option<u32>,
    },
    /// Stop measuring; the figures stay.
    #[command(name = "capacity-stop")]
    Stop {
        /// Recovery plan (id or name)
        plan: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Stop measuring and delete the plan with its figures.
    #[command(name = "capacity-delete")]
    Delete {
        /// Recovery plan (id or name)
        plan: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
}

pub async fn run(conn: &Connection, cmd: CapacityCmd) -> Result<()> {
    let ctx = context(conn)?;
    match cmd {
        CapacityCmd::Create { name, site, vms, hours, wait } => {
            let mut body = json!({"name": name, "source_site": site, "vms": vms});
            if let Some(h) = hours {
                body["duration_hours"] = json!(h);
            }
            let r: Value = ctx.c.post(&ctx.v("/capacityPlans"), &body).await?;
            if wait {
                ctx.wait_job(&r["job"]).await?;
            }
            print(ctx.out, &r["plan"], PLAN_COLS);
        }
        CapacityCmd::List => print(ctx.out, &ctx.c.get(&ctx.v("/capacityPlans")).await?, PLAN_COLS),
        CapacityCmd::Report { plan, bandwidth_mbps, retention_hours, copy_frequency } => {
            let mut q = Vec::new();
            if let Some(b) = bandwidth_mbps {
                q.push(format!("bandwidth_mbps={b}"));
            }
            if let Some(r) = retention_hours {
                q.push(format!("retention_hours={r}"));
            }
            if let Some(f) = copy_frequency {
                q.push(format!("copy_frequency_secs={f}"));
            }
            let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
            let r: Value = ctx.c.get(&ctx.v(&format!("/capacityPlans/{}/report{query}", enc(&plan)))).await?;
            show_report(ctx.out, &r);
        }
        CapacityCmd::Stop { plan, wait } => {
            let j: Value = ctx.c.post(&ctx.v(&format!("/capacityPlans/{}/stop", enc(&plan))), &json!({})).await?;
            finish(&ctx, j, wait).await?;
        }
        CapacityCmd::Delete { plan, wait } => {
            let j: Value = ctx.c.delete(&ctx.v(&format!("/capacityPlans/{}", enc(&plan)))).await?;
            finish(&ctx, j, wait).await?;
        }
    }
    Ok(())
}

const PLAN_COLS: &[(&str, &str)] =
    &[("NAME", "/name"), ("SITE", "/site_name"), ("STATE", "/state"), ("CREATED", "/created_at"), ("UNTIL", "/until")];

async fn finish(ctx: &crate::api_cmds::Ctx, job: Value, wait: bool) -> Result<()> {
    let job = if wait { ctx.wait_job(&job).await? } else { job };
    print(ctx.out, &job, &[("JOB", "/id"), ("OPERATION", "/operation"), ("STATUS", "/status")]);
    Ok(())
}

fn bytes(v: &Value) -> String {
    match v.as_u64() {
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        None => "not measured yet".into(),
    }
}

fn duration(secs: f64) -> String {
    match secs {
        s if s < 60.0 => format!("{s:.1} s"),
        s if s < 3600.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

fn mbps(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |m| format!("{m:.2}"))
}

/// The report as text (or JSON).
fn show_report(out: Output, r: &Value) {
    if out == Output::Json {
        print(out, r, &[]);
        return;
    }
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let p = &r["params"];
    println!(
        "Capacity plan {} ({}), measured {} min",
        s(&r["plan"]),
        s(&r["state"]),
        r["measured_secs"].as_u64().unwrap_or(0) / 60
    );
    println!(
        "VMs            {} measured of {}; {} disks (at most {} per VM, {:.1} on average)",
        r["vms_measured"],
        r["vms"],
        r["disks"],
        r["disks_per_vm_max"],
        r["disks_per_vm_average"].as_f64().unwrap_or(0.0)
    );
    println!("Storage        {} virtual, {} allocated", bytes(&r["virtual_bytes"]), bytes(&r["allocated_bytes"]));
    println!("Daily churn    {} ({})", bytes(&r["daily_churn_bytes"]), s(&r["daily_churn_basis"]));
    println!("Bandwidth      copy frequency   average Mbit/s   peak Mbit/s   windows");
    for b in r["bandwidth"].as_array().into_iter().flatten() {
        println!(
            "               {:>6} s         {:>14}   {:>11}   {:>7}",
            b["copy_frequency_secs"],
            mbps(&b["average_mbps"]),
            mbps(&b["peak_mbps"]),
            b["windows"]
        );
    }
    println!(
        "Initial copy   {} at {} Mbit/s",
        duration(r["initial_replication_secs"].as_f64().unwrap_or(0.0)),
        p["bandwidth_mbps"]
    );
    println!(
        "Replica store  {} for {} h of retention at a {} s copy frequency",
        bytes(&r["replica_storage_bytes"]),
        p["retention_hours"],
        p["copy_frequency_secs"]
    );
    println!("Per VM         disks  allocated     daily churn   peak Mbit/s at 30/300/900 s");
    for v in r["per_vm"].as_array().into_iter().flatten() {
        let peaks: Vec<String> =
            v["bandwidth"].as_array().into_iter().flatten().map(|b| mbps(&b["peak_mbps"])).collect();
        println!(
            "  {:<12} {:>5}  {:>12}  {:>14}   {}",
            s(&v["vm"]),
            v["disks"].as_array().map_or(0, Vec::len),
            bytes(&v["allocated_bytes"]),
            bytes(&v["daily_churn_bytes"]),
            peaks.join(" / ")
        );
    }
    for n in r["notes"].as_array().into_iter().flatten() {
        println!("Note: {}", s(n));
    }
}
