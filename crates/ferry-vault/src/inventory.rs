//! Applying a site's inventory report: keep the vault's per-cloud sync switches (FAB-3), drop
//! the content of clouds that are not synced, and describe what changed (FAB-4).

use std::collections::HashMap;

use ferry_types::fabric::SiteInventory;

/// Merge a reported inventory with the stored one. Clouds keep their stored `sync_enabled`;
/// clouds seen for the first time get `default_sync`. Host groups, hosts and VMs that belong
/// only to unsynced clouds are dropped.
pub fn merge(previous: &SiteInventory, mut reported: SiteInventory, default_sync: bool) -> SiteInventory {
    let old: HashMap<&str, bool> = previous.clouds.iter().map(|c| (c.id.as_str(), c.sync_enabled)).collect();
    for c in &mut reported.clouds {
        c.sync_enabled = old.get(c.id.as_str()).copied().unwrap_or(default_sync);
    }
    let synced_groups: Vec<String> =
        reported.clouds.iter().filter(|c| c.sync_enabled).flat_map(|c| c.host_groups.clone()).collect();
    let unsynced_groups: Vec<String> =
        reported.clouds.iter().filter(|c| !c.sync_enabled).flat_map(|c| c.host_groups.clone()).collect();
    let hidden = |g: &String| unsynced_groups.contains(g) && !synced_groups.contains(g);
    reported.host_groups.retain(|g| !hidden(&g.id));
    reported.hosts.retain(|h| !hidden(&h.host_group));
    let hosts: Vec<String> = reported.hosts.iter().map(|h| h.id.clone()).collect();
    reported.vms.retain(|v| hosts.contains(&v.host));
    for c in &mut reported.clouds {
        if !c.sync_enabled {
            c.host_groups.clear();
        }
    }
    reported
}

/// Human-readable changes between two inventories (added, removed, renamed objects).
pub fn changes(old: &SiteInventory, new: &SiteInventory) -> Vec<String> {
    let mut out = Vec::new();
    diff(&mut out, "Cloud", old.clouds.iter().map(|c| (&c.id, &c.name)), new.clouds.iter().map(|c| (&c.id, &c.name)));
    diff(
        &mut out,
        "Host group",
        old.host_groups.iter().map(|c| (&c.id, &c.name)),
        new.host_groups.iter().map(|c| (&c.id, &c.name)),
    );
    diff(&mut out, "Host", old.hosts.iter().map(|c| (&c.id, &c.name)), new.hosts.iter().map(|c| (&c.id, &c.name)));
    diff(
        &mut out,
        "Logical network",
        old.logical_networks.iter().map(|c| (&c.id, &c.name)),
        new.logical_networks.iter().map(|c| (&c.id, &c.name)),
    );
    diff(
        &mut out,
        "VM network",
        old.vm_networks.iter().map(|c| (&c.id, &c.name)),
        new.vm_networks.iter().map(|c| (&c.id, &c.name)),
    );
    diff(
        &mut out,
        "Storage classification",
        old.storage_classifications.iter().map(|c| (&c.id, &c.name)),
        new.storage_classifications.iter().map(|c| (&c.id, &c.name)),
    );
    diff(&mut out, "VM", old.vms.iter().map(|c| (&c.id, &c.name)), new.vms.iter().map(|c| (&c.id, &c.name)));
    out
}

fn diff<'a>(
    out: &mut Vec<String>,
    what: &str,
    old: impl Iterator<Item = (&'a String, &'a String)>,
    new: impl Iterator<Item = (&'a String, &'a String)>,
) {
    let old: HashMap<&String, &String> = old.collect();
    let new: Vec<(&String, &String)> = new.collect();
    for (id, name) in &new {
        match old.get(id) {
            None => out.push(format!("{what} {name} added")),
            Some(o) if o != name => out.push(format!("{what} {o} renamed to {name}")),
            _ => {}
        }
    }
    let new_ids: Vec<&String> = new.iter().map(|(id, _)| *id).collect();
    for (id, name) in old {
        if !new_ids.contains(&id) {
            out.push(format!("{what} {name} removed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::fabric::{Cloud, Host, HostGroup, VmNetwork};

    fn inv(sync: bool) -> SiteInventory {
        SiteInventory {
            clouds: vec![Cloud {
                id: "c1".into(),
                name: "GoldCloud1".into(),
                host_groups: vec!["hg1".into()],
                sync_enabled: sync,
            }],
            host_groups: vec![HostGroup { id: "hg1".into(), name: "HG".into(), storage_classifications: vec![] }],
            hosts: vec![Host {
                id: "h1".into(),
                name: "ny1".into(),
                host_group: "hg1".into(),
                address: String::new(),
                agent_version: String::new(),
                qemu_version: String::new(),
                logical_networks: vec![],
                storage_locations: vec![],
                connected: true,
                replication_address: String::new(),
                replication_addresses: Vec::new(),
            }],
            vm_networks: vec![VmNetwork {
                id: "n1".into(),
                name: "VMNetwork1-NewYork".into(),
                logical_network: "l1".into(),
                subnets: vec![],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn fab_3_unsynced_cloud_content_is_not_kept() {
        let merged = merge(&SiteInventory::default(), inv(true), false);
        assert!(!merged.clouds[0].sync_enabled);
        assert!(merged.hosts.is_empty());
        assert!(merged.clouds[0].host_groups.is_empty());
        let merged = merge(&SiteInventory::default(), inv(false), true);
        assert!(merged.clouds[0].sync_enabled);
        assert_eq!(merged.hosts.len(), 1);
    }

    #[test]
    fn fab_4_inventory_changes_are_described() {
        let old = inv(true);
        let mut new = inv(true);
        new.vm_networks[0].name = "VMNetwork1-NY".into();
        new.hosts.clear();
        let c = changes(&old, &new);
        assert_eq!(
            c,
            vec!["Host ny1 removed".to_string(), "VM network VMNetwork1-NewYork renamed to VMNetwork1-NY".to_string()]
        );
    }
}
