//! Starting the vault server: database, CA, first admin token, HTTPS listener, job resume,
//! heartbeat monitor.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ferry_store::{DocKind, Store};
use ferry_types::auth::Role;
use ferry_types::event::Severity;
use ferry_types::fabric::Fabric;
use ferry_types::vault::Vault;
use tokio::sync::Notify;

use crate::config::VaultConfig;
use crate::jobs::JobEngine;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Cannot prepare the data directory {0}")]
    DataDir(String, #[source] std::io::Error),
    #[error("Cannot open the vault database")]
    Store(#[from] ferry_store::Error),
    #[error("Cannot set up the vault's certificates")]
    Pki(#[from] ferry_pki::Error),
    #[error("Cannot listen on {0}")]
    Listen(SocketAddr, #[source] std::io::Error),
    #[error("Cannot set up the alert delivery's HTTP client")]
    AlertClient(#[source] reqwest::Error),
    #[error("The public URL {0} is not usable: {1}")]
    PublicUrl(String, String),
}

/// A running vault server.
pub struct VaultHandle {
    pub addr: SocketAddr,
    pub url: String,
    pub ca_pem: String,
    /// The admin token, only when it was created by this start (first start).
    pub new_admin_token: Option<String>,
    /// Where the metrics listener is, when one was asked for.
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl VaultHandle {
    /// Stop accepting requests and wait for the server to end.
    pub async fn shutdown(self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(2)));
        let _ = self.task.await;
    }

    /// Wait until the server ends (it normally runs forever).
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

pub const ADMIN_TOKEN_FILE: &str = "admin-token";

pub async fn start(config: VaultConfig) -> Result<VaultHandle, StartError> {
    // Bad settings are refused before anything is created.
    let public_host = match &config.public_url {
        Some(u) => Some(public_host(u)?),
        None => None,
    };
    let data = config.data_dir.clone();
    std::fs::create_dir_all(&data).map_err(|e| StartError::DataDir(data.display().to_string(), e))?;
    // SEC: the database (SMTP password, webhook secrets), the CA key and the admin token are
    // the owner's only.
    ferry_pki::ensure_private_dir(&data)?;
    let store = Store::open_sqlite(&data.join("vault.db")).await?;
    let pki_dir = data.join("pki");
    std::fs::create_dir_all(&pki_dir).map_err(|e| StartError::DataDir(pki_dir.display().to_string(), e))?;
    let ca = ferry_pki::Ca::load_or_create(&pki_dir, "Ferry vault CA")?;

    let std_listener = std::net::TcpListener::bind(config.listen).map_err(|e| StartError::Listen(config.listen, e))?;
    std_listener.set_nonblocking(true).map_err(|e| StartError::Listen(config.listen, e))?;
    let addr = std_listener.local_addr().map_err(|e| StartError::Listen(config.listen, e))?;

    let mut dns = vec!["localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec![std::net::Ipv4Addr::LOCALHOST.into()];
    if !addr.ip().is_unspecified() && !ips.contains(&addr.ip()) {
        ips.push(addr.ip());
    }
    for name in config.dns_names.iter().chain(public_host.as_ref()) {
        match name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.contains(name) => dns.push(name.clone()),
            Err(_) => {}
        }
    }
    let server_cert = ca.issue_server_cert("ferry-vault", &dns, &ips)?;
    let tls = ferry_pki::server_config(&server_cert.cert_pem, &server_cert.key_pem, ferry_pki::ClientAuth::None, true)?;

    // First start: create the admin token and say how to use it.
    let token_path = data.join(ADMIN_TOKEN_FILE);
    let mut new_admin_token = None;
    if !token_path.exists() {
        let t = crate::api::tokens::make_token(&store, "admin", Role::Contributor, config.clock.now(), None).await?;
        write_secret(&token_path, &t.secret).map_err(|e| StartError::DataDir(token_path.display().to_string(), e))?;
        new_admin_token = Some(t.secret);
    }
    std::fs::write(data.join("ca-cert.pem"), ca.cert_pem())
        .map_err(|e| StartError::DataDir(data.display().to_string(), e))?;

    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let url = match &config.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("https://{host}:{}", addr.port()),
    };
    let state = AppState {
        store: store.clone(),
        ca: Arc::new(ca),
        clock: config.clock.clone(),
        config: Arc::new(config.clone()),
        jobs: Arc::new(JobEngine::new(store.clone())),
        commands_queued: Arc::new(Notify::new()),
        alerts: Arc::new(crate::alerts::Alerts::new(config.alert_timeout).map_err(StartError::AlertClient)?),
        public_url: url.clone(),
        peers: Arc::default(),
        failed_auth: Arc::new(crate::auth_limit::FailedAttempts::new(config.max_failed_auth_per_minute)),
        http_metrics: Arc::default(),
    };
    let resumed = state.jobs.resume_all(&state).await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed unfinished jobs");
    }
    tokio::spawn(heartbeat_monitor(state.clone()));
    tokio::spawn(crate::replication::health_sweeper(
        state.clone(),
        state.config.health_sweep_interval,
        state.config.heartbeat_timeout,
    ));
    tokio::spawn(crate::test_expiry::run(state.clone()));
    tokio::spawn(crate::alerts::deliver::run(state.clone()));
    tokio::spawn(crate::retention::run(state.clone()));

    let metrics_addr = match config.metrics_listen {
        Some(at) => {
            let l = std::net::TcpListener::bind(at).map_err(|e| StartError::Listen(at, e))?;
            Some(crate::metrics::serve(state.clone(), l).map_err(|e| StartError::Listen(at, e))?)
        }
        None => None,
    };
    let (router, _) = crate::api::router(state.clone());
    let router = router
        .layer(axum::middleware::from_fn_with_state(state.http_metrics.clone(), crate::metrics::track))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(state.config.max_concurrent_requests.max(1)));
    let handle = axum_server::Handle::new();
    // SEC-3: connections per client address capped, slow or idle clients closed.
    let server = ferry_endpoint::tls_server(
        std_listener,
        tls,
        state.config.max_connections_per_client,
        state.config.header_read_timeout,
    )
    .handle(handle.clone());
    // The client's address reaches handlers (the limit of failed sign-ins is per address).
    let task = tokio::spawn(async move {
        server.serve(router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await
    });
    tracing::info!(%url, "vault listening");
    if let Some(m) = metrics_addr {
        tracing::info!(%m, "Prometheus metrics on http://{m}/metrics");
    }
    Ok(VaultHandle {
        addr,
        url,
        ca_pem: state.ca.cert_pem().to_string(),
        new_admin_token,
        metrics_addr,
        state,
        handle,
        task,
    })
}

/// The host of a public URL (`https://name:port`), refused when it is not an https URL.
fn public_host(u: &str) -> Result<String, StartError> {
    let parsed = url::Url::parse(u).map_err(|e| StartError::PublicUrl(u.to_string(), e.to_string()))?;
    match (parsed.scheme(), parsed.host_str()) {
        ("https", Some(h)) => Ok(h.to_string()),
        _ => Err(StartError::PublicUrl(u.to_string(), "it must be an https:// URL with a host".into())),
    }
}

fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Raise `HeartbeatLost` once when a site stops reporting, with a `SiteHeartbeatLost` alert, and
/// `HeartbeatRestored` when it comes back (JOB-4).
///
/// A site already reported lost before this start stays lost (its last heartbeat event says so),
/// so a restart raises no second alert. Time the vault was down does not count: a site is lost
/// only when it has not reported for the timeout while this vault runs.
async fn heartbeat_monitor(state: AppState) {
    let started = state.clock.now();
    let mut lost = lost_before_start(&state).await;
    let period = (state.config.heartbeat_timeout / 4).max(Duration::from_millis(500));
    loop {
        tokio::time::sleep(period).await;
        let Ok(vaults) = state.store.list_vaults().await else { continue };
        for (body, _) in vaults {
            let Ok(v) = serde_json::from_value::<Vault>(body) else { continue };
            let Ok(fabrics) = state.store.all_docs::<Fabric>(DocKind::Fabric, v.id).await else { continue };
            let now = state.clock.now();
            for f in fabrics {
                let f = f.body;
                let since = f.last_heartbeat.map_or(started, |t| t.max(started));
                let silent = (now - since).to_std().unwrap_or_default();
                if silent > state.config.heartbeat_timeout {
                    if lost.insert(f.id) {
                        let msg = match f.last_heartbeat {
                            Some(t) => format!(
                                "Site {} has not reported for {} s",
                                f.name,
                                (now - t).to_std().unwrap_or_default().as_secs()
                            ),
                            None => format!("Site {} has never reported", f.name),
                        };
                        let of = crate::alerts::AlertOf {
                            kind: ferry_types::alert::AlertKind::SiteHeartbeatLost,
                            object: Some(ferry_types::alert::AlertObject {
                                object_type: "Fabric".into(),
                                id: f.id.to_string(),
                                name: f.name.clone(),
                            }),
                        };
                        state
                            .event_alerting(v.id, Severity::Critical, "HeartbeatLost", &msg, Some(f.id), None, of)
                            .await;
                    }
                } else if f
                    .last_heartbeat
                    .is_some_and(|t| (now - t).to_std().unwrap_or_default() <= state.config.heartbeat_timeout)
                    && lost.remove(&f.id)
                {
                    state
                        .event(
                            v.id,
                            Severity::Info,
                            "HeartbeatRestored",
                            &format!("Site {} reports again", f.name),
                            Some(f.id),
                            None,
                        )
                        .await;
                }
            }
        }
    }
}

/// Sites whose last heartbeat event is `HeartbeatLost` (lost when the vault stopped).
async fn lost_before_start(state: &AppState) -> std::collections::HashSet<uuid::Uuid> {
    let mut lost = std::collections::HashSet::new();
    let Ok(vaults) = state.store.list_vaults().await else { return lost };
    for (body, _) in vaults {
        let Ok(v) = serde_json::from_value::<Vault>(body) else { continue };
        let Ok(fabrics) = state.store.all_docs::<Fabric>(DocKind::Fabric, v.id).await else { continue };
        for f in fabrics {
            let fid = f.body.id;
            let last = |kind: &'static str| {
                let store = state.store.clone();
                async move {
                    store
                        .list_events(v.id, None, Some(fid), Some(kind), None, 1)
                        .await
                        .ok()
                        .and_then(|(e, _)| e.first().map(|e| e.id))
                        .unwrap_or(0)
                }
            };
            if last("HeartbeatLost").await > last("HeartbeatRestored").await {
                lost.insert(fid);
            }
        }
    }
    lost
}
