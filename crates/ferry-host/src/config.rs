//! Host agent configuration (TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a valid host agent configuration")]
    Parse(PathBuf, #[source] Box<toml::de::Error>),
    #[error("Invalid host agent configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host's name as the site definition lists it.
    pub name: String,
    /// The site manager's host endpoint, e.g. `https://127.0.0.1:7443`.
    pub site_url: String,
    /// The vault CA certificate (PEM file), to trust the site before joining.
    pub ca_cert: PathBuf,
    /// The site's join token, or a file holding it.
    #[serde(default)]
    pub join_token: Option<String>,
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// Where the agent's mutual-TLS API listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_report")]
    pub report_interval_secs: u64,
    #[serde(default)]
    pub storage: Vec<StorageDef>,
    /// Logical network name → bridge name on this host.
    #[serde(default)]
    pub bridges: Vec<BridgeDef>,
    /// `auto` (probe KVM with a real boot, HOST-2), `kvm` or `tcg`.
    #[serde(default = "default_accel")]
    pub accel: String,
    /// Directories a VM definition may take a kernel and initrd from for direct kernel boot,
    /// besides the storage locations (SEC-3: any other host file is refused).
    #[serde(default)]
    pub boot_dirs: Vec<PathBuf>,
    /// Kernel and initrd of the probe guest (the test guest); without them `auto` means TCG.
    #[serde(default)]
    pub probe_kernel: Option<PathBuf>,
    #[serde(default)]
    pub probe_initrd: Option<PathBuf>,
    /// Where this host receives replication (mutual TLS), overriding the policies' ports. Absent:
    /// the host listens on `replication_ip` at the port of every policy of the pairs its site
    /// serves (POL-2: 8084 by default with certificate authentication).
    #[serde(default)]
    pub replication_listen: Option<SocketAddr>,
    /// The address the policy-port listeners bind (default: every address).
    #[serde(default)]
    pub replication_ip: Option<std::net::IpAddr>,
    /// Test-only: run replication cycles this often instead of the policy's copy frequency.
    #[serde(default)]
    pub test_copy_interval_ms: Option<u64>,
    /// Test-only: the tick of churn measurements (CAP-1) instead of 30 s; windows keep their
    /// number of ticks (5 min = 10 ticks, 15 min = 30, 1 h = 120).
    #[serde(default)]
    pub test_churn_tick_ms: Option<u64>,
    /// How often retention runs on the replicas this host holds (RP-2).
    #[serde(default = "default_retention_interval")]
    pub retention_interval_secs: u64,
    /// RP-1: every recovery point this host holds is re-read and compared with its manifest at
    /// least once in this period (0 turns the background verifier off).
    #[serde(default = "default_verify_period")]
    pub verify_period_secs: u64,
    /// SEC-3: the agent renews its certificate (a new key, signed by the vault CA through the
    /// site) when fewer days than this are left (certificates last a year).
    #[serde(default = "default_renew_days")]
    pub renew_days_before_expiry: u32,
    /// How often the agent checks whether its certificate needs renewing, seconds.
    #[serde(default = "default_renew_check")]
    pub renew_check_secs: u64,
    /// RP-1: the most the verifier reads per second, in MiB (background and on demand).
    #[serde(default = "default_verify_rate")]
    pub verify_rate_mib: u64,
    /// Listener for Prometheus metrics (`/metrics`); off when absent. On a loopback address
    /// plain HTTP; on any other address only with `metrics_tls`, or with `metrics_plain_http`
    /// set on purpose (an isolated management network) — SEC-3.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the metrics over TLS with this certificate and key (PEM files; e.g. from the
    /// operator's own PKI, with the names Prometheus scrapes the host by).
    #[serde(default)]
    pub metrics_tls: Option<MetricsTls>,
    /// Allow plain-HTTP metrics on an address other than loopback.
    #[serde(default)]
    pub metrics_plain_http: bool,
    /// Connections one client address may hold open on the host API; more are refused before
    /// the TLS handshake (SEC-3).
    #[serde(default = "default_max_connections")]
    pub max_connections_per_client: usize,
    /// Bandwidth for the replication traffic this host sends (CAP-2), shared by all its VMs.
    #[serde(default)]
    pub bandwidth: Option<BandwidthDef>,
    /// REP-6: when an automatic resynchronization may run (time of day, e.g. off-peak); it
    /// pauses at the window's end and continues in the next one. Absent = any time. A repair
    /// requested by an operator runs at once.
    #[serde(default)]
    pub resync_window: Option<ResyncWindow>,
}

/// A daily time window (`HH:MM`, local time; may wrap past midnight).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncWindow {
    pub from: String,
    pub to: String,
}

impl ResyncWindow {
    /// The engine's window.
    pub fn window(&self) -> Result<ferry_repl::RateWindow, String> {
        ferry_repl::RateWindow::new(&self.from, &self.to, None).map_err(|e| e.to_string())
    }
}

pub use ferry_types::site_protocol::{BandwidthDef, BandwidthWindow};

/// CAP-2: the engine's schedule of a bandwidth definition; a bad time or a rate that is not
/// positive is refused.
pub fn bandwidth_schedule(def: &BandwidthDef) -> Result<ferry_repl::RateSchedule, String> {
    let rate = |r: Option<f64>| -> Result<Option<u64>, String> {
        match r {
            None => Ok(None),
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some((x * 1024.0 * 1024.0) as u64)),
            Some(x) => Err(format!("bandwidth {x} MiB/s must be positive")),
        }
    };
    let mut windows = Vec::new();
    for w in &def.windows {
        windows.push(ferry_repl::RateWindow::new(&w.from, &w.to, rate(w.mib_per_sec)?).map_err(|e| e.to_string())?);
    }
    Ok(ferry_repl::RateSchedule { default: rate(def.default_mib_per_sec)?, windows })
}

fn default_verify_period() -> u64 {
    7 * 24 * 3600
}

fn default_max_connections() -> usize {
    ferry_endpoint::DEFAULT_MAX_CONNECTIONS_PER_CLIENT
}

fn default_verify_rate() -> u64 {
    64
}

fn default_renew_days() -> u32 {
    30
}

fn default_renew_check() -> u64 {
    3600
}

fn default_retention_interval() -> u64 {
    60
}

fn default_accel() -> String {
    "auto".into()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_report() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageDef {
    pub path: PathBuf,
    /// Storage classification name.
    #[serde(default)]
    pub classification: Option<String>,
    #[serde(default)]
    pub default_replica: bool,
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeDef {
    pub logical_network: String,
    pub bridge: String,
}

impl HostConfig {
    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        let cfg: HostConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), Box::new(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::Invalid("name is empty".into()));
        }
        if !matches!(self.accel.as_str(), "auto" | "kvm" | "tcg") {
            return Err(ConfigError::Invalid(format!("accel must be auto, kvm or tcg, not {}", self.accel)));
        }
        let defaults = self.storage.iter().filter(|s| s.default_replica).count();
        if defaults > 1 {
            return Err(ConfigError::Invalid(
                "at most one storage location can be the default replica location".into(),
            ));
        }
        for s in &self.storage {
            if !s.path.is_absolute() {
                return Err(ConfigError::Invalid(format!("storage path {} must be absolute", s.path.display())));
            }
        }
        if let Some(b) = &self.bandwidth {
            bandwidth_schedule(b).map_err(|e| ConfigError::Invalid(format!("bandwidth: {e}")))?;
        }
        if let Some(w) = &self.resync_window {
            w.window().map_err(|e| ConfigError::Invalid(format!("resync_window: {e}")))?;
        }
        if let Some(at) = self.metrics_listen {
            if !at.ip().is_loopback() && self.metrics_tls.is_none() && !self.metrics_plain_http {
                return Err(ConfigError::Invalid(format!(
                    "metrics_listen {at} is not a loopback address: serve the metrics over TLS (metrics_tls = {{ \
                     cert_file = \"…\", key_file = \"…\" }}), listen on 127.0.0.1, or set metrics_plain_http = \
                     true for an isolated management network"
                )));
            }
        }
        Ok(())
    }

    pub fn join_token(&self) -> Result<String, ConfigError> {
        if let Some(t) = &self.join_token {
            return Ok(t.clone());
        }
        match &self.join_token_file {
            Some(p) => {
                std::fs::read_to_string(p).map(|t| t.trim().to_string()).map_err(|e| ConfigError::Read(p.clone(), e))
            }
            None => Err(ConfigError::Invalid("join_token or join_token_file is required to join the site".into())),
        }
    }
}

/// The certificate and key the metrics endpoint presents (SEC-3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    fn cfg(extra: &str) -> Result<(), ConfigError> {
        let text = format!("name = \"ny1\"\nsite_url = \"https://127.0.0.1:1\"\nca_cert = \"/ca.pem\"\n{extra}");
        let c: HostConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        c.validate()
    }

    #[test]
    fn sec_3_metrics_beyond_loopback_need_tls_or_an_explicit_choice() {
        assert!(cfg("metrics_listen = \"127.0.0.1:9466\"").is_ok());
        assert!(cfg("metrics_listen = \"[::1]:9466\"").is_ok());
        let e = cfg("metrics_listen = \"0.0.0.0:9466\"").expect_err("refused");
        assert!(e.to_string().contains("metrics_tls"), "{e}");
        assert!(cfg(
            "metrics_listen = \"10.0.0.5:9466\"\nmetrics_tls = { cert_file = \"/c.pem\", key_file = \"/k.pem\" }"
        )
        .is_ok());
        assert!(cfg("metrics_listen = \"10.0.0.5:9466\"\nmetrics_plain_http = true").is_ok());
    }
}

#[cfg(test)]
mod bandwidth_tests {
    use super::*;

    #[test]
    fn cap_2_host_bandwidth_schedule_from_config() {
        let b: BandwidthDef = toml::from_str(
            "default_mib_per_sec = 10\n[[windows]]\nfrom = \"08:00\"\nto = \"18:00\"\nmib_per_sec = 2\n[[windows]]\nfrom = \"22:00\"\nto = \"06:00\"\n",
        )
        .expect("toml");
        let s = bandwidth_schedule(&b).expect("schedule");
        assert_eq!(s.rate_at(9 * 60), Some(2 << 20));
        assert_eq!(s.rate_at(20 * 60), Some(10 << 20));
        assert_eq!(s.rate_at(23 * 60), None, "unlimited at night");
        let bad: BandwidthDef = toml::from_str("[[windows]]\nfrom = \"25:00\"\nto = \"06:00\"\n").expect("toml");
        assert!(bandwidth_schedule(&bad).is_err());
        let zero: BandwidthDef = toml::from_str("default_mib_per_sec = 0").expect("toml");
        assert!(bandwidth_schedule(&zero).is_err());
    }
}
