//! The lab's demo (HOST-6, PLAN-1): three VMs running the record workload on New York's host,
//! protected to Chicago under the lab's policy, and a recovery plan of them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use ferry_client::Client;
use serde_json::{json, Value};

use crate::lab::{test_guest_dir, VAULT_NAME};

/// The demo VMs of the seed: on VMNetwork1-NewYork in GoldCloud1, two on GOLD storage and one on
/// SILVER, each running the test guest's record workload on its data disk.
pub(crate) async fn demo_vms(client: &Client, dir: &Path) -> Result<bool> {
    let _ = dir;
    let guest = test_guest_dir();
    let (kernel, initrd) = (guest.join("vmlinuz"), guest.join("initrd.img"));
    if !kernel.exists() || !initrd.exists() {
        println!("(no test guest in {}: demo VMs skipped; scripts/setup-deps.sh builds it)", guest.display());
        return Ok(false);
    }
    let vms_path = format!("/api/v1/vaults/{VAULT_NAME}/replicationFabrics/VMM-NewYork/hosts/ny1/vmActions");
    let existing = run_vm_action(client, &vms_path, json!({"action": "list"})).await?;
    for (i, (name, class)) in [("web1", "gold"), ("db1", "gold"), ("app1", "silver")].iter().enumerate() {
        let known = existing.as_array().is_some_and(|a| a.iter().any(|v| v["name"] == *name));
        if !known {
            let store = dir.join("storage").join("ny1").join(class);
            let def = json!({
                "name": name,
                "vcpus": 1,
                "memory_mib": 256,
                "guest_agent": true,
                "disks": [
                    {"target": "vda", "path": store.join(format!("{name}-vda.qcow2")), "format": "qcow2", "create_size": 64u64 << 20},
                    {"target": "vdb", "path": store.join(format!("{name}-vdb.qcow2")), "format": "qcow2", "create_size": 64u64 << 20}
                ],
                "nics": [{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": format!("10.11.0.{}", 10 + i)}],
                "kernel_boot": {
                    "kernel": kernel, "initrd": initrd,
                    "append": format!("console=ttyS0 quiet panic=-1 ferry.workload=records ferry.disk=/dev/vdb ferry.interval_ms=2000 ferry.count=100000")
                }
            });
            run_vm_action(client, &vms_path, json!({"action": "create", "definition": def})).await?;
        }
        let st = run_vm_action(client, &vms_path, json!({"action": "status", "vm": name})).await?;
        if st["power_state"] != "Running" {
            run_vm_action(client, &vms_path, json!({"action": "start", "vm": name})).await?;
        }
        println!(
            "  demo VM     {name:<12} VMNetwork1-NewYork, {} storage, running the record workload",
            class.to_uppercase()
        );
    }
    Ok(true)
}

/// The seed's protection of the demo VMs: GoldCloud1 → GoldCloud2 under policy `lab-gold`,
/// VMNetwork1 and the GOLD/SILVER classifications mapped, all three demo VMs protected.
pub(crate) async fn demo_replication(client: &Client, dir: &Path) -> Result<()> {
    let v = format!("/api/v1/vaults/{VAULT_NAME}");
    let fabric = |name: &str| format!("{v}/replicationFabrics/{name}");
    let find = |list: &Value, name: &str| -> Result<Value> {
        list.as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .map(|x| x["id"].clone())
            .ok_or_else(|| anyhow!("{name} is not in the lab's inventory"))
    };
    let ny: Value = client.get(&fabric("VMM-NewYork")).await?;
    let chi: Value = client.get(&fabric("VMM-Chicago")).await?;
    let r = |f: &Value, id: Value| json!({"fabric": f["id"], "id": id});
    // The demo VMs must be in the vault's inventory first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let items: Value = client.get(&format!("{}/protectableItems?limit=1000", fabric("VMM-NewYork"))).await?;
        let n = items["items"]
            .as_array()
            .map(|a| a.iter().filter(|x| ["web1", "db1", "app1"].contains(&x["name"].as_str().unwrap_or(""))).count())
            .unwrap_or(0);
        if n == 3 {
            break;
        }
        if Instant::now() > deadline {
            bail!("The demo VMs did not reach the vault's inventory");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let policies: Value = client.get(&format!("{v}/replicationPolicies")).await?;
    if !policies.as_array().is_some_and(|a| a.iter().any(|p| p["name"] == "lab-gold")) {
        let clouds_ny: Value = client.get(&format!("{}/protectionContainers", fabric("VMM-NewYork"))).await?;
        let clouds_chi: Value = client.get(&format!("{}/protectionContainers", fabric("VMM-Chicago"))).await?;
        let body = json!({
            "name": "lab-gold", "host_version": "qemu-7.2", "copy_frequency_secs": 30,
            "recovery_point_retention_hours": 2, "app_consistent_frequency_hours": 1, "compression": true,
            "associate": [{"source": r(&ny, find(&clouds_ny, "GoldCloud1")?), "target": r(&chi, find(&clouds_chi, "GoldCloud2")?)}]
        });
        let _: Value = client.post(&format!("{v}/replicationPolicies"), &body).await?;
        let nets_ny: Value = client.get(&format!("{}/vmNetworks", fabric("VMM-NewYork"))).await?;
        let nets_chi: Value = client.get(&format!("{}/vmNetworks", fabric("VMM-Chicago"))).await?;
        let body = json!({"source": r(&ny, find(&nets_ny, "VMNetwork1-NewYork")?), "target": r(&chi, find(&nets_chi, "VMNetwork1-Chicago")?)});
        let _: Value = client.post(&format!("{v}/replicationNetworkMappings"), &body).await?;
        let sc_ny: Value = client.get(&format!("{}/storageClassifications", fabric("VMM-NewYork"))).await?;
        let sc_chi: Value = client.get(&format!("{}/storageClassifications", fabric("VMM-Chicago"))).await?;
        for (s, t) in [("GOLD", "GOLD_TARGET"), ("SILVER", "SILVER_TARGET")] {
            let body = json!({"source": r(&ny, find(&sc_ny, s)?), "target": r(&chi, find(&sc_chi, t)?)});
            let _: Value = client.post(&format!("{v}/replicationStorageClassificationMappings"), &body).await?;
        }
    }
    let items: Value = client.get(&format!("{v}/replicationProtectedItems?limit=1000")).await?;
    let missing: Vec<&str> = ["web1", "db1", "app1"]
        .into_iter()
        .filter(|n| !items["items"].as_array().is_some_and(|a| a.iter().any(|i| i["name"] == *n)))
        .collect();
    if !missing.is_empty() {
        let _: Value = client
            .post(&format!("{v}/replicationProtectedItems"), &json!({"source_site": "VMM-NewYork", "vms": missing}))
            .await?;
    }
    println!("  protection  web1, db1, app1: GoldCloud1 -> GoldCloud2 under policy lab-gold (ferry item-list)");
    demo_plan(client, dir).await?;
    Ok(())
}

/// The demo recovery plan `lab-app`: db1 first, then app1, then web1; a script from the lab's
/// script library after the database group, and a manual check before the web tier.
async fn demo_plan(client: &Client, dir: &Path) -> Result<()> {
    let lib = dir.join("scripts").join("lab-app");
    std::fs::create_dir_all(&lib)?;
    let script = lib.join("db-ready.sh");
    if !script.exists() {
        std::fs::write(
            &script,
            "#!/bin/sh\n# Runs on the recovery site's manager after group 1 (db1) is up.\necho \"$FERRY_PLAN_NAME: group $FERRY_PLAN_GROUP up at $FERRY_SITE_NAME ($FERRY_FAILOVER_TYPE, $FERRY_FAILOVER_DIRECTION)\"\n",
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let plans = format!("/api/v1/vaults/{VAULT_NAME}/replicationRecoveryPlans");
    let existing: Value = client.get(&plans).await?;
    if existing.as_array().is_some_and(|a| a.iter().any(|p| p["name"] == "lab-app")) {
        return Ok(());
    }
    let _: Value = client
        .post(&plans, &json!({"name": "lab-app", "description": "Demo application: database, app tier, web tier", "vms": ["db1"]}))
        .await?;
    let changes = json!({"changes": [
        {"change": "addGroup"},
        {"change": "addGroup"},
        {"change": "addVms", "group": 2, "vms": ["app1"]},
        {"change": "addVms", "group": 3, "vms": ["web1"]},
        {"change": "addStep", "group": 1, "phase": "Post",
         "step": {"kind": "Script", "name": "database ready", "path": "lab-app/db-ready.sh"}},
        {"change": "addStep", "group": 3, "phase": "Pre",
         "step": {"kind": "ManualAction", "name": "Check the app tier",
                  "instructions": "Open app1's console and check that it found its records; then resume the job",
                  "failover_types": ["PlannedFailover", "UnplannedFailover"]}}
    ]});
    let _: Value = client.patch(&format!("{plans}/lab-app"), &changes).await?;
    println!("  plan        lab-app: group 1 db1, group 2 app1, group 3 web1 (ferry plan-show lab-app)");
    Ok(())
}

/// Submit a VM action job and wait for the host's answer.
async fn run_vm_action(client: &Client, path: &str, action: Value) -> Result<Value> {
    let job: Value = client.post(path, &action).await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j: Value = client.get(&format!("/api/v1/vaults/{VAULT_NAME}/replicationJobs/{id}")).await?;
        match j["status"].as_str() {
            Some("Succeeded") => return Ok(j["params"]["outputs"]["Run on host"].clone()),
            Some("Failed") | Some("Cancelled") => bail!("VM action failed: {}", j["errors"]),
            _ if Instant::now() > deadline => bail!("VM action {id} did not finish"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
