//! The OpenAPI document is generated from the code and checked in as `docs/openapi.json`; this
//! test fails when the checked-in copy drifts (`FERRY_UPDATE_OPENAPI=1` rewrites it), and checks
//! that every route of the router is in the document and every documented path is served.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

/// (method, path) of every `#[utoipa::path(...)]` handler in `src/api`.
fn annotated_routes() -> BTreeSet<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("src/api") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        for (i, _) in text.match_indices("#[utoipa::path(") {
            let rest = &text[i + "#[utoipa::path(".len()..];
            let method = rest.split(',').next().expect("method").trim().to_string();
            let p = rest.find("path = \"").map(|j| &rest[j + 8..]).expect("path");
            let p = p[..p.find('"').expect("end")].to_string();
            out.insert((method, p));
        }
    }
    out
}

fn documented_routes(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.insert((method.to_string(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn openapi_document_matches_checked_in_copy() {
    let generated = ferry_vault::api::openapi_json();
    let path = checked_in_path();
    if std::env::var("FERRY_UPDATE_OPENAPI").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is out of date; run `FERRY_UPDATE_OPENAPI=1 cargo test -p ferry-vault --test openapi` and commit it"
    );

    let doc: serde_json::Value = serde_json::from_str(&generated).expect("json");
    let documented = documented_routes(&doc);
    let annotated = annotated_routes();
    let missing: Vec<_> = annotated.difference(&documented).collect();
    assert!(missing.is_empty(), "handlers missing from the router/document: {missing:?}");
    let extra: Vec<_> = documented.difference(&annotated).collect();
    assert!(extra.is_empty(), "documented routes without a handler: {extra:?}");
    assert!(documented.len() >= 40, "{}", documented.len());
}

/// Every documented (method, path) is routed: the answer is the handler's (an API error body
/// or success), never the router's empty 404/405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_every_documented_path_is_served() {
    let tv = start_vault().await;
    let doc: serde_json::Value = serde_json::from_str(&ferry_vault::api::openapi_json()).expect("json");
    let unknown = uuid::Uuid::new_v4().to_string();
    for (method, path) in documented_routes(&doc) {
        // Unknown ids everywhere: nothing is changed by these calls.
        let mut concrete = String::new();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            concrete.push('/');
            concrete.push_str(if seg.starts_with('{') { &unknown } else { seg });
        }
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let body = matches!(m, reqwest::Method::POST | reqwest::Method::PUT | reqwest::Method::PATCH)
            .then(|| ("application/json", b"{}".to_vec()));
        let (status, answer) = raw_request(&tv, m, &concrete, Some(&tv.admin_token), &[], body).await;
        assert_ne!(status, 405, "{method} {path}");
        assert!(answer.is_object() || answer.is_array() || status < 300, "{method} {path}: {status} {answer}");
    }
    // The served document is the generated one.
    let served: serde_json::Value = tv.admin.get("/api/v1/openapi.json").await.expect("served");
    assert_eq!(served, doc);
    // The meta routes outside the document.
    let health: serde_json::Value = tv.admin.get("/api/v1/health").await.expect("health");
    assert_eq!(health["status"], "ok");
    let ca = tv.client(None).get_text("/api/v1/ca").await.expect("ca");
    assert_eq!(ca, tv.ca());
}
