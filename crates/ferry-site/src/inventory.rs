//! Building the inventory a site reports: static fabric from the definition, dynamic state
//! (storage, VMs, connectivity) from host reports, filtered to the clouds whose metadata the
//! vault syncs (FAB-3, FAB-9).

use ferry_types::fabric::{Host, SiteInventory};

use crate::Site;

/// A host is connected when it reported within this many report intervals.
const CONNECTED_INTERVALS: i64 = 3;

pub fn build(site: &Site) -> SiteInventory {
    let f = &site.fabric;
    let now = chrono::Utc::now().timestamp_millis();
    let window = (site.cfg.report_interval_secs.max(1) as i64) * 1000 * CONNECTED_INTERVALS;
    let persisted = site.persisted.lock().map(|p| p.clone()).unwrap_or_default();
    let synced: Vec<String> = match site.synced.lock().ok().and_then(|s| s.clone()) {
        Some(s) => s,
        None if site.cfg.sync_all_clouds => f.clouds.iter().map(|c| c.id.clone()).collect(),
        None => Vec::new(),
    };
    let synced_groups: Vec<String> =
        f.clouds.iter().filter(|c| synced.contains(&c.id)).flat_map(|c| c.host_groups.clone()).collect();
    let cloud_of_group = |g: &str| {
        f.clouds.iter().find(|c| synced.contains(&c.id) && c.host_groups.iter().any(|h| h == g)).map(|c| c.id.clone())
    };

    let mut inv = SiteInventory {
        clouds: f
            .clouds
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if !synced.contains(&c.id) {
                    c.host_groups.clear();
                }
                c
            })
            .collect(),
        host_groups: f.host_groups.iter().filter(|g| synced_groups.contains(&g.id)).cloned().collect(),
        hosts: Vec::new(),
        logical_networks: f.logical_networks.clone(),
        vm_networks: f.vm_networks.clone(),
        storage_classifications: f.storage_classifications.clone(),
        vms: Vec::new(),
    };
    for (id, name, group) in &f.hosts {
        if !synced_groups.contains(group) {
            continue;
        }
        let entry = persisted.hosts.iter().find(|h| &h.id == id);
        let report = entry.and_then(|e| e.last_report.clone());
        let report_replication_address = report.as_ref().map(|r| r.replication_address.clone()).unwrap_or_default();
        let mut host = Host {
            id: id.clone(),
            name: name.clone(),
            host_group: group.clone(),
            address: entry.map(|e| e.address.clone()).unwrap_or_default(),
            agent_version: String::new(),
            qemu_version: String::new(),
            logical_networks: f
                .logical_networks
                .iter()
                .filter(|l| l.host_groups.contains(group))
                .map(|l| l.id.clone())
                .collect(),
            storage_locations: Vec::new(),
            connected: entry.is_some_and(|e| now - e.last_seen_ms <= window),
            replication_address: report_replication_address.clone(),
            replication_addresses: report.as_ref().map(|r| r.replication_addresses.clone()).unwrap_or_default(),
        };
        if let Some(r) = report {
            host.agent_version = r.agent_version;
            host.qemu_version = r.qemu_version;
            host.storage_locations = r.storage_locations;
            // Hosts name classifications; the inventory carries their ids.
            for l in &mut host.storage_locations {
                if let Some(c) = l
                    .classification
                    .as_ref()
                    .and_then(|n| f.storage_classifications.iter().find(|sc| &sc.name == n || &sc.id == n))
                {
                    l.classification = Some(c.id.clone());
                }
            }
            for mut vm in r.vms {
                for d in &mut vm.disks {
                    if let Some(c) = d.classification.as_ref().and_then(|n| class_id(f, n)) {
                        d.classification = Some(c);
                    }
                }
                // Hosts name VM networks; the inventory carries their ids.
                for n in &mut vm.nics {
                    if let Some(net) =
                        n.vm_network.as_ref().and_then(|x| f.vm_networks.iter().find(|v| &v.name == x || &v.id == x))
                    {
                        n.vm_network = Some(net.id.clone());
                    }
                }
                vm.host = id.clone();
                vm.cloud = cloud_of_group(group);
                inv.vms.push(vm);
            }
        }
        inv.hosts.push(host);
    }
    inv
}

/// Hosts name storage classifications; the inventory carries their ids.
fn class_id(f: &crate::config::Fabric, name_or_id: &str) -> Option<String> {
    f.storage_classifications.iter().find(|sc| sc.name == name_or_id || sc.id == name_or_id).map(|sc| sc.id.clone())
}
