//! JOB-4 alerts end to end in the lab: the operator points the vault's alerts at a webhook with
//! the CLI, checks the channel with a test alert, and when the Chicago site manager stops (it is
//! frozen with SIGSTOP) the vault, a separate process, calls the webhook once. The webhook is an
//! HTTP server this test runs on 127.0.0.1: the receiver an operator would have, not part of
//! Ferry.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

/// Resumes a process stopped with SIGSTOP, also when the test fails.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGCONT);
    }
}

use common::{alerts_of_kind as of_kind, webhook_receiver as receiver};

#[test]
fn job_4_alert_webhook_when_a_lab_site_stops_reporting() {
    let lab = Lab::start(LabOptions::default());
    let (_rt, url, got) = receiver();
    let secret = lab.tmp.path().join("hook-secret");
    std::fs::write(&secret, "lab-hook-secret\n").expect("secret file");

    // Bad input is refused and changes nothing.
    let (code, _, err) = lab.cli(&["alerts-set", "--webhook", "ftp://example.com/hook"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("AlertWebhookUrlInvalid"), "{err}");
    assert_eq!(lab.json(&["alerts-show"])["version"], 0);

    let (code, out, err) =
        lab.cli(&["alerts-set", "--webhook", &url, "--webhook-secret-file", &secret.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed (secret set)"), "{out}");
    let shown = lab.cli(&["alerts-show", "-o", "json"]).1;
    assert!(!shown.contains("lab-hook-secret"), "the secret is never shown: {shown}");

    // The test alert goes through the webhook, signed.
    let r = lab.json(&["alerts-test"]);
    assert_eq!(r["channels"][0]["ok"], true, "{r}");
    let test = of_kind(&got, "Test");
    assert_eq!(test.len(), 1);
    assert!(got.lock().expect("lock")[0].0.as_deref().is_some_and(|s| s.starts_with("sha256=")));

    // Chicago's site manager stops reporting: one alert, about it.
    let site = lab.pid("site-chicago");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(site as i32), nix::sys::signal::Signal::SIGSTOP)
        .expect("stop the site");
    let resume = Continue(site);
    let lost = lab.wait_for("the heartbeat alert", Duration::from_secs(60), || {
        of_kind(&got, "SiteHeartbeatLost").into_iter().next()
    });
    assert_eq!(lost["object"]["name"], "VMM-Chicago", "{lost}");
    assert_eq!(lost["subject"], "[Ferry ferry-lab] Site heartbeat lost: VMM-Chicago");
    drop(resume);
    lab.wait_for("the site to report again", Duration::from_secs(60), || {
        let ev = lab.json(&["event-list", "--kind", "HeartbeatRestored"]);
        ev["items"].as_array().is_some_and(|a| !a.is_empty()).then_some(())
    });
    assert_eq!(of_kind(&got, "SiteHeartbeatLost").len(), 1, "one alert for one loss");
    let sent = lab.json(&["alerts-show", "--deliveries"]);
    let items = sent["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{sent}");
    assert_eq!(items[0]["state"], "Delivered");
}
