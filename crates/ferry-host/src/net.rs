//! Host networking (HOST-4): a logical network is a Linux bridge, a VM NIC is a tap on it.
//! Test-failover networks are isolated bridges with no uplink. Uses `ip` from iproute2.
//!
//! Bridges and taps carry the guests' traffic only: the host takes no address on them (IPv6
//! autoconfiguration is turned off before they come up), so the host is not reachable from VM
//! networks and starting a VM does not change the host's addresses.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("{context}: {detail}")]
pub struct NetError {
    pub context: String,
    pub detail: String,
}

fn ip(args: &[&str], context: &str) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError { context: context.into(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError { context: context.into(), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

pub fn link_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", "dev", name]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Interface names are at most 15 bytes.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Prefix of the isolated bridges Ferry creates for test failovers (`fyt` + 8 hex digits).
pub const TEST_BRIDGE_PREFIX: &str = "fyt";

/// Whether `name` is one of Ferry's test-failover bridges.
pub fn is_test_bridge(name: &str) -> bool {
    name.strip_prefix(TEST_BRIDGE_PREFIX).is_some_and(|rest| !rest.is_empty()) && valid_ifname(name)
}

/// Create a bridge (no uplink) if it does not exist, and bring it up.
pub fn ensure_bridge(name: &str) -> Result<(), NetError> {
    if !valid_ifname(name) {
        return Err(NetError { context: format!("Bridge {name}"), detail: "invalid interface name".into() });
    }
    if !link_exists(name) {
        ip(&["link", "add", "name", name, "type", "bridge"], &format!("Create bridge {name}"))?;
    }
    no_host_address(name);
    ip(&["link", "set", "dev", name, "up"], &format!("Bring up bridge {name}"))
}

/// Keep the host off a guest-facing interface: no IPv6 link-local or autoconfigured address.
/// Best effort: without IPv6 in the kernel there is nothing to turn off.
fn no_host_address(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), b"1");
}

pub fn delete_link(name: &str) -> Result<(), NetError> {
    if link_exists(name) {
        ip(&["link", "del", "dev", name], &format!("Delete {name}"))?;
    }
    Ok(())
}

/// Create a tap attached to `bridge`.
pub fn create_tap(tap: &str, bridge: &str) -> Result<(), NetError> {
    if !valid_ifname(tap) {
        return Err(NetError { context: format!("Tap {tap}"), detail: "invalid interface name".into() });
    }
    if !link_exists(tap) {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"], &format!("Create tap {tap}"))?;
    }
    no_host_address(tap);
    ip(&["link", "set", "dev", tap, "master", bridge], &format!("Attach {tap} to {bridge}"))?;
    ip(&["link", "set", "dev", tap, "up"], &format!("Bring up {tap}"))
}

/// A tap name derived from the host, the VM and the NIC index (stable, ≤ 15 bytes).
///
/// The host is part of the name because one VM can run on two hosts that share a kernel's
/// network namespace: the source of an unplanned failover that could not be fenced still runs
/// its VM while the recovered copy starts elsewhere (and a lab runs every host on one machine).
/// Two QEMU processes cannot open one tap ("Device or resource busy").
pub fn tap_name(host: &str, vm_uuid: &uuid::Uuid, index: usize) -> String {
    let mut h = blake3::Hasher::new();
    h.update(host.as_bytes());
    h.update(b"\0");
    h.update(vm_uuid.as_bytes());
    let hex = h.finalize().to_hex();
    format!("fy{}n{index}", &hex[..10])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_4_bridge_and_tap_are_created_and_removed() {
        let br = format!("fyt{}", std::process::id() % 100000);
        let tap = format!("{br}t");
        struct Guard(String, String);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = delete_link(&self.1);
                let _ = delete_link(&self.0);
            }
        }
        let _g = Guard(br.clone(), tap.clone());
        ensure_bridge(&br).expect("bridge");
        ensure_bridge(&br).expect("bridge again is idempotent");
        create_tap(&tap, &br).expect("tap");
        let out = Command::new("ip").args(["-o", "link", "show", "dev", &tap]).output().expect("ip");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("master {br}")));
        delete_link(&tap).expect("del tap");
        delete_link(&br).expect("del bridge");
        assert!(!link_exists(&br) && !link_exists(&tap));
        assert!(ensure_bridge("this-name-is-far-too-long").is_err());
    }

    #[test]
    fn host_4_one_vm_on_two_hosts_gets_two_taps() {
        let vm = uuid::Uuid::new_v4();
        let a = tap_name("ny1", &vm, 0);
        assert_eq!(a, tap_name("ny1", &vm, 0), "stable");
        assert_ne!(a, tap_name("chi1", &vm, 0), "per host");
        assert_ne!(a, tap_name("ny1", &vm, 1), "per NIC");
        assert!(valid_ifname(&tap_name("a-very-long-host-name.example.com", &vm, 15)));
    }
}
