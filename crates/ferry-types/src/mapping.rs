//! Cloud pairing, network mapping and storage classification mapping.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A reference to an inventory object of a site.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteObjectRef {
    pub fabric: Uuid,
    pub id: String,
}

/// A source cloud and a target cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudPair {
    pub source: SiteObjectRef,
    pub target: SiteObjectRef,
}

/// Source cloud → target cloud under a policy (ASR: protection container mapping).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ContainerMapping {
    pub id: Uuid,
    pub source: SiteObjectRef,
    pub target: SiteObjectRef,
    pub policy: Uuid,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContainerMapping {
    pub source: SiteObjectRef,
    pub target: SiteObjectRef,
    pub policy: Uuid,
}

/// Source VM network → target VM network (NET-1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkMapping {
    pub id: Uuid,
    pub source: SiteObjectRef,
    pub target: SiteObjectRef,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkMapping {
    pub source: SiteObjectRef,
    pub target: SiteObjectRef,
}

/// Source storage classification → target storage classification (STO-1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StorageMapping {
    pub id: Uuid,
    pub source: SiteObjectRef,
    pub target: SiteObjectRef,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStorageMapping {
    pub source: SiteObjectRef,
    pub target: SiteObjectRef,
}

/// Per protected cloud pair, the target networks available for mapping (NET-1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkAvailability {
    pub container_mapping: Uuid,
    pub source_cloud: String,
    pub target_cloud: String,
    /// Target VM networks reachable from the target cloud's hosts.
    pub target_networks: Vec<SiteObjectRef>,
}
