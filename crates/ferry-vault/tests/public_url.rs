//! FAB-2: a vault reached at a public name (`public_url`): registration keys carry that URL, and
//! the vault's certificate holds the name, so sites verify the vault at it; a public URL that is
//! not an https URL is refused before anything is created.

mod common;

use std::net::SocketAddr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_2_registration_keys_and_the_certificate_carry_the_public_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let public = format!("https://vault.example.test:{port}");
    let mut cfg = common::config(dir.path());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], port));
    cfg.public_url = Some(format!("{public}/"));
    let handle = ferry_vault::start(cfg).await.expect("vault starts");
    assert_eq!(handle.url, public, "the public URL, without its trailing slash");
    let token = handle.new_admin_token.clone().expect("admin token");

    // A client that reaches the public name (here at 127.0.0.1) verifies the certificate for it.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(handle.ca_pem.as_bytes()).expect("CA"))
        .resolve("vault.example.test", SocketAddr::from(([127, 0, 0, 1], port)))
        .build()
        .expect("client");
    let res = http
        .post(format!("{public}/api/v1/vaults"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "v1"}))
        .send()
        .await
        .expect("TLS verifies the vault at its public name");
    assert!(res.status().is_success(), "{}", res.status());
    let key: serde_json::Value = http
        .post(format!("{public}/api/v1/vaults/v1/registrationKeys"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("key JSON");
    let file = key["file"].as_str().expect("key file");
    assert!(file.contains(&public), "sites registering with this key reach {public}: {file}");
    handle.shutdown().await;
}

#[tokio::test]
async fn fab_2_a_public_url_that_is_not_https_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("vault");
    for bad in ["http://vault.example.test:8443", "vault.example.test:8443", "https://:8443"] {
        let mut cfg = common::config(&data);
        cfg.public_url = Some(bad.into());
        let err = ferry_vault::start(cfg).await.err().unwrap_or_else(|| panic!("{bad} refused"));
        assert!(err.to_string().contains("public URL"), "{bad}: {err}");
        assert!(!data.exists(), "nothing was created for {bad}");
    }
}
