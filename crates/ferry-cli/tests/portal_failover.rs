//! Failover operations from the portal's replicated-item page in real headless Chromium against
//! the lab's protected demo VMs: planned failover and commit (FO-2, FO-4), the operations the API
//! allows afterwards rendered as they come, re-protect (FO-5), unplanned failover refused while
//! the source runs (the API's cause and recommendation shown) and then run at a chosen recovery
//! point (FO-3, RP-3), a change of recovery point (FO-4), and disable protection (REP-8).

mod browser;
mod common;

use std::time::Duration;

use browser::{admin_token, Portal};
use common::{Lab, LabOptions};

fn item_path(lab: &Lab, base: &str, name: &str) -> String {
    let it = lab.json(&["item-show", name]);
    format!("{base}/items/{}", it["id"].as_str().expect("item id"))
}

#[test]
fn fo_2_fo_3_fo_4_fo_5_portal_planned_commit_reprotect_unplanned_at_a_point_change_point_and_disable() {
    let lab = Lab::start(LabOptions { demo_vms: true, test_copy_interval_ms: Some(1500), ..Default::default() });
    lab.wait_for("the demo VMs to be protected with points", Duration::from_secs(240), || {
        let items = lab.json(&["item-list"]);
        let a = items["items"].as_array().cloned().unwrap_or_default();
        let ready = a.len() == 3
            && a.iter().all(|i| i["state"] == "Protected")
            && ["db1", "app1"]
                .iter()
                .all(|n| lab.json(&["item-show", n])["recovery_points"].as_array().is_some_and(|p| p.len() >= 3));
        ready.then_some(())
    });
    let portal = Portal::open(&lab);
    portal.login(&admin_token(&lab));
    let base = portal.path();

    // REP-5: the item page shows the RPO and explains it from the last cycles.
    let web1 = item_path(&lab, &base, "web1");
    portal.goto(&web1);
    let rpo = portal.text_of("#rpo");
    assert!(!rpo.is_empty() && rpo != "—", "the RPO is the newest point's age: {rpo}");
    assert!(portal.text_of("#rpo-explanation").contains("A point every"), "{}", portal.text_of("#stats"));
    assert!(portal.text_of("#rpo-split").contains("Apply on the replica"), "{}", portal.text_of("#stats"));
    assert!(portal.text_of("#missed-hour").contains("expected"), "{}", portal.text_of("#stats"));

    // FO-2: planned failover of db1, then FO-4 commit.
    let db1 = item_path(&lab, &base, "db1");
    portal.goto(&db1);
    assert_eq!(portal.text_of("#state"), "Protected");
    portal.click("#do-plannedFailover");
    let job = portal.path();
    portal.wait_until(&job, "the planned failover", Duration::from_secs(240), |p| {
        matches!(p.text_of("#job-status").as_str(), "Succeeded" | "Failed" | "Cancelled")
    });
    assert_eq!(portal.text_of("#job-status"), "Succeeded", "{}", portal.text());
    portal.goto(&db1);
    assert_eq!(portal.text_of("#state"), "Failed over commit pending");
    // What the API allows now is offered, including operations the portal has no inputs for.
    let ops = lab.json(&["item-show", "db1"])["allowed_operations"].clone();
    for op in ops.as_array().expect("operations") {
        let op = op.as_str().expect("operation");
        assert!(portal.exists(&format!("#op-{op}")), "{op} is offered:\n{}", portal.text_of("#operations"));
    }
    assert!(portal.exists("#op-failoverCommit"));
    portal.click("#do-failoverCommit");
    let job = portal.path();
    portal.wait_until(&job, "the commit", Duration::from_secs(120), |p| p.text_of("#job-status") == "Succeeded");
    portal.goto(&db1);
    assert_eq!(portal.text_of("#state"), "Committed");
    assert!(portal.exists("#op-reProtect"), "re-protect follows a commit:\n{}", portal.text_of("#operations"));
    assert!(portal.text_of("#op-reProtect").contains("Re-protect (reverse replication)"));
    let vms = lab.json(&["vm-list", "--site", "VMM-Chicago", "--host", "chi1"]);
    assert!(vms.as_array().is_some_and(|a| a.iter().any(|v| v["name"] == "db1" && v["power_state"] == "Running")));
    // FO-5: re-protect from the portal: db1 replicates back from Chicago to New York.
    portal.click("#do-reProtect");
    let job = portal.path();
    portal.wait_until(&job, "the re-protect", Duration::from_secs(240), |p| {
        matches!(p.text_of("#job-status").as_str(), "Succeeded" | "Failed" | "Cancelled")
    });
    assert_eq!(portal.text_of("#job-status"), "Succeeded", "{}", portal.text());
    portal.wait_until(&db1, "db1 protected in the reverse direction", Duration::from_secs(240), |p| {
        p.text_of("#state") == "Protected"
    });
    let it = lab.json(&["item-show", "db1"]);
    assert_eq!(it["direction"], "Reverse", "{it}");

    // FO-3: refused while the source runs (the API's error with its cause and recommendation).
    let app1 = item_path(&lab, &base, "app1");
    portal.goto(&app1);
    portal.click("#do-unplannedFailover");
    assert!(portal.exists("#notice.error"), "{}", portal.text());
    let notice = portal.text_of("#notice");
    assert!(notice.contains("SourceStillRunning"), "{notice}");
    assert!(notice.contains("Possible causes") && notice.contains("The primary site is up"), "{notice}");
    assert!(notice.contains("Recommendation:"), "{notice}");
    assert_eq!(portal.text_of("#state"), "Protected", "nothing changed");
    // Then at a chosen, older recovery point, the source shut down first.
    let point = portal.text_of("#points tbody tr:nth-child(3) code");
    portal.set("#op-unplannedFailover select[name=recovery_point]", &point);
    portal.check("#op-unplannedFailover input[name=shutdown_source]");
    portal.click("#do-unplannedFailover");
    assert!(portal.path().contains("/jobs/"), "{}", portal.text());
    let job = portal.path();
    let job_id = job.rsplit('/').next().expect("job id").to_string();
    portal.wait_until(&job, "the unplanned failover", Duration::from_secs(240), |p| {
        matches!(p.text_of("#job-status").as_str(), "Succeeded" | "Failed" | "Cancelled")
    });
    assert_eq!(portal.text_of("#job-status"), "Succeeded", "{}", portal.text());
    assert_eq!(lab.json(&["job-show", &job_id])["params"]["point"], point.as_str(), "the chosen point was used");
    portal.goto(&app1);
    assert_eq!(portal.text_of("#state"), "Failed over commit pending");
    assert!(portal.text_of("#failover").contains(&point), "{}", portal.text_of("#summary"));
    // FO-4: change the recovery point before commit: the newest point instead.
    let newest = portal.text_of("#points tbody tr:nth-child(1) code");
    assert_ne!(newest, point);
    portal.set("#op-applyRecoveryPoint select[name=recovery_point]", &newest);
    portal.click("#do-applyRecoveryPoint");
    let job = portal.path();
    portal.wait_until(&job, "the change of recovery point", Duration::from_secs(240), |p| {
        matches!(p.text_of("#job-status").as_str(), "Succeeded" | "Failed" | "Cancelled")
    });
    assert_eq!(portal.text_of("#job-status"), "Succeeded", "{}", portal.text());
    portal.goto(&app1);
    assert_eq!(portal.text_of("#state"), "Failed over commit pending");
    assert!(portal.text_of("#failover").contains(&newest), "{}", portal.text_of("#summary"));

    // REP-8: disable protection of web1 (Contributor).
    let web1 = item_path(&lab, &base, "web1");
    portal.goto(&web1);
    portal.click("#do-disableProtection");
    let job = portal.path();
    portal
        .wait_until(&job, "disable protection", Duration::from_secs(120), |p| p.text_of("#job-status") == "Succeeded");
    portal.goto(&format!("{base}/items"));
    assert!(!portal.exists("#item-web1"), "{}", portal.text());
    assert!(portal.exists("#item-db1") && portal.exists("#item-app1"));
    portal.goto(&base);
    assert!(portal.text_of("#health").contains("2 replicated items"), "{}", portal.text_of("#health"));
}
