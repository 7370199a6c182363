//! The Ferry host agent (`ferry host`): the hypervisor side.
//!
//! A host agent joins its site with the site's join token; the site gets the agent's
//! certificate signed by the vault CA (SEC-1). From then on the agent:
//!
//! - serves its API over mutual TLS (only peers with a vault-CA certificate get in), through
//!   which its site manager drives VM lifecycle;
//! - reports its storage locations (HOST-5) and VMs to the site every few seconds (FAB-4);
//! - runs VMs under QEMU through `ferry-qemu` (HOST-1..HOST-4).

pub mod api;
pub mod config;
pub mod guest_net;
pub mod join;
pub mod metrics;
pub mod net;
pub mod onboard;
pub mod peers;
pub mod profile;
pub mod renew;
pub mod replication;
pub mod source_status;
pub mod storage;
pub mod vms;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_types::site_protocol::{HostReport, HostReportAck, PairConfig};

pub use config::HostConfig;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("Joining the site failed: {0}")]
    Join(String),
    #[error(transparent)]
    Client(#[from] ferry_client::Error),
    #[error(transparent)]
    Pki(#[from] ferry_pki::Error),
    #[error("Host agent I/O failed")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Vm(#[from] vms::VmError),
    #[error(transparent)]
    Replication(#[from] replication::ReplicationError),
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
}

pub struct Host {
    pub cfg: HostConfig,
    pub data: PathBuf,
    pub identity: join::Identity,
    pub site: ferry_client::Client,
    pub vms: Arc<vms::VmManager>,
    pub replication: Arc<replication::ReplicationService>,
    /// CAP-1: churn measurements for capacity plans.
    pub profiler: Arc<profile::Profiler>,
    pub pairs: std::sync::Mutex<Vec<PairConfig>>,
    pub api_addr: SocketAddr,
    /// The certificate this agent presents now (renewed in place, SEC-3).
    pub live: ferry_pki::LiveIdentity,
    /// Set when the site's answer lists this agent's own certificate as revoked: renew at once.
    pub certificate_revoked: std::sync::atomic::AtomicBool,
}

pub struct HostHandle {
    pub host: Arc<Host>,
    pub api_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HostHandle {
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// File in the data directory with the metrics listener's address.
pub const METRICS_ENDPOINT_FILE: &str = "metrics-endpoint";

pub fn qemu_version() -> String {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(3).map(str::to_string))
        .unwrap_or_default()
}

pub async fn start(cfg: HostConfig, data: &Path) -> Result<HostHandle, HostError> {
    // Its token, key, replicas and VM state are the owner's only.
    ferry_pki::ensure_private_dir(data)?;
    let std_listener = std::net::TcpListener::bind(cfg.listen)?;
    std_listener.set_nonblocking(true)?;
    let api_addr = std_listener.local_addr()?;
    renew::recover_tls_dir(data)?;
    let identity = join::join_or_load(&cfg, data, api_addr).await?;
    let live = ferry_pki::LiveIdentity::new(&identity.tls.cert_pem, &identity.tls.key_pem)?;
    let site = ferry_client::Client::builder(&cfg.site_url)
        .ca(identity.tls.ca_cert_pem.clone())
        .peer_name(join::site_cn_of(&identity.tls.cert_pem))
        .token(identity.host_token.clone())
        .build()?;
    let vms = Arc::new(vms::VmManager::open(data.join("vms"), &cfg).await?);
    let tls = ferry_repl::TlsIdentity {
        ca_pem: identity.tls.ca_cert_pem.clone(),
        cert_pem: identity.tls.cert_pem.clone(),
        key_pem: identity.tls.key_pem.clone(),
        live: Some(live.clone()),
    };
    let test_interval = cfg.test_copy_interval_ms.map(Duration::from_millis);
    let bandwidth = match &cfg.bandwidth {
        Some(b) => Some(config::bandwidth_schedule(b).map_err(|e| HostError::Config(config::ConfigError::Invalid(e)))?),
        None => None,
    };
    // POL-2: the policies' port unless the host file fixes the listener.
    let policy_ip = cfg.replication_listen.is_none().then(|| cfg.replication_ip.unwrap_or([0, 0, 0, 0].into()));
    let listen = cfg
        .replication_listen
        .unwrap_or_else(|| SocketAddr::new(policy_ip.unwrap_or([0, 0, 0, 0].into()), peers::DEFAULT_CERTIFICATE_PORT));
    let mut replication = replication::ReplicationService::start(data, listen, tls, test_interval, bandwidth).await?;
    replication.policy_ports_ip = policy_ip;
    replication.resync_window = match &cfg.resync_window {
        Some(w) => Some(w.window().map_err(|e| HostError::Config(config::ConfigError::Invalid(e)))?),
        None => None,
    };
    replication.storage_roots = cfg.storage.iter().map(|s| s.path.clone()).collect();
    replication.verify_rate = (cfg.verify_rate_mib > 0).then_some(cfg.verify_rate_mib.saturating_mul(1 << 20));
    let replication = Arc::new(replication);
    replication.resume(&vms).await;
    let profiler = Arc::new(profile::Profiler::open(data, cfg.test_churn_tick_ms.map(Duration::from_millis))?);
    profiler.resume(&vms).await;
    let host = Arc::new(Host {
        cfg,
        data: data.to_path_buf(),
        identity,
        site,
        vms,
        replication,
        profiler,
        pairs: Default::default(),
        api_addr,
        live,
        certificate_revoked: Default::default(),
    });
    let server = api::serve(host.clone(), std_listener)?;
    // SEC-3: replicas whose chain broke while the agent was down (a layer deleted or cut
    // short) are found before they are needed; the first report says so.
    let damaged = host.replication.check_replica_chains().await;
    if damaged > 0 {
        tracing::error!(points = damaged, "recovery points with a broken chain found at start");
    }
    let reporter = tokio::spawn(report_loop(host.clone()));
    let retention = tokio::spawn(retention_loop(host.clone()));
    let io_errors = tokio::spawn(io_error_loop(host.clone()));
    let verifier = tokio::spawn(verify_loop(host.clone()));
    let renewer = tokio::spawn(renew::renew_loop(host.clone()));
    let mut tasks = vec![server, reporter, retention, io_errors, verifier, renewer];
    if let Some(addr) = host.cfg.metrics_listen {
        // SEC-3: TLS with the configured certificate (its key readable by the owner only).
        let tls = match &host.cfg.metrics_tls {
            Some(t) => {
                let cert = std::fs::read_to_string(&t.cert_file)?;
                let key = ferry_pki::read_private_text(&t.key_file)?;
                Some(ferry_pki::server_config(&cert, &key, ferry_pki::ClientAuth::None, false)?)
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let l = std::net::TcpListener::bind(addr)?;
        if let Some(bound) = metrics::bound(&l) {
            write_atomic(&data.join(METRICS_ENDPOINT_FILE), bound.to_string().as_bytes())?;
            tracing::info!(%bound, "Prometheus metrics on {scheme}://{bound}/metrics");
        }
        tasks.push(metrics::serve(host.cfg.name.clone(), host.replication.clone(), l, tls)?);
    }
    tracing::info!(host = %host.cfg.name, %api_addr, "host agent running");
    Ok(HostHandle { host, api_addr, tasks })
}

impl Host {
    /// Where this host receives replication (its first listener).
    pub fn replication_address(&self) -> String {
        self.reachable(self.replication.address())
    }

    /// Every replication listener, the first one first.
    pub fn replication_addresses(&self) -> Vec<String> {
        self.replication.addresses().into_iter().map(|a| self.reachable(a)).collect()
    }

    /// A listener's address as peers reach it (a wildcard bind is reached at the API's address).
    fn reachable(&self, a: SocketAddr) -> String {
        if a.ip().is_unspecified() {
            format!("{}:{}", self.api_addr.ip(), a.port())
        } else {
            a.to_string()
        }
    }
}

pub async fn report_once(host: &Host) -> Result<HostReportAck, ferry_client::Error> {
    let report = HostReport {
        host_name: host.cfg.name.clone(),
        address: host.api_addr.to_string(),
        replication_address: host.replication_address(),
        replication_addresses: host.replication_addresses(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        qemu_version: qemu_version(),
        storage_locations: storage::locations(&host.cfg.storage),
        vms: host.vms.inventory().await,
        replication: host.replication.statuses().await,
        churn: host.profiler.profiles(),
        sent_at: Some(chrono::Utc::now()),
    };
    let ack: HostReportAck = host.site.post("/v1/report", &report).await?;
    if let Ok(mut p) = host.pairs.lock() {
        *p = ack.pairs.clone();
    }
    host.replication.apply_peers(&ack.peers).await;
    host.replication.apply_revoked_certificates(&ack.revoked_certificates);
    if ack.revoked_certificates.contains(&host.live.fingerprint()) {
        host.certificate_revoked.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    host.replication.apply_pairs(&ack.pairs).await;
    host.replication.apply_listen_ports(&ack.pairs).await;
    match ack.bandwidth.as_ref().map(config::bandwidth_schedule).transpose() {
        Ok(schedule) => host.replication.apply_site_bandwidth(schedule),
        Err(e) => tracing::warn!(error = %e, "the site's bandwidth schedule is invalid; keeping the current one"),
    }
    Ok(ack)
}

async fn report_loop(host: Arc<Host>) {
    let period = Duration::from_secs(host.cfg.report_interval_secs.max(1));
    loop {
        if let Err(e) = report_once(&host).await {
            tracing::warn!(error = %e, "cannot report to the site; retrying");
        }
        // A loop that cannot reach its replica host asks for a report now: its answer carries
        // the replica host's current address.
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = host.replication.resolve_wanted.notified() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Write a file atomically (temp + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// HOST-3: a VM that QEMU paused on a failed write (its image's file system ran full, a
/// storage path failed) goes on by itself once the cause is gone: the agent resumes it at once,
/// then, while it keeps pausing, after 5 s, 10 s, … up to a minute. QEMU retries the failed
/// writes, so the guest loses nothing; a failed-over VM on a replica location that ran full is
/// not left paused after space was freed.
async fn io_error_loop(host: Arc<Host>) {
    let mut backoff: std::collections::HashMap<String, (std::time::Instant, Duration)> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let names = host.vms.running_names().await;
        backoff.retain(|n, _| names.contains(n));
        for name in names {
            if backoff.get(&name).is_some_and(|(at, _)| std::time::Instant::now() < *at) {
                continue;
            }
            let Some(vm) = host.vms.running(&name).await else { continue };
            match vm.resume_after_io_error().await {
                Ok(true) => {
                    let wait = backoff
                        .get(&name)
                        .map_or(Duration::from_secs(5), |(_, w)| (*w * 2).min(Duration::from_secs(60)));
                    tracing::warn!(vm = %name, retry_in = ?wait, "QEMU paused the VM on a failed write (a full or failing disk); resumed it");
                    backoff.insert(name, (std::time::Instant::now() + wait, wait));
                }
                Ok(false) => {
                    backoff.remove(&name);
                }
                Err(e) => tracing::debug!(vm = %name, error = %e, "cannot read the VM's run state"),
            }
        }
    }
}

/// RP-1: the background verifier. Every point is re-read within the configured period; a point
/// never verified comes first, and one point is verified at a time (the rate limit applies).
async fn verify_loop(host: Arc<Host>) {
    let period = host.cfg.verify_period_secs;
    if period == 0 {
        return;
    }
    let period = Duration::from_secs(period);
    loop {
        let verified = host.replication.verify_next_due(period).await;
        if !verified {
            tokio::time::sleep(Duration::from_secs(30).min(period)).await;
        }
    }
}

async fn retention_loop(host: Arc<Host>) {
    loop {
        tokio::time::sleep(Duration::from_secs(host.cfg.retention_interval_secs.max(1))).await;
        host.replication.apply_retention().await;
    }
}
