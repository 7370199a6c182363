//! The portal over the vault's real HTTPS listener, without a browser: sign-in and its cookie,
//! escaping of API text, security headers, the anti-forgery check, what a Reader is offered,
//! the dashboard API (JOB-4), the recovery plan pages with their edits, refusals and roles
//! (PLAN-1, PLAN-3), and a plan operation started from its page whose failed job is resumed
//! from the job page (PLAN-2, PLAN-4) against site managers played by the test. The browser tests against a whole lab are in
//! `crates/ferry-cli/tests/portal_*.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry_store::DocKind;
use ferry_types::job::JobStatus;
use ferry_types::plan::RecoveryPlan;
use ferry_types::site_protocol::{CommandResult, SiteCommand, SiteCommandEnvelope, VmAction};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::json;
use uuid::Uuid;

fn http(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// Sign in through the form; returns the session cookie (name=value).
async fn login(c: &reqwest::Client, url: &str, token: &str) -> String {
    let r = c
        .post(format!("{url}/portal/login"))
        .form(&[("token", token), ("next", "/portal/?list=1")])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/portal/?list=1");
    let cookie = r.headers()[SET_COOKIE].to_str().expect("cookie").to_string();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/portal"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    cookie.split(';').next().expect("pair").to_string()
}

async fn get(c: &reqwest::Client, url: &str, cookie: &str) -> (u16, String) {
    let r = c.get(url).header(COOKIE, cookie).send().await.expect("get");
    (r.status().as_u16(), r.text().await.expect("body"))
}

fn csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with the csrf field") + 19;
    html[at..].split('"').next().expect("value").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_2_portal_session_escaping_csrf_and_reader_over_https() {
    let tv = start_vault().await;
    let url = tv.url().to_string();
    let c = http(tv.ca());
    let _: serde_json::Value = tv
        .admin
        .post("/api/v1/vaults", &serde_json::json!({"name": "v1", "description": "<script>alert(1)</script> & co"}))
        .await
        .expect("vault");
    create_vault(&tv.admin, "v2").await;

    // Not signed in: to the log-in page, keeping the page asked for.
    let r = c.get(format!("{url}/portal/vaults/v1/jobs")).send().await.expect("get");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/portal/login?next=%2Fportal%2Fvaults%2Fv1%2Fjobs");
    let r = c.post(format!("{url}/portal/login")).form(&[("token", "fy_wrong")]).send().await.expect("post");
    assert_eq!(r.status(), 401);
    assert!(r.text().await.expect("body").contains("The token is unknown or revoked"));

    let admin = login(&c, &url, &tv.admin_token).await;
    let r = c.get(format!("{url}/portal/?list=1")).header(COOKIE, &admin).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(h["content-security-policy"].to_str().expect("csp").contains("default-src 'none'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let html = r.text().await.expect("body");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"), "{html}");
    assert!(!html.contains("<script>"), "API text is escaped");
    let (status, css) = get(&c, &format!("{url}/portal/assets/portal.css"), "").await;
    assert_eq!(status, 200);
    assert!(css.contains(".tile"), "the style sheet is served from the binary");

    // The overview of an empty vault: no protection goal is a configuration issue.
    let (status, html) = get(&c, &format!("{url}/portal/vaults/v1"), &admin).await;
    assert_eq!(status, 200);
    assert!(html.contains("ProtectionGoalNotSet"), "{html}");
    let d: serde_json::Value = tv.admin.get("/api/v1/vaults/v1/dashboard").await.expect("dashboard");
    assert_eq!(d["items"], 0);
    assert_eq!(d["config_issues"][0]["code"], "ProtectionGoalNotSet");

    // Forms need this session's anti-forgery value.
    let (_, page) = get(&c, &format!("{url}/portal/vaults/v1/prepare"), &admin).await;
    let token = csrf(&page);
    let r = c
        .post(format!("{url}/portal/vaults/v1/prepare/keys"))
        .header(COOKIE, &admin)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("InvalidFormToken"));
    let keys: serde_json::Value = tv.admin.get("/api/v1/vaults/v1/registrationKeys").await.expect("keys");
    assert_eq!(keys, serde_json::json!([]), "nothing issued");
    let r = c
        .post(format!("{url}/portal/vaults/v1/prepare/keys"))
        .header(COOKIE, &admin)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert!(r.headers()[CONTENT_TYPE].to_str().expect("ct").starts_with("text/html"));
    let html = r.text().await.expect("body");
    assert!(html.contains("id=\"key-file\""), "the key file is shown once");
    let keys: serde_json::Value = tv.admin.get("/api/v1/vaults/v1/registrationKeys").await.expect("keys");
    assert_eq!(keys.as_array().map(Vec::len), Some(1));

    // A Reader sees the configuration but no form besides signing out; a forged post is refused
    // by the API's role check.
    let (reader_token, _) = make_token(&tv.admin, "reader", "Reader").await;
    let reader = login(&c, &url, &reader_token).await;
    let (status, html) = get(&c, &format!("{url}/portal/vaults/v1/prepare"), &reader).await;
    assert_eq!(status, 200);
    assert_eq!(html.matches("<form").count(), 1, "only the sign-out form:\n{html}");
    let r = c
        .post(format!("{url}/portal/vaults/v1/prepare/keys"))
        .header(COOKIE, &reader)
        .form(&[("csrf", csrf(&html).as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("needs the Contributor role"));
    // The admin's form value does not work in the reader's session.
    let r = c
        .post(format!("{url}/portal/logout"))
        .header(COOKIE, &reader)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.headers()[LOCATION], "/portal/", "a forged sign-out is ignored");

    // A revoked token's session ends.
    let tokens: serde_json::Value = tv.admin.get("/api/v1/tokens").await.expect("tokens");
    let id = tokens.as_array().and_then(|a| a.iter().find(|t| t["name"] == "reader")).expect("reader")["id"]
        .as_str()
        .expect("id")
        .to_string();
    tv.admin.delete(&format!("/api/v1/tokens/{id}")).await.expect("revoke");
    let r = c.get(format!("{url}/portal/vaults/v1")).header(COOKIE, &reader).send().await.expect("get");
    assert_eq!(r.status(), 303);
    assert!(r.headers()[LOCATION].to_str().expect("location").starts_with("/portal/login"));
}

/// Store a cloud pair between two sites (pairing itself is tested elsewhere).
async fn store_pair(tv: &TestVault, vault: Uuid, source: Uuid, target: Uuid) -> Uuid {
    let id = Uuid::new_v4();
    let m = json!({"id": id, "source": {"fabric": source, "id": "gold"}, "target": {"fabric": target, "id": "gold2"},
        "policy": Uuid::new_v4(), "created_at": "2024-01-01T00:00:00Z"});
    tv.store().put_doc(DocKind::ContainerMapping, vault, &id.to_string(), None, None, &m, None).await.expect("pair");
    id
}

/// Store a protected item of a pair, Protected with one recovery point.
async fn store_item(tv: &TestVault, vault: Uuid, mapping: Uuid, sites: (Uuid, Uuid), name: &str) -> Uuid {
    let id = Uuid::new_v4();
    let it = json!({
        "id": id, "vault_id": vault, "name": name, "vm_id": format!("vm-{name}"), "container_mapping": mapping,
        "policy": Uuid::new_v4(),
        "source": {"fabric": sites.0, "cloud": "gold", "host": "h1", "host_name": "ny1"},
        "target": {"fabric": sites.1, "cloud": "gold2", "host": "h2", "host_name": "chi1"},
        "direction": "Forward", "state": "Protected", "health": "Normal", "created_at": "2024-01-01T00:00:00Z",
        "recovery_points": [{"id": "rp1", "time": "2024-01-01T00:00:00Z", "app_consistent": false, "size_bytes": 1}],
        "definition": {"name": name, "disks": [{"target": "vda", "path": format!("/s/{name}.qcow2"), "format": "qcow2"}]}
    });
    tv.store()
        .put_doc(
            DocKind::ProtectedItem,
            vault,
            &id.to_string(),
            Some(&mapping.to_string()),
            Some(&format!("vm:{}/vm-{name}", sites.0)),
            &it,
            None,
        )
        .await
        .expect("item");
    id
}

/// POST a portal form; returns status, Location (with the one-time notice it sets) or the page.
async fn post_form(c: &reqwest::Client, url: &str, cookie: &str, form: &[(&str, &str)]) -> (u16, String, String) {
    let r = c.post(url).header(COOKIE, cookie).form(form).send().await.expect("post");
    let status = r.status().as_u16();
    let location = r.headers().get(LOCATION).and_then(|l| l.to_str().ok()).unwrap_or_default().to_string();
    let flash = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("ferry_flash=").and_then(|v| v.split(';').next()))
        .map(|v| form_urlencoded::parse(format!("v={v}").as_bytes()).map(|(_, v)| v.into_owned()).collect::<String>());
    let body = r.text().await.expect("body");
    (status, location, flash.unwrap_or(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_1_plan_3_portal_plan_pages_edit_through_the_api_refuse_bad_input_and_follow_roles() {
    let tv = start_vault().await;
    let url = tv.url().to_string();
    let c = http(tv.ca());
    let v = create_vault(&tv.admin, "v1").await;
    let sites = (Uuid::new_v4(), Uuid::new_v4());
    let pa = store_pair(&tv, v.id, sites.0, sites.1).await;
    let pb = store_pair(&tv, v.id, Uuid::new_v4(), sites.1).await;
    let vm1 = store_item(&tv, v.id, pa, sites, "vm1").await;
    let vm2 = store_item(&tv, v.id, pa, sites, "vm2").await;
    let other = store_item(&tv, v.id, pb, (Uuid::new_v4(), sites.1), "other").await;
    let plans_api = "/api/v1/vaults/v1/replicationRecoveryPlans";
    let base = format!("{url}/portal/vaults/{}", v.id);
    let admin = login(&c, &url, &tv.admin_token).await;

    // The list with its create form: every cloud pair with its protected VMs.
    let (status, html) = get(&c, &format!("{base}/plans"), &admin).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"no-plans\""), "{html}");
    assert!(html.contains("id=\"new-vm-vm1\"") && html.contains("id=\"new-vm-other\""), "{html}");
    assert!(html.contains(&format!("value=\"{pa}\"")) && html.contains(&format!("value=\"{pb}\"")));
    let token = csrf(&html);
    let (pa_s, vm1_s, vm2_s, other_s) = (pa.to_string(), vm1.to_string(), vm2.to_string(), other.to_string());

    // A VM of another pair: the API's refusal is shown, the form comes back filled in, no plan.
    let (status, _, html) = post_form(
        &c,
        &format!("{base}/plans"),
        &admin,
        &[("csrf", &token), ("name", "shop"), ("container_mapping", &pa_s), ("vm", &vm1_s), ("vm", &other_s)],
    )
    .await;
    assert_eq!(status, 400, "{html}");
    assert!(html.contains("PlanVmNotInPair"), "{html}");
    assert!(html.contains("value=\"shop\""), "the form keeps what was typed");
    let none: Vec<RecoveryPlan> = tv.admin.get(plans_api).await.expect("plans");
    assert!(none.is_empty(), "nothing created");

    // Created with vm1 in Group 1.
    let (status, location, _) = post_form(
        &c,
        &format!("{base}/plans"),
        &admin,
        &[
            ("csrf", &token),
            ("name", "shop"),
            ("description", "web shop"),
            ("container_mapping", &pa_s),
            ("vm", &vm1_s),
        ],
    )
    .await;
    assert_eq!(status, 303);
    let p: RecoveryPlan = tv.admin.get(&format!("{plans_api}/shop")).await.expect("plan");
    assert_eq!(location, format!("/portal/vaults/{}/plans/{}", v.id, p.id));
    assert_eq!(p.groups.len(), 1);
    assert_eq!(p.groups[0].items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), vec!["vm1"]);
    let page = format!("{url}{location}");
    let edit = format!("{page}/edit");

    // Every edit goes through the API with the version the page showed.
    let version = |p: &RecoveryPlan| p.version.to_string();
    let show = || async { tv.admin.get::<RecoveryPlan>(&format!("{plans_api}/shop")).await.expect("plan") };
    let steps: [Vec<(&str, &str)>; 3] = [
        vec![("change", "addGroup")],
        vec![("change", "addVms"), ("group", "2"), ("vm", &vm2_s)],
        vec![
            ("change", "addStep"),
            ("group", "2"),
            ("phase", "Pre"),
            ("kind", "ManualAction"),
            ("name", "Check DNS"),
            ("instructions", "Point shop.example to Chicago"),
            ("failover_type", "TestFailover"),
        ],
    ];
    let mut notices = Vec::new();
    for step in &steps {
        let p = show().await;
        let v = version(&p);
        let mut f = vec![("csrf", token.as_str()), ("version", v.as_str())];
        f.extend(step.iter().copied());
        let (status, location, flash) = post_form(&c, &edit, &admin, &f).await;
        assert_eq!(status, 303, "{step:?}: {flash}");
        assert_eq!(format!("{url}{location}"), page);
        notices.push(flash);
    }
    assert_eq!(notices, vec!["Group 2 added", "Added to Group 2: vm2", "Pre-step 'Check DNS' added to Group 2"]);
    let p = show().await;
    assert_eq!(p.groups[1].items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), vec!["vm2"]);
    assert_eq!(p.groups[1].pre_steps.len(), 1);
    let (status, html) = get(&c, &page, &admin).await;
    assert_eq!(status, 200);
    for id in
        ["group-1", "group-2", "vm-vm1", "vm-vm2", "group-2-pre-1", "add-step-2", "move-group-2-up", "op-testFailover"]
    {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} on the plan page:\n{html}");
    }
    assert!(html.contains("Point shop.example to Chicago"));

    // Refused edits change nothing: a script path leaving the library, and a stale version.
    let before = show().await;
    let v_now = version(&before);
    let (status, _, html) = post_form(
        &c,
        &edit,
        &admin,
        &[
            ("csrf", &token),
            ("version", &v_now),
            ("change", "addStep"),
            ("group", "1"),
            ("phase", "Post"),
            ("kind", "Script"),
            ("name", "escape"),
            ("path", "../etc/x.sh"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{html}");
    assert!(html.contains("PathTraversal"), "{html}");
    assert!(html.contains("value=\"../etc/x.sh\""), "the refused step's form keeps its input");
    let stale = (before.version - 1).to_string();
    let (status, _, html) =
        post_form(&c, &edit, &admin, &[("csrf", &token), ("version", &stale), ("change", "addGroup")]).await;
    assert_eq!(status, 412, "{html}");
    assert!(html.contains("VersionMismatch"), "{html}");
    let (status, _, html) = post_form(
        &c,
        &edit,
        &admin,
        &[("csrf", &token), ("version", &v_now), ("change", "deleteGroup"), ("group", "2")],
    )
    .await;
    assert_eq!(status, 400, "a group with VMs is not deleted: {html}");
    assert!(html.contains("PlanGroupNotEmpty"), "{html}");
    let after = show().await;
    assert_eq!((after.version, &after.groups), (before.version, &before.groups), "nothing changed");

    // Move vm2 to Group 1, reorder, delete the emptied group: later groups are renumbered.
    for f in [
        vec![("change", "addGroup")],
        vec![("change", "moveVm"), ("vm", vm2_s.as_str()), ("group", "1")],
        vec![("change", "moveGroup"), ("group", "2"), ("to", "3")],
        vec![("change", "removeStep"), ("group", "3"), ("phase", "Pre"), ("index", "1")],
        vec![("change", "deleteGroup"), ("group", "2")],
    ] {
        let v = version(&show().await);
        let mut form = vec![("csrf", token.as_str()), ("version", v.as_str())];
        form.extend(f.iter().copied());
        let (status, _, flash) = post_form(&c, &edit, &admin, &form).await;
        assert_eq!(status, 303, "{f:?}: {flash}");
        notices.push(flash);
    }
    assert_eq!(notices[3..].last().map(String::as_str), Some("Group 2 deleted; the groups after it were renumbered"));
    assert!(notices.contains(&"vm2 moved to Group 1".to_string()), "{notices:?}");
    let p = show().await;
    assert_eq!(p.groups.len(), 2);
    assert_eq!(p.groups[0].items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), vec!["vm1", "vm2"]);
    assert!(p.groups[1].items.is_empty() && p.groups[1].pre_steps.is_empty());

    // Roles: a Reader sees the plan and no form; an Operator its operations but no edit.
    let (reader_token, _) = make_token(&tv.admin, "reader", "Reader").await;
    let reader = login(&c, &url, &reader_token).await;
    for path in [format!("{base}/plans"), page.clone()] {
        let (status, html) = get(&c, &path, &reader).await;
        assert_eq!(status, 200);
        assert!(html.contains("vm1"), "{html}");
        assert_eq!(html.matches("<form").count(), 1, "only the sign-out form:\n{html}");
    }
    let (operator_token, _) = make_token(&tv.admin, "operator", "Operator").await;
    let operator = login(&c, &url, &operator_token).await;
    let (_, html) = get(&c, &format!("{base}/plans"), &operator).await;
    assert!(!html.contains("create-plan-form"), "creating a plan needs a Contributor");
    let (_, html) = get(&c, &page, &operator).await;
    for op in ["testFailover", "plannedFailover", "unplannedFailover"] {
        assert!(html.contains(&format!("id=\"op-{op}\"")), "{op} for an operator");
    }
    for id in ["add-group", "add-step-1", "delete-plan", "remove-vm-vm1"] {
        assert!(!html.contains(&format!("id=\"{id}\"")), "no {id} for an operator");
    }
    let ver = version(&show().await);
    let (status, _, html) =
        post_form(&c, &edit, &operator, &[("csrf", &csrf(&html)), ("version", &ver), ("change", "addGroup")]).await;
    assert_eq!(status, 403, "{html}");
    assert!(html.contains("needs the Contributor role"), "{html}");
    assert_eq!(show().await.groups.len(), 2, "a forged edit changes nothing");

    // Delete: back to the list, the VMs stay protected.
    let (status, location, flash) = post_form(&c, &format!("{page}/delete"), &admin, &[("csrf", &token)]).await;
    assert_eq!(status, 303);
    assert_eq!(location, format!("/portal/vaults/{}/plans", v.id));
    assert_eq!(flash, "Recovery plan shop deleted; its VMs stay protected");
    let none: Vec<RecoveryPlan> = tv.admin.get(plans_api).await.expect("plans");
    assert!(none.is_empty());
    let items: serde_json::Value = tv.admin.get("/api/v1/vaults/v1/replicationProtectedItems").await.expect("items");
    assert_eq!(items["items"].as_array().map(Vec::len), Some(3));
}

/// A site manager played by the test: answers every command, fails the scripts listed in
/// `failing`.
fn answering_site(site: &FakeSite, failing: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
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
            for c in cmds {
                if !answered.insert(c.id) {
                    continue;
                }
                let (ok, output) = match &c.command {
                    SiteCommand::Replication { .. } => {
                        (true, json!({"disks": [{"target": "vda", "path": "/replica/vda.qcow2"}]}))
                    }
                    SiteCommand::Vm { action: VmAction::Start { vm }, .. } => {
                        (true, json!({"name": vm, "power_state": "Running", "pid": 4242}))
                    }
                    SiteCommand::RunScript { script } => {
                        (!failing.lock().expect("lock").contains(&script.path), json!({"exit_code": 0}))
                    }
                    _ => (true, serde_json::Value::Null),
                };
                let error = (!ok).then(|| ferry_types::ApiError::new("ScriptFailed", "Script exited with code 1"));
                let res = CommandResult { ok, error, output: if ok { output } else { serde_json::Value::Null } };
                let _ = site
                    .client
                    .post::<_, serde_json::Value>(&format!("/api/v1/agent/commands/{}/result", c.id), &res)
                    .await;
            }
        }
    })
}

/// Aborts the played site managers when the test ends, also on failure.
struct Abort(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Abort {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_2_plan_4_portal_runs_a_plan_and_resumes_its_failed_job() {
    let tv = start_vault().await;
    let url = tv.url().to_string();
    let c = http(tv.ca());
    let v = create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let failing = Arc::new(Mutex::new(vec!["gate.sh".to_string()]));
    let _sites = Abort(vec![answering_site(&ny, failing.clone()), answering_site(&chi, failing.clone())]);
    let sites = (ny.fabric_id, chi.fabric_id);
    let pair = store_pair(&tv, v.id, sites.0, sites.1).await;
    store_item(&tv, v.id, pair, sites, "a").await;
    let plans_api = "/api/v1/vaults/v1/replicationRecoveryPlans";
    let p: RecoveryPlan = tv.admin.post(plans_api, &json!({"name": "gated", "vms": ["a"]})).await.expect("plan");
    let _: RecoveryPlan = tv
        .admin
        .patch(
            &format!("{plans_api}/gated"),
            &json!({"changes": [{"change": "addStep", "group": 1, "phase": "Post",
                "step": {"kind": "Script", "name": "gate", "path": "gate.sh"}}]}),
        )
        .await
        .expect("step");
    let admin = login(&c, &url, &tv.admin_token).await;
    let page = format!("{url}/portal/vaults/{}/plans/{}", v.id, p.id);
    let (_, html) = get(&c, &page, &admin).await;
    let token = csrf(&html);

    // The planned failover from the plan's page opens its job; the failing script stops it.
    let (status, location, flash) =
        post_form(&c, &format!("{page}/run/plannedFailover"), &admin, &[("csrf", &token)]).await;
    assert_eq!(status, 303, "{flash}");
    assert_eq!(flash, "Recovery plan planned failover started for plan gated");
    let job: Uuid = location.rsplit('/').next().and_then(|id| id.parse().ok()).expect("a job page");
    let j = wait_job(&tv.admin, "v1", job, 60, |j| j.status.is_terminal()).await;
    assert_eq!(j.status, JobStatus::Failed, "{j:?}");
    let job_page = format!("{url}{location}");
    let (_, html) = get(&c, &job_page, &admin).await;
    assert!(html.contains("id=\"resume-job\""), "{html}");
    assert!(html.contains("Resume job (run the failed steps again)"));
    assert!(html.contains("Group 1: Post-step 1: script 'gate'"), "the failed step is a task: {html}");
    assert!(html.contains(&format!("href=\"/portal/vaults/{}/plans/{}\" id=\"job-object\"", v.id, p.id)), "{html}");
    let (reader_token, _) = make_token(&tv.admin, "reader", "Reader").await;
    let reader = login(&c, &url, &reader_token).await;
    let (_, html) = get(&c, &job_page, &reader).await;
    assert!(!html.contains("resume-job"), "a reader is not offered Resume");

    // Fixed, then resumed from the job page: the same job goes on and succeeds.
    failing.lock().expect("lock").clear();
    let (status, location, flash) = post_form(&c, &format!("{job_page}/resume"), &admin, &[("csrf", &token)]).await;
    assert_eq!(status, 303, "{flash}");
    assert_eq!(format!("{url}{location}"), job_page);
    assert_eq!(flash, "Job resumed");
    let j = wait_job(&tv.admin, "v1", job, 60, |j| j.status.is_terminal()).await;
    assert_eq!(j.status, JobStatus::Succeeded, "{j:?}");
    let (status, _, html) = post_form(&c, &format!("{job_page}/resume"), &admin, &[("csrf", &token)]).await;
    assert_eq!(status, 409, "a finished job is not resumed again: {html}");
    assert!(html.contains("JobActionNotAllowed"), "{html}");
}

/// Policy editing in the portal (POL-1..POL-9): the edit form shows the policy's values, a save
/// goes through the API with the version the form showed, a stale or invalid save changes
/// nothing and shows the API's error with what was typed, and a Reader is offered no edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_9_portal_edits_a_policy_with_its_version_and_refuses_stale_or_bad_edits() {
    let tv = start_vault().await;
    let url = tv.url().to_string();
    let c = http(tv.ca());
    let v = create_vault(&tv.admin, "v1").await;
    let created: serde_json::Value =
        tv.admin.post("/api/v1/vaults/v1/replicationPolicies", &policy_json("gold")).await.expect("policy");
    let id = created["policy"]["id"].as_str().expect("id").to_string();
    let show = || async {
        let p: serde_json::Value =
            tv.admin.get(&format!("/api/v1/vaults/v1/replicationPolicies/{id}")).await.expect("policy");
        p
    };
    let base = format!("{url}/portal/vaults/{}", v.id);
    let admin = login(&c, &url, &tv.admin_token).await;

    let (status, html) = get(&c, &format!("{base}/prepare"), &admin).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"edit-policy-gold\""), "an edit link per policy");
    assert!(!html.contains("id=\"policy-edit-form\""), "no edit form until asked");
    let (_, html) = get(&c, &format!("{base}/prepare?edit_policy={id}"), &admin).await;
    assert!(html.contains("id=\"policy-edit-form\""), "{html}");
    assert!(html.contains(&format!("action=\"/portal/vaults/{}/prepare/policies/{id}\"", v.id)), "{html}");
    assert!(html.contains(&format!("href=\"/portal/vaults/{}/prepare?edit_policy={id}#policy\"", v.id)));
    assert!(html.contains("name=\"recovery_point_retention_hours\" value=\"4\""), "the policy's values");
    assert!(html.contains("name=\"version\" value=\"1\""), "the version shown");
    let token = csrf(&html);
    let action = format!("{base}/prepare/policies/{id}");
    let fields = |version: &'static str, retention: &'static str| {
        vec![
            ("version", version),
            ("name", "gold"),
            ("host_version", "qemu-7.2"),
            ("authentication", "Certificate"),
            ("copy_frequency_secs", "900"),
            ("recovery_point_retention_hours", retention),
            ("app_consistent_frequency_hours", "1"),
            ("initial_method", "now"),
        ]
    };

    // Invalid: the API's code is shown, the form keeps what was typed, nothing changes.
    let mut bad = fields("1", "99");
    bad.push(("csrf", &token));
    let (status, _, html) = post_form(&c, &action, &admin, &bad).await;
    assert_eq!(status, 400, "{html}");
    assert!(html.contains("PolicyInvalidRetention"), "{html}");
    assert!(html.contains("value=\"99\""), "the form keeps what was typed");
    assert_eq!(show().await["version"], 1);

    // Saved: copy frequency, retention and compression change; the version moves on.
    let mut good = fields("1", "2");
    good.push(("csrf", &token));
    let (status, location, notice) = post_form(&c, &action, &admin, &good).await;
    assert_eq!(status, 303, "{notice}");
    assert!(location.ends_with("/prepare#policy"), "{location}");
    assert!(notice.contains("Replication policy gold saved (version 2)"), "{notice}");
    let p = show().await;
    assert_eq!((p["copy_frequency_secs"].as_u64(), p["recovery_point_retention_hours"].as_u64()), (Some(900), Some(2)));
    assert_eq!(p["compression"], false, "an unchecked box turns compression off");
    assert_eq!(p["version"], 2);

    // Stale: the form still says version 1; refused, nothing changes.
    let mut stale = fields("1", "6");
    stale.push(("csrf", &token));
    let (status, _, html) = post_form(&c, &action, &admin, &stale).await;
    assert_eq!(status, 412, "{html}");
    assert!(html.contains("VersionMismatch"), "{html}");
    assert_eq!(show().await["recovery_point_retention_hours"], 2);

    // A Reader sees the policies but no edit link, and cannot save.
    let (reader_token, _) = make_token(&tv.admin, "reader", "Reader").await;
    let reader = login(&c, &url, &reader_token).await;
    let (_, html) = get(&c, &format!("{base}/prepare?edit_policy={id}"), &reader).await;
    assert!(html.contains(">gold<") && !html.contains("edit-policy-gold") && !html.contains("policy-edit-form"));
    let mut forged = fields("2", "8");
    let reader_csrf = csrf(&html);
    forged.push(("csrf", &reader_csrf));
    let (status, _, _) = post_form(&c, &action, &reader, &forged).await;
    assert_eq!(status, 403);
    assert_eq!(show().await["recovery_point_retention_hours"], 2);
}

/// Capacity planning in the portal (CAP-1): start measuring VMs of one site, read the report
/// under other inputs, stop; VMs of two sites or bad inputs are refused with nothing created, a
/// Reader gets no form. The site manager is played by the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_1_portal_starts_a_capacity_plan_shows_its_report_and_stops_it() {
    let tv = start_vault().await;
    let url = tv.url().to_string();
    let c = http(tv.ca());
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (_l, _) = ny.spawn_loop();
    let vault: serde_json::Value = tv.admin.get("/api/v1/vaults/v1").await.expect("vault");
    let base = format!("{url}/portal/vaults/{}/capacity", vault["id"].as_str().expect("id"));
    let admin = login(&c, &url, &tv.admin_token).await;
    let (status, html) = get(&c, &base, &admin).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"no-capacity-plans\"") && html.contains("id=\"capacity-form\""), "{html}");
    let token = csrf(&html);
    let ny_vm = |v: &str| format!("{}|{}", ny.fabric_id, id("ny", v));
    let chi_vm = format!("{}|{}", chi.fabric_id, id("chi", "vm1"));
    assert!(html.contains(&ny_vm("vm1")) && html.contains(&chi_vm), "every site's VMs are offered");

    // VMs of two sites: refused, the choice kept, nothing created.
    let (status, _, html) =
        post_form(&c, &base, &admin, &[("csrf", &token), ("name", "q1"), ("vm", &ny_vm("vm1")), ("vm", &chi_vm)]).await;
    assert_eq!(status, 400, "{html}");
    assert!(html.contains("CapacityPlanSites") && html.contains("value=\"q1\""), "{html}");
    let none: Vec<serde_json::Value> = tv.admin.get("/api/v1/vaults/v1/capacityPlans").await.expect("plans");
    assert!(none.is_empty());

    // Started: the plan's page.
    let (status, location, notice) =
        post_form(&c, &base, &admin, &[("csrf", &token), ("name", "q1"), ("vm", &ny_vm("vm1")), ("vm", &ny_vm("vm2"))])
            .await;
    assert_eq!(status, 303, "{notice}");
    assert!(notice.contains("Measuring the churn of 2 VMs for capacity plan q1"), "{notice}");
    let plan: serde_json::Value = tv.admin.get("/api/v1/vaults/v1/capacityPlans/q1").await.expect("plan");
    let plan_id = plan["id"].as_str().expect("id").to_string();
    assert!(location.ends_with(&format!("/capacity/{plan_id}")), "{location}");

    // The site reports both VMs' churn; the page shows the report under the inputs given.
    let now = chrono::Utc::now();
    let churn: Vec<serde_json::Value> = ["vm1", "vm2"]
        .iter()
        .map(|v| {
            json!({"plan": plan_id, "vm_id": "", "vm_name": format!("ny-{v}"), "state": "Measuring",
                "started_at": now, "updated_at": now, "measured_secs": 3600,
                "disks": [{"target": "vda", "virtual_size": 1u64 << 30, "allocated_bytes": 512u64 << 20}],
                "windows": [{"window_secs": 30, "windows": 120, "total_bytes": 60u64 << 20, "max_bytes": 3u64 << 20},
                            {"window_secs": 3600, "windows": 1, "total_bytes": 10u64 << 20, "max_bytes": 10u64 << 20}],
                "hours": [10u64 << 20]})
        })
        .collect();
    let rep =
        json!({"provider_id": ny.provider_id, "version": SITE_VERSION, "inventory": ny.inventory, "churn": churn});
    let _: serde_json::Value = ny.client.post("/api/v1/agent/report", &rep).await.expect("report");
    let (status, html) =
        get(&c, &format!("{url}{location}?bandwidth_mbps=8&retention_hours=2&copy_frequency_secs=30"), &admin).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("2 measured of 2"), "{html}");
    assert!(html.contains("480.0 MiB"), "daily churn 2 × 10 MiB × 24: {html}");
    // 1 GiB allocated at 8 Mbit/s: 1073741824 × 8 / 8e6 s = 17.9 min.
    assert!(html.contains("17.9 min at 8 Mbit/s"), "{html}");
    assert!(html.contains("id=\"stop-capacity\"") && html.contains("id=\"delete-capacity\""));
    let (status, html) = get(&c, &format!("{url}{location}?retention_hours=25"), &admin).await;
    assert_eq!(status, 400);
    assert!(html.contains("CapacityReportInvalidParam"), "{html}");

    // A Reader reads the report but gets no form, and cannot stop the plan.
    let (reader_token, _) = make_token(&tv.admin, "reader", "Reader").await;
    let reader = login(&c, &url, &reader_token).await;
    let (_, html) = get(&c, &base, &reader).await;
    assert!(html.contains(">q1<") && !html.contains("capacity-form"), "{html}");
    let (_, html) = get(&c, &format!("{url}{location}"), &reader).await;
    assert!(html.contains("2 measured of 2") && !html.contains("stop-capacity"));
    let reader_csrf = csrf(&html);
    let (status, _, _) = post_form(&c, &format!("{url}{location}/stop"), &reader, &[("csrf", &reader_csrf)]).await;
    assert_eq!(status, 403);

    // Stopped from its page: the job runs, the plan is Stopped.
    let (status, location, _) = post_form(&c, &format!("{url}{location}/stop"), &admin, &[("csrf", &token)]).await;
    assert_eq!(status, 303);
    assert!(location.contains("/jobs/"), "{location}");
    let job = uuid::Uuid::parse_str(location.rsplit('/').next().expect("job id")).expect("uuid");
    wait_status(&tv.admin, "v1", job, JobStatus::Succeeded, 30).await;
    let plan: serde_json::Value = tv.admin.get("/api/v1/vaults/v1/capacityPlans/q1").await.expect("plan");
    assert_eq!(plan["state"], "Stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_1_portal_shows_each_points_verification() {
    let tv = start_vault().await;
    let url = tv.url().to_string();
    let c = http(tv.ca());
    let v = create_vault(&tv.admin, "v1").await;
    let sites = (Uuid::new_v4(), Uuid::new_v4());
    let pair = store_pair(&tv, v.id, sites.0, sites.1).await;
    let id = store_item(&tv, v.id, pair, sites, "vv1").await;
    let mut doc: ferry_store::Doc<serde_json::Value> =
        tv.store().get_doc(DocKind::ProtectedItem, v.id, &id.to_string()).await.expect("get").expect("item");
    doc.body["recovery_points"] = json!([
        {"id": "rp-old", "time": "2024-01-01T00:00:00Z", "app_consistent": false, "size_bytes": 1,
         "verification": {"at": "2024-01-02T00:00:00Z", "sealed": true, "ok": false,
                          "damage": ["vdb 0+64 MiB: the data differs from the point's manifest"]}},
        {"id": "rp-new", "time": "2024-01-01T00:01:00Z", "app_consistent": false, "size_bytes": 1,
         "verification": {"at": "2024-01-02T00:00:00Z", "sealed": true, "ok": true}},
        {"id": "rp-fresh", "time": "2024-01-01T00:02:00Z", "app_consistent": false, "size_bytes": 1}
    ]);
    tv.store()
        .put_doc(
            DocKind::ProtectedItem,
            v.id,
            &id.to_string(),
            Some(&pair.to_string()),
            None,
            &doc.body,
            Some(doc.version),
        )
        .await
        .expect("put");
    let admin = login(&c, &url, &tv.admin_token).await;
    let (status, html) = get(&c, &format!("{url}/portal/vaults/{}/items/{id}", v.id), &admin).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Damaged: vdb 0+64 MiB: the data differs from the point&#39;s manifest")
            || html.contains("Damaged: vdb 0+64 MiB: the data differs from the point's manifest"),
        "{html}"
    );
    assert!(html.contains("Exact · "), "{html}");
    assert!(html.contains("Not yet"), "{html}");
    // "Verify all points" starts the verification job.
    assert!(html.contains("id=\"do-verify\""), "{html}");
    let token = csrf(&html);
    let (status, location, _) = post_form(
        &c,
        &format!("{url}/portal/vaults/{}/items/{id}/verifyRecoveryPoints", v.id),
        &admin,
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(status, 303, "{location}");
    assert!(location.contains("/jobs/"), "{location}");
    let jobs: serde_json::Value =
        tv.admin.get("/api/v1/vaults/v1/replicationJobs?operation=VerifyRecoveryPoints").await.expect("jobs");
    assert!(jobs.to_string().contains("vv1"), "{jobs}");
}
