//! Recovery plans in the portal (PLAN-1, PLAN-3, PLAN-4), in real headless Chromium against a
//! lab with two small test-guest VMs: a plan created from the list page, a second group, a VM
//! added to it and a manual action as its pre-step for test failovers; an edit the API refuses
//! (a script path leaving the script library) shown with its code and changing nothing; a test
//! failover of the plan started from its page, the job waiting at the manual action with its
//! name and instructions, resumed from the job page, then waiting at "Complete testing"; the
//! cleanup with notes ends both jobs; the plan deleted. Screenshots of the plan page and of the
//! job waiting at the manual action are kept under target/portal-artifacts.

mod browser;
mod common;

use std::time::Duration;

use browser::{admin_token, Portal};
use common::{Lab, LabOptions};

const VMS: [&str; 2] = ["pp1", "pp2"];
const MANUAL: &str = "Check the database";
const INSTRUCTIONS: &str = "Open pp1's console and check that it found its records; then resume the job";

fn task_status(lab: &Lab, job: &str, task: &str) -> String {
    let j = lab.json(&["job-show", job]);
    j["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == task))
        .and_then(|t| t["status"].as_str())
        .unwrap_or_else(|| panic!("no task {task} in {j}"))
        .to_string()
}

#[test]
fn plan_1_plan_3_plan_4_portal_create_edit_run_and_resume() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serials: Vec<_> = VMS.iter().map(|vm| common::guest_vm(&lab, vm, 8, None)).collect();
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let mut protect = vec!["protect", "--site", "VMM-NewYork"];
    protect.extend(VMS);
    protect.push("--wait");
    lab.json(&protect);
    for (vm, serial) in VMS.iter().zip(&serials) {
        common::wait_records_and_points(&lab, vm, serial, 3, 1);
    }

    let portal = Portal::open(&lab);
    portal.login(&admin_token(&lab));
    let base = portal.path();

    // PLAN-1: create the plan from the list, pp1 in Group 1 (the only cloud pair is preselected).
    portal.click("nav.main a[href$='/plans']");
    assert!(portal.exists("#no-plans"), "{}", portal.text());
    assert!(portal.text_of("#create-plan-form").contains("VMM-NewYork / GoldCloud1 → VMM-Chicago / GoldCloud2"));
    portal.set("#plan-name", "drill");
    portal.set("#plan-description", "portal drill");
    portal.check("#new-vm-pp1");
    portal.click("#create-plan");
    assert_eq!(portal.text_of("#notice"), "Recovery plan drill created with 1 VM(s) in Group 1", "{}", portal.text());
    let plan_page = portal.path();
    assert!(plan_page.starts_with(&format!("{base}/plans/")), "{plan_page}");
    assert!(portal.exists("#group-1 #vm-pp1"));

    // A second group, pp2 in it, and a manual action before it starts, for test failovers only.
    portal.click("#add-group");
    assert_eq!(portal.text_of("#notice"), "Group 2 added");
    portal.check("#add-2-pp2");
    portal.click("#do-add-vms-2");
    assert_eq!(portal.text_of("#notice"), "Added to Group 2: pp2");
    portal.set("#add-step-2 select[name=phase]", "Pre");
    portal.set("#add-step-2 select[name=kind]", "ManualAction");
    portal.set("#add-step-2 input[name=name]", MANUAL);
    portal.set("#add-step-2 textarea[name=instructions]", INSTRUCTIONS);
    portal.check("#add-step-2 input[value=TestFailover]");
    portal.click("#do-add-step-2");
    assert_eq!(portal.text_of("#notice"), format!("Pre-step '{MANUAL}' added to Group 2"));
    assert!(portal.text_of("#group-2-pre-1").contains(INSTRUCTIONS), "{}", portal.text_of("#group-2"));
    assert!(portal.text_of("#group-2-pre-1").contains("Test failover"));

    // An edit the API refuses shows its error and changes nothing.
    let before = lab.json(&["plan-show", "drill"]);
    let version = portal.text_of("#plan-version");
    portal.set("#add-step-1 select[name=phase]", "Post");
    portal.set("#add-step-1 select[name=kind]", "Script");
    portal.set("#add-step-1 input[name=name]", "escape");
    portal.set("#add-step-1 input[name=path]", "../escape.sh");
    portal.click("#do-add-step-1");
    assert!(portal.exists("#notice.error"), "{}", portal.text());
    assert!(portal.text_of("#notice").contains("PathTraversal"), "{}", portal.text_of("#notice"));
    assert_eq!(portal.text_of("#plan-version"), version, "the plan's version did not move");
    assert_eq!(
        portal.eval("document.querySelector('#add-step-1 input[name=path]').value").as_str(),
        Some("../escape.sh"),
        "the refused form keeps its input"
    );
    let after = lab.json(&["plan-show", "drill"]);
    assert_eq!(after["groups"], before["groups"], "nothing changed");
    assert_eq!(after["version"], before["version"]);
    let groups: Vec<Vec<String>> = after["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            g["items"].as_array().expect("items").iter().map(|i| i["name"].as_str().unwrap_or("").into()).collect()
        })
        .collect();
    assert_eq!(groups, vec![vec!["pp1"], vec!["pp2"]]);

    portal.goto(&plan_page);
    portal.screenshot("portal-plan");

    // PLAN-4: test failover of the plan, no network for the test VMs.
    assert!(portal.exists("#op-testFailover"), "{}", portal.text_of("#operations"));
    portal.set("#op-testFailover select[name=network]", "none");
    portal.click("#do-testFailover");
    let job_page = portal.path();
    assert!(job_page.starts_with(&format!("{base}/jobs/")), "{}", portal.text());
    let job = job_page.rsplit('/').next().expect("job id").to_string();
    // PLAN-3: the job waits at the manual action and shows it.
    portal.wait_until(&job_page, "the manual action", Duration::from_secs(240), |p| {
        p.exists("#manual-action-name") || matches!(p.text_of("#job-status").as_str(), "Failed" | "Cancelled")
    });
    assert_eq!(portal.text_of("#job-status"), "Waiting for input", "{}", portal.text());
    assert_eq!(portal.text_of("#manual-action-name"), MANUAL);
    assert_eq!(portal.text_of("#manual-action-instructions"), INSTRUCTIONS);
    assert!(portal.text_of("#waiting").contains("Group 2, before its VMs start"), "{}", portal.text_of("#waiting"));
    assert!(portal.text_of("#tasks").contains(&format!("Group 2: Pre-step 1: manual action '{MANUAL}'")));
    assert_eq!(task_status(&lab, &job, "Group 1: Start pp1-test"), "Succeeded");
    assert_eq!(task_status(&lab, &job, "Group 2: Start pp2-test"), "NotStarted", "Group 2 waits for the operator");
    assert!(portal.text_of("#job-object").contains("drill"));
    portal.screenshot("portal-plan-manual-action");

    // Resume from the job page; the plan goes on to Group 2 and waits at "Complete testing".
    portal.click("#resume-job");
    assert_eq!(portal.text_of("#notice"), "Job resumed", "{}", portal.text());
    portal.wait_until(&job_page, "testing to be complete", Duration::from_secs(240), |p| {
        p.exists("#waiting-test") || matches!(p.text_of("#job-status").as_str(), "Failed" | "Cancelled")
    });
    assert_eq!(portal.text_of("#job-status"), "Waiting for input", "{}", portal.text());
    assert!(!portal.exists("#resume-job"), "testing ends with the cleanup, not with Resume");
    assert_eq!(task_status(&lab, &job, &format!("Group 2: Pre-step 1: manual action '{MANUAL}'")), "Succeeded");
    assert_eq!(task_status(&lab, &job, "Group 2: Start pp2-test"), "Succeeded");
    for vm in VMS {
        assert!(
            lab.json(&["item-show", vm])["test_failover"]["vm_name"] == format!("{vm}-test").as_str(),
            "{vm}-test runs"
        );
    }

    // Cleanup with notes from the plan page; it ends the test failover job too.
    portal.click("#job-object");
    assert_eq!(portal.path(), plan_page);
    portal.set("#op-testFailoverCleanup textarea[name=notes]", "portal plan drill ok");
    portal.click("#do-testFailoverCleanup");
    let cleanup_page = portal.path();
    assert_ne!(cleanup_page, job_page, "{}", portal.text());
    portal.wait_until(&cleanup_page, "the cleanup", Duration::from_secs(240), |p| {
        matches!(p.text_of("#job-status").as_str(), "Succeeded" | "Failed" | "Cancelled")
    });
    assert_eq!(portal.text_of("#job-status"), "Succeeded", "{}", portal.text());
    portal.goto(&job_page);
    assert_eq!(portal.text_of("#job-status"), "Succeeded", "the test failover job ends with its cleanup");
    for vm in VMS {
        let it = lab.json(&["item-show", vm]);
        assert_eq!(it["last_test_failover"]["notes"], "portal plan drill ok");
        assert!(it["test_failover"].is_null(), "{vm}: no test left");
    }
    portal.goto(&format!("{base}/plans"));
    assert_eq!(portal.text_of("#plan-drill .vm-count"), "2");
    assert!(portal.text_of("#plan-drill .last-job").contains("Cleanup test failover"), "{}", portal.text());
    assert!(portal.text_of("#plan-drill .last-job").contains("Succeeded"), "{}", portal.text());

    // Delete the plan; its VMs stay protected.
    portal.goto(&plan_page);
    portal.click("#delete-plan");
    assert_eq!(portal.path(), format!("{base}/plans"));
    assert_eq!(portal.text_of("#notice"), "Recovery plan drill deleted; its VMs stay protected");
    assert!(portal.exists("#no-plans"));
    assert_eq!(lab.json(&["plan-list"]).as_array().map(Vec::len), Some(0));
    for vm in VMS {
        assert_eq!(lab.json(&["item-show", vm])["state"], "Protected");
    }
}
