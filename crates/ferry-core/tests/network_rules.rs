//! NET-1..NET-5 rules, on the inventories of the seed's New York / Chicago example.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;

use common::*;
use ferry_core::addressing::IpAssignment;
use ferry_core::network::*;
use ferry_core::{Error, ObjectKind};
use ferry_types::fabric::Vm;
use ferry_types::mapping::{CreateNetworkMapping, SiteObjectRef};

fn vm_of<'a>(inv: &'a ferry_types::fabric::SiteInventory, id: &str) -> &'a Vm {
    inv.vm(id).expect("fixture VM")
}

fn connected(network: SiteObjectRef, subnet: &str) -> ReplicaNic {
    ReplicaNic::Connected { network, subnet: Some(subnet.into()) }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn host_ids(hosts: &[&ferry_types::fabric::Host]) -> Vec<String> {
    hosts.iter().map(|h| h.id.clone()).collect()
}

// ---------------------------------------------------------------- NET-1: mapping validation

#[test]
fn net_1_target_network_must_be_available_to_a_paired_cloud() {
    let (ny, chi, pairs) = (new_york(), chicago(), seed_pairs());
    let req = CreateNetworkMapping { source: r(NY, "VMNetwork2-NewYork"), target: r(CHI, "VMNetwork2-Chicago") };
    // Only the Silver pair: VMNetwork2-Chicago is not available to SilverCloud2.
    assert_eq!(
        validate_network_mapping(&req, &ny, &chi, &pairs[1..], &[]),
        Err(Error::NetworkNotAvailableOnTarget { network: "VMNetwork2-Chicago".into(), cloud: "SilverCloud2".into() })
    );
    // With the Gold pair it is available.
    assert_eq!(validate_network_mapping(&req, &ny, &chi, &pairs, &[]), Ok(()));
}

#[test]
fn net_1_mapping_validation_errors() {
    let (ny, chi, pairs, maps) = (new_york(), chicago(), seed_pairs(), seed_network_mappings());
    let req = CreateNetworkMapping { source: r(NY, "VMNetwork9-NewYork"), target: r(CHI, "VMNetwork1-Chicago") };
    assert_eq!(
        validate_network_mapping(&req, &ny, &chi, &pairs, &[]),
        Err(Error::NotFound { kind: ObjectKind::VmNetwork, id: "VMNetwork9-NewYork".into() })
    );
    let req = CreateNetworkMapping { source: r(NY, "VMNetwork1-NewYork"), target: r(CHI, "VMNetwork2-Chicago") };
    assert_eq!(
        validate_network_mapping(&req, &ny, &chi, &pairs, &maps),
        Err(Error::NetworkAlreadyMapped { network: "VMNetwork1-NewYork".into() })
    );
    // One site manager, two clouds (SGL-1): mapping a network to itself is refused.
    let req = CreateNetworkMapping { source: r(NY, "VMNetwork1-NewYork"), target: r(NY, "VMNetwork1-NewYork") };
    assert_eq!(
        validate_network_mapping(&req, &ny, &ny, &[], &[]),
        Err(Error::NetworkMappingToItself { network: "VMNetwork1-NewYork".into() })
    );
    let req = CreateNetworkMapping { source: r(NY, "VMNetwork1-NewYork"), target: r(NY, "VMNetwork2-NewYork") };
    assert_eq!(validate_network_mapping(&req, &ny, &ny, &[], &[]), Ok(()));
}

// ---------------------------------------------------------------- NET-2: mapping lifecycle

#[test]
fn net_2_mapping_made_connects_existing_replicas() {
    let (ny, chi) = (new_york(), chicago());
    let after = vec![net_map(r(NY, "VMNetwork1-NewYork"), r(CHI, "VMNetwork1-Chicago"))];
    let changes = mapping_change_effects(&ny.vms, NY, CHI, &chi, &[], &after);
    let summary: Vec<(&str, &ReplicaNic, &ReplicaNic)> =
        changes.iter().map(|c| (c.vm.as_str(), &c.before, &c.after)).collect();
    let unmapped = ReplicaNic::Disconnected(DisconnectReason::NetworkNotMapped);
    assert_eq!(
        summary,
        vec![
            ("VM1", &unmapped, &connected(r(CHI, "VMNetwork1-Chicago"), "Subnet1")),
            ("VM4", &unmapped, &connected(r(CHI, "VMNetwork1-Chicago"), "Subnet0")),
        ]
    );
}

#[test]
fn net_2_mapping_changed_reconnects_replicas() {
    let (ny, chi) = (new_york(), chicago());
    let before = vec![net_map(r(NY, "VMNetwork1-NewYork"), r(CHI, "VMNetwork1-Chicago"))];
    let after = vec![net_map(r(NY, "VMNetwork1-NewYork"), r(CHI, "VMNetwork2-Chicago"))];
    let changes = mapping_change_effects(&ny.vms, NY, CHI, &chi, &before, &after);
    let summary: Vec<(&str, ReplicaNic)> = changes.iter().map(|c| (c.vm.as_str(), c.after.clone())).collect();
    assert_eq!(
        summary,
        vec![
            ("VM1", connected(r(CHI, "VMNetwork2-Chicago"), "Subnet2")),
            ("VM4", connected(r(CHI, "VMNetwork2-Chicago"), "Subnet2")),
        ]
    );
}

#[test]
fn net_2_mapping_removed_disconnects_replicas() {
    let (ny, chi) = (new_york(), chicago());
    let before = vec![net_map(r(NY, "VMNetwork1-NewYork"), r(CHI, "VMNetwork1-Chicago"))];
    let changes = mapping_change_effects(&ny.vms, NY, CHI, &chi, &before, &[]);
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c.after == ReplicaNic::Disconnected(DisconnectReason::NetworkNotMapped)));
    assert_eq!(
        changes.iter().map(|c| c.mac.as_str()).collect::<Vec<_>>(),
        vec!["52:54:00:00:00:01", "52:54:00:00:00:04"]
    );
}

#[test]
fn net_2_vm_replicated_later_is_connected_and_disconnected_nic_stays_so() {
    let chi = chicago();
    let later = vm(
        "VM7",
        "ny-gold-host",
        vec![
            nic("52:54:00:00:00:07", Some("VMNetwork1-NewYork"), Some("Subnet1"), None),
            nic("52:54:00:00:00:08", None, None, None),
        ],
        vec![],
    );
    let plans = plan_replica_nics(&later, NY, CHI, &chi, &seed_network_mappings(), &mut HashSet::new()).expect("plan");
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0].connection, connected(r(CHI, "VMNetwork1-Chicago"), "Subnet1"));
    assert_eq!(plans[0].ip, IpAssignment::Dhcp);
    assert_eq!(plans[1].connection, ReplicaNic::Disconnected(DisconnectReason::SourceNicDisconnected));
}

#[test]
fn net_2_mapping_to_missing_target_network_disconnects() {
    let (ny, chi) = (new_york(), chicago());
    let maps = vec![net_map(r(NY, "VMNetwork1-NewYork"), r(CHI, "VMNetwork-Gone"))];
    assert_eq!(
        resolve_replica_nic(NY, &vm_of(&ny, "VM1").nics[0], CHI, &chi, &maps),
        ReplicaNic::Disconnected(DisconnectReason::TargetNetworkMissing)
    );
}

// ---------------------------------------------------------------- NET-3 / NET-4

#[test]
fn net_3_same_subnet_name_else_first_subnet() {
    let (ny, chi, maps) = (new_york(), chicago(), seed_network_mappings());
    // VM1 is on Subnet1; VMNetwork1-Chicago has Subnet0 and Subnet1 → Subnet1.
    assert_eq!(
        resolve_replica_nic(NY, &vm_of(&ny, "VM1").nics[0], CHI, &chi, &maps),
        connected(r(CHI, "VMNetwork1-Chicago"), "Subnet1")
    );
    // VM4 is on Backend; no such subnet in VMNetwork1-Chicago → its first subnet, Subnet0.
    assert_eq!(
        resolve_replica_nic(NY, &vm_of(&ny, "VM4").nics[0], CHI, &chi, &maps),
        connected(r(CHI, "VMNetwork1-Chicago"), "Subnet0")
    );
}

#[test]
fn net_4_replica_keeps_ip_or_gets_first_free() {
    let (ny, chi, maps) = (new_york(), chicago(), seed_network_mappings());
    let mut used = HashSet::new();
    let plans = plan_replica_nics(vm_of(&ny, "VM1"), NY, CHI, &chi, &maps, &mut used).expect("VM1 plan");
    assert_eq!(
        plans[0].ip,
        IpAssignment::Static { address: ip("10.1.1.10"), prefix_len: 24, gateway: None, same_as_source: true }
    );
    assert!(used.contains(&ip("10.1.1.10")));
    // A second VM with the same address gets the next free one of the pool.
    let twin = vm(
        "VM1-twin",
        "ny-gold-host",
        vec![nic("52:54:00:00:00:11", Some("VMNetwork1-NewYork"), Some("Subnet1"), Some("10.1.1.10"))],
        vec![],
    );
    let plans = plan_replica_nics(&twin, NY, CHI, &chi, &maps, &mut used).expect("twin plan");
    assert_eq!(
        plans[0].ip,
        IpAssignment::Static { address: ip("10.1.1.11"), prefix_len: 24, gateway: None, same_as_source: false }
    );
    // VM4's 10.1.9.20 lies outside Subnet0's pool → first free address of Subnet0.
    let plans = plan_replica_nics(vm_of(&ny, "VM4"), NY, CHI, &chi, &maps, &mut used).expect("VM4 plan");
    assert_eq!(
        plans[0].ip,
        IpAssignment::Static { address: ip("10.2.0.10"), prefix_len: 24, gateway: None, same_as_source: false }
    );
}

#[test]
fn net_4_exhausted_target_pool_fails_the_plan() {
    let (ny, chi, maps) = (new_york(), chicago(), seed_network_mappings());
    let mut used: HashSet<IpAddr> = (10..=99).map(|i| ip(&format!("10.1.1.{i}"))).collect();
    assert_eq!(
        plan_replica_nics(vm_of(&ny, "VM1"), NY, CHI, &chi, &maps, &mut used),
        Err(Error::IpPoolExhausted { subnet: "Subnet1".into() })
    );
}

// ---------------------------------------------------------------- NET-5: placement filter

#[test]
fn net_5_replicas_only_on_hosts_reaching_mapped_networks() {
    let chi = chicago();
    let mut maps = seed_network_mappings();
    maps.push(net_map(r(NY, "VMNetwork2-NewYork"), r(CHI, "VMNetwork2-Chicago")));
    let two_nics = vm(
        "VM8",
        "ny-gold-host",
        vec![
            nic("52:54:00:00:00:81", Some("VMNetwork1-NewYork"), None, None),
            nic("52:54:00:00:00:82", Some("VMNetwork2-NewYork"), None, None),
        ],
        vec![],
    );
    let nics: Vec<ReplicaNic> = two_nics.nics.iter().map(|n| resolve_replica_nic(NY, n, CHI, &chi, &maps)).collect();
    let gold2 = chi.cloud("GoldCloud2").expect("GoldCloud2");
    let silver2 = chi.cloud("SilverCloud2").expect("SilverCloud2");
    assert_eq!(host_ids(&placement_candidates(&chi, gold2, &nics).expect("gold hosts")), vec!["chi-gold-host"]);
    assert_eq!(
        placement_candidates(&chi, silver2, &nics).map(|h| host_ids(&h)),
        Err(Error::NoHostReachesNetworks { cloud: "SilverCloud2".into() })
    );
    // Only VMNetwork1: the Silver host qualifies.
    assert_eq!(
        host_ids(&placement_candidates(&chi, silver2, &nics[..1]).expect("silver hosts")),
        vec!["chi-silver-host"]
    );
}

#[test]
fn net_5_disconnected_hosts_are_not_candidates() {
    let mut chi = chicago();
    chi.hosts[1].connected = false;
    let silver2 = chi.cloud("SilverCloud2").expect("SilverCloud2").clone();
    assert_eq!(
        placement_candidates(&chi, &silver2, &[]).map(|h| host_ids(&h)),
        Err(Error::NoHostReachesNetworks { cloud: "SilverCloud2".into() })
    );
}

#[test]
fn rep_7_a_kept_replica_host_is_chosen_while_it_restarts() {
    let mut chi = chicago();
    chi.hosts[1].connected = false;
    let silver2 = chi.cloud("SilverCloud2").expect("SilverCloud2").clone();
    let gold2 = chi.cloud("GoldCloud2").expect("GoldCloud2").clone();
    let keeper = ferry_core::network::kept_replica_host(&chi, &silver2, &[], "chi-silver-host");
    assert_eq!(keeper.map(|h| h.id.as_str()), Some("chi-silver-host"), "disconnected for a moment, still the keeper");
    assert!(ferry_core::network::kept_replica_host(&chi, &gold2, &[], "chi-silver-host").is_none(), "not in the cloud");
    assert!(ferry_core::network::kept_replica_host(&chi, &silver2, &[], "no-such-host").is_none());
}
