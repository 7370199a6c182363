//! SEC-2 (roles) and SEC-3 (bad input changes nothing) through the vault's HTTPS API.

mod common;

use std::time::Duration;

use common::*;
use ferry_client::Client;
use ferry_types::job::{Job, JobStatus};
use ferry_types::vault::Vault;
use uuid::Uuid;

fn forbidden<T: std::fmt::Debug>(r: ferry_client::Result<T>) {
    assert_eq!(expect_err(r), (403, "Forbidden".to_string()));
}

async fn cancel(c: &Client, job: Uuid) -> ferry_client::Result<Job> {
    c.post(&format!("/api/v1/vaults/v1/replicationJobs/{job}/cancel"), &()).await
}

async fn restart(c: &Client, job: Uuid) -> ferry_client::Result<Job> {
    c.post(&format!("/api/v1/vaults/v1/replicationJobs/{job}/restart"), &()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_2_roles_reader_operator_contributor() {
    let tv = start_vault_with(|c| c.site_command_timeout = Duration::from_secs(2)).await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (reader_t, _) = make_token(&tv.admin, "reader", "Reader").await;
    let (operator_t, operator_id) = make_token(&tv.admin, "operator", "Operator").await;
    let (contrib_t, _) = make_token(&tv.admin, "contributor", "Contributor").await;
    let reader = tv.client(Some(&reader_t));
    let operator = tv.client(Some(&operator_t));
    let contrib = tv.client(Some(&contrib_t));

    // Contributor: configuration changes. Two pairs whose target never answers.
    let (pid, job1) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    let created: serde_json::Value = contrib
        .post(
            "/api/v1/vaults/v1/replicationProtectionContainerMappings",
            &serde_json::json!({"source": ny.cloud("ny-silver"), "target": chi.cloud("chi-silver"), "policy": pid}),
        )
        .await
        .expect("contributor pairs clouds");
    let job2: Uuid = serde_json::from_value(created["job"]["id"].clone()).expect("job");
    let before = snapshot(&tv.admin, "v1").await;

    // Reader: reads everything, changes nothing.
    let _: Vec<Vault> = reader.get("/api/v1/vaults").await.expect("reader lists vaults");
    let _: serde_json::Value = reader.get("/api/v1/vaults/v1/replicationJobs").await.expect("reader lists jobs");
    let _: serde_json::Value = reader.get("/api/v1/vaults/v1/replicationPolicies").await.expect("reader policies");
    let _: serde_json::Value = reader.get("/api/v1/vaults/v1/replicationFabrics/ny/hosts").await.expect("hosts");
    forbidden(reader.post::<_, serde_json::Value>("/api/v1/vaults/v1/replicationPolicies", &policy_json("r")).await);
    forbidden(cancel(&reader, job1).await);
    forbidden(restart(&reader, job1).await);
    forbidden(reader.post::<_, Vault>("/api/v1/vaults", &serde_json::json!({"name": "r"})).await);
    forbidden(reader.get::<serde_json::Value>("/api/v1/tokens").await);
    forbidden(
        reader
            .post::<_, serde_json::Value>(
                "/api/v1/vaults/v1/replicationFabrics/ny/hosts/ny-h1/vmActions",
                &serde_json::json!({"action": "start", "vm": "ny-vm1"}),
            )
            .await,
    );

    // Operator: no configuration changes.
    forbidden(operator.post::<_, serde_json::Value>("/api/v1/vaults/v1/replicationPolicies", &policy_json("o")).await);
    forbidden(
        operator
            .put::<_, serde_json::Value>(&format!("/api/v1/vaults/v1/replicationPolicies/{pid}"), &policy_json("gold"))
            .await,
    );
    forbidden(operator.delete("/api/v1/vaults/v1").await);
    forbidden(operator.post::<_, serde_json::Value>("/api/v1/vaults/v1/registrationKeys", &()).await);
    forbidden(
        operator
            .post::<_, serde_json::Value>(
                "/api/v1/tokens",
                &serde_json::json!({"name": "escalate", "role": "Contributor"}),
            )
            .await,
    );
    forbidden(
        operator
            .post::<_, serde_json::Value>(
                "/api/v1/vaults/v1/replicationFabrics/ny/hosts/ny-h1/vmActions",
                &serde_json::json!({"action": "delete", "vm": "ny-vm1", "delete_disks": true}),
            )
            .await,
    );
    assert_eq!(snapshot(&tv.admin, "v1").await, before, "refused requests change nothing");

    // Operator: failover-type operations: cancel and restart jobs, start a VM.
    cancel(&operator, job1).await.expect("operator cancels");
    wait_status(&tv.admin, "v1", job1, JobStatus::Cancelled, 10).await;
    wait_status(&tv.admin, "v1", job2, JobStatus::Failed, 15).await;
    let job3 = restart(&operator, job2).await.expect("operator restarts");
    assert_eq!(job3.restart_of, Some(job2));
    // Contributor can do the same.
    cancel(&contrib, job3.id).await.expect("contributor cancels");
    wait_status(&tv.admin, "v1", job3.id, JobStatus::Cancelled, 10).await;
    let vm_job: Job = operator
        .post(
            "/api/v1/vaults/v1/replicationFabrics/ny/hosts/ny-h1/vmActions",
            &serde_json::json!({"action": "start", "vm": "ny-vm1"}),
        )
        .await
        .expect("operator starts a VM");
    assert_eq!(vm_job.operation, "VmAction");

    // No token, an unknown token, a revoked token: 401.
    let anon = tv.client(None);
    assert_eq!(expect_err(anon.get::<Vec<Vault>>("/api/v1/vaults").await), (401, "MissingCredentials".to_string()));
    let bogus = tv.client(Some("fy_not-a-token"));
    assert_eq!(expect_err(bogus.get::<Vec<Vault>>("/api/v1/vaults").await), (401, "InvalidCredentials".to_string()));
    tv.admin.delete(&format!("/api/v1/tokens/{operator_id}")).await.expect("revoke");
    assert_eq!(expect_err(operator.get::<Vec<Vault>>("/api/v1/vaults").await), (401, "InvalidCredentials".to_string()));
    assert_eq!(expect_err(cancel(&operator, job1).await).0, 401);

    // A site credential cannot use the management API; a user token cannot act as a site.
    forbidden(ny.client.get::<Vec<Vault>>("/api/v1/vaults").await);
    forbidden(ny.client.post::<_, serde_json::Value>("/api/v1/vaults/v1/replicationPolicies", &policy_json("s")).await);
    forbidden(cancel(&ny.client, job2).await);
    forbidden(tv.admin.get::<serde_json::Value>("/api/v1/agent/commands").await);
    let rep = serde_json::json!({"provider_id": ny.provider_id, "version": SITE_VERSION, "inventory": ny.inventory});
    forbidden(reader.post::<_, serde_json::Value>("/api/v1/agent/report", &rep).await);
}

/// POST raw bytes; returns (status, code).
async fn raw(c: &Client, path: &str, ct: &str, body: &[u8]) -> (u16, String) {
    expect_err(c.post_raw(path, ct, body.to_vec()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_bad_input_is_refused_and_changes_nothing() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (pid, _job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    let before = snapshot(&tv.admin, "v1").await;
    let a = &tv.admin;
    let json = "application/json";
    let policies = "/api/v1/vaults/v1/replicationPolicies";

    // Malformed JSON, unknown fields, wrong types, wrong content type, oversized body.
    assert_eq!(raw(a, "/api/v1/vaults", json, b"{\"name\": ").await, (400, "MalformedJson".into()));
    assert_eq!(raw(a, policies, json, b"not json").await, (400, "MalformedJson".into()));
    assert_eq!(raw(a, "/api/v1/vaults", json, br#"{"name":"x","color":"red"}"#).await, (400, "InvalidBody".into()));
    assert_eq!(raw(a, "/api/v1/vaults", json, br#"{"name":5}"#).await, (400, "InvalidBody".into()));
    assert_eq!(raw(a, "/api/v1/vaults", json, br#"{}"#).await, (400, "InvalidBody".into()));
    let mut p = policy_json("x");
    p["unexpected"] = true.into();
    assert_eq!(raw(a, policies, json, &serde_json::to_vec(&p).expect("json")).await, (400, "InvalidBody".into()));
    assert_eq!(raw(a, "/api/v1/vaults", "text/plain", br#"{"name":"x"}"#).await, (415, "UnsupportedMediaType".into()));
    assert_eq!(raw(a, policies, "application/xml", b"<policy/>").await, (415, "UnsupportedMediaType".into()));
    // On its own connection: the server answers before reading the body and closes it.
    let big = format!(r#"{{"name":"x","description":"{}"}}"#, "a".repeat(5 * 1024 * 1024));
    let (status, _) = raw_request(
        &tv,
        reqwest::Method::POST,
        "/api/v1/vaults",
        Some(&tv.admin_token),
        &[],
        Some((json, big.into_bytes())),
    )
    .await;
    assert_eq!(status, 413);
    // A malformed registration key and a malformed site report.
    let mut req = register_request("garbage", "v1", "x", "x.lab", SITE_VERSION, true, &[]);
    assert_eq!(expect_err(register_raw(&tv, &req).await), (400, "RegistrationKeyMalformed".into()));
    req.vault_name = "no-such-vault".into();
    let k = issue_key(a, "v1").await;
    req.key = k.file;
    assert_eq!(expect_err(register_raw(&tv, &req).await).0, 404);
    assert_eq!(
        raw(&ny.client, "/api/v1/agent/report", json, br#"{"provider_id":"x","version":"1","inventory":{}}"#).await,
        (400, "InvalidBody".into())
    );

    // Unknown ids: 404 NotFound.
    let u = Uuid::new_v4();
    for path in [
        format!("/api/v1/vaults/{u}"),
        format!("/api/v1/vaults/v1/replicationPolicies/{u}"),
        format!("/api/v1/vaults/v1/replicationJobs/{u}"),
        format!("/api/v1/vaults/v1/replicationFabrics/{u}"),
        format!("/api/v1/vaults/v1/replicationFabrics/{u}/hosts"),
        format!("/api/v1/vaults/{u}/replicationJobs"),
    ] {
        assert_eq!(expect_err(a.get::<serde_json::Value>(&path).await), (404, "NotFound".into()), "{path}");
    }
    for path in [
        format!("/api/v1/vaults/v1/replicationProtectionContainerMappings/{u}"),
        format!("/api/v1/vaults/v1/replicationNetworkMappings/{u}"),
        format!("/api/v1/vaults/v1/registrationKeys/{u}"),
        format!("/api/v1/tokens/{u}"),
        format!("/api/v1/vaults/v1/replicationPolicies/{u}"),
    ] {
        assert_eq!(expect_err(a.delete(&path).await), (404, "NotFound".into()), "{path}");
    }
    for path in [
        format!("/api/v1/vaults/v1/replicationJobs/{u}/cancel"),
        format!("/api/v1/vaults/v1/replicationJobs/{u}/restart"),
    ] {
        assert_eq!(expect_err(a.post::<_, Job>(&path, &()).await), (404, "NotFound".into()), "{path}");
    }
    let r = serde_json::json!({"ok": true});
    assert_eq!(
        expect_err(ny.client.post::<_, serde_json::Value>(&format!("/api/v1/agent/commands/{u}/result"), &r).await),
        (404, "NotFound".into())
    );
    let pair_unknown_policy =
        serde_json::json!({"source": ny.cloud("ny-silver"), "target": chi.cloud("chi-silver"), "policy": u});
    assert_eq!(
        expect_err(
            a.post::<_, serde_json::Value>(
                "/api/v1/vaults/v1/replicationProtectionContainerMappings",
                &pair_unknown_policy
            )
            .await
        ),
        (404, "NotFound".into())
    );

    // Invalid ids: 400 InvalidId.
    assert_eq!(
        expect_err(a.get::<Job>("/api/v1/vaults/v1/replicationJobs/not-a-uuid").await),
        (400, "InvalidId".into())
    );
    assert_eq!(expect_err(a.delete("/api/v1/tokens/xyz").await), (400, "InvalidId".into()));
    assert_eq!(
        expect_err(a.delete("/api/v1/vaults/v1/replicationProtectionContainerMappings/1234").await),
        (400, "InvalidId".into())
    );
    assert_eq!(
        expect_err(ny.client.post::<_, serde_json::Value>("/api/v1/agent/commands/zzz/result", &r).await),
        (400, "InvalidId".into())
    );

    // Out-of-range and malformed query parameters: 400 InvalidQuery.
    for q in [
        "replicationJobs?limit=0",
        "replicationJobs?limit=1001",
        "replicationJobs?limit=-5",
        "replicationJobs?limit=abc",
        "replicationJobs?cursor=abc",
        "replicationJobs?status=Done",
        "replicationJobs?from=yesterday",
        "replicationJobs?color=red",
        "events?limit=100000",
        "events?severity=Loud",
        "replicationFabrics/ny/protectableItems?limit=0",
        "replicationFabrics/ny/protectionContainers?synced=maybe",
    ] {
        let path = format!("/api/v1/vaults/v1/{q}");
        assert_eq!(expect_err(a.get::<serde_json::Value>(&path).await), (400, "InvalidQuery".into()), "{q}");
    }
    assert_eq!(
        expect_err(ny.client.get::<serde_json::Value>("/api/v1/agent/commands?wait=x").await),
        (400, "InvalidQuery".into())
    );

    // Invalid values in well-formed bodies.
    let mut bad = policy_json("bad");
    bad["copy_frequency_secs"] = 31.into();
    assert_eq!(
        expect_err(a.post::<_, serde_json::Value>(policies, &bad).await),
        (400, "PolicyInvalidCopyFrequency".into())
    );
    let put = a.put::<_, serde_json::Value>(&format!("{policies}/{pid}"), &bad).await;
    assert_eq!(expect_err(put), (400, "PolicyInvalidCopyFrequency".into()));
    assert_eq!(
        expect_err(
            a.post::<_, serde_json::Value>("/api/v1/tokens", &serde_json::json!({"name": "t", "role": "Root"})).await
        ),
        (400, "InvalidBody".into())
    );
    assert_eq!(
        expect_err(
            a.post::<_, serde_json::Value>("/api/v1/tokens", &serde_json::json!({"name": "", "role": "Reader"})).await
        ),
        (400, "InvalidName".into())
    );

    // Nothing changed (the only addition is the key issued above).
    let after = snapshot(&tv.admin, "v1").await;
    let mut expected = before.clone();
    expected.0.insert("keys", before.0["keys"] + 1);
    assert_eq!(after, expected);
    let p: ferry_types::policy::Policy = a.get(&format!("{policies}/{pid}")).await.expect("policy");
    assert_eq!(p.version, 1);
    assert_eq!(p.spec, policy_spec("gold"));
}

/// A TLS connection to the vault, as a browser or CLI opens it.
async fn tls_connection(tv: &TestVault) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = ferry_pki::tls::client_config(&tv.handle.ca_pem, None).expect("client config");
    let tcp = tokio::net::TcpStream::connect(tv.handle.addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.expect("TLS handshake")
}

/// Whether the server closed the connection (end of stream or reset) within `within`.
async fn closed_within(conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// SEC-3 (slowloris): a client that sends a request's headers slower than the limit, or keeps
/// a connection idle after its request, is disconnected; a normal request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_slow_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let tv = start_vault_with(|c| c.header_read_timeout = Duration::from_secs(2)).await;
    // Headers that never end.
    let mut slow = tls_connection(&tv).await;
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n").await.expect("write");
    slow.flush().await.expect("flush");
    assert!(!closed_within(&mut slow, Duration::from_millis(1000)).await, "open while within the limit");
    assert!(closed_within(&mut slow, Duration::from_secs(5)).await, "closed after the header timeout");
    // One complete request is answered; the connection idles afterwards and is closed.
    let mut idle = tls_connection(&tv).await;
    idle.write_all(b"GET /portal/ HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    idle.flush().await.expect("flush");
    let mut head = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut idle, &mut head).await.expect("an answer");
    assert!(head.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&head));
    assert!(closed_within(&mut idle, Duration::from_secs(6)).await, "an idle kept-alive connection is closed");
    // The vault still serves everyone else.
    let vaults: Vec<Vault> = tv.admin.get("/api/v1/vaults").await.expect("vaults");
    assert!(vaults.is_empty());
}

/// SEC-3: guessing tokens is limited per client address. With the product's limit (30 different
/// wrong secrets a minute), the next attempt from that address is refused with 429 before its
/// token is even looked at — a right token too, a portal sign-in and a registration alike. A
/// revoked credential retried over and over counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_failed_sign_ins_are_limited_per_client_address() {
    let tv = start_vault().await;
    assert_eq!(
        ferry_vault::VaultConfig::new("/x".into(), "127.0.0.1:0".parse().expect("addr")).max_failed_auth_per_minute,
        30
    );
    // A revoked credential retried (a removed site manager polling) counts once.
    let stale = tv.client(Some("ferry_revoked"));
    for _ in 0..40 {
        assert_eq!(expect_err(stale.get::<serde_json::Value>("/api/v1/vaults").await).0, 401);
    }
    for i in 1..30 {
        let guesser = tv.client(Some(&format!("ferry_guess-{i}")));
        let e = expect_err(guesser.get::<serde_json::Value>("/api/v1/vaults").await);
        assert_eq!(e, (401, "InvalidCredentials".to_string()), "guess {i}");
    }
    let e = expect_err(tv.client(Some("ferry_guess-30")).get::<serde_json::Value>("/api/v1/vaults").await);
    assert_eq!(e, (429, "TooManyFailedAttempts".to_string()));
    // The right token from the same address waits as well.
    let e = expect_err(tv.admin.get::<serde_json::Value>("/api/v1/vaults").await);
    assert_eq!(e.0, 429);
    let reg = serde_json::json!({"key": "x", "vault_name": "v1", "friendly_name": "s", "server_name": "s",
        "version": "1", "sync_all_clouds": true, "csr_pem": "", "clouds": []});
    let e = expect_err(tv.client(None).post::<_, serde_json::Value>("/api/v1/agent/register", &reg).await);
    assert_eq!(e.0, 429, "registration from that address too");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tv.handle.ca_pem.as_bytes()).expect("ca"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http");
    let r = http
        .post(format!("{}/portal/login", tv.url()))
        .form(&[("token", tv.admin_token.as_str()), ("next", "/portal/")])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.text().await.expect("page").contains("try again in"), "the sign-in page says why");
}

/// SEC-3: the vault refuses to start on a CA key other users could read, saying how to fix it,
/// and starts again once it is the owner's only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_a_ca_key_open_to_other_users_stops_the_vault_from_starting() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let tv = start_vault_in(dir.path(), |_| {}).await;
    tv.handle.shutdown().await;
    let key = dir.path().join("pki").join(ferry_pki::CA_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = ferry_vault::start(config(dir.path())).await.err().expect("refused");
    let text = format!("{err}: {}", std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default());
    assert!(text.contains("chmod 600") && text.contains("ca-key.pem"), "{text}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let again = start_vault_in(dir.path(), |_| {}).await;
    again.handle.shutdown().await;
}

/// SEC-1: a host that joins again gets a new certificate and its earlier one is revoked; removing
/// a site revokes its hosts' certificates. Every site learns the revoked certificates (to refuse
/// them on its hosts) with its next heartbeat answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_1_certificates_of_a_rejoined_host_and_a_removed_site_are_revoked() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let chi = register_site(&tv, "v1", "chi", true).await;
    let sign = |site: &FakeSite, host: &str| {
        let (site, host) = (site.clone(), host.to_string());
        async move {
            let (_, csr) = ferry_pki::generate_key_and_csr("h").expect("csr");
            let req = serde_json::json!({"host_id": id(&site.name, &host), "host_name": host, "csr_pem": csr});
            let r: serde_json::Value = site.client.post("/api/v1/agent/hosts/sign", &req).await.expect("sign");
            ferry_pki::fingerprint_of_pem(r["certificate_pem"].as_str().expect("certificate")).expect("fingerprint")
        }
    };
    let first = sign(&ny, "h1").await;
    let other = sign(&ny, "h2").await;
    let chi_host = sign(&chi, "h1").await;
    assert!(chi.report().await.revoked_certificates.is_empty(), "nothing revoked yet");
    let second = sign(&ny, "h1").await;
    assert_ne!(first, second);
    let revoked = chi.report().await.revoked_certificates;
    assert_eq!(revoked, vec![first.clone()], "the certificate h1 had before, only");

    tv.admin.delete(&format!("/api/v1/vaults/v1/replicationFabrics/{}", ny.fabric_id)).await.expect("remove ny");
    let mut revoked = chi.report().await.revoked_certificates;
    revoked.sort();
    let mut expected = vec![first, second, other];
    expected.sort();
    assert_eq!(revoked, expected, "every certificate of the removed site");
    assert!(!revoked.contains(&chi_host), "the other site's hosts keep theirs");
}

/// SEC-3: an API token can be given a life; it works until then and is refused with
/// `TokenExpired` after; the list shows when each token expires and never a secret; a life out
/// of range is refused and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_api_tokens_can_expire() {
    let t0 = chrono::Utc::now();
    let clock = ManualClock::at(t0);
    let c2 = clock.clone();
    let tv = start_vault_with(move |cfg| cfg.clock = c2).await;
    let t: serde_json::Value = tv
        .admin
        .post("/api/v1/tokens", &serde_json::json!({"name": "ci", "role": "Reader", "expires_in_days": 1}))
        .await
        .expect("token");
    let secret = t["secret"].as_str().expect("secret").to_string();
    let reader = tv.client(Some(&secret));
    let _: Vec<Vault> = reader.get("/api/v1/vaults").await.expect("valid for a day");
    let listed: serde_json::Value = tv.admin.get("/api/v1/tokens").await.expect("list");
    let ci = listed.as_array().expect("tokens").iter().find(|t| t["name"] == "ci").cloned().expect("listed");
    assert!(ci["expires_at"].is_string(), "{ci}");
    assert!(!listed.to_string().contains(&secret), "no secret in the list");
    let before = listed.as_array().map(Vec::len);
    for bad in [0, 3651] {
        let e = expect_err(
            tv.admin
                .post::<_, serde_json::Value>(
                    "/api/v1/tokens",
                    &serde_json::json!({"name": "x", "role": "Reader", "expires_in_days": bad}),
                )
                .await,
        );
        assert_eq!(e, (400, "InvalidExpiry".to_string()));
    }
    let listed: serde_json::Value = tv.admin.get("/api/v1/tokens").await.expect("list");
    assert_eq!(listed.as_array().map(Vec::len), before, "nothing created");

    clock.set(t0 + chrono::Duration::days(1) + chrono::Duration::seconds(1));
    let e = expect_err(reader.get::<Vec<Vault>>("/api/v1/vaults").await);
    assert_eq!(e, (401, "TokenExpired".to_string()));
    let _: Vec<Vault> = tv.admin.get("/api/v1/vaults").await.expect("the admin token does not expire");
}

/// SEC-3: one client address holds at most `max_connections_per_client` connections; one more
/// is refused before its TLS handshake, other work goes on, and a closed connection frees its
/// place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_connections_per_client_are_capped() {
    let tv = start_vault_with(|c| c.max_connections_per_client = 3).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tls_connection(&tv).await);
    }
    // The admin client holds (at most) one pooled connection of its own.
    let _: Vec<Vault> = tv.admin.get("/api/v1/vaults").await.expect("within the cap");
    let cfg = ferry_pki::tls::client_config(&tv.handle.ca_pem, None).expect("client config");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tcp = tokio::net::TcpStream::connect(tv.handle.addr).await.expect("connect");
    let refused = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name.clone(), tcp).await;
    assert!(refused.is_err(), "a fourth connection of the same client is refused");
    held.pop();
    // The server notices the close and frees the place (asked again until it did, at most 10 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tcp = tokio::net::TcpStream::connect(tv.handle.addr).await.expect("connect");
        match tokio_rustls::TlsConnector::from(cfg.clone()).connect(name.clone(), tcp).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the closed connection's place was not freed: {e}"),
        }
    }
}

/// SEC-3: the vault prunes by its retention at start and then every hour (the product's
/// defaults: events and jobs 90 days, answered commands and finished alerts 30): rows older
/// than that leave the API, an open job of the same age and everything recent stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_the_vault_prunes_old_events_and_ended_jobs_at_start_and_keeps_open_ones() {
    use ferry_types::event::Severity;
    let dir = tempfile::tempdir().expect("tempdir");
    let tv = start_vault_in(dir.path(), |_| {}).await;
    let vault = create_vault(&tv.admin, "v1").await;
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::days(120);
    let recent = now - chrono::Duration::days(2);
    let job_at = |t: chrono::DateTime<chrono::Utc>, status: JobStatus, name: &str| Job {
        id: Uuid::new_v4(),
        vault_id: vault.id,
        operation: "TestFailover".into(),
        object_type: "ProtectedItem".into(),
        object_id: "pi-1".into(),
        object_name: name.into(),
        fabric: None,
        status,
        tasks: vec![],
        progress: 0,
        allowed_actions: Job::actions_for(status),
        errors: vec![],
        params: serde_json::Value::Null,
        created_at: t,
        started_at: Some(t),
        ended_at: None,
        restart_of: None,
    };
    let (old_done, old_open, new_done) = (
        job_at(old, JobStatus::Succeeded, "old-done"),
        job_at(old, JobStatus::WaitingForInput, "old-open"),
        job_at(recent, JobStatus::Failed, "new-done"),
    );
    tv.store().insert_jobs(&[old_done.clone(), old_open.clone(), new_done.clone()]).await.expect("jobs");
    let ev = |t, message| ferry_store::NewEvent {
        vault: vault.id,
        time: t,
        severity: Severity::Warning,
        kind: "RetentionProbe",
        message,
        fabric: None,
        object_id: None,
    };
    tv.store().append_events(&[ev(old, "old event"), ev(recent, "recent event")]).await.expect("events");
    let events = |c: &Client| {
        let c = c.clone();
        async move {
            let v: serde_json::Value = c.get("/api/v1/vaults/v1/events?kind=RetentionProbe").await.expect("events");
            v["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| e["message"].to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(events(&tv.admin).await.len(), 2, "written");
    tv.handle.shutdown().await;

    // Started again with the product's defaults: the pruning at start takes the old rows.
    let tv = start_vault_in(dir.path(), |_| {}).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let names: Vec<String> = all_jobs(&tv.admin, "v1", "").await.into_iter().map(|j| j.object_name).collect();
        if !names.contains(&"old-done".to_string()) {
            assert!(names.contains(&"old-open".to_string()), "an open job is kept whatever its age: {names:?}");
            assert!(names.contains(&"new-done".to_string()), "a recent job is kept: {names:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the old ended job was not pruned: {names:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(events(&tv.admin).await, vec!["\"recent event\"".to_string()]);
    let e = expect_err(tv.admin.get::<Job>(&format!("/api/v1/vaults/v1/replicationJobs/{}", old_done.id)).await);
    assert_eq!(e.0, 404);
    tv.handle.shutdown().await;
}
