//! NET-7 (and NET-6 failback details): the seed's New York / Chicago tables, row by row.

mod common;

use common::*;
use ferry_core::fabric_rules::validate_container_mapping;
use ferry_core::network::*;
use ferry_core::Error;
use ferry_types::fabric::Vm;
use ferry_types::mapping::{CreateContainerMapping, CreateNetworkMapping, NetworkMapping, SiteObjectRef};

fn vm_of<'a>(inv: &'a ferry_types::fabric::SiteInventory, id: &str) -> &'a Vm {
    inv.vm(id).expect("fixture VM")
}

fn connected(network: SiteObjectRef, subnet: &str) -> ReplicaNic {
    ReplicaNic::Connected { network, subnet: Some(subnet.into()) }
}

// ---------------------------------------------------------------- NET-7: the seed's tables

#[test]
fn net_7_network_mapping_table() {
    let maps = seed_network_mappings();
    // (location, VM network, mapped to)
    let rows: [(uuid::Uuid, &str, uuid::Uuid, Option<&str>); 4] = [
        (NY, "VMNetwork1-NewYork", CHI, Some("VMNetwork1-Chicago")),
        (NY, "VMNetwork2-NewYork", CHI, None),
        (CHI, "VMNetwork1-Chicago", NY, Some("VMNetwork1-NewYork")),
        (CHI, "VMNetwork2-Chicago", NY, None),
    ];
    for (site, net, other, expected) in rows {
        let got = mapped_target(&r(site, net), other, &maps).map(|t| t.id.as_str());
        assert_eq!(got, expected, "{net}");
    }
}

#[test]
fn net_7_seed_mappings_are_accepted() {
    let (ny, chi, pairs) = (new_york(), chicago(), seed_pairs());
    let maps = seed_network_mappings();
    let req = CreateNetworkMapping { source: maps[0].source.clone(), target: maps[0].target.clone() };
    assert_eq!(validate_network_mapping(&req, &ny, &chi, &pairs, &[]), Ok(()));
    // The Chicago → New York direction: no cloud pair in that direction, so only existence counts.
    let req = CreateNetworkMapping { source: maps[1].source.clone(), target: maps[1].target.clone() };
    assert_eq!(validate_network_mapping(&req, &chi, &ny, &pairs, &maps[..1]), Ok(()));
}

#[test]
fn net_7_replica_of_vmnetwork1_newyork_vm_joins_vmnetwork1_chicago() {
    let (ny, chi) = (new_york(), chicago());
    let vm1 = vm_of(&ny, "VM1");
    let got = resolve_replica_nic(NY, &vm1.nics[0], CHI, &chi, &seed_network_mappings());
    assert_eq!(got, connected(r(CHI, "VMNetwork1-Chicago"), "Subnet1"));
}

#[test]
fn net_7_replicas_of_vmnetwork2_vms_are_not_connected() {
    let (ny, chi, maps) = (new_york(), chicago(), seed_network_mappings());
    let vm3 = vm_of(&ny, "VM3"); // on VMNetwork2-NewYork
    assert_eq!(
        resolve_replica_nic(NY, &vm3.nics[0], CHI, &chi, &maps),
        ReplicaNic::Disconnected(DisconnectReason::NetworkNotMapped)
    );
    let vm6 = vm_of(&chi, "VM6"); // on VMNetwork2-Chicago, replicating to New York
    assert_eq!(
        resolve_replica_nic(CHI, &vm6.nics[0], NY, &ny, &maps),
        ReplicaNic::Disconnected(DisconnectReason::NetworkNotMapped)
    );
}

#[test]
fn net_7_cloud_protection_table() {
    let (ny, chi) = (new_york(), chicago());
    let gold =
        CreateContainerMapping { source: r(NY, "GoldCloud1"), target: r(CHI, "GoldCloud2"), policy: uuid::Uuid::nil() };
    assert_eq!(validate_container_mapping(&gold, &ny, &chi, None, &[]), Ok(()));
    let pairs = seed_pairs();
    let silver = CreateContainerMapping {
        source: r(NY, "SilverCloud1"),
        target: r(CHI, "SilverCloud2"),
        policy: uuid::Uuid::nil(),
    };
    assert_eq!(validate_container_mapping(&silver, &ny, &chi, None, &pairs[..1]), Ok(()));
    // GoldCloud2 and SilverCloud2 protect; they are not protected themselves ("not applicable").
    for (c2, c1) in [("GoldCloud2", "GoldCloud1"), ("SilverCloud2", "SilverCloud1")] {
        let req = CreateContainerMapping { source: r(CHI, c2), target: r(NY, c1), policy: uuid::Uuid::nil() };
        assert_eq!(
            validate_container_mapping(&req, &chi, &ny, None, &pairs),
            Err(Error::CloudAlreadyPaired { cloud: c2.into() })
        );
    }
}

#[test]
fn net_7_logical_and_vm_network_table() {
    let (ny, chi) = (new_york(), chicago());
    // (site, logical network, associated VM network)
    let rows = [
        (&ny, "LogicalNetwork1-NewYork", "VMNetwork1-NewYork"),
        (&chi, "LogicalNetwork1-Chicago", "VMNetwork1-Chicago"),
        (&chi, "LogicalNetwork2Chicago", "VMNetwork2-Chicago"),
    ];
    for (inv, logical, net) in rows {
        assert_eq!(inv.vm_network(net).map(|n| n.logical_network.as_str()), Some(logical));
    }
    let gold1 = ny.cloud("GoldCloud1").expect("GoldCloud1");
    let names: Vec<&str> = available_target_networks(&ny, gold1).iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, vec!["VMNetwork1-NewYork", "VMNetwork2-NewYork"]);
}

#[test]
fn net_7_target_networks_table() {
    let chi = chicago();
    let pairs = seed_pairs();
    let (gold, silver) = (&pairs[0], &pairs[1]);
    let gold_av = network_availability(gold, &chi).expect("gold availability");
    let silver_av = network_availability(silver, &chi).expect("silver availability");
    // (selection, protected cloud, protecting cloud, available)
    let rows = [
        ("VMNetwork1-Chicago", &silver_av, "SilverCloud1", "SilverCloud2", true),
        ("VMNetwork1-Chicago", &gold_av, "GoldCloud1", "GoldCloud2", true),
        ("VMNetwork2-Chicago", &silver_av, "SilverCloud1", "SilverCloud2", false),
        ("VMNetwork2-Chicago", &gold_av, "GoldCloud1", "GoldCloud2", true),
    ];
    for (net, av, src, tgt, available) in rows {
        assert_eq!((av.source_cloud.as_str(), av.target_cloud.as_str()), (src, tgt));
        assert_eq!(av.target_networks.contains(&r(CHI, net)), available, "{net} for {src} → {tgt}");
    }
    assert_eq!(gold_av.container_mapping, gold.id);
    assert_eq!(silver_av.target_networks, vec![r(CHI, "VMNetwork1-Chicago")]);
}

#[test]
fn net_7_failback_table() {
    // VM1 on VMNetwork1-NewYork; VM2 (its replica) on VMNetwork1-Chicago.
    let original = r(NY, "VMNetwork1-NewYork");
    let replica = r(CHI, "VMNetwork1-Chicago");
    let maps = seed_network_mappings();
    let changed = vec![maps[0].clone(), net_map(r(CHI, "VMNetwork1-Chicago"), r(NY, "VMNetwork2-NewYork"))];
    let rows: [(&ReplicaNicAfterFailover, &[NetworkMapping], FailbackNic); 4] = [
        // VM2's network properties unchanged after failover → VM1 stays on its network.
        (&ReplicaNicAfterFailover::Unchanged, &maps, FailbackNic::StayOnOriginal),
        // VM2 disconnected after failover → VM1 disconnected.
        (&ReplicaNicAfterFailover::Disconnected, &maps, FailbackNic::Disconnected),
        // VM2 moved to VMNetwork2-Chicago, which is not mapped → VM1 disconnected.
        (&ReplicaNicAfterFailover::MovedTo(r(CHI, "VMNetwork2-Chicago")), &maps, FailbackNic::Disconnected),
        // The mapping of VMNetwork1-Chicago changed → VM1 joins the network now mapped to it.
        (&ReplicaNicAfterFailover::Unchanged, &changed, FailbackNic::Connect(r(NY, "VMNetwork2-NewYork"))),
    ];
    for (i, (after, mappings, expected)) in rows.into_iter().enumerate() {
        assert_eq!(failback_nic(&original, &replica, after, mappings), expected, "row {}", i + 1);
    }
}

// ---------------------------------------------------------------- NET-6: failback details

#[test]
fn net_6_unchanged_replica_stays_with_only_forward_mapping() {
    let maps = vec![net_map(r(NY, "VMNetwork1-NewYork"), r(CHI, "VMNetwork1-Chicago"))];
    let got = failback_nic(
        &r(NY, "VMNetwork1-NewYork"),
        &r(CHI, "VMNetwork1-Chicago"),
        &ReplicaNicAfterFailover::Unchanged,
        &maps,
    );
    assert_eq!(got, FailbackNic::StayOnOriginal);
}

#[test]
fn net_6_replica_moved_to_mapped_network_follows_mapping() {
    let mut maps = seed_network_mappings();
    maps.push(net_map(r(CHI, "VMNetwork2-Chicago"), r(NY, "VMNetwork2-NewYork")));
    let got = failback_nic(
        &r(NY, "VMNetwork1-NewYork"),
        &r(CHI, "VMNetwork1-Chicago"),
        &ReplicaNicAfterFailover::MovedTo(r(CHI, "VMNetwork2-Chicago")),
        &maps,
    );
    assert_eq!(got, FailbackNic::Connect(r(NY, "VMNetwork2-NewYork")));
}

#[test]
fn net_6_mapping_removed_disconnects_at_failback() {
    let got = failback_nic(
        &r(NY, "VMNetwork1-NewYork"),
        &r(CHI, "VMNetwork1-Chicago"),
        &ReplicaNicAfterFailover::Unchanged,
        &[],
    );
    assert_eq!(got, FailbackNic::Disconnected);
}
