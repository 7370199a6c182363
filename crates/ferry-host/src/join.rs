//! Joining the site: a key pair and CSR made here, the certificate signed by the vault CA
//! through the site (SEC-1). The identity is kept in `<data>/tls` and `<data>/host.json`.

use std::net::SocketAddr;
use std::path::Path;

use ferry_types::site_protocol::{HostJoinRequest, HostJoinResponse};
use serde::{Deserialize, Serialize};

use crate::config::HostConfig;
use crate::HostError;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    host_id: String,
    host_token: String,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub host_id: String,
    pub host_token: String,
    pub tls: ferry_pki::TlsFiles,
}

pub async fn join_or_load(cfg: &HostConfig, data: &Path, api_addr: SocketAddr) -> Result<Identity, HostError> {
    let tls_dir = data.join("tls");
    let saved_path = data.join("host.json");
    if ferry_pki::TlsFiles::exists(&tls_dir) && saved_path.exists() {
        let saved: Saved = serde_json::from_slice(&std::fs::read(&saved_path)?)
            .map_err(|e| HostError::Join(format!("{} is unreadable: {e}", saved_path.display())))?;
        let tls = ferry_pki::TlsFiles::load(&tls_dir)?;
        return Ok(Identity { host_id: saved.host_id, host_token: saved.host_token, tls });
    }
    let ca_pem = std::fs::read_to_string(&cfg.ca_cert)?;
    // Before it joined, the host knows its site only as "a site of this vault".
    let client = ferry_client::Client::builder(&cfg.site_url)
        .ca(ca_pem)
        .peer_name(ferry_pki::PeerName::Prefix("site-".into()))
        .build()?;
    let (key_pem, csr_pem) = ferry_pki::generate_key_and_csr(&format!("host-{}", cfg.name))?;
    let req = HostJoinRequest {
        host_name: cfg.name.clone(),
        join_token: cfg.join_token()?,
        csr_pem,
        address: api_addr.to_string(),
    };
    let resp: HostJoinResponse = client.post("/v1/join", &req).await?;
    let tls = ferry_pki::TlsFiles::save(&tls_dir, &resp.ca_pem, &resp.certificate_pem, &key_pem)?;
    let saved = Saved { host_id: resp.host_id.clone(), host_token: resp.host_token.clone() };
    ferry_pki::write_private_file(
        &saved_path,
        &serde_json::to_vec_pretty(&saved).map_err(|e| HostError::Join(e.to_string()))?,
    )?;
    Ok(Identity { host_id: resp.host_id, host_token: resp.host_token, tls })
}

/// The certificate name of the site a host joined: `site-<site id>`, read from the host's own
/// certificate name `host-<site id>-<host id>` (the vault names both).
pub fn site_cn_of(host_cert_pem: &str) -> ferry_pki::PeerName {
    let cn = ferry_pki::cert_common_name(host_cert_pem).unwrap_or_default();
    match cn.strip_prefix("host-").and_then(|rest| rest.get(..36)).filter(|f| uuid::Uuid::parse_str(f).is_ok()) {
        Some(fabric) => ferry_pki::PeerName::Exact(format!("site-{fabric}")),
        None => ferry_pki::PeerName::Prefix("site-".into()),
    }
}
