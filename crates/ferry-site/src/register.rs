//! Registering a site manager with a vault (FAB-2, FAB-3).
//!
//! The key file names the vault's URL and the fingerprint of its CA. The site fetches the CA
//! certificate, checks it against that fingerprint (so a man in the middle cannot pose as the
//! vault), and from then on trusts only that CA. It sends a CSR; the vault answers with the
//! site's certificate and a site credential.

use std::path::Path;

use ferry_client::{Client, Proxy};
use ferry_pki::RegistrationKey;
use ferry_types::site_protocol::{CloudName, RegisterRequest, RegisterResponse};

use crate::config::SiteConfig;
use crate::error::SiteError;
use crate::recorder::Recorder;
use crate::state::{tls_dir, write_json, Registration};

pub fn proxy_of(cfg: &SiteConfig) -> Option<Proxy> {
    cfg.proxy.as_ref().map(|p| Proxy {
        url: format!("http://{}:{}", p.address, p.port),
        username: p.username.clone(),
        password: p.password.clone(),
    })
}

pub async fn register(
    cfg: &SiteConfig,
    data: &Path,
    key_text: &str,
    recorder: &Recorder,
) -> Result<Registration, SiteError> {
    let key = RegistrationKey::parse(key_text).map_err(|e| SiteError::Registration(e.to_string()))?;
    if key.vault_name() != cfg.vault_name {
        return Err(SiteError::Registration(format!(
            "The key belongs to vault '{}', but this site is configured for vault '{}'",
            key.vault_name(),
            cfg.vault_name
        )));
    }
    let url = key
        .vault_urls()
        .first()
        .cloned()
        .ok_or_else(|| SiteError::Registration("The key names no vault URL".into()))?;
    let proxy = proxy_of(cfg);
    let boot = Client::builder(&url).insecure_for_pinned_bootstrap().proxy(proxy.clone()).build()?;
    let ca_pem = boot.get_text("/api/v1/ca").await?;
    ferry_pki::verify_ca_pin(&ca_pem, key.ca_fingerprint()).map_err(|e| SiteError::Registration(e.to_string()))?;
    let client = Client::builder(&url).ca(ca_pem.clone()).proxy(proxy).build()?;
    let (key_pem, csr_pem) = ferry_pki::generate_key_and_csr(&format!("site-{}", cfg.name))?;
    let fabric = cfg.fabric()?;
    let req = RegisterRequest {
        key: key_text.to_string(),
        vault_name: cfg.vault_name.clone(),
        friendly_name: cfg.name.clone(),
        server_name: cfg.server_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        sync_all_clouds: cfg.sync_all_clouds,
        proxy_address: cfg.proxy.as_ref().map(|p| format!("{}:{}", p.address, p.port)),
        csr_pem,
        clouds: fabric.clouds.iter().map(|c| CloudName { id: c.id.clone(), name: c.name.clone() }).collect(),
    };
    recorder.record("/api/v1/agent/register", &req);
    let resp: RegisterResponse = client.post("/api/v1/agent/register", &req).await?;
    ferry_pki::TlsFiles::save(&tls_dir(data), &resp.ca_pem, &resp.certificate_pem, &key_pem)?;
    let reg = Registration {
        vault_url: url,
        vault_id: resp.vault_id,
        fabric_id: resp.fabric_id,
        provider_id: resp.provider_id,
        site_token: resp.site_token,
    };
    write_json(&data.join("registration.json"), &reg)?;
    Ok(reg)
}
