//! `ferry bench replication`: measures the data plane end to end on this machine, with a real QEMU
//! (VM without OS, data written through HMP qemu-io) and a receiver on loopback mTLS in the same
//! process.
//!
//! Figures: initial replication throughput vs a plain sequential read of the same image; a delta
//! cycle's wall time and CPU per changed GiB (this process = sender + receiver, and QEMU's own
//! CPU); wire bytes per changed byte with and without zstd on mixed data (half random, half
//! text-like); the cost of an idle cycle on a large sparse disk; peak resident memory.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_qemu::img::{self, CreateOptions};
use ferry_qemu::{Accel, Boot, DiskFormat, DiskSpec, Qemu, RunningVm, VmSpec};

use crate::capture::CaptureDisk;
use crate::engine::{Primary, PrimaryConfig};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::receiver::{Receiver, ReceiverConfig};
use crate::transport::{Allowlist, TlsIdentity};

const MIB: u64 = 1 << 20;

/// Bench sizes.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scratch directory (images, replica); must have room for about 3× `data_mib`.
    pub work_dir: PathBuf,
    /// Allocated data for the initial replication.
    pub data_mib: u64,
    /// Changed data of the delta cycle (256 KiB writes spread over the disk).
    pub delta_mib: u64,
    /// Changed data of each compression cycle (half random, half text-like).
    pub mixed_mib: u64,
    /// Virtual size of the sparse disk of the idle cycle.
    pub idle_disk_gib: u64,
}

impl BenchOptions {
    /// Defaults: 1 GiB initial data, 256 MiB delta, 64 MiB mixed, 100 GiB idle disk.
    pub fn new(work_dir: &Path) -> Self {
        Self { work_dir: work_dir.to_path_buf(), data_mib: 1024, delta_mib: 256, mixed_mib: 64, idle_disk_gib: 100 }
    }
}

/// Measured figures.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub data_bytes: u64,
    pub initial_time: Duration,
    /// Seed capture (QEMU full copy to staging) part of `initial_time`.
    pub initial_capture_time: Duration,
    pub initial_mib_s: f64,
    pub seq_read_mib_s: f64,
    pub delta_bytes: u64,
    pub delta_time: Duration,
    pub delta_capture_time: Duration,
    /// CPU seconds of this process (sender + receiver) per changed GiB.
    pub delta_cpu_s_per_gib: f64,
    /// CPU seconds of QEMU per changed GiB (backup job).
    pub delta_qemu_cpu_s_per_gib: f64,
    pub delta_wall_s_per_gib: f64,
    pub mixed_bytes: u64,
    pub wire_ratio_raw: f64,
    pub wire_ratio_zstd: f64,
    pub mixed_time_raw: Duration,
    pub mixed_time_zstd: Duration,
    pub idle_disk_bytes: u64,
    pub idle_cycle_time: Duration,
    pub idle_wire_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / MIB as f64;
        writeln!(f, "Ferry replication bench (loopback mTLS, QEMU backup jobs, direct qcow2 writer)")?;
        writeln!(
            f,
            "  initial replication  {:>8.1} MiB in {:>6.2} s (seed capture {:.2} s) = {:>7.1} MiB/s   (sequential read of the image: {:.1} MiB/s)",
            mib(self.data_bytes),
            self.initial_time.as_secs_f64(),
            self.initial_capture_time.as_secs_f64(),
            self.initial_mib_s,
            self.seq_read_mib_s
        )?;
        writeln!(
            f,
            "  delta cycle          {:>8.1} MiB in {:>6.2} s (capture {:.2} s) = {:.2} s/GiB wall, {:.2} CPU-s/GiB agent, {:.2} CPU-s/GiB QEMU",
            mib(self.delta_bytes),
            self.delta_time.as_secs_f64(),
            self.delta_capture_time.as_secs_f64(),
            self.delta_wall_s_per_gib,
            self.delta_cpu_s_per_gib,
            self.delta_qemu_cpu_s_per_gib
        )?;
        writeln!(
            f,
            "  wire/changed bytes   {:.3} raw ({:.2} s), {:.3} zstd ({:.2} s) on {:.0} MiB mixed data",
            self.wire_ratio_raw,
            self.mixed_time_raw.as_secs_f64(),
            self.wire_ratio_zstd,
            self.mixed_time_zstd.as_secs_f64(),
            mib(self.mixed_bytes)
        )?;
        writeln!(
            f,
            "  idle cycle           {:.0} GiB sparse disk: {:.3} s, {} wire bytes",
            self.idle_disk_bytes as f64 / (1u64 << 30) as f64,
            self.idle_cycle_time.as_secs_f64(),
            self.idle_wire_bytes
        )?;
        write!(f, "  peak resident memory {:.1} MiB", mib(self.peak_rss_bytes))
    }
}

struct Killer(u32);

impl Drop for Killer {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the QEMU this bench started.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

fn cpu_self() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_of(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(rest) = s.rsplit_once(')').map(|x| x.1) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / hz
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

fn fill_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (rnd, txt) = (dir.join("random.bin"), dir.join("text.bin"));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut r = vec![0u8; 4 * MIB as usize];
    for c in r.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::fs::write(&rnd, &r).map_err(|e| Error::io("Cannot write bench data", e))?;
    let words = ["replica ", "point ", "cluster ", "bitmap\n", "the ", "vault ", "host ", "qcow2 ", "of ", "data "];
    let mut t = String::with_capacity(4 * MIB as usize + 16);
    let mut i = 0usize;
    while t.len() < 4 * MIB as usize {
        t.push_str(words[i % words.len()]);
        i = i.wrapping_mul(7).wrapping_add(3) % 1_000_003;
    }
    t.truncate(4 * MIB as usize);
    std::fs::write(&txt, t).map_err(|e| Error::io("Cannot write bench data", e))?;
    Ok((rnd, txt))
}

async fn start_vm(dir: &Path, name: &str, size: u64) -> Result<(RunningVm, Killer, PathBuf)> {
    let disk = dir.join(format!("{name}.qcow2"));
    img::create(&disk, DiskFormat::Qcow2, &CreateOptions { size: Some(size), ..Default::default() })
        .await
        .map_err(|e| Error::qemu("Cannot create bench disk", e))?;
    let spec = VmSpec {
        name: name.into(),
        uuid: uuid::Uuid::new_v4(),
        vcpus: 1,
        memory_mib: 64,
        disks: vec![DiskSpec { target: "vda".into(), path: disk.clone(), format: DiskFormat::Qcow2 }],
        nics: vec![],
        guest_agent: false,
        boot: Boot::Disk,
        accel: Accel::Tcg,
        extra_serial_log: None,
    };
    let vm =
        Qemu::start(&spec, &dir.join(format!("run-{name}"))).await.map_err(|e| Error::qemu("Cannot start QEMU", e))?;
    let k = Killer(vm.pid());
    vm.qmp().execute("stop", serde_json::Value::Null).await.map_err(|e| Error::qemu("Cannot pause vCPUs", e))?;
    Ok((vm, k, disk))
}

async fn write(vm: &RunningVm, file: &Path, off: u64, len: u64) -> Result<()> {
    vm.qmp()
        .qemu_io("vda", &format!("write -q -s {} {off} {len}", file.display()))
        .await
        .map_err(|e| Error::qemu("Bench write failed", e))
}

/// Run the bench.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let dir = &opts.work_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("Cannot create {}", dir.display()), e))?;
    let mut rep = BenchReport::default();
    let (rnd, txt) = fill_files(dir)?;
    // PKI and receiver.
    let ca = ferry_pki::Ca::create("ferry-bench").ctx(ErrorKind::Tls, || "Cannot create bench CA".into())?;
    let ident = |cn: &str| -> Result<TlsIdentity> {
        let c = ca
            .issue_server_cert(cn, &["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .ctx(ErrorKind::Tls, || "Cannot issue bench cert".into())?;
        Ok(TlsIdentity { ca_pem: ca.cert_pem().into(), cert_pem: c.cert_pem, key_pem: c.key_pem })
    };
    let (rid, pid) = (ident("host-bench-replica")?, ident("host-bench-primary")?);
    let allow = Allowlist::new();
    allow.allow_any_pair("host-bench-primary");
    let root = dir.join("replica");
    let _ = std::fs::remove_dir_all(&root);
    let rx = Receiver::start(ReceiverConfig::new(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        rid.server_config()?,
        allow,
        root.clone(),
    ))
    .await?;
    let tls = pid.client_config()?;

    // 1. Initial replication of data_mib (4 MiB chunks, alternating random / text).
    let size = (opts.data_mib + 512) * MIB;
    let (vm, _k, disk) = start_vm(dir, "bench-src", size).await?;
    for i in 0..opts.data_mib / 4 {
        write(&vm, if i % 2 == 0 { &rnd } else { &txt }, i * 4 * MIB, 4 * MIB).await?;
    }
    let vm = Arc::new(vm);
    let disks = vec![CaptureDisk { target: "vda".into(), size, format: DiskFormat::Qcow2 }];
    let staging = dir.join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    let cfg = PrimaryConfig::new("bench-vm", "bench", disks, &staging, rx.local_addr(), "localhost", tls.clone());
    let mut p = Primary::new(cfg, vm.clone())?;
    let t = Instant::now();
    let r = p.seed_and_initial().await?;
    rep.initial_time = t.elapsed();
    rep.initial_capture_time = r.capture_time;
    rep.data_bytes = r.data_bytes;
    rep.initial_mib_s = r.data_bytes as f64 / MIB as f64 / rep.initial_time.as_secs_f64();
    // Plain sequential read of the same image file.
    let t = Instant::now();
    let f = std::fs::File::open(&disk).map_err(|e| Error::io("Cannot open bench disk", e))?;
    let len = f.metadata().map_err(|e| Error::io("Cannot stat bench disk", e))?.len();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < len {
        let n = f.read_at(&mut buf, off).map_err(|e| Error::io("Cannot read bench disk", e))?;
        if n == 0 {
            break;
        }
        off += n as u64;
    }
    rep.seq_read_mib_s = off as f64 / MIB as f64 / t.elapsed().as_secs_f64();

    // 2. Delta cycle: delta_mib in 256 KiB writes spread over the data area.
    let writes = opts.delta_mib * 4;
    let span = opts.data_mib * MIB / (256 << 10);
    for i in 0..writes {
        let slot = (i * 7919) % span.max(1);
        write(&vm, &rnd, slot * (256 << 10), 256 << 10).await?;
    }
    let (c0, q0) = (cpu_self(), cpu_of(vm.pid()));
    let r = p.run_cycle(false).await?;
    let (c1, q1) = (cpu_self(), cpu_of(vm.pid()));
    rep.delta_bytes = r.data_bytes;
    rep.delta_time = r.total_time;
    rep.delta_capture_time = r.capture_time;
    let gib = (r.data_bytes as f64 / (1u64 << 30) as f64).max(1e-9);
    rep.delta_cpu_s_per_gib = (c1 - c0) / gib;
    rep.delta_qemu_cpu_s_per_gib = (q1 - q0) / gib;
    rep.delta_wall_s_per_gib = r.total_time.as_secs_f64() / gib;

    // 3. Mixed data without and with zstd.
    for compress in [false, true] {
        for i in 0..opts.mixed_mib / 4 {
            write(&vm, if i % 2 == 0 { &rnd } else { &txt }, (i * 4 + u64::from(compress) * 256) * MIB % size, 4 * MIB)
                .await?;
        }
        p.set_compression(compress);
        let r = p.run_cycle(false).await?;
        rep.mixed_bytes = r.data_bytes;
        let ratio = r.send.wire_bytes as f64 / r.data_bytes.max(1) as f64;
        if compress {
            rep.wire_ratio_zstd = ratio;
            rep.mixed_time_zstd = r.total_time;
        } else {
            rep.wire_ratio_raw = ratio;
            rep.mixed_time_raw = r.total_time;
        }
    }
    drop(p);
    vm.hard_stop().await.map_err(|e| Error::qemu("Cannot stop bench VM", e))?;

    // 4. Idle cycle on a big sparse disk.
    let idle_size = opts.idle_disk_gib << 30;
    let (vm2, _k2, _disk2) = start_vm(dir, "bench-idle", idle_size).await?;
    let vm2 = Arc::new(vm2);
    let disks = vec![CaptureDisk { target: "vda".into(), size: idle_size, format: DiskFormat::Qcow2 }];
    let staging2 = dir.join("staging-idle");
    let _ = std::fs::remove_dir_all(&staging2);
    let cfg = PrimaryConfig::new("bench-idle", "bench", disks, &staging2, rx.local_addr(), "localhost", tls);
    let mut p2 = Primary::new(cfg, vm2.clone())?;
    p2.seed_and_initial().await?;
    let r = p2.run_cycle(false).await?;
    rep.idle_disk_bytes = idle_size;
    rep.idle_cycle_time = r.total_time;
    rep.idle_wire_bytes = r.send.wire_bytes;
    drop(p2);
    vm2.hard_stop().await.map_err(|e| Error::qemu("Cannot stop bench VM", e))?;
    rep.peak_rss_bytes = peak_rss();
    drop(rx);
    let _ = std::fs::remove_dir_all(&root);
    Ok(rep)
}
