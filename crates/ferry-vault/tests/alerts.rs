//! JOB-4 alerts through the vault's HTTPS API, against receivers the test runs on 127.0.0.1:
//! an HTTP server that takes the webhook calls and a minimal SMTP server that takes the e-mails.
//! They are the test's receivers (what an operator's chat bridge or mail relay would be), not
//! stand-ins for any part of Ferry: the vault, its store, its delivery task and its clients are
//! the real ones. Sites are played by the test through the agent API, as in the other vault
//! tests.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry_store::DocKind;
use ferry_types::event::Event;
use ferry_types::job::{Job, JobStatus};
use ferry_types::site_protocol::{CommandResult, SiteCommandEnvelope};
use ferry_types::Page;
use hmac::Mac;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

const SETTINGS: &str = "/api/v1/vaults/v1/alertSettings";

// ---------------------------------------------------------------------------------------------
// The test's webhook receiver

/// One webhook call as received.
#[derive(Debug, Clone)]
struct Call {
    signature: Option<String>,
    alert_id_header: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Call {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Clone, Default)]
struct HookState {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Statuses to answer, in order; 200 when empty.
    answers: Arc<Mutex<VecDeque<u16>>>,
}

/// An HTTP server on 127.0.0.1 taking `POST /hook`; stops when dropped.
struct Hook {
    url: String,
    state: HookState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hook {
    async fn start() -> Hook {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    async fn start_on(addr: SocketAddr) -> Hook {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind webhook receiver");
        let addr = listener.local_addr().expect("addr");
        let state = HookState::default();
        async fn take(State(s): State<HookState>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
            s.calls.lock().expect("lock").push(Call {
                signature: h("x-ferry-signature"),
                alert_id_header: h("x-ferry-alert-id"),
                content_type: h("content-type"),
                body: body.to_vec(),
            });
            let code = s.answers.lock().expect("lock").pop_front().unwrap_or(200);
            StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
        }
        let app = axum::Router::new().route("/hook", axum::routing::post(take)).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hook { url: format!("http://{addr}/hook"), state, task }
    }

    fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().expect("lock").clone()
    }

    fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.calls().iter().map(Call::json).filter(|a| a["kind"] == kind).collect()
    }

    fn answer(&self, codes: &[u16]) {
        self.state.answers.lock().expect("lock").extend(codes.iter().copied());
    }

    /// Wait until `n` calls carry alerts of `kind`; panics after `secs`.
    async fn wait_kind(&self, kind: &str, n: usize, secs: u64) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.of_kind(kind);
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} {kind} alert(s) expected within {secs} s, got {}: {:?}",
                got.len(),
                self.calls().iter().map(Call::json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A loopback address nothing listens on (bound, then released).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

// ---------------------------------------------------------------------------------------------
// The test's SMTP receiver

/// One message as the SMTP receiver got it.
#[derive(Debug, Clone)]
struct Mail {
    from: String,
    rcpt: Vec<String>,
    data: String,
}

/// A minimal SMTP server on 127.0.0.1 (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS, no
/// AUTH) that records each message; stops when dropped.
struct Smtp {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn angle(arg: &str) -> String {
    let a = arg.split_once(':').map(|x| x.1).unwrap_or(arg).trim();
    a.trim_start_matches('<').split('>').next().unwrap_or("").to_string()
}

impl Smtp {
    async fn start() -> Smtp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind smtp receiver");
        let addr = listener.local_addr().expect("addr");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let m2 = mails.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let mails = m2.clone();
                tokio::spawn(async move {
                    let _ = Self::session(sock, mails).await;
                });
            }
        });
        Smtp { addr, mails, task }
    }

    async fn session(sock: tokio::net::TcpStream, mails: Arc<Mutex<Vec<Mail>>>) -> std::io::Result<()> {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 receiver.test ESMTP\r\n").await?;
        let (mut from, mut rcpt) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_string();
            let verb = cmd.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => w.write_all(b"250-receiver.test\r\n250 8BITMIME\r\n").await?,
                "HELO" | "NOOP" => w.write_all(b"250 ok\r\n").await?,
                "RSET" => {
                    from.clear();
                    rcpt.clear();
                    w.write_all(b"250 ok\r\n").await?
                }
                "MAIL" => {
                    from = angle(&cmd);
                    w.write_all(b"250 ok\r\n").await?
                }
                "RCPT" => {
                    rcpt.push(angle(&cmd));
                    w.write_all(b"250 ok\r\n").await?
                }
                "DATA" => {
                    w.write_all(b"354 go ahead\r\n").await?;
                    let mut data = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await? == 0 {
                            return Ok(());
                        }
                        if line == ".\r\n" || line == ".\n" {
                            break;
                        }
                        data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    }
                    mails.lock().expect("lock").push(Mail {
                        from: std::mem::take(&mut from),
                        rcpt: std::mem::take(&mut rcpt),
                        data,
                    });
                    w.write_all(b"250 queued\r\n").await?
                }
                "QUIT" => {
                    w.write_all(b"221 bye\r\n").await?;
                    return Ok(());
                }
                _ => w.write_all(b"502 not implemented\r\n").await?,
            }
        }
    }

    async fn wait(&self, n: usize, secs: u64) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.mails.lock().expect("lock").clone();
            if got.len() >= n {
                return got;
            }
            assert!(tokio::time::Instant::now() < deadline, "{n} mails expected within {secs} s, got {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A header of a message (unfolded).
fn header(data: &str, name: &str) -> Option<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or(data);
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// The text of a message, decoded from quoted-printable when it says so.
fn body_text(data: &str) -> String {
    let (_, body) = data.split_once("\r\n\r\n").unwrap_or(("", data));
    let qp = header(data, "Content-Transfer-Encoding").is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"));
    if !qp {
        return body.to_string();
    }
    let joined = body.replace("=\r\n", "");
    let b = joined.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'=', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Vault helpers

/// Store a cloud pair and a Protected item of it with one recovery point (the pairing and
/// enable-protection jobs are tested elsewhere).
async fn protected_item(tv: &TestVault, vault: Uuid, ny: &FakeSite, chi: &FakeSite, name: &str) -> Uuid {
    let pair = Uuid::new_v4();
    let m = json!({"id": pair, "source": {"fabric": ny.fabric_id, "id": "ny-gold"},
        "target": {"fabric": chi.fabric_id, "id": "chi-gold"}, "policy": Uuid::new_v4(),
        "created_at": "2024-01-01T00:00:00Z"});
    tv.store().put_doc(DocKind::ContainerMapping, vault, &pair.to_string(), None, None, &m, None).await.expect("pair");
    let id = Uuid::new_v4();
    // Protected a moment ago, with its first point (a replicating item is never without one).
    let now = chrono::Utc::now();
    let it = json!({
        "id": id, "vault_id": vault, "name": name, "vm_id": format!("vm-{name}"), "container_mapping": pair,
        "policy": Uuid::new_v4(),
        "source": {"fabric": ny.fabric_id, "cloud": "ny-gold", "host": "ny-h1", "host_name": "ny-h1.lab"},
        "target": {"fabric": chi.fabric_id, "cloud": "chi-gold", "host": "chi-h1", "host_name": "chi-h1.lab"},
        "direction": "Forward", "state": "Protected", "health": "Normal", "created_at": now,
        "stats": {"latest_point": now, "last_sync": now},
        "recovery_points": [{"id": "rp1", "time": now, "app_consistent": false, "size_bytes": 1}],
        "definition": {"name": name, "disks": [{"target": "vda", "path": format!("/s/{name}.qcow2"), "format": "qcow2"}]}
    });
    tv.store()
        .put_doc(
            DocKind::ProtectedItem,
            vault,
            &id.to_string(),
            Some(&pair.to_string()),
            Some(&format!("vm:{}/vm-{name}", ny.fabric_id)),
            &it,
            None,
        )
        .await
        .expect("item");
    id
}

/// The source site reports the item's replication in `phase`, with statistics that differ from
/// the previous report (so the item is written again even when its state stays the same).
async fn report_phase(site: &FakeSite, item: Uuid, phase: &str) {
    static CYCLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let cycles = CYCLES.fetch_add(1, Ordering::SeqCst);
    let rep = json!({"provider_id": site.provider_id, "version": SITE_VERSION, "inventory": site.inventory,
        "replication": [{"item": item, "role": "Source", "phase": phase, "cycles_ok": cycles}]});
    let _: Value = site.client.post("/api/v1/agent/report", &rep).await.expect("report");
}

async fn item_health(tv: &TestVault, item: Uuid) -> String {
    let it: Value = tv.admin.get(&format!("/api/v1/vaults/v1/replicationProtectedItems/{item}")).await.expect("item");
    it["health"].as_str().unwrap_or_default().to_string()
}

async fn events(tv: &TestVault, kind: &str) -> Vec<Event> {
    let p: Page<Event> =
        tv.admin.get(&format!("/api/v1/vaults/v1/events?kind={kind}&limit=1000")).await.expect("events");
    p.items
}

async fn deliveries(tv: &TestVault) -> Vec<Value> {
    let p: Value = tv.admin.get("/api/v1/vaults/v1/alerts?limit=1000").await.expect("alerts");
    p["items"].as_array().cloned().unwrap_or_default()
}

/// Poll until `f` holds (panics after `secs`).
async fn eventually<F, Fut>(what: &str, secs: u64, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Background tasks the test runs for its sites; aborted when dropped (also on failure).
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The site reports every 200 ms unless `silent` is set (its heartbeat).
fn heartbeat(site: &FakeSite, silent: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let site = site.clone();
    tokio::spawn(async move {
        loop {
            if !silent.load(Ordering::SeqCst) {
                let rep =
                    json!({"provider_id": site.provider_id, "version": SITE_VERSION, "inventory": site.inventory});
                let _ = site.client.post::<_, Value>("/api/v1/agent/report", &rep).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The site answers every command it is sent with a failure.
fn failing_site(site: &FakeSite) -> tokio::task::JoinHandle<()> {
    let site = site.clone();
    tokio::spawn(async move {
        let mut answered = std::collections::HashSet::new();
        loop {
            let cmds: Vec<SiteCommandEnvelope> = match site.client.get("/api/v1/agent/commands?wait=1").await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            for c in cmds.into_iter().filter(|c| answered.insert(c.id)) {
                let res = CommandResult {
                    ok: false,
                    error: Some(ferry_types::ApiError::new("HostUnreachable", "The host agent does not answer")),
                    output: Value::Null,
                };
                let _ = site.client.post::<_, Value>(&format!("/api/v1/agent/commands/{}/result", c.id), &res).await;
            }
        }
    })
}

fn fast(c: &mut ferry_vault::VaultConfig) {
    c.alert_retry_base = Duration::from_millis(100);
    c.alert_retry_max = Duration::from_millis(400);
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_4_alert_webhook_on_critical_health_heartbeat_and_failed_failover() {
    let tv = start_vault_with(|c| {
        fast(c);
        c.heartbeat_timeout = Duration::from_secs(2);
    })
    .await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let chi_silent = Arc::new(AtomicBool::new(false));
    let _tasks = Tasks(vec![
        heartbeat(&ny, Arc::new(AtomicBool::new(false))),
        heartbeat(&chi, chi_silent.clone()),
        failing_site(&ny),
        failing_site(&chi),
    ]);
    let hook = Hook::start().await;
    let secret = "s3cret-shared-with-the-receiver";
    let s: Value = tv
        .admin
        .put(SETTINGS, &json!({"webhooks": [{"url": hook.url, "secret": secret}]}))
        .await
        .expect("alert settings");
    assert_eq!(s["webhooks"][0]["secret_set"], true);
    assert_eq!(s["triggers"], json!({"critical_health": true, "site_heartbeat_lost": true, "failover_failed": true}));
    let item = protected_item(&tv, v.id, &ny, &chi, "web1").await;

    // Critical health: one alert when the health turns Critical, none while it stays Critical.
    report_phase(&ny, item, "ResyncRequired").await;
    assert_eq!(item_health(&tv, item).await, "Critical");
    let got = hook.wait_kind("CriticalHealth", 1, 10).await;
    report_phase(&ny, item, "ResyncRequired").await;
    let a = &got[0];
    let call = hook.calls().into_iter().find(|c| c.json()["kind"] == "CriticalHealth").expect("call");
    assert_eq!(call.signature.as_deref(), Some(hmac_hex(secret, &call.body).as_str()), "signed body");
    assert_ne!(call.signature, Some(hmac_hex("another secret", &call.body)));
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    assert_eq!(call.alert_id_header.as_deref(), a["id"].as_str());
    let keys: Vec<&str> = a.as_object().expect("object").keys().map(String::as_str).collect();
    for k in ["id", "vault", "kind", "severity", "subject", "message", "object", "raisedAt"] {
        assert!(keys.contains(&k), "payload has {k}: {a}");
    }
    assert_eq!(a["vault"], json!({"id": v.id, "name": "v1"}));
    assert_eq!(a["severity"], "Critical");
    assert_eq!(a["subject"], "[Ferry v1] Critical health: web1");
    assert_eq!(a["object"], json!({"type": "ProtectedItem", "id": item.to_string(), "name": "web1"}));
    assert!(a["message"].as_str().is_some_and(|m| m.contains("Resynchronization is required")), "{a}");
    assert!(chrono::DateTime::parse_from_rfc3339(a["raisedAt"].as_str().expect("raisedAt")).is_ok());
    // It recovers, then becomes Critical again: a second alert, with its own id.
    report_phase(&ny, item, "Resynchronizing").await;
    assert_ne!(item_health(&tv, item).await, "Critical");
    report_phase(&ny, item, "Replicating").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.of_kind("CriticalHealth").len(), 1, "exactly one alert for the first edge");
    report_phase(&ny, item, "ResyncRequired").await;
    let got = hook.wait_kind("CriticalHealth", 2, 10).await;
    assert_ne!(got[0]["id"], got[1]["id"]);
    assert_eq!(events(&tv, "HealthCritical").await.len(), 2);
    assert_eq!(events(&tv, "HealthRecovered").await.len(), 1);
    report_phase(&ny, item, "Resynchronizing").await;
    report_phase(&ny, item, "Replicating").await;

    // Lost heartbeat: one alert while the site stays silent, another after it came back and went
    // silent again.
    chi_silent.store(true, Ordering::SeqCst);
    let got = hook.wait_kind("SiteHeartbeatLost", 1, 15).await;
    assert_eq!(got[0]["object"], json!({"type": "Fabric", "id": chi.fabric_id.to_string(), "name": "chi"}));
    assert_eq!(got[0]["subject"], "[Ferry v1] Site heartbeat lost: chi");
    assert_eq!(got[0]["severity"], "Critical");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook.of_kind("SiteHeartbeatLost").len(), 1, "one alert per loss");
    chi_silent.store(false, Ordering::SeqCst);
    eventually("the heartbeat to be restored", 15, || async { !events(&tv, "HeartbeatRestored").await.is_empty() })
        .await;
    chi_silent.store(true, Ordering::SeqCst);
    hook.wait_kind("SiteHeartbeatLost", 2, 15).await;
    chi_silent.store(false, Ordering::SeqCst);
    assert!(hook.of_kind("SiteHeartbeatLost").iter().all(|a| a["object"]["name"] == "chi"), "ny kept reporting");

    // Failed failover: the test failover's site commands fail, the job ends Failed.
    let j: Job = tv
        .admin
        .post(&format!("/api/v1/vaults/v1/replicationProtectedItems/{item}/testFailover"), &json!({}))
        .await
        .expect("test failover");
    let j = wait_job(&tv.admin, "v1", j.id, 30, |j| j.status.is_terminal()).await;
    assert_eq!(j.status, JobStatus::Failed, "{j:?}");
    let got = hook.wait_kind("FailoverFailed", 1, 10).await;
    assert_eq!(got[0]["object"], json!({"type": "ProtectedItem", "id": item.to_string(), "name": "web1"}));
    assert_eq!(got[0]["severity"], "Error");
    let msg = got[0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("TestFailover") && msg.contains(&j.id.to_string()), "{msg}");
    assert!(msg.contains(&j.errors[0].message), "the job's error is in the alert: {msg}");
    // Another job that fails raises no alert.
    let other: Job = tv
        .admin
        .post("/api/v1/vaults/v1/replicationFabrics/ny/hosts/ny-h1/vmActions", &json!({"action": "start", "vm": "x"}))
        .await
        .expect("vm action");
    let other = wait_job(&tv.admin, "v1", other.id, 30, |j| j.status.is_terminal()).await;
    assert_eq!(other.status, JobStatus::Failed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.of_kind("FailoverFailed").len(), 1);
    assert_eq!(events(&tv, "JobFailed").await.len(), 2);

    // Every alert was delivered once, and the outbox says so.
    let ids: std::collections::HashSet<String> =
        hook.calls().iter().map(|c| c.json()["id"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(ids.len(), hook.calls().len(), "no alert was delivered twice");
    assert_eq!(hook.calls().len(), 5);
    let out = deliveries(&tv).await;
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|d| d["state"] == "Delivered" && d["attempts"] == 1), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_4_alert_retried_after_the_receiver_fails_and_triggers_can_be_turned_off() {
    let tv = start_vault_with(fast).await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let hook = Hook::start().await;
    hook.answer(&[500, 503]);
    let _: Value = tv.admin.put(SETTINGS, &json!({"webhooks": [{"url": hook.url}]})).await.expect("settings");
    let item = protected_item(&tv, v.id, &ny, &chi, "db1").await;
    report_phase(&ny, item, "ResyncRequired").await;
    // 500, 503, then 200: three calls of the same alert, the last one delivers it.
    eventually("delivery after two failures", 15, || async {
        deliveries(&tv).await.first().is_some_and(|d| d["state"] == "Delivered")
    })
    .await;
    let calls = hook.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c.body == calls[0].body), "the same alert each time");
    assert!(calls.iter().all(|c| c.signature.is_none()), "no secret, no signature");
    let d = &deliveries(&tv).await[0];
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["channel"], format!("webhook:{}", hook.url));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hook.calls().len(), 3, "nothing more after delivery");

    // With the trigger off, a new edge raises the event but no alert.
    let s: Value = tv.admin.get(SETTINGS).await.expect("settings");
    let mut body = json!({"webhooks": [{"url": hook.url}], "triggers": {"critical_health": false}});
    let (status, _) = raw_request(
        &tv,
        reqwest::Method::PUT,
        SETTINGS,
        Some(&tv.admin_token),
        &[("If-Match", &s["version"].to_string())],
        Some(("application/json", serde_json::to_vec(&body).expect("json"))),
    )
    .await;
    assert_eq!(status, 200);
    report_phase(&ny, item, "Resynchronizing").await;
    report_phase(&ny, item, "Replicating").await;
    report_phase(&ny, item, "ResyncRequired").await;
    assert_eq!(events(&tv, "HealthCritical").await.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.calls().len(), 3);
    assert_eq!(tv.store().count("alert_outbox").await.expect("count"), 1);
    // Back on (the default): the next edge is sent.
    body["triggers"] = json!({});
    let _: Value = tv.admin.put(SETTINGS, &body).await.expect("settings");
    report_phase(&ny, item, "Resynchronizing").await;
    report_phase(&ny, item, "Replicating").await;
    report_phase(&ny, item, "ResyncRequired").await;
    hook.wait_kind("CriticalHealth", 4, 10).await;
}

/// What the first vault run hands to the second.
struct Phase1 {
    alert_id: String,
    hook_addr: SocketAddr,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_4_alert_outbox_survives_a_vault_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let hook_addr = free_addr();
    // Phase 1 in its own runtime, dropped afterwards: the vault's tasks die with it, like a
    // killed process, while the alert it raised waits in the outbox (the receiver is down).
    let p1 = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let out = rt.block_on(async {
            let tv = start_vault_in(&path, fast).await;
            let v = create_vault(&tv.admin, "v1").await;
            let ny = register_site(&tv, "v1", "ny", true).await;
            let chi = register_site(&tv, "v1", "chi", true).await;
            let url = format!("http://{hook_addr}/hook");
            let _: Value = tv.admin.put(SETTINGS, &json!({"webhooks": [{"url": url}]})).await.expect("settings");
            let item = protected_item(&tv, v.id, &ny, &chi, "app1").await;
            report_phase(&ny, item, "ResyncRequired").await;
            eventually("a failed attempt", 15, || async {
                deliveries(&tv).await.first().is_some_and(|d| d["attempts"].as_u64().unwrap_or(0) >= 2)
            })
            .await;
            let d = &deliveries(&tv).await[0];
            assert_eq!(d["state"], "Pending");
            assert!(d["last_error"].as_str().is_some_and(|e| e.contains("Cannot call the webhook")), "{d}");
            tv.handle.shutdown().await;
            Phase1 { alert_id: d["alert"]["id"].as_str().expect("id").to_string(), hook_addr }
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        out
    })
    .join()
    .expect("phase 1");

    // Phase 2: the receiver is up, a new vault on the same data directory delivers the alert.
    let hook = Hook::start_on(p1.hook_addr).await;
    let tv = start_vault_in(dir.path(), fast).await;
    let got = hook.wait_kind("CriticalHealth", 1, 15).await;
    assert_eq!(got[0]["id"], p1.alert_id.as_str(), "the alert raised before the restart");
    eventually("the outbox to record the delivery", 10, || async {
        deliveries(&tv).await.first().is_some_and(|d| d["state"] == "Delivered")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.calls().len(), 1, "delivered once");
    assert_eq!(events(&tv, "HealthCritical").await.len(), 1, "the restart raised nothing new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_4_alert_undeliverable_for_24_hours_is_dropped_with_a_warning() {
    let clock = Arc::new(ferry_vault::clock::OffsetClock::default());
    let c2 = clock.clone();
    let tv = start_vault_with(move |c| {
        fast(c);
        c.clock = c2;
    })
    .await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let hook = Hook::start().await;
    hook.answer(&[500; 1000]);
    let body = json!({"webhooks": [{"url": hook.url}], "triggers": {"site_heartbeat_lost": false}});
    let _: Value = tv.admin.put(SETTINGS, &body).await.expect("settings");
    let item = protected_item(&tv, v.id, &ny, &chi, "web1").await;
    report_phase(&ny, item, "ResyncRequired").await;
    eventually("failed attempts", 10, || async { hook.calls().len() >= 2 }).await;
    assert!(events(&tv, "AlertDropped").await.is_empty());
    clock.advance(chrono::Duration::hours(25));
    eventually("the alert to be dropped", 15, || async {
        deliveries(&tv).await.first().is_some_and(|d| d["state"] == "Dropped")
    })
    .await;
    let warn = events(&tv, "AlertDropped").await;
    assert_eq!(warn.len(), 1);
    assert_eq!(warn[0].severity, ferry_types::event::Severity::Warning);
    assert!(warn[0].message.contains("Critical health: web1") && warn[0].message.contains("HTTP 500"), "{warn:?}");
    let n = hook.calls().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hook.calls().len(), n, "no attempt after the drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_4_alert_settings_bad_input_refused_and_unchanged() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let never: Value = tv.admin.get(SETTINGS).await.expect("defaults");
    assert_eq!(never["version"], 0);
    assert_eq!(never["webhooks"], json!([]));
    assert_eq!(
        never["triggers"],
        json!({"critical_health": true, "site_heartbeat_lost": true, "failover_failed": true})
    );
    let good = json!({
        "webhooks": [{"url": "https://hooks.example.com/ferry", "secret": "hook-secret-1"}],
        "email": {"smtp_host": "smtp.example.com", "smtp_port": 587, "starttls": true, "username": "ferry",
                  "password": "smtp-password-1", "from": "ferry@example.com", "to": ["ops@example.com"]},
        "triggers": {"failover_failed": false}
    });
    let set: Value = tv.admin.put(SETTINGS, &good).await.expect("set");
    assert_eq!(set["version"], 1);
    let before_raw = tv.admin.get_text(SETTINGS).await.expect("get");
    assert!(!before_raw.contains("hook-secret-1") && !before_raw.contains("smtp-password-1"), "{before_raw}");
    let before: Value = serde_json::from_str(&before_raw).expect("json");
    assert_eq!(before["webhooks"][0]["secret_set"], true);
    assert_eq!(before["email"]["password_set"], true);
    assert_eq!(before["triggers"]["failover_failed"], false);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let bad: Vec<(Value, &str)> = vec![
        (with(&|b| b["webhooks"][0]["url"] = json!("ftp://hooks.example.com/x")), "AlertWebhookUrlInvalid"),
        (with(&|b| b["webhooks"][0]["url"] = json!("https:///no-host")), "AlertWebhookUrlInvalid"),
        (with(&|b| b["webhooks"][0]["url"] = json!("not a url")), "AlertWebhookUrlInvalid"),
        (with(&|b| b["webhooks"][0]["url"] = json!("https://u:p@hooks.example.com/")), "AlertWebhookUrlInvalid"),
        (with(&|b| b["email"]["to"] = json!(["ops@example.com", "no-at-sign"])), "AlertEmailAddressInvalid"),
        (with(&|b| b["email"]["from"] = json!("ferry@")), "AlertEmailAddressInvalid"),
        (with(&|b| b["email"]["to"] = json!([])), "AlertSettingsInvalid"),
        (with(&|b| b["email"]["smtp_host"] = json!("smtp example com")), "AlertSmtpRelayInvalid"),
        (with(&|b| b["email"]["smtp_port"] = json!(0)), "AlertSmtpRelayInvalid"),
        (with(&|b| b["email"]["smtp_port"] = json!(70000)), "InvalidBody"),
        (with(&|b| b["email"]["starttls"] = json!(false)), "AlertSettingsInvalid"),
        (
            with(&|b| b["webhooks"] = json!([{"url": "https://a.example/x"}, {"url": "https://a.example/x"}])),
            "AlertSettingsInvalid",
        ),
        (with(&|b| b["triggers"]["sometimes"] = json!(true)), "InvalidBody"),
        (with(&|b| b["webhooks"][0]["extra"] = json!(1)), "InvalidBody"),
    ];
    for (body, code) in bad {
        let e = expect_err(tv.admin.put::<_, Value>(SETTINGS, &body).await);
        assert_eq!(e, (400, code.to_string()), "{body}");
    }
    // A stale version, and roles that may not change the settings.
    let (status, e) = raw_request(
        &tv,
        reqwest::Method::PUT,
        SETTINGS,
        Some(&tv.admin_token),
        &[("If-Match", "0")],
        Some(("application/json", serde_json::to_vec(&good).expect("json"))),
    )
    .await;
    assert_eq!((status, e["code"].as_str()), (412, Some("VersionMismatch")));
    let (reader, _) = make_token(&tv.admin, "r", "Reader").await;
    let (operator, _) = make_token(&tv.admin, "o", "Operator").await;
    for t in [&reader, &operator] {
        let c = tv.client(Some(t));
        assert_eq!(expect_err(c.put::<_, Value>(SETTINGS, &good).await).0, 403);
        let seen: Value = c.get(SETTINGS).await.expect("readers read");
        assert_eq!(seen, before);
    }
    assert_eq!(
        expect_err(tv.client(Some(&reader)).post::<_, Value>(&format!("{SETTINGS}/test"), &json!({})).await).0,
        403
    );
    let after: Value = tv.admin.get(SETTINGS).await.expect("get");
    assert_eq!(after, before, "refused changes changed nothing");
    assert_eq!(events(&tv, "AlertSettingsUpdated").await.len(), 1);

    // An absent secret is kept, an empty one removed.
    let mut keep = good.clone();
    keep["webhooks"][0].as_object_mut().expect("obj").remove("secret");
    keep["email"].as_object_mut().expect("obj").remove("password");
    let kept: Value = tv.admin.put(SETTINGS, &keep).await.expect("keep");
    assert_eq!(
        (kept["webhooks"][0]["secret_set"].clone(), kept["email"]["password_set"].clone()),
        (json!(true), json!(true))
    );
    let mut clear = keep.clone();
    clear["webhooks"][0]["secret"] = json!("");
    clear["email"] = Value::Null;
    let cleared: Value = tv.admin.put(SETTINGS, &clear).await.expect("clear");
    assert_eq!(cleared["webhooks"][0]["secret_set"], false);
    assert!(cleared.get("email").is_none(), "{cleared}");
    assert_eq!(cleared["version"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_4_alert_email_through_smtp_relay_and_test_alert_per_channel() {
    let tv = start_vault_with(fast).await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let smtp = Smtp::start().await;
    let dead = format!("http://{}/hook", free_addr());
    let settings = json!({
        "webhooks": [{"url": dead}],
        "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp.addr.port(), "from": "ferry@dr.example.com",
                  "to": ["ops@example.com", "oncall@example.com"]}
    });
    let _: Value = tv.admin.put(SETTINGS, &settings).await.expect("settings");

    // The test alert reports each channel: the e-mail goes out, the webhook nobody serves fails.
    let (operator, _) = make_token(&tv.admin, "o", "Operator").await;
    let r: Value = tv.client(Some(&operator)).post(&format!("{SETTINGS}/test"), &json!({})).await.expect("test alert");
    let chans = r["channels"].as_array().cloned().unwrap_or_default();
    assert_eq!(chans.len(), 2, "{r}");
    let by = |name: &str| chans.iter().find(|c| c["channel"] == name).cloned().unwrap_or_default();
    assert_eq!(by("email")["ok"], true, "{r}");
    let hook = by(&format!("webhook:{dead}"));
    assert_eq!(hook["ok"], false);
    assert!(hook["error"].as_str().is_some_and(|e| e.contains("Cannot call the webhook")), "{hook}");
    let mails = smtp.wait(1, 10).await;
    let m = &mails[0];
    assert_eq!(m.from, "ferry@dr.example.com");
    assert_eq!(m.rcpt, vec!["ops@example.com", "oncall@example.com"]);
    assert_eq!(header(&m.data, "Subject").as_deref(), Some("[Ferry v1] Test alert"));
    assert_eq!(header(&m.data, "X-Ferry-Alert-Id").as_deref(), r["alert"]["id"].as_str());
    assert!(header(&m.data, "To").is_some_and(|t| t.contains("ops@example.com") && t.contains("oncall@example.com")));
    assert!(deliveries(&tv).await.is_empty(), "a test alert is not queued");

    // A real alert by e-mail: subject, recipients and the alert's fields in the text.
    let item = protected_item(&tv, v.id, &ny, &chi, "db1").await;
    report_phase(&ny, item, "ResyncRequired").await;
    let mails = smtp.wait(2, 15).await;
    let m = &mails[1];
    assert_eq!(header(&m.data, "Subject").as_deref(), Some("[Ferry v1] Critical health: db1"));
    assert_eq!(m.rcpt, vec!["ops@example.com", "oncall@example.com"]);
    let text = body_text(&m.data);
    assert!(text.contains("Resynchronization is required"), "{text}");
    assert!(text.contains(&format!("ProtectedItem db1 ({item})")) && text.contains("CriticalHealth"), "{text}");
    eventually("the e-mail to be recorded as delivered", 10, || async {
        deliveries(&tv).await.iter().any(|d| d["channel"] == "email" && d["state"] == "Delivered")
    })
    .await;
    let webhook = deliveries(&tv).await.into_iter().find(|d| d["channel"] != "email").expect("webhook row");
    assert_eq!(webhook["state"], "Pending", "the dead webhook is retried, apart from the e-mail");
    assert_eq!(smtp.mails.lock().expect("lock").len(), 2, "the e-mail is not sent again");

    // STARTTLS is required when on: a relay that does not offer it gets no message (and so no
    // credentials).
    let tls = json!({"email": {"smtp_host": "127.0.0.1", "smtp_port": smtp.addr.port(), "starttls": true,
        "username": "ferry", "password": "smtp-pw", "from": "ferry@dr.example.com", "to": ["ops@example.com"]}});
    let _: Value = tv.admin.put(SETTINGS, &tls).await.expect("starttls settings");
    let r: Value = tv.admin.post(&format!("{SETTINGS}/test"), &json!({})).await.expect("test alert");
    assert_eq!(r["channels"][0]["ok"], false, "{r}");
    assert!(r["channels"][0]["error"].as_str().is_some_and(|e| e.contains("SMTP relay 127.0.0.1")), "{r}");
    assert_eq!(smtp.mails.lock().expect("lock").len(), 2, "nothing sent without STARTTLS");

    // Without any channel the test alert says so.
    let _: Value = tv.admin.put(SETTINGS, &json!({})).await.expect("no channels");
    let e = expect_err(tv.admin.post::<_, Value>(&format!("{SETTINGS}/test"), &json!({})).await);
    assert_eq!(e, (409, "AlertChannelsNotConfigured".to_string()));
}

// ---------------------------------------------------------------------------------------------
// The portal's Alerts section (Prepare infrastructure)

fn portal_http(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Sign in through the portal's form; returns the session cookie (name=value).
async fn portal_login(c: &reqwest::Client, url: &str, token: &str) -> String {
    let r = c.post(format!("{url}/portal/login")).form(&[("token", token)]).send().await.expect("login");
    assert_eq!(r.status(), 303);
    let cookie = r.headers()[reqwest::header::SET_COOKIE].to_str().expect("cookie").to_string();
    cookie.split(';').next().expect("pair").to_string()
}

async fn portal_get(c: &reqwest::Client, url: &str, cookie: &str) -> String {
    let r = c.get(url).header(reqwest::header::COOKIE, cookie).send().await.expect("get");
    assert_eq!(r.status(), 200);
    r.text().await.expect("body")
}

async fn portal_post(c: &reqwest::Client, url: &str, cookie: &str, form: &[(&str, &str)]) -> (u16, String) {
    let r = c.post(url).header(reqwest::header::COOKIE, cookie).form(form).send().await.expect("post");
    (r.status().as_u16(), r.text().await.expect("body"))
}

fn form_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with the csrf field") + 19;
    html[at..].split('"').next().expect("value").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_4_portal_alert_settings_on_the_prepare_page() {
    let tv = start_vault_with(fast).await;
    create_vault(&tv.admin, "v1").await;
    let hook = Hook::start().await;
    let c = portal_http(tv.ca());
    let url = tv.url().to_string();
    let page = format!("{url}/portal/vaults/v1/prepare");
    let admin = portal_login(&c, &url, &tv.admin_token).await;
    let html = portal_get(&c, &page, &admin).await;
    assert!(html.contains("id=\"alerts-none\""), "no channel yet");
    assert!(!html.contains("id=\"test-alert-form\""), "nothing to test yet");
    let csrf = form_csrf(&html);

    // Refused input shows the API's error and changes nothing.
    let bad =
        [("csrf", csrf.as_str()), ("version", "0"), ("webhooks", "ftp://example.com/x"), ("critical_health", "on")];
    let (status, body) = portal_post(&c, &format!("{page}/alerts"), &admin, &bad).await;
    assert_eq!(status, 400);
    assert!(body.contains("AlertWebhookUrlInvalid"), "{body}");
    let (status, body) =
        portal_post(&c, &format!("{page}/alerts"), &admin, &[("csrf", csrf.as_str()), ("smtp_relay", "relay")]).await;
    assert_eq!(status, 400);
    assert!(body.contains("AlertSmtpRelayInvalid"), "{body}");
    let s: Value = tv.admin.get(SETTINGS).await.expect("settings");
    assert_eq!(s["version"], 0);

    // Saved: the webhook with its secret, the failover trigger off (its box not ticked).
    let good = [
        ("csrf", csrf.as_str()),
        ("version", "0"),
        ("webhooks", hook.url.as_str()),
        ("webhook_secret", "portal-secret"),
        ("critical_health", "on"),
        ("site_heartbeat_lost", "on"),
    ];
    let (status, _) = portal_post(&c, &format!("{page}/alerts"), &admin, &good).await;
    assert_eq!(status, 303);
    let s: Value = tv.admin.get(SETTINGS).await.expect("settings");
    assert_eq!(s["webhooks"], json!([{"url": hook.url, "secret_set": true}]));
    assert_eq!(s["triggers"], json!({"critical_health": true, "site_heartbeat_lost": true, "failover_failed": false}));
    // The same form again is stale now.
    let (status, body) = portal_post(&c, &format!("{page}/alerts"), &admin, &good).await;
    assert_eq!(status, 412, "{body}");
    let html = portal_get(&c, &page, &admin).await;
    assert!(html.contains("Signed (secret set)") && !html.contains("portal-secret"), "the secret is never shown");

    // The test alert goes out, signed with the secret set in the portal.
    let (status, _) = portal_post(&c, &format!("{page}/alerts/test"), &admin, &[("csrf", csrf.as_str())]).await;
    assert_eq!(status, 303);
    let got = hook.wait_kind("Test", 1, 10).await;
    assert_eq!(got[0]["subject"], "[Ferry v1] Test alert");
    let call = &hook.calls()[0];
    assert_eq!(call.signature.as_deref(), Some(hmac_hex("portal-secret", &call.body).as_str()));

    // A Reader sees the settings, and no form.
    let (reader, _) = make_token(&tv.admin, "r", "Reader").await;
    let reader = portal_login(&c, &url, &reader).await;
    let html = portal_get(&c, &page, &reader).await;
    assert!(html.contains(&hook.url) && html.contains("id=\"alert-triggers\""));
    assert!(!html.contains("id=\"alerts-form\"") && !html.contains("id=\"test-alert-form\""));
}

/// The source site reports the item's cycles with their times, as a host agent does (JOB-2).
async fn report_cycles(
    site: &FakeSite,
    item: Uuid,
    last_point: chrono::DateTime<chrono::Utc>,
    failure: Option<(&str, &str)>,
) {
    let mut status = json!({"item": item, "role": "Source", "phase": "Replicating", "cycles_ok": 10,
        "last_sync": last_point, "last_point": last_point, "interval_secs": 30,
        "cycles_expected_hour": 10, "cycles_ok_hour": 10});
    if let Some((cause, message)) = failure {
        status["phase"] = json!("Retrying");
        status["failure"] = json!(cause);
        status["failing_since"] = json!(last_point);
        status["last_error"] = json!(message);
    }
    let rep = json!({"provider_id": site.provider_id, "version": SITE_VERSION, "inventory": site.inventory,
        "replication": [status]});
    let _: Value = site.client.post("/api/v1/agent/report", &rep).await.expect("report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_2_job_4_a_stall_shows_without_reports_with_one_event_one_alert_and_its_end() {
    let clock = Arc::new(ferry_vault::clock::OffsetClock::default());
    let c2 = clock.clone();
    let tv = start_vault_with(move |c| {
        fast(c);
        c.clock = c2;
        c.heartbeat_timeout = Duration::from_secs(1);
        c.health_sweep_interval = Duration::from_millis(200);
    })
    .await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let hook = Hook::start().await;
    let body = json!({"webhooks": [{"url": hook.url}], "triggers": {"site_heartbeat_lost": false}});
    let _: Value = tv.admin.put(SETTINGS, &body).await.expect("settings");
    let item = protected_item(&tv, v.id, &ny, &chi, "web1").await;
    use ferry_vault::clock::Clock;
    let now = || clock.now();
    report_cycles(&ny, item, now(), None).await;
    let path = format!("/api/v1/vaults/v1/replicationProtectedItems/{item}");
    let it: Value = tv.admin.get(&path).await.expect("item");
    assert_eq!(it["health"], "Normal", "{it}");
    assert!(it["stats"]["rpo_secs"].as_u64().is_some_and(|r| r < 5), "RPO = age of the newest point: {it}");

    // The source host goes silent. 115 s later: not yet a stall (max(3 × 30 s, 2 min)).
    clock.advance(chrono::Duration::seconds(115));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let it: Value = tv.admin.get(&path).await.expect("item");
    assert_eq!(it["health"], "Normal", "{it}");
    assert!(events(&tv, "ReplicationStalled").await.is_empty());
    // Past 2 min: Critical by the vault's own sweep (no report arrives), with the cause.
    clock.advance(chrono::Duration::seconds(8));
    eventually("the stall", 10, || async { item_health(&tv, item).await == "Critical" }).await;
    let it: Value = tv.admin.get(&path).await.expect("item");
    let reasons = it["health_reasons"].to_string();
    assert!(reasons.contains("ReplicationStalled: No recovery point since"), "{reasons}");
    assert!(reasons.contains("no report from host ny-h1.lab since"), "{reasons}");
    assert!(it["stats"]["rpo_secs"].as_u64().is_some_and(|r| r >= 124), "{it}");
    let alerts = hook.wait_kind("ReplicationStalled", 1, 10).await;
    assert_eq!(alerts[0]["object"]["id"], item.to_string());
    assert_eq!(alerts[0]["severity"], "Critical");

    // The host reports again: cycles fail, the replica host refuses connections; the reason now
    // says so, and the stall raises nothing new.
    report_cycles(
        &ny,
        item,
        now() - chrono::Duration::seconds(125),
        Some(("Unreachable", "cannot connect to chi-h1.lab at 10.0.0.9:8084: Connection refused (os error 111)")),
    )
    .await;
    let it: Value = tv.admin.get(&path).await.expect("item");
    assert!(it["health_reasons"].to_string().contains("cannot connect to chi-h1.lab at 10.0.0.9:8084"), "{it}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(events(&tv, "ReplicationStalled").await.len(), 1, "one event per stall");
    assert_eq!(hook.of_kind("ReplicationStalled").len(), 1, "one alert per stall");
    assert!(hook.of_kind("CriticalHealth").is_empty(), "the stall's alert is the only one");

    // A new point: recovered, one event, one alert; Normal again.
    report_cycles(&ny, item, now(), None).await;
    assert_eq!(item_health(&tv, item).await, "Normal");
    let rec = events(&tv, "ReplicationRecovered").await;
    assert_eq!(rec.len(), 1);
    hook.wait_kind("ReplicationRecovered", 1, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(events(&tv, "ReplicationStalled").await.len(), 1);
    assert_eq!(hook.of_kind("ReplicationStalled").len(), 1);
}

/// A source host whose clock is four minutes behind (and a site manager whose clock is ahead)
/// report times on their clocks: the vault brings them to its own with the offsets measured at
/// each hop, so a host that replicates every few seconds is neither stalled (Critical) nor shows
/// a four-minute RPO; the skew itself is a Warning that names the host (JOB-2, RP-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_2_rp_1_a_host_or_site_with_a_wrong_clock_fakes_neither_a_stall_nor_an_rpo() {
    let tv = start_vault_with(|c| {
        fast(c);
        c.health_sweep_interval = Duration::from_millis(200);
    })
    .await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let item = protected_item(&tv, v.id, &ny, &chi, "web1").await;
    let path = format!("/api/v1/vaults/v1/replicationProtectedItems/{item}");
    let report = |host_behind_secs: i64, site_ahead_secs: i64| {
        let now = chrono::Utc::now();
        // The point of two seconds ago, dated by the host's clock.
        let host_time = now - chrono::Duration::seconds(2 + host_behind_secs);
        let status = json!({"item": item, "role": "Source", "phase": "Replicating", "cycles_ok": 10,
            "last_sync": host_time, "last_point": host_time, "interval_secs": 30,
            "cycles_expected_hour": 10, "cycles_ok_hour": 10,
            "clock_offset_ms": -(host_behind_secs + site_ahead_secs) * 1000});
        json!({"provider_id": ny.provider_id, "version": SITE_VERSION, "inventory": ny.inventory,
            "replication": [status], "sent_at": now + chrono::Duration::seconds(site_ahead_secs)})
    };
    let _: Value = ny.client.post("/api/v1/agent/report", &report(240, 100)).await.expect("report");
    // Past the stall threshold of the host's own times, the sweep still finds it replicating.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let it: Value = tv.admin.get(&path).await.expect("item");
    assert_eq!(it["health"], "Warning", "{it}");
    let reasons = it["health_reasons"].to_string();
    assert!(reasons.contains("ClockSkew: The clock of host ny-h1.lab is 240 s behind the vault's"), "{reasons}");
    assert!(!reasons.contains("ReplicationStalled"), "{reasons}");
    assert!(it["stats"]["rpo_secs"].as_u64().is_some_and(|r| r < 10), "the RPO on the vault's clock: {it}");
    assert!(it["stats"]["source_clock_offset_ms"].as_i64().is_some_and(|o| (-241_000..=-239_000).contains(&o)), "{it}");
    assert!(events(&tv, "ReplicationStalled").await.is_empty());
    // The clock fixed: Normal again.
    let _: Value = ny.client.post("/api/v1/agent/report", &report(0, 0)).await.expect("report");
    eventually("Normal again", 5, || async { item_health(&tv, item).await == "Normal" }).await;
}

/// A site reports replication only for the side of an item it holds: another site's report of
/// it (a hostile or confused site, a stolen site credential) changes nothing (SEC-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_1_a_site_cannot_report_the_replication_of_another_sites_item() {
    let tv = start_vault_with(fast).await;
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let item = protected_item(&tv, v.id, &ny, &chi, "web1").await;
    let path = format!("/api/v1/vaults/v1/replicationProtectedItems/{item}");
    let before: Value = tv.admin.get(&path).await.expect("item");
    // Chicago holds the replica, not the source: its "source" report is ignored.
    report_phase(&chi, item, "ResyncRequired").await;
    let after: Value = tv.admin.get(&path).await.expect("item");
    assert_eq!(after["state"], "Protected", "{after}");
    assert_eq!(after["health"], before["health"]);
    // New York holds the source, not the replica: its "target" report of points is ignored.
    let fake = json!({"provider_id": ny.provider_id, "version": SITE_VERSION, "inventory": ny.inventory,
        "replication": [{"item": item, "role": "Target", "phase": "Replicating",
            "recovery_points": [{"id": "rp-forged", "time": chrono::Utc::now(), "app_consistent": true, "size_bytes": 1}]}]});
    let _: Value = ny.client.post("/api/v1/agent/report", &fake).await.expect("report");
    let after: Value = tv.admin.get(&path).await.expect("item");
    assert_eq!(after["recovery_points"], before["recovery_points"], "{after}");
    // The sites' own sides are taken.
    report_phase(&ny, item, "ResyncRequired").await;
    assert_eq!(item_health(&tv, item).await, "Critical");
}
