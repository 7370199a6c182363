//! Where every host of a vault receives replication now, for the sites' heartbeat answers:
//! endpoints are resolved, not remembered (a source host looks its replica host up by
//! certificate name before every cycle).
//!
//! The directory is kept in memory from the sites' reports (each report brings its site's
//! hosts with their replication listeners); the first request of a vault after a start loads
//! every site of the vault from the store once, so a site that has not reported yet since the
//! restart is known too.

use std::collections::HashMap;
use std::sync::Mutex;

use ferry_store::DocKind;
use ferry_types::fabric::Fabric;
use ferry_types::site_protocol::ReplicationPeer;
use uuid::Uuid;

use crate::jobs::host_cn;

#[derive(Default)]
struct VaultPeers {
    loaded: bool,
    by_fabric: HashMap<Uuid, Vec<ReplicationPeer>>,
}

/// Replication listeners of every host, per vault and site.
#[derive(Default)]
pub struct PeerDirectory {
    vaults: Mutex<HashMap<Uuid, VaultPeers>>,
}

/// The replication peers of one site's inventory: every host that reported a listener.
pub fn peers_of(f: &Fabric) -> Vec<ReplicationPeer> {
    f.inventory
        .hosts
        .iter()
        .filter(|h| !h.replication_address.is_empty())
        .map(|h| {
            let mut addresses = vec![h.replication_address.clone()];
            addresses.extend(h.replication_addresses.iter().filter(|a| **a != h.replication_address).cloned());
            ReplicationPeer { host_cn: host_cn(f.id, &h.id), host_name: h.name.clone(), addresses }
        })
        .collect()
}

impl PeerDirectory {
    /// Record a site's hosts as its latest report shows them.
    pub fn set_fabric(&self, f: &Fabric) {
        if let Ok(mut v) = self.vaults.lock() {
            v.entry(f.vault_id).or_default().by_fabric.insert(f.id, peers_of(f));
        }
    }

    /// Every host of `vault` with its listeners. Loads the vault's sites from the store on the
    /// first call after a start.
    pub async fn peers(&self, store: &ferry_store::Store, vault: Uuid) -> Vec<ReplicationPeer> {
        let loaded = self.vaults.lock().map(|v| v.get(&vault).is_some_and(|p| p.loaded)).unwrap_or(false);
        if !loaded {
            match store.all_docs::<Fabric>(DocKind::Fabric, vault).await {
                Ok(docs) => {
                    if let Ok(mut v) = self.vaults.lock() {
                        let entry = v.entry(vault).or_default();
                        for d in docs {
                            entry.by_fabric.entry(d.body.id).or_insert_with(|| peers_of(&d.body));
                        }
                        entry.loaded = true;
                    }
                }
                Err(e) => tracing::warn!(%vault, error = %e, "cannot load the sites' replication listeners"),
            }
        }
        let Ok(v) = self.vaults.lock() else { return Vec::new() };
        let Some(p) = v.get(&vault) else { return Vec::new() };
        let mut out: Vec<ReplicationPeer> = p.by_fabric.values().flatten().cloned().collect();
        out.sort_by(|a, b| a.host_cn.cmp(&b.host_cn));
        out
    }

    /// Forget a site (deleted).
    pub fn remove_fabric(&self, vault: Uuid, fabric: Uuid) {
        if let Ok(mut v) = self.vaults.lock() {
            if let Some(p) = v.get_mut(&vault) {
                p.by_fabric.remove(&fabric);
            }
        }
    }
}
