//! The portal over the vault's real HTTPS listener, without a browser: sign-in and its cookie,
//! escaping of API text, security headers, the anti-forgery check, what a Reader is offered,
//! and the dashboard API (JOB-4). The browser tests against a whole lab are in
//! `crates/ferry-cli/tests/portal_*.rs`.

mod common;

use common::*;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

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
