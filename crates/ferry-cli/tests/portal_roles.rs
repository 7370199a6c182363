//! Roles in the portal (SEC-2), in real headless Chromium against the lab's protected demo VMs:
//! a Reader is offered no change at all, an Operator failover-type operations (also of the
//! lab's recovery plan) and job actions but no configuration change, no plan edit and no
//! disable; the API still refuses what a forged form asks for; forms need this session's
//! anti-forgery value; signing out ends the session.

mod browser;
mod common;

use std::time::Duration;

use browser::{admin_token, js_str, token, Portal};
use common::{Lab, LabOptions};

/// POST a form from the page with the session's anti-forgery value; returns (status, page text).
fn forged_post(p: &Portal, path: &str, with_csrf: bool) -> (u16, String) {
    let js = format!(
        "(() => {{ const b = new URLSearchParams(); \
         if ({with_csrf}) b.set('csrf', document.querySelector('header input[name=csrf]').value); \
         return fetch({}, {{method: 'POST', body: b, credentials: 'same-origin'}}) \
         .then(async r => [r.status, await r.text()]); }})()",
        js_str(path)
    );
    let v = p.eval_async(&js);
    (v[0].as_u64().unwrap_or(0) as u16, v[1].as_str().unwrap_or_default().to_string())
}

#[test]
fn sec_2_portal_reader_and_operator_see_only_their_actions() {
    let lab = Lab::start(LabOptions { demo_vms: true, test_copy_interval_ms: Some(2000), ..Default::default() });
    lab.wait_for("web1 protected with a point", Duration::from_secs(240), || {
        let it = lab.json(&["item-show", "web1"]);
        (it["state"] == "Protected" && it["recovery_points"].as_array().is_some_and(|p| !p.is_empty())).then_some(())
    });
    let web1_id = lab.json(&["item-show", "web1"])["id"].as_str().expect("id").to_string();
    // A failed job, so that restart would be offered.
    let _ = lab.cli(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "no-such-vm"]);
    let failed =
        lab.json(&["job-list", "--status", "Failed"])["items"][0]["id"].as_str().expect("failed job").to_string();

    // Reader: everything visible, nothing offered.
    let reader = Portal::open(&lab);
    reader.login(&token(&lab, "portal-reader", "reader"));
    let base = reader.path();
    assert_eq!(reader.text_of("#role"), "Reader");
    assert!(reader.text_of("#health").contains("3 replicated items"));
    let plan_id = lab.json(&["plan-show", "lab-app"])["id"].as_str().expect("plan id").to_string();
    let plan_page = format!("{base}/plans/{plan_id}");
    reader.click("nav.main a[href$='/plans']");
    assert!(reader.text_of("#plan-lab-app").contains("db1"), "{}", reader.text());
    assert_eq!(reader.count("main form"), 0, "no form for a reader:\n{}", reader.text());
    reader.goto(&plan_page);
    assert!(reader.text_of("#group-3").contains("web1"), "{}", reader.text());
    assert!(reader.text_of("#group-3-pre-1").contains("Check the app tier"), "{}", reader.text());
    assert_eq!(reader.count("main form"), 0, "no form for a reader:\n{}", reader.text());
    reader.goto(&format!("{base}/prepare"));
    assert!(reader.text_of("#policies").contains("lab-gold"), "a reader sees the configuration");
    assert_eq!(reader.count("main form"), 0, "no form for a reader:\n{}", reader.text());
    reader.goto(&format!("{base}/replicate"));
    reader.choose("#source-cloud", "VMM-NewYork / GoldCloud1");
    reader.click("#show-vms");
    assert!(reader.text_of("#vm-list").contains("web1"));
    assert_eq!(reader.count("#vm-list input[type=checkbox]"), 0);
    assert!(!reader.exists("#enable"));
    reader.goto(&format!("{base}/items/{web1_id}"));
    assert_eq!(reader.count("form.op"), 0, "{}", reader.text_of("#operations"));
    assert!(reader.text_of("#no-operations").contains("Reader"), "{}", reader.text_of("#operations"));
    reader.goto(&format!("{base}/jobs/{failed}"));
    assert!(!reader.exists("#job-actions"));
    // The API refuses what a forged form asks for.
    let (status, page) = forged_post(&reader, &format!("{base}/items/{web1_id}/testFailover"), true);
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("needs the Operator role"), "{page}");
    let (status, _) = forged_post(&reader, &format!("{base}/prepare/keys"), true);
    assert_eq!(status, 403);
    drop(reader);

    // Operator: failover-type operations and job actions, no configuration, no disable.
    let operator = Portal::open(&lab);
    operator.login(&token(&lab, "portal-operator", "operator"));
    operator.goto(&format!("{base}/items/{web1_id}"));
    for op in ["testFailover", "plannedFailover", "unplannedFailover"] {
        assert!(operator.exists(&format!("#op-{op}")), "{op}:\n{}", operator.text_of("#operations"));
    }
    assert!(!operator.exists("#op-disableProtection"), "disable needs a Contributor");
    operator.goto(&format!("{base}/prepare"));
    assert_eq!(operator.count("main form"), 0);
    operator.goto(&format!("{base}/jobs/{failed}"));
    assert!(operator.exists("#restart-job"), "an operator may restart a failed job");
    // The lab's plan: its operations (once every VM has a point), no edit, no create, no delete.
    lab.wait_for("lab-app to allow a test failover", Duration::from_secs(240), || {
        let p = lab.json(&["plan-show", "lab-app"]);
        p["allowed_operations"].as_array().is_some_and(|a| a.iter().any(|o| o == "testFailover")).then_some(())
    });
    operator.goto(&plan_page);
    for op in ["testFailover", "plannedFailover", "unplannedFailover"] {
        assert!(operator.exists(&format!("#op-{op}")), "{op}:\n{}", operator.text_of("#operations"));
    }
    for edit in ["#add-group", "#add-step-1", "#remove-vm-db1", "#move-group-2-up", "#delete-plan", "#description-form"]
    {
        assert!(!operator.exists(edit), "{edit} needs a Contributor");
    }
    operator.goto(&format!("{base}/plans"));
    assert!(!operator.exists("#create-plan-form"), "creating a plan needs a Contributor");
    drop(operator);

    // Contributor: everything, including disable and configuration.
    let admin = Portal::open(&lab);
    admin.login(&admin_token(&lab));
    admin.goto(&format!("{base}/items/{web1_id}"));
    assert!(admin.exists("#op-disableProtection") && admin.exists("#op-testFailover"));
    admin.goto(&format!("{base}/prepare"));
    for form in ["#goal-form", "#issue-key-form", "#policy-form", "#associate-form", "#network-form", "#storage-form"] {
        assert!(admin.exists(form), "{form} for a contributor");
    }
    admin.goto(&plan_page);
    for edit in ["#add-group", "#add-step-1", "#remove-vm-db1", "#move-group-2-up", "#delete-plan", "#op-testFailover"]
    {
        assert!(admin.exists(edit), "{edit} for a contributor");
    }
    // A form without this session's anti-forgery value is refused, nothing changes.
    let (status, page) = forged_post(&admin, &format!("{base}/prepare/keys"), false);
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("InvalidFormToken"), "{page}");
    assert!(lab.json(&["key-list"]).as_array().is_some_and(|k| k.len() == 2), "no key was issued");

    // Signing out ends the session.
    admin.click("#logout");
    assert!(admin.path().starts_with("/portal/login"), "{}", admin.path());
    admin.goto(&format!("{base}/items/{web1_id}"));
    assert!(admin.path().starts_with("/portal/login"), "{}", admin.path());
    assert!(admin.path().contains("next="), "the page asked for comes back after signing in");
}
