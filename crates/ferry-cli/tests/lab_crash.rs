//! Crash tests at Ferry's durable boundaries (failpoints, `ferry_core::failpoint`): a process is
//! made to die at the exact place (abort, as at a power cut) and is started again; nothing it
//! acknowledged is lost and the system resumes by itself.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{kill9, Lab, LabOptions};
use ferry_core::failpoint;

/// REP-3: the replica host dies right after its catalogue recorded a cycle's point and before the
/// source heard of it. Started again it keeps that point; the source sends the cycle again and
/// the replica acknowledges it without applying it twice; replication goes on with no resync,
/// and every point holds a clean prefix of the guest's records.
#[test]
fn rep_3_a_replica_host_dying_between_its_catalogue_and_its_ack_loses_nothing() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "cr1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "cr1");
    common::wait_records_and_points(&lab, &id, &serial, 4, 2);

    lab.pin_replication_address("chi1");
    kill9(lab.pid("host-chi1"));
    let mut armed = lab.restart_host_with("chi1", &[(failpoint::ENV, failpoint::REPLICA_AFTER_CATALOG_WRITE)]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = armed.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "chi1 never reached the failpoint");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.signal(), Some(6), "died by abort at the failpoint: {status:?}");
    let log = std::fs::read_to_string(lab.dir.join("logs/host-chi1-restarted.log")).expect("log");
    assert!(log.contains("failpoint replica.after_catalog_write"), "{log}");
    drop(armed);

    // What the catalogue recorded before the crash is there, durable.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data("chi1").join("replicas")).expect("store");
    let recorded = {
        let vm = rt.block_on(store.vm(&id)).expect("replica");
        vm.recovery_points().expect("points").last().expect("a point").clone()
    };

    let _chi1 = lab.restart_host("chi1");
    lab.wait_for("the point recorded before the crash, and newer ones", Duration::from_secs(120), || {
        let it = lab.json(&["item-show", &id]);
        let ids: Vec<String> =
            it["recovery_points"].as_array()?.iter().filter_map(|p| p["id"].as_str().map(str::to_string)).collect();
        let at = ids.iter().position(|p| *p == recorded.id)?;
        (at + 2 < ids.len()).then_some(())
    });
    let log = common::strip_ansi(&std::fs::read_to_string(lab.dir.join("logs/host-chi1-restarted.log")).expect("log"));
    assert!(
        log.contains("Cycle already durable; acknowledged again") && log.contains(&format!("cycle={}", recorded.cycle)),
        "the source sent the cycle again and the replica acknowledged it without applying it twice: {log}"
    );
    assert_eq!(log.matches(&format!("point={} ", recorded.id)).count(), 0, "not recorded a second time");
    let it = lab.json(&["item-show", &id]);
    assert_eq!(it["state"], "Protected", "{it}");
    assert_ne!(it["health"], "Critical", "{it}");
    let vm = rt.block_on(store.vm(&id)).expect("replica");
    let prefixes = common::clean_prefixes(&rt, &vm);
    assert!(prefixes.iter().any(|p| p.0 == recorded.id), "{prefixes:?}");
    let source = std::fs::read_to_string(lab.dir.join("logs/host-ny1.log")).expect("source log");
    assert!(!source.contains("resync complete"), "no resynchronization was needed");
}
