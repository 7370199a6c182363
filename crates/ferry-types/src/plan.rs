//! Recovery plans (PLAN-1..PLAN-4): protected VMs of one cloud pair failed over together, in
//! ordered groups, with scripted and manual steps before and after each group.
//!
//! Group numbers follow the position in `groups` (Group 1 first); deleting a group renumbers the
//! ones after it. The rules (limits, one group per VM, one pair per plan, step checks) are in
//! `ferry_core::plan`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::protection::Operation;

/// At most this many protected VMs in one plan (PLAN-1).
pub const MAX_PLAN_VMS: usize = 100;
/// At most this many groups in one plan (PLAN-1).
pub const MAX_PLAN_GROUPS: usize = 7;
/// Time limit of a plan script (PLAN-3).
pub const SCRIPT_TIMEOUT_SECS: u64 = 600;

/// The failover types a step can be chosen for (PLAN-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum PlanFailoverType {
    TestFailover,
    PlannedFailover,
    UnplannedFailover,
}

impl PlanFailoverType {
    pub const ALL: [PlanFailoverType; 3] =
        [PlanFailoverType::TestFailover, PlanFailoverType::PlannedFailover, PlanFailoverType::UnplannedFailover];

    pub fn as_str(self) -> &'static str {
        match self {
            PlanFailoverType::TestFailover => "TestFailover",
            PlanFailoverType::PlannedFailover => "PlannedFailover",
            PlanFailoverType::UnplannedFailover => "UnplannedFailover",
        }
    }

    /// The failover type of a plan operation, if it is one.
    pub fn of(op: Operation) -> Option<PlanFailoverType> {
        match op {
            Operation::TestFailover => Some(PlanFailoverType::TestFailover),
            Operation::PlannedFailover => Some(PlanFailoverType::PlannedFailover),
            Operation::UnplannedFailover => Some(PlanFailoverType::UnplannedFailover),
            _ => None,
        }
    }
}

/// A pre- or post-step of a group (PLAN-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum PlanStep {
    /// A script from the site manager's script library, run on the site manager of the site
    /// where the VMs start (never on a host). `path` is relative to the library and the same on
    /// both sites. Exit code 0 and nothing on stderr within 600 s, or the step fails.
    Script {
        name: String,
        path: String,
        /// Failover types the step runs for; empty = all.
        #[serde(default)]
        failover_types: Vec<PlanFailoverType>,
    },
    /// An operator does something by hand; the plan waits until the operator resumes its job.
    ManualAction {
        name: String,
        instructions: String,
        /// Failover types the step runs for; empty = all.
        #[serde(default)]
        failover_types: Vec<PlanFailoverType>,
    },
}

impl PlanStep {
    pub fn name(&self) -> &str {
        match self {
            PlanStep::Script { name, .. } | PlanStep::ManualAction { name, .. } => name,
        }
    }

    pub fn failover_types(&self) -> &[PlanFailoverType] {
        match self {
            PlanStep::Script { failover_types, .. } | PlanStep::ManualAction { failover_types, .. } => failover_types,
        }
    }

    /// Whether the step runs for this failover type.
    pub fn applies_to(&self, t: PlanFailoverType) -> bool {
        self.failover_types().is_empty() || self.failover_types().contains(&t)
    }
}

/// Before or after the VMs of a group start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum StepPhase {
    Pre,
    Post,
}

/// A protected VM in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanItem {
    /// Protected item id.
    pub id: Uuid,
    /// The VM's name.
    pub name: String,
}

/// A group of a plan: its VMs start in parallel, after every VM of the previous group is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanGroup {
    /// 1-based; follows the group's position.
    pub number: u8,
    #[serde(default)]
    pub items: Vec<PlanItem>,
    #[serde(default)]
    pub pre_steps: Vec<PlanStep>,
    #[serde(default)]
    pub post_steps: Vec<PlanStep>,
}

impl PlanGroup {
    pub fn new(number: u8) -> Self {
        Self { number, items: Vec::new(), pre_steps: Vec::new(), post_steps: Vec::new() }
    }

    pub fn steps(&self, phase: StepPhase) -> &[PlanStep] {
        match phase {
            StepPhase::Pre => &self.pre_steps,
            StepPhase::Post => &self.post_steps,
        }
    }
}

/// The last operation run on a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanJobRef {
    pub job: Uuid,
    pub operation: Operation,
    pub at: DateTime<Utc>,
}

/// A recovery plan (ASR: replication recovery plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecoveryPlan {
    pub id: Uuid,
    pub vault_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The cloud pair every VM of the plan belongs to.
    pub container_mapping: Uuid,
    pub source_fabric: Uuid,
    pub source_cloud: String,
    pub target_fabric: Uuid,
    pub target_cloud: String,
    pub groups: Vec<PlanGroup>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Document version (for `expected_version` on edits); filled in when read.
    #[serde(default)]
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<PlanJobRef>,
    /// Operations every VM of the plan allows now (computed when read).
    #[serde(default)]
    pub allowed_operations: Vec<Operation>,
}

impl RecoveryPlan {
    /// Every VM of the plan, group by group.
    pub fn items(&self) -> impl Iterator<Item = &PlanItem> {
        self.groups.iter().flat_map(|g| g.items.iter())
    }

    pub fn vm_count(&self) -> usize {
        self.groups.iter().map(|g| g.items.len()).sum()
    }
}

/// Create a plan (PLAN-1). The VMs go to Group 1.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The cloud pair (id); optional when `vms` is given (their pair is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_mapping: Option<Uuid>,
    /// Protected VMs (names or protected item ids).
    #[serde(default)]
    pub vms: Vec<String>,
}

/// One edit of a plan. Groups are named by number (1-based); VMs by name or protected item id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "change", rename_all = "camelCase", deny_unknown_fields)]
pub enum PlanChange {
    /// Add protected VMs to a group.
    AddVms { group: u8, vms: Vec<String> },
    /// Remove VMs from the plan.
    RemoveVms { vms: Vec<String> },
    /// Move VMs of the plan to another group.
    MoveVms { vms: Vec<String>, group: u8 },
    /// Add an empty group at the end.
    AddGroup,
    /// Delete an empty group (not Group 1); later groups are renumbered.
    DeleteGroup { group: u8 },
    /// Move a group to another position; groups are renumbered.
    MoveGroup { group: u8, to: u8 },
    /// Append a pre- or post-step to a group.
    AddStep { group: u8, phase: StepPhase, step: PlanStep },
    /// Remove a step (1-based index within the group's pre- or post-steps).
    RemoveStep { group: u8, phase: StepPhase, index: usize },
    /// Replace the description.
    SetDescription { description: String },
}

/// Edit a plan: the changes apply in order, all or nothing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlan {
    /// Refuse the edit if the plan changed since this version (412).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    pub changes: Vec<PlanChange>,
}

/// Input of an operation on a plan (fields used by the operation only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanOperationRequest {
    /// `latest`, `latestProcessed`, `latestAppConsistent` (test and unplanned failover, RP-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<String>,
    /// Test failover network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::protection::TestNetwork>,
    /// Test failover cleanup notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Unplanned failover: try to shut the sources down and send their last changes first.
    #[serde(default)]
    pub shutdown_source: bool,
    /// Unplanned failover: the operator confirms every source is fenced.
    #[serde(default)]
    pub source_fenced: bool,
}

/// Input of the script command a plan sends to a site manager (PLAN-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScriptRun {
    /// Path relative to the site manager's script library.
    pub path: String,
    pub plan: String,
    pub group: u8,
    pub phase: StepPhase,
    pub failover_type: PlanFailoverType,
    /// `PrimaryToRecovery` or `RecoveryToPrimary`.
    pub direction: String,
    pub timeout_secs: u64,
}
