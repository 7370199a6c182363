//! The crate's one error type. Every variant has a stable code (`Error::code`) that the vault
//! returns in `ApiError::code`; messages are one short sentence starting with a capital.

use ferry_types::protection::{Operation, ReplicationState};
use ferry_types::ApiError;

/// Kind of an inventory object that was looked up and not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Cloud,
    HostGroup,
    Host,
    VmNetwork,
    StorageClassification,
    Vm,
}

impl ObjectKind {
    fn label(self) -> &'static str {
        match self {
            ObjectKind::Cloud => "Cloud",
            ObjectKind::HostGroup => "Host group",
            ObjectKind::Host => "Host",
            ObjectKind::VmNetwork => "VM network",
            ObjectKind::StorageClassification => "Storage classification",
            ObjectKind::Vm => "VM",
        }
    }
}

/// Everything that ferry-core can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    // ---- policy (POL-*) ----
    #[error("Policy name is invalid: {reason}")]
    PolicyInvalidName { reason: String },
    #[error("Policy host version must not be empty")]
    PolicyInvalidHostVersion,
    #[error("Copy frequency {secs} s is not supported; use 30, 300 or 900 seconds")]
    PolicyInvalidCopyFrequency { secs: u32 },
    #[error("Recovery point retention {hours} h is out of range 0..=24")]
    PolicyInvalidRetention { hours: u32 },
    #[error("App-consistent snapshot frequency {hours} h is out of range 1..=12")]
    PolicyInvalidAppConsistentFrequency { hours: u32 },
    #[error(
        "App-consistent snapshot frequency {frequency_hours} h must be less than the {retention_hours} additional recovery points kept"
    )]
    PolicyAppConsistentFrequencyNotBelowRetention { frequency_hours: u32, retention_hours: u32 },
    #[error("Kerberos authentication needs a configured Kerberos realm")]
    KerberosRealmNotConfigured,
    #[error("Replication port 0 is not valid; use 1..=65535")]
    PolicyInvalidPort,
    #[error("Scheduled initial replication time {start_at} is not in the future")]
    PolicyScheduleInPast { start_at: String },
    #[error("Scheduled initial replication time {start_at} is more than 7 days ahead")]
    PolicyScheduleTooFar { start_at: String },
    #[error("Host {host} reports version {version}, but the policy needs {expected}")]
    HostVersionMismatch { host: String, version: String, expected: String },

    // ---- paths (POL-8, PLAN-3, SEC-3) ----
    #[error("Path {field} is empty")]
    PathEmpty { field: String },
    #[error("Path {field} contains a NUL byte")]
    PathContainsNul { field: String },
    #[error("Path {field} ({path}) must be absolute")]
    PathNotAbsolute { field: String, path: String },
    #[error("Path {field} ({path}) must be relative")]
    PathNotRelative { field: String, path: String },
    #[error("Path {field} ({path}) must not contain a '..' component")]
    PathTraversal { field: String, path: String },
    #[error("Path {field} ({path}) is not normalized")]
    PathNotNormalized { field: String, path: String },
    #[error("Path {field} ({path}) is on a replication host's storage location {location}")]
    PathOnReplicationHost { field: String, path: String, location: String },

    // ---- fabric (FAB-5..7) ----
    #[error("{} {id} was not found", kind.label())]
    NotFound { kind: ObjectKind, id: String },
    #[error("Cloud {cloud} has no host group")]
    CloudHasNoHostGroups { cloud: String },
    #[error("Cloud {cloud} has no host")]
    CloudHasNoHosts { cloud: String },
    #[error("Host {host} is not in a host group of the source or target cloud")]
    HostNotInPairedClouds { host: String },
    #[error("Cloud {cloud} is already paired")]
    CloudAlreadyPaired { cloud: String },
    #[error("Replicating within one site manager needs at least two clouds")]
    SingleSiteNeedsTwoClouds,
    #[error("Source and target cloud are the same cloud {cloud}")]
    SameSourceAndTargetCloud { cloud: String },
    #[error("Host {host} runs QEMU {version}, which is not supported; QEMU 7.2 or newer is needed")]
    UnsupportedQemuVersion { host: String, version: String },
    #[error("Host {host} has no host agent joined")]
    HostAgentNotJoined { host: String },
    #[error("Host {host} runs agent version {version}, but {expected} is needed")]
    AgentVersionMismatch { host: String, version: String, expected: String },
    #[error("Host {host} has no VM to protect")]
    HostHasNoVms { host: String },
    #[error("Cloud {cloud} has no VM to protect")]
    NoVmsToProtect { cloud: String },
    #[error("Protection goal is invalid: {reason}")]
    ProtectionGoalInvalid { reason: String },
    #[error("Protection goal has no second site manager, so source and target must be on one site")]
    ProtectionGoalRequiresSameSite,
    #[error("Cloud {cloud} is not synced with the vault")]
    CloudNotSynced { cloud: String },

    // ---- network (NET-*) ----
    #[error("VM network {network} cannot be mapped to itself")]
    NetworkMappingToItself { network: String },
    #[error("VM network {network} is already mapped on the target site")]
    NetworkAlreadyMapped { network: String },
    #[error("VM network {network} is not available to target cloud {cloud}")]
    NetworkNotAvailableOnTarget { network: String, cloud: String },
    #[error("Address {value} is not a valid {what}")]
    InvalidAddress { what: String, value: String },
    #[error("IP pool {pool} of subnet {subnet} is invalid: {reason}")]
    InvalidIpPool { subnet: String, pool: String, reason: String },
    #[error("Static IP pools of subnet {subnet} have no free address")]
    IpPoolExhausted { subnet: String },
    #[error("No target host of cloud {cloud} can reach every mapped network of the VM")]
    NoHostReachesNetworks { cloud: String },

    // ---- storage (STO-*) ----
    #[error("Storage classification {classification} cannot be mapped to itself")]
    StorageMappingToItself { classification: String },
    #[error("Storage classification {classification} is already mapped on the target site")]
    StorageClassificationAlreadyMapped { classification: String },
    #[error("Storage classification {classification} is not available to a host group of cloud {cloud}")]
    ClassificationNotAvailable { classification: String, cloud: String },
    #[error("No storage location on host {host} has room for disk {disk} ({bytes} bytes)")]
    NoSuitableStorage { disk: String, host: String, bytes: u64 },
    #[error("No target host can hold every disk of VM {vm}")]
    NoTargetHost { vm: String },

    // ---- state (JOB-3) ----
    #[error("Operation {} is not allowed in state {state:?}{}", operation.as_str(), reason_suffix(reason))]
    OperationNotAllowed { state: ReplicationState, operation: Operation, reason: Option<String> },
    #[error("Event {event} is not valid in state {state:?}")]
    InvalidStateTransition { state: ReplicationState, event: String },

    // ---- recovery plans (PLAN-*) ----
    #[error("Recovery plan name is invalid: {reason}")]
    PlanInvalidName { reason: String },
    #[error("Recovery plan description is longer than 1024 characters")]
    PlanInvalidDescription,
    #[error("A recovery plan holds at most {max} VMs; this change would make it {requested}")]
    PlanTooManyVms { max: usize, requested: usize },
    #[error("A recovery plan has at most {max} groups")]
    PlanTooManyGroups { max: usize },
    #[error("VM {vm} is not protected in the recovery plan's cloud pair")]
    PlanVmNotInPair { vm: String },
    #[error("VM {vm} is already in group {group} of this plan")]
    PlanVmAlreadyInPlan { vm: String, group: u8 },
    #[error("VM {vm} is not in this plan")]
    PlanVmNotInPlan { vm: String },
    #[error("The plan has no group {group}")]
    PlanGroupNotFound { group: u8 },
    #[error("Group 1 of a recovery plan cannot be deleted")]
    PlanGroupOneCannotBeDeleted,
    #[error("Group {group} still holds {vms} VMs; move or remove them first")]
    PlanGroupNotEmpty { group: u8, vms: usize },
    #[error("Step '{step}' is invalid: {reason}")]
    PlanStepInvalid { step: String, reason: String },
    #[error("Group {group} has no step {index} there")]
    PlanStepNotFound { group: u8, index: usize },
    #[error("The recovery plan has no VM")]
    PlanHasNoVms,
    #[error("'{operation}' is not an operation on recovery plans")]
    PlanOperationUnknown { operation: String },
    #[error("Operation {} is not allowed for every VM of the plan: {}", operation.as_str(), refused.join("; "))]
    PlanOperationNotAllowed { operation: Operation, refused: Vec<String> },

    // ---- recovery points (RP-*) ----
    #[error("There is no recovery point")]
    NoRecoveryPoints,
    #[error("There is no processed recovery point yet")]
    NoProcessedRecoveryPoint,
    #[error("There is no app-consistent recovery point")]
    NoAppConsistentRecoveryPoint,
    #[error("Recovery point {id} was not found")]
    RecoveryPointNotFound { id: String },

    // ---- alerts (JOB-4) ----
    #[error("Webhook URL '{url}' is not valid: {reason}")]
    AlertWebhookUrlInvalid { url: String, reason: String },
    #[error("E-mail address '{address}' ({field}) is not valid")]
    AlertEmailAddressInvalid { field: String, address: String },
    #[error("SMTP relay '{relay}' is not valid: {reason}")]
    AlertSmtpRelayInvalid { relay: String, reason: String },
    #[error("Alert settings are not valid: {reason}")]
    AlertSettingsInvalid { reason: String },

    // ---- capacity planning (CAP-1) ----
    #[error("Capacity plan name is invalid: {reason}")]
    CapacityPlanInvalidName { reason: String },
    #[error("A capacity plan measures 1 to {max} VMs, not {count}")]
    CapacityPlanVmCount { count: usize, max: usize },
    #[error("VM {vm} is listed twice")]
    CapacityPlanDuplicateVm { vm: String },
    #[error("Measuring duration {hours} h is out of range 1..=720")]
    CapacityPlanInvalidDuration { hours: u32 },
    #[error("Report parameter {name} = {value} is out of range ({range})")]
    CapacityReportInvalidParam { name: &'static str, value: String, range: &'static str },
}

fn reason_suffix(reason: &Option<String>) -> String {
    match reason {
        Some(r) => format!(": {r}"),
        None => String::new(),
    }
}

impl Error {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::PolicyInvalidName { .. } => "PolicyInvalidName",
            Error::PolicyInvalidHostVersion => "PolicyInvalidHostVersion",
            Error::PolicyInvalidCopyFrequency { .. } => "PolicyInvalidCopyFrequency",
            Error::PolicyInvalidRetention { .. } => "PolicyInvalidRetention",
            Error::PolicyInvalidAppConsistentFrequency { .. } => "PolicyInvalidAppConsistentFrequency",
            Error::PolicyAppConsistentFrequencyNotBelowRetention { .. } => {
                "PolicyAppConsistentFrequencyNotBelowRetention"
            }
            Error::KerberosRealmNotConfigured => "KerberosRealmNotConfigured",
            Error::PolicyInvalidPort => "PolicyInvalidPort",
            Error::PolicyScheduleInPast { .. } => "PolicyScheduleInPast",
            Error::PolicyScheduleTooFar { .. } => "PolicyScheduleTooFar",
            Error::HostVersionMismatch { .. } => "HostVersionMismatch",
            Error::PathEmpty { .. } => "PathEmpty",
            Error::PathContainsNul { .. } => "PathContainsNul",
            Error::PathNotAbsolute { .. } => "PathNotAbsolute",
            Error::PathNotRelative { .. } => "PathNotRelative",
            Error::PathTraversal { .. } => "PathTraversal",
            Error::PathNotNormalized { .. } => "PathNotNormalized",
            Error::PathOnReplicationHost { .. } => "PathOnReplicationHost",
            Error::NotFound { kind, .. } => match kind {
                ObjectKind::Cloud => "CloudNotFound",
                ObjectKind::HostGroup => "HostGroupNotFound",
                ObjectKind::Host => "HostNotFound",
                ObjectKind::VmNetwork => "VmNetworkNotFound",
                ObjectKind::StorageClassification => "StorageClassificationNotFound",
                ObjectKind::Vm => "VmNotFound",
            },
            Error::CloudHasNoHostGroups { .. } => "CloudHasNoHostGroups",
            Error::CloudHasNoHosts { .. } => "CloudHasNoHosts",
            Error::HostNotInPairedClouds { .. } => "HostNotInPairedClouds",
            Error::CloudAlreadyPaired { .. } => "CloudAlreadyPaired",
            Error::SingleSiteNeedsTwoClouds => "SingleSiteNeedsTwoClouds",
            Error::SameSourceAndTargetCloud { .. } => "SameSourceAndTargetCloud",
            Error::UnsupportedQemuVersion { .. } => "UnsupportedQemuVersion",
            Error::HostAgentNotJoined { .. } => "HostAgentNotJoined",
            Error::AgentVersionMismatch { .. } => "AgentVersionMismatch",
            Error::HostHasNoVms { .. } => "HostHasNoVms",
            Error::NoVmsToProtect { .. } => "NoVmsToProtect",
            Error::ProtectionGoalInvalid { .. } => "ProtectionGoalInvalid",
            Error::ProtectionGoalRequiresSameSite => "ProtectionGoalRequiresSameSite",
            Error::CloudNotSynced { .. } => "CloudNotSynced",
            Error::NetworkMappingToItself { .. } => "NetworkMappingToItself",
            Error::NetworkAlreadyMapped { .. } => "NetworkAlreadyMapped",
            Error::NetworkNotAvailableOnTarget { .. } => "NetworkNotAvailableOnTarget",
            Error::InvalidAddress { .. } => "InvalidAddress",
            Error::InvalidIpPool { .. } => "InvalidIpPool",
            Error::IpPoolExhausted { .. } => "IpPoolExhausted",
            Error::NoHostReachesNetworks { .. } => "NoHostReachesNetworks",
            Error::StorageMappingToItself { .. } => "StorageMappingToItself",
            Error::StorageClassificationAlreadyMapped { .. } => "StorageClassificationAlreadyMapped",
            Error::ClassificationNotAvailable { .. } => "ClassificationNotAvailable",
            Error::NoSuitableStorage { .. } => "NoSuitableStorage",
            Error::NoTargetHost { .. } => "NoTargetHost",
            Error::OperationNotAllowed { .. } => "OperationNotAllowed",
            Error::InvalidStateTransition { .. } => "InvalidStateTransition",
            Error::PlanInvalidName { .. } => "PlanInvalidName",
            Error::PlanInvalidDescription => "PlanInvalidDescription",
            Error::PlanTooManyVms { .. } => "PlanTooManyVms",
            Error::PlanTooManyGroups { .. } => "PlanTooManyGroups",
            Error::PlanVmNotInPair { .. } => "PlanVmNotInPair",
            Error::PlanVmAlreadyInPlan { .. } => "PlanVmAlreadyInPlan",
            Error::PlanVmNotInPlan { .. } => "PlanVmNotInPlan",
            Error::PlanGroupNotFound { .. } => "PlanGroupNotFound",
            Error::PlanGroupOneCannotBeDeleted => "PlanGroupOneCannotBeDeleted",
            Error::PlanGroupNotEmpty { .. } => "PlanGroupNotEmpty",
            Error::PlanStepInvalid { .. } => "PlanStepInvalid",
            Error::PlanStepNotFound { .. } => "PlanStepNotFound",
            Error::PlanHasNoVms => "PlanHasNoVms",
            Error::PlanOperationUnknown { .. } => "PlanOperationUnknown",
            Error::PlanOperationNotAllowed { .. } => "PlanOperationNotAllowed",
            Error::NoRecoveryPoints => "NoRecoveryPoints",
            Error::NoProcessedRecoveryPoint => "NoProcessedRecoveryPoint",
            Error::NoAppConsistentRecoveryPoint => "NoAppConsistentRecoveryPoint",
            Error::RecoveryPointNotFound { .. } => "RecoveryPointNotFound",
            Error::AlertWebhookUrlInvalid { .. } => "AlertWebhookUrlInvalid",
            Error::AlertEmailAddressInvalid { .. } => "AlertEmailAddressInvalid",
            Error::AlertSmtpRelayInvalid { .. } => "AlertSmtpRelayInvalid",
            Error::AlertSettingsInvalid { .. } => "AlertSettingsInvalid",
            Error::CapacityPlanInvalidName { .. } => "CapacityPlanInvalidName",
            Error::CapacityPlanVmCount { .. } => "CapacityPlanVmCount",
            Error::CapacityPlanDuplicateVm { .. } => "CapacityPlanDuplicateVm",
            Error::CapacityPlanInvalidDuration { .. } => "CapacityPlanInvalidDuration",
            Error::CapacityReportInvalidParam { .. } => "CapacityReportInvalidParam",
        }
    }

    /// What usually leads to this error, for the operator.
    pub fn possible_causes(&self) -> Vec<&'static str> {
        match self {
            Error::KerberosRealmNotConfigured => {
                vec!["The site managers and hosts are not joined to a Kerberos realm."]
            }
            Error::HostVersionMismatch { .. } => {
                vec!["The cloud mixes hosts with different QEMU version families."]
            }
            Error::PathTraversal { .. } | Error::PathNotNormalized { .. } => {
                vec!["The path tries to leave its directory or is written in a non-canonical form."]
            }
            Error::PathOnReplicationHost { .. } => {
                vec!["The export or import path points into storage used by replication hosts."]
            }
            Error::CloudNotSynced { .. } => {
                vec!["Cloud metadata sync is off for this cloud (registration or cloud settings)."]
            }
            Error::UnsupportedQemuVersion { .. } | Error::AgentVersionMismatch { .. } => {
                vec!["The host was not upgraded with the rest of the site."]
            }
            Error::NetworkNotAvailableOnTarget { .. } | Error::NoHostReachesNetworks { .. } => {
                vec!["No host of the target cloud has a bridge for the network's logical network."]
            }
            Error::IpPoolExhausted { .. } => {
                vec!["Every address of the subnet's static pools is in use."]
            }
            Error::NoSuitableStorage { .. } | Error::NoTargetHost { .. } => {
                vec!["The target storage locations are full or not reachable from the target hosts."]
            }
            Error::OperationNotAllowed { .. } => {
                vec!["Another operation is running or the item is not in a state that allows this one."]
            }
            _ => Vec::new(),
        }
    }

    /// What the operator can do about it, where there is something useful to say.
    pub fn recommendation(&self) -> Option<&'static str> {
        match self {
            Error::KerberosRealmNotConfigured => {
                Some("Use Certificate authentication, or configure a Kerberos realm first.")
            }
            Error::HostVersionMismatch { .. } => Some("Create one policy per host version family."),
            Error::PolicyAppConsistentFrequencyNotBelowRetention { .. } => {
                Some("Lower the app-consistent frequency or raise the recovery point retention.")
            }
            Error::PathOnReplicationHost { .. } => {
                Some("Use removable media or a share that is not on a replication host.")
            }
            Error::CloudNotSynced { .. } => {
                Some("Turn on metadata sync for the cloud and wait for the next site report.")
            }
            Error::CloudAlreadyPaired { .. } => Some("Remove the existing cloud pairing first."),
            Error::UnsupportedQemuVersion { .. } => Some("Upgrade QEMU on the host to 7.2 or newer."),
            Error::AgentVersionMismatch { .. } => Some("Upgrade the host agent to the site manager's version."),
            Error::NetworkNotAvailableOnTarget { .. } | Error::NoHostReachesNetworks { .. } => {
                Some("Add a bridge for the logical network on the target hosts, or map to another network.")
            }
            Error::IpPoolExhausted { .. } => Some("Enlarge the static IP pool of the target subnet."),
            Error::NoSuitableStorage { .. } | Error::NoTargetHost { .. } => {
                Some("Free space in the target storage or set a default replica location with room.")
            }
            Error::OperationNotAllowed { .. } => {
                Some("Check the item's allowed operations and retry when it allows this one.")
            }
            Error::PlanTooManyVms { .. } => Some("Split the VMs over several recovery plans."),
            Error::PlanVmNotInPair { .. } => {
                Some("Create one recovery plan per cloud pair; a plan holds the VMs of one pair.")
            }
            Error::AlertWebhookUrlInvalid { .. } => {
                Some("Give a full http(s) URL with a host, e.g. https://hooks.example.com/ferry; put credentials in the webhook's secret.")
            }
            Error::AlertSmtpRelayInvalid { .. } => Some("Give the relay's host name or IP address and port, e.g. smtp.example.com:587."),
            Error::PlanOperationNotAllowed { .. } => {
                Some("Bring every VM of the plan into a state that allows the operation, or remove it from the plan.")
            }
            _ => None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let mut api = ApiError::new(e.code(), e.to_string());
        for cause in e.possible_causes() {
            api = api.cause(cause);
        }
        if let Some(r) = e.recommendation() {
            api = api.recommend(r);
        }
        api
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_3_error_converts_to_api_error_with_code_cause_and_recommendation() {
        let api: ApiError = Error::KerberosRealmNotConfigured.into();
        assert_eq!(api.code, "KerberosRealmNotConfigured");
        assert_eq!(api.message, "Kerberos authentication needs a configured Kerberos realm");
        assert_eq!(api.possible_causes.len(), 1);
        assert_eq!(
            api.recommendation.as_deref(),
            Some("Use Certificate authentication, or configure a Kerberos realm first.")
        );
    }

    #[test]
    fn job_3_operation_not_allowed_message_names_state_and_operation() {
        let e = Error::OperationNotAllowed {
            state: ReplicationState::Paused,
            operation: Operation::PlannedFailover,
            reason: None,
        };
        assert_eq!(e.code(), "OperationNotAllowed");
        assert_eq!(e.to_string(), "Operation plannedFailover is not allowed in state Paused");
    }

    #[test]
    fn fab_5_not_found_code_depends_on_kind() {
        let e = Error::NotFound { kind: ObjectKind::Cloud, id: "GoldCloud9".into() };
        assert_eq!(e.code(), "CloudNotFound");
        assert_eq!(e.to_string(), "Cloud GoldCloud9 was not found");
        let e = Error::NotFound { kind: ObjectKind::StorageClassification, id: "X".into() };
        assert_eq!(e.code(), "StorageClassificationNotFound");
    }
}
