//! Replication policies (POL-1..POL-9). Validation rules live in `ferry-core::policy`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The settable fields of a policy (create and full update).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    /// Host version family every host under this policy must report (POL-1), e.g. `qemu-7.2`.
    pub host_version: String,
    /// Authentication between hosts (POL-2).
    #[serde(default)]
    pub authentication: Authentication,
    /// Replication port; default 8084 for certificates, 8083 for Kerberos (POL-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Copy frequency in seconds: 30, 300 or 900 (POL-3).
    pub copy_frequency_secs: u32,
    /// Additional hourly recovery points to keep, 0..=24; 0 keeps only the latest point (POL-4).
    #[serde(default)]
    pub recovery_point_retention_hours: u32,
    /// App-consistent snapshot frequency in hours, 1..=12, or absent for off (POL-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_consistent_frequency_hours: Option<u32>,
    /// zstd compression of replication traffic (POL-6).
    #[serde(default)]
    pub compression: bool,
    /// Remove the replica VM and its storage when protection is disabled (POL-7).
    #[serde(default)]
    pub delete_replica_on_disable: bool,
    /// How the initial copy travels (POL-8).
    #[serde(default)]
    pub initial_replication: InitialReplication,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Authentication {
    /// Mutual TLS with certificates from the vault CA (default port 8084).
    #[default]
    Certificate,
    /// Kerberos (default port 8083); only with a configured realm.
    Kerberos,
}

impl Authentication {
    pub fn default_port(self) -> u16 {
        match self {
            Authentication::Certificate => 8084,
            Authentication::Kerberos => 8083,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "method", deny_unknown_fields)]
pub enum InitialReplication {
    /// Over the network, now.
    #[default]
    OverNetworkNow,
    /// Over the network at a scheduled time, at most 7 days ahead.
    OverNetworkScheduled { start_at: DateTime<Utc> },
    /// Offline: export to a path on the source side, import from a path on the target side.
    Offline { export_path: String, import_path: String },
}

/// A policy as stored and listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub id: Uuid,
    #[serde(flatten)]
    pub spec: PolicySpec,
    /// Cloud ids (protection containers) associated with the policy (POL-9).
    pub associated_clouds: Vec<String>,
    /// Incremented on every change; send it back in `If-Match` to avoid lost updates.
    pub version: i64,
    pub created_at: DateTime<Utc>,
}

impl PolicySpec {
    /// The effective replication port.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(self.authentication.default_port())
    }
}

/// Create a policy and associate it with its source cloud at once (POL-9).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    #[serde(flatten)]
    pub spec: PolicySpec,
    /// Cloud pairs to associate right away (source cloud → target cloud), POL-9.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub associate: Vec<crate::mapping::CloudPair>,
}
