//! REP-1 from the site side: the operator of a site manager enables protection for VMs of that
//! site with `ferry site protect`, using the site's own credential; the vault plans it exactly as
//! through the management API. A VM of another site or an unknown VM is refused and nothing
//! changes. No secret of the lab leaks into logs, events or the vault's database (SEC-3).

mod common;

use common::{Lab, LabOptions};
use serde_json::Value;

fn site_protect(lab: &Lab, site: &str, vms: &[&str]) -> (i32, String, String) {
    let sdir = lab.dir.join("sites").join(site);
    let (config, data) = (sdir.join("site.toml"), sdir.join("data"));
    let mut args = vec!["site", "protect", "--config", config.to_str().expect("path"), "--data-dir"];
    args.push(data.to_str().expect("path"));
    args.extend_from_slice(vms);
    lab.cli(&args)
}

fn items(lab: &Lab) -> usize {
    let list = lab.json(&["item-list"]);
    list["items"].as_array().map(Vec::len).unwrap_or_else(|| panic!("not an item list: {list}"))
}

#[test]
fn rep_1_sec_3_enable_protection_from_the_site_manager_and_no_secret_leaks() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "sp1", 8, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);

    // One unknown VM refuses the whole request.
    let (code, _, err) = site_protect(&lab, "newyork", &["sp1", "no-such-vm"]);
    assert_ne!(code, 0);
    assert!(err.contains("no-such-vm"), "{err}");
    assert_eq!(items(&lab), 0, "nothing was protected");
    // A site can only name its own VMs.
    let (code, _, err) = site_protect(&lab, "chicago", &["sp1"]);
    assert_ne!(code, 0);
    assert!(err.contains("sp1"), "{err}");
    assert_eq!(items(&lab), 0);

    let (code, out, err) = site_protect(&lab, "newyork", &["sp1"]);
    assert_eq!(code, 0, "{err}");
    let enabled: Value = serde_json::from_str(&out).expect("JSON");
    let id = enabled[0]["item"]["id"].as_str().expect("item id").to_string();
    assert_eq!(enabled[0]["job"]["operation"], "EnableProtection", "{enabled}");
    assert_eq!(items(&lab), 1);
    common::wait_records_and_points(&lab, &id, &serial, 1, 2);
    let events = lab.json(&["event-list", "--kind", "ProtectionEnabled"]);
    assert!(
        events["items"].as_array().expect("events").iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("sp1") && m.contains("from site manager VMM-NewYork"))),
        "{events}"
    );
    // Protecting it again is refused.
    let (code, _, err) = site_protect(&lab, "newyork", &["sp1"]);
    assert_ne!(code, 0);
    assert!(err.contains("already protected"), "{err}");

    // SEC-3: after registration, joins, protection from the site and an API token used and
    // refused, no secret is in any log, event or in plain text in the vault's database.
    let t = lab.json(&["token-create", "--name", "auditor", "--role", "reader"]);
    let secret = t["secret"].as_str().expect("secret").to_string();
    let (code, _, _) = lab.cli(&["--token", &secret, "policy-create", "--name", "nope"]);
    assert_eq!(code, 5, "a reader cannot change configuration");
    let (code, _, _) = lab.cli(&["--token", &format!("{secret}x"), "site-list"]);
    assert_ne!(code, 0, "a wrong token is refused");
    common::assert_no_secret_leaked(&lab, &[&secret]);
}
