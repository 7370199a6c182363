//! Replica NICs from the network mappings (NET-2, NET-3, NET-4): planned when protection is
//! enabled, and planned again for every protected VM when a network mapping is created or
//! removed, so the next failover connects the recovered VM the way the mappings say now.
//!
//! A replica is disks only until failover, so "updating the replica" means updating the NIC plan
//! the failover uses. Items in the middle of a failover, or running at the recovery site, keep
//! theirs (their NICs exist; NET-6 applies at failback).

use std::collections::HashSet;
use std::net::IpAddr;

use ferry_core::addressing::IpAssignment;
use ferry_core::network::{ReplicaNic as NicConnection, ReplicaNicPlan};
use ferry_store::DocKind;
use ferry_types::fabric::{Fabric, Vm};
use ferry_types::mapping::NetworkMapping;
use ferry_types::protection::{Direction, ProtectedItem, ReplicaNic, ReplicationState};
use uuid::Uuid;

use crate::error::ApiResult;
use crate::state::AppState;

/// The item's NICs as planned.
pub fn replica_nics(vm: &Vm, plans: &[ReplicaNicPlan]) -> Vec<ReplicaNic> {
    plans
        .iter()
        .zip(vm.nics.iter())
        .map(|(plan, src)| {
            let (target_network, subnet) = match &plan.connection {
                NicConnection::Connected { network, subnet } => (Some(network.id.clone()), subnet.clone()),
                NicConnection::Disconnected(_) => (None, None),
            };
            let ip = match &plan.ip {
                IpAssignment::Static { address, .. } => Some(address.to_string()),
                IpAssignment::Dhcp => None,
            };
            ReplicaNic { mac: plan.mac.clone(), source_network: src.vm_network.clone(), target_network, subnet, ip }
        })
        .collect()
}

/// Addresses in use on the target site: its VMs and the replicas of other protected items.
pub async fn used_addresses(
    st: &AppState,
    vault: Uuid,
    target: &Fabric,
    except: Option<Uuid>,
) -> ApiResult<HashSet<IpAddr>> {
    let mut used: HashSet<IpAddr> =
        target.inventory.vms.iter().flat_map(|v| v.nics.iter()).filter_map(|n| n.ip.as_ref()?.parse().ok()).collect();
    for other in st.store.all_docs::<ProtectedItem>(DocKind::ProtectedItem, vault).await? {
        if Some(other.body.id) != except {
            used.extend(other.body.nics.iter().filter_map(|n| n.ip.as_ref()?.parse::<IpAddr>().ok()));
        }
    }
    Ok(used)
}

/// NET-2: after a network mapping changed, plan the NICs of every protected VM again. Returns
/// the names of the items whose plan changed.
pub async fn replan_after_mapping_change(st: &AppState, vault: Uuid) -> ApiResult<Vec<String>> {
    let maps: Vec<NetworkMapping> = st
        .store
        .all_docs::<NetworkMapping>(DocKind::NetworkMapping, vault)
        .await?
        .into_iter()
        .map(|d| d.body)
        .collect();
    let mut changed = Vec::new();
    for doc in st.store.all_docs::<ProtectedItem>(DocKind::ProtectedItem, vault).await? {
        let it = doc.body;
        let replannable = matches!(
            it.state,
            ReplicationState::WaitingForInitialReplication
                | ReplicationState::InitialReplicationInProgress
                | ReplicationState::Protected
                | ReplicationState::Paused
                | ReplicationState::ResyncRequired
                | ReplicationState::Resynchronizing
        );
        // Reverse items follow the failback rules of NET-6 (planned at re-protect).
        if !replannable || it.direction == Direction::Reverse {
            continue;
        }
        let (Some(source), Some(target)) = (
            st.store.get_doc::<Fabric>(DocKind::Fabric, vault, &it.source.fabric.to_string()).await?,
            st.store.get_doc::<Fabric>(DocKind::Fabric, vault, &it.target.fabric.to_string()).await?,
        ) else {
            continue;
        };
        let Some(vm) = source.body.inventory.vm(&it.vm_id).cloned() else { continue };
        let mut used = used_addresses(st, vault, &target.body, Some(it.id)).await?;
        let Ok(plans) = ferry_core::network::plan_replica_nics(
            &vm,
            source.body.id,
            target.body.id,
            &target.body.inventory,
            &maps,
            &mut used,
        ) else {
            continue;
        };
        let mut nics = replica_nics(&vm, &plans);
        // An address already planned stays when it is still valid for the same network.
        for (n, old) in nics.iter_mut().zip(&it.nics) {
            if n.target_network == old.target_network && n.subnet == old.subnet && old.ip.is_some() {
                n.ip = old.ip.clone();
            }
        }
        if nics != it.nics {
            crate::replication::update_item(st, vault, it.id, |i| i.nics = nics.clone())
                .await
                .map_err(|e| crate::error::ApiFailure::with(axum::http::StatusCode::CONFLICT, e))?;
            changed.push(it.name.clone());
        }
    }
    Ok(changed)
}
