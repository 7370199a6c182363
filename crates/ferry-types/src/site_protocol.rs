//! Messages between a site manager and the vault (all sent by the site, outbound only), and
//! between a host agent and its site manager. Every field listed here is documented in
//! `docs/data-privacy.md` (FAB-9); nothing else is sent to the vault.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::fabric::SiteInventory;

/// How the site reaches the vault (FAB-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    pub address: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// Site → vault: register with a registration key (FAB-2, FAB-3).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The registration key file's content, as issued by the vault.
    pub key: String,
    /// The vault name the operator expects (checked against the key and the vault).
    pub vault_name: String,
    /// Friendly name of the site manager (or its cluster role name when HA).
    pub friendly_name: String,
    /// Host name of this site manager instance.
    pub server_name: String,
    /// Site manager version; all instances of one site must match (FAB-8).
    pub version: String,
    /// Sync all clouds' metadata now (true) or none (false, enable per cloud later).
    pub sync_all_clouds: bool,
    /// Whether a proxy is used (address only; credentials never leave the site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_address: Option<String>,
    /// Certificate signing request (PEM) for the site manager's certificate.
    pub csr_pem: String,
    /// Cloud names and ids at registration (FAB-9: site metadata and cloud names).
    pub clouds: Vec<CloudName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudName {
    pub id: String,
    pub name: String,
}

/// Vault → site: the result of registration.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    pub vault_id: Uuid,
    pub fabric_id: Uuid,
    pub provider_id: Uuid,
    /// Secret the site presents as a bearer token from now on.
    pub site_token: String,
    /// The site manager's certificate (PEM), signed by the vault CA.
    pub certificate_pem: String,
    /// The vault CA certificate (PEM).
    pub ca_pem: String,
}

/// Site → vault: heartbeat with the current inventory (FAB-4). Sent every few seconds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteReport {
    pub provider_id: Uuid,
    pub version: String,
    /// Replication state of protected VMs on this site's hosts.
    #[serde(default)]
    pub replication: Vec<ReplicationStatus>,
    /// CAP-1: churn measurements of this site's hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub churn: Vec<crate::capacity::ChurnProfile>,
    /// Only clouds whose sync is on carry host groups, hosts and VMs; other clouds carry a name.
    pub inventory: SiteInventory,
    /// The site manager's clock when it sent the report (the vault measures the site's clock
    /// offset with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Site → vault: enable protection for VMs of this site (REP-1 from the site side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteEnableProtection {
    /// VM names or ids in this site's inventory.
    pub vms: Vec<String>,
}

/// Vault → site: heartbeat answer: which clouds to sync, pending commands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct SiteReportAck {
    /// Cloud ids whose metadata the vault wants.
    pub synced_clouds: Vec<String>,
    /// Whether this provider is the active one (FAB-8).
    pub active: bool,
    /// Where every host of the vault receives replication now, by certificate name: a source
    /// host resolves its replica host here on every cycle instead of remembering an address.
    #[serde(default)]
    pub peers: Vec<ReplicationPeer>,
    /// SHA-256 fingerprints (hex) of host certificates revoked before they expired: superseded
    /// by a new join of their host, or of a removed site (SEC-1). Hosts refuse them at once.
    #[serde(default)]
    pub revoked_certificates: Vec<String>,
}

/// Vault → site → host: where a host receives replication now (endpoints are resolved, not
/// remembered). The host's identity is its certificate name; an address is only where to find
/// it, and the connection is refused unless the certificate there names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationPeer {
    /// Certificate name (`host-<site id>-<host id>`).
    pub host_cn: String,
    pub host_name: String,
    /// `host:port` of each replication listener, as the host last reported them.
    pub addresses: Vec<String>,
}

/// Site → vault: sign a host agent's certificate (SEC-1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignHostRequest {
    pub host_id: String,
    pub host_name: String,
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignHostResponse {
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// Host → site: join the site with a join secret and a CSR.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostJoinRequest {
    pub host_name: String,
    pub join_token: String,
    pub csr_pem: String,
    /// `host:port` where the agent serves its API.
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostJoinResponse {
    pub host_id: String,
    /// Secret the host presents as a bearer token to its site from now on.
    pub host_token: String,
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// Host → site (with its host token): a new certificate for a new key, before the current one
/// expires or after it was revoked (SEC-3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRenewRequest {
    pub csr_pem: String,
}

/// Site → host: the renewed certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRenewResponse {
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// Site → host: answer to a report: the cloud pairs the host serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostReportAck {
    pub pairs: Vec<PairConfig>,
    /// The site's bandwidth schedule for replication traffic (CAP-2), for hosts without their
    /// own `[bandwidth]`; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BandwidthDef>,
    /// Where the vault's hosts receive replication now (from the vault's last answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<ReplicationPeer>,
    /// Revoked host certificates (from the vault's last answer; see [`SiteReportAck`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_certificates: Vec<String>,
}

/// CAP-2: a default rate and time-of-day windows with their own rate (first match wins; a
/// window may wrap past midnight). Rates in MiB/s; absent = unlimited. Used in host and site
/// configuration files (`[bandwidth]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthDef {
    #[serde(default)]
    pub default_mib_per_sec: Option<f64>,
    #[serde(default)]
    pub windows: Vec<BandwidthWindow>,
}

impl BandwidthDef {
    /// Check rates (positive MiB/s) and times (`HH:MM`) without converting them.
    pub fn validate(&self) -> Result<(), String> {
        let rate = |r: Option<f64>| match r {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(format!("bandwidth {x} MiB/s must be positive")),
            _ => Ok(()),
        };
        let time = |t: &str| {
            let ok = t.split_once(':').is_some_and(|(h, m)| {
                let h = h.parse::<u8>().ok().filter(|_| h.len() == 2);
                let m = m.parse::<u8>().ok().filter(|_| m.len() == 2);
                matches!((h, m), (Some(h), Some(m)) if (h < 24 && m < 60) || (h == 24 && m == 0))
            });
            if ok {
                Ok(())
            } else {
                Err(format!("'{t}' is not a time of day HH:MM"))
            }
        };
        rate(self.default_mib_per_sec)?;
        for w in &self.windows {
            time(&w.from)?;
            time(&w.to)?;
            rate(w.mib_per_sec)?;
        }
        Ok(())
    }
}

/// One time-of-day window of a [`BandwidthDef`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    /// `HH:MM`, local time, inclusive.
    pub from: String,
    /// `HH:MM`, exclusive.
    pub to: String,
    #[serde(default)]
    pub mib_per_sec: Option<f64>,
}

/// A cloud pair as a site applies it (what its hosts need to replicate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairConfig {
    pub mapping: Uuid,
    pub role: PairRole,
    pub source_cloud: String,
    pub target_cloud: String,
    pub policy_id: Uuid,
    pub policy_version: i64,
    pub policy: crate::policy::PolicySpec,
}

/// Host → site: periodic report of the host's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    pub host_name: String,
    /// `host:port` of the agent's API now (it may change across restarts).
    pub address: String,
    /// `host:port` of the agent's replication listener.
    #[serde(default)]
    pub replication_address: String,
    /// Every replication listener (`host:port`) when the host listens on several ports (one per
    /// policy port of the pairs it serves, POL-2); the first is `replication_address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication_addresses: Vec<String>,
    pub agent_version: String,
    pub qemu_version: String,
    pub storage_locations: Vec<crate::fabric::StorageLocation>,
    pub vms: Vec<crate::fabric::Vm>,
    #[serde(default)]
    pub replication: Vec<ReplicationStatus>,
    /// CAP-1: the churn measurements running or ended on this host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub churn: Vec<crate::capacity::ChurnProfile>,
    /// The host's clock when it sent the report (the site measures the host's clock offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A command the vault queues for a site; the site fetches it over its outbound connection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteCommandEnvelope {
    pub id: Uuid,
    pub command: SiteCommand,
    /// After this time the command is stale: its job no longer waits for it, and a site that
    /// receives it late (it was cut from the vault meanwhile) answers without running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum SiteCommand {
    /// Configure this site's side of a cloud pair under a policy (create or update).
    ConfigurePair {
        mapping: Uuid,
        /// `Source` or `Target`.
        role: PairRole,
        source_cloud: String,
        target_cloud: String,
        policy_id: Uuid,
        policy_version: i64,
        policy: crate::policy::PolicySpec,
    },
    /// Forget a cloud pair.
    RemovePair { mapping: Uuid },
    /// Run a VM lifecycle action on one of this site's hosts.
    Vm { host: String, action: VmAction },
    /// Prepare a host to receive a protected VM's replica (REP-1).
    PrepareReplica { host: String, replica: ReplicaSpec },
    /// Start replicating a protected VM from one of this site's hosts (REP-2, REP-3).
    StartReplication { host: String, replication: ReplicationSpec },
    /// Stop replicating a VM and forget its tracking state; optionally delete the replica (REP-8).
    StopReplication { host: String, item: Uuid, delete_replica: bool },
    /// Any other replication action on one of this site's hosts.
    Replication { host: String, action: ReplicationAction },
    /// Run a recovery plan script from this site manager's script library, on the site
    /// manager itself (PLAN-3).
    RunScript { script: crate::plan::ScriptRun },
    /// CAP-1: start, stop or forget a churn measurement on one of this site's hosts.
    Profile { host: String, action: crate::capacity::ProfileAction },
}

/// What a target host needs to receive a VM's replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaSpec {
    pub item: Uuid,
    pub vm_name: String,
    /// (disk target, virtual size, storage location path)
    pub disks: Vec<(String, u64, String)>,
    /// Certificate name of the only host allowed to send this replica (SEC-1).
    pub source_host_cn: String,
    /// Additional hourly recovery points to keep (POL-4); a policy edit pushed with the cloud
    /// pair replaces it (POL-9).
    #[serde(default)]
    pub retention_hours: u32,
    /// The cloud pair (container mapping) the item replicates under: the host follows its
    /// policy as the site pushes it (POL-9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Uuid>,
    /// The policy version `retention_hours` comes from.
    #[serde(default)]
    pub policy_version: i64,
    /// REP-7: the protected VM's identity across protections (`<source site id>/<VM id>`). A
    /// replica of the same VM kept on this host (protection disabled with "delete replica: no",
    /// or its folder restored from a backup) is reused with its recovery points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// REP-7: existing images on this host to start the replica from (a restored backup), one
    /// per replicated disk: (disk target, path inside one of the host's storage locations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub existing_disks: Vec<(String, String)>,
}

/// REP-7: what a target host reused when it prepared a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExistingReplica {
    /// Where the replica came from.
    pub source: ExistingReplicaSource,
    /// Recovery points the replica already holds (kept history).
    pub points: u32,
    /// Time of its newest point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<chrono::DateTime<chrono::Utc>>,
    /// The storage location that holds a kept replica (it stays where it is, which may differ
    /// from the planned location); empty for the host's own replica directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// Where a reused replica came from (REP-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ExistingReplicaSource {
    /// A replica of the same VM found on the target host (kept when protection was disabled, or
    /// restored there from a backup).
    KeptReplica,
    /// Disk images the operator named (e.g. a restored backup).
    ExistingImages,
}

/// What a source host needs to replicate a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationSpec {
    pub item: Uuid,
    pub vm_name: String,
    /// Disk targets to replicate (excluded disks are left out).
    pub disks: Vec<String>,
    /// `host:port` of the target host's replication listener when the replication started;
    /// the source host follows the address the vault resolves for `target_host_cn` afterwards.
    pub target_address: String,
    /// Certificate name the target host must present (its identity, wherever it is).
    pub target_host_cn: String,
    /// The target host's name (for messages).
    #[serde(default)]
    pub target_host_name: String,
    pub policy: crate::policy::PolicySpec,
    /// The policy's version `policy` is; a newer one pushed with the pair replaces it (POL-9).
    #[serde(default)]
    pub policy_version: i64,
    /// The cloud pair (container mapping) the item replicates under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Uuid>,
    #[serde(default)]
    pub initial: InitialReplication,
    /// POL-8, SEC-3: the item's key (64 hex digits) an offline export's manifest is sealed
    /// with; given when the policy's initial replication is offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PairRole {
    Source,
    Target,
}

/// VM lifecycle actions (HOST-1), sent vault → site → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum VmAction {
    Create {
        definition: serde_json::Value,
    },
    Start {
        vm: String,
    },
    Shutdown {
        vm: String,
        timeout_secs: u64,
        /// A planned failover (FO-2): the guest's last changes must reach the replica before
        /// the shutdown counts as done. If the final replication cycle cannot be sent, the
        /// shutdown fails and QEMU is kept (guest powered off) so a retry can send it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        final_sync: bool,
    },
    Stop {
        vm: String,
    },
    Delete {
        vm: String,
        delete_disks: bool,
    },
    Status {
        vm: String,
    },
    List,
    /// Apply addresses inside the guest through its guest agent (re-IP at failover, NET-4 /
    /// FO-8). Waits up to `timeout_secs` for the agent (the guest may still be booting).
    ConfigureGuestNetwork {
        vm: String,
        nics: Vec<GuestNicAddress>,
        timeout_secs: u64,
    },
}

/// An address to apply to the guest NIC with this MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestNicAddress {
    pub mac: String,
    /// Address with prefix length, e.g. `10.21.0.10/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// The site's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommandResult {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ApiError>,
    #[serde(default)]
    pub output: serde_json::Value,
}

/// Replication actions, sent site → host over mutual TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ReplicationAction {
    Prepare {
        replica: ReplicaSpec,
    },
    Start {
        replication: ReplicationSpec,
    },
    Stop {
        item: Uuid,
        delete_replica: bool,
        /// Keep the change-tracking state of a source (a failover that may be cancelled, FO-4 /
        /// FO-7: replication then resumes with deltas instead of a resync).
        #[serde(default)]
        keep_tracking: bool,
    },
    /// Throwaway overlays on a recovery point, one per disk, for a test VM (FO-1).
    TestOverlays {
        item: Uuid,
        point: String,
    },
    /// Remove the test overlays of an item and release its point.
    ReleaseTest {
        item: Uuid,
    },
    /// Remove an isolated bridge created for a test failover.
    RemoveTestNetwork {
        bridge: String,
    },
    /// Overlays on a recovery point that become a failed-over VM's disks (FO-2, FO-3).
    FailoverOverlays {
        item: Uuid,
        point: String,
    },
    /// Pause a source's replication (JOB-3): no cycles until resumed; tracking continues.
    Pause {
        item: Uuid,
    },
    /// Resume a paused source's replication.
    Resume {
        item: Uuid,
    },
    /// Remove the failover overlays of an item (change of recovery point or cancel, FO-4); its
    /// replica accepts replication again.
    ReleaseFailover {
        item: Uuid,
    },
    /// The failover is final (FO-4): points newer than the failover point are discarded and the
    /// host stops receiving this replica.
    CommitFailover {
        item: Uuid,
    },
    /// Reverse replication (FO-5): the stopped VM `vm` of this host becomes the base of the
    /// replica it will receive back; its definition is removed and its disks are taken into the
    /// replica store (the previous replica of the item on this host, if any, is replaced).
    AdoptVm {
        vm: String,
        replica: ReplicaSpec,
    },
    /// Offline initial replication (POL-8), target side: import the export of `item` found in
    /// `<path>/<item>` as the replica's first recovery point. Resumable and idempotent.
    ImportInitial {
        item: Uuid,
        path: String,
        /// The item's key the export's manifest must be sealed with (SEC-3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// REP-6 repair, source side: resynchronize by block-hash comparison now, whatever the
    /// tracking state says.
    Repair {
        item: Uuid,
    },
    /// RP-1, target side: re-read recovery points of `item` and compare them with their hash
    /// manifests (`point`: one point id or `latest`; none: every point). The results are kept
    /// with the points and reported with the replica's status.
    VerifyPoints {
        item: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        point: Option<String>,
    },
    /// RP-3, target side: write every disk of `point` (an id or `latest`) of `item`'s replica
    /// as one standalone image (no backing file) into the new directory `path`, which must lie
    /// inside one of the host's storage locations.
    PointImages {
        item: Uuid,
        point: String,
        format: crate::fabric::DiskFormat,
        path: String,
    },
    /// Offline initial replication, source side: the replica holds the export of `cycle`; delta
    /// cycles may start.
    ConfirmImport {
        item: Uuid,
        cycle: u64,
    },
}

/// How a source host starts replicating a VM whose replica does not come from this host yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum InitialReplication {
    /// Copy every allocated block (REP-2).
    #[default]
    Full,
    /// The replica holds an older copy of the disks: compare block hashes, send the differences
    /// (REP-7, FO-5 after an unplanned failover).
    CompareHashes,
    /// The replica holds exactly the point the VM was recovered from: send only what the VM's
    /// top layer holds, i.e. what was written since the failover (FO-5 after a planned failover).
    SinceFailover,
}

/// Phase of one VM's replication on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ReplicationPhase {
    /// Waiting for its start (scheduled initial replication) or being set up.
    Waiting,
    InitialInProgress,
    Replicating,
    /// Change tracking was lost (QEMU crash, raw disk after restart): resync needed.
    ResyncRequired,
    Resynchronizing,
    Paused,
    /// The last cycle failed; the next one retries (the bitmap was folded back).
    Retrying,
    /// Offline initial replication (POL-8): the export is complete and waits for its import on
    /// the target side.
    WaitingForImport,
}

/// Host → site → vault: the state of one VM's replication on this host (REP-5, RP-1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationStatus {
    pub item: Uuid,
    pub role: PairRole,
    pub phase: ReplicationPhase,
    #[serde(default)]
    pub initial_progress: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<chrono::DateTime<chrono::Utc>>,
    /// How far the reporting host's clock is ahead of its site manager's (negative: behind), in
    /// milliseconds, as the site manager measured it when the host's report arrived. The times
    /// of this status are the host's; the vault corrects them with this and the site's own
    /// offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    #[serde(default)]
    pub cycles_ok: u64,
    #[serde(default)]
    pub cycles_failed: u64,
    #[serde(default)]
    pub avg_delta_bytes: u64,
    #[serde(default)]
    pub max_delta_bytes: u64,
    #[serde(default)]
    pub avg_latency_ms: u64,
    #[serde(default)]
    pub data_waiting_bytes: u64,
    /// Data bytes the initial replication (full copy, hash comparison or reverse replication
    /// since a failover) sent.
    #[serde(default)]
    pub initial_bytes: u64,
    /// App-consistent cycles that fell back to crash-consistent since the agent started (POL-5).
    #[serde(default)]
    pub consistency_fallbacks: u64,
    /// The last such fallback's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_warning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Target side: the recovery points held.
    #[serde(default)]
    pub recovery_points: Vec<crate::protection::RecoveryPoint>,
    /// Source side (JOB-2, REP-5): the copy interval in force, in seconds.
    #[serde(default)]
    pub interval_secs: u64,
    /// Cycles expected in the last hour (or since replication started, if later) at that
    /// interval, and cycles that succeeded in it; missed = expected − succeeded.
    #[serde(default)]
    pub cycles_expected_hour: u64,
    #[serde(default)]
    pub cycles_ok_hour: u64,
    /// Capture time of the newest point the replica acknowledged as durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_point: Option<chrono::DateTime<chrono::Utc>>,
    /// Since when cycles fail (the first failure after the last success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    /// The class of the last failure, when cycles fail now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureCause>,
    /// The policy version the host applies (POL-9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<i64>,
    /// The bandwidth limit in force for this host's replication traffic, bytes per second
    /// (CAP-2); absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// The last cycles, newest last: where the time between points went (explainable RPO).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_cycles: Vec<CycleTiming>,
}

impl ReplicationStatus {
    /// A status with every counter at zero.
    pub fn new(item: Uuid, role: PairRole, phase: ReplicationPhase) -> Self {
        ReplicationStatus {
            item,
            role,
            phase,
            initial_progress: 0,
            last_sync: None,
            clock_offset_ms: None,
            cycles_ok: 0,
            cycles_failed: 0,
            avg_delta_bytes: 0,
            max_delta_bytes: 0,
            avg_latency_ms: 0,
            data_waiting_bytes: 0,
            initial_bytes: 0,
            consistency_fallbacks: 0,
            last_warning: None,
            last_error: None,
            recovery_points: vec![],
            interval_secs: 0,
            cycles_expected_hour: 0,
            cycles_ok_hour: 0,
            last_point: None,
            failing_since: None,
            failure: None,
            policy_version: None,
            bandwidth_bytes_per_sec: None,
            recent_cycles: vec![],
        }
    }
}

/// Why a source's cycles fail now (JOB-2): decides the health reason and its wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum FailureCause {
    /// The replica host cannot be reached (connection refused, timed out, cut).
    Unreachable,
    /// The replica host refuses this source (not authorised, wrong certificate).
    Refused,
    /// The replica's storage location is full.
    ReplicaFull,
    /// The replica does not take cycles now (a failover holds it).
    ReplicaPaused,
    /// The VM does not run on the source host.
    VmNotRunning,
    /// Anything else (the message says what).
    Other,
}

/// One successful cycle, split into where its time went (explainable RPO, REP-5). `waited_*`
/// is the time between the previous point's acknowledgement and this cycle's capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CycleTiming {
    /// The point's capture time.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Data bytes the cycle sent.
    pub bytes: u64,
    /// Capture: fleecing, QMP transaction, guest freeze for app-consistent points.
    pub capture_ms: u64,
    /// Reading and sending the data, without the bandwidth limit's waits.
    pub transfer_ms: u64,
    /// From the end of the data to the replica's durable acknowledgement.
    pub apply_ms: u64,
    /// Waiting for the bandwidth limit (CAP-2).
    pub throttled_ms: u64,
    /// Waiting for the copy frequency's next tick.
    pub waited_schedule_ms: u64,
    /// Failed attempts and the waits after them.
    pub waited_backoff_ms: u64,
    /// Paused by an operator.
    pub waited_paused_ms: u64,
    /// Waiting for a time window (scheduled initial replication, resync window).
    pub waited_window_ms: u64,
}

impl CycleTiming {
    /// From the previous point to this one being durable.
    pub fn total_ms(&self) -> u64 {
        self.capture_ms
            + self.transfer_ms
            + self.apply_ms
            + self.throttled_ms
            + self.waited_schedule_ms
            + self.waited_backoff_ms
            + self.waited_paused_ms
            + self.waited_window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_2_site_bandwidth_definition_is_validated() {
        let ok: BandwidthDef = toml::from_str(
            "default_mib_per_sec = 50\n[[windows]]\nfrom = \"22:00\"\nto = \"06:00\"\n[[windows]]\nfrom = \"08:00\"\nto = \"18:00\"\nmib_per_sec = 5\n",
        )
        .expect("toml");
        assert_eq!(ok.validate(), Ok(()));
        for bad in [
            "default_mib_per_sec = 0",
            "default_mib_per_sec = -3",
            "[[windows]]\nfrom = \"24:01\"\nto = \"06:00\"\n",
            "[[windows]]\nfrom = \"8:00\"\nto = \"06:00\"\n",
            "[[windows]]\nfrom = \"08:00\"\nto = \"06:60\"\n",
        ] {
            let d: BandwidthDef = toml::from_str(bad).expect("toml");
            assert!(d.validate().is_err(), "{bad}");
        }
    }
}
