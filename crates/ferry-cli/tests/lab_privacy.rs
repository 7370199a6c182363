//! FAB-9: every message a site sends to the vault carries only fields documented in
//! docs/data-privacy.md.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::{json, Value};

/// Field paths of a JSON value: `a.b`, lists as `a[]`; values of leaf fields are not included.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(p.clone());
                paths(x, &p, out);
            }
        }
        Value::Array(a) => {
            let p = format!("{prefix}[]");
            for x in a {
                if x.is_object() {
                    paths(x, &p, out);
                }
            }
        }
        _ => {}
    }
}

/// Documented paths per endpoint: backticked names in the tables; `.x` continues the previous
/// full path's parent.
fn documented() -> Vec<(String, BTreeSet<String>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/data-privacy.md"))
        .expect("docs/data-privacy.md");
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let endpoint = h.split('`').nth(1).unwrap_or("").split_whitespace().nth(1).unwrap_or("").to_string();
            out.push((endpoint, BTreeSet::new()));
            continue;
        }
        if !line.starts_with('|') || line.starts_with("|---") {
            continue;
        }
        let first = line.split('|').nth(1).unwrap_or("");
        let Some((_, set)) = out.last_mut() else { continue };
        let mut base = String::new();
        for (i, tok) in first.split('`').enumerate() {
            if i % 2 == 0 || tok.is_empty() {
                continue;
            }
            let full = if let Some(rest) = tok.strip_prefix('.') {
                format!("{base}.{rest}")
            } else {
                base = tok.rsplit_once('.').map(|(b, _)| b.to_string()).unwrap_or_default();
                tok.to_string()
            };
            // Every prefix of a documented path is itself allowed (the containing objects).
            let mut acc = String::new();
            for part in full.split('.') {
                acc = if acc.is_empty() { part.to_string() } else { format!("{acc}.{part}") };
                set.insert(acc.clone());
                set.insert(acc.trim_end_matches("[]").to_string());
            }
            // `output[]` documents the list form of every `output.*` field.
            if full == "output[]" {
                let list: Vec<String> = set
                    .iter()
                    .filter(|p| p.starts_with("output."))
                    .map(|p| p.replacen("output.", "output[].", 1))
                    .collect();
                set.extend(list);
            }
        }
    }
    out
}

#[test]
fn fab_9_vault_bound_messages_only_carry_documented_fields() {
    let lab = Lab::start(LabOptions { record: true, ..Default::default() });
    // Exercise every kind of message: VM actions (results), pairing (configure commands).
    let disk = lab.storage("ny1", "gold").join("p1-vda.qcow2");
    let def = json!({"name": "p1", "disks": [{"target": "vda", "path": disk, "format": "qcow2", "create_size": 8u64 << 20}],
                     "nics": [{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": "10.11.0.40"}]});
    lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def("p1", &def).display().to_string(),
    ]);
    lab.json(&["vm-list", "--site", "VMM-NewYork", "--host", "ny1"]);
    lab.wait_for("the VM in the inventory", Duration::from_secs(20), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"].as_array().is_some_and(|a| !a.is_empty()).then_some(())
    });
    lab.json(&[
        "policy-create",
        "--name",
        "gold",
        "--copy-frequency",
        "300",
        "--associate",
        "VMM-NewYork/GoldCloud1=VMM-Chicago/GoldCloud2",
    ]);
    let pair = lab.json(&["pair-list"]);
    assert_eq!(pair.as_array().map(Vec::len), Some(1));
    // Tables name things (cloud pairs, policies, clouds), not UUIDs.
    let (code, table, _) = lab.cli(&["pair-list"]);
    assert_eq!(code, 0);
    assert!(table.contains("GoldCloud1 → GoldCloud2"), "{table}");
    let policy_id = pair[0]["policy"].as_str().expect("policy id");
    assert!(!table.contains(policy_id), "the policy is shown by its name: {table}");
    let (_, sites, _) = lab.cli(&["site-list"]);
    assert!(sites.contains("GoldCloud1, SilverCloud1") || sites.contains("GoldCloud1"), "{sites}");
    assert!(!sites.contains("\"id\""), "clouds by name, not as JSON: {sites}");
    let (code, _, err) = lab.cli(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "nope"]);
    assert_eq!(code, 6, "an error result is recorded too: {err}");
    lab.wait_for("the pairing job", Duration::from_secs(30), || {
        let jobs = lab.json(&["job-list", "--operation", "ConfigureCloudPair"]);
        (jobs["items"][0]["status"] == "Succeeded").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));

    let docs = documented();
    let mut seen_endpoints = BTreeSet::new();
    let mut count = 0;
    for site in ["newyork", "chicago"] {
        let file = lab.dir.join("logs").join(format!("{site}.vault-traffic.jsonl"));
        let text = std::fs::read_to_string(&file).expect("recorded traffic");
        for line in text.lines() {
            let msg: Value = serde_json::from_str(line).expect("jsonl");
            let path = msg["path"].as_str().expect("path");
            let endpoint =
                if path.starts_with("/api/v1/agent/commands/") { "/api/v1/agent/commands/{id}/result" } else { path };
            let allowed = docs
                .iter()
                .find(|(e, _)| e == endpoint)
                .map(|(_, s)| s)
                .unwrap_or_else(|| panic!("endpoint {endpoint} is not documented in docs/data-privacy.md"));
            let mut sent = BTreeSet::new();
            paths(&msg["body"], "", &mut sent);
            let extra: Vec<&String> = sent.iter().filter(|p| !allowed.contains(*p)).collect();
            assert!(extra.is_empty(), "{endpoint} sends undocumented fields {extra:?}");
            seen_endpoints.insert(endpoint.to_string());
            count += 1;
        }
    }
    assert!(count > 10, "messages were recorded");
    for e in [
        "/api/v1/agent/register",
        "/api/v1/agent/report",
        "/api/v1/agent/hosts/sign",
        "/api/v1/agent/commands/{id}/result",
    ] {
        assert!(seen_endpoints.contains(e), "no {e} message was exercised");
    }
}

#[test]
fn fab_9_documentation_parser_rejects_an_undocumented_field() {
    // The check above must be able to fail: a field that the table does not list is caught.
    let docs = documented();
    let report = &docs.iter().find(|(e, _)| e == "/api/v1/agent/report").expect("report section").1;
    assert!(report.contains("inventory.vms[].disks[].path"));
    assert!(report.contains("inventory.hosts[].storage_locations[].free_bytes"));
    assert!(!report.contains("inventory.vms[].disks[].content"));
    let mut sent = BTreeSet::new();
    paths(&json!({"inventory": {"vms": [{"name": "x", "secret_data": 1}]}}), "", &mut sent);
    assert!(sent.iter().any(|p| !report.contains(p)), "secret_data is not documented");
}
