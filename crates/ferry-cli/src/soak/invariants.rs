//! The soak's invariants, read from the real state: replica stores and serial consoles on disk,
//! items through the API, processes and links of the machine.
//!
//! 1. After a fault ends, every item that should replicate has a new point within
//!    max(2 × copy frequency, 60 s).
//! 2. Every point holds a clean prefix of its guest's records; later points never hold fewer.
//! 3. A planned failover loses no record.
//! 4. Health reflects reality: Critical while an item cannot replicate for longer than its stall
//!    threshold, not Critical once it replicates again.
//! 6. At the end nothing leaks: no process, bridge, tap, test VM or test overlay of the lab.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::lab_control::LabUnderTest;

/// The recovery points of item `id` on its replica host `host`: (id, capture time).
pub async fn points(lab: &LabUnderTest, host: &str, id: &str) -> Vec<(String, DateTime<Utc>)> {
    let Ok(store) = ferry_repl::ReplicaStore::open(&lab.host_data(host).join("replicas")) else { return vec![] };
    let Ok(vm) = store.vm(id).await else { return vec![] };
    vm.recovery_points().unwrap_or_default().into_iter().map(|p| (p.id, p.time)).collect()
}

/// Invariant 2 on the replica of `id` on `host`: every point (or only the newest) a clean
/// prefix, never fewer records than the point before. Returns the violation, if any.
pub async fn clean_prefixes(lab: &LabUnderTest, host: &str, id: &str, name: &str, only_newest: bool) -> Option<String> {
    let store = ferry_repl::ReplicaStore::open(&lab.host_data(host).join("replicas")).ok()?;
    let vm = store.vm(id).await.ok()?;
    let mut pts = vm.recovery_points().ok()?;
    if only_newest {
        let n = pts.len();
        pts.drain(..n.saturating_sub(1));
    }
    let mut prev = 0u64;
    // Points found damaged by verification are reported there (invariant 5), not read here.
    for p in pts.into_iter().filter(|p| p.check.as_ref().is_none_or(|c| c.damage.is_empty())) {
        let top = match vm.chain(&p.id, "vdb") {
            Ok(c) => c.first().cloned()?,
            // Merged away by retention meanwhile.
            Err(_) => continue,
        };
        let report = match ferry_qemu::guest_records::verify_image(&top).await {
            Ok(r) => r,
            Err(_) if !top.exists() => continue,
            Err(e) => return Some(format!("{name}: point {} on {host} cannot be read: {e}", p.id)),
        };
        if !report.corrupted.is_empty() {
            return Some(format!("{name}: point {} on {host} holds corrupted records: {report:?}", p.id));
        }
        if report.first_gap.is_some() && report.last_record != Some(report.clean_prefix_len) {
            return Some(format!("{name}: point {} on {host} is not a clean prefix: {report:?}", p.id));
        }
        if report.clean_prefix_len < prev {
            return Some(format!(
                "{name}: point {} on {host} holds {} records, fewer than the point before ({prev})",
                p.id, report.clean_prefix_len
            ));
        }
        prev = report.clean_prefix_len;
    }
    None
}

/// The records point `point` of item `id` holds on `host` (its clean prefix on the data disk).
pub async fn records_in_point(lab: &LabUnderTest, host: &str, id: &str, point: &str) -> Option<u64> {
    let store = ferry_repl::ReplicaStore::open(&lab.host_data(host).join("replicas")).ok()?;
    let vm = store.vm(id).await.ok()?;
    let top = vm.chain(point, "vdb").ok()?.first().cloned()?;
    Some(ferry_qemu::guest_records::verify_image(&top).await.ok()?.clean_prefix_len)
}

/// Invariant 3 for an unplanned failover at point `point`: the VM recovered on `to` finds at
/// least the `held` records the point held (it may lose only what was written after it).
pub async fn recovered_holds(lab: &LabUnderTest, vm: &str, to: &str, point: &str, held: u64) -> Option<String> {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(found) = found_at_boot(&serial_of(lab, to, vm)) {
            return (found < held).then(|| {
                format!("unplanned failover of {vm} to {to} at {point} lost records: the point held {held}, the VM found {found}")
            });
        }
        if t0.elapsed() > Duration::from_secs(300) {
            return Some(format!("{vm} recovered on {to} did not report the records it found within 300 s"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The last record a guest wrote on its console, and the records it found at its last boot.
pub fn serial_of(lab: &LabUnderTest, host: &str, vm: &str) -> String {
    std::fs::read_to_string(lab.host_data(host).join("vms").join(vm).join("serial.log")).unwrap_or_default()
}

pub fn last_written(serial: &str) -> u64 {
    ferry_qemu::guest_records::last_serial_record(serial).unwrap_or(0)
}

pub fn found_at_boot(serial: &str) -> Option<u64> {
    serial.lines().rev().find_map(|l| l.trim().strip_prefix("FERRY FOUND ").and_then(|n| n.trim().parse().ok()))
}

/// Invariant 3: the VM recovered on `to` found at least every record it wrote on `from`.
pub async fn planned_failover_lost_nothing(
    lab: &LabUnderTest,
    vm: &str,
    from: &str,
    to: &str,
    written: u64,
) -> Option<String> {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(found) = found_at_boot(&serial_of(lab, to, vm)) {
            return (found < written).then(|| {
                format!("planned failover of {vm} from {from} to {to} lost records: {written} written, {found} found")
            });
        }
        // Boot time is not what this checks (a loaded machine boots the TCG guest slowly).
        if t0.elapsed() > Duration::from_secs(300) {
            return Some(format!("{vm} recovered on {to} did not report the records it found within 300 s"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether an item's health reasons hold a stall.
pub fn stalled(it: &Value) -> bool {
    it["health_reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r.as_str().is_some_and(|r| r.starts_with("ReplicationStalled")))
}

/// Invariant 6: what of the lab in `dir` still exists after it was stopped.
pub fn leftovers(dir: &Path, bridge_prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let dir_s = dir.to_string_lossy().to_string();
    // The soak itself and what started it (a shell, `timeout`, a test) name the directory too.
    let ours = ancestors();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if ours.contains(&pid) {
                continue;
            }
            if let Ok(argv) = super::lab_control::cmdline(pid) {
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')));
                if !zombie && argv.iter().any(|a| a.contains(&dir_s)) {
                    out.push(format!("process {pid} still runs: {}", argv.join(" ")));
                }
            }
        }
    }
    let links =
        std::process::Command::new("ip").args(["-o", "link", "show"]).output().map(|o| o.stdout).unwrap_or_default();
    let links = String::from_utf8_lossy(&links);
    let taps = lab_taps(dir);
    for l in links.lines() {
        let Some(name) = l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_string()) else {
            continue;
        };
        if name.starts_with(bridge_prefix) || taps.contains(&name) {
            out.push(format!("link {name} is left"));
        }
    }
    let namespaces =
        std::process::Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    for l in String::from_utf8_lossy(&namespaces).lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        if name.starts_with(&format!("{bridge_prefix}-")) {
            out.push(format!("network namespace {name} is left"));
        }
    }
    for host in ["ny1", "ny2", "ny3", "chi1", "chi2"] {
        let data = dir.join("hosts").join(host).join("data");
        if let Ok(rd) = std::fs::read_dir(data.join("vms")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with("-test") {
                    out.push(format!("test VM {} is left on {host}", e.file_name().to_string_lossy()));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(data.join("replicas")) {
            for e in rd.flatten() {
                if std::fs::canonicalize(e.path()).map(|p| p.join("test").exists()).unwrap_or(false) {
                    out.push(format!("test overlays of {} are left on {host}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    out
}

/// This process and its ancestors.
fn ancestors() -> Vec<u32> {
    let mut out = vec![std::process::id()];
    let mut pid = std::process::id();
    while pid > 1 {
        let Some(parent) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
            s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()))
        }) else {
            break;
        };
        out.push(parent);
        pid = parent;
    }
    out
}

/// The tap names of every VM the lab's hosts define.
fn lab_taps(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for host in ["ny1", "ny2", "ny3", "chi1", "chi2"] {
        let Ok(rd) = std::fs::read_dir(dir.join("hosts").join(host).join("data").join("vms")) else { continue };
        for e in rd.flatten() {
            let Ok(bytes) = std::fs::read(e.path().join("definition.json")) else { continue };
            let Ok(def) = serde_json::from_slice::<ferry_types::fabric::VmDefinition>(&bytes) else { continue };
            let Some(uuid) = def.uuid else { continue };
            for i in 0..def.nics.len() {
                out.push(ferry_host::net::tap_name(host, &uuid, i));
            }
        }
    }
    out
}
