//! Faults the soak injects while operations run: SIGKILL and restart of any lab process
//! (sometimes a host agent on a new replication port), SIGKILL of a VM's QEMU (then started
//! again: its change tracking is lost, a resync is allowed), SIGSTOP beyond the heartbeat
//! timeout, replication connections cut (`ss -K`), a bandwidth limit on the replication link
//! and a partition of it (see [`super::link`]); a replica location that runs full (see
//! [`super::full_disk`]) and a host agent on a wrong clock ([`wrong_clock_env`]) are run by the
//! soak itself, as it checks health meanwhile, and so is the long outage of a replica host,
//! which must turn its items Critical.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use super::lab_control::{signal, LabUnderTest};
use super::link::{Shape, ShapedLink};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum FaultKind {
    KillRestartProcess,
    KillRestartHostOnNewPort,
    KillQemu,
    StopProcess,
    CutReplicationConnections,
    BandwidthLimit,
    Partition,
    ReplicaLocationFull,
    ClockOffset,
    BitFlip,
}

pub const ALL_FAULTS: [FaultKind; 10] = [
    FaultKind::KillRestartProcess,
    FaultKind::KillRestartHostOnNewPort,
    FaultKind::KillQemu,
    FaultKind::StopProcess,
    FaultKind::CutReplicationConnections,
    FaultKind::BandwidthLimit,
    FaultKind::Partition,
    FaultKind::ReplicaLocationFull,
    FaultKind::ClockOffset,
    FaultKind::BitFlip,
];

/// What a fault hit, for the invariants.
#[derive(Debug, Clone, Default)]
pub struct FaultEffect {
    pub target: String,
    /// Items whose change tracking the fault destroyed (a resync is expected for them).
    pub tracking_lost: Vec<String>,
    /// How long the fault lasted, when not the drawn hold.
    pub held: Option<Duration>,
}

/// Inject `kind` on the process, host or VM chosen by `pick`, hold it `hold`, end it.
pub async fn inject(
    lab: &LabUnderTest,
    kind: FaultKind,
    pick: usize,
    hold: Duration,
    items: &[Value],
) -> Result<FaultEffect> {
    let procs = lab.processes();
    let hosts: Vec<String> = procs.iter().filter_map(|p| p.strip_prefix("host-").map(str::to_string)).collect();
    let choose = |v: &[String]| v.get(pick % v.len().max(1)).cloned().ok_or_else(|| anyhow!("nothing to hit"));
    match kind {
        FaultKind::KillRestartProcess => {
            let name = choose(&procs)?;
            let argv = lab.kill(&name)?;
            tokio::time::sleep(hold).await;
            lab.restart(&name, &argv)?;
            Ok(FaultEffect { target: name, ..Default::default() })
        }
        FaultKind::KillRestartHostOnNewPort => {
            let host = choose(&hosts)?;
            let name = format!("host-{host}");
            let argv = lab.kill(&name)?;
            let port = lab.move_replication_port(&host)?;
            tokio::time::sleep(hold).await;
            lab.restart(&name, &argv)?;
            Ok(FaultEffect { target: format!("{name} (now on port {port})"), ..Default::default() })
        }
        FaultKind::KillQemu => {
            // A protected VM on its source host.
            let running: Vec<&Value> = items.iter().filter(|i| i["state"] == "Protected").collect();
            let it = running.get(pick % running.len().max(1)).ok_or_else(|| anyhow!("no protected VM"))?;
            let (host, vm) = (
                it["source"]["host_name"].as_str().unwrap_or_default().to_string(),
                it["name"].as_str().unwrap_or_default().to_string(),
            );
            let site = it["source"]["fabric"].as_str().unwrap_or_default().to_string();
            let pid = lab.qemu_pid(&host, &vm).ok_or_else(|| anyhow!("{vm} does not run on {host}"))?;
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            super::lab_control::wait_gone(pid, Duration::from_secs(10));
            tokio::time::sleep(hold).await;
            let path = lab.v(&format!("/replicationFabrics/{site}/hosts/{host}/vmActions"));
            let j: Value = lab.client.post(&path, &json!({"action": "start", "vm": vm})).await?;
            super::ops::wait_job(lab, &j, false, Duration::from_secs(120)).await?;
            Ok(FaultEffect {
                target: format!("QEMU of {vm} on {host}"),
                tracking_lost: vec![it["id"].as_str().unwrap_or_default().to_string()],
                ..Default::default()
            })
        }
        FaultKind::StopProcess => {
            let name = choose(&procs)?;
            let pid = lab.pid(&name)?;
            signal(pid, nix::sys::signal::Signal::SIGSTOP);
            tokio::time::sleep(hold).await;
            signal(pid, nix::sys::signal::Signal::SIGCONT);
            Ok(FaultEffect { target: format!("{name} stopped {} s", hold.as_secs()), ..Default::default() })
        }
        FaultKind::CutReplicationConnections => {
            // A host that receives replication now.
            let mut receivers: Vec<String> =
                items.iter().filter_map(|i| i["target"]["host_name"].as_str().map(str::to_string)).collect();
            receivers.sort();
            receivers.dedup();
            let host = choose(if receivers.is_empty() { &hosts } else { &receivers })?;
            let port = lab.replication_port(&host).ok_or_else(|| anyhow!("{host} has no fixed replication port"))?;
            let mut cut = 0;
            let t0 = std::time::Instant::now();
            let net = lab.net();
            while t0.elapsed() < hold {
                let out = match &net {
                    // The receiver's side of each connection, in its namespace.
                    Some(net) => std::process::Command::new("ip")
                        .args(["netns", "exec", &net.namespace(&host), "ss", "-K", "-t", "sport", "="])
                        .arg(format!(":{port}"))
                        .output()?,
                    None => std::process::Command::new("ss")
                        .args(["-K", "-t", "dst", "127.0.0.1", "dport", "=", &format!(":{port}")])
                        .output()?,
                };
                cut += String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .skip(1)
                    .filter(|l| l.contains(&format!(":{port}")))
                    .count();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(FaultEffect { target: format!("connections to {host}:{port} ({cut} cut)"), ..Default::default() })
        }
        FaultKind::BandwidthLimit | FaultKind::Partition if lab.net().is_some() => {
            let net = lab.net().ok_or_else(|| anyhow!("the lab's network is gone"))?;
            // The link between the sites' hosts, each in its namespace.
            let numbered: Vec<(&str, usize)> =
                crate::lab::numbered_hosts().into_iter().filter(|(h, _)| hosts.iter().any(|x| x == h)).collect();
            let ny: Vec<(&str, usize)> = numbered.iter().copied().filter(|(h, _)| h.starts_with("ny")).collect();
            let chi: Vec<(&str, usize)> = numbered.iter().copied().filter(|(h, _)| h.starts_with("chi")).collect();
            let names = |v: &[(&str, usize)]| v.iter().map(|h| h.0).collect::<Vec<_>>().join(", ");
            if kind == FaultKind::Partition {
                let hold = hold * 2;
                let cut = NetFault::partition(net, ny.clone(), chi.clone())?;
                tokio::time::sleep(hold).await;
                cut.end()?;
                let target = format!("partition between {} and {} (blackhole routes)", names(&ny), names(&chi));
                Ok(FaultEffect { target, held: Some(hold), ..Default::default() })
            } else {
                // Slow enough that cycles take longer than the copy frequency while it lasts.
                let hold = hold * 4;
                let slow = NetFault::limit(net, numbered.clone(), 256)?;
                tokio::time::sleep(hold).await;
                slow.end()?;
                let target = format!("256 kbit/s on the links of {} (tc tbf)", names(&numbered));
                Ok(FaultEffect { target, held: Some(hold), ..Default::default() })
            }
        }
        FaultKind::BandwidthLimit | FaultKind::Partition => {
            // The link between the sites: every host's replication port, both directions.
            let ports: Vec<u16> = hosts.iter().filter_map(|h| lab.replication_port(h)).collect();
            let (shape, hold) = if kind == FaultKind::Partition {
                (Shape::Partition, hold * 2)
            } else {
                // Slow enough that cycles take longer than the copy frequency while it lasts.
                (Shape::RateKbit(256), hold * 4)
            };
            let link = ShapedLink::install(&ports, shape)?;
            tokio::time::sleep(hold).await;
            let target = format!("{shape:?} on the replication link (ports {:?})", link.ports());
            drop(link);
            Ok(FaultEffect { target, held: Some(hold), ..Default::default() })
        }
        FaultKind::ReplicaLocationFull | FaultKind::ClockOffset | FaultKind::BitFlip => {
            Err(anyhow!("fault {kind:?} is run by the soak itself (it checks invariant 4 while it lasts)"))
        }
    }
}

/// A partition or a bandwidth limit on the links of a lab whose hosts run in namespaces; it
/// ends when dropped, also when the soak fails meanwhile.
struct NetFault {
    net: crate::lab_net::LabNet,
    a: Vec<(&'static str, usize)>,
    b: Vec<(&'static str, usize)>,
    /// None: a partition between `a` and `b`; Some: a rate limit on `a`'s links.
    kbit: Option<u64>,
    ended: bool,
}

impl NetFault {
    fn partition(
        net: crate::lab_net::LabNet,
        a: Vec<(&'static str, usize)>,
        b: Vec<(&'static str, usize)>,
    ) -> Result<Self> {
        let f = NetFault { net, a, b, kbit: None, ended: false };
        f.net.partition(&f.a, &f.b)?;
        Ok(f)
    }

    fn limit(net: crate::lab_net::LabNet, hosts: Vec<(&'static str, usize)>, kbit: u64) -> Result<Self> {
        let f = NetFault { net, a: hosts, b: Vec::new(), kbit: Some(kbit), ended: false };
        for (h, _) in &f.a {
            f.net.limit(h, kbit)?;
        }
        Ok(f)
    }

    fn undo(&self) -> Result<()> {
        match self.kbit {
            None => self.net.heal(&self.a, &self.b),
            Some(_) => self.a.iter().map(|(h, _)| self.net.unlimit(h)).fold(Ok(()), Result::and),
        }
    }

    fn end(mut self) -> Result<()> {
        self.ended = true;
        self.undo()
    }
}

impl Drop for NetFault {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.undo();
        }
    }
}

/// Flip one bit of the data a qcow2 layer holds (the `pick`-th data extent, a byte inside it).
/// Returns the layer's virtual offset that now reads differently, or None if it holds no data.
pub fn flip_bit_in_layer(layer: &std::path::Path, pick: usize) -> Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let map = ferry_repl::qcow2::map_layer(layer)?;
    let data: Vec<_> = map.iter().filter(|e| e.data && e.offset.is_some()).collect();
    let Some(e) = data.get(pick % data.len().max(1)) else { return Ok(None) };
    let within = (pick as u64 * 4099) % e.length;
    let host = e.offset.unwrap_or(0) + within;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(layer)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, host)?;
    b[0] ^= 1 << (pick % 8);
    f.write_all_at(&b, host)?;
    f.sync_all()?;
    Ok(Some(e.start + within))
}

/// Where Debian's libfaketime puts its library (package `faketime`).
const LIBFAKETIME: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"];

/// The environment that runs a process with its wall clock `offset_secs` off (libfaketime; the
/// monotonic clock stays right, as with a wrongly set host clock). Children inherit it: the VMs
/// a host agent starts meanwhile run on the wrong clock too, as they would on that host.
pub fn wrong_clock_env(offset_secs: i64) -> Result<Vec<(String, String)>> {
    let lib = LIBFAKETIME
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("libfaketime is not installed (apt install faketime)"))?;
    Ok(vec![
        ("LD_PRELOAD".into(), lib.to_string()),
        ("FAKETIME".into(), format!("{offset_secs:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}
