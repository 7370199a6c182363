//! The lab's demo VMs run the test guest's record workload (HOST-6) and shut down gracefully
//! with every record intact; the lab protects them and defines a recovery plan for them.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

#[test]
fn host_6_lab_demo_vms_write_records_and_shut_down_cleanly_plan_1_lab_plan() {
    common::test_guest();
    let lab = Lab::start(LabOptions { demo_vms: true, ..Default::default() });
    let vms = lab.json(&["vm-list", "--site", "VMM-NewYork", "--host", "ny1"]);
    let running: Vec<&str> = vms
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["power_state"] == "Running")
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(running, vec!["app1", "db1", "web1"], "{vms}");
    let app1 = vms.as_array().and_then(|a| a.iter().find(|v| v["name"] == "app1")).expect("app1");
    assert!(
        app1["definition"]["disks"][0]["path"].as_str().is_some_and(|p| p.contains("/silver/")),
        "app1 lives on SILVER"
    );

    // The lab protects its demo VMs (GoldCloud1 → GoldCloud2), with storage mapped per class.
    let items = lab.wait_for("the demo VMs to be protected", Duration::from_secs(180), || {
        let items = lab.json(&["item-list"]);
        let all = items["items"].as_array().cloned().unwrap_or_default();
        (all.len() == 3 && all.iter().all(|i| i["state"] == "Protected")).then_some(all)
    });
    let app1_item = items.iter().find(|i| i["name"] == "app1").expect("app1 protected");
    assert!(
        app1_item["disks"][0]["location"].as_str().is_some_and(|l| l.ends_with("silver_target")),
        "SILVER → SILVER_TARGET: {app1_item}"
    );

    // The lab defines a recovery plan for its demo VMs (PLAN-1).
    let plan = lab.json(&["plan-show", "lab-app"]);
    let groups: Vec<Vec<&str>> = plan["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["items"].as_array().expect("items").iter().filter_map(|i| i["name"].as_str()).collect())
        .collect();
    assert_eq!(groups, vec![vec!["db1"], vec!["app1"], vec!["web1"]], "{plan}");
    assert_eq!(plan["groups"][0]["post_steps"][0]["path"], "lab-app/db-ready.sh");

    let serial = lab.host_data("ny1").join("vms/web1/serial.log");
    lab.wait_for("web1 to write 3 records", Duration::from_secs(120), || {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        ferry_qemu::guest_records::last_serial_record(&text).filter(|n| *n >= 3)
    });
    let st = lab.json(&["vm-shutdown", "--site", "VMM-NewYork", "--host", "ny1", "web1", "--timeout", "60"]);
    assert_eq!(st["power_state"], "Stopped", "{st}");
    let text = std::fs::read_to_string(&serial).expect("serial");
    assert!(text.contains("FERRY POWEROFF"), "the guest powered off by itself (graceful): {text}");
    let last = ferry_qemu::guest_records::last_serial_record(&text).expect("records");
    let disk = lab.storage("ny1", "gold").join("web1-vdb.qcow2");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(ferry_qemu::guest_records::verify_image(&disk)).expect("verify");
    assert_eq!(report.clean_prefix_len, last, "every record the guest reported is on disk: {report:?}");
    assert!(report.corrupted.is_empty() && report.first_gap.is_none(), "{report:?}");
}
