//! FAB-3: a site manager reaches the vault through an HTTP proxy (address, port, optional
//! credentials). The proxy here is a real CONNECT proxy on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct ProxyLog {
    tunnels: Vec<String>,
    refused: usize,
}

/// A CONNECT proxy; with `creds`, requests without the right Proxy-Authorization get 407.
async fn start_proxy(creds: Option<(&'static str, &'static str)>) -> (SocketAddr, Arc<Mutex<ProxyLog>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(ProxyLog::default()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let log = log2.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    head.push(buf[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let mut lines = text.lines();
                let first = lines.next().unwrap_or_default().to_string();
                let target = first
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or_default()
                    .to_string();
                if let Some((u, p)) = creds {
                    let expected =
                        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
                    let ok = text.lines().any(|l| {
                        l.to_ascii_lowercase().starts_with("proxy-authorization:") && l[20..].trim() == expected
                    });
                    if !ok {
                        log.lock().expect("log").refused += 1;
                        let _ = client.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"ferry\"\r\nContent-Length: 0\r\n\r\n").await;
                        return;
                    }
                }
                let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
                log.lock().expect("log").tunnels.push(target);
                if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, log)
}

struct Vault {
    handle: ferry_vault::VaultHandle,
    _dir: tempfile::TempDir,
    admin: ferry_client::Client,
}

async fn vault() -> Vault {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ferry_vault::VaultConfig::new(dir.path().join("vault"), "127.0.0.1:0".parse().expect("addr"));
    let handle = ferry_vault::start(cfg).await.expect("vault");
    let admin = ferry_client::Client::builder(&handle.url)
        .ca(handle.ca_pem.clone())
        .token(handle.new_admin_token.clone().expect("token"))
        .build()
        .expect("client");
    let _: serde_json::Value = admin.post("/api/v1/vaults", &serde_json::json!({"name": "v1"})).await.expect("vault");
    Vault { handle, _dir: dir, admin }
}

fn site_config(proxy: SocketAddr, creds: Option<(&str, &str)>) -> ferry_site::SiteConfig {
    let auth = creds.map(|(u, p)| format!("username = \"{u}\"\npassword = \"{p}\"\n")).unwrap_or_default();
    let text = format!(
        "name = \"VMM-Proxy\"\nvault_name = \"v1\"\nreport_interval_secs = 1\n[proxy]\naddress = \"{}\"\nport = {}\n{auth}\n[[clouds]]\nname = \"C1\"\n",
        proxy.ip(),
        proxy.port()
    );
    toml::from_str(&text).expect("config")
}

async fn key(v: &Vault) -> String {
    let k: serde_json::Value =
        v.admin.post("/api/v1/vaults/v1/registrationKeys", &serde_json::Value::Null).await.expect("key");
    k["file"].as_str().expect("file").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_3_site_registers_and_reports_through_an_authenticating_proxy() {
    let v = vault().await;
    let (proxy, log) = start_proxy(Some(("ferry", "s3cret"))).await;
    let data = tempfile::tempdir().expect("tempdir");
    let recorder = ferry_site::recorder::Recorder::default();

    // Wrong credentials: refused by the proxy, nothing registered, the key stays unused.
    let bad = site_config(proxy, Some(("ferry", "wrong")));
    let k = key(&v).await;
    let err = ferry_site::register::register(&bad, data.path(), &k, &recorder).await.expect_err("407");
    assert!(format!("{err:?}").contains("407") || format!("{err}").contains("reach"), "{err:?}");
    assert!(log.lock().expect("log").refused >= 1);
    let fabrics: serde_json::Value = v.admin.get("/api/v1/vaults/v1/replicationFabrics").await.expect("list");
    assert_eq!(fabrics, serde_json::json!([]));

    // Right credentials: registration and reports go through the proxy.
    let good = site_config(proxy, Some(("ferry", "s3cret")));
    let reg =
        ferry_site::register::register(&good, data.path(), &k, &recorder).await.expect("registered through the proxy");
    let handle = ferry_site::start(good, data.path(), None).await.expect("site runs");
    let vault_addr = v.handle.addr.to_string();
    let mut reported = false;
    for _ in 0..100 {
        let f: serde_json::Value =
            v.admin.get(&format!("/api/v1/vaults/v1/replicationFabrics/{}", reg.fabric_id)).await.expect("fabric");
        if f["providers"][0]["last_heartbeat"].is_string() && f["inventory"]["clouds"][0]["name"] == "C1" {
            assert_eq!(
                f["proxy"],
                format!("{}:{}", proxy.ip(), proxy.port()),
                "the vault knows a proxy is used, not its credentials"
            );
            assert!(!f.to_string().contains("s3cret"));
            reported = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reported, "the site's report reached the vault through the proxy");
    let tunnels = log.lock().expect("log").tunnels.clone();
    assert!(tunnels.len() >= 2, "registration and reports were tunnelled: {tunnels:?}");
    assert!(tunnels.iter().all(|t| *t == vault_addr), "{tunnels:?}");
    handle.stop();
    v.handle.shutdown().await;
}
