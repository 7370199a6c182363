//! SEC-1: a host agent's management API answers only its own site manager. Another host's
//! certificate, the other site's, or the host's own — all from the same vault CA — are refused.

mod common;

use common::{Lab, LabOptions};

fn get_status(lab: &Lab, address: &str, tls_dir: &std::path::Path) -> Result<serde_json::Value, String> {
    let ca = std::fs::read_to_string(lab.dir.join("vault/ca-cert.pem")).expect("ca");
    let cert = std::fs::read_to_string(tls_dir.join(ferry_pki::CERT_FILE)).expect("cert");
    let key = std::fs::read_to_string(tls_dir.join(ferry_pki::KEY_FILE)).expect("key");
    let c = ferry_client::Client::builder(format!("https://{address}"))
        .ca(ca)
        .identity(cert, key)
        .peer_name(ferry_pki::PeerName::Prefix("host-".into()))
        .build()
        .expect("client");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(c.get::<serde_json::Value>("/v1/status")).map_err(|e| e.to_string())
}

#[test]
fn sec_1_host_api_answers_only_its_own_site_manager() {
    let lab = Lab::start(LabOptions::default());
    let hosts = lab.json(&["host-list", "--site", "VMM-Chicago"]);
    let chi1 = hosts
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == "chi1"))
        .and_then(|h| h["address"].as_str())
        .expect("chi1 address")
        .to_string();
    let ok = get_status(&lab, &chi1, &lab.dir.join("sites/chicago/data/tls")).expect("the Chicago site manager");
    assert_eq!(ok["name"], "chi1");
    for other in ["sites/newyork/data/tls", "hosts/ny1/data/tls", "hosts/chi1/data/tls"] {
        let err = get_status(&lab, &chi1, &lab.dir.join(other)).expect_err(other);
        eprintln!("{other}: refused: {err}");
    }
    // SEC-1: agents' certificates name the agent only: no alternative name (a DNS name, an
    // address) a browser that trusts the lab CA would accept for another server.
    for tls in ["sites/chicago/data/tls", "sites/newyork/data/tls", "hosts/ny1/data/tls", "hosts/chi1/data/tls"] {
        let pem = std::fs::read_to_string(lab.dir.join(tls).join(ferry_pki::CERT_FILE)).expect("cert");
        let sans = ferry_pki::cert_alternative_names(&pem).expect("a readable certificate");
        assert!(sans.is_empty(), "{tls}: no alternative name: {sans:?}");
    }
}

/// Open `n` TCP connections to `address` at once; returns those the server kept open and how
/// many it closed (refused before the TLS handshake), once at most `keep` are open or 8 s have
/// passed (a loaded server accepts its backlog late; before its 10 s handshake limit closes the
/// ones it kept).
fn hold_connections(address: &str, n: usize, keep: usize) -> (Vec<std::net::TcpStream>, usize) {
    use std::io::Read;
    let mut open: Vec<std::net::TcpStream> =
        (0..n).filter_map(|_| std::net::TcpStream::connect(address).ok()).collect();
    let mut closed = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut still = Vec::new();
        for mut c in open {
            c.set_nonblocking(true).expect("nonblocking");
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still.push(c),
                _ => closed += 1,
            }
        }
        open = still;
        if open.len() <= keep || std::time::Instant::now() > deadline {
            return (open, closed);
        }
    }
}

/// SEC-3: the site manager's host endpoint and the host agent's API hold at most 256
/// connections of one client address (the product default), refusing more before the TLS
/// handshake; the connections given back, the site's host reports as before.
#[test]
fn sec_3_site_and_host_endpoints_cap_connections_per_client() {
    let lab = Lab::start(LabOptions::default());
    let site_endpoint =
        std::fs::read_to_string(lab.dir.join("sites/chicago/data/host-endpoint")).expect("host endpoint");
    let chi1 = lab
        .json(&["host-list", "--site", "VMM-Chicago"])
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == "chi1"))
        .and_then(|h| h["address"].as_str())
        .expect("chi1 address")
        .to_string();
    for address in [site_endpoint.trim().to_string(), chi1] {
        let (open, closed) = hold_connections(&address, 300, 256);
        assert!(open.len() <= 256, "{address}: {} connections held at once", open.len());
        assert!(open.len() >= 200 && closed >= 44, "{address}: {} held, {closed} refused", open.len());
        drop(open);
        // The server frees a place when it sees the connection closed.
        lab.wait_for("the places given back", std::time::Duration::from_secs(20), || {
            let (again, refused) = hold_connections(&address, 10, 10);
            (again.len() == 10 && refused == 0).then_some(())
        });
    }
    // The hosts kept (or got back) their connection to the site and to the vault's view.
    lab.wait_for("the Chicago host connected", std::time::Duration::from_secs(60), || {
        let hosts = lab.json(&["host-list", "--site", "VMM-Chicago"]);
        hosts
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h["name"] == "chi1") && a.iter().all(|h| h["connected"] == true))
            .then_some(())
    });
}
