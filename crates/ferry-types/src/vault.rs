//! Vaults (FAB-1) and the protection goal (FAB-6).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Vault {
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub region: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection_goal: Option<ProtectionGoal>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVault {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub region: String,
}

/// Where to replicate to (FAB-6). The original asks: replicate to a recovery site; hypervisor;
/// managed by a site manager; a second site manager or the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtectionGoal {
    /// Always `RecoverySite` in this scenario.
    pub replicate_to: ReplicateTo,
    /// Always `Kvm`.
    pub hypervisor: Hypervisor,
    /// Must be true: VMs are managed by a Ferry site manager.
    pub managed_by_site_manager: bool,
    /// False for a single-site-manager deployment (SGL-1): source and target clouds on one server.
    pub second_site_manager: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ReplicateTo {
    RecoverySite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Hypervisor {
    Kvm,
}
