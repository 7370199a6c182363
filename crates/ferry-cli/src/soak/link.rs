//! The replication link between the lab's hosts, shaped on the loopback device with `tc`: a
//! bandwidth limit (an HTB class at a low rate) or a partition (a class at 8 bit/s with a
//! everything to and from the ports is dropped, connections hang until their
//! timeouts, as when a WAN link goes down). Only traffic to or from the given replication ports
//! is classified; everything else on loopback passes at full speed.
//!
//! (netem is missing from these kernels, and `prio` and the drop action are not built in; HTB
//! with u32 filters is.) The shaping is removed when the guard drops, also on a panic. It needs
//! root; without it the fault is reported as not injected.

use std::process::Command;

use anyhow::{bail, Context, Result};

const DEV: &str = "lo";

/// Traffic control on loopback that the soak installed; removed on drop.
pub struct ShapedLink {
    ports: Vec<u16>,
}

/// What to do to the classified traffic.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// At most this many kilobits per second.
    RateKbit(u32),
    /// Nothing passes.
    Partition,
}

fn tc(args: &[&str]) -> Result<()> {
    let out = Command::new("tc").args(args).output().context("cannot run tc")?;
    if !out.status.success() {
        bail!("tc {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl ShapedLink {
    /// Shape traffic to and from `ports` on loopback. Refused when loopback already has a
    /// queueing discipline of someone else.
    pub fn install(ports: &[u16], shape: Shape) -> Result<ShapedLink> {
        if ports.is_empty() {
            bail!("no replication port to shape");
        }
        let now = Command::new("tc").args(["qdisc", "show", "dev", DEV]).output().context("cannot run tc")?;
        let now = String::from_utf8_lossy(&now.stdout);
        if !now.trim().is_empty() && !now.contains("noqueue") {
            bail!("{DEV} has a queueing discipline already: {}", now.trim());
        }
        tc(&["qdisc", "add", "dev", DEV, "root", "handle", "1:", "htb", "default", "20", "r2q", "1000"])?;
        // From here on the guard removes whatever was added.
        let link = ShapedLink { ports: ports.to_vec() };
        tc(&[
            "class", "add", "dev", DEV, "parent", "1:", "classid", "1:20", "htb", "rate", "40gbit", "quantum", "65536",
        ])?;
        let rate = match shape {
            Shape::RateKbit(k) => format!("{k}kbit"),
            Shape::Partition => "8bit".to_string(),
        };
        tc(&[
            "class", "add", "dev", DEV, "parent", "1:", "classid", "1:10", "htb", "rate", &rate, "ceil", &rate,
            "quantum", "1514",
        ])?;
        if matches!(shape, Shape::Partition) {
            tc(&["qdisc", "add", "dev", DEV, "parent", "1:10", "handle", "10:", "pfifo", "limit", "0"])?;
        }
        for p in ports {
            for dir in ["dport", "sport"] {
                tc(&[
                    "filter",
                    "add",
                    "dev",
                    DEV,
                    "parent",
                    "1:",
                    "protocol",
                    "ip",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "ip",
                    dir,
                    &p.to_string(),
                    "0xffff",
                    "flowid",
                    "1:10",
                ])?;
            }
        }
        Ok(link)
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        let _ = tc(&["qdisc", "del", "dev", DEV, "root", "handle", "1:"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// A connected pair through `listener`: (sender, receiver).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let tx = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (rx, _) = listener.accept().expect("accept");
        tx.set_write_timeout(Some(Duration::from_millis(200))).expect("timeout");
        rx.set_nonblocking(true).expect("nonblocking");
        (tx, rx)
    }

    /// Bytes per second that get through from `tx` to `rx` for `secs`.
    fn throughput((tx, rx): &mut (TcpStream, TcpStream), secs: f64) -> f64 {
        let buf = vec![7u8; 65536];
        let mut got = 0usize;
        let mut sink = vec![0u8; 1 << 20];
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            let _ = tx.write(&buf);
            while let Ok(n) = rx.read(&mut sink) {
                if n == 0 {
                    break;
                }
                got += n;
            }
        }
        got as f64 / secs
    }

    fn root_with_tc() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
            && Command::new("tc").arg("-V").output().is_ok_and(|o| o.status.success())
    }

    #[test]
    fn shaping_limits_then_partitions_only_the_given_ports_and_is_removed() {
        if !root_with_tc() {
            eprintln!("skipped: shaping loopback needs root and tc");
            return;
        }
        let shaped = TcpListener::bind("127.0.0.1:0").expect("bind");
        let free = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = shaped.local_addr().expect("addr").port();
        {
            let _link = ShapedLink::install(&[port], Shape::RateKbit(800)).expect("install");
            let limited = throughput(&mut pair(&shaped), 1.5);
            assert!(limited < 400_000.0, "800 kbit/s is about 100 kB/s, measured {limited} B/s");
            let other = throughput(&mut pair(&free), 0.5);
            assert!(other > 10_000_000.0, "other ports pass at full speed: {other} B/s");
            assert!(ShapedLink::install(&[port], Shape::Partition).is_err(), "one shaping at a time");
        }
        // A connection open when the link goes down gets nothing through.
        let mut open = pair(&shaped);
        assert!(throughput(&mut open, 0.3) > 10_000_000.0, "full speed before the partition");
        {
            let _link = ShapedLink::install(&[port], Shape::Partition).expect("install");
            let cut = throughput(&mut open, 1.0);
            // What was queued in the socket buffers before the partition may still arrive.
            let cut_later = throughput(&mut open, 1.0);
            assert!(cut_later == 0.0, "nothing passes a partition: {cut} then {cut_later} B/s");
            let other = throughput(&mut pair(&free), 0.5);
            assert!(other > 10_000_000.0, "other ports pass at full speed: {other} B/s");
        }
        let after = Command::new("tc").args(["qdisc", "show", "dev", DEV]).output().expect("tc");
        assert!(!String::from_utf8_lossy(&after.stdout).contains("htb"), "the shaping is gone");
        assert!(throughput(&mut pair(&shaped), 0.5) > 10_000_000.0, "full speed again");
    }
}
