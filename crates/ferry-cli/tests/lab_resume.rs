//! Crash and outage behaviour of the control plane (JOB-1, FAB-3, JOB-4): a job in progress
//! when the vault is killed resumes after restart; a site keeps working while the vault is down
//! and resyncs when it returns.

mod common;

use std::time::Duration;

use common::{kill9, Lab, LabOptions};
use serde_json::{json, Value};

fn job(lab: &Lab, id: &str) -> Value {
    lab.json(&["job-show", id])
}

/// The site's local status endpoint (answers while the vault is down).
fn site_status(lab: &Lab, site: &str) -> Value {
    let endpoint =
        std::fs::read_to_string(lab.dir.join("sites").join(site).join("data/host-endpoint")).expect("endpoint");
    let ca = std::fs::read_to_string(lab.dir.join("vault/ca-cert.pem")).expect("ca");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = ferry_client::Client::builder(format!("https://{}", endpoint.trim()))
            .ca(ca)
            .peer_name(ferry_pki::PeerName::Prefix("site-".into()))
            .build()
            .expect("client");
        c.get::<Value>("/v1/status").await.expect("site status")
    })
}

fn state_json(lab: &Lab, site: &str) -> Value {
    let p = lab.dir.join("sites").join(site).join("data/state.json");
    serde_json::from_slice(&std::fs::read(p).unwrap_or_default()).unwrap_or(Value::Null)
}

#[test]
fn job_1_job_in_progress_resumes_after_vault_is_killed_and_fab_3_site_survives_vault_outage() {
    let lab = Lab::start(LabOptions::default());
    let disk = lab.storage("ny1", "gold").join("r1-vda.qcow2");
    let def =
        json!({"name": "r1", "disks": [{"target": "vda", "path": disk, "format": "qcow2", "create_size": 8u64 << 20}]});
    lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def("r1", &def).display().to_string(),
    ]);
    lab.wait_for("the VM in the inventory", Duration::from_secs(20), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"].as_array().is_some_and(|a| !a.is_empty()).then_some(())
    });
    lab.json(&["policy-create", "--name", "gold", "--copy-frequency", "30"]);

    // The target site goes away; the pairing job waits for it.
    kill9(lab.pid("site-chicago"));
    let pair = lab.json(&[
        "pair-create",
        "--source",
        "VMM-NewYork/GoldCloud1",
        "--target",
        "VMM-Chicago/GoldCloud2",
        "--policy",
        "gold",
    ]);
    assert!(pair["id"].is_string());
    let jobs = lab.json(&["job-list", "--operation", "ConfigureCloudPair"]);
    let id = jobs["items"][0]["id"].as_str().expect("job").to_string();
    lab.wait_for("the source side to be configured", Duration::from_secs(20), || {
        let j = job(&lab, &id);
        (j["tasks"][0]["status"] == "Succeeded" && j["tasks"][1]["status"] == "InProgress").then_some(())
    });

    // The vault is killed mid-job.
    kill9(lab.pid("vault"));
    let killed_at = chrono::Utc::now().timestamp_millis();
    // FAB-3: the New York site and its host keep working while the vault is down.
    std::thread::sleep(Duration::from_secs(3));
    let ny = site_status(&lab, "newyork");
    let seen = ny["hosts"][0]["last_seen_ms"].as_i64().unwrap_or(0);
    assert!(seen > killed_at, "the host still reports to its site while the vault is down: {ny}");
    assert!(
        ny["last_vault_report_ms"].as_i64().unwrap_or(0) < killed_at + 1500,
        "the vault is really unreachable: {ny}"
    );
    assert!(std::path::Path::new(&format!("/proc/{}", lab.pid("site-newyork"))).exists());

    // The vault restarts on the same data directory and port; the target site comes back.
    let _vault = lab.restart_vault();
    lab.wait_for("the vault to answer again", Duration::from_secs(20), || {
        (lab.cli(&["vault-show"]).0 == 0).then_some(())
    });
    // Before Chicago returns, the restarted vault notices its lost heartbeat (JOB-4).
    lab.wait_for("a HeartbeatLost event for Chicago", Duration::from_secs(30), || {
        let ev = lab.json(&["event-list", "--kind", "HeartbeatLost"]);
        ev["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("VMM-Chicago"))))
            .then_some(())
    });
    let _site = lab.restart_site("chicago");

    // The same job finishes; each site answered its command exactly once.
    let done = lab.wait_for("the resumed job to succeed", Duration::from_secs(60), || {
        let j = job(&lab, &id);
        matches!(j["status"].as_str(), Some("Succeeded") | Some("Failed")).then_some(j)
    });
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(done["progress"], 100);
    let all = lab.json(&["job-list", "--operation", "ConfigureCloudPair"]);
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1), "no second job was started");
    for site in ["newyork", "chicago"] {
        let answered = state_json(&lab, site)["answered"].as_array().cloned().unwrap_or_default();
        let pair_cmds = answered.iter().filter(|a| a[1]["output"]["applied_policy_version"].is_number()).count();
        assert_eq!(pair_cmds, 1, "{site} configured the pair once: {answered:?}");
    }
    // FAB-3: the New York site resynced with the new vault; Chicago's heartbeat is restored.
    lab.wait_for("New York heartbeats again", Duration::from_secs(20), || {
        let f = lab.json(&["site-show", "VMM-NewYork"]);
        let t = f["last_heartbeat"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
        (t.timestamp_millis() > killed_at + 3000).then_some(())
    });
    lab.wait_for("HeartbeatRestored for Chicago", Duration::from_secs(30), || {
        let ev = lab.json(&["event-list", "--kind", "HeartbeatRestored"]);
        ev["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("VMM-Chicago"))))
            .then_some(())
    });
}
