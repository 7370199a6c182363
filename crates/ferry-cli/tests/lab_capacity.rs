//! CAP-1 end to end: a capacity plan measures the churn of VMs on their host (test guests
//! writing records, and an idle VM), survives an agent restart, reports bandwidth per copy
//! frequency, initial replication time and replica storage from the measurements, stops and is
//! deleted; bad input is refused and changes nothing. The hosts' churn tick is 0.5 s instead of
//! 30 s (a "15-minute" window lasts 15 s, an "hour" 60 s).

mod common;

use std::time::Duration;

use common::{kill9, Lab, LabOptions};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 << 10;

fn report(lab: &Lab, args: &[&str]) -> Value {
    let mut a = vec!["capacity-report", "plan1"];
    a.extend_from_slice(args);
    lab.json(&a)
}

fn vm<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["per_vm"].as_array().and_then(|a| a.iter().find(|v| v["vm"] == name)).unwrap_or(&Value::Null)
}

fn windows(r: &Value, secs: u64) -> u64 {
    r["bandwidth"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["copy_frequency_secs"] == secs))
        .and_then(|b| b["windows"].as_u64())
        .unwrap_or(0)
}

#[test]
fn cap_1_capacity_plan_measures_churn_and_reports_what_replication_needs() {
    let lab = Lab::start(LabOptions { test_churn_tick_ms: Some(500), ..Default::default() });
    let serial = common::guest_vm(&lab, "cp1", 32, None);
    common::guest_vm(&lab, "cp2", 32, None);
    let idle = lab.storage("ny1", "gold").join("cp3-vda.qcow2");
    let def = json!({"name": "cp3", "memory_mib": 64,
        "disks": [{"target": "vda", "path": idle, "format": "qcow2", "create_size": 16u64 << 20}]});
    common::create_and_start(&lab, "cp3", &def);

    // Bad input is refused and nothing is created.
    let refused = |args: &[&str], code: i32, what: &str| {
        let mut a = vec!["capacity-create"];
        a.extend_from_slice(args);
        let (c, _, err) = lab.cli(&a);
        assert_eq!(c, code, "{what}: {err}");
        assert_eq!(lab.json(&["capacity-list"]).as_array().map(Vec::len), Some(0), "{what}: nothing created");
        err
    };
    let many: Vec<String> = (0..101).map(|i| format!("vm{i}")).collect();
    let mut args = vec!["big", "--site", "VMM-NewYork"];
    args.extend(many.iter().map(String::as_str));
    assert!(refused(&args, 1, "101 VMs").contains("CapacityPlanVmCount"));
    assert!(refused(&["x/y", "--site", "VMM-NewYork", "cp1"], 1, "bad name").contains("CapacityPlanInvalidName"));
    assert!(refused(&["p", "--site", "VMM-NewYork", "cp1", "cp1"], 1, "twice").contains("CapacityPlanDuplicateVm"));
    refused(&["p", "--site", "VMM-NewYork", "cp1", "nope"], 3, "unknown VM");
    refused(&["p", "--site", "Nowhere", "cp1"], 3, "unknown site");
    assert!(refused(&["p", "--site", "VMM-NewYork", "cp1", "--hours", "0"], 1, "0 h")
        .contains("CapacityPlanInvalidDuration"));

    let created = lab.json(&["capacity-create", "plan1", "--site", "VMM-NewYork", "cp1", "cp2", "cp3", "--wait"]);
    assert_eq!(created["state"], "Measuring", "{created}");
    let (code, _, err) = lab.cli(&["capacity-create", "plan1", "--site", "VMM-NewYork", "cp1"]);
    assert_eq!(code, 4, "the name is taken: {err}");

    // The first measurements arrive; then the host agent is killed and restarted: it measures on.
    let first = lab.wait_for("a 5-minute window on every VM", Duration::from_secs(90), || {
        let r = report(&lab, &[]);
        (r["vms_measured"] == 3 && windows(&r, 300) >= 1).then_some(r)
    });
    let before = vm(&first, "cp1")["measured_secs"].as_u64().expect("measured");
    kill9(lab.pid("host-ny1"));
    let _ny1 = lab.restart_host("ny1");
    lab.wait_for("measuring on after the restart", Duration::from_secs(90), || {
        let r = report(&lab, &[]);
        (vm(&r, "cp1")["measured_secs"].as_u64().unwrap_or(0) > before + 300).then_some(())
    });

    // Wait for an "hour" (60 s) on every VM.
    let r = lab.wait_for("an hourly window on every VM", Duration::from_secs(150), || {
        let r = report(&lab, &[]);
        (r["daily_churn_basis"] == "measured hourly windows" && windows(&r, 900) >= 2).then_some(r)
    });
    assert_eq!(
        (r["vms"].as_u64(), r["vms_measured"].as_u64(), r["disks"].as_u64()),
        (Some(3), Some(3), Some(5)),
        "{r}"
    );
    assert_eq!(r["disks_per_vm_max"], 2);
    assert_eq!(r["virtual_bytes"].as_u64(), Some(2 * (8 + 32) * MIB + 16 * MIB));
    // The idle VM changes nothing; the guests write a 4 KiB record every 300 ms or so (slower
    // under load): up to about 200 an "hour", i.e. 800 KiB in 13 to 14 clusters of 64 KiB.
    assert_eq!(vm(&r, "cp3")["daily_churn_bytes"].as_u64(), Some(0), "{r}");
    for guest in ["cp1", "cp2"] {
        let daily = vm(&r, guest)["daily_churn_bytes"].as_u64().expect("daily churn");
        assert!((24 * 2 * CLUSTER..=24 * 30 * CLUSTER).contains(&daily), "{guest}: {daily} bytes a day: {r}");
    }
    let daily = r["daily_churn_bytes"].as_u64().expect("daily");
    let sum: u64 = ["cp1", "cp2", "cp3"].iter().filter_map(|v| vm(&r, v)["daily_churn_bytes"].as_u64()).sum();
    assert_eq!(daily, sum, "the plan's churn is its VMs'");
    for b in r["bandwidth"].as_array().expect("bandwidth") {
        let (avg, peak) = (b["average_mbps"].as_f64().expect("avg"), b["peak_mbps"].as_f64().expect("peak"));
        assert!(avg > 0.0 && peak >= avg, "{b}");
    }
    // A record every 300 ms: every 30-s window (0.5 s here) holds one or two clusters of a guest.
    let peak30 = vm(&r, "cp1")["bandwidth"][0]["peak_mbps"].as_f64().expect("peak 30");
    assert!(peak30 <= (2 * CLUSTER) as f64 * 8.0 / 30.0 / 1e6 + 1e-9, "{peak30}");
    let allocated = r["allocated_bytes"].as_u64().expect("allocated");
    assert!(allocated > 0);
    let storage = r["replica_storage_bytes"].as_u64().expect("storage");
    assert!(storage > allocated, "storage holds the data and the retained churn");
    // Inputs that are not measured change the figures they drive, and are checked.
    let slow = report(&lab, &["--bandwidth-mbps", "10", "--retention-hours", "0", "--copy-frequency", "30"]);
    for (rep, mbps) in [(&r, 100.0), (&slow, 10.0)] {
        let want = rep["allocated_bytes"].as_u64().expect("allocated") as f64 * 8.0 / (mbps * 1e6);
        let got = rep["initial_replication_secs"].as_f64().expect("time");
        assert!((got - want).abs() < 1e-6, "initial replication at {mbps} Mbit/s: {got} s, not {want} s");
    }
    assert!(slow["replica_storage_bytes"].as_u64().expect("storage") < storage, "no retention: less storage");
    for (flag, value) in [("--bandwidth-mbps", "0"), ("--retention-hours", "25"), ("--copy-frequency", "60")] {
        let (c, _, err) = lab.cli(&["capacity-report", "plan1", flag, value]);
        assert_eq!(c, 1, "{flag} {value}: {err}");
        assert!(err.contains("CapacityReportInvalidParam"), "{err}");
    }
    let text = lab.cli(&["capacity-report", "plan1"]).1;
    eprintln!("{text}");
    assert!(text.contains("Daily churn") && text.contains("Replica store"), "{text}");
    assert!(common::last_record(&serial) > 0);

    // Stop: the figures stay and stop growing; delete: the plan and the host's files go.
    let j = lab.json(&["capacity-stop", "plan1", "--wait"]);
    assert_eq!(j["status"], "Succeeded", "{j}");
    let stopped = lab.wait_for("the hosts' final figures", Duration::from_secs(30), || {
        let p = lab.json(&["capacity-list"]);
        let plan = p.as_array()?.first()?.clone();
        (plan["state"] == "Stopped" && plan["profiles"].as_array()?.iter().all(|x| x["state"] == "Stopped"))
            .then_some(report(&lab, &[]))
    });
    std::thread::sleep(Duration::from_secs(3));
    let later = report(&lab, &[]);
    assert_eq!(vm(&later, "cp1")["measured_secs"], vm(&stopped, "cp1")["measured_secs"], "measuring stopped");
    let (code, _, _) = lab.cli(&["capacity-stop", "plan1"]);
    assert_eq!(code, 4, "already stopped");
    let id = lab.json(&["capacity-list"])[0]["id"].as_str().expect("id").to_string();
    let profile = lab.host_data("ny1").join("profiles").join(format!("{id}-cp1.json"));
    assert!(profile.exists());
    let j = lab.json(&["capacity-delete", "plan1", "--wait"]);
    assert_eq!(j["status"], "Succeeded", "{j}");
    assert_eq!(lab.json(&["capacity-list"]).as_array().map(Vec::len), Some(0));
    assert!(!profile.exists(), "the host forgot the measurement");
    assert_eq!(lab.cli(&["capacity-report", "plan1"]).0, 3);
}
