//! The Ferry site manager (`ferry site`): the VMM server of the original scenario.
//!
//! A site manager owns one site's fabric, defined in a TOML file (clouds, host groups, logical
//! and VM networks with subnets and static IP pools, storage classifications, hosts). It:
//!
//! - registers with a vault using a registration key (FAB-2, FAB-3) — see [`register`];
//! - keeps an outbound-only HTTPS connection to the vault: a periodic report (heartbeat plus
//!   inventory, FAB-4) and a long poll for commands — see [`vault_link`]; while the vault is
//!   unreachable it keeps serving its hosts and retries, and resyncs when the vault returns;
//! - lets host agents join, each with a join token of its own used once (see [`join_tokens`]),
//!   gets their certificates signed by the vault CA (SEC-1), and receives their reports — see
//!   [`host_server`];
//! - runs the vault's commands: cloud pair configuration, VM actions forwarded to hosts over
//!   mutual TLS — see [`commands`] — and recovery plan scripts from its script library, on the
//!   site manager itself — see [`scripts`].
//!
//! What is sent to the vault is exactly the types of `ferry_types::site_protocol`; the
//! `record_vault_traffic` option writes each message to a file (FAB-9).

pub mod commands;
pub mod config;
pub mod error;
pub mod host_server;
pub mod inventory;
pub mod join_tokens;
pub mod metrics;
pub mod recorder;
pub mod register;
pub mod scripts;
pub mod state;
pub mod vault_link;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use config::SiteConfig;
pub use error::SiteError;
use state::{read_json, Persisted, Registration};

/// A running site manager.
pub struct Site {
    pub cfg: SiteConfig,
    pub data: PathBuf,
    pub fabric: config::Fabric,
    pub reg: Registration,
    pub vault: ferry_client::Client,
    pub tls: ferry_pki::TlsFiles,
    pub persisted: Mutex<Persisted>,
    /// Cloud ids whose metadata the vault wants (from the last report answer).
    pub synced: Mutex<Option<Vec<String>>>,
    /// One join at a time: a token is checked and used up as one step.
    pub joining: tokio::sync::Mutex<()>,
    pub recorder: recorder::Recorder,
    /// When the vault last accepted a report (ms since the epoch); 0 = never since start.
    pub last_vault_report_ms: std::sync::atomic::AtomicI64,
    /// Commands being run now (commands run concurrently; one delivered again meanwhile waits).
    pub in_flight: Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// Commands answered since start, by outcome (metrics).
    pub commands: metrics::CommandCounters,
}

pub struct SiteHandle {
    pub site: Arc<Site>,
    /// Where hosts join and report.
    pub host_addr: SocketAddr,
    /// Where the metrics listener is, when the definition asks for one.
    pub metrics_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SiteHandle {
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The site-wide join token of earlier versions; removed at start (tokens are per host now).
const LEGACY_JOIN_TOKEN_FILE: &str = "join-token";

impl Site {
    pub fn save(&self) -> std::io::Result<()> {
        // One writer at a time: commands and host reports save concurrently.
        static SAVING: Mutex<()> = Mutex::new(());
        let _saving = SAVING.lock().map_err(|_| std::io::Error::other("site state lock poisoned"))?;
        let p = self.persisted.lock().map_err(|_| std::io::Error::other("site state lock poisoned"))?.clone();
        state::write_json(&self.data.join("state.json"), &p)
    }
}

/// Load the registration and start the site's services.
/// The vault client of a registered site: the vault's CA and the site credential.
fn vault_client(
    cfg: &SiteConfig,
    data: &Path,
) -> Result<(Registration, ferry_pki::TlsFiles, ferry_client::Client), SiteError> {
    let reg: Registration = read_json(&data.join("registration.json"))?.ok_or(SiteError::NotRegistered)?;
    let tls = ferry_pki::TlsFiles::load(&state::tls_dir(data))?;
    let vault = ferry_client::Client::builder(&reg.vault_url)
        .ca(tls.ca_cert_pem.clone())
        .token(reg.site_token.clone())
        .proxy(register::proxy_of(cfg))
        .build()?;
    Ok((reg, tls, vault))
}

/// REP-1 from the site side: ask the vault to enable protection for VMs of this site, with the
/// site's own credential (run on the site manager's server: `ferry site protect`).
pub async fn enable_protection(
    cfg: &SiteConfig,
    data: &Path,
    vms: Vec<String>,
) -> Result<serde_json::Value, SiteError> {
    let (_, _, vault) = vault_client(cfg, data)?;
    let req = ferry_types::site_protocol::SiteEnableProtection { vms };
    Ok(vault.post("/api/v1/agent/enableProtection", &req).await?)
}

pub async fn start(cfg: SiteConfig, data: &Path, record: Option<PathBuf>) -> Result<SiteHandle, SiteError> {
    let fabric = cfg.fabric()?;
    ferry_pki::ensure_private_dir(data)?;
    let (reg, tls, vault) = vault_client(&cfg, data)?;
    let persisted: Persisted = read_json(&data.join("state.json"))?.unwrap_or_default();
    if data.join(LEGACY_JOIN_TOKEN_FILE).exists() {
        std::fs::remove_file(data.join(LEGACY_JOIN_TOKEN_FILE))?;
        tracing::warn!("the site-wide join token is no longer accepted; hosts join with their own tokens");
    }
    // Every host of the definition that never joined gets a token of its own (SEC-1).
    let joined: Vec<String> = persisted.hosts.iter().map(|h| h.name.clone()).collect();
    for p in join_tokens::issue_missing(data, &fabric, &joined)? {
        tracing::info!(token = %p.display(), "join token issued");
    }
    let site = Arc::new(Site {
        cfg: cfg.clone(),
        data: data.to_path_buf(),
        fabric,
        reg,
        vault,
        tls,
        persisted: Mutex::new(persisted),
        synced: Mutex::new(None),
        joining: tokio::sync::Mutex::new(()),
        recorder: recorder::Recorder::new(record)?,
        last_vault_report_ms: std::sync::atomic::AtomicI64::new(0),
        in_flight: Mutex::new(std::collections::HashSet::new()),
        commands: metrics::CommandCounters::default(),
    });
    let (host_addr, server) = host_server::serve(site.clone()).await?;
    let mut tasks = vec![server];
    tasks.push(tokio::spawn(vault_link::report_loop(site.clone())));
    tasks.push(tokio::spawn(vault_link::command_loop(site.clone())));
    let mut metrics_addr = None;
    if let Some(at) = cfg.metrics_listen {
        let (addr, task) = metrics::serve(site.clone(), std::net::TcpListener::bind(at)?)?;
        tracing::info!(%addr, "Prometheus metrics on http://{addr}/metrics");
        tasks.push(task);
        metrics_addr = Some(addr);
    }
    tracing::info!(site = %cfg.name, %host_addr, "site manager running");
    Ok(SiteHandle { site, host_addr, metrics_addr, tasks })
}
