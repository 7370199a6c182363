//! Fabric prerequisites (FAB-5), the protection goal (FAB-6) and cloud pairing (FAB-7).
//!
//! A pairing (container mapping) joins a source cloud to a target cloud. It is accepted only when
//! both clouds are synced, each has a host group and hosts of a supported version, the source
//! has a VM to protect, neither cloud is already paired, and the protection goal agrees with the
//! sites chosen (one site manager: two different clouds of it).

use ferry_types::fabric::{Cloud, Host, SiteInventory};
use ferry_types::mapping::{ContainerMapping, CreateContainerMapping, SiteObjectRef};
use ferry_types::vault::{Hypervisor, ProtectionGoal, ReplicateTo};

use crate::error::{Error, ObjectKind};
use crate::version::{agent_series, qemu_supported};

/// FAB-5: a cloud needs at least one host group.
pub fn check_cloud_has_host_groups(cloud: &Cloud) -> Result<(), Error> {
    if cloud.host_groups.is_empty() {
        return Err(Error::CloudHasNoHostGroups { cloud: cloud.name.clone() });
    }
    Ok(())
}

/// FAB-5: a host used by a pair must be in a host group of the source or the target cloud.
pub fn check_host_in_pair(
    host_id: &str,
    source_inv: &SiteInventory,
    source_cloud: &Cloud,
    target_inv: &SiteInventory,
    target_cloud: &Cloud,
) -> Result<(), Error> {
    let in_cloud = |inv: &SiteInventory, cloud: &Cloud| {
        inv.host(host_id).is_some_and(|h| cloud.host_groups.contains(&h.host_group))
    };
    if in_cloud(source_inv, source_cloud) || in_cloud(target_inv, target_cloud) {
        return Ok(());
    }
    let name = source_inv.host(host_id).or_else(|| target_inv.host(host_id)).map_or(host_id, |h| h.name.as_str());
    Err(Error::HostNotInPairedClouds { host: name.to_string() })
}

/// FAB-5: the host runs a supported QEMU (7.2 or newer) and an agent of the site's series
/// (`major.minor` of `expected_agent_version`; agents of one series speak one protocol).
pub fn check_host_software(host: &Host, expected_agent_version: &str) -> Result<(), Error> {
    check_host_joined(host)?;
    let series = agent_series(&host.agent_version);
    if series.is_none() || series != agent_series(expected_agent_version) {
        return Err(Error::AgentVersionMismatch {
            host: host.name.clone(),
            version: host.agent_version.clone(),
            expected: expected_agent_version.to_string(),
        });
    }
    check_host_qemu(host)
}

/// A host whose agent never reported (not joined) has no versions at all; say so rather than
/// calling its empty QEMU version unsupported.
fn check_host_joined(host: &Host) -> Result<(), Error> {
    if host.agent_version.trim().is_empty() {
        return Err(Error::HostAgentNotJoined { host: host.name.clone() });
    }
    Ok(())
}

fn check_host_qemu(host: &Host) -> Result<(), Error> {
    if !qemu_supported(&host.qemu_version) {
        return Err(Error::UnsupportedQemuVersion { host: host.name.clone(), version: host.qemu_version.clone() });
    }
    Ok(())
}

/// FAB-5: a host has at least one VM to protect.
pub fn check_host_has_vms(inv: &SiteInventory, host: &Host) -> Result<(), Error> {
    if inv.vms.iter().any(|v| v.host == host.id) {
        return Ok(());
    }
    Err(Error::HostHasNoVms { host: host.name.clone() })
}

/// FAB-6: the protection goal of this scenario.
pub fn validate_protection_goal(goal: &ProtectionGoal) -> Result<(), Error> {
    // The enums have one value each today; matching keeps this check honest when they grow.
    let ReplicateTo::RecoverySite = goal.replicate_to;
    let Hypervisor::Kvm = goal.hypervisor;
    if !goal.managed_by_site_manager {
        return Err(Error::ProtectionGoalInvalid { reason: "VMs must be managed by a Ferry site manager".into() });
    }
    Ok(())
}

/// FAB-7: clouds offered as targets (and sources) are the synced ones.
pub fn synced_clouds(inv: &SiteInventory) -> Vec<&Cloud> {
    inv.clouds.iter().filter(|c| c.sync_enabled).collect()
}

/// FAB-5/6/7: everything a new cloud pairing must satisfy. Same fabric on both sides is a
/// single-site-manager deployment (SGL-1).
pub fn validate_container_mapping(
    req: &CreateContainerMapping,
    source_inv: &SiteInventory,
    target_inv: &SiteInventory,
    goal: Option<&ProtectionGoal>,
    existing: &[ContainerMapping],
) -> Result<(), Error> {
    let same_fabric = req.source.fabric == req.target.fabric;
    if let Some(goal) = goal {
        validate_protection_goal(goal)?;
        if !goal.second_site_manager && !same_fabric {
            return Err(Error::ProtectionGoalRequiresSameSite);
        }
    }
    if same_fabric && source_inv.clouds.len() < 2 {
        return Err(Error::SingleSiteNeedsTwoClouds);
    }
    let source = find_cloud(source_inv, &req.source.id)?;
    let target = find_cloud(target_inv, &req.target.id)?;
    if same_fabric && req.source.id == req.target.id {
        return Err(Error::SameSourceAndTargetCloud { cloud: source.name.clone() });
    }
    for cloud in [source, target] {
        if !cloud.sync_enabled {
            return Err(Error::CloudNotSynced { cloud: cloud.name.clone() });
        }
        check_cloud_has_host_groups(cloud)?;
    }
    for (r, cloud) in [(&req.source, source), (&req.target, target)] {
        if existing.iter().any(|m| pairs_cloud(m, r)) {
            return Err(Error::CloudAlreadyPaired { cloud: cloud.name.clone() });
        }
    }
    if target_inv.hosts_of_cloud(target).next().is_none() {
        return Err(Error::CloudHasNoHosts { cloud: target.name.clone() });
    }
    // The agent series needs the sites' versions: the caller checks it (`check_host_software`).
    for host in source_inv.hosts_of_cloud(source).chain(target_inv.hosts_of_cloud(target)) {
        check_host_joined(host)?;
        check_host_qemu(host)?;
    }
    let source_has_vm = source_inv.hosts_of_cloud(source).any(|h| source_inv.vms.iter().any(|v| v.host == h.id));
    if !source_has_vm {
        return Err(Error::NoVmsToProtect { cloud: source.name.clone() });
    }
    Ok(())
}

fn pairs_cloud(m: &ContainerMapping, cloud: &SiteObjectRef) -> bool {
    m.source == *cloud || m.target == *cloud
}

pub(crate) fn find_cloud<'a>(inv: &'a SiteInventory, id: &str) -> Result<&'a Cloud, Error> {
    inv.cloud(id).ok_or_else(|| Error::NotFound { kind: ObjectKind::Cloud, id: id.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ferry_types::fabric::{HostGroup, Vm};
    use uuid::Uuid;

    const NY: Uuid = Uuid::from_u128(1);
    const CHI: Uuid = Uuid::from_u128(2);

    fn host(id: &str, hg: &str) -> Host {
        Host {
            id: id.into(),
            name: id.into(),
            host_group: hg.into(),
            address: String::new(),
            agent_version: "0.1.0".into(),
            qemu_version: "7.2.9".into(),
            logical_networks: vec![],
            storage_locations: vec![],
            connected: true,
            replication_address: String::new(),
            replication_addresses: Vec::new(),
        }
    }

    fn cloud(id: &str, hgs: &[&str]) -> Cloud {
        Cloud {
            id: id.into(),
            name: id.into(),
            host_groups: hgs.iter().map(|s| s.to_string()).collect(),
            sync_enabled: true,
        }
    }

    fn vm(id: &str, host: &str) -> Vm {
        Vm {
            id: id.into(),
            name: id.into(),
            host: host.into(),
            cloud: None,
            power_state: Default::default(),
            disks: vec![],
            nics: vec![],
            guest_agent: false,
        }
    }

    fn hg(id: &str) -> HostGroup {
        HostGroup { id: id.into(), name: id.into(), storage_classifications: vec![] }
    }

    fn new_york() -> SiteInventory {
        SiteInventory {
            clouds: vec![cloud("GoldCloud1", &["HG-NY-Gold"]), cloud("SilverCloud1", &["HG-NY-Silver"])],
            host_groups: vec![hg("HG-NY-Gold"), hg("HG-NY-Silver")],
            hosts: vec![host("ny-host1", "HG-NY-Gold"), host("ny-host2", "HG-NY-Silver")],
            vms: vec![vm("VM1", "ny-host1"), vm("VM3", "ny-host2")],
            ..Default::default()
        }
    }

    fn chicago() -> SiteInventory {
        SiteInventory {
            clouds: vec![cloud("GoldCloud2", &["HG-CHI-Gold"]), cloud("SilverCloud2", &["HG-CHI-Silver"])],
            host_groups: vec![hg("HG-CHI-Gold"), hg("HG-CHI-Silver")],
            hosts: vec![host("chi-host1", "HG-CHI-Gold"), host("chi-host2", "HG-CHI-Silver")],
            ..Default::default()
        }
    }

    fn r(fabric: Uuid, id: &str) -> SiteObjectRef {
        SiteObjectRef { fabric, id: id.into() }
    }

    fn req(src: SiteObjectRef, tgt: SiteObjectRef) -> CreateContainerMapping {
        CreateContainerMapping { source: src, target: tgt, policy: Uuid::from_u128(9) }
    }

    fn existing(src: SiteObjectRef, tgt: SiteObjectRef) -> ContainerMapping {
        ContainerMapping {
            id: Uuid::from_u128(7),
            source: src,
            target: tgt,
            policy: Uuid::from_u128(9),
            created_at: Utc::now(),
        }
    }

    fn goal(second: bool) -> ProtectionGoal {
        ProtectionGoal {
            replicate_to: ReplicateTo::RecoverySite,
            hypervisor: Hypervisor::Kvm,
            managed_by_site_manager: true,
            second_site_manager: second,
        }
    }

    fn pair_code(
        req: &CreateContainerMapping,
        s: &SiteInventory,
        t: &SiteInventory,
        g: Option<&ProtectionGoal>,
        ex: &[ContainerMapping],
    ) -> &'static str {
        match validate_container_mapping(req, s, t, g, ex) {
            Ok(()) => "Ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn fab_7_gold_cloud1_pairs_with_gold_cloud2() {
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(validate_container_mapping(&rq, &new_york(), &chicago(), Some(&goal(true)), &[]), Ok(()));
    }

    #[test]
    fn fab_7_target_cloud_must_be_synced() {
        let mut chi = chicago();
        chi.clouds[0].sync_enabled = false;
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &new_york(), &chi, None, &[]),
            Err(Error::CloudNotSynced { cloud: "GoldCloud2".into() })
        );
        let mut ny = new_york();
        ny.clouds[0].sync_enabled = false;
        assert_eq!(pair_code(&rq, &ny, &chicago(), None, &[]), "CloudNotSynced");
    }

    #[test]
    fn fab_7_only_synced_clouds_are_listed() {
        let mut chi = chicago();
        chi.clouds[1].sync_enabled = false;
        let names: Vec<&str> = synced_clouds(&chi).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["GoldCloud2"]);
    }

    #[test]
    fn fab_7_unknown_cloud_not_found() {
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "BronzeCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &new_york(), &chicago(), None, &[]),
            Err(Error::NotFound { kind: ObjectKind::Cloud, id: "BronzeCloud2".into() })
        );
    }

    #[test]
    fn fab_5_cloud_needs_host_group() {
        let mut chi = chicago();
        chi.clouds[0].host_groups.clear();
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &new_york(), &chi, None, &[]),
            Err(Error::CloudHasNoHostGroups { cloud: "GoldCloud2".into() })
        );
        assert_eq!(check_cloud_has_host_groups(&cloud("c", &[])).map_err(|e| e.code()), Err("CloudHasNoHostGroups"));
    }

    #[test]
    fn fab_5_cloud_in_at_most_one_pair() {
        let ex = [existing(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"))];
        // The source is already paired.
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "SilverCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &new_york(), &chicago(), None, &ex),
            Err(Error::CloudAlreadyPaired { cloud: "GoldCloud1".into() })
        );
        // The target is already paired.
        let rq = req(r(NY, "SilverCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &new_york(), &chicago(), None, &ex),
            Err(Error::CloudAlreadyPaired { cloud: "GoldCloud2".into() })
        );
        // A different pair is fine.
        let rq = req(r(NY, "SilverCloud1"), r(CHI, "SilverCloud2"));
        assert_eq!(pair_code(&rq, &new_york(), &chicago(), None, &ex), "Ok");
    }

    #[test]
    fn fab_5_single_site_needs_two_clouds() {
        let mut ny = new_york();
        ny.clouds.truncate(1);
        let rq = req(r(NY, "GoldCloud1"), r(NY, "GoldCloud1"));
        assert_eq!(pair_code(&rq, &ny, &ny, Some(&goal(false)), &[]), "SingleSiteNeedsTwoClouds");
        let ny = new_york();
        assert_eq!(
            validate_container_mapping(&rq, &ny, &ny, Some(&goal(false)), &[]),
            Err(Error::SameSourceAndTargetCloud { cloud: "GoldCloud1".into() })
        );
        let rq = req(r(NY, "GoldCloud1"), r(NY, "SilverCloud1"));
        assert_eq!(pair_code(&rq, &ny, &ny, Some(&goal(false)), &[]), "Ok");
    }

    #[test]
    fn fab_5_unsupported_qemu_on_target_host() {
        let mut chi = chicago();
        chi.hosts[0].qemu_version = "6.2.0".into();
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &new_york(), &chi, None, &[]),
            Err(Error::UnsupportedQemuVersion { host: "chi-host1".into(), version: "6.2.0".into() })
        );
    }

    #[test]
    fn fab_5_host_without_agent_is_not_joined() {
        let mut chi = chicago();
        chi.hosts[0].agent_version.clear();
        chi.hosts[0].qemu_version.clear();
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &new_york(), &chi, None, &[]),
            Err(Error::HostAgentNotJoined { host: "chi-host1".into() })
        );
    }

    #[test]
    fn fab_5_host_software_check() {
        let h = host("ny-host1", "HG");
        assert_eq!(check_host_software(&h, "0.1.7"), Ok(()));
        assert_eq!(
            check_host_software(&h, "0.2.0"),
            Err(Error::AgentVersionMismatch {
                host: "ny-host1".into(),
                version: "0.1.0".into(),
                expected: "0.2.0".into()
            })
        );
        let mut h2 = h.clone();
        h2.agent_version.clear();
        assert_eq!(check_host_software(&h2, "0.1.0").map_err(|e| e.code()), Err("HostAgentNotJoined"));
        let mut h3 = h;
        h3.qemu_version = "7.1.0".into();
        assert_eq!(check_host_software(&h3, "0.1.0").map_err(|e| e.code()), Err("UnsupportedQemuVersion"));
    }

    #[test]
    fn fab_5_source_cloud_needs_a_vm() {
        let mut ny = new_york();
        ny.vms.retain(|v| v.host != "ny-host1");
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &ny, &chicago(), None, &[]),
            Err(Error::NoVmsToProtect { cloud: "GoldCloud1".into() })
        );
        let ny = new_york();
        assert_eq!(check_host_has_vms(&ny, &ny.hosts[0]), Ok(()));
        let lonely = host("ny-host9", "HG-NY-Gold");
        assert_eq!(check_host_has_vms(&ny, &lonely), Err(Error::HostHasNoVms { host: "ny-host9".into() }));
    }

    #[test]
    fn fab_5_target_cloud_needs_a_host() {
        let mut chi = chicago();
        chi.hosts.retain(|h| h.host_group != "HG-CHI-Gold");
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(pair_code(&rq, &new_york(), &chi, None, &[]), "CloudHasNoHosts");
    }

    #[test]
    fn fab_5_host_must_be_in_source_or_target_cloud() {
        let (ny, chi) = (new_york(), chicago());
        let (gold1, gold2) = (&ny.clouds[0], &chi.clouds[0]);
        assert_eq!(check_host_in_pair("ny-host1", &ny, gold1, &chi, gold2), Ok(()));
        assert_eq!(check_host_in_pair("chi-host1", &ny, gold1, &chi, gold2), Ok(()));
        assert_eq!(
            check_host_in_pair("ny-host2", &ny, gold1, &chi, gold2),
            Err(Error::HostNotInPairedClouds { host: "ny-host2".into() })
        );
        assert_eq!(
            check_host_in_pair("nowhere", &ny, gold1, &chi, gold2),
            Err(Error::HostNotInPairedClouds { host: "nowhere".into() })
        );
    }

    #[test]
    fn fab_6_goal_needs_site_manager() {
        let mut g = goal(true);
        assert_eq!(validate_protection_goal(&g), Ok(()));
        g.managed_by_site_manager = false;
        assert_eq!(validate_protection_goal(&g).map_err(|e| e.code()), Err("ProtectionGoalInvalid"));
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(pair_code(&rq, &new_york(), &chicago(), Some(&g), &[]), "ProtectionGoalInvalid");
    }

    #[test]
    fn fab_6_no_second_site_manager_means_one_site() {
        let rq = req(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2"));
        assert_eq!(
            validate_container_mapping(&rq, &new_york(), &chicago(), Some(&goal(false)), &[]),
            Err(Error::ProtectionGoalRequiresSameSite)
        );
    }
}
