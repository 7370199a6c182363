//! Vault server configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

#[derive(Clone)]
pub struct VaultConfig {
    /// Where the database, the CA and the admin token live.
    pub data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Extra DNS names for the vault's HTTPS certificate (localhost and the listen IP are always
    /// in); a name that is an IP address goes in as an address.
    pub dns_names: Vec<String>,
    /// The URL sites and operators use to reach this vault (written into registration keys),
    /// e.g. `https://vault.example.com:8443`; its host goes into the certificate. Absent: the
    /// listen address (127.0.0.1 when listening on every address).
    pub public_url: Option<String>,
    /// A site that has not reported for this long is reported as lost (JOB-4).
    pub heartbeat_timeout: Duration,
    /// How long a job waits for a site to answer a command before the task fails.
    pub site_command_timeout: Duration,
    /// Test failovers left running longer than this are cleaned up automatically (FO-1).
    pub test_failover_max_age: Duration,
    /// Delay before the first retry of an alert that could not be delivered; it doubles on
    /// every failure up to `alert_retry_max` (JOB-4).
    pub alert_retry_base: Duration,
    pub alert_retry_max: Duration,
    /// An alert still undeliverable this long after it was raised is dropped (24 h).
    pub alert_max_age: Duration,
    /// Time limit of one delivery attempt (webhook call or SMTP session).
    pub alert_timeout: Duration,
    /// How often every item's health is checked again, so a stall shows without a report
    /// (JOB-2).
    pub health_sweep_interval: Duration,
    /// A connection must send a request's headers within this time, also while it idles
    /// between requests; otherwise it is closed (slow or idle clients cannot hold connections).
    pub header_read_timeout: Duration,
    /// Requests served at once; more wait for a free slot.
    pub max_concurrent_requests: usize,
    /// Connections one client address may hold open at once; more are refused (SEC-3).
    pub max_connections_per_client: usize,
    /// Failed sign-ins and registrations one client address may make per minute; more are
    /// refused with 429 (SEC-3).
    pub max_failed_auth_per_minute: usize,
    /// Plain-HTTP listener for Prometheus metrics (`/metrics`); off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// How long events, ended jobs, answered site commands and finished alerts are kept
    /// (SEC-3).
    pub retention: ferry_store::Retention,
    /// How often what the retention no longer keeps is pruned (also once at start).
    pub prune_interval: Duration,
    pub clock: Arc<dyn Clock>,
}

impl VaultConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            data_dir,
            listen,
            dns_names: Vec::new(),
            public_url: None,
            heartbeat_timeout: Duration::from_secs(60),
            site_command_timeout: Duration::from_secs(30 * 60),
            test_failover_max_age: crate::test_expiry::DEFAULT_MAX_AGE,
            alert_retry_base: Duration::from_secs(10),
            alert_retry_max: Duration::from_secs(15 * 60),
            alert_max_age: Duration::from_secs(24 * 3600),
            alert_timeout: Duration::from_secs(20),
            health_sweep_interval: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_concurrent_requests: 256,
            max_connections_per_client: 256,
            max_failed_auth_per_minute: 30,
            metrics_listen: None,
            retention: ferry_store::Retention::default(),
            prune_interval: crate::retention::DEFAULT_PRUNE_INTERVAL,
            clock: Arc::new(SystemClock),
        }
    }
}
