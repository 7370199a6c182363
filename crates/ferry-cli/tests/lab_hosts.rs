//! VM lifecycle through vault → site → host with real QEMU (HOST-1, HOST-3, HOST-4).

mod common;

use std::time::Duration;

use common::{kill9, Lab, LabOptions};
use serde_json::{json, Value};

fn vm_action_error(lab: &Lab, def: &Value, name: &str) -> String {
    let path = lab.vm_def(name, def);
    let (code, out, err) =
        lab.cli(&["vm-create", "--site", "VMM-NewYork", "--host", "ny1", "--file", &path.display().to_string()]);
    assert_ne!(code, 0, "definition {name} must be refused: {out}");
    assert_eq!(code, 6, "a refused definition fails its job: {err}");
    err
}

fn vms(lab: &Lab) -> Value {
    lab.json(&["vm-list", "--site", "VMM-NewYork", "--host", "ny1"])
}

#[test]
fn host_1_invalid_definitions_are_refused_and_create_nothing() {
    let lab = Lab::start(LabOptions::default());
    let gold = lab.storage("ny1", "gold");
    let ok_disk = gold.join("ok-vda.qcow2");
    let good = json!({"name": "dup", "disks": [{"target": "vda", "path": ok_disk, "format": "qcow2", "create_size": 8u64 << 20}]});
    lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def("dup", &good).display().to_string(),
    ]);

    let err = vm_action_error(
        &lab,
        &json!({"name": "m1", "disks": [{"target": "vda", "path": gold.join("missing.qcow2"), "format": "qcow2"}]}),
        "m1",
    );
    assert!(err.contains("does not exist"), "{err}");
    let err = vm_action_error(
        &lab,
        &json!({"name": "m2", "disks": [{"target": "vda", "path": gold.join("m2.qcow2"), "format": "qcow2", "create_size": 1048576}], "nics": [{"vm_network": "NoSuchNetwork"}]}),
        "m2",
    );
    assert!(err.contains("UnknownNetwork"), "{err}");
    let err = vm_action_error(&lab, &good, "dup-again");
    assert!(err.contains("VmAlreadyExists"), "{err}");
    let outside = lab.tmp.path().join("outside.qcow2");
    let err = vm_action_error(
        &lab,
        &json!({"name": "m3", "disks": [{"target": "vda", "path": outside, "format": "qcow2", "create_size": 1048576}]}),
        "m3",
    );
    assert!(err.contains("outside this host's storage locations"), "{err}");
    let err = vm_action_error(
        &lab,
        &json!({"name": "m4", "disks": [
            {"target": "vda", "path": gold.join("m4a.qcow2"), "format": "qcow2", "create_size": 1048576},
            {"target": "vda", "path": gold.join("m4b.qcow2"), "format": "qcow2", "create_size": 1048576}]}),
        "m4",
    );
    assert!(err.contains("used twice"), "{err}");

    // Nothing was created by the refused definitions.
    let listed: Vec<String> =
        vms(&lab).as_array().into_iter().flatten().filter_map(|v| v["name"].as_str().map(str::to_string)).collect();
    assert_eq!(listed, vec!["dup".to_string()]);
    for f in ["m2.qcow2", "m4a.qcow2", "m4b.qcow2"] {
        assert!(!gold.join(f).exists(), "{f} must not be created");
    }
    assert!(!outside.exists());
    for vm in ["m1", "m2", "m3", "m4"] {
        assert!(!lab.host_data("ny1").join("vms").join(vm).exists());
    }
}

#[test]
fn host_1_vm_lifecycle_with_nic_on_bridge_and_host_3_reattach_and_crash_report() {
    let lab = Lab::start(LabOptions::default());
    let disk = lab.storage("ny1", "gold").join("life-vda.qcow2");
    let data = lab.storage("ny1", "silver").join("life-vdb.raw");
    let def = json!({
        "name": "life", "vcpus": 1, "memory_mib": 128,
        "disks": [
            {"target": "vda", "path": disk, "format": "qcow2", "create_size": 32u64 << 20},
            {"target": "vdb", "path": data, "format": "raw", "create_size": 8u64 << 20}
        ],
        "nics": [{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": "10.11.0.20"}, {}]
    });
    let created = lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def("life", &def).display().to_string(),
    ]);
    assert_eq!(created["power_state"], "Stopped");
    assert!(disk.exists() && data.exists());
    let started = lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "life"]);
    assert_eq!(started["power_state"], "Running", "{started}");
    let pid = started["pid"].as_u64().expect("pid") as u32;
    // HOST-4: the connected NIC is a tap on the logical network's bridge; the second NIC has none.
    let bridge = format!("{}ny-ln1", lab.bridge_prefix);
    let out = std::process::Command::new("ip").args(["-o", "link", "show", "master", &bridge]).output().expect("ip");
    let taps = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(taps.lines().count(), 1, "one tap on {bridge}: {taps}");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("qemu runs").replace('\0', " ");
    assert!(cmdline.contains("node-name=vda") && cmdline.contains("discard=unmap"), "{cmdline}");
    assert!(cmdline.contains("driver=raw"), "raw disks are supported: {cmdline}");

    // HOST-3: the agent is killed and restarted; the VM keeps running and is re-attached.
    kill9(lab.pid("host-ny1"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "QEMU survives the agent");
    let _agent = lab.restart_host("ny1");
    let st = lab.wait_for("the restarted agent to report the VM", Duration::from_secs(30), || {
        let (code, out, _) = lab.cli(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "life", "-o", "json"]);
        (code == 0).then(|| serde_json::from_str::<Value>(&out).ok()).flatten()
    });
    assert_eq!(st["power_state"], "Running");
    assert_eq!(st["pid"].as_u64(), Some(pid as u64), "same QEMU process, re-attached");

    // HOST-3: a QEMU killed behind the agent's back is reported as crashed, with the reason.
    kill9(pid);
    let st = lab.wait_for("the crash to be reported", Duration::from_secs(20), || {
        let v = lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "life"]);
        (v["power_state"] == "Crashed").then_some(v)
    });
    assert!(
        st["reason"]
            .as_str()
            .is_some_and(|r| r.contains("SIGKILL") || r.contains("killed") || r.contains("disappeared")),
        "{st}"
    );

    // Start again, graceful shutdown (no guest OS: ACPI is ignored, so it is stopped after the
    // timeout), delete with disks.
    let again = lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "life"]);
    assert_eq!(again["power_state"], "Running");
    let st = lab.json(&["vm-shutdown", "--site", "VMM-NewYork", "--host", "ny1", "life", "--timeout", "2"]);
    assert_ne!(st["power_state"], "Running", "{st}");
    let out = std::process::Command::new("ip").args(["-o", "link", "show", "master", &bridge]).output().expect("ip");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 0, "taps removed when the VM stops");
    lab.json(&["vm-delete", "--site", "VMM-NewYork", "--host", "ny1", "life", "--delete-disks"]);
    assert!(!disk.exists() && !data.exists());
    assert_eq!(vms(&lab), json!([]));
}
