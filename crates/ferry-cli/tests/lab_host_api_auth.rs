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
