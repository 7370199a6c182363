//! Protected items: replication states (JOB-3), health (JOB-2) and the operations on them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Replication state of a protected item (JOB-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum ReplicationState {
    NotEnabled,
    WaitingForInitialReplication,
    InitialReplicationInProgress,
    Protected,
    PreparedForPlannedFailover,
    FailoverInProgress,
    FailedOverCommitPending,
    Committed,
    Paused,
    ResyncRequired,
    Resynchronizing,
    ReverseReplicating,
}

/// Replication health (JOB-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub enum Health {
    NotApplicable,
    Normal,
    Warning,
    Critical,
}

/// Operations on a protected item (ASR names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    TestFailover,
    TestFailoverCleanup,
    PlannedFailover,
    UnplannedFailover,
    ApplyRecoveryPoint,
    FailoverCommit,
    FailoverCancel,
    ReProtect,
    RepairReplication,
    PauseReplication,
    ResumeReplication,
    /// Offline initial replication (POL-8): import the carried export on the target side.
    ImportInitialReplica,
    DisableProtection,
}

impl Operation {
    pub const ALL: [Operation; 13] = [
        Operation::TestFailover,
        Operation::TestFailoverCleanup,
        Operation::PlannedFailover,
        Operation::UnplannedFailover,
        Operation::ApplyRecoveryPoint,
        Operation::FailoverCommit,
        Operation::FailoverCancel,
        Operation::ReProtect,
        Operation::RepairReplication,
        Operation::PauseReplication,
        Operation::ResumeReplication,
        Operation::ImportInitialReplica,
        Operation::DisableProtection,
    ];

    /// The URL segment, e.g. `testFailover`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::TestFailover => "testFailover",
            Operation::TestFailoverCleanup => "testFailoverCleanup",
            Operation::PlannedFailover => "plannedFailover",
            Operation::UnplannedFailover => "unplannedFailover",
            Operation::ApplyRecoveryPoint => "applyRecoveryPoint",
            Operation::FailoverCommit => "failoverCommit",
            Operation::FailoverCancel => "failoverCancel",
            Operation::ReProtect => "reProtect",
            Operation::RepairReplication => "repairReplication",
            Operation::PauseReplication => "pauseReplication",
            Operation::ResumeReplication => "resumeReplication",
            Operation::ImportInitialReplica => "importInitialReplica",
            Operation::DisableProtection => "disableProtection",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Failover-type operations need the Operator role; the others (disable, the offline
    /// import that completes enabling protection) Contributor.
    pub fn is_failover_type(self) -> bool {
        !matches!(self, Operation::DisableProtection | Operation::ImportInitialReplica)
    }
}

/// Which way a protected item replicates now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Direction {
    /// Primary site → recovery site, as paired.
    #[default]
    Forward,
    /// Recovery site → primary site, after failover and re-protect.
    Reverse,
}

/// REP-7: a replica kept when protection of a VM was disabled ("delete replica: no"), so that
/// enabling the VM again places it on the host that holds it (that host then starts from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptReplicaRecord {
    /// The VM across protections: `<source site id>/<VM id>`.
    pub origin: String,
    pub fabric: uuid::Uuid,
    /// Host id and name of the host that keeps it.
    pub host: String,
    pub host_name: String,
    pub kept_at: chrono::DateTime<chrono::Utc>,
}

/// One side of a protected item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ItemSide {
    pub fabric: uuid::Uuid,
    pub cloud: String,
    /// Host id.
    pub host: String,
    pub host_name: String,
}

/// Where a replicated disk lands (STO-2, STO-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaDisk {
    pub target: String,
    pub source_path: String,
    pub virtual_size: u64,
    /// Storage location path on the target host that holds this disk's chain.
    pub location: String,
    /// Mapped, or the default replica location (and why).
    pub placement: String,
    /// REP-7: an existing image on the target host this disk's replica starts from (a restored
    /// backup); only the differences are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_image: Option<String>,
}

/// A replica NIC and the network it joins (NET-2, NET-3, NET-4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaNic {
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_network: Option<String>,
    /// Target VM network id; absent = disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A recovery point as listed (RP-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecoveryPoint {
    pub id: String,
    pub time: chrono::DateTime<chrono::Utc>,
    pub app_consistent: bool,
    pub size_bytes: u64,
    /// RP-1: the last time the replica re-read this point and compared it with its hash
    /// manifest, and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<PointVerification>,
}

/// The outcome of re-reading a recovery point and comparing it with its manifest (RP-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PointVerification {
    pub at: chrono::DateTime<chrono::Utc>,
    /// False for a point recorded before manifests existed: it cannot be compared.
    pub sealed: bool,
    /// The point reads exactly as its manifest says.
    pub ok: bool,
    /// The damaged ranges, e.g. `vda 0+64 MiB: the data differs from the point's manifest`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<String>,
}

/// Explainable RPO (REP-5): where the time between the last recovery points went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RpoExplanation {
    /// Cycles the figures are averaged over.
    pub cycles: u64,
    /// Average time from one point to the next.
    pub avg_between_points_ms: u64,
    pub capture_ms: u64,
    pub transfer_ms: u64,
    pub apply_ms: u64,
    /// Waiting for the bandwidth limit (CAP-2).
    pub throttled_ms: u64,
    /// Waiting for the copy interval's next tick.
    pub schedule_ms: u64,
    /// Failed attempts and the waits after them.
    pub backoff_ms: u64,
    pub paused_ms: u64,
    /// Scheduled start or resync window.
    pub window_ms: u64,
    /// Changed data per second against the bandwidth limit (none: unlimited).
    pub churn_bytes_per_sec: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// One sentence per finding, the largest contribution first.
    pub findings: Vec<String>,
}

/// Replication statistics (REP-5, JOB-2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub cycles_ok: u64,
    #[serde(default)]
    pub cycles_missed: u64,
    #[serde(default)]
    pub avg_delta_bytes: u64,
    #[serde(default)]
    pub max_delta_bytes: u64,
    #[serde(default)]
    pub avg_latency_ms: u64,
    /// Changed bytes not yet sent.
    #[serde(default)]
    pub data_waiting_bytes: u64,
    /// Initial replication progress, 0..=100.
    #[serde(default)]
    pub initial_progress: u8,
    /// Data bytes the initial replication sent (after re-protect: what reverse replication sent,
    /// FO-5).
    #[serde(default)]
    pub initial_bytes: u64,
    /// App-consistent cycles that fell back to crash-consistent, as the source host counts them
    /// (POL-5).
    #[serde(default)]
    pub consistency_fallbacks: u64,
    /// Offline initial replication (POL-8): the export is complete and waits for its import.
    #[serde(default)]
    pub awaiting_import: bool,
    /// RPO now: seconds since the newest recovery point on the replica (computed when the item
    /// is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_secs: Option<u64>,
    /// Time of the newest recovery point on the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_point: Option<chrono::DateTime<chrono::Utc>>,
    /// The copy interval the source host applies, in seconds.
    #[serde(default)]
    pub interval_secs: u64,
    /// Cycles expected in the last hour at that interval, and how many of them were missed
    /// (JOB-2: Warning over 20 %).
    #[serde(default)]
    pub cycles_expected_hour: u64,
    #[serde(default)]
    pub cycles_missed_hour: u64,
    /// When the source host last reported this item's replication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report: Option<chrono::DateTime<chrono::Utc>>,
    /// How far the source host's clock is ahead of the vault's (negative: behind), in
    /// milliseconds, at its last report. The times of these stats are corrected by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_clock_offset_ms: Option<i64>,
    /// Since when cycles fail, why, and the last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::site_protocol::FailureCause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The policy version the source host applies (POL-9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<i64>,
    /// The bandwidth limit in force on the source host, bytes per second (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Average rate of changed data over the last cycles, bytes per second of wall time.
    #[serde(default)]
    pub churn_bytes_per_sec: u64,
    /// The last cycles split into capture, transfer, apply and waiting (explainable RPO).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_cycles: Vec<crate::site_protocol::CycleTiming>,
    /// What the last cycles say about the RPO (computed when the item is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_explanation: Option<RpoExplanation>,
}

/// A replicated VM (ASR: replication protected item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProtectedItem {
    pub id: uuid::Uuid,
    pub vault_id: uuid::Uuid,
    /// The VM's name.
    pub name: String,
    /// The VM's id in its source site's inventory.
    pub vm_id: String,
    pub container_mapping: uuid::Uuid,
    pub policy: uuid::Uuid,
    pub source: ItemSide,
    pub target: ItemSide,
    pub direction: Direction,
    pub state: ReplicationState,
    pub health: Health,
    #[serde(default)]
    pub health_reasons: Vec<String>,
    #[serde(default)]
    pub disks: Vec<ReplicaDisk>,
    #[serde(default)]
    pub nics: Vec<ReplicaNic>,
    #[serde(default)]
    pub stats: ReplicationStats,
    #[serde(default)]
    pub recovery_points: Vec<RecoveryPoint>,
    #[serde(default)]
    pub allowed_operations: Vec<Operation>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The source VM's definition (CPU, memory, disks, NICs, boot), recorded at enable time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<crate::fabric::VmDefinition>,
    /// The test failover in progress, if any (FO-1: one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_failover: Option<TestFailoverInfo>,
    /// When the last test failover was cleaned up, and the operator's notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test_failover: Option<CompletedTest>,
    /// The failover in effect, from the start of the recovered VM until re-protect (FO-4, FO-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverRecord>,
    /// REP-7: the replica this protection started from instead of a full copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_replica: Option<crate::site_protocol::ExistingReplica>,
}

/// A failover in effect: the point the recovered VM runs on and what reverse replication needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailoverRecord {
    /// The recovery point the recovered VM started from.
    pub point: String,
    /// The point that holds the source's final state (a planned failover's last cycle), if
    /// known. When `point` equals it, reverse replication sends only what the recovered VM wrote
    /// since the failover; otherwise it compares block hashes (FO-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_final_point: Option<String>,
    /// The recovered VM's disks (target, path on the recovery host).
    #[serde(default)]
    pub disks: Vec<(String, String)>,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl FailoverRecord {
    /// The original disks equal the failover point: only the divergence since needs to travel.
    pub fn exact(&self) -> bool {
        self.source_final_point.as_deref() == Some(self.point.as_str())
    }
}

/// A running test failover (FO-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestFailoverInfo {
    pub job: uuid::Uuid,
    pub vm_name: String,
    pub recovery_point: String,
    pub network: TestNetwork,
    /// Bridge created for an automatic isolated network (deleted at cleanup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_bridge: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompletedTest {
    pub at: chrono::DateTime<chrono::Utc>,
    pub notes: String,
    pub recovery_point: String,
}

/// Network of a test failover VM (FO-1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", deny_unknown_fields)]
pub enum TestNetwork {
    /// NICs disconnected.
    #[default]
    None,
    /// An existing (isolated) VM network of the target site, by name or id.
    Existing { network: String },
    /// A network created automatically for the test (an isolated bridge), deleted at cleanup.
    Automatic,
}

/// RP-1: which recovery points of an item to verify.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyPointsRequest {
    /// A point id or `latest`; absent: every point the replica holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<String>,
}

/// RP-3: write one recovery point's disks as standalone images on the replica host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PointImagesRequest {
    /// A point id or `latest` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<String>,
    /// `qcow2` (default) or `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::fabric::DiskFormat>,
    /// A new folder inside one of the replica host's storage locations (absolute path).
    pub path: String,
}

/// Input of an operation on a protected item (fields used by the operation only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    /// `latest`, `latestProcessed`, `latestAppConsistent` or a recovery point id (RP-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<TestNetwork>,
    /// Operator's notes (test failover cleanup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Unplanned failover: try to shut the source down and send its last changes first.
    #[serde(default)]
    pub shutdown_source: bool,
    /// Planned failover: seconds the source guest has to power off when asked (1..=3600,
    /// default 120). A guest still running then is paused, so its last changes are still sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Unplanned failover: the operator confirms the source is fenced (its host powered off or
    /// cut from storage and network), so a replica may start although the source looks alive.
    #[serde(default)]
    pub source_fenced: bool,
    /// Offline import: the folder on the target host that holds the carried export folder
    /// (default: the policy's import path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_path: Option<String>,
}

/// Enable protection for one or many VMs of a site (REP-1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableProtection {
    /// Source site (id or friendly name).
    pub source_site: String,
    /// VM names or ids on that site.
    pub vms: Vec<String>,
    /// REP-7: existing images on the target host to start replicas from (e.g. restored
    /// backups), one for every replicated disk of each VM named here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub existing_disks: Vec<ExistingDisk>,
}

/// An existing image on the target host for one disk of a VM being protected (REP-7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExistingDisk {
    /// VM name or id (one of the request's VMs).
    pub vm: String,
    /// Disk target, e.g. `vda`.
    pub disk: String,
    /// Absolute path on the target host, inside one of its storage locations.
    pub path: String,
}
