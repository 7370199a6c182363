//! The site's HTTPS endpoint for its host agents: join (certificate through the vault CA) and
//! periodic reports. A host authenticates with its own join token once (used up by the join, see
//! [`crate::join_tokens`]), then with its host token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use ferry_types::site_protocol::{
    HostJoinRequest, HostJoinResponse, HostRenewRequest, HostRenewResponse, HostReport, HostReportAck, SignHostRequest,
    SignHostResponse,
};
use ferry_types::ApiError;
use sha2::{Digest, Sha256};

use crate::state::HostEntry;
use crate::Site;

type Failure = (StatusCode, Json<ApiError>);

fn fail(status: StatusCode, code: &str, msg: impl Into<String>) -> Failure {
    (status, Json(ApiError::new(code, msg)))
}

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A client for host `host_id`'s API: trusts the vault CA, presents the site's certificate, and
/// accepts only that host's certificate, at whatever address it reported.
pub fn host_client(site: &Site, address: &str, host_id: &str) -> Result<ferry_client::Client, ferry_client::Error> {
    ferry_client::Client::builder(format!("https://{address}"))
        .ca(site.tls.ca_cert_pem.clone())
        .identity(site.tls.cert_pem.clone(), site.tls.key_pem.clone())
        .peer_name(ferry_pki::PeerName::Exact(format!("host-{}-{host_id}", site.reg.fabric_id)))
        // SEC-1: a revoked certificate of the host (it joined again; its old key may be in
        // other hands) is refused at its address as everywhere else.
        .revoked(site_revocations(site))
        .timeout(std::time::Duration::from_secs(600))
        .build()
}

/// The host certificates the vault revoked, as the site last heard them.
fn site_revocations(site: &Site) -> ferry_pki::Revocations {
    let r = ferry_pki::Revocations::default();
    if let Ok(p) = site.persisted.lock() {
        r.set(&p.revoked_certificates);
    }
    r
}

pub async fn serve(site: Arc<Site>) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), crate::SiteError> {
    let tls = ferry_pki::server_config(&site.tls.cert_pem, &site.tls.key_pem, ferry_pki::ClientAuth::None, true)?;
    // Hosts remember the address they joined; a restarted site with an ephemeral port binds the
    // address it had before when it can.
    let previous =
        std::fs::read_to_string(site.data.join("host-endpoint")).ok().and_then(|a| a.trim().parse::<SocketAddr>().ok());
    let listener = match previous {
        Some(prev) if site.cfg.listen.port() == 0 && prev.ip() == site.cfg.listen.ip() => {
            std::net::TcpListener::bind(prev).or_else(|_| std::net::TcpListener::bind(site.cfg.listen))?
        }
        _ => std::net::TcpListener::bind(site.cfg.listen)?,
    };
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::fs::write(site.data.join("host-endpoint"), addr.to_string())?;
    let max_per_client = site.cfg.max_connections_per_client;
    let app = Router::new()
        .route("/v1/join", post(join))
        .route("/v1/report", post(report))
        .route("/v1/renew", post(renew))
        .route("/v1/status", axum::routing::get(status))
        .with_state(site);
    // SEC-3: connections per client address capped, slow or idle clients closed.
    let server = ferry_endpoint::tls_server(listener, tls, max_per_client, ferry_endpoint::HEADER_READ_TIMEOUT);
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "host endpoint stopped");
        }
    });
    Ok((addr, task))
}

/// The vault CA's certificate for a host's CSR (the vault's refusal passed on as it is).
async fn vault_sign(site: &Site, sign: &SignHostRequest) -> Result<SignHostResponse, Failure> {
    site.recorder.record("/api/v1/agent/hosts/sign", sign);
    site.vault.post("/api/v1/agent/hosts/sign", sign).await.map_err(|e| match e {
        ferry_client::Error::Api { api, status } => {
            (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), Json(api))
        }
        other => fail(
            StatusCode::BAD_GATEWAY,
            "VaultUnreachable",
            format!("The vault cannot sign the host certificate now: {other}"),
        ),
    })
}

async fn join(
    State(site): State<Arc<Site>>,
    Json(req): Json<HostJoinRequest>,
) -> Result<Json<HostJoinResponse>, Failure> {
    let Some((id, name, _)) = site.fabric.hosts.iter().find(|(_, n, _)| *n == req.host_name).cloned() else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "UnknownHost",
            format!("Host {} is not in site {}'s definition", req.host_name, site.cfg.name),
        ));
    };
    // One join at a time: the token is checked and used up as one step (SEC-1).
    let _one = site.joining.lock().await;
    let state_err = |e: crate::SiteError| fail(StatusCode::INTERNAL_SERVER_ERROR, "SiteStateError", e.to_string());
    if !crate::join_tokens::matches(&site.data, &name, &req.join_token).map_err(state_err)? {
        return Err(fail(
            StatusCode::UNAUTHORIZED,
            "InvalidJoinToken",
            format!(
                "The join token is not one issued for host {name}, or it was used already; issue a new one on the \
                 site manager with `ferry site join-token --host {name}`"
            ),
        ));
    }
    // The request must prove the key it names (its signature); the site records that key.
    let key = ferry_pki::csr_key_fingerprint(&req.csr_pem)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, "InvalidCertificateRequest", e.to_string()))?;
    let sign = SignHostRequest { host_id: id.clone(), host_name: name.clone(), csr_pem: req.csr_pem.clone() };
    let signed = vault_sign(&site, &sign).await?;
    let host_token = {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        format!("fh_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    };
    if let Ok(mut p) = site.persisted.lock() {
        p.hosts.retain(|h| h.id != id);
        p.hosts.push(HostEntry {
            id: id.clone(),
            name: name.clone(),
            address: req.address.clone(),
            token_hash: hash(&host_token),
            key_sha256: Some(key),
            last_report: None,
            last_seen_ms: chrono::Utc::now().timestamp_millis(),
        });
    }
    site.save().map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "SiteStateError", e.to_string()))?;
    crate::join_tokens::consume(&site.data, &name).map_err(state_err)?;
    tracing::info!(host = %name, address = %req.address, "host joined; its join token is used up");
    Ok(Json(HostJoinResponse {
        host_id: id,
        host_token,
        certificate_pem: signed.certificate_pem,
        ca_pem: signed.ca_pem,
    }))
}

/// The hash of a request's bearer host token.
fn token_hash(headers: &HeaderMap) -> Result<String, Failure> {
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| fail(StatusCode::UNAUTHORIZED, "MissingCredentials", "Send the host token"))?;
    Ok(hash(token.trim()))
}

/// The host behind a request's bearer host token: (id, name).
fn host_of(site: &Site, headers: &HeaderMap) -> Result<(String, String), Failure> {
    let h = token_hash(headers)?;
    let p = site
        .persisted
        .lock()
        .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "SiteStateError", "lock poisoned"))?;
    p.hosts
        .iter()
        .find(|e| e.token_hash == h)
        .map(|e| (e.id.clone(), e.name.clone()))
        .ok_or_else(|| fail(StatusCode::UNAUTHORIZED, "InvalidCredentials", "Unknown host token"))
}

/// SEC-3: a joined host renews its certificate (a new key) with its host token; the vault
/// signs it and revokes the one before; the site records the new key.
async fn renew(
    State(site): State<Arc<Site>>,
    headers: HeaderMap,
    Json(req): Json<HostRenewRequest>,
) -> Result<Json<HostRenewResponse>, Failure> {
    let (id, name) = host_of(&site, &headers)?;
    let key = ferry_pki::csr_key_fingerprint(&req.csr_pem)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, "InvalidCertificateRequest", e.to_string()))?;
    let sign = SignHostRequest { host_id: id.clone(), host_name: name.clone(), csr_pem: req.csr_pem };
    let signed = vault_sign(&site, &sign).await?;
    if let Ok(mut p) = site.persisted.lock() {
        if let Some(e) = p.hosts.iter_mut().find(|e| e.id == id) {
            e.key_sha256 = Some(key);
        }
    }
    site.save().map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "SiteStateError", e.to_string()))?;
    tracing::info!(host = %name, "host certificate renewed");
    Ok(Json(HostRenewResponse { certificate_pem: signed.certificate_pem, ca_pem: signed.ca_pem }))
}

async fn report(
    State(site): State<Arc<Site>>,
    headers: HeaderMap,
    Json(rep): Json<HostReport>,
) -> Result<Json<HostReportAck>, Failure> {
    let h = token_hash(&headers)?;
    let mut p = site
        .persisted
        .lock()
        .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "SiteStateError", "lock poisoned"))?;
    let entry = p
        .hosts
        .iter_mut()
        .find(|e| e.token_hash == h)
        .ok_or_else(|| fail(StatusCode::UNAUTHORIZED, "InvalidCredentials", "Unknown host token"))?;
    let now = chrono::Utc::now();
    let mut rep = rep;
    // The host's clock against the site's, measured now; the vault corrects the host's times
    // with it (a host with a wrong clock does not fake an RPO or a stall).
    if let Some(sent) = rep.sent_at {
        let offset = (sent - now).num_milliseconds();
        for s in &mut rep.replication {
            s.clock_offset_ms = Some(offset);
        }
    }
    entry.address = rep.address.clone();
    entry.last_report = Some(rep);
    entry.last_seen_ms = now.timestamp_millis();
    let pairs = p.pairs.clone();
    let peers = p.peers.clone();
    let revoked_certificates = p.revoked_certificates.clone();
    Ok(Json(HostReportAck { pairs, bandwidth: site.cfg.bandwidth.clone(), peers, revoked_certificates }))
}

/// Local status of the site (works while the vault is unreachable): its hosts and when the
/// vault last accepted a report.
async fn status(State(site): State<Arc<Site>>) -> Json<serde_json::Value> {
    let p = site.persisted.lock().map(|p| p.clone()).unwrap_or_default();
    let hosts: Vec<serde_json::Value> = p
        .hosts
        .iter()
        .map(|h| serde_json::json!({"id": h.id, "name": h.name, "address": h.address, "last_seen_ms": h.last_seen_ms}))
        .collect();
    Json(serde_json::json!({
        "site": site.cfg.name,
        "fabric_id": site.reg.fabric_id,
        "last_vault_report_ms": site.last_vault_report_ms.load(std::sync::atomic::Ordering::SeqCst),
        "hosts": hosts,
        "pairs": p.pairs.len(),
    }))
}
