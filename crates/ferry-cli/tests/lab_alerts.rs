//! JOB-4 alerts end to end in the lab: the operator points the vault's alerts at a webhook with
//! the CLI, checks the channel with a test alert, and when the Chicago site manager stops (it is
//! frozen with SIGSTOP) the vault, a separate process, calls the webhook once. The webhook is an
//! HTTP server this test runs on 127.0.0.1: the receiver an operator would have, not part of
//! Ferry.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Lab, LabOptions};
use serde_json::Value;

/// Resumes a process stopped with SIGSTOP, also when the test fails.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGCONT);
    }
}

/// Alerts received: (X-Ferry-Signature, body).
type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// An HTTP server on 127.0.0.1 taking `POST /hook` in its own runtime (dropped with it).
fn receiver() -> (tokio::runtime::Runtime, String, Received) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let got: Received = Arc::default();
    let g2 = got.clone();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let got = g2.clone();
            async move {
                let sig = headers.get("x-ferry-signature").and_then(|v| v.to_str().ok()).map(str::to_string);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                got.lock().expect("lock").push((sig, v));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (rt, format!("http://{addr}/hook"), got)
}

fn of_kind(got: &Received, kind: &str) -> Vec<Value> {
    got.lock().expect("lock").iter().filter(|(_, v)| v["kind"] == kind).map(|(_, v)| v.clone()).collect()
}

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
