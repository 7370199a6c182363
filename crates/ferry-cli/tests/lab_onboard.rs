//! REP-7 end to end: protecting a VM whose disks already exist on the target host sends only
//! the differences — from the replica kept when its protection was disabled (POL-7 "no"), with
//! its recovery points, or from existing images an operator names (a restored backup).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Lab, LabOptions};

/// Resumes a process stopped with SIGSTOP, also when the test fails.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGCONT);
    }
}
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Data the VM's system disk holds before it starts (the guest never changes it).
const VDA_DATA: u64 = 6 * MIB;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A test-guest VM on ny1 whose `vda` already holds [`VDA_DATA`] of data (so that a full copy
/// and a copy of the differences are far apart).
fn guest_with_data(lab: &Lab, name: &str) -> std::path::PathBuf {
    let mut def = common::guest_vm_def(lab, name, 32, None, true, "");
    let vda = lab.storage("ny1", "gold").join(format!("{name}-vda.qcow2"));
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&vda).arg("8M"));
    run(Command::new("qemu-io").args(["-f", "qcow2", "-c", &format!("write -P 0x5a 0 {VDA_DATA}")]).arg(&vda));
    if let Some(d) = def["disks"][0].as_object_mut() {
        d.remove("create_size");
    }
    common::create_and_start(lab, name, &def)
}

fn point_ids(it: &Value) -> Vec<String> {
    it["recovery_points"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_str().map(String::from)).collect()
}

fn events(lab: &Lab, kind: &str) -> Vec<Value> {
    lab.json(&["event-list", "--kind", kind])["items"].as_array().cloned().unwrap_or_default()
}

/// Wait until `id` is Protected with a point newer than `after` that holds at least `records`.
fn wait_caught_up(lab: &Lab, id: &str, serial: &Path, after: &[String]) -> Value {
    let target = common::last_record(serial);
    lab.wait_for("the replica to catch up", Duration::from_secs(150), || {
        let it = lab.json(&["item-show", id]);
        let ids = point_ids(&it);
        let newest = ids.last()?.clone();
        (it["state"] == "Protected"
            && !after.contains(&newest)
            && common::records_in_point(lab, "chi1", id, &newest) >= target)
            .then_some(it)
    })
}

#[test]
fn rep_7_pol_7_reenabling_a_vm_reuses_its_kept_replica_with_its_points_and_sends_only_differences() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = guest_with_data(&lab, "ob1");
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    assert_eq!(lab.json(&["policy-show", "gold"])["delete_replica_on_disable"], false);
    let first = common::protect(&lab, "ob1");
    common::wait_records_and_points(&lab, &first, &serial, 5, 3);
    let it = lab.json(&["item-show", &first]);
    assert!(it.get("existing_replica").is_none(), "a first protection copies everything: {it}");
    let full = it["stats"]["initial_bytes"].as_u64().expect("initial bytes");
    assert!(full >= VDA_DATA, "the initial copy carried the data of vda: {full}");
    let kept_points = point_ids(&it);

    let j = lab.json(&["disable-protection", &first, "--wait"]);
    assert_eq!(j["status"], "Succeeded", "{j}");
    let kept = std::fs::canonicalize(lab.storage("chi1", "replica").join("ferry-replicas").join(&first)).expect("kept");
    // The guest goes on writing while the VM is unprotected.
    let at_disable = common::last_record(&serial);
    lab.wait_for("records written while unprotected", Duration::from_secs(60), || {
        (common::last_record(&serial) >= at_disable + 10).then_some(())
    });

    // The host that keeps the replica is restarting (frozen past the site's connection window)
    // when the VM is protected again: the new protection still goes to it (rather than copying
    // everything to another host, or being refused); its enable job names the host and is
    // restarted once the host is back.
    let agent = lab.pid("host-chi1");
    let frozen = Continue(agent);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent as i32), nix::sys::signal::Signal::SIGSTOP)
        .expect("SIGSTOP");
    let chi1_connected = |c: bool| {
        lab.wait_for("chi1's connection", Duration::from_secs(60), || {
            let hosts = lab.json(&["host-list", "--site", "VMM-Chicago"]);
            hosts.as_array()?.iter().any(|h| h["name"] == "chi1" && h["connected"] == c).then_some(())
        })
    };
    chi1_connected(false);
    let (code, _, err) = lab.cli(&["protect", "--site", "VMM-NewYork", "ob1", "--wait"]);
    assert_ne!(code, 0, "the enable cannot run while its host is down");
    assert!(err.contains("HostNotConnected") && err.contains("chi1"), "{err}");
    drop(frozen);
    chi1_connected(true);
    let jobs = lab.json(&["job-list", "--operation", "EnableProtection", "--status", "Failed"]);
    let failed = jobs["items"].as_array().and_then(|a| a.first()).cloned().expect("the failed enable job");
    let second = failed["object_id"].as_str().expect("item of the job").to_string();
    assert_eq!(lab.json(&["item-show", &second])["target"]["host_name"], "chi1", "placed on the keeper");
    let j = lab.json(&["job-restart", failed["id"].as_str().expect("job id"), "--wait"]);
    assert_eq!(j["status"], "Succeeded", "{j}");
    assert_ne!(second, first);
    let it = wait_caught_up(&lab, &second, &serial, &kept_points);
    assert_eq!(it["existing_replica"]["source"], "KeptReplica", "{it}");
    assert!(it["existing_replica"]["points"].as_u64().unwrap_or(0) >= kept_points.len() as u64, "{it}");
    let location = std::fs::canonicalize(lab.storage("chi1", "replica")).expect("location");
    for d in it["disks"].as_array().expect("disks") {
        assert_eq!(d["placement"], "KeptReplica", "{d}");
        assert_eq!(std::fs::canonicalize(d["location"].as_str().expect("location")).ok(), Some(location.clone()));
    }
    let ids = point_ids(&it);
    for p in &kept_points {
        assert!(ids.contains(p), "kept point {p} is a point of the new protection: {ids:?}");
    }
    let sent = it["stats"]["initial_bytes"].as_u64().expect("initial bytes");
    assert!(sent > 0 && sent < VDA_DATA, "only the differences were sent: {sent} bytes (full copy {full})");
    // The kept folder became the new item's, renamed in place.
    assert!(!kept.exists(), "the kept folder has the new item's name now");
    let now = std::fs::canonicalize(lab.host_data("chi1").join("replicas").join(&second)).expect("new link");
    assert_eq!(now, kept.with_file_name(&second));
    assert!(std::fs::symlink_metadata(lab.host_data("chi1").join("replicas").join(&first)).is_err());
    let reused = events(&lab, "ExistingReplicaReused");
    assert!(reused.iter().any(|e| e["object_id"] == second.as_str()), "{reused:?}");
    assert!(events(&lab, "ExistingReplicaNotUsed").is_empty());

    // A VM of another identity never takes this replica: a new VM of the same name would not
    // match (the origin is the source site and VM id). Disable again with the replica kept,
    // change the disk size on the source, and the kept replica is named as not reusable.
    let j = lab.json(&["disable-protection", &second, "--wait"]);
    assert_eq!(j["status"], "Succeeded", "{j}");
    lab.json(&["vm-stop", "--site", "VMM-NewYork", "--host", "ny1", "ob1"]);
    let vdb = lab.storage("ny1", "gold").join("ob1-vdb.qcow2");
    run(Command::new("qemu-img").args(["resize", "-q"]).arg(&vdb).arg("48M"));
    lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "ob1"]);
    lab.wait_for("the new disk size in the inventory", Duration::from_secs(30), || {
        let vms = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        vms["items"].as_array()?.iter().find(|v| v["name"] == "ob1")?["disks"]
            .as_array()?
            .iter()
            .any(|d| d["target"] == "vdb" && d["virtual_size"] == 48 * MIB)
            .then_some(())
    });
    let third = common::protect(&lab, "ob1");
    let it = lab.wait_for("Protected by a full copy", Duration::from_secs(150), || {
        let it = lab.json(&["item-show", &third]);
        (it["state"] == "Protected").then_some(it)
    });
    assert!(it.get("existing_replica").is_none(), "{it}");
    let not_used = events(&lab, "ExistingReplicaNotUsed");
    assert!(
        not_used.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("differ"))),
        "the mismatching replica is named: {not_used:?}"
    );
    assert!(kept.with_file_name(&second).exists(), "a replica that does not match is left alone");
}

#[test]
fn rep_7_enable_protection_from_existing_images_checks_them_and_sends_only_differences() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = guest_with_data(&lab, "ob2");
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    lab.wait_for("records on the source", Duration::from_secs(60), || {
        (common::last_record(&serial) >= 5).then_some(())
    });
    // A "backup" of the running VM restored on the target host (not consistent: the guest
    // writes meanwhile, the comparison mends that).
    let restore = lab.storage("chi1", "replica").join("restore");
    std::fs::create_dir_all(&restore).expect("restore dir");
    for d in ["vda", "vdb"] {
        let src = lab.storage("ny1", "gold").join(format!("ob2-{d}.qcow2"));
        run(Command::new("qemu-img")
            .args(["convert", "-U", "-q", "-O", "qcow2"])
            .arg(&src)
            .arg(restore.join(format!("{d}.qcow2"))));
    }
    let arg = |d: &str, p: &Path| format!("ob2/{d}={}", p.display());
    let vda = restore.join("vda.qcow2");
    let vdb = restore.join("vdb.qcow2");

    // Bad input is refused and changes nothing.
    let refused = |args: &[&str], what: &str| {
        let mut all = vec!["protect", "--site", "VMM-NewYork", "ob2"];
        all.extend_from_slice(args);
        let (code, _, err) = lab.cli(&all);
        assert_ne!(code, 0, "{what} is refused");
        assert!(err.contains("InvalidExistingDisk"), "{what}: {err}");
        assert_eq!(lab.json(&["item-list"])["items"].as_array().map(Vec::len).unwrap_or(0), 0, "{what}: no item");
    };
    refused(&["--existing-disk", &arg("vda", &vda)], "an image for one disk only");
    refused(&["--existing-disk", &arg("vda", &vda), "--existing-disk", "ob2/vdb=/etc/passwd"], "a path outside");
    let escape = format!("{}/../../../../etc/passwd", restore.display());
    refused(&["--existing-disk", &arg("vda", &vda), "--existing-disk", &format!("ob2/vdb={escape}")], "'..'");
    refused(
        &[
            "--existing-disk",
            &arg("vda", &vda),
            "--existing-disk",
            &arg("vdb", &vdb),
            "--existing-disk",
            &arg("vdc", &vdb),
        ],
        "an unknown disk",
    );
    refused(&["--existing-disk", &format!("other/vda={}", vda.display())], "a VM not in the request");
    let (code, _, _) = lab.cli(&["protect", "--site", "VMM-NewYork", "ob2", "--existing-disk", "vda"]);
    assert_eq!(code, 2, "a malformed VM/DISK=PATH is a usage error");

    // An image of the wrong size is found out by the target host: the job fails and says why.
    let wrong = restore.join("wrong.qcow2");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&wrong).arg("1M"));
    let (code, out, err) = lab.cli(&[
        "protect",
        "--site",
        "VMM-NewYork",
        "ob2",
        "--existing-disk",
        &arg("vda", &vda),
        "--existing-disk",
        &arg("vdb", &wrong),
        "--wait",
        "-o",
        "json",
    ]);
    assert_eq!(code, 6, "the enable job fails: {out} {err}");
    let job = lab.json(&["job-list", "--operation", "EnableProtection"])["items"][0].clone();
    let shown = lab.json(&["job-show", job["id"].as_str().expect("job id")]);
    assert!(shown.to_string().contains("bytes; disk vdb is"), "{shown}");
    let id = lab.json(&["item-list"])["items"][0]["id"].as_str().expect("item").to_string();
    // The operator puts the right image in place and restarts the job.
    std::fs::rename(&vdb, &wrong).expect("replace");
    let vdb_mtime = std::fs::metadata(&wrong).and_then(|m| m.modified()).expect("mtime");
    let j = lab.json(&["job-restart", job["id"].as_str().expect("job id"), "--wait"]);
    assert_eq!(j["status"], "Succeeded", "{j}");

    let it = wait_caught_up(&lab, &id, &serial, &[]);
    assert_eq!(it["existing_replica"]["source"], "ExistingImages", "{it}");
    let sent = it["stats"]["initial_bytes"].as_u64().expect("initial bytes");
    assert!(sent > 0 && sent < VDA_DATA, "only the differences were sent: {sent} bytes");
    assert!(point_ids(&it).iter().any(|p| p.starts_with("rp-adopted")), "the images are the base point: {it}");
    // The images themselves are untouched.
    assert_eq!(std::fs::metadata(&wrong).and_then(|m| m.modified()).expect("mtime"), vdb_mtime);
    assert!(vda.exists());
}
