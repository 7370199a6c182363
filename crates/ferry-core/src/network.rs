//! Network mapping rules (NET-1, NET-2, NET-5, NET-6).
//!
//! A mapping says "replicas of VMs on source VM network S join target VM network T". A VM network
//! lives on a logical network; a host reaches a logical network when it has a bridge for it
//! (`Host::logical_networks`), and a logical network is associated with host groups
//! (`LogicalNetwork::host_groups`). From that:
//! - NET-1: a target VM network is *available* to a target cloud when its logical network is
//!   associated with a host group of the cloud or reached by a host of the cloud;
//! - NET-2: a replica NIC is connected to the mapped target network (subnet by NET-3, address by
//!   NET-4, see `addressing`), and disconnected when its source network is not mapped;
//! - NET-5: replicas are placed only on target hosts that reach every network they join;
//! - NET-6: at failback, the original VM's NIC follows the replica NIC's network back through
//!   the mappings (see `failback_nic`).

use std::collections::HashSet;
use std::net::IpAddr;

use ferry_types::fabric::{Cloud, Host, SiteInventory, Vm, VmNetwork, VmNic};
use ferry_types::mapping::{
    ContainerMapping, CreateNetworkMapping, NetworkAvailability, NetworkMapping, SiteObjectRef,
};
use uuid::Uuid;

use crate::addressing::{choose_ip, choose_subnet, IpAssignment};
use crate::error::{Error, ObjectKind};
use crate::fabric_rules::find_cloud;

/// NET-1: whether `network` can be used by replicas in `cloud`.
pub fn network_available_to_cloud(inv: &SiteInventory, cloud: &Cloud, network: &VmNetwork) -> bool {
    let ln = &network.logical_network;
    let by_group =
        inv.logical_networks.iter().any(|l| &l.id == ln && l.host_groups.iter().any(|g| cloud.host_groups.contains(g)));
    by_group || inv.hosts_of_cloud(cloud).any(|h| h.logical_networks.contains(ln))
}

/// NET-1: the target VM networks available to a target cloud, in inventory order.
pub fn available_target_networks<'a>(inv: &'a SiteInventory, cloud: &Cloud) -> Vec<&'a VmNetwork> {
    inv.vm_networks.iter().filter(|n| network_available_to_cloud(inv, cloud, n)).collect()
}

/// NET-1: the availability list of one protected cloud pair.
pub fn network_availability(pair: &ContainerMapping, target_inv: &SiteInventory) -> Result<NetworkAvailability, Error> {
    let cloud = find_cloud(target_inv, &pair.target.id)?;
    Ok(NetworkAvailability {
        container_mapping: pair.id,
        source_cloud: pair.source.id.clone(),
        target_cloud: pair.target.id.clone(),
        target_networks: available_target_networks(target_inv, cloud)
            .into_iter()
            .map(|n| SiteObjectRef { fabric: pair.target.fabric, id: n.id.clone() })
            .collect(),
    })
}

/// NET-1: checks a new network mapping. Both networks must exist; a source network is mapped at
/// most once per target site; when cloud pairs exist between the two sites, the target network
/// must be available to the target cloud of at least one of them.
pub fn validate_network_mapping(
    req: &CreateNetworkMapping,
    source_inv: &SiteInventory,
    target_inv: &SiteInventory,
    pairs: &[ContainerMapping],
    existing: &[NetworkMapping],
) -> Result<(), Error> {
    let source = find_network(source_inv, &req.source.id)?;
    let target = find_network(target_inv, &req.target.id)?;
    if req.source == req.target {
        return Err(Error::NetworkMappingToItself { network: source.name.clone() });
    }
    if existing.iter().any(|m| m.source == req.source && m.target.fabric == req.target.fabric) {
        return Err(Error::NetworkAlreadyMapped { network: source.name.clone() });
    }
    let target_clouds: Vec<&Cloud> = pairs
        .iter()
        .filter(|p| p.source.fabric == req.source.fabric && p.target.fabric == req.target.fabric)
        .filter_map(|p| target_inv.cloud(&p.target.id))
        .collect();
    if !target_clouds.is_empty() && !target_clouds.iter().any(|c| network_available_to_cloud(target_inv, c, target)) {
        let names: Vec<&str> = target_clouds.iter().map(|c| c.name.as_str()).collect();
        return Err(Error::NetworkNotAvailableOnTarget { network: target.name.clone(), cloud: names.join(", ") });
    }
    Ok(())
}

fn find_network<'a>(inv: &'a SiteInventory, id: &str) -> Result<&'a VmNetwork, Error> {
    inv.vm_network(id).ok_or_else(|| Error::NotFound { kind: ObjectKind::VmNetwork, id: id.to_string() })
}

/// The target network `source` is mapped to on `target_fabric`, if any.
pub fn mapped_target<'a>(
    source: &SiteObjectRef,
    target_fabric: Uuid,
    mappings: &'a [NetworkMapping],
) -> Option<&'a SiteObjectRef> {
    mappings.iter().find(|m| m.source == *source && m.target.fabric == target_fabric).map(|m| &m.target)
}

/// Where a replica NIC is connected (NET-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaNic {
    Connected { network: SiteObjectRef, subnet: Option<String> },
    Disconnected(DisconnectReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The source NIC is not connected to a VM network.
    SourceNicDisconnected,
    /// The source VM network has no mapping to the target site.
    NetworkNotMapped,
    /// The mapping points at a target network the target site no longer reports.
    TargetNetworkMissing,
}

/// NET-2 + NET-3: the connection of the replica of `nic` under the current mappings.
pub fn resolve_replica_nic(
    source_fabric: Uuid,
    nic: &VmNic,
    target_fabric: Uuid,
    target_inv: &SiteInventory,
    mappings: &[NetworkMapping],
) -> ReplicaNic {
    let Some(net) = &nic.vm_network else {
        return ReplicaNic::Disconnected(DisconnectReason::SourceNicDisconnected);
    };
    let source = SiteObjectRef { fabric: source_fabric, id: net.clone() };
    let Some(target) = mapped_target(&source, target_fabric, mappings) else {
        return ReplicaNic::Disconnected(DisconnectReason::NetworkNotMapped);
    };
    let Some(target_net) = target_inv.vm_network(&target.id) else {
        return ReplicaNic::Disconnected(DisconnectReason::TargetNetworkMissing);
    };
    ReplicaNic::Connected {
        network: target.clone(),
        subnet: choose_subnet(nic.subnet.as_deref(), target_net).map(|s| s.name.clone()),
    }
}

/// The full plan of one replica NIC: connection and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaNicPlan {
    pub mac: String,
    pub connection: ReplicaNic,
    pub ip: IpAssignment,
}

/// NET-2/3/4 for every NIC of a VM. `used` holds the addresses taken on the target side and
/// receives the ones chosen here, so two NICs never get one address.
pub fn plan_replica_nics(
    vm: &Vm,
    source_fabric: Uuid,
    target_fabric: Uuid,
    target_inv: &SiteInventory,
    mappings: &[NetworkMapping],
    used: &mut HashSet<IpAddr>,
) -> Result<Vec<ReplicaNicPlan>, Error> {
    let mut plans = Vec::with_capacity(vm.nics.len());
    for nic in &vm.nics {
        let connection = resolve_replica_nic(source_fabric, nic, target_fabric, target_inv, mappings);
        let subnet = match &connection {
            ReplicaNic::Connected { network, subnet: Some(name) } => {
                target_inv.vm_network(&network.id).and_then(|n| n.subnets.iter().find(|s| &s.name == name))
            }
            _ => None,
        };
        let ip = match subnet {
            Some(s) => choose_ip(nic.ip.as_deref(), s, used)?,
            None => IpAssignment::Dhcp,
        };
        if let IpAssignment::Static { address, .. } = ip {
            used.insert(address);
        }
        plans.push(ReplicaNicPlan { mac: nic.mac.clone(), connection, ip });
    }
    Ok(plans)
}

/// A replica NIC whose connection changes when the mappings change (NET-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicChange {
    pub vm: String,
    pub mac: String,
    pub before: ReplicaNic,
    pub after: ReplicaNic,
}

/// NET-2: which existing replica NICs must be reconnected (or disconnected) when the mappings go
/// from `before` to `after` (a mapping made, changed or removed).
pub fn mapping_change_effects(
    vms: &[Vm],
    source_fabric: Uuid,
    target_fabric: Uuid,
    target_inv: &SiteInventory,
    before: &[NetworkMapping],
    after: &[NetworkMapping],
) -> Vec<NicChange> {
    let mut changes = Vec::new();
    for vm in vms {
        for nic in &vm.nics {
            let b = resolve_replica_nic(source_fabric, nic, target_fabric, target_inv, before);
            let a = resolve_replica_nic(source_fabric, nic, target_fabric, target_inv, after);
            if a != b {
                changes.push(NicChange { vm: vm.name.clone(), mac: nic.mac.clone(), before: b, after: a });
            }
        }
    }
    changes
}

/// NET-5: connected hosts of the target cloud that reach every network the replica joins.
pub fn placement_candidates<'a>(
    target_inv: &'a SiteInventory,
    target_cloud: &Cloud,
    nics: &[ReplicaNic],
) -> Result<Vec<&'a Host>, Error> {
    let hosts: Vec<&Host> =
        hosts_reaching(target_inv, target_cloud, nics)?.into_iter().filter(|h| h.connected).collect();
    if hosts.is_empty() {
        return Err(Error::NoHostReachesNetworks { cloud: target_cloud.name.clone() });
    }
    Ok(hosts)
}

/// Hosts of the cloud's host groups that reach every network the replica's NICs connect to,
/// connected to their site or not.
fn hosts_reaching<'a>(
    target_inv: &'a SiteInventory,
    target_cloud: &Cloud,
    nics: &[ReplicaNic],
) -> Result<Vec<&'a Host>, Error> {
    let mut needed: Vec<&str> = Vec::new();
    for nic in nics {
        if let ReplicaNic::Connected { network, .. } = nic {
            let net = find_network(target_inv, &network.id)?;
            needed.push(net.logical_network.as_str());
        }
    }
    Ok(target_inv
        .hosts
        .iter()
        .filter(|h| target_cloud.host_groups.contains(&h.host_group))
        .filter(|h| needed.iter().all(|ln| h.logical_networks.iter().any(|l| l == ln)))
        .collect())
}

/// REP-7: the host that keeps a replica of the VM (`kept_host`), when it can hold the new
/// replica (in the cloud, reaching its networks) — also while it is disconnected for a moment
/// (restarting): the new protection goes there and sends only the differences; an enable
/// while that host is down fails and is restarted, rather than copying everything elsewhere.
pub fn kept_replica_host<'a>(
    target_inv: &'a SiteInventory,
    target_cloud: &Cloud,
    nics: &[ReplicaNic],
    kept_host: &str,
) -> Option<&'a Host> {
    hosts_reaching(target_inv, target_cloud, nics).ok()?.into_iter().find(|h| h.id == kept_host)
}

/// The replica NIC after failover, as the failback rule (NET-6) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaNicAfterFailover {
    /// Still on the network it got at failover.
    Unchanged,
    /// An operator disconnected it.
    Disconnected,
    /// An operator moved it to another network of the replica's site.
    MovedTo(SiteObjectRef),
}

/// Where the original VM's NIC goes at failback (NET-6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailbackNic {
    StayOnOriginal,
    Connect(SiteObjectRef),
    Disconnected,
}

/// NET-6: the original VM's NIC follows the replica NIC's current network back through the
/// mappings. A mapping from the replica's network to the original site wins; otherwise a mapping
/// from the original site to the replica's network is used in reverse (the original network if
/// it is one of them). No mapping, or a disconnected replica NIC: disconnected.
pub fn failback_nic(
    original: &SiteObjectRef,
    replica_network_at_failover: &SiteObjectRef,
    after: &ReplicaNicAfterFailover,
    mappings: &[NetworkMapping],
) -> FailbackNic {
    let current = match after {
        ReplicaNicAfterFailover::Unchanged => replica_network_at_failover,
        ReplicaNicAfterFailover::MovedTo(n) => n,
        ReplicaNicAfterFailover::Disconnected => return FailbackNic::Disconnected,
    };
    let back = mapped_target(current, original.fabric, mappings).or_else(|| {
        let reverse: Vec<&SiteObjectRef> = mappings
            .iter()
            .filter(|m| m.target == *current && m.source.fabric == original.fabric)
            .map(|m| &m.source)
            .collect();
        reverse.iter().find(|s| **s == original).or(reverse.first()).copied()
    });
    match back {
        Some(n) if n == original => FailbackNic::StayOnOriginal,
        Some(n) => FailbackNic::Connect(n.clone()),
        None => FailbackNic::Disconnected,
    }
}
