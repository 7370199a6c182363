//! The lab's hosts in network namespaces of their own (`ferry lab --netns`).
//!
//! Each host agent (and every QEMU it starts, with its bridges and taps) runs in a namespace
//! with one veth whose other end sits on a bridge in the root namespace. The site managers
//! listen on the bridge's address; hosts listen on their namespace's address. Traffic between
//! the two sites' hosts then crosses real links, which the soak can cut (a blackhole route on
//! each side, so the hosts still reach their site managers) or slow down (tc tbf on the veths),
//! without touching any other interface of the machine.
//!
//! Addresses: a /24 in 10.64.0.0/10 derived from the lab's bridge prefix (so labs side by side
//! differ); the bridge is .1, host number `i` is .(10 + i). Everything is named after the
//! prefix and removed by [`LabNet::down`], also for a lab that died.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The namespaces, veths and bridge of one lab.
#[derive(Debug, Clone)]
pub struct LabNet {
    prefix: String,
    subnet: [u8; 3],
}

/// Run `ip` with `args`; an error carries what `ip` said.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("Cannot run ip (package iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Run `ip` inside namespace `ns`.
fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

/// Run `tc` with `args`.
fn tc(ns: Option<&str>, args: &[&str]) -> Result<()> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "tc"]);
            c
        }
        None => Command::new("tc"),
    };
    let out = cmd.args(args).output().context("Cannot run tc (package iproute2)")?;
    if !out.status.success() {
        bail!("tc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl LabNet {
    pub fn new(prefix: &str) -> Self {
        let h = blake3::hash(prefix.as_bytes());
        let b = h.as_bytes();
        LabNet { prefix: prefix.to_string(), subnet: [10, 64 + (b[0] & 0x3f), b[1]] }
    }

    /// The root namespace's bridge.
    pub fn bridge(&self) -> String {
        format!("{}lnk", self.prefix)
    }

    /// The bridge's address: where the site managers listen.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    /// The address of host number `index` inside its namespace.
    pub fn host_ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 10 + index as u8)
    }

    /// The namespace of `host`.
    pub fn namespace(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The veth end in the root namespace (the host's end is `eth0` in its namespace).
    pub fn veth(&self, host: &str) -> String {
        format!("{}v{host}", self.prefix)
    }

    /// Create the bridge and a namespace with its veth for each of `hosts` (name, number);
    /// what a previous run left is removed first.
    pub fn up(&self, hosts: &[(&str, usize)]) -> Result<()> {
        self.down(hosts.iter().map(|h| h.0));
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for (host, index) in hosts {
            let ns = self.namespace(host);
            let veth = self.veth(host);
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &br])?;
            ip(&["link", "set", &veth, "up"])?;
            ip_in(&ns, &["link", "set", "lo", "up"])?;
            ip_in(&ns, &["addr", "add", &format!("{}/24", self.host_ip(*index)), "dev", "eth0"])?;
            ip_in(&ns, &["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Remove the namespaces of `hosts` (their veths and whatever bridges and taps their
    /// agents made inside go with them) and the bridge. Missing pieces are fine.
    pub fn down<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        for host in hosts {
            // The veth first: deleting it removes both ends at once, while a namespace's own
            // teardown happens later in the kernel.
            let _ = ip(&["link", "del", &self.veth(host)]);
            let _ = ip(&["netns", "del", &self.namespace(host)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }

    /// Cut `a`'s hosts from `b`'s hosts, both ways (each keeps its link to the bridge, so the
    /// site managers still reach it): a blackhole route per peer address.
    pub fn partition(&self, a: &[(&str, usize)], b: &[(&str, usize)]) -> Result<()> {
        self.routes("add", a, b)
    }

    /// Undo [`LabNet::partition`].
    pub fn heal(&self, a: &[(&str, usize)], b: &[(&str, usize)]) -> Result<()> {
        self.routes("del", a, b)
    }

    fn routes(&self, verb: &str, a: &[(&str, usize)], b: &[(&str, usize)]) -> Result<()> {
        let mut first_error = None;
        for (from, to) in [(a, b), (b, a)] {
            for (host, _) in from {
                for (_, peer) in to {
                    let r = ip_in(
                        &self.namespace(host),
                        &["route", verb, "blackhole", &format!("{}/32", self.host_ip(*peer))],
                    );
                    if let Err(e) = r {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Limit what `host` sends and receives to `kbit` kbit/s (tc tbf on both ends of its veth).
    pub fn limit(&self, host: &str, kbit: u64) -> Result<()> {
        let rate = format!("{kbit}kbit");
        tc(
            None,
            &[
                "qdisc",
                "replace",
                "dev",
                &self.veth(host),
                "root",
                "tbf",
                "rate",
                &rate,
                "burst",
                "32kbit",
                "latency",
                "400ms",
            ],
        )?;
        tc(
            Some(&self.namespace(host)),
            &["qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "32kbit", "latency", "400ms"],
        )
    }

    /// Undo [`LabNet::limit`].
    pub fn unlimit(&self, host: &str) -> Result<()> {
        let a = tc(None, &["qdisc", "del", "dev", &self.veth(host), "root"]);
        let b = tc(Some(&self.namespace(host)), &["qdisc", "del", "dev", "eth0", "root"]);
        a.and(b)
    }

    /// The command prefix that runs a program in `host`'s namespace (`ip netns exec` execs the
    /// program, so the PID it gets is the program's own).
    pub fn exec_prefix(&self, host: &str) -> [String; 4] {
        ["ip".into(), "netns".into(), "exec".into(), self.namespace(host)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rep_3_lab_net_names_fit_interfaces_and_labs_differ() {
        let a = LabNet::new("t1231");
        let b = LabNet::new("t1232");
        assert!(a.veth("chi1").len() <= 15 && a.bridge().len() <= 15);
        assert_ne!(a.gateway(), b.gateway(), "labs side by side get their own subnet");
        assert_eq!(a.host_ip(2).octets()[..3], a.gateway().octets()[..3]);
        assert!(a.gateway().octets()[1] >= 64 && a.gateway().octets()[1] < 128);
    }
}
