//! Subnet and IP address choice for replica NICs (NET-3, NET-4).
//!
//! NET-3: the replica joins the target subnet named like the source NIC's subnet, else the first
//! subnet of the target network. NET-4: it keeps its address when that address lies in a static
//! pool of the chosen subnet and is free; otherwise it gets the lowest free address of the pools
//! (in pool order). DHCP is not managed: a NIC without a static address, or a subnet without
//! pools, gets `IpAssignment::Dhcp`. IPv4 and IPv6 are both handled.

use std::collections::HashSet;
use std::net::IpAddr;

use ferry_types::fabric::{IpPool, Subnet, VmNetwork};
use ipnet::IpNet;

use crate::error::Error;

/// How a replica NIC gets its address at failover (re-IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpAssignment {
    /// Not managed by Ferry.
    Dhcp,
    Static {
        address: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        /// The replica kept the source VM's address.
        same_as_source: bool,
    },
}

/// NET-3: the subnet named like `source_subnet`, else the first one; `None` when the network has
/// no subnet at all.
pub fn choose_subnet<'a>(source_subnet: Option<&str>, target: &'a VmNetwork) -> Option<&'a Subnet> {
    source_subnet.and_then(|name| target.subnets.iter().find(|s| s.name == name)).or_else(|| target.subnets.first())
}

/// NET-4: the address for a replica NIC in `subnet`. `used` holds every address already taken in
/// the target subnet (other VMs, other NICs of this VM).
pub fn choose_ip(source_ip: Option<&str>, subnet: &Subnet, used: &HashSet<IpAddr>) -> Result<IpAssignment, Error> {
    let Some(source_ip) = source_ip else {
        return Ok(IpAssignment::Dhcp);
    };
    let source: IpAddr = parse_addr("IP address", source_ip)?;
    if subnet.pools.is_empty() {
        return Ok(IpAssignment::Dhcp);
    }
    let net: IpNet =
        subnet.cidr.parse().map_err(|_| Error::InvalidAddress { what: "CIDR".into(), value: subnet.cidr.clone() })?;
    let gateway = subnet.gateway.as_deref().map(|g| parse_addr("gateway", g)).transpose()?;
    let pools = subnet.pools.iter().map(|p| parse_pool(subnet, &net, p)).collect::<Result<Vec<_>, _>>()?;

    let free = |a: IpAddr| !used.contains(&a) && Some(a) != gateway && !is_reserved(&net, a);
    let as_static = |address, same_as_source| IpAssignment::Static {
        address,
        prefix_len: net.prefix_len(),
        gateway,
        same_as_source,
    };
    if pools.iter().any(|(s, e)| in_range(source, *s, *e)) && free(source) {
        return Ok(as_static(source, true));
    }
    for (start, end) in &pools {
        let (mut cur, last) = (to_u128(*start), to_u128(*end));
        loop {
            let addr = from_u128(*start, cur);
            if free(addr) {
                return Ok(as_static(addr, false));
            }
            if cur >= last {
                break;
            }
            cur += 1;
        }
    }
    Err(Error::IpPoolExhausted { subnet: subnet.name.clone() })
}

fn parse_addr(what: &str, s: &str) -> Result<IpAddr, Error> {
    s.trim().parse().map_err(|_| Error::InvalidAddress { what: what.into(), value: s.into() })
}

fn parse_pool(subnet: &Subnet, net: &IpNet, pool: &IpPool) -> Result<(IpAddr, IpAddr), Error> {
    let bad = |reason: &str| Error::InvalidIpPool {
        subnet: subnet.name.clone(),
        pool: pool.name.clone(),
        reason: reason.to_string(),
    };
    let start: IpAddr = pool.start.trim().parse().map_err(|_| bad("the start is not an address"))?;
    let end: IpAddr = pool.end.trim().parse().map_err(|_| bad("the end is not an address"))?;
    if !net.contains(&start) || !net.contains(&end) {
        return Err(bad("it is not inside the subnet"));
    }
    if start.is_ipv4() != end.is_ipv4() || to_u128(start) > to_u128(end) {
        return Err(bad("the start is after the end"));
    }
    Ok((start, end))
}

/// Network and broadcast addresses of an IPv4 subnet larger than /31.
fn is_reserved(net: &IpNet, a: IpAddr) -> bool {
    match net {
        IpNet::V4(n) if n.prefix_len() < 31 => a == IpAddr::V4(n.network()) || a == IpAddr::V4(n.broadcast()),
        _ => false,
    }
}

fn in_range(a: IpAddr, start: IpAddr, end: IpAddr) -> bool {
    a.is_ipv4() == start.is_ipv4() && to_u128(start) <= to_u128(a) && to_u128(a) <= to_u128(end)
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(family: IpAddr, n: u128) -> IpAddr {
    match family {
        // Values come from a pool of the same family, so they fit in 32 bits.
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(name: &str, cidr: &str, pools: &[(&str, &str)]) -> Subnet {
        Subnet {
            name: name.into(),
            cidr: cidr.into(),
            gateway: None,
            pools: pools
                .iter()
                .enumerate()
                .map(|(i, (s, e))| IpPool { name: format!("pool{i}"), start: s.to_string(), end: e.to_string() })
                .collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn net(subnets: Vec<Subnet>) -> VmNetwork {
        VmNetwork { id: "n".into(), name: "n".into(), logical_network: "ln".into(), subnets }
    }

    fn addr(a: &IpAssignment) -> Option<(IpAddr, bool)> {
        match a {
            IpAssignment::Static { address, same_as_source, .. } => Some((*address, *same_as_source)),
            IpAssignment::Dhcp => None,
        }
    }

    #[test]
    fn net_3_same_subnet_name_else_first() {
        let n = net(vec![subnet("front", "10.2.0.0/24", &[]), subnet("back", "10.2.1.0/24", &[])]);
        assert_eq!(choose_subnet(Some("back"), &n).map(|s| s.name.as_str()), Some("back"));
        assert_eq!(choose_subnet(Some("db"), &n).map(|s| s.name.as_str()), Some("front"));
        assert_eq!(choose_subnet(None, &n).map(|s| s.name.as_str()), Some("front"));
        assert_eq!(choose_subnet(Some("Back"), &n).map(|s| s.name.as_str()), Some("front"));
        assert_eq!(choose_subnet(Some("back"), &net(vec![])), None);
    }

    #[test]
    fn net_4_keeps_same_ip_when_in_pool_and_free() {
        let s = subnet("front", "10.2.0.0/24", &[("10.2.0.10", "10.2.0.20")]);
        let got = choose_ip(Some("10.2.0.15"), &s, &HashSet::new()).expect("assignment");
        assert_eq!(
            got,
            IpAssignment::Static { address: ip("10.2.0.15"), prefix_len: 24, gateway: None, same_as_source: true }
        );
    }

    #[test]
    fn net_4_first_free_when_same_ip_taken_or_outside_pool() {
        let s = subnet("front", "10.2.0.0/24", &[("10.2.0.10", "10.2.0.12"), ("10.2.0.50", "10.2.0.51")]);
        let used: HashSet<IpAddr> = [ip("10.2.0.15"), ip("10.2.0.10")].into_iter().collect();
        // Outside every pool: lowest free pool address.
        let got = choose_ip(Some("10.1.0.15"), &s, &used).expect("assignment");
        assert_eq!(addr(&got), Some((ip("10.2.0.11"), false)));
        // Inside a pool but taken.
        let used: HashSet<IpAddr> = [ip("10.2.0.10"), ip("10.2.0.11"), ip("10.2.0.12")].into_iter().collect();
        let got = choose_ip(Some("10.2.0.11"), &s, &used).expect("assignment");
        assert_eq!(addr(&got), Some((ip("10.2.0.50"), false)));
    }

    #[test]
    fn net_4_exhausted_pool_is_an_error() {
        let s = subnet("front", "10.2.0.0/24", &[("10.2.0.10", "10.2.0.11")]);
        let used: HashSet<IpAddr> = [ip("10.2.0.10"), ip("10.2.0.11")].into_iter().collect();
        assert_eq!(choose_ip(Some("10.2.0.10"), &s, &used), Err(Error::IpPoolExhausted { subnet: "front".into() }));
    }

    #[test]
    fn net_4_skips_gateway_network_and_broadcast() {
        let mut s = subnet("front", "10.2.0.0/30", &[("10.2.0.0", "10.2.0.3")]);
        s.gateway = Some("10.2.0.1".into());
        let got = choose_ip(Some("10.2.0.1"), &s, &HashSet::new()).expect("assignment");
        assert_eq!(
            got,
            IpAssignment::Static {
                address: ip("10.2.0.2"),
                prefix_len: 30,
                gateway: Some(ip("10.2.0.1")),
                same_as_source: false
            }
        );
    }

    #[test]
    fn net_4_dhcp_when_no_static_ip_or_no_pool() {
        let s = subnet("front", "10.2.0.0/24", &[("10.2.0.10", "10.2.0.20")]);
        assert_eq!(choose_ip(None, &s, &HashSet::new()), Ok(IpAssignment::Dhcp));
        let s = subnet("front", "10.2.0.0/24", &[]);
        assert_eq!(choose_ip(Some("10.2.0.5"), &s, &HashSet::new()), Ok(IpAssignment::Dhcp));
    }

    #[test]
    fn net_4_ipv6_pool() {
        let s = subnet("v6", "fd00:2::/64", &[("fd00:2::10", "fd00:2::ffff")]);
        let got = choose_ip(Some("fd00:2::20"), &s, &HashSet::new()).expect("assignment");
        assert_eq!(addr(&got), Some((ip("fd00:2::20"), true)));
        let used: HashSet<IpAddr> = [ip("fd00:2::10"), ip("fd00:2::20")].into_iter().collect();
        let got = choose_ip(Some("fd00:2::20"), &s, &used).expect("assignment");
        assert_eq!(addr(&got), Some((ip("fd00:2::11"), false)));
    }

    #[test]
    fn net_4_invalid_input_is_rejected() {
        let s = subnet("front", "10.2.0.0/24", &[("10.3.0.1", "10.3.0.9")]);
        assert_eq!(
            choose_ip(Some("10.2.0.5"), &s, &HashSet::new()).map_err(|e| e.to_string()),
            Err("IP pool pool0 of subnet front is invalid: it is not inside the subnet".to_string())
        );
        let s = subnet("front", "10.2.0.0/24", &[("10.2.0.9", "10.2.0.1")]);
        assert_eq!(choose_ip(Some("10.2.0.5"), &s, &HashSet::new()).map_err(|e| e.code()), Err("InvalidIpPool"));
        let s = subnet("front", "not-a-cidr", &[("10.2.0.1", "10.2.0.9")]);
        assert_eq!(choose_ip(Some("10.2.0.5"), &s, &HashSet::new()).map_err(|e| e.code()), Err("InvalidAddress"));
        let s = subnet("front", "10.2.0.0/24", &[("10.2.0.1", "10.2.0.9")]);
        assert_eq!(choose_ip(Some("10.2.0.x"), &s, &HashSet::new()).map_err(|e| e.code()), Err("InvalidAddress"));
    }
}
