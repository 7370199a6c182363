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
    DisableProtection,
}

impl Operation {
    pub const ALL: [Operation; 12] = [
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
            Operation::DisableProtection => "disableProtection",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Failover-type operations need the Operator role; the others (disable) Contributor.
    pub fn is_failover_type(self) -> bool {
        !matches!(self, Operation::DisableProtection)
    }
}
