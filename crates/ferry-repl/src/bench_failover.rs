//! `ferry bench failover`: the failover figures of the data plane on this machine (issue 5,
//! "Speed"), with a real QEMU and a receiver on loopback mutual TLS in this process:
//!
//! | # | target | how it is measured |
//! |---|--------|--------------------|
//! | 1 | failover → replica's QEMU running ≤ 2 s per VM (before guest boot) | failover overlays on the latest point of a replica, then QEMU started on them until its QMP answers |
//! | 2 | reverse replication after a planned failover: bytes sent ≤ 1.1× the blocks changed since | the recovered VM writes scattered data; the original disk is adopted as the reverse replica's base; what the top-layer onboarding sends is compared with what was written |
//!
//! The hash-comparison fallback (used after an unplanned failover) is measured on the same
//! change for comparison. Step 1 is the host side of a failover; the vault → site → host round
//! trips of the job come on top (a few hundred milliseconds on loopback, see the job's task times).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_qemu::{Accel, Boot, DiskFormat, DiskSpec, Qemu, VmSpec};

use crate::bench::{kind_of, start_vm, write_pieces, Killer, Kind, Patterns, Piece, CHUNK, MIB};
use crate::capture::CaptureDisk;
use crate::engine::{Primary, PrimaryConfig};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::receiver::{Receiver, ReceiverConfig};
use crate::resync::{ResyncLimits, ResyncOutcome};
use crate::transport::{Allowlist, TlsIdentity};

/// Bench sizes.
#[derive(Debug, Clone)]
pub struct FailoverBenchOptions {
    pub work_dir: PathBuf,
    /// Data written before the failover, MiB.
    pub data_mib: u64,
    /// Data the recovered VM writes before reverse replication, MiB (256 KiB pieces, scattered).
    pub changed_mib: u64,
}

impl FailoverBenchOptions {
    pub fn new(work_dir: &Path) -> Self {
        Self { work_dir: work_dir.to_path_buf(), data_mib: 256, changed_mib: 16 }
    }
}

#[derive(Debug, Default, Clone)]
pub struct FailoverBenchReport {
    pub disk_bytes: u64,
    pub data_bytes: u64,
    /// Failover overlays on the latest point.
    pub overlays: Duration,
    /// QEMU started on the overlays until its QMP answers.
    pub qemu_start: Duration,
    pub changed_bytes: u64,
    pub reverse_sent: u64,
    pub reverse_wire: u64,
    pub reverse_time: Duration,
    pub hash_sent: u64,
    pub hash_time: Duration,
}

const PIECE: u64 = 256 << 10;

impl fmt::Display for FailoverBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / MIB as f64;
        let total = self.overlays + self.qemu_start;
        let ratio = self.reverse_sent as f64 / self.changed_bytes.max(1) as f64;
        let hash_ratio = self.hash_sent as f64 / self.changed_bytes.max(1) as f64;
        writeln!(
            f,
            "Ferry failover bench ({:.0} MiB disk, {:.0} MiB data)",
            mib(self.disk_bytes),
            mib(self.data_bytes)
        )?;
        writeln!(
            f,
            "1. failover → QEMU running: {:.0} ms (overlays {:.0} ms + QEMU start {:.0} ms); target ≤ 2000 ms: {:.2}× of the limit [{}]",
            total.as_secs_f64() * 1e3,
            self.overlays.as_secs_f64() * 1e3,
            self.qemu_start.as_secs_f64() * 1e3,
            total.as_secs_f64() / 2.0,
            if total <= Duration::from_secs(2) { "met" } else { "missed" }
        )?;
        writeln!(
            f,
            "2. reverse replication after a planned failover: {:.1} MiB sent ({:.1} MiB on the wire) for {:.1} MiB changed = {ratio:.3}× in {:.0} ms; target ≤ 1.1× [{}]",
            mib(self.reverse_sent),
            mib(self.reverse_wire),
            mib(self.changed_bytes),
            self.reverse_time.as_secs_f64() * 1e3,
            if ratio <= 1.1 { "met" } else { "missed" }
        )?;
        writeln!(
            f,
            "   hash-comparison fallback (unplanned failover): {:.1} MiB sent = {hash_ratio:.3}× in {:.0} ms ({:.1}% of the disk)",
            mib(self.hash_sent),
            self.hash_time.as_secs_f64() * 1e3,
            self.hash_sent as f64 * 100.0 / self.disk_bytes.max(1) as f64
        )
    }
}

fn identity(ca: &ferry_pki::Ca, cn: &str) -> Result<TlsIdentity> {
    let c = ca
        .issue_server_cert(cn, &["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .ctx(ErrorKind::Tls, || "Cannot issue bench cert".into())?;
    Ok(TlsIdentity { ca_pem: ca.cert_pem().into(), cert_pem: c.cert_pem, key_pem: c.key_pem, live: None })
}

async fn receiver(root: &Path, id: &TlsIdentity) -> Result<Receiver> {
    let allow = Allowlist::new();
    allow.allow_any_pair("host-bench-primary");
    let _ = std::fs::remove_dir_all(root);
    Receiver::start(ReceiverConfig::new(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        id.server_config()?,
        allow,
        root.to_path_buf(),
    ))
    .await
}

pub async fn run(opts: &FailoverBenchOptions) -> Result<FailoverBenchReport> {
    let dir = &opts.work_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("Cannot create {}", dir.display()), e))?;
    let ca = ferry_pki::Ca::create("ferry-bench").ctx(ErrorKind::Tls, || "Cannot create bench CA".into())?;
    let (rid, pid) = (identity(&ca, "host-bench-replica")?, identity(&ca, "host-bench-primary")?);
    let tls = pid.client_config()?;
    let gen = Patterns::new();
    let pat = dir.join("pattern.bin");
    let chunks = (opts.data_mib / 4).max(2);
    let data = chunks * CHUNK;
    let size = data + 256 * MIB;
    let mut rep = FailoverBenchReport { disk_bytes: size, data_bytes: data, ..Default::default() };

    // The protected VM, replicated, then shut down (planned failover: the replica has it all).
    let rx = receiver(&dir.join("replica"), &rid).await?;
    let (vm, killer, disks) = start_vm(dir, "bench-orig", &[size]).await?;
    let original = disks.first().cloned().ok_or_else(|| Error::new(ErrorKind::Invalid, "No bench disk"))?;
    let initial: Vec<Piece> =
        (0..chunks).map(|i| Piece { offset: i * CHUNK, len: CHUNK, kind: kind_of(i), seed: i }).collect();
    write_pieces(&vm, "vda", &pat, &gen, &initial).await?;
    let vm = Arc::new(vm);
    let cdisks = vec![CaptureDisk { target: "vda".into(), size, format: DiskFormat::Qcow2 }];
    let cfg = PrimaryConfig::new(
        "bench-fwd",
        "bench",
        cdisks.clone(),
        &dir.join("staging-fwd"),
        rx.local_addr(),
        "localhost",
        tls.clone(),
    );
    let mut p = Primary::new(cfg, vm.clone())?;
    p.seed_and_initial().await?;
    drop(p);
    let _ = vm.qmp().execute("quit", serde_json::Value::Null).await;
    drop(vm);
    drop(killer);

    // 1. Failover: overlays on the latest point, QEMU on them.
    let replica = rx.store().vm("bench-fwd").await?;
    let latest = replica
        .recovery_points()?
        .last()
        .map(|p| p.id.clone())
        .ok_or_else(|| Error::new(ErrorKind::Store, "No point"))?;
    let t0 = Instant::now();
    let ov = replica.begin_failover(&latest, &dir.join("failover")).await?;
    rep.overlays = t0.elapsed();
    let spec = VmSpec {
        name: "bench-recovered".into(),
        uuid: uuid::Uuid::new_v4(),
        vcpus: 1,
        memory_mib: 64,
        disks: ov
            .disks
            .iter()
            .map(|(t, path)| DiskSpec { target: t.clone(), path: path.clone(), format: DiskFormat::Qcow2 })
            .collect(),
        nics: vec![],
        guest_agent: false,
        boot: Boot::Disk,
        accel: Accel::Tcg,
        extra_serial_log: None,
    };
    let t1 = Instant::now();
    let recovered =
        Qemu::start(&spec, &dir.join("run-recovered")).await.map_err(|e| Error::qemu("Cannot start QEMU", e))?;
    rep.qemu_start = t1.elapsed();
    let _k = Killer(recovered.pid());
    let recovered = Arc::new(recovered);

    // The recovered VM writes scattered 256 KiB pieces (incompressible).
    let pieces = (opts.changed_mib * MIB / PIECE).max(1);
    let stride = (data / pieces).max(PIECE) / (64 << 10) * (64 << 10);
    let changes: Vec<Piece> =
        (0..pieces).map(|i| Piece { offset: i * stride, len: PIECE, kind: Kind::Random, seed: 1000 + i }).collect();
    write_pieces(&recovered, "vda", &pat, &gen, &changes).await?;
    rep.changed_bytes = pieces * PIECE;

    // 2. Reverse replication onto the original disk, top layer only.
    let back = receiver(&dir.join("back"), &rid).await?;
    back.store()
        .vm("bench-back")
        .await?
        .adopt_existing(&[("vda".into(), original.clone())], chrono::Utc::now())
        .await?;
    let cfg = PrimaryConfig::new(
        "bench-back",
        "bench",
        cdisks.clone(),
        &dir.join("staging-back"),
        back.local_addr(),
        "localhost",
        tls.clone(),
    );
    let mut rev = Primary::new(cfg, recovered.clone())?;
    let t2 = Instant::now();
    let r = rev.onboard_top_layer().await?;
    rep.reverse_time = t2.elapsed();
    rep.reverse_sent = r.data_bytes;
    rep.reverse_wire = r.send.wire_bytes;
    drop(rev);

    // The fallback: block-hash comparison against the same original disk.
    let hash = receiver(&dir.join("hash"), &rid).await?;
    hash.store().vm("bench-hash").await?.adopt_existing(&[("vda".into(), original)], chrono::Utc::now()).await?;
    let cfg = PrimaryConfig::new(
        "bench-hash",
        "bench",
        cdisks,
        &dir.join("staging-hash"),
        hash.local_addr(),
        "localhost",
        tls,
    );
    let mut cmp = Primary::new(cfg, recovered.clone())?;
    let t3 = Instant::now();
    match cmp.resync(&ResyncLimits::default()).await? {
        ResyncOutcome::Completed { report, .. } => rep.hash_sent = report.data_bytes,
        ResyncOutcome::Paused { .. } => {
            return Err(Error::new(ErrorKind::Invalid, "Comparison paused without a limit"))
        }
    }
    rep.hash_time = t3.elapsed();
    Ok(rep)
}
