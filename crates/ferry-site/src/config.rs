//! The site manager's fabric definition (TOML) and its translation into inventory objects.
//!
//! Objects are named in the file and referenced by name; each gets a stable id, a UUID v5 of
//! the site, kind and name, unless the file pins an `id` (so a renamed object keeps its identity,
//! FAB-4).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_types::fabric::{Cloud, HostGroup, LogicalNetwork, StorageClassification, Subnet, VmNetwork};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a valid site definition")]
    Parse(PathBuf, #[source] Box<toml::de::Error>),
    #[error("Invalid site definition: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Friendly name (the cluster role name when highly available).
    pub name: String,
    /// This instance's host name.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// The vault this site registers with.
    pub vault_name: String,
    /// Where host agents join this site (HTTPS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_true")]
    pub sync_all_clouds: bool,
    #[serde(default = "default_report")]
    pub report_interval_secs: u64,
    /// Directory of recovery plan scripts.
    #[serde(default)]
    pub script_library: Option<PathBuf>,
    /// Bandwidth for replication traffic (CAP-2) pushed to every host of this site that has no
    /// `[bandwidth]` of its own; each host applies it to what it sends.
    #[serde(default)]
    pub bandwidth: Option<ferry_types::site_protocol::BandwidthDef>,
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// Plain-HTTP listener for Prometheus metrics (`/metrics`); off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Connections one client address may hold open on the host endpoint; more are refused
    /// before the TLS handshake (SEC-3).
    #[serde(default = "default_max_connections")]
    pub max_connections_per_client: usize,
    #[serde(default)]
    pub storage_classifications: Vec<ClassificationDef>,
    #[serde(default)]
    pub logical_networks: Vec<LogicalNetworkDef>,
    #[serde(default)]
    pub vm_networks: Vec<VmNetworkDef>,
    #[serde(default)]
    pub host_groups: Vec<HostGroupDef>,
    #[serde(default)]
    pub clouds: Vec<CloudDef>,
    #[serde(default)]
    pub hosts: Vec<HostDef>,
}

fn default_server_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())
}
fn default_max_connections() -> usize {
    ferry_endpoint::DEFAULT_MAX_CONNECTIONS_PER_CLIENT
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_true() -> bool {
    true
}
fn default_report() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationDef {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalNetworkDef {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub host_groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNetworkDef {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub logical_network: String,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostGroupDef {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub storage_classifications: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudDef {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub host_groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDef {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub host_group: String,
}

const NS: Uuid = Uuid::from_u128(0x1f0e_5d7c_2b4a_4e39_9c8d_7b6a_5f4e_3d2c);

/// Static fabric objects with resolved ids.
#[derive(Debug, Clone, Default)]
pub struct Fabric {
    pub clouds: Vec<Cloud>,
    pub host_groups: Vec<HostGroup>,
    pub logical_networks: Vec<LogicalNetwork>,
    pub vm_networks: Vec<VmNetwork>,
    pub storage_classifications: Vec<StorageClassification>,
    /// (host id, host name, host group id)
    pub hosts: Vec<(String, String, String)>,
}

impl SiteConfig {
    pub fn load(path: &Path) -> Result<SiteConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        let cfg: SiteConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), Box::new(e)))?;
        cfg.fabric()?;
        if let Some(b) = &cfg.bandwidth {
            b.validate().map_err(|e| ConfigError::Invalid(format!("bandwidth: {e}")))?;
        }
        Ok(cfg)
    }

    fn id(&self, kind: &str, pinned: &Option<String>, name: &str) -> String {
        pinned
            .clone()
            .unwrap_or_else(|| Uuid::new_v5(&NS, format!("{}/{kind}/{name}", self.name).as_bytes()).to_string())
    }

    /// Resolve names to ids and check references.
    pub fn fabric(&self) -> Result<Fabric, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut f = Fabric::default();
        let mut names = HashSet::new();
        for c in &self.storage_classifications {
            if !names.insert(("sc", c.name.clone())) {
                return bad(format!("storage classification {} is defined twice", c.name));
            }
            f.storage_classifications.push(StorageClassification {
                id: self.id("sc", &c.id, &c.name),
                name: c.name.clone(),
                kind: c.kind.clone(),
            });
        }
        let sc_id = |n: &str| f.storage_classifications.iter().find(|c| c.name == n).map(|c| c.id.clone());
        for g in &self.host_groups {
            if !names.insert(("hg", g.name.clone())) {
                return bad(format!("host group {} is defined twice", g.name));
            }
            let mut scs = Vec::new();
            for s in &g.storage_classifications {
                match sc_id(s) {
                    Some(id) => scs.push(id),
                    None => return bad(format!("host group {} names unknown storage classification {s}", g.name)),
                }
            }
            f.host_groups.push(HostGroup {
                id: self.id("hg", &g.id, &g.name),
                name: g.name.clone(),
                storage_classifications: scs,
            });
        }
        let hg_id = |n: &str| f.host_groups.iter().find(|g| g.name == n).map(|g| g.id.clone());
        for l in &self.logical_networks {
            let mut hgs = Vec::new();
            for g in &l.host_groups {
                hgs.push(hg_id(g).ok_or_else(|| {
                    ConfigError::Invalid(format!("logical network {} names unknown host group {g}", l.name))
                })?);
            }
            f.logical_networks.push(LogicalNetwork {
                id: self.id("ln", &l.id, &l.name),
                name: l.name.clone(),
                host_groups: hgs,
            });
        }
        for n in &self.vm_networks {
            let ln = f.logical_networks.iter().find(|l| l.name == n.logical_network).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "VM network {} names unknown logical network {}",
                    n.name, n.logical_network
                ))
            })?;
            for s in &n.subnets {
                if s.cidr.parse::<ipnet::IpNet>().is_err() {
                    return bad(format!("subnet {} of {} has an invalid CIDR {}", s.name, n.name, s.cidr));
                }
            }
            let subnets = n.subnets.clone();
            f.vm_networks.push(VmNetwork {
                id: self.id("vmn", &n.id, &n.name),
                name: n.name.clone(),
                logical_network: ln.id.clone(),
                subnets,
            });
        }
        for c in &self.clouds {
            let mut hgs = Vec::new();
            for g in &c.host_groups {
                hgs.push(
                    hg_id(g).ok_or_else(|| {
                        ConfigError::Invalid(format!("cloud {} names unknown host group {g}", c.name))
                    })?,
                );
            }
            f.clouds.push(Cloud {
                id: self.id("cloud", &c.id, &c.name),
                name: c.name.clone(),
                host_groups: hgs,
                sync_enabled: false,
            });
        }
        for h in &self.hosts {
            let g = hg_id(&h.host_group).ok_or_else(|| {
                ConfigError::Invalid(format!("host {} names unknown host group {}", h.name, h.host_group))
            })?;
            f.hosts.push((self.id("host", &h.id, &h.name), h.name.clone(), g));
        }
        Ok(f)
    }
}
