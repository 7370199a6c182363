//! The lab end to end: separate processes, real TLS, real registration keys (issue: control plane).

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::{json, Value};

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> =
        v.as_array().into_iter().flatten().filter_map(|x| x["name"].as_str().map(str::to_string)).collect();
    n.sort();
    n
}

#[test]
fn fab_4_lab_registers_sites_and_lists_seed_fabric_and_follows_changes() {
    let lab = Lab::start(LabOptions::default());
    // FAB-2/FAB-4: both sites registered through registration keys, with their seed fabric.
    let sites = lab.json(&["site-list"]);
    assert_eq!(names(&sites), vec!["VMM-Chicago", "VMM-NewYork"]);
    // `ferry version`: the CLI, the vault, each site manager and each host agent, all of this build.
    let versions = lab.json(&["version"]);
    let rows = versions.as_array().cloned().unwrap_or_default();
    let of = |component: &str| rows.iter().filter(|r| r["component"] == component).count();
    assert_eq!((of("cli"), of("vault"), of("site manager")), (1, 1, 2), "{versions}");
    assert!(of("host agent") >= 2, "{versions}");
    assert!(rows.iter().all(|r| r["version"] == env!("CARGO_PKG_VERSION")), "{versions}");
    let keys = lab.json(&["key-list"]);
    assert_eq!(
        keys.as_array().map(|a| a.iter().filter(|k| !k["used_at"].is_null()).count()),
        Some(2),
        "each site used one key"
    );
    assert_eq!(names(&lab.json(&["cloud-list", "--site", "VMM-NewYork"])), vec!["GoldCloud1", "SilverCloud1"]);
    assert_eq!(
        names(&lab.json(&["cloud-list", "--site", "VMM-Chicago", "--synced"])),
        vec!["GoldCloud2", "SilverCloud2"]
    );
    assert_eq!(
        names(&lab.json(&["network-list", "--site", "VMM-NewYork"])),
        vec!["VMNetwork1-NewYork", "VMNetwork2-NewYork"]
    );
    assert_eq!(
        names(&lab.json(&["classification-list", "--site", "VMM-Chicago"])),
        vec!["GOLD_TARGET", "SILVER_TARGET"]
    );
    assert_eq!(
        names(&lab.json(&["logical-network-list", "--site", "VMM-Chicago"])),
        vec!["LogicalNetwork1-Chicago", "LogicalNetwork2-Chicago"]
    );
    let hosts = lab.json(&["host-list", "--site", "VMM-NewYork"]);
    assert_eq!(names(&hosts), vec!["ny1"]);
    let ny1 = &hosts[0];
    assert_eq!(ny1["connected"], true);
    assert!(ny1["qemu_version"].as_str().is_some_and(|v| v.starts_with("7.")), "{ny1}");
    let locs = ny1["storage_locations"].as_array().expect("locations");
    assert_eq!(locs.len(), 3);
    assert!(locs.iter().any(|l| l["default_replica"] == true));
    assert!(locs.iter().all(|l| l["free_bytes"].as_u64().unwrap_or(0) > 0));
    let classes = lab.json(&["classification-list", "--site", "VMM-NewYork"]);
    let gold_id =
        classes.as_array().and_then(|a| a.iter().find(|c| c["name"] == "GOLD")).map(|c| c["id"].clone()).expect("GOLD");
    assert!(locs.iter().any(|l| l["classification"] == gold_id), "hosts' classifications carry the site's ids");

    // FAB-4: a new VM appears as a protectable item; a removed one disappears.
    let disk = lab.storage("ny1", "gold").join("inv1-vda.qcow2");
    let def = lab.vm_def(
        "inv1",
        &json!({"name": "inv1", "disks": [{"target": "vda", "path": disk, "format": "qcow2", "create_size": 16u64 << 20}],
                 "nics": [{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": "10.11.0.50"}]}),
    );
    lab.json(&["vm-create", "--site", "VMM-NewYork", "--host", "ny1", "--file", &def.display().to_string()]);
    let item = lab.wait_for("the new VM in the vault's inventory", Duration::from_secs(20), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"].as_array().and_then(|a| a.iter().find(|v| v["name"] == "inv1").cloned())
    });
    let nets = lab.json(&["network-list", "--site", "VMM-NewYork"]);
    let vmn1 =
        nets.as_array().and_then(|a| a.iter().find(|n| n["name"] == "VMNetwork1-NewYork")).map(|n| n["id"].clone());
    assert_eq!(Some(item["nics"][0]["vm_network"].clone()), vmn1, "NICs carry the VM network's id");
    assert_eq!(item["nics"][0]["ip"], "10.11.0.50");
    assert_eq!(item["disks"][0]["classification"], gold_id);
    let clouds = lab.json(&["cloud-list", "--site", "VMM-NewYork"]);
    let gold_cloud =
        clouds.as_array().and_then(|a| a.iter().find(|c| c["name"] == "GoldCloud1")).map(|c| c["id"].clone());
    assert_eq!(Some(item["cloud"].clone()), gold_cloud, "the VM belongs to its host's cloud");

    lab.json(&["vm-delete", "--site", "VMM-NewYork", "--host", "ny1", "inv1", "--delete-disks"]);
    lab.wait_for("the VM to leave the inventory", Duration::from_secs(20), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        (!items["items"].as_array().is_some_and(|a| a.iter().any(|v| v["name"] == "inv1"))).then_some(())
    });
    assert!(!disk.exists());
    let events = lab.json(&["event-list", "--kind", "InventoryChanged", "--limit", "200"]);
    let msgs: Vec<&str> =
        events["items"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str()).collect();
    assert!(msgs.iter().any(|m| m.contains("VM inv1 added")), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("VM inv1 removed")), "{msgs:?}");
}

#[test]
fn fab_2_lab_cli_exit_codes_and_clear_errors() {
    let lab = Lab::start(LabOptions::default());
    // Unknown site → not found (exit 3); invalid policy → error with the stable code (exit 1);
    let (code, _, err) = lab.cli(&["site-show", "VMM-Atlantis"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("NotFound"), "{err}");
    let (code, _, err) = lab.cli(&["policy-create", "--name", "p", "--copy-frequency", "31"]);
    assert_eq!(code, 1);
    assert!(err.contains("PolicyInvalidCopyFrequency"), "{err}");
    assert_eq!(lab.json(&["policy-list"]), json!([]), "nothing was created");
    // A Reader token cannot change configuration (exit 5).
    let t = lab.json(&["token-create", "--name", "viewer", "--role", "reader"]);
    let secret = t["secret"].as_str().expect("secret").to_string();
    let (code, _, err) = lab.cli(&["--token", &secret, "policy-create", "--name", "p2"]);
    assert_eq!(code, 5, "{err}");
    let (code, out, _) = lab.cli(&["--token", &secret, "site-list"]);
    assert_eq!(code, 0);
    assert!(out.contains("VMM-NewYork"));
    // A used registration key cannot register another site (FAB-2).
    let used = std::fs::read_to_string(lab.dir.join("sites/newyork/registration-key.json")).expect("key file");
    let cfg = lab.dir.join("sites/newyork/site.toml");
    let other = lab.tmp.path().join("other-site");
    let key = lab.tmp.path().join("used-key.json");
    std::fs::write(&key, used).expect("key");
    let (code, _, err) = lab.cli(&[
        "site",
        "register",
        "--config",
        &cfg.display().to_string(),
        "--data-dir",
        &other.display().to_string(),
        "--key",
        &key.display().to_string(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("RegistrationKeyAlreadyUsed"), "{err}");

    // Output into a pipe whose reader went away (`ferry site-list | head -0`): the command ends
    // quietly by SIGPIPE, as command-line tools do, never with a panic.
    let mut child = std::process::Command::new(common::ferry_bin())
        .args(["site-list", "-o", "json"])
        .env("FERRY_LAB_DIR", &lab.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ferry runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("ferry ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE: {:?} {err}", out.status);
}
