//! Re-IP inside a guest (NET-4, FO-8): the address chosen for a recovered VM's NIC is applied
//! through qemu-guest-agent, on the guest interface whose MAC matches, and read back from the
//! guest to confirm it.
//!
//! Commands run in the guest are `ip` (iproute2 or busybox) through `guest-exec`; a guest without
//! an agent, or whose agent does not answer in time, is reported as such and left unchanged.

use std::path::Path;
use std::time::Duration;

use ferry_qemu::qga::Qga;
use ferry_types::site_protocol::GuestNicAddress;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum GuestNetError {
    #[error("Invalid address {0}: expected address/prefix")]
    Invalid(String),
    #[error("The guest agent did not answer: {0}")]
    NoAgent(String),
    #[error("The guest has no interface with MAC {0}")]
    NoInterface(String),
    #[error("`{command}` failed in the guest: {detail}")]
    Command { command: String, detail: String },
}

/// What the guest reports after the change, per NIC.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedNic {
    pub mac: String,
    pub interface: String,
    /// Addresses the guest agent reports on the interface now (address/prefix).
    pub addresses: Vec<String>,
}

fn valid_cidr(a: &str) -> Result<(), GuestNetError> {
    let (ip, prefix) = a.split_once('/').ok_or_else(|| GuestNetError::Invalid(a.into()))?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| GuestNetError::Invalid(a.into()))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(p) if p <= max => Ok(()),
        _ => Err(GuestNetError::Invalid(a.into())),
    }
}

/// `ip <args>` in the guest, found on the usual paths (iproute2 or busybox). The arguments are
/// passed as positional parameters, never parsed by the shell.
async fn run(qga: &Qga, args: &[&str]) -> Result<(), GuestNetError> {
    let mut argv = vec!["-c", "PATH=/usr/sbin:/usr/bin:/sbin:/bin exec ip \"$@\"", "ip"];
    argv.extend_from_slice(args);
    let out = qga
        .exec_wait("/bin/sh", &argv, Duration::from_secs(20))
        .await
        .map_err(|e| GuestNetError::Command { command: format!("ip {}", args.join(" ")), detail: e.to_string() })?;
    if out.exit_code == Some(0) {
        return Ok(());
    }
    Err(GuestNetError::Command {
        command: format!("ip {}", args.join(" ")),
        detail: format!("exit {:?}: {}", out.exit_code, String::from_utf8_lossy(&out.stderr).trim()),
    })
}

/// Apply `nics` in the guest behind the agent socket `socket`.
pub async fn apply(socket: &Path, nics: &[GuestNicAddress], wait: Duration) -> Result<Vec<AppliedNic>, GuestNetError> {
    for n in nics {
        valid_cidr(&n.address)?;
        if let Some(gw) = &n.gateway {
            gw.parse::<std::net::IpAddr>().map_err(|_| GuestNetError::Invalid(gw.clone()))?;
        }
    }
    let qga = Qga::connect(socket).await.map_err(|e| GuestNetError::NoAgent(e.to_string()))?;
    qga.wait_ready(wait).await.map_err(|e| GuestNetError::NoAgent(e.to_string()))?;
    let ifaces = qga.network_get_interfaces().await.map_err(|e| GuestNetError::NoAgent(e.to_string()))?;
    let mut applied = Vec::new();
    for n in nics {
        let iface = ifaces
            .iter()
            .find(|i| i.hardware_address.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&n.mac)))
            .ok_or_else(|| GuestNetError::NoInterface(n.mac.clone()))?;
        let dev = iface.name.as_str();
        run(&qga, &["addr", "flush", "dev", dev]).await?;
        run(&qga, &["addr", "add", &n.address, "dev", dev]).await?;
        run(&qga, &["link", "set", dev, "up"]).await?;
        if let Some(gw) = &n.gateway {
            run(&qga, &["route", "replace", "default", "via", gw, "dev", dev]).await?;
        }
        applied.push(dev.to_string());
    }
    let now = qga.network_get_interfaces().await.map_err(|e| GuestNetError::NoAgent(e.to_string()))?;
    Ok(nics
        .iter()
        .zip(applied)
        .map(|(n, dev)| AppliedNic {
            mac: n.mac.clone(),
            addresses: now
                .iter()
                .find(|i| i.name == dev)
                .map(|i| i.addresses.iter().map(|(a, p)| format!("{a}/{p}")).collect())
                .unwrap_or_default(),
            interface: dev,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_4_addresses_are_checked_before_touching_the_guest() {
        assert!(valid_cidr("10.21.0.10/24").is_ok());
        assert!(valid_cidr("fd00::5/64").is_ok());
        for bad in ["10.21.0.10", "10.21.0.10/33", "x/24", "10.21.0.10/-1", "; reboot/24"] {
            assert!(valid_cidr(bad).is_err(), "{bad}");
        }
    }
}
