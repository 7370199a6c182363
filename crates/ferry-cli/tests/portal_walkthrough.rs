//! The scenario's steps through the web portal in real headless Chromium, against a running lab:
//! sign in, protection goal, registration key issued and downloaded and a new site manager
//! registered with it, policy with the API's validation, association, network mapping with the
//! availability view, storage mapping, enable replication and its jobs, recovery points, a test
//! failover at a chosen point and its cleanup with notes. Screenshots of the replicated item and
//! of the dashboard are kept under target/portal-artifacts.

mod browser;
mod common;

use std::time::Duration;

use base64::Engine;
use browser::{admin_token, Portal};
use common::{Lab, LabOptions};

#[test]
fn fo_1_portal_walkthrough_from_registration_key_to_test_failover_cleanup() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    // The VM to protect (VMs are created on the site side, not in the portal).
    common::guest_vm(&lab, "pw1", 16, Some("10.11.0.40"));
    let portal = Portal::open(&lab);

    // Sign in: a wrong token is refused with a clear message; the admin token gets in.
    portal.goto("/portal/");
    assert!(portal.path().starts_with("/portal/login"), "{}", portal.path());
    portal.set("#token", "fy_not-a-token");
    portal.click("#login");
    assert!(portal.text_of("#login-error").contains("unknown or revoked"), "{}", portal.text());
    portal.set("#token", &admin_token(&lab));
    portal.click("#login");
    // One vault: straight to its overview.
    assert!(portal.path().starts_with("/portal/vaults/"), "{}", portal.path());
    assert_eq!(portal.text_of("#role"), "Contributor");
    let base = portal.path();
    let prepare = format!("{base}/prepare");

    // 1. Protection goal (FAB-6).
    portal.goto(&prepare);
    portal.set("#goal-form select[name=second_site_manager]", "yes");
    portal.click("#goal-form button");
    assert_eq!(portal.text_of("#notice"), "Protection goal saved");
    assert!(portal.text_of("#goal-current").contains("second site manager: Yes"), "{}", portal.text());

    // 2. Source: issue and download a registration key (FAB-2), register a site manager with it.
    portal.click("#issue-key");
    let file = portal.eval("document.querySelector('#key-file').value").as_str().expect("key file").to_string();
    let href = portal.eval("document.querySelector('#download-key').href").as_str().expect("href").to_string();
    let b64 = href.split_once("base64,").expect("data URL").1;
    let downloaded = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    assert_eq!(String::from_utf8(downloaded).expect("utf-8"), file, "the download is the key file shown");
    let key_path = lab.tmp.path().join("boston.key");
    std::fs::write(&key_path, &file).expect("write key");
    let cfg = lab.tmp.path().join("boston.toml");
    std::fs::write(
        &cfg,
        "name = \"VMM-Boston\"\nserver_name = \"boston-vmm\"\nvault_name = \"ferry-lab\"\n\
         [[host_groups]]\nname = \"HG-Boston\"\n[[clouds]]\nname = \"BostonCloud1\"\nhost_groups = [\"HG-Boston\"]\n",
    )
    .expect("write site config");
    let (code, out, err) = lab.cli(&[
        "site",
        "register",
        "--config",
        &cfg.display().to_string(),
        "--data-dir",
        &lab.tmp.path().join("boston").display().to_string(),
        "--key",
        &key_path.display().to_string(),
    ]);
    assert_eq!(code, 0, "registration with the portal's key: {out}{err}");
    portal.goto(&prepare);
    assert!(portal.text_of("#site-VMM-Boston").contains("BostonCloud1"), "{}", portal.text());
    assert!(portal.text_of("#keys").contains("Used by VMM-Boston"), "{}", portal.text_of("#keys"));
    assert!(portal.text_of("#site-VMM-NewYork").contains("GoldCloud1"));

    // 3. Target: the synced clouds of the recovery site.
    assert!(portal.text_of("#target-clouds").contains("GoldCloud2"));

    // 4. Replication policy: the API's validation shows, the values entered stay.
    portal.set("#policy-form input[name=name]", "portal-gold");
    portal.set("#policy-form select[name=copy_frequency_secs]", "30");
    portal.set("#policy-form input[name=recovery_point_retention_hours]", "30");
    portal.choose("#policy-form select[name=source]", "VMM-NewYork / GoldCloud1");
    portal.choose("#policy-form select[name=target]", "VMM-Chicago / GoldCloud2");
    portal.click("#create-policy");
    assert!(portal.exists("#notice.error"), "a retention of 30 h is refused:\n{}", portal.text());
    assert!(portal.text_of("#notice").to_lowercase().contains("retention"), "{}", portal.text_of("#notice"));
    assert_eq!(portal.eval("document.querySelector('#policy-form input[name=name]').value"), "portal-gold");
    assert_eq!(lab.json(&["policy-list"]), serde_json::json!([]), "nothing was created");
    portal.set("#policy-form input[name=recovery_point_retention_hours]", "1");
    portal.check("#policy-form input[name=compression]");
    portal.check("#policy-form input[name=delete_replica_on_disable]");
    portal.click("#create-policy");
    assert!(portal.text_of("#notice").contains("portal-gold created and associated"), "{}", portal.text());
    assert!(portal.text_of("#pairs").contains("GoldCloud1"), "{}", portal.text_of("#pairs"));
    assert!(portal.text_of("#policies").contains("30 seconds"));
    portal.wait_for_text(
        &format!("{base}/jobs?operation=ConfigureCloudPair&status=Succeeded"),
        "Configure cloud pair",
        Duration::from_secs(60),
    );

    // 5. Network mapping with the availability view (NET-1).
    portal.goto(&prepare);
    let avail = portal.text_of("#availability");
    assert!(avail.contains("GoldCloud1") && avail.contains("VMM-Chicago / VMNetwork1-Chicago"), "{avail}");
    portal.choose("#network-form select[name=source]", "VMM-NewYork / VMNetwork1-NewYork");
    portal.choose("#network-form select[name=target]", "VMM-Chicago / VMNetwork1-Chicago");
    portal.click("#network-form button");
    assert_eq!(portal.text_of("#notice"), "Networks mapped");
    assert!(portal.text_of("#network-mappings").contains("VMNetwork1-Chicago"));

    // 6. Storage mapping (STO-1).
    portal.choose("#storage-form select[name=source]", "VMM-NewYork / GOLD");
    portal.choose("#storage-form select[name=target]", "VMM-Chicago / GOLD_TARGET");
    portal.click("#storage-form button");
    assert_eq!(portal.text_of("#notice"), "Storage classifications mapped");
    assert!(portal.text_of("#storage-mappings").contains("GOLD_TARGET"));

    // Replicate applications (REP-1): source cloud, its target, the VM, enable, the jobs.
    portal.goto(&format!("{base}/replicate"));
    portal.choose("#source-cloud", "VMM-NewYork / GoldCloud1");
    portal.click("#show-vms");
    assert!(portal.text_of("#target-cloud").contains("VMM-Chicago / GoldCloud2"), "{}", portal.text());
    assert!(portal.text_of("#target-cloud").contains("portal-gold"));
    portal.check("#select-pw1");
    portal.click("#enable");
    assert!(portal.text_of("#notice").contains("Protection enabled for pw1"), "{}", portal.text());
    assert!(portal.text_of("#enable-jobs").contains("Enable protection"), "{}", portal.text());
    let replicate = portal.path();
    portal.wait_until(&replicate, "the Finalize protection job", Duration::from_secs(180), |p| {
        let jobs = p.text_of("#enable-jobs");
        jobs.contains("Finalize protection") && !jobs.contains("In progress") && !jobs.contains("Not started")
    });
    assert!(!portal.text_of("#enable-jobs").contains("Failed"), "{}", portal.text_of("#enable-jobs"));

    // Replicated items: the item, its health, state and recovery points.
    portal.goto(&format!("{base}/items"));
    portal.click("#item-pw1 a");
    let item = portal.path();
    portal.wait_until(&item, "three recovery points", Duration::from_secs(150), |p| {
        p.text_of("#state") == "Protected" && p.count("#points tbody tr") >= 3
    });
    assert!(portal.exists("#op-testFailover"), "test failover is offered:\n{}", portal.text_of("#operations"));
    assert!(!portal.exists("#op-testFailoverCleanup"), "no cleanup without a test");

    // FO-1: test failover at a chosen (older) point on an automatic isolated network.
    let point = portal.text_of("#points tbody tr:nth-child(2) code");
    portal.set("#op-testFailover select[name=recovery_point]", &point);
    portal.set("#op-testFailover select[name=network]", "auto");
    portal.click("#do-testFailover");
    assert!(portal.path().contains("/jobs/"), "the job's page follows: {}", portal.path());
    assert!(portal.text_of("#notice").contains("Test failover started for pw1"));
    let test_job = portal.path();
    portal.wait_for_text(&test_job, "Waiting for input", Duration::from_secs(180));
    assert!(portal.text_of("#tasks").contains("Complete testing"));
    portal.click("#job-object");
    assert_eq!(portal.path(), item);
    assert!(portal.text_of("#test-running").contains("pw1-test"), "{}", portal.text());
    assert!(portal.text_of("#test-running").contains(&point), "the chosen point is used");
    assert!(!portal.exists("#op-testFailover"), "one test failover at a time");
    assert!(portal.exists("#op-testFailoverCleanup"));
    let shot = portal.screenshot("replicated-item-test-failover");
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
    let vms = lab.json(&["vm-list", "--site", "VMM-Chicago", "--host", "chi1"]);
    assert!(vms.as_array().is_some_and(|a| a.iter().any(|v| v["name"] == "pw1-test")), "{vms}");
    portal.goto(&base);
    assert_eq!(portal.text_of("#tests-running .value"), "1");

    // Cleanup with notes; the notes are shown as written (escaped, not interpreted).
    let notes = "drill <ok> & \"fine\"";
    portal.goto(&item);
    portal.set("#op-testFailoverCleanup textarea[name=notes]", notes);
    portal.click("#do-testFailoverCleanup");
    let cleanup_job = portal.path();
    portal.wait_until(&cleanup_job, "the cleanup to finish", Duration::from_secs(120), |p| {
        p.text_of("#job-status") == "Succeeded"
    });
    portal.goto(&test_job);
    assert_eq!(portal.text_of("#job-status"), "Succeeded", "the test failover job ends with its cleanup");
    portal.goto(&item);
    assert_eq!(portal.text_of("#last-test-notes"), notes);
    assert!(portal.text_of("#test-failover").contains("No test failover running"));
    let it = lab.json(&["item-show", "pw1"]);
    assert_eq!(it["last_test_failover"]["notes"], notes);
    assert_eq!(it["last_test_failover"]["recovery_point"], point.as_str());
    assert_eq!(lab.json(&["vm-list", "--site", "VMM-Chicago", "--host", "chi1"]), serde_json::json!([]));

    // The overview now counts the item as tested.
    portal.goto(&base);
    assert_eq!(portal.text_of("#tests-done .value"), "1");
    assert_eq!(portal.text_of("#tests-recommended .value"), "0");
    assert!(portal.text_of("#test-status").contains("Tested"));
    let shot = portal.screenshot("dashboard-after-walkthrough");
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
}
