//! Replication policy validation (POL-1..POL-8, SEC-3).
//!
//! `validate_policy` checks one `PolicySpec` on its own; `check_host_versions` checks the hosts
//! that will use it (POL-1). Both only read their input.

use chrono::{DateTime, Duration, Utc};
use ferry_types::fabric::Host;
use ferry_types::policy::{Authentication, InitialReplication, PolicySpec};

use crate::error::Error;
use crate::paths::{is_same_or_inside, validate_absolute_path};
use crate::version::qemu_family;

/// Longest policy name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Copy frequencies the replication engine offers (POL-3).
pub const COPY_FREQUENCIES_SECS: [u32; 3] = [30, 300, 900];
/// Most additional hourly recovery points (POL-4).
pub const MAX_RETENTION_HOURS: u32 = 24;
/// App-consistent snapshot frequency range in hours (POL-5).
pub const APP_CONSISTENT_HOURS: std::ops::RangeInclusive<u32> = 1..=12;
/// How far ahead initial replication may be scheduled (POL-8).
pub const MAX_SCHEDULE_DAYS: i64 = 7;

/// What the vault knows beyond the spec itself.
#[derive(Debug, Clone, Default)]
pub struct PolicyContext {
    /// A Kerberos realm is configured for the vault's sites (POL-2).
    pub kerberos_realm_configured: bool,
    /// Storage location paths of every replication host (offline paths must stay out of them).
    pub replication_host_paths: Vec<String>,
}

/// Checks every rule of a policy. The first broken rule is returned.
pub fn validate_policy(spec: &PolicySpec, ctx: &PolicyContext, now: DateTime<Utc>) -> Result<(), Error> {
    validate_name(&spec.name)?;
    if spec.host_version.trim().is_empty() {
        return Err(Error::PolicyInvalidHostVersion);
    }
    if spec.authentication == Authentication::Kerberos && !ctx.kerberos_realm_configured {
        return Err(Error::KerberosRealmNotConfigured);
    }
    if spec.port == Some(0) {
        return Err(Error::PolicyInvalidPort);
    }
    if !COPY_FREQUENCIES_SECS.contains(&spec.copy_frequency_secs) {
        return Err(Error::PolicyInvalidCopyFrequency { secs: spec.copy_frequency_secs });
    }
    let retention = spec.recovery_point_retention_hours;
    if retention > MAX_RETENTION_HOURS {
        return Err(Error::PolicyInvalidRetention { hours: retention });
    }
    if let Some(freq) = spec.app_consistent_frequency_hours {
        if !APP_CONSISTENT_HOURS.contains(&freq) {
            return Err(Error::PolicyInvalidAppConsistentFrequency { hours: freq });
        }
        if freq >= retention {
            return Err(Error::PolicyAppConsistentFrequencyNotBelowRetention {
                frequency_hours: freq,
                retention_hours: retention,
            });
        }
    }
    validate_initial_replication(&spec.initial_replication, ctx, now)
}

fn validate_name(name: &str) -> Result<(), Error> {
    let reason = if name.trim().is_empty() {
        "it is empty".to_string()
    } else if name.chars().count() > MAX_NAME_CHARS {
        format!("it is longer than {MAX_NAME_CHARS} characters")
    } else if name.chars().any(char::is_control) {
        "it contains a control character".to_string()
    } else {
        return Ok(());
    };
    Err(Error::PolicyInvalidName { reason })
}

fn validate_initial_replication(ir: &InitialReplication, ctx: &PolicyContext, now: DateTime<Utc>) -> Result<(), Error> {
    match ir {
        InitialReplication::OverNetworkNow => Ok(()),
        InitialReplication::OverNetworkScheduled { start_at } => {
            if *start_at <= now {
                return Err(Error::PolicyScheduleInPast { start_at: start_at.to_rfc3339() });
            }
            if *start_at > now + Duration::days(MAX_SCHEDULE_DAYS) {
                return Err(Error::PolicyScheduleTooFar { start_at: start_at.to_rfc3339() });
            }
            Ok(())
        }
        InitialReplication::Offline { export_path, import_path } => {
            validate_offline_path("export_path", export_path, ctx)?;
            validate_offline_path("import_path", import_path, ctx)
        }
    }
}

fn validate_offline_path(field: &str, path: &str, ctx: &PolicyContext) -> Result<(), Error> {
    validate_absolute_path(field, path)?;
    if let Some(location) = ctx.replication_host_paths.iter().find(|loc| is_same_or_inside(path, loc)) {
        return Err(Error::PathOnReplicationHost {
            field: field.into(),
            path: path.into(),
            location: location.clone(),
        });
    }
    Ok(())
}

/// POL-1: every host under the policy must report the policy's host version family.
/// `host_version` `qemu-7.2` matches hosts reporting `7.2`, `7.2.9`, ...
pub fn check_host_versions<'a>(policy: &PolicySpec, hosts: impl IntoIterator<Item = &'a Host>) -> Result<(), Error> {
    let expected = qemu_family(&policy.host_version);
    for host in hosts {
        let family = qemu_family(&host.qemu_version);
        if expected.is_none() || family != expected {
            return Err(Error::HostVersionMismatch {
                host: host.name.clone(),
                version: if host.qemu_version.is_empty() { "(none)".into() } else { host.qemu_version.clone() },
                expected: policy.host_version.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).single().unwrap_or_default()
    }

    fn spec() -> PolicySpec {
        PolicySpec {
            name: "gold-policy".into(),
            host_version: "qemu-7.2".into(),
            authentication: Authentication::Certificate,
            port: None,
            copy_frequency_secs: 300,
            recovery_point_retention_hours: 4,
            app_consistent_frequency_hours: Some(2),
            compression: true,
            delete_replica_on_disable: false,
            initial_replication: InitialReplication::OverNetworkNow,
        }
    }

    fn ctx() -> PolicyContext {
        PolicyContext { kerberos_realm_configured: false, replication_host_paths: vec!["/var/lib/ferry".into()] }
    }

    fn code_of(s: &PolicySpec) -> &'static str {
        match validate_policy(s, &ctx(), now()) {
            Ok(()) => "Ok",
            Err(e) => e.code(),
        }
    }

    fn host(name: &str, qemu: &str) -> Host {
        Host {
            id: name.into(),
            name: name.into(),
            host_group: "hg".into(),
            address: String::new(),
            agent_version: "0.1.0".into(),
            qemu_version: qemu.into(),
            logical_networks: vec![],
            storage_locations: vec![],
            connected: true,
            replication_address: String::new(),
            replication_addresses: Vec::new(),
        }
    }

    #[test]
    fn pol_1_valid_policy_passes() {
        assert_eq!(code_of(&spec()), "Ok");
    }

    #[test]
    fn pol_1_name_rules() {
        let mut s = spec();
        s.name = "  ".into();
        assert_eq!(code_of(&s), "PolicyInvalidName");
        s.name = "x".repeat(128);
        assert_eq!(code_of(&s), "Ok");
        s.name = "x".repeat(129);
        assert_eq!(code_of(&s), "PolicyInvalidName");
        s.name = "bad\nname".into();
        assert_eq!(code_of(&s), "PolicyInvalidName");
        s.name = "정책-골드".into();
        assert_eq!(code_of(&s), "Ok");
    }

    #[test]
    fn pol_1_host_version_required() {
        let mut s = spec();
        s.host_version = "".into();
        assert_eq!(code_of(&s), "PolicyInvalidHostVersion");
    }

    #[test]
    fn pol_1_all_hosts_must_report_policy_host_version() {
        let s = spec();
        let hosts = [host("ny-host1", "7.2.9"), host("ny-host2", "7.2")];
        assert_eq!(check_host_versions(&s, hosts.iter()), Ok(()));
        let hosts = [host("ny-host1", "7.2.9"), host("ny-host3", "8.0.1")];
        let err = check_host_versions(&s, hosts.iter()).err();
        assert_eq!(
            err,
            Some(Error::HostVersionMismatch {
                host: "ny-host3".into(),
                version: "8.0.1".into(),
                expected: "qemu-7.2".into()
            })
        );
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("Host ny-host3 reports version 8.0.1, but the policy needs qemu-7.2")
        );
    }

    #[test]
    fn pol_1_host_without_version_is_a_mismatch() {
        let hosts = [host("chi-host1", "")];
        let err = check_host_versions(&spec(), hosts.iter()).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("Host chi-host1 reports version (none), but the policy needs qemu-7.2"));
    }

    #[test]
    fn pol_2_kerberos_needs_realm() {
        let mut s = spec();
        s.authentication = Authentication::Kerberos;
        assert_eq!(code_of(&s), "KerberosRealmNotConfigured");
        let with_realm = PolicyContext { kerberos_realm_configured: true, ..ctx() };
        assert_eq!(validate_policy(&s, &with_realm, now()), Ok(()));
        assert_eq!(s.effective_port(), 8083);
    }

    #[test]
    fn pol_2_port_zero_rejected() {
        let mut s = spec();
        s.port = Some(0);
        assert_eq!(code_of(&s), "PolicyInvalidPort");
        s.port = Some(1);
        assert_eq!(code_of(&s), "Ok");
        s.port = Some(65535);
        assert_eq!(code_of(&s), "Ok");
    }

    #[test]
    fn pol_3_copy_frequency_values() {
        let mut s = spec();
        for ok in [30, 300, 900] {
            s.copy_frequency_secs = ok;
            assert_eq!(code_of(&s), "Ok", "{ok}");
        }
        for bad in [0, 29, 60, 301, 3600] {
            s.copy_frequency_secs = bad;
            assert_eq!(code_of(&s), "PolicyInvalidCopyFrequency", "{bad}");
        }
    }

    #[test]
    fn pol_4_retention_range() {
        let mut s = spec();
        s.app_consistent_frequency_hours = None;
        s.recovery_point_retention_hours = 0;
        assert_eq!(code_of(&s), "Ok");
        s.recovery_point_retention_hours = 24;
        assert_eq!(code_of(&s), "Ok");
        s.recovery_point_retention_hours = 25;
        assert_eq!(code_of(&s), "PolicyInvalidRetention");
    }

    #[test]
    fn pol_5_app_consistent_frequency_range() {
        let mut s = spec();
        s.recovery_point_retention_hours = 24;
        s.app_consistent_frequency_hours = Some(0);
        assert_eq!(code_of(&s), "PolicyInvalidAppConsistentFrequency");
        s.app_consistent_frequency_hours = Some(13);
        assert_eq!(code_of(&s), "PolicyInvalidAppConsistentFrequency");
        s.app_consistent_frequency_hours = Some(12);
        assert_eq!(code_of(&s), "Ok");
        s.app_consistent_frequency_hours = Some(1);
        assert_eq!(code_of(&s), "Ok");
    }

    #[test]
    fn pol_5_app_consistent_frequency_below_retained_points() {
        let mut s = spec();
        s.recovery_point_retention_hours = 4;
        s.app_consistent_frequency_hours = Some(4);
        assert_eq!(
            validate_policy(&s, &ctx(), now()),
            Err(Error::PolicyAppConsistentFrequencyNotBelowRetention { frequency_hours: 4, retention_hours: 4 })
        );
        s.app_consistent_frequency_hours = Some(3);
        assert_eq!(code_of(&s), "Ok");
        s.recovery_point_retention_hours = 0;
        s.app_consistent_frequency_hours = Some(1);
        assert_eq!(code_of(&s), "PolicyAppConsistentFrequencyNotBelowRetention");
        s.app_consistent_frequency_hours = None;
        assert_eq!(code_of(&s), "Ok");
    }

    #[test]
    fn pol_8_schedule_in_future_within_7_days() {
        let mut s = spec();
        s.initial_replication = InitialReplication::OverNetworkScheduled { start_at: now() };
        assert_eq!(code_of(&s), "PolicyScheduleInPast");
        s.initial_replication = InitialReplication::OverNetworkScheduled { start_at: now() - Duration::hours(1) };
        assert_eq!(code_of(&s), "PolicyScheduleInPast");
        s.initial_replication = InitialReplication::OverNetworkScheduled { start_at: now() + Duration::hours(2) };
        assert_eq!(code_of(&s), "Ok");
        s.initial_replication = InitialReplication::OverNetworkScheduled { start_at: now() + Duration::days(7) };
        assert_eq!(code_of(&s), "Ok");
        s.initial_replication =
            InitialReplication::OverNetworkScheduled { start_at: now() + Duration::days(7) + Duration::seconds(1) };
        assert_eq!(code_of(&s), "PolicyScheduleTooFar");
    }

    #[test]
    fn pol_8_offline_paths_valid() {
        let mut s = spec();
        s.initial_replication =
            InitialReplication::Offline { export_path: "/mnt/usb/export".into(), import_path: "/srv/import".into() };
        assert_eq!(code_of(&s), "Ok");
    }

    #[test]
    fn pol_8_offline_path_not_on_replication_host() {
        let mut s = spec();
        s.initial_replication =
            InitialReplication::Offline { export_path: "/var/lib/ferry/x".into(), import_path: "/srv/import".into() };
        assert_eq!(
            validate_policy(&s, &ctx(), now()),
            Err(Error::PathOnReplicationHost {
                field: "export_path".into(),
                path: "/var/lib/ferry/x".into(),
                location: "/var/lib/ferry".into()
            })
        );
        s.initial_replication =
            InitialReplication::Offline { export_path: "/mnt/usb".into(), import_path: "/var/lib/ferry".into() };
        assert_eq!(code_of(&s), "PathOnReplicationHost");
        s.initial_replication =
            InitialReplication::Offline { export_path: "/mnt/usb".into(), import_path: "/var/lib/ferry-import".into() };
        assert_eq!(code_of(&s), "Ok");
    }

    #[test]
    fn sec_3_offline_path_traversal_rejected() {
        let mut s = spec();
        s.initial_replication = InitialReplication::Offline {
            export_path: "/mnt/usb/../../var/lib/ferry".into(),
            import_path: "/srv/import".into(),
        };
        assert_eq!(code_of(&s), "PathTraversal");
        s.initial_replication =
            InitialReplication::Offline { export_path: "/mnt/usb".into(), import_path: "relative/import".into() };
        assert_eq!(code_of(&s), "PathNotAbsolute");
        s.initial_replication =
            InitialReplication::Offline { export_path: "/mnt/usb".into(), import_path: "/srv/im\0port".into() };
        assert_eq!(code_of(&s), "PathContainsNul");
        s.initial_replication =
            InitialReplication::Offline { export_path: "/var/lib//ferry".into(), import_path: "/srv/import".into() };
        assert_eq!(code_of(&s), "PathNotNormalized");
    }
}
