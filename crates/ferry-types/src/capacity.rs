//! CAP-1 capacity planning: what hosts measure of VMs' churn, the vault's capacity plans, and the
//! report computed from the measurements.
//!
//! A *capacity plan* names up to [`MAX_PLAN_VMS`] VMs of one site. Their hosts measure each VM's
//! churn — unique changed 64 KiB clusters per window of 30 s, 5 min, 15 min and 1 h, exactly
//! what a delta cycle at that copy frequency would send — and report a [`ChurnProfile`] per VM
//! with every site report. The report is computed from those measurements, never guessed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// VMs one capacity plan measures at once.
pub const MAX_PLAN_VMS: usize = 100;
/// The window lengths measured, in seconds: the three copy frequencies and the hour.
pub const WINDOW_SECS: [u32; 4] = [30, 300, 900, 3600];
/// Completed hours a host keeps the churn of, per VM (the last day; the hourly window's totals
/// in [`WindowStats`] cover the whole measurement).
pub const MAX_HOURS: usize = 24;

/// Where a VM's measurement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ProfileState {
    Measuring,
    /// The VM is not running: no churn to measure (windows resume when it runs).
    VmNotRunning,
    Stopped,
}

/// One disk of a measured VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProfiledDisk {
    pub target: String,
    pub virtual_size: u64,
    /// Bytes the image holds now (allocated data).
    pub allocated_bytes: u64,
}

/// Completed windows of one length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WindowStats {
    pub window_secs: u32,
    /// Windows completed.
    pub windows: u64,
    /// Unique changed bytes summed over the completed windows.
    pub total_bytes: u64,
    /// The largest window's unique changed bytes.
    pub max_bytes: u64,
}

/// Host → site → vault: the measurement of one VM for one capacity plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChurnProfile {
    pub plan: Uuid,
    pub vm_id: String,
    pub vm_name: String,
    pub state: ProfileState,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Time measured so far, in seconds (windows of a restarted agent or QEMU start over).
    pub measured_secs: u64,
    #[serde(default)]
    pub disks: Vec<ProfiledDisk>,
    #[serde(default)]
    pub windows: Vec<WindowStats>,
    /// Unique changed bytes of each of the last completed hours, oldest first (at most
    /// [`MAX_HOURS`]).
    #[serde(default)]
    pub hours: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ChurnProfile {
    /// The completed windows of `secs`, if any.
    pub fn window(&self, secs: u32) -> Option<&WindowStats> {
        self.windows.iter().find(|w| w.window_secs == secs && w.windows > 0)
    }
}

/// Vault → site → host: start or stop measuring a VM for a capacity plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ProfileAction {
    Start {
        plan: Uuid,
        vm: String,
        /// Stop by itself at this time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
    },
    Stop {
        plan: Uuid,
        vm: String,
    },
    /// Stop, and drop the measurement (its plan was deleted).
    Forget {
        plan: Uuid,
        vm: String,
    },
}

/// A VM of a capacity plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlannedVm {
    pub vm_id: String,
    pub name: String,
    /// Host id in the site's inventory.
    pub host: String,
}

/// Where a capacity plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum CapacityPlanState {
    Measuring,
    Stopped,
}

/// A capacity plan (CAP-1): VMs of one site whose churn is measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CapacityPlan {
    pub id: Uuid,
    pub vault_id: Uuid,
    pub name: String,
    pub site: Uuid,
    pub site_name: String,
    pub vms: Vec<PlannedVm>,
    pub state: CapacityPlanState,
    pub created_at: DateTime<Utc>,
    /// The measurement stops by itself then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    /// The latest measurement of each VM.
    #[serde(default)]
    pub profiles: Vec<ChurnProfile>,
}

/// Create a capacity plan and start measuring.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCapacityPlan {
    /// 1–64 characters: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Site (id or name) whose VMs are measured.
    pub source_site: String,
    /// VM names or ids on that site (1–100).
    pub vms: Vec<String>,
    /// Stop measuring after this many hours (1–720); without it, until stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_hours: Option<u32>,
}

/// Inputs of a report that are not measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportParams {
    /// Bandwidth for the initial replication time, Mbit/s (> 0).
    pub bandwidth_mbps: f64,
    /// Recovery point retention, hours (0–24, POL-4).
    pub retention_hours: u32,
    /// Copy frequency of the replica storage figure, seconds (30, 300 or 900).
    pub copy_frequency_secs: u32,
}

impl Default for ReportParams {
    fn default() -> Self {
        Self { bandwidth_mbps: 100.0, retention_hours: 24, copy_frequency_secs: 300 }
    }
}

/// Bandwidth needed to keep up with one copy frequency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BandwidthNeed {
    pub copy_frequency_secs: u32,
    /// Completed windows of that length behind the figures (the fewest among the VMs).
    pub windows: u64,
    /// Mean over the measured windows, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_mbps: Option<f64>,
    /// The largest window of each VM, summed, Mbit/s: enough for every cycle to end within its
    /// copy frequency even when the VMs peak together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mbps: Option<f64>,
}

/// One VM in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmCapacity {
    pub vm: String,
    pub state: ProfileState,
    pub measured_secs: u64,
    pub disks: Vec<ProfiledDisk>,
    pub allocated_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_churn_bytes: Option<u64>,
    pub bandwidth: Vec<BandwidthNeed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_storage_bytes: Option<u64>,
}

/// The capacity report of a plan (CAP-1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CapacityReport {
    pub plan: String,
    pub state: CapacityPlanState,
    pub params: ReportParams,
    /// VMs with a measurement / VMs in the plan.
    pub vms_measured: u32,
    pub vms: u32,
    pub disks: u32,
    pub disks_per_vm_max: u32,
    pub disks_per_vm_average: f64,
    pub virtual_bytes: u64,
    pub allocated_bytes: u64,
    /// The shortest time any VM was measured, seconds.
    pub measured_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_churn_bytes: Option<u64>,
    /// What the daily churn is computed from.
    pub daily_churn_basis: String,
    pub bandwidth: Vec<BandwidthNeed>,
    /// Initial replication of every allocated byte at `params.bandwidth_mbps`.
    pub initial_replication_secs: f64,
    /// Replica storage for the retention window at the copy frequency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_storage_bytes: Option<u64>,
    pub per_vm: Vec<VmCapacity>,
    /// How to read the figures (estimates, VMs without data, …).
    pub notes: Vec<String>,
}
