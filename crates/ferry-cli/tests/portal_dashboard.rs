//! The portal's overview (JOB-4) and jobs pages (JOB-1) in real headless Chromium against the
//! lab with its protected demo VMs: the figures the page shows are the vault's (compared with
//! `GET /dashboard`), a failed job, a site that stops reporting (configuration issue, Critical
//! event), a job waiting for that site cancelled from the portal, a failed job restarted,
//! filters, CSV and JSON export, the events timeline. The dashboard screenshot is kept under
//! target/portal-artifacts.

mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{admin_token, js_str, Portal};
use common::{Lab, LabOptions};
use serde_json::Value;

/// Resumes a process stopped with SIGSTOP, also when the test fails.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGCONT);
    }
}

/// Differences between the figures on the page and the API's dashboard.
fn mismatches(p: &Portal, d: &Value) -> Vec<String> {
    let tiles = [
        ("#health-normal", &d["health"]["normal"]),
        ("#health-warning", &d["health"]["warning"]),
        ("#health-critical", &d["health"]["critical"]),
        ("#health-na", &d["health"]["not_applicable"]),
        ("#tests-recommended", &d["tests"]["test_recommended"]),
        ("#tests-running", &d["tests"]["running"]),
        ("#tests-done", &d["tests"]["tested"]),
        ("#errors-critical", &d["errors"]["critical"]),
        ("#errors-error", &d["errors"]["error"]),
        ("#errors-warning", &d["errors"]["warning"]),
        ("#jobs-failed", &d["jobs"]["failed"]),
        ("#jobs-in-progress", &d["jobs"]["in_progress"]),
        ("#jobs-waiting", &d["jobs"]["waiting_for_input"]),
    ];
    let mut out = Vec::new();
    for (sel, want) in tiles {
        let shown = p.text_of(&format!("{sel} .value"));
        let want = want.as_u64().map(|n| n.to_string()).unwrap_or_else(|| format!("{want}"));
        if shown != want {
            out.push(format!("{sel}: page {shown}, API {want}"));
        }
    }
    let issues = d["config_issues"].as_array().map(Vec::len).unwrap_or(0);
    if !p.text_of("#config-issues h2").contains(&format!("· {issues}")) {
        out.push(format!("config issues: page {:?}, API {issues}", p.text_of("#config-issues h2")));
    }
    out
}

/// Reload the overview until its figures equal the API's (they move while replication runs).
fn overview_matches_api(p: &Portal, base: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        p.goto(base);
        let d = p.api(token, "/api/v1/vaults/ferry-lab/dashboard");
        let m = mismatches(p, &d);
        if m.is_empty() {
            return d;
        }
        assert!(Instant::now() < deadline, "the overview does not show the vault's figures: {m:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn job_4_dashboard_counts_health_and_jobs() {
    let lab = Lab::start(LabOptions { demo_vms: true, test_copy_interval_ms: Some(2000), ..Default::default() });
    lab.wait_for("the demo VMs to be protected", Duration::from_secs(240), || {
        let items = lab.json(&["item-list"]);
        let a = items["items"].as_array().cloned().unwrap_or_default();
        (a.len() == 3 && a.iter().all(|i| i["state"] == "Protected")).then_some(())
    });
    let token = admin_token(&lab);
    let portal = Portal::open(&lab);
    portal.login(&token);
    let base = portal.path();

    // The figures are the vault's; three replicated VMs, none tested yet.
    let d = overview_matches_api(&portal, &base, &token);
    assert_eq!(d["items"], 3);
    let health_sum: u64 =
        ["normal", "warning", "critical", "not_applicable"].iter().map(|k| d["health"][k].as_u64().unwrap_or(0)).sum();
    assert_eq!(health_sum, 3);
    assert_eq!(portal.text_of("#tests-recommended .value"), "3", "never tested: test recommended");
    assert_eq!(portal.count("#test-status tbody tr"), 3);
    assert!(portal.text_of("#test-status").contains("Test recommended"));
    assert!(portal.count("#events tbody tr") > 0, "recent events are listed");
    assert_eq!(portal.text_of("#jobs-failed .value"), "0");

    // A failed job shows on the overview, with its error on its page, and can be restarted.
    let (code, _, _) = lab.cli(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "no-such-vm"]);
    assert_ne!(code, 0);
    let d = overview_matches_api(&portal, &base, &token);
    assert_eq!(d["jobs"]["failed"], 1);
    assert!(portal.text_of("#dashboard-jobs").contains("Vm action"), "{}", portal.text_of("#dashboard-jobs"));
    portal.click("#jobs-failed a");
    assert!(portal.path().contains("status=Failed"), "{}", portal.path());
    assert_eq!(portal.count("#jobs tbody tr"), 1, "{}", portal.text());
    portal.click("#jobs tbody tr a");
    assert_eq!(portal.text_of("#job-status"), "Failed");
    assert!(portal.text_of("#job-errors").contains("no-such-vm"), "{}", portal.text());
    let failed_job = portal.path();
    portal.click("#restart-job");
    assert!(portal.text_of("#notice").starts_with("Job restarted as"), "{}", portal.text());
    assert_ne!(portal.path(), failed_job);
    assert!(portal.text_of("#job-summary").contains("Restart of"));

    // A site that stops reporting: a configuration issue and a Critical event on the overview.
    let site = lab.pid("site-chicago");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(site as i32), nix::sys::signal::Signal::SIGSTOP)
        .expect("stop the site");
    let resume = Continue(site);
    portal.wait_until(&base, "the site to be reported missing", Duration::from_secs(60), |p| {
        p.text_of("#config-issues").contains("Site VMM-Chicago is not reporting")
            && p.text_of("#errors-critical .value") != "0"
    });
    overview_matches_api(&portal, &base, &token);
    // A job waiting for that site stays in progress until an operator cancels it.
    let job = portal.eval_async(&format!(
        "fetch('/api/v1/vaults/ferry-lab/replicationFabrics/VMM-Chicago/hosts/chi1/vmActions', \
         {{method: 'POST', headers: {{Authorization: 'Bearer ' + {}, 'Content-Type': 'application/json'}}, \
         body: JSON.stringify({{action: 'list'}})}}).then(r => r.json())",
        js_str(&token)
    ));
    let job_id = job["id"].as_str().unwrap_or_else(|| panic!("no job: {job}")).to_string();
    portal.wait_until(&base, "the job in progress", Duration::from_secs(30), |p| {
        p.text_of("#jobs-in-progress .value") != "0"
    });
    portal.click("#jobs-in-progress a");
    assert!(portal.text_of("#jobs").contains("Vm action"), "{}", portal.text());
    portal.wait_until(&format!("{base}/jobs/{job_id}"), "the job to be cancellable", Duration::from_secs(30), |p| {
        p.text_of("#job-status").to_lowercase().contains("progress") && p.exists("#cancel-job")
    });
    portal.click("#cancel-job");
    assert_eq!(portal.text_of("#notice"), "Cancellation requested", "{}", portal.text());
    portal.wait_until(&format!("{base}/jobs/{job_id}"), "the cancellation", Duration::from_secs(30), |p| {
        p.text_of("#job-status") == "Cancelled"
    });
    drop(resume);
    portal.wait_until(&base, "the site to report again", Duration::from_secs(60), |p| {
        !p.text_of("#config-issues").contains("VMM-Chicago is not reporting")
    });

    // Filters, and export of every matching job as CSV and JSON.
    portal.goto(&format!("{base}/jobs"));
    portal.set("#job-filters select[name=operation]", "EnableProtection");
    portal.click("#apply-filters");
    assert_eq!(portal.count("#jobs tbody tr"), 3, "{}", portal.text());
    assert!(portal.text_of("#jobs").contains("web1"));
    let csv_href = portal.eval("document.querySelector('#export-csv').getAttribute('href')");
    let (status, disposition, csv) = portal.fetch(csv_href.as_str().expect("href"));
    assert_eq!(status, 200);
    assert!(disposition.contains("attachment") && disposition.contains("ferry-jobs.csv"), "{disposition}");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,operation,"), "{csv}");
    assert_eq!(lines.len(), 4, "header and the three Enable protection jobs:\n{csv}");
    assert!(lines[1..].iter().all(|l| l.contains(",EnableProtection,")), "{csv}");
    let json_href = portal.eval("document.querySelector('#export-json').getAttribute('href')");
    let (status, _, json) = portal.fetch(json_href.as_str().expect("href"));
    assert_eq!(status, 200);
    let all: Value = serde_json::from_str(&json).expect("JSON export");
    assert_eq!(all.as_array().map(Vec::len), Some(3));
    portal.set("#job-filters select[name=operation]", "");
    portal.set("#job-filters select[name=status]", "Cancelled");
    portal.click("#apply-filters");
    assert_eq!(portal.count("#jobs tbody tr"), 1, "{}", portal.text());

    // The events timeline, filtered by severity.
    portal.goto(&format!("{base}/events?severity=Critical"));
    assert!(portal.text().contains("HeartbeatLost"), "{}", portal.text());
    assert!(!portal.text().contains("ProtectionEnabled"));

    let d = overview_matches_api(&portal, &base, &token);
    assert!(d["jobs"]["failed"].as_u64().unwrap_or(0) >= 2, "the restarted job failed too: {d}");
    let shot = portal.screenshot("dashboard");
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
}
