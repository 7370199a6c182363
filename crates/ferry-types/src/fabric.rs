//! Fabric inventory (FAB-3, FAB-4): what a site manager reports about its site.
//!
//! A site manager owns clouds; a cloud is a named set of host groups; a host group is a set of
//! hosts. Logical networks are backed by a bridge on each host; VM networks live on a logical
//! network and have named subnets with static IP pools. Storage classifications group storage
//! locations (directories on hosts).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A registered site (ASR: replication fabric) as the vault lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Fabric {
    pub id: Uuid,
    pub vault_id: Uuid,
    /// Friendly name of the site manager, or of its cluster role when highly available (FAB-3).
    pub name: String,
    pub registered_at: DateTime<Utc>,
    /// Site manager instances of this site (FAB-8); the first one registered is listed first.
    pub providers: Vec<Provider>,
    /// Sync cloud metadata of all clouds at registration (FAB-3).
    pub sync_all_clouds: bool,
    /// Whether the vault reaches the site through a proxy (FAB-3), without its credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// The latest inventory the site sent (only clouds whose sync is on carry their content).
    pub inventory: SiteInventory,
}

/// One site manager instance (ASR: recovery services provider).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    pub id: Uuid,
    pub server_name: String,
    pub version: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
}

/// Everything a site reports about itself. Ids are stable strings chosen by the site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteInventory {
    #[serde(default)]
    pub clouds: Vec<Cloud>,
    #[serde(default)]
    pub host_groups: Vec<HostGroup>,
    #[serde(default)]
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub logical_networks: Vec<LogicalNetwork>,
    #[serde(default)]
    pub vm_networks: Vec<VmNetwork>,
    #[serde(default)]
    pub storage_classifications: Vec<StorageClassification>,
    #[serde(default)]
    pub vms: Vec<Vm>,
}

/// A cloud (ASR: protection container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    pub id: String,
    pub name: String,
    /// Host group ids that make up this cloud.
    #[serde(default)]
    pub host_groups: Vec<String>,
    /// Whether the vault receives this cloud's metadata (FAB-3); set by the vault.
    #[serde(default)]
    pub sync_enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostGroup {
    pub id: String,
    pub name: String,
    /// Storage classification ids available to this host group (STO-4).
    #[serde(default)]
    pub storage_classifications: Vec<String>,
}

/// A hypervisor host running a Ferry host agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub host_group: String,
    /// `host:port` of the agent's API (inside the site).
    #[serde(default)]
    pub address: String,
    /// Host agent version, empty until the agent has joined.
    #[serde(default)]
    pub agent_version: String,
    /// QEMU version family, e.g. `7.2` (POL-1 host version).
    #[serde(default)]
    pub qemu_version: String,
    /// Logical network ids this host can reach (it has a bridge for them).
    #[serde(default)]
    pub logical_networks: Vec<String>,
    #[serde(default)]
    pub storage_locations: Vec<StorageLocation>,
    /// Whether the agent is connected and reporting.
    #[serde(default)]
    pub connected: bool,
    /// `host:port` where the agent receives replication (mutual TLS, POL-2).
    #[serde(default)]
    pub replication_address: String,
    /// Every replication listener when the host listens on several ports (one per policy
    /// port, POL-2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication_addresses: Vec<String>,
}

/// A directory on a host where disks and replicas live (HOST-5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageLocation {
    pub path: String,
    /// Storage classification id, if classified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    #[serde(default)]
    pub free_bytes: u64,
    #[serde(default)]
    pub total_bytes: u64,
    /// The host's default replica location (STO-3).
    #[serde(default)]
    pub default_replica: bool,
    /// A shared filesystem visible from every host of the host group (like an SMB share or CSV).
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogicalNetwork {
    pub id: String,
    pub name: String,
    /// Host group ids where this logical network is available.
    #[serde(default)]
    pub host_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNetwork {
    pub id: String,
    pub name: String,
    pub logical_network: String,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub name: String,
    /// CIDR, e.g. `10.1.0.0/24`.
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Static IP pools in this subnet (NET-4).
    #[serde(default)]
    pub pools: Vec<IpPool>,
}

/// An inclusive range of addresses handed out statically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpPool {
    pub name: String,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageClassification {
    pub id: String,
    pub name: String,
    /// Free-form type (`local`, `shared-fs`, `cluster-volume`); types may differ across a mapping.
    #[serde(default)]
    pub kind: String,
}

/// A VM on a host (ASR: protectable item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub host: String,
    /// Cloud id the VM belongs to (through its host's host group), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<String>,
    #[serde(default)]
    pub power_state: PowerState,
    #[serde(default)]
    pub disks: Vec<VmDisk>,
    #[serde(default)]
    pub nics: Vec<VmNic>,
    #[serde(default)]
    pub guest_agent: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PowerState {
    #[default]
    Stopped,
    Running,
    Paused,
    Crashed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    /// Target name, e.g. `vda`.
    pub target: String,
    pub format: DiskFormat,
    pub path: String,
    pub virtual_size: u64,
    /// Storage classification id of the location holding the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    /// Excluded from replication (REP-9).
    #[serde(default)]
    pub excluded: bool,
    /// The image is encrypted (qcow2 encryption): not supported for replication (REP-9).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNic {
    pub mac: String,
    /// VM network id; absent when disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// Per-cloud metadata sync switch (FAB-3).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudSyncUpdate {
    pub sync_enabled: bool,
}

impl SiteInventory {
    pub fn cloud(&self, id: &str) -> Option<&Cloud> {
        self.clouds.iter().find(|c| c.id == id)
    }
    pub fn host(&self, id: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.id == id)
    }
    pub fn host_group(&self, id: &str) -> Option<&HostGroup> {
        self.host_groups.iter().find(|h| h.id == id)
    }
    pub fn vm_network(&self, id: &str) -> Option<&VmNetwork> {
        self.vm_networks.iter().find(|n| n.id == id)
    }
    pub fn vm(&self, id: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.id == id)
    }
    /// Hosts in any host group of a cloud.
    pub fn hosts_of_cloud<'a>(&'a self, cloud: &'a Cloud) -> impl Iterator<Item = &'a Host> + 'a {
        self.hosts.iter().filter(move |h| cloud.host_groups.contains(&h.host_group))
    }
}

/// A VM as an operator defines it (HOST-1). Disks live in the host's storage locations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    #[serde(default = "one")]
    pub vcpus: u32,
    #[serde(default = "mem256")]
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<DiskDefinition>,
    #[serde(default)]
    pub nics: Vec<NicDefinition>,
    #[serde(default)]
    pub guest_agent: bool,
    /// Kernel boot for test guests; absent = boot from the first disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<KernelBoot>,
}

fn one() -> u32 {
    1
}
fn mem256() -> u64 {
    256
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskDefinition {
    pub target: String,
    pub path: String,
    pub format: DiskFormat,
    /// Create the image with this virtual size when the file does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_size: Option<u64>,
    #[serde(default)]
    pub excluded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// VM network name (as the site defines it); absent = disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_network: Option<String>,
    /// Logical network of `vm_network`, filled in by the site manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_network: Option<String>,
    /// An explicit bridge on the host (isolated test-failover networks), instead of a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default)]
    pub append: String,
}

/// A VM's state as its host reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStatus {
    pub name: String,
    pub power_state: PowerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Why the VM stopped when it crashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub definition: VmDefinition,
}
