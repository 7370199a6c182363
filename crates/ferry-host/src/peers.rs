//! Where the replica hosts are now: endpoints are resolved, not remembered.
//!
//! The vault knows every host's replication listeners from the hosts' own reports; it hands
//! them to each site with its heartbeat answer, and the site to its hosts with theirs. A
//! source host looks its replica host up here by certificate name before every cycle, so a
//! replica host that restarted on a new port, or moved, is found again without an operator.
//! The address is only where to look: the TLS handshake accepts the peer only if its
//! certificate carries the expected name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use ferry_types::site_protocol::ReplicationPeer;

/// The default replication port with certificate authentication (POL-2).
pub const DEFAULT_CERTIFICATE_PORT: u16 = 8084;

/// Replication addresses by certificate name, as the site last passed them on.
#[derive(Debug, Default)]
pub struct Peers {
    map: Mutex<HashMap<String, Vec<String>>>,
}

impl Peers {
    /// Take the site's list; returns the names whose addresses changed. Peers the list does
    /// not name keep their last known addresses (a site that lost the vault sends none).
    pub fn update(&self, peers: &[ReplicationPeer]) -> Vec<String> {
        let mut changed = Vec::new();
        let Ok(mut map) = self.map.lock() else { return changed };
        for p in peers {
            if p.addresses.is_empty() {
                continue;
            }
            if map.get(&p.host_cn) != Some(&p.addresses) {
                map.insert(p.host_cn.clone(), p.addresses.clone());
                changed.push(p.host_cn.clone());
            }
        }
        changed
    }

    /// The address to reach `cn` at for a policy on `port`: its listener on that port if it
    /// has one, else its first listener; `None` when the host is unknown.
    pub fn resolve(&self, cn: &str, port: u16) -> Option<SocketAddr> {
        let map = self.map.lock().ok()?;
        choose(map.get(cn)?, port)
    }
}

/// Among a host's listeners, the one on `port`, else the first that parses.
pub fn choose(addresses: &[String], port: u16) -> Option<SocketAddr> {
    let parsed: Vec<SocketAddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
    parsed.iter().find(|a| a.port() == port).or(parsed.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(cn: &str, addrs: &[&str]) -> ReplicationPeer {
        ReplicationPeer {
            host_cn: cn.into(),
            host_name: cn.into(),
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn pol_2_the_listener_on_the_policy_port_is_preferred() {
        let a = ["10.0.0.5:40000".to_string(), "10.0.0.5:8084".to_string(), "10.0.0.5:9000".to_string()];
        assert_eq!(choose(&a, 8084), "10.0.0.5:8084".parse().ok());
        assert_eq!(choose(&a, 9000), "10.0.0.5:9000".parse().ok());
        assert_eq!(choose(&a, 7000), "10.0.0.5:40000".parse().ok(), "no listener on the port: the first");
        assert_eq!(choose(&["garbage".to_string()], 8084), None);
    }

    #[test]
    fn rep_3_a_moved_replica_host_is_resolved_to_its_new_address() {
        let p = Peers::default();
        assert_eq!(p.resolve("host-chi1", 8084), None);
        assert_eq!(p.update(&[peer("host-chi1", &["127.0.0.1:40515"]), peer("host-chi2", &["127.0.0.1:1"])]).len(), 2);
        assert_eq!(p.update(&[peer("host-chi1", &["127.0.0.1:40515"])]), Vec::<String>::new(), "no change");
        assert_eq!(p.update(&[peer("host-chi1", &["127.0.0.1:41000"])]), vec!["host-chi1".to_string()]);
        assert_eq!(p.resolve("host-chi1", 8084), "127.0.0.1:41000".parse().ok());
        // A host without a listener now keeps its last known address.
        p.update(&[peer("host-chi2", &[])]);
        assert_eq!(p.resolve("host-chi2", 8084), "127.0.0.1:1".parse().ok());
    }
}
