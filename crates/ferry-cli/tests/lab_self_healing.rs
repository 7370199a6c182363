//! Replication never stalls silently (JOB-2, REP-3, REP-5, POL-9), operated as a user operates
//! it: several VMs at once, failover and failback of one while the others replicate, the lab
//! stopped and started again, a host agent killed and restarted on a new port, a site manager
//! restarted, an unreachable replica host, a policy edit. Each test prints the time from a
//! fault's end to the next good point.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Lab, LabOptions};
use serde_json::Value;

fn item(lab: &Lab, id: &str) -> Value {
    lab.json(&["item-show", id])
}

/// Recovery points of the replica of `item` on `host`: (id, capture time), oldest first.
fn replica_points(lab: &Lab, host: &str, item: &str) -> Vec<(String, DateTime<Utc>)> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data(host).join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(item)).expect("replica");
    vm.recovery_points().expect("points").into_iter().map(|p| (p.id, p.time)).collect()
}

/// Every point of the replica of `item` on `host` holds a clean prefix of the guest's records.
fn assert_clean_prefixes(lab: &Lab, host: &str, item: &str) -> u64 {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data(host).join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(item)).expect("replica");
    common::clean_prefixes(&rt, &vm).last().map_or(0, |p| p.2)
}

/// The longest time between two consecutive points of `points` captured after `from`.
fn longest_gap(points: &[(String, DateTime<Utc>)], from: DateTime<Utc>) -> Duration {
    let times: Vec<DateTime<Utc>> = points.iter().map(|p| p.1).collect();
    times
        .windows(2)
        .filter(|w| w[1] > from)
        .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
        .max()
        .unwrap_or_default()
}

/// Wait until the replica of `item` on `host` has a point captured after `after`; returns how
/// long that took from `since`.
fn next_point_after(
    lab: &Lab,
    host: &str,
    item: &str,
    after: DateTime<Utc>,
    since: Instant,
    within: Duration,
) -> Duration {
    lab.wait_for("a new recovery point", within, || {
        replica_points(lab, host, item).iter().any(|p| p.1 > after).then(|| since.elapsed())
    })
}

fn p50_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Three VMs replicate New York → Chicago at the policy's real copy frequency (30 s). One of them
/// is failed over, committed, re-protected and failed back; the other two never miss more than
/// two cycles meanwhile (no gap of more than three copy intervals between their points), and
/// every point of every VM holds a clean prefix of its guest's records.
#[test]
fn rep_3_fo_6_other_vms_keep_replicating_while_one_fails_over_and_back() {
    common::test_guest();
    let lab = Lab::start(LabOptions { demo_vms: true, ..Default::default() });
    let items = lab.wait_for("the demo VMs to be protected", Duration::from_secs(240), || {
        let items = lab.json(&["item-list"]);
        let all = items["items"].as_array().cloned().unwrap_or_default();
        (all.len() == 3 && all.iter().all(|i| i["state"] == "Protected")).then_some(all)
    });
    let id =
        |name: &str| items.iter().find(|i| i["name"] == name).and_then(|i| i["id"].as_str()).expect("item").to_string();
    let (web1, app1, db1) = (id("web1"), id("app1"), id("db1"));
    // The policy's real copy frequency runs: no test knob.
    assert_eq!(item(&lab, &web1)["stats"]["interval_secs"], 30);
    let ops_start = Utc::now();

    assert_eq!(lab.json(&["planned-failover", &db1, "--wait", "--shutdown-timeout", "60"])["status"], "Succeeded");
    assert_eq!(lab.json(&["failover-commit", &db1, "--wait"])["status"], "Succeeded");
    assert_eq!(lab.json(&["reprotect", &db1, "--wait"])["state"], "Protected");
    let rev = lab.wait_for("db1 to replicate Chicago → New York", Duration::from_secs(240), || {
        let it = item(&lab, &db1);
        (it["state"] == "Protected" && it["direction"] == "Reverse").then_some(it)
    });
    assert_eq!(rev["source"]["host_name"], "chi1");
    // The other two still replicate to chi1 while chi1 also sends db1 back (both directions).
    for other in [&web1, &app1] {
        let it = item(&lab, other);
        assert_ne!(it["health"], "Critical", "{it}");
    }
    let (code, out, err) = lab.cli(&["failback", &db1]);
    assert_eq!(code, 0, "failback: {err}\n{out}");
    let back = lab.wait_for("db1 to replicate New York → Chicago again", Duration::from_secs(240), || {
        let it = item(&lab, &db1);
        (it["state"] == "Protected" && it["direction"] == "Forward").then_some(it)
    });
    assert_eq!(back["target"]["host_name"], "chi1");
    // db1 makes points again in its original direction.
    let after_failback = Utc::now();
    next_point_after(&lab, "chi1", &db1, after_failback, Instant::now(), Duration::from_secs(120));
    let ops_end = Utc::now();
    eprintln!("failover round trip of db1 took {} s", (ops_end - ops_start).num_seconds());

    // web1 and app1 never missed more than two cycles while db1 went back and forth.
    for (name, other) in [("web1", &web1), ("app1", &app1)] {
        let points = replica_points(&lab, "chi1", other);
        let gap = longest_gap(&points, ops_start);
        eprintln!("{name}: longest gap between points during the operations: {gap:?}");
        assert!(gap <= Duration::from_secs(3 * 30 + 15), "{name} missed more than two cycles: {gap:?}: {points:?}");
        assert!(points.last().is_some_and(|p| p.1 > ops_end - chrono::Duration::seconds(75)), "{name} is current");
        assert!(assert_clean_prefixes(&lab, "chi1", other) > 0);
        let it = item(&lab, other);
        assert!(
            !it["health_reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r.as_str().is_some_and(|r| r.starts_with("ReplicationStalled"))),
            "{it}"
        );
    }
    assert!(assert_clean_prefixes(&lab, "chi1", &db1) > 0);
    // No stall event for any VM.
    for i in [&web1, &app1, &db1] {
        assert!(common::events_of(&lab, "ReplicationStalled", i).is_empty(), "no stall of {i}");
    }
}

/// Replication resumes by itself, without a resynchronization, after the whole lab is stopped
/// and started on its directory, after the replica host's agent is killed and started on a new
/// replication port (the source finds it through its site and the vault), and after the source
/// site manager is killed and restarted.
#[test]
fn rep_3_replication_resumes_after_lab_restart_agent_on_new_port_and_site_restart() {
    let mut lab = Lab::start(LabOptions { test_copy_interval_ms: Some(3000), ..Default::default() });
    let serial = common::guest_vm(&lab, "heal1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "heal1");
    common::wait_records_and_points(&lab, &id, &serial, 4, 2);
    let interval = Duration::from_secs(3);
    let mut recoveries = Vec::new();

    // 1. The lab is stopped (VMs too) and started again on its directory.
    lab.restart();
    lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "heal1"]);
    let up = Instant::now();
    let before = Utc::now();
    let took = next_point_after(&lab, "chi1", &id, before, up, Duration::from_secs(90));
    eprintln!("lab restart: next good point {took:?} after the VM runs again");
    recoveries.push(took);

    // 2. chi1's agent is killed and comes back on another replication port.
    let old_addr = lab.replication_address("chi1");
    common::kill9(lab.pid("host-chi1"));
    let config = lab.dir.join("hosts/chi1/host.toml");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let toml = std::fs::read_to_string(&config).expect("host.toml");
    let old_port = old_addr.rsplit(':').next().expect("port");
    let toml = toml.replace(&format!("127.0.0.1:{old_port}"), &format!("127.0.0.1:{free}"));
    std::fs::write(&config, toml).expect("host.toml");
    std::thread::sleep(Duration::from_secs(2));
    let _chi1 = lab.restart_host("chi1");
    let up = Instant::now();
    let before = Utc::now();
    let took = next_point_after(&lab, "chi1", &id, before, up, Duration::from_secs(60));
    eprintln!("replica host on a new port ({old_port} → {free}): next good point {took:?} after it started");
    assert!(took <= Duration::from_secs(30), "the source found the replica host's new address quickly: {took:?}");
    recoveries.push(took);
    let ny1_log = std::fs::read_to_string(lab.dir.join("logs/host-ny1.log")).unwrap_or_default();
    assert!(ny1_log.contains("listens at a new address"), "the source followed the replica host");

    // 3. The source's site manager is killed and restarted.
    common::kill9(lab.pid("site-newyork"));
    std::thread::sleep(Duration::from_secs(2));
    let _site = lab.restart_site("newyork");
    let up = Instant::now();
    let before = Utc::now();
    let took = next_point_after(&lab, "chi1", &id, before, up, Duration::from_secs(60));
    eprintln!("source site manager restarted: next good point {took:?}");
    recoveries.push(took);

    // No resynchronization and no second initial copy at any step; every point is clean.
    let points = replica_points(&lab, "chi1", &id);
    assert!(points.len() >= 5, "{points:?}");
    let it = item(&lab, &id);
    assert_eq!(it["state"], "Protected", "{it}");
    let ny1_logs = ["host-ny1.log"]
        .iter()
        .map(|f| std::fs::read_to_string(lab.dir.join("logs").join(f)).unwrap_or_default())
        .collect::<String>();
    assert!(!ny1_logs.contains("resynchronizing"), "no resync");
    assert!(assert_clean_prefixes(&lab, "chi1", &id) > 0);
    let (p50, p99) = p50_p99(recoveries.clone());
    eprintln!("time from a fault's end to the next good point: p50 {p50:?}, p99 {p99:?} (copy interval {interval:?}) over {recoveries:?}");
}

/// The replica host becomes unreachable: within max(3 × copy frequency, 2 min) the item is
/// Critical with the cause named, one `ReplicationStalled` event and one webhook alert; when it
/// is back, one `ReplicationRecovered` event and the stall is gone.
#[test]
fn job_2_job_4_unreachable_replica_is_critical_with_its_cause_then_recovers() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(2000), ..Default::default() });
    let (_rt, url, got) = common::webhook_receiver();
    assert_eq!(lab.cli(&["alerts-set", "--webhook", &url]).0, 0);
    let serial = common::guest_vm(&lab, "stall1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "stall1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);
    let it = item(&lab, &id);
    assert!(it["stats"]["rpo_secs"].as_u64().is_some_and(|r| r < 60), "RPO is the newest point's age: {it}");
    assert!(it["stats"]["rpo_explanation"]["findings"].as_array().is_some_and(|f| !f.is_empty()), "{it}");
    let (code, text, err) = lab.cli(&["item-show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("RPO ") && text.contains("Why this RPO:") && text.contains("per point: interval"), "{text}");

    let replica_port = lab.replication_address("chi1").rsplit(':').next().expect("port").to_string();
    let fault = Instant::now();
    common::kill9(lab.pid("host-chi1"));
    let critical = lab.wait_for("the stall to be reported", Duration::from_secs(200), || {
        let it = item(&lab, &id);
        (it["health"] == "Critical").then_some(it)
    });
    let after = fault.elapsed();
    eprintln!("Critical {after:?} after the replica host died: {}", critical["health_reasons"]);
    let (_, text, _) = lab.cli(&["item-show", &id]);
    assert!(text.contains("Health      Critical") && text.contains("ReplicationStalled"), "{text}");
    assert!(after >= Duration::from_secs(110), "not before max(3 × frequency, 2 min): {after:?}");
    let reasons: Vec<String> = critical["health_reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let stall = reasons.iter().find(|r| r.starts_with("ReplicationStalled: ")).expect("the stall reason");
    assert!(
        stall.contains(&format!("cannot connect to chi1 at 127.0.0.1:{replica_port}"))
            && stall.to_lowercase().contains("refused"),
        "the cause is named: {stall}"
    );
    let alert = lab.wait_for("the stall alert", Duration::from_secs(30), || {
        common::alerts_of_kind(&got, "ReplicationStalled").into_iter().next()
    });
    assert_eq!(alert["object"]["id"], id.as_str(), "{alert}");
    assert!(alert["message"].as_str().is_some_and(|m| m.contains("cannot connect to chi1")), "{alert}");
    // Still stalled a while later: still one event, one alert.
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(common::events_of(&lab, "ReplicationStalled", &id).len(), 1);
    assert_eq!(common::alerts_of_kind(&got, "ReplicationStalled").len(), 1);

    let _chi1 = lab.restart_host("chi1");
    let back = Instant::now();
    let before = Utc::now();
    let took = next_point_after(&lab, "chi1", &id, before, back, Duration::from_secs(60));
    eprintln!("replica host back: next good point {took:?} after it started");
    let healed = lab.wait_for("the item to recover", Duration::from_secs(60), || {
        let it = item(&lab, &id);
        (it["health"] != "Critical").then_some(it)
    });
    assert!(
        !healed["health_reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r.as_str().is_some_and(|r| r.starts_with("ReplicationStalled"))),
        "{healed}"
    );
    // Missed cycles of the outage may keep it at Warning for the hour; nothing else.
    for r in healed["health_reasons"].as_array().into_iter().flatten() {
        assert!(r.as_str().is_some_and(|r| r.starts_with("MissedCycles")), "{healed}");
    }
    lab.wait_for("the recovery event", Duration::from_secs(30), || {
        (common::events_of(&lab, "ReplicationRecovered", &id).len() == 1).then_some(())
    });
    assert_eq!(common::events_of(&lab, "ReplicationStalled", &id).len(), 1, "one stall, one event");
    lab.wait_for("the recovery alert", Duration::from_secs(30), || {
        (common::alerts_of_kind(&got, "ReplicationRecovered").len() == 1).then_some(())
    });
    assert_eq!(common::alerts_of_kind(&got, "ReplicationStalled").len(), 1, "one stall, one alert");
}

/// POL-9: a policy edit (copy frequency 30 → 300 s, compression on, retention 2 h → 0) reaches
/// the running VM's replication from its next cycle: its statistics show the new interval and
/// policy version, cycles slow down, and retention merges its points down to the latest one.
#[test]
fn pol_9_a_policy_edit_changes_the_running_vms_cycles_and_retention() {
    let lab = Lab::start(LabOptions { retention_interval_secs: Some(5), ..Default::default() });
    let serial = common::guest_vm(&lab, "edit1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30", "--retention-hours", "2"]);
    let id = common::protect(&lab, "edit1");
    // Retention of 2 hours applied every 5 s keeps the latest point and one per hour: two points
    // is the steady state (a third lives only until the next retention run).
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);
    let before = item(&lab, &id);
    assert_eq!(before["stats"]["interval_secs"], 30, "the policy's frequency, no test knob: {before}");
    let version = before["stats"]["policy_version"].as_i64().expect("policy version");

    let (code, out, err) = lab.cli(&[
        "policy-update",
        "gold",
        "--name",
        "gold",
        "--copy-frequency",
        "300",
        "--compression",
        "--retention-hours",
        "0",
        "--wait",
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    let edited = Instant::now();
    let after = lab.wait_for("the edit to reach the host", Duration::from_secs(60), || {
        let it = item(&lab, &id);
        (it["stats"]["interval_secs"] == 300).then_some(it)
    });
    assert!(after["stats"]["policy_version"].as_i64().is_some_and(|v| v > version), "{after}");
    eprintln!("policy edit applied {:?} after the update", edited.elapsed());
    lab.wait_for("the PolicyApplied event", Duration::from_secs(30), || {
        (!common::events_of(&lab, "PolicyApplied", &id).is_empty()).then_some(())
    });
    let ny1_log = std::fs::read_to_string(lab.dir.join("logs/host-ny1.log")).unwrap_or_default();
    assert!(
        ny1_log
            .lines()
            .map(common::strip_ansi)
            .any(|l| l.contains("policy edit applies") && l.contains("compression=true")),
        "compression is on from the next cycle"
    );
    // Retention 0: only the latest point is kept.
    lab.wait_for("retention to merge the points", Duration::from_secs(60), || {
        (replica_points(&lab, "chi1", &id).len() == 1).then_some(())
    });
    // 300 s now: at most the one cycle the edit started within the next 70 s.
    let cycles_before = item(&lab, &id)["stats"]["cycles_ok"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(70));
    let cycles_after = item(&lab, &id)["stats"]["cycles_ok"].as_u64().unwrap_or(0);
    assert!(cycles_after <= cycles_before + 1, "cycles follow the new frequency: {cycles_before} → {cycles_after}");
    assert_eq!(replica_points(&lab, "chi1", &id).len(), 1);
    assert!(assert_clean_prefixes(&lab, "chi1", &id) > 0);
}
