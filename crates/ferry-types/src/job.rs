//! Jobs (JOB-1): every operation is a durable job with tasks.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum JobStatus {
    NotStarted,
    InProgress,
    WaitingForInput,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::NotStarted,
        JobStatus::InProgress,
        JobStatus::WaitingForInput,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::NotStarted => "NotStarted",
            JobStatus::InProgress => "InProgress",
            JobStatus::WaitingForInput => "WaitingForInput",
            JobStatus::Succeeded => "Succeeded",
            JobStatus::Failed => "Failed",
            JobStatus::Cancelled => "Cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Self::ALL.into_iter().find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// What an operator may do with a job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum JobAction {
    Cancel,
    Restart,
    Resume,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobTask {
    pub name: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub vault_id: Uuid,
    /// Operation name, e.g. `EnableProtection`, `TestFailover`, `RegistrationKeyCleanup`.
    pub operation: String,
    /// Kind of object the job acts on, e.g. `ProtectedItem`, `Fabric`, `RecoveryPlan`.
    pub object_type: String,
    pub object_id: String,
    pub object_name: String,
    /// Site (fabric) the job concerns, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<Uuid>,
    pub status: JobStatus,
    pub tasks: Vec<JobTask>,
    /// 0..=100.
    pub progress: u8,
    pub allowed_actions: Vec<JobAction>,
    #[serde(default)]
    pub errors: Vec<ApiError>,
    /// Operation input, kept so a failed job can be restarted and a running one resumed.
    #[serde(default)]
    pub params: serde_json::Value,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Job this one restarts, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_of: Option<Uuid>,
}

/// Filters for listing jobs (all optional, combined with AND).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
}

impl Job {
    /// Allowed actions follow from the status.
    pub fn actions_for(status: JobStatus) -> Vec<JobAction> {
        match status {
            JobStatus::NotStarted | JobStatus::InProgress => vec![JobAction::Cancel],
            JobStatus::WaitingForInput => vec![JobAction::Resume, JobAction::Cancel],
            JobStatus::Failed => vec![JobAction::Restart],
            JobStatus::Succeeded | JobStatus::Cancelled => vec![],
        }
    }
}
