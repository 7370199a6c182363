//! `ferry bench replication`: measures the data plane end to end on this machine, with a real QEMU
//! (VM without OS, data written through HMP qemu-io) and a receiver on loopback mTLS in the same
//! process, and sets every figure side by side with its target (issue 4, "Benchmark") in one run
//! on the same data:
//!
//! | # | target | baseline measured in the same run |
//! |---|--------|-----------------------------------|
//! | 1a | initial replication ≥ 0.8× sequential read | `O_DIRECT` read of the source image (cold); beside it a plain local copy of the image onto the replica's file system (the storage bound) |
//! | 1b | initial replication ≥ 2.3× rsync over loopback | `rsync --whole-file` to an `rsync --daemon` on 127.0.0.1 |
//! | 2 | delta cycle at 1 % change ≥ 40× cheaper (wall) | rsync delta algorithm, destination holds the previous version; three rounds of their own change each, medians set against each other |
//! | 3 | delta CPU ≤ 1.25× read + blake3 + zstd-1 + TLS of the changed bytes alone | that pipeline on one thread, `CLOCK_THREAD_CPUTIME_ID`, right after each of three zstd cycles; the median round's ratio |
//! | 4 | wire ≤ changed × zstd's own ratio + 2 % | `zstd -1` as one stream over the same changed bytes |
//! | 5 | idle cycle ≤ 50 ms on a 100 GiB sparse disk | — |
//! | 6 | ≤ 200 MiB resident replicating 10 disks | `VmHWM` after resetting it (`/proc/self/clear_refs`) |
//!
//! CPU accounting: the receiver runs on its own runtime whose threads are tracked, so "agent" is
//! this process minus the receiver; QEMU's CPU comes from `/proc/<pid>/stat`, `qemu-img` runs from
//! `RUSAGE_CHILDREN`. Before every measured pass, Ferry's and the baselines' alike, the file
//! system is synced (rsync leaves its writes in the page cache) and the page cache of the source
//! image dropped (`fdatasync` + `POSIX_FADV_DONTNEED`). Mixed data is half random, a quarter
//! log-like text and a quarter executable code. The replica side (replica, rsync destination,
//! local copy) writes under the work directory unless `replica_dir` points at other storage.

use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_qemu::img::{self, CreateOptions};
use ferry_qemu::{Accel, Boot, DiskFormat, DiskSpec, Qemu, RunningVm, VmSpec};

use crate::capture::CaptureDisk;
use crate::data_sink::{AlignedBuf, DIRECT_ALIGN};
use crate::engine::{CycleReport, Primary, PrimaryConfig};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::image::{ChainReader, SEND_CHUNK};
use crate::receiver::{Receiver, ReceiverConfig};
use crate::transport::{Allowlist, TlsIdentity};

pub(crate) const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// qcow2 cluster = dirty-bitmap granularity.
const CLUSTER: u64 = 64 << 10;
/// Write unit of the initial and mixed data.
pub(crate) const CHUNK: u64 = 4 * MIB;
/// Bytes of a data frame before its payload.
const FRAME_HEADER: u64 = crate::protocol::DATA_FRAME_HEADER as u64;

/// Bench sizes.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scratch directory (images, replica, rsync copies); needs room for about 5× `data_mib`.
    pub work_dir: PathBuf,
    /// Allocated data for the initial replication (rounded down to 4 MiB).
    pub data_mib: u64,
    /// Share of the data changed (64 KiB blocks spread over it) in the delta cycle set against
    /// rsync, in percent.
    pub delta_percent: f64,
    /// Changed data of each of the two mixed-data cycles (raw and zstd; the CPU and wire targets),
    /// 4 MiB chunks spread over the data; at most `data_mib`.
    pub mixed_mib: u64,
    /// Virtual size of the sparse disk of the idle cycle.
    pub idle_disk_gib: u64,
    /// Idle cycles measured (the median is the figure).
    pub idle_cycles: u32,
    /// Delta rounds set against rsync (each its own change; the medians are the figures).
    pub delta_rounds: u32,
    /// Memory test: VMs × disks per VM (10 disks by default), each disk gets `mem_disk_mib` of
    /// new data per cycle, `mem_cycles` delta cycles after the seed, all VMs concurrently.
    pub mem_vms: u32,
    pub mem_disks_per_vm: u32,
    pub mem_disk_mib: u64,
    pub mem_cycles: u32,
    /// Run the rsync comparisons (when `rsync` is installed).
    pub rsync: bool,
    /// Where the replica, the rsync copies and the local copy are written (default: `work_dir`).
    /// Point it at other storage to measure as with a secondary site's own disks.
    pub replica_dir: Option<PathBuf>,
}

impl BenchOptions {
    /// Defaults: 1 GiB initial data, 1 % delta, 256 MiB mixed cycles, 3 idle cycles on a 100 GiB
    /// disk, 5 VMs × 2 disks × 32 MiB × 3 cycles for memory.
    pub fn new(work_dir: &Path) -> Self {
        Self {
            work_dir: work_dir.to_path_buf(),
            data_mib: 1024,
            delta_percent: 1.0,
            mixed_mib: 256,
            idle_disk_gib: 100,
            idle_cycles: 3,
            delta_rounds: 3,
            mem_vms: 5,
            mem_disks_per_vm: 2,
            mem_disk_mib: 32,
            mem_cycles: 3,
            rsync: true,
            replica_dir: None,
        }
    }
}

/// CPU seconds spent during one measured step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    /// This process minus the receiver's threads: the primary's agent (sender, QMP, planning).
    pub agent: f64,
    /// The VM's QEMU (reading the point and serving it over NBD).
    pub qemu: f64,
    /// Reaped child processes (`qemu-img create` / `map`).
    pub qemu_img: f64,
    /// The receiver (replica side; not part of the primary's cost).
    pub replica: f64,
}

impl CpuUse {
    /// Primary host's cost: agent + QEMU + qemu-img.
    pub fn primary(&self) -> f64 {
        self.agent + self.qemu + self.qemu_img
    }
}

/// One measured cycle.
#[derive(Debug, Clone, Default)]
pub struct CycleFigures {
    /// Changed (planned data) bytes.
    pub data_bytes: u64,
    /// Frame bytes sent (before TLS).
    pub wire_bytes: u64,
    pub extents: u64,
    pub wall: Duration,
    /// Capture (fleecing nodes, bitmap transaction, NBD export) part of `wall`.
    pub capture: Duration,
    pub cpu: CpuUse,
}

impl CycleFigures {
    fn of(r: &CycleReport, cpu: CpuUse) -> Self {
        Self {
            data_bytes: r.data_bytes,
            wire_bytes: r.send.wire_bytes,
            extents: r.send.extents_sent,
            wall: r.total_time,
            capture: r.capture_time,
            cpu,
        }
    }

    fn gib(&self) -> f64 {
        (self.data_bytes as f64 / GIB).max(1e-12)
    }

    /// Wall seconds per changed GiB.
    pub fn wall_s_per_gib(&self) -> f64 {
        self.wall.as_secs_f64() / self.gib()
    }

    /// Primary CPU seconds per changed GiB.
    pub fn cpu_s_per_gib(&self) -> f64 {
        self.cpu.primary() / self.gib()
    }

    /// Ship part of `wall` (plan, TLS, stream, durable ack).
    pub fn ship(&self) -> Duration {
        self.wall.saturating_sub(self.capture)
    }
}

/// The pipeline the CPU target compares against: read + blake3 + zstd-1 + TLS encryption of the
/// changed bytes alone, on one thread, 1 MiB at a time (CPU seconds per stage).
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub bytes: u64,
    pub read_s: f64,
    pub hash_s: f64,
    pub zstd_s: f64,
    pub tls_s: f64,
    pub wall: Duration,
    /// TLS record bytes produced / plaintext bytes fed (record overhead).
    pub tls_overhead: f64,
    pub cipher: String,
}

impl Baseline {
    /// Total CPU seconds.
    pub fn total(&self) -> f64 {
        self.read_s + self.hash_s + self.zstd_s + self.tls_s
    }
}

/// rsync figures (same image, same changes).
#[derive(Debug, Clone, Default)]
pub struct RsyncFigures {
    pub image_bytes: u64,
    /// `rsync --whole-file` to an `rsync --daemon` on 127.0.0.1.
    pub initial_daemon: Duration,
    pub initial_daemon_cpu: f64,
    /// `rsync --whole-file` to a local directory (no network).
    pub initial_local: Duration,
    /// Delta run (`--no-whole-file --inplace -I`) to the daemon holding the previous version
    /// (the median of the rounds).
    pub delta: Duration,
    /// Every round's delta run.
    pub delta_rounds: Vec<Duration>,
    pub delta_cpu: f64,
    pub delta_literal: Option<u64>,
    pub delta_matched: Option<u64>,
}

impl RsyncFigures {
    fn mib_s(&self, d: Duration) -> f64 {
        self.image_bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
    }
}

/// System-wide CPU seconds (all CPUs, `/proc/stat`) by state.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SysTimes {
    pub busy: f64,
    pub iowait: f64,
    pub idle: f64,
    pub steal: f64,
}

impl SysTimes {
    fn now() -> Self {
        let Ok(s) = std::fs::read_to_string("/proc/stat") else { return Self::default() };
        let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else { return Self::default() };
        let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let g = |i: usize| v.get(i).copied().unwrap_or(0.0) / hz;
        // user nice system idle iowait irq softirq steal
        Self { busy: g(0) + g(1) + g(2) + g(5) + g(6), idle: g(3), iowait: g(4), steal: g(7) }
    }

    fn since(self, before: Self) -> Self {
        Self {
            busy: self.busy - before.busy,
            iowait: self.iowait - before.iowait,
            idle: self.idle - before.idle,
            steal: self.steal - before.steal,
        }
    }
}

/// One target of issue 4 next to its measurement.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: &'static str,
    pub what: String,
    /// Measured figure vs. its baseline, human-readable.
    pub measured: String,
    /// Goal on `ratio`, e.g. "≥ 0.80×".
    pub goal: String,
    pub ratio: Option<f64>,
    /// `None`: not measured (e.g. rsync missing).
    pub pass: Option<bool>,
    /// What bounds the figure (printed for a miss or a skip).
    pub bound: String,
}

/// Measured figures.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub cpus: usize,
    /// `/proc/loadavg` when the bench started (other work on the machine shares the cores).
    pub loadavg_start: String,
    /// Where the replica side writes, against the source image's storage.
    pub replica_place: String,
    pub cipher: String,
    /// Allocated data of the source disk.
    pub data_bytes: u64,
    pub disk_bytes: u64,
    pub image_file_bytes: u64,
    pub initial: CycleFigures,
    pub initial_mib_s: f64,
    /// System-wide (all CPUs) seconds during the initial replication: in iowait, idle, stolen.
    pub initial_sys: SysTimes,
    pub seq_read_mib_s: f64,
    pub seq_read_method: String,
    /// Plain copy of the image onto the replica's file system (read and write at once).
    pub local_copy_mib_s: f64,
    pub local_copy_method: String,
    pub rsync: Option<RsyncFigures>,
    /// Why rsync figures are missing.
    pub rsync_note: String,
    /// The delta cycle set against rsync (compression off): the median round.
    pub delta: CycleFigures,
    /// Wall time of every round's delta cycle.
    pub delta_rounds: Vec<Duration>,
    pub delta_percent: f64,
    /// Mixed-data cycles on the same changed bytes, without and with zstd.
    pub mixed_raw: CycleFigures,
    /// The median zstd round (target 3) and its baseline.
    pub mixed_zstd: CycleFigures,
    pub baseline: Baseline,
    /// Target 3's ratio in every round.
    pub cpu_ratio_rounds: Vec<f64>,
    /// `zstd -1` of the mixed changed bytes as one stream.
    pub zstd_stream_bytes: u64,
    pub wire_ratio_raw: f64,
    pub wire_ratio_zstd: f64,
    pub zstd_own_ratio: f64,
    pub idle_disk_bytes: u64,
    /// Median idle cycle.
    pub idle_cycle_time: Duration,
    pub idle_capture_time: Duration,
    pub idle_cycles: Vec<Duration>,
    pub idle_wire_bytes: u64,
    /// An idle cycle on the (much smaller) source disk, for scale.
    pub idle_small_time: Duration,
    pub mem_vms: u32,
    pub mem_disks: u32,
    pub mem_cycles: u32,
    pub mem_rss_start: u64,
    pub mem_rss_end: u64,
    /// Peak resident memory during the 10-disk phase (VmHWM after a reset).
    pub peak_rss_bytes: u64,
    /// The peak was reset before the phase (otherwise it includes the earlier phases).
    pub peak_reset: bool,
    /// Wall time of each phase of the bench itself.
    pub phases: Vec<(&'static str, Duration)>,
    pub targets: Vec<Target>,
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// The median element of `items` by `key` (the upper one of an even count).
fn median_by<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Option<&T> {
    let mut order: Vec<&T> = items.iter().collect();
    order.sort_by_key(|t| key(t));
    order.get(order.len() / 2).copied()
}

fn fmt_rounds(rounds: &[Duration]) -> String {
    rounds.iter().map(|d| format!("{:.0}", ms(*d))).collect::<Vec<_>>().join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Ferry replication bench: one run, same data; loopback mTLS ({}), QEMU backup jobs, direct qcow2 writer, {} CPUs (load average at start {}); replica {}",
            self.cipher, self.cpus, self.loadavg_start, self.replica_place
        )?;
        writeln!(f, "Figures")?;
        writeln!(
            f,
            "  source image        {:.0} MiB data (1/2 random, 1/4 text, 1/4 executable) on a {:.0} MiB qcow2 disk, file {:.1} MiB",
            mib(self.data_bytes),
            mib(self.disk_bytes),
            mib(self.image_file_bytes)
        )?;
        let i = &self.initial;
        writeln!(
            f,
            "  initial replication {:.1} MiB in {:.2} s = {:.1} MiB/s (seed capture {:.2} s, ship {:.2} s); CPU agent {:.2} s, QEMU {:.2} s, qemu-img {:.2} s, replica {:.2} s",
            mib(i.data_bytes),
            i.wall.as_secs_f64(),
            self.initial_mib_s,
            i.capture.as_secs_f64(),
            i.ship().as_secs_f64(),
            i.cpu.agent,
            i.cpu.qemu,
            i.cpu.qemu_img,
            i.cpu.replica
        )?;
        writeln!(f, "  sequential read     {:.1} MiB/s ({})", self.seq_read_mib_s, self.seq_read_method)?;
        writeln!(
            f,
            "  local copy          {:.1} MiB/s onto the replica's file system ({})",
            self.local_copy_mib_s, self.local_copy_method
        )?;
        match &self.rsync {
            Some(r) => {
                writeln!(
                    f,
                    "  rsync initial       loopback daemon {:.1} MiB/s ({:.2} s, {:.2} CPU-s); local --whole-file {:.1} MiB/s ({:.2} s)",
                    r.mib_s(r.initial_daemon),
                    r.initial_daemon.as_secs_f64(),
                    r.initial_daemon_cpu,
                    r.mib_s(r.initial_local),
                    r.initial_local.as_secs_f64()
                )?;
                writeln!(
                    f,
                    "  rsync delta         median {:.2} s of [{}] ms, {:.2} CPU-s (literal {}, matched {} MiB)",
                    r.delta.as_secs_f64(),
                    fmt_rounds(&r.delta_rounds),
                    r.delta_cpu,
                    r.delta_literal.map_or("?".into(), |b| format!("{:.2} MiB", mib(b))),
                    r.delta_matched.map_or("?".into(), |b| format!("{:.1}", mib(b)))
                )?;
            }
            None => writeln!(f, "  rsync               {}", self.rsync_note)?,
        }
        for (name, c) in [
            (format!("delta {:.0}% raw", self.delta_percent), &self.delta),
            ("delta mixed raw".into(), &self.mixed_raw),
            ("delta mixed zstd".into(), &self.mixed_zstd),
        ] {
            writeln!(
                f,
                "  {name:<19} {:.1} MiB in {:.0} ms (capture {:.0}, ship {:.0}) = {:.2} s/GiB wall; CPU {:.2} s/GiB (agent {:.3} s, QEMU {:.3} s, qemu-img {:.3} s; replica {:.3} s)",
                mib(c.data_bytes),
                ms(c.wall),
                ms(c.capture),
                ms(c.ship()),
                c.wall_s_per_gib(),
                c.cpu_s_per_gib(),
                c.cpu.agent,
                c.cpu.qemu,
                c.cpu.qemu_img,
                c.cpu.replica
            )?;
        }
        writeln!(f, "  delta rounds        Ferry's cycle [{}] ms (the median above)", fmt_rounds(&self.delta_rounds))?;
        let b = &self.baseline;
        writeln!(
            f,
            "  baseline            {:.1} MiB changed bytes alone: read {:.3} + blake3 {:.3} + zstd-1 {:.3} + TLS {:.3} = {:.3} CPU-s ({:.2} s/GiB), {:.0} ms wall",
            mib(b.bytes),
            b.read_s,
            b.hash_s,
            b.zstd_s,
            b.tls_s,
            b.total(),
            b.total() / (b.bytes as f64 / GIB).max(1e-12),
            ms(b.wall)
        )?;
        writeln!(
            f,
            "  wire/changed bytes  {:.4} raw, {:.4} zstd (frames, before TLS +{:.2}%); zstd -1 alone {:.4}",
            self.wire_ratio_raw,
            self.wire_ratio_zstd,
            (b.tls_overhead - 1.0) * 100.0,
            self.zstd_own_ratio
        )?;
        writeln!(
            f,
            "  idle cycle          {:.0} GiB sparse disk: median {:.1} ms of [{}] (capture {:.1} ms), {} wire bytes; {:.1} GiB source disk: {:.1} ms",
            self.idle_disk_bytes as f64 / GIB,
            ms(self.idle_cycle_time),
            self.idle_cycles.iter().map(|d| format!("{:.1}", ms(*d))).collect::<Vec<_>>().join(", "),
            ms(self.idle_capture_time),
            self.idle_wire_bytes,
            self.disk_bytes as f64 / GIB,
            ms(self.idle_small_time)
        )?;
        writeln!(
            f,
            "  resident memory     {} disks ({} VMs × {}), seed + {} cycles: peak {:.1} MiB{}, {:.1} MiB at start, {:.1} MiB at end (agent + replica receiver + bench in one process)",
            self.mem_disks,
            self.mem_vms,
            self.mem_disks / self.mem_vms.max(1),
            self.mem_cycles,
            mib(self.peak_rss_bytes),
            if self.peak_reset { "" } else { " (VmHWM not reset: includes earlier phases)" },
            mib(self.mem_rss_start),
            mib(self.mem_rss_end)
        )?;
        writeln!(
            f,
            "  bench phases        {}",
            self.phases.iter().map(|(n, d)| format!("{n} {:.1} s", d.as_secs_f64())).collect::<Vec<_>>().join(", ")
        )?;
        writeln!(f, "Targets (issue 4), side by side")?;
        writeln!(f, "  {:<3} {:<42} {:<48} {:<11} {:>8}  result", "#", "target", "measured", "goal", "ratio")?;
        let n = self.targets.len();
        for (k, t) in self.targets.iter().enumerate() {
            let result = match t.pass {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "SKIP",
            };
            let ratio = t.ratio.map_or("-".into(), |r| format!("{r:.2}×"));
            write!(f, "  {:<3} {:<42} {:<48} {:<11} {:>8}  {result}", t.id, t.what, t.measured, t.goal, ratio)?;
            if t.pass != Some(true) && !t.bound.is_empty() {
                write!(f, "\n      bound: {}", t.bound)?;
            }
            if k + 1 < n {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// CPU, memory and page-cache helpers

/// CPU time of a set of threads (the receiver runtime's), including threads that exited.
#[derive(Default)]
struct ThreadCpu {
    live: Mutex<Vec<libc::pid_t>>,
    dead_ns: AtomicU64,
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn thread_cpu_s() -> f64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) as f64 / 1e9
}

impl ThreadCpu {
    fn started(&self) {
        let tid = gettid();
        self.live.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
    }

    fn stopped(&self) {
        self.dead_ns.fetch_add(clock_ns(libc::CLOCK_THREAD_CPUTIME_ID), Ordering::Relaxed);
        let tid = gettid();
        self.live.lock().unwrap_or_else(|e| e.into_inner()).retain(|t| *t != tid);
    }

    fn seconds(&self) -> f64 {
        let live: u64 = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|tid| std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
            .sum();
        (live + self.dead_ns.load(Ordering::Relaxed)) as f64 / 1e9
    }
}

/// A runtime of its own for the receiver, so its CPU can be told apart from the sender's.
struct RxRuntime {
    rt: Option<tokio::runtime::Runtime>,
    cpu: Arc<ThreadCpu>,
}

impl RxRuntime {
    fn new() -> Result<Self> {
        let cpu = Arc::new(ThreadCpu::default());
        let (a, b) = (cpu.clone(), cpu.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-bench-rx")
            .thread_keep_alive(Duration::from_secs(3600))
            .on_thread_start(move || a.started())
            .on_thread_stop(move || b.stopped())
            .enable_all()
            .build()
            .map_err(|e| Error::io("Cannot start the receiver runtime", e))?;
        Ok(Self { rt: Some(rt), cpu })
    }

    async fn start(&self, cfg: ReceiverConfig) -> Result<Receiver> {
        let rt = self.rt.as_ref().ok_or_else(|| Error::new(ErrorKind::Invalid, "Receiver runtime is gone"))?;
        rt.spawn(Receiver::start(cfg))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, "Receiver start failed", e))?
    }
}

impl Drop for RxRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub(crate) struct Killer(pub(crate) u32);

impl Drop for Killer {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the QEMU this bench started.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

fn rusage_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (utime + stime, cutime + cstime) of a process, seconds.
fn cpu_of(pid: u32) -> (f64, f64) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return (0.0, 0.0) };
    let Some(rest) = s.rsplit_once(')').map(|x| x.1) else { return (0.0, 0.0) };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ((t(11) + t(12)) / hz, (t(13) + t(14)) / hz)
}

#[derive(Debug, Clone, Copy, Default)]
struct CpuSnap {
    process: f64,
    children: f64,
    rx: f64,
    qemu: f64,
}

fn cpu_snap(rx: &ThreadCpu, qemu: u32) -> CpuSnap {
    CpuSnap {
        process: rusage_s(libc::RUSAGE_SELF),
        children: rusage_s(libc::RUSAGE_CHILDREN),
        rx: rx.seconds(),
        qemu: cpu_of(qemu).0,
    }
}

fn cpu_since(a: CpuSnap, b: CpuSnap) -> CpuUse {
    let replica = (b.rx - a.rx).max(0.0);
    CpuUse {
        agent: (b.process - a.process - replica).max(0.0),
        qemu: (b.qemu - a.qemu).max(0.0),
        qemu_img: (b.children - a.children).max(0.0),
        replica,
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

/// Give freed heap back and reset VmHWM to the current RSS; false if the kernel refused.
fn reset_peak_rss() -> bool {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Write back and evict `path` from the page cache, so the next read comes from the disk; first
/// write back everything pending on its file system (`syncfs`), so deferred writes of an earlier
/// step (rsync does not sync) are not flushed in the middle of the next measured one.
pub(crate) fn drop_cache(path: &Path) {
    if let Ok(f) = File::open(path) {
        // SAFETY: plain syscalls on a valid descriptor.
        unsafe {
            libc::syncfs(f.as_raw_fd());
        }
        let _ = f.sync_data();
        // SAFETY: advisory call on a valid descriptor.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// Sequential read of `path` with 4 MiB aligned `O_DIRECT` reads (cold buffered reads if the file
/// system refuses `O_DIRECT`). Returns (MiB/s, method).
fn seq_read(path: &Path) -> Result<(f64, String)> {
    const BUF: usize = 4 << 20;
    let mut raw = vec![0u8; BUF + 4096];
    let start = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[start..start + BUF];
    drop_cache(path);
    let direct = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path);
    let (f, mut method) = match direct {
        Ok(f) => (f, "O_DIRECT, 4 MiB aligned reads, cold".to_string()),
        Err(_) => (
            File::open(path).map_err(|e| Error::io("Cannot open bench disk", e))?,
            "buffered 4 MiB reads after POSIX_FADV_DONTNEED".to_string(),
        ),
    };
    let t = Instant::now();
    let mut off = 0u64;
    loop {
        match f.read_at(buf, off) {
            Ok(0) => break,
            Ok(n) => {
                off += n as u64;
                if n < BUF {
                    break;
                }
            }
            Err(e) if off == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                // O_DIRECT accepted at open but not for reads: fall back.
                let f = File::open(path).map_err(|e| Error::io("Cannot open bench disk", e))?;
                drop_cache(path);
                method = "buffered 4 MiB reads after POSIX_FADV_DONTNEED".into();
                let t = Instant::now();
                let mut off = 0u64;
                loop {
                    let n = f.read_at(buf, off).map_err(|e| Error::io("Cannot read bench disk", e))?;
                    if n == 0 {
                        break;
                    }
                    off += n as u64;
                }
                return Ok((mib(off) / t.elapsed().as_secs_f64().max(1e-9), method));
            }
            Err(e) => return Err(Error::io("Cannot read bench disk", e)),
        }
    }
    Ok((mib(off) / t.elapsed().as_secs_f64().max(1e-9), method))
}

/// Where `far` (the replica side) is against `dir` (the source image): same file system or not.
fn replica_place(dir: &Path, far: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(dir), dev(far)) {
        (Some(a), Some(b)) if a == b => format!("in {} (same file system as the source image)", far.display()),
        (Some(_), Some(_)) => format!("in {} (another file system than the source image)", far.display()),
        _ => format!("in {}", far.display()),
    }
}

/// Plain local copy of `src` to `dst` (on the replica's file system): 4 MiB reads on one thread,
/// writes on another, so reading and writing overlap as in a replication, then `fdatasync`; both
/// `O_DIRECT` where the file systems take it. What the storage gives a reader and a writer at
/// once, with no CPU per byte. Returns (MiB/s, method).
fn local_copy(src: &Path, dst: &Path) -> Result<(f64, String)> {
    const BUF: usize = 4 << 20;
    let open_src = |flags| std::fs::OpenOptions::new().read(true).custom_flags(flags).open(src);
    let open_dst =
        |flags| std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags).open(dst);
    let (input, output, method) = match (open_src(libc::O_DIRECT), open_dst(libc::O_DIRECT)) {
        (Ok(i), Ok(o)) => (i, o, "O_DIRECT 4 MiB reads and writes on two threads, cold, fdatasync"),
        _ => (
            open_src(0).map_err(|e| Error::io("Cannot open bench disk", e))?,
            open_dst(0).map_err(|e| Error::io("Cannot create the local copy", e))?,
            "buffered 4 MiB reads and writes on two threads, cold, fdatasync",
        ),
    };
    let size = input.metadata().map_err(|e| Error::io("Cannot stat bench disk", e))?.len();
    drop_cache(src);
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(u64, AlignedBuf, usize)>(2);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<AlignedBuf>(4);
    for _ in 0..4 {
        let _ = free_tx.send(AlignedBuf::default());
    }
    let t = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for (at, buf, len) in full_rx {
            // Whole aligned blocks; the file is cut to its size at the end.
            output.write_all_at(&buf.as_slice()[..len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN], at)?;
            let _ = free_tx.send(buf);
        }
        output.set_len(size)?;
        output.sync_data()
    });
    let mut off = 0u64;
    let mut failed = None;
    while off < size {
        let Ok(mut buf) = free_rx.recv() else { break };
        buf.resize(BUF.min((size - off).div_ceil(DIRECT_ALIGN as u64) as usize * DIRECT_ALIGN));
        match input.read_at(buf.as_mut_slice(), off) {
            Ok(0) => break,
            Ok(n) => {
                buf.as_mut_slice()[n..].fill(0);
                if full_tx.send((off, buf, n)).is_err() {
                    break;
                }
                off += n as u64;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(full_tx);
    let wrote = writer.join().map_err(|_| Error::new(ErrorKind::Io, "Local copy writer panicked"))?;
    if let Some(e) = failed {
        return Err(Error::io("Cannot read bench disk", e));
    }
    wrote.map_err(|e| Error::io("Cannot write the local copy", e))?;
    Ok((mib(off) / t.elapsed().as_secs_f64().max(1e-9), method.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Data

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Random,
    Text,
    Binary,
}

/// Half random, a quarter text, a quarter executable code.
pub(crate) fn kind_of(i: u64) -> Kind {
    match i % 4 {
        1 => Kind::Text,
        3 => Kind::Binary,
        _ => Kind::Random,
    }
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[rustfmt::skip]
const WORDS: [&str; 48] = [
    "replica", "point", "cluster", "bitmap", "vault", "host", "qcow2", "snapshot", "kernel:", "eth0", "systemd[1]:",
    "Started", "Stopped", "session", "user", "root", "connection", "from", "port", "sshd", "error", "warning", "info",
    "disk", "write", "read", "cache", "block", "device", "mounted", "filesystem", "EXT4-fs", "journal", "commit",
    "request", "GET", "POST", "/api/v1/jobs", "200", "404", "latency", "ms", "bytes", "nginx", "postgres",
    "checkpoint", "complete", "accepted",
];

/// Deterministic bench data: the same (kind, seed, len) always gives the same bytes.
pub(crate) struct Patterns {
    /// An executable to take code-like data from.
    bin: Option<(File, u64)>,
}

impl Patterns {
    pub(crate) fn new() -> Self {
        let candidates = [std::env::current_exe().ok(), Some(PathBuf::from("/usr/bin/qemu-system-x86_64"))];
        let bin = candidates
            .into_iter()
            .flatten()
            .filter_map(|p| File::open(p).ok())
            .filter_map(|f| f.metadata().ok().map(|m| (f, m.len())))
            .find(|(_, len)| *len >= 4 * MIB);
        Self { bin }
    }

    pub(crate) fn gen(&self, kind: Kind, seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x1234_5678;
        match kind {
            Kind::Random => {
                let mut v = vec![0u8; len];
                for c in v.chunks_mut(8) {
                    let r = splitmix(&mut x).to_le_bytes();
                    c.copy_from_slice(&r[..c.len()]);
                }
                v
            }
            Kind::Binary if self.bin.is_some() => {
                let mut v = vec![0u8; len];
                if let Some((f, flen)) = &self.bin {
                    let span = flen.saturating_sub(len as u64).max(1);
                    let off = (splitmix(&mut x) % span) & !4095;
                    let mut done = 0;
                    while done < len {
                        match f.read_at(&mut v[done..], off + done as u64) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => done += n,
                        }
                    }
                }
                v
            }
            _ => {
                use std::fmt::Write as _;
                let mut s = String::with_capacity(len + 256);
                while s.len() < len {
                    let r = splitmix(&mut x);
                    let _ = write!(
                        s,
                        "2025-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z node{:02} ",
                        r % 12 + 1,
                        (r >> 4) % 28 + 1,
                        (r >> 9) % 24,
                        (r >> 14) % 60,
                        (r >> 20) % 60,
                        (r >> 26) % 1000,
                        (r >> 36) % 16
                    );
                    let words = 4 + (r >> 40) % 9;
                    for k in 0..words {
                        let w = splitmix(&mut x);
                        s.push_str(WORDS[(w % WORDS.len() as u64) as usize]);
                        if k % 3 == 2 {
                            let _ = write!(s, " {}", (w >> 8) % 100_000);
                        }
                        s.push(' ');
                    }
                    s.push('\n');
                }
                let mut v = s.into_bytes();
                v.truncate(len);
                v
            }
        }
    }
}

/// One write of bench data: where, and which bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) kind: Kind,
    pub(crate) seed: u64,
}

pub(crate) async fn start_vm(dir: &Path, name: &str, sizes: &[u64]) -> Result<(RunningVm, Killer, Vec<PathBuf>)> {
    let mut disks = Vec::new();
    let mut paths = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let target = format!("vd{}", char::from(b'a' + i as u8));
        let path = dir.join(format!("{name}-{target}.qcow2"));
        let _ = std::fs::remove_file(&path);
        img::create(&path, DiskFormat::Qcow2, &CreateOptions { size: Some(*size), ..Default::default() })
            .await
            .map_err(|e| Error::qemu("Cannot create bench disk", e))?;
        disks.push(DiskSpec { target, path: path.clone(), format: DiskFormat::Qcow2 });
        paths.push(path);
    }
    let spec = VmSpec {
        name: name.into(),
        uuid: uuid::Uuid::new_v4(),
        vcpus: 1,
        memory_mib: 64,
        disks,
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
    Ok((vm, k, paths))
}

fn target_name(i: usize) -> String {
    format!("vd{}", char::from(b'a' + i as u8))
}

/// Write `pieces` to disk `target` of `vm` through qemu-io (the guest's view, so the dirty
/// bitmaps see it), then flush.
pub(crate) async fn write_pieces(
    vm: &RunningVm,
    target: &str,
    pat: &Path,
    gen: &Patterns,
    pieces: &[Piece],
) -> Result<()> {
    for p in pieces {
        std::fs::write(pat, gen.gen(p.kind, p.seed, p.len as usize))
            .map_err(|e| Error::io("Cannot write bench data", e))?;
        vm.qmp()
            .qemu_io(target, &format!("write -q -s {} {} {}", pat.display(), p.offset, p.len))
            .await
            .map_err(|e| Error::qemu("Bench write failed", e))?;
    }
    vm.qmp().qemu_io(target, "flush").await.map_err(|e| Error::qemu("Bench flush failed", e))
}

// ---------------------------------------------------------------------------------------------
// Baseline pipeline: read + blake3 + zstd-1 + TLS of the changed bytes

struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tls_err(what: &'static str) -> impl Fn(rustls::Error) -> Error {
    move |e| Error::with_source(ErrorKind::Tls, what, e)
}

/// An established in-memory TLS client (same configs, hence the same cipher suite as the
/// replication transport), ready to encrypt.
fn tls_client(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Result<(rustls::ClientConnection, String)> {
    let name = rustls::pki_types::ServerName::try_from("localhost")
        .map_err(|e| Error::with_source(ErrorKind::Tls, "Bad server name", e))?;
    let mut c = rustls::ClientConnection::new(client, name).map_err(tls_err("TLS client"))?;
    let mut s = rustls::ServerConnection::new(server).map_err(tls_err("TLS server"))?;
    let io = |e| Error::io("In-memory TLS", e);
    for _ in 0..32 {
        let mut b = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut b).map_err(io)?;
        }
        let mut r = &b[..];
        while !r.is_empty() {
            s.read_tls(&mut r).map_err(io)?;
            s.process_new_packets().map_err(tls_err("TLS server handshake"))?;
        }
        let mut b = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut b).map_err(io)?;
        }
        let mut r = &b[..];
        while !r.is_empty() {
            c.read_tls(&mut r).map_err(io)?;
            c.process_new_packets().map_err(tls_err("TLS client handshake"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    if c.is_handshaking() {
        return Err(Error::new(ErrorKind::Tls, "In-memory TLS handshake did not finish"));
    }
    c.set_buffer_limit(None);
    let suite = c.negotiated_cipher_suite().map_or("?".into(), |s| format!("{:?}", s.suite()));
    Ok((c, suite))
}

fn run_baseline(
    disk: &Path,
    reader: &ChainReader,
    pieces: &[Piece],
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Result<Baseline> {
    let (mut tls, cipher) = tls_client(client, server)?;
    let chunk = SEND_CHUNK as usize;
    let mut buf = vec![0u8; chunk];
    let mut zout = vec![0u8; chunk];
    let mut z = zstd::bulk::Compressor::new(1).map_err(|e| Error::io("Cannot create a zstd context", e))?;
    let mut sink = Counter(0);
    let mut plain = 0u64;
    let mut b = Baseline { cipher, ..Default::default() };
    drop_cache(disk);
    let t = Instant::now();
    for p in pieces {
        let mut o = p.offset;
        while o < p.offset + p.len {
            let n = chunk.min((p.offset + p.len - o) as usize);
            let t0 = thread_cpu_s();
            reader.read(o, &mut buf[..n])?;
            let t1 = thread_cpu_s();
            std::hint::black_box(blake3::hash(&buf[..n]));
            let t2 = thread_cpu_s();
            let payload = match z.compress_to_buffer(&buf[..n], &mut zout[..n]) {
                Ok(k) if k < n => &zout[..k],
                _ => &buf[..n],
            };
            let t3 = thread_cpu_s();
            tls.writer().write_all(payload).map_err(|e| Error::io("In-memory TLS write", e))?;
            while tls.wants_write() {
                tls.write_tls(&mut sink).map_err(|e| Error::io("In-memory TLS write", e))?;
            }
            let t4 = thread_cpu_s();
            plain += payload.len() as u64;
            b.read_s += t1 - t0;
            b.hash_s += t2 - t1;
            b.zstd_s += t3 - t2;
            b.tls_s += t4 - t3;
            b.bytes += n as u64;
            o += n as u64;
        }
    }
    b.wall = t.elapsed();
    b.tls_overhead = sink.0 as f64 / plain.max(1) as f64;
    Ok(b)
}

/// zstd -1 of the pieces' bytes as one stream (zstd's own ratio on the same data).
fn zstd_stream(gen: &Patterns, pieces: &[Piece]) -> Result<u64> {
    let io = |e| Error::io("zstd stream", e);
    let mut enc = zstd::stream::write::Encoder::new(Counter(0), 1).map_err(io)?;
    for p in pieces {
        enc.write_all(&gen.gen(p.kind, p.seed, p.len as usize)).map_err(io)?;
    }
    Ok(enc.finish().map_err(io)?.0)
}

// ---------------------------------------------------------------------------------------------
// rsync

fn find_rsync() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("rsync")).find(|p| p.is_file())
}

/// An `rsync --daemon` on 127.0.0.1 with one writable module `bench`; killed by PID on drop.
struct RsyncDaemon {
    child: std::process::Child,
    port: u16,
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RsyncDaemon {
    async fn start(rsync: &Path, dir: &Path, module: &Path) -> Result<Self> {
        // Port 0 is not possible for rsync: take a free port from the kernel, release it, use it.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io("Cannot find a free port", e))?
            .port();
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let conf = dir.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nmax connections = 4\n[bench]\n    path = {}\n    read only = no\n    uid = {uid}\n    gid = {gid}\n",
                module.display()
            ),
        )
        .map_err(|e| Error::io("Cannot write rsyncd.conf", e))?;
        let child = std::process::Command::new(rsync)
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--port={port}"))
            .arg("--address=127.0.0.1")
            .arg(format!("--log-file={}", dir.join("rsyncd.log").display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| Error::io("Cannot start rsync --daemon", e))?;
        let d = RsyncDaemon { child, port };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.is_ok() {
                return Ok(d);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::new(ErrorKind::Io, "rsync --daemon did not start listening"))
    }

    fn url(&self, file: &str) -> String {
        format!("rsync://127.0.0.1:{}/bench/{file}", self.port)
    }

    /// CPU of the daemon and its reaped connection processes.
    fn cpu(&self) -> f64 {
        let (own, children) = cpu_of(self.child.id());
        own + children
    }
}

/// Run rsync; (wall, CPU of the client, stdout).
async fn run_rsync(rsync: &Path, args: &[String]) -> Result<(Duration, f64, String)> {
    let c0 = rusage_s(libc::RUSAGE_CHILDREN);
    let t = Instant::now();
    let out =
        tokio::process::Command::new(rsync).args(args).output().await.map_err(|e| Error::io("Cannot run rsync", e))?;
    let wall = t.elapsed();
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Io,
            format!("rsync {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok((wall, rusage_s(libc::RUSAGE_CHILDREN) - c0, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn stat_bytes(stats: &str, label: &str) -> Option<u64> {
    let line = stats.lines().find(|l| l.trim_start().starts_with(label))?;
    let v = line.split(':').nth(1)?.split_whitespace().next()?;
    v.replace([',', '.'], "").parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The run

/// Run the bench.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let dir = &opts.work_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("Cannot create {}", dir.display()), e))?;
    let mut rep = BenchReport {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg_start: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        delta_percent: opts.delta_percent,
        ..Default::default()
    };
    let gen = Patterns::new();
    let pat = dir.join("pattern.bin");
    let mut lap = Instant::now();
    let mut phase = |rep: &mut BenchReport, name: &'static str| {
        rep.phases.push((name, lap.elapsed()));
        lap = Instant::now();
    };
    // PKI and receiver (on its own runtime so its CPU is told apart).
    let ca = ferry_pki::Ca::create("ferry-bench").ctx(ErrorKind::Tls, || "Cannot create bench CA".into())?;
    let ident = |cn: &str| -> Result<TlsIdentity> {
        let c = ca
            .issue_server_cert(cn, &["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .ctx(ErrorKind::Tls, || "Cannot issue bench cert".into())?;
        Ok(TlsIdentity { ca_pem: ca.cert_pem().into(), cert_pem: c.cert_pem, key_pem: c.key_pem, live: None })
    };
    let (rid, pid) = (ident("host-bench-replica")?, ident("host-bench-primary")?);
    let allow = Allowlist::new();
    allow.allow_any_pair("host-bench-primary");
    let far = opts.replica_dir.clone().unwrap_or_else(|| dir.clone());
    std::fs::create_dir_all(&far).map_err(|e| Error::io(format!("Cannot create {}", far.display()), e))?;
    rep.replica_place = replica_place(dir, &far);
    let root = far.join("replica");
    let _ = std::fs::remove_dir_all(&root);
    let rxrt = RxRuntime::new()?;
    let server_cfg = rid.server_config()?;
    let rx = rxrt
        .start(ReceiverConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), server_cfg.clone(), allow, root.clone()))
        .await?;
    let tls = pid.client_config()?;

    // 1. Initial replication of data_mib of mixed data (4 MiB chunks).
    let chunks = (opts.data_mib / 4).max(2);
    let data = chunks * CHUNK;
    let size = data + 512 * MIB;
    rep.disk_bytes = size;
    let (vm, _k, disks) = start_vm(dir, "bench-src", &[size]).await?;
    let disk = disks.first().cloned().ok_or_else(|| Error::new(ErrorKind::Invalid, "No bench disk"))?;
    let initial: Vec<Piece> =
        (0..chunks).map(|i| Piece { offset: i * CHUNK, len: CHUNK, kind: kind_of(i), seed: i }).collect();
    write_pieces(&vm, "vda", &pat, &gen, &initial).await?;
    phase(&mut rep, "setup + initial data");
    let vm = Arc::new(vm);
    let qpid = vm.pid();
    let cdisks = vec![CaptureDisk { target: "vda".into(), size, format: DiskFormat::Qcow2 }];
    let staging = dir.join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    let cfg = PrimaryConfig::new("bench-vm", "bench", cdisks, &staging, rx.local_addr(), "localhost", tls.clone());
    let mut p = Primary::new(cfg, vm.clone())?;
    drop_cache(&disk);
    let (c0, s0) = (cpu_snap(&rxrt.cpu, qpid), SysTimes::now());
    let r = p.seed_and_initial().await?;
    rep.initial = CycleFigures::of(&r, cpu_since(c0, cpu_snap(&rxrt.cpu, qpid)));
    rep.initial_sys = SysTimes::now().since(s0);
    rep.data_bytes = r.data_bytes;
    rep.initial_mib_s = mib(r.data_bytes) / r.total_time.as_secs_f64().max(1e-9);
    rep.image_file_bytes = std::fs::metadata(&disk).map(|m| m.len()).unwrap_or(0);
    // Plain sequential read of the same image file, from the disk.
    let d2 = disk.clone();
    (rep.seq_read_mib_s, rep.seq_read_method) = tokio::task::spawn_blocking(move || seq_read(&d2))
        .await
        .map_err(|e| Error::with_source(ErrorKind::Io, "Sequential read failed", e))??;
    // Plain local copy of the same image onto the replica's file system (the storage bound).
    let (d2, copy) = (disk.clone(), far.join("local-copy.img"));
    let c2 = copy.clone();
    (rep.local_copy_mib_s, rep.local_copy_method) =
        tokio::task::spawn_blocking(move || local_copy(&d2, &c2))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, "Local copy failed", e))??;
    let _ = std::fs::remove_file(&copy);
    phase(&mut rep, "initial replication + read");

    // rsync of the same image: whole file to a loopback daemon (keeps the copy as the previous
    // version for the delta run) and to a local directory.
    let rsync_bin = if opts.rsync { find_rsync() } else { None };
    let rsync_dir = far.join("rsync");
    let _ = std::fs::remove_dir_all(&rsync_dir);
    let mut daemon = None;
    let mut rs = RsyncFigures { image_bytes: rep.image_file_bytes, ..Default::default() };
    match &rsync_bin {
        None if opts.rsync => rep.rsync_note = "rsync not installed: comparisons 1b and 2 skipped".into(),
        None => rep.rsync_note = "rsync comparisons disabled".into(),
        Some(bin) => {
            let (module, local) = (rsync_dir.join("module"), rsync_dir.join("local"));
            for d in [&module, &local] {
                std::fs::create_dir_all(d).map_err(|e| Error::io("Cannot create rsync directory", e))?;
            }
            let d = RsyncDaemon::start(bin, &rsync_dir, &module).await?;
            let src = disk.display().to_string();
            drop_cache(&disk);
            let dc = d.cpu();
            let (wall, cpu, _) = run_rsync(bin, &["--whole-file".into(), src.clone(), d.url("image.qcow2")]).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            rs.initial_daemon = wall;
            rs.initial_daemon_cpu = cpu + d.cpu() - dc;
            drop_cache(&disk);
            let (wall, _, _) =
                run_rsync(bin, &["--whole-file".into(), src, local.join("image.qcow2").display().to_string()]).await?;
            rs.initial_local = wall;
            let _ = std::fs::remove_dir_all(&local);
            daemon = Some(d);
        }
    }
    phase(&mut rep, "rsync initial");

    // 2. Delta cycle at delta_percent of the data, 64 KiB blocks spread evenly; compression off.
    let slots = data / CLUSTER;
    let nblocks = ((data as f64 * opts.delta_percent / 100.0 / CLUSTER as f64).ceil() as u64).clamp(1, slots);
    let stride = slots / nblocks;
    // Each round changes other data (seeds), then Ferry's cycle and rsync's delta of that change
    // run; single rounds swing with whatever else the machine does, so the medians are set
    // against each other.
    let mut ferry_rounds = Vec::new();
    let mut rsync_rounds = Vec::new();
    for round in 0..u64::from(opts.delta_rounds.max(1)) {
        let delta: Vec<Piece> = (0..nblocks)
            .map(|j| Piece {
                offset: (j * stride + stride / 2) * CLUSTER,
                len: CLUSTER,
                kind: kind_of(j),
                seed: 1_000_000 + round * 100_000 + j,
            })
            .collect();
        write_pieces(&vm, "vda", &pat, &gen, &delta).await?;
        drop_cache(&disk);
        let c0 = cpu_snap(&rxrt.cpu, qpid);
        let r = p.run_cycle(false).await?;
        ferry_rounds.push(CycleFigures::of(&r, cpu_since(c0, cpu_snap(&rxrt.cpu, qpid))));
        // rsync of the same change: delta algorithm against the previous version.
        if let (Some(bin), Some(d)) = (&rsync_bin, &daemon) {
            drop_cache(&disk);
            drop_cache(&rsync_dir.join("module").join("image.qcow2"));
            let dc = d.cpu();
            let args = [
                "--no-whole-file".to_string(),
                "--inplace".into(),
                "--ignore-times".into(),
                "--stats".into(),
                disk.display().to_string(),
                d.url("image.qcow2"),
            ];
            let (wall, cpu, out) = run_rsync(bin, &args).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            rsync_rounds.push((wall, cpu + d.cpu() - dc, out));
        }
    }
    rep.delta_rounds = ferry_rounds.iter().map(|c| c.wall).collect();
    if let Some(m) = median_by(&ferry_rounds, |c| c.wall) {
        rep.delta = m.clone();
    }
    if let Some((wall, cpu, out)) = median_by(&rsync_rounds, |r| r.0) {
        rs.delta = *wall;
        rs.delta_cpu = *cpu;
        rs.delta_literal = stat_bytes(out, "Literal data");
        rs.delta_matched = stat_bytes(out, "Matched data");
        rs.delta_rounds = rsync_rounds.iter().map(|r| r.0).collect();
        rep.rsync = Some(rs);
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(&rsync_dir);
    phase(&mut rep, "delta + rsync delta");

    // 3. Mixed data: the same changed bytes shipped without, then with zstd.
    let mixed_chunks = (opts.mixed_mib.min(data / MIB) / 4).max(1);
    let mstride = chunks / mixed_chunks;
    let mixed_of = |round: u64| -> Vec<Piece> {
        (0..mixed_chunks)
            .map(|j| Piece {
                offset: j * mstride * CHUNK,
                len: CHUNK,
                kind: kind_of(j),
                seed: 2_000_000 + round * 100_000 + j,
            })
            .collect()
    };
    write_pieces(&vm, "vda", &pat, &gen, &mixed_of(0)).await?;
    p.set_compression(false);
    drop_cache(&disk);
    let c0 = cpu_snap(&rxrt.cpu, qpid);
    let r = p.run_cycle(false).await?;
    rep.mixed_raw = CycleFigures::of(&r, cpu_since(c0, cpu_snap(&rxrt.cpu, qpid)));
    // Each zstd round: new changed bytes, the cycle, then the baseline on the same bytes read from
    // the same image right after it (a round's ratio is measured under the same conditions); the
    // median round is the figure.
    p.set_compression(true);
    let gen = Arc::new(gen);
    let mut cpu_rounds = Vec::new();
    for round in 1..=u64::from(opts.delta_rounds.max(1)) {
        let mixed = mixed_of(round);
        write_pieces(&vm, "vda", &pat, &gen, &mixed).await?;
        drop_cache(&disk);
        let c0 = cpu_snap(&rxrt.cpu, qpid);
        let r = p.run_cycle(false).await?;
        let cycle = CycleFigures::of(&r, cpu_since(c0, cpu_snap(&rxrt.cpu, qpid)));
        let reader = ChainReader::open_chain(std::slice::from_ref(&disk), size, true).await?;
        let (d2, t2, s2, g2) = (disk.clone(), tls.clone(), server_cfg.clone(), gen.clone());
        let (baseline, zbytes) = tokio::task::spawn_blocking(move || -> Result<(Baseline, u64)> {
            let b = run_baseline(&d2, &reader, &mixed, t2, s2)?;
            Ok((b, zstd_stream(&g2, &mixed)?))
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Io, "Baseline failed", e))??;
        let ratio = cycle.cpu.primary() / baseline.total().max(1e-9);
        cpu_rounds.push((ratio, cycle, baseline, zbytes));
    }
    rep.cpu_ratio_rounds = cpu_rounds.iter().map(|r| r.0).collect();
    let (_, cycle, baseline, zbytes) = median_by(&cpu_rounds, |r| (r.0 * 1e6) as u64)
        .cloned()
        .ok_or_else(|| Error::new(ErrorKind::Invalid, "No zstd round ran"))?;
    rep.mixed_zstd = cycle;
    rep.cipher = baseline.cipher.clone();
    rep.baseline = baseline;
    rep.zstd_stream_bytes = zbytes;
    let changed = rep.mixed_raw.data_bytes.max(1) as f64;
    rep.wire_ratio_raw = rep.mixed_raw.wire_bytes as f64 / changed;
    rep.wire_ratio_zstd = rep.mixed_zstd.wire_bytes as f64 / rep.mixed_zstd.data_bytes.max(1) as f64;
    rep.zstd_own_ratio = zbytes as f64 / (mixed_chunks * CHUNK) as f64;
    // An idle cycle on this (small) disk, for scale against the big sparse one.
    let r = p.run_cycle(false).await?;
    rep.idle_small_time = r.total_time;
    drop(p);
    vm.hard_stop().await.map_err(|e| Error::qemu("Cannot stop bench VM", e))?;
    for f in &disks {
        let _ = std::fs::remove_file(f);
    }
    phase(&mut rep, "mixed cycles + baseline");

    // 4. Idle cycles on a big sparse disk.
    let idle_size = opts.idle_disk_gib << 30;
    let (vm2, _k2, disks2) = start_vm(dir, "bench-idle", &[idle_size]).await?;
    let vm2 = Arc::new(vm2);
    let cdisks = vec![CaptureDisk { target: "vda".into(), size: idle_size, format: DiskFormat::Qcow2 }];
    let staging2 = dir.join("staging-idle");
    let _ = std::fs::remove_dir_all(&staging2);
    let cfg = PrimaryConfig::new("bench-idle", "bench", cdisks, &staging2, rx.local_addr(), "localhost", tls.clone());
    let mut p2 = Primary::new(cfg, vm2.clone())?;
    p2.seed_and_initial().await?;
    rep.idle_disk_bytes = idle_size;
    let mut idle = Vec::new();
    for _ in 0..opts.idle_cycles.max(1) {
        let r = p2.run_cycle(false).await?;
        rep.idle_wire_bytes = rep.idle_wire_bytes.max(r.send.wire_bytes);
        idle.push((r.total_time, r.capture_time));
    }
    idle.sort();
    let (t, c) = idle[idle.len() / 2];
    rep.idle_cycle_time = t;
    rep.idle_capture_time = c;
    rep.idle_cycles = idle.iter().map(|x| x.0).collect();
    drop(p2);
    vm2.hard_stop().await.map_err(|e| Error::qemu("Cannot stop bench VM", e))?;
    for f in &disks2 {
        let _ = std::fs::remove_file(f);
    }
    phase(&mut rep, "idle cycles");

    // 5. Resident memory replicating mem_vms × mem_disks_per_vm disks concurrently.
    drop(gen);
    rep.peak_reset = reset_peak_rss();
    rep.mem_rss_start = status_kib("VmRSS:");
    mem_phase(opts, dir, &rx, &tls, &mut rep).await?;
    rep.peak_rss_bytes = status_kib("VmHWM:");
    rep.mem_rss_end = status_kib("VmRSS:");
    phase(&mut rep, "10-disk memory");

    drop(rx);
    drop(rxrt);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&pat);
    rep.targets = targets(&rep);
    Ok(rep)
}

async fn mem_phase(
    opts: &BenchOptions,
    dir: &Path,
    rx: &Receiver,
    tls: &Arc<rustls::ClientConfig>,
    rep: &mut BenchReport,
) -> Result<()> {
    let (nvm, nd) = (opts.mem_vms.max(1), opts.mem_disks_per_vm.clamp(1, 16));
    let per_disk = (opts.mem_disk_mib / 4).max(1) * CHUNK;
    let size = per_disk + 64 * MIB;
    let gen = Patterns::new();
    let mut vms = Vec::new();
    let mut primaries = Vec::new();
    for v in 0..nvm {
        let name = format!("bench-mem{v}");
        let (vm, k, files) = start_vm(dir, &name, &vec![size; nd as usize]).await?;
        let vm = Arc::new(vm);
        let cdisks =
            (0..nd as usize).map(|i| CaptureDisk { target: target_name(i), size, format: DiskFormat::Qcow2 }).collect();
        let staging = dir.join(format!("staging-mem{v}"));
        let _ = std::fs::remove_dir_all(&staging);
        let cfg = PrimaryConfig::new(&name, "bench", cdisks, &staging, rx.local_addr(), "localhost", tls.clone());
        primaries.push(Primary::new(cfg, vm.clone())?);
        vms.push((vm, k, files));
    }
    for round in 0..=opts.mem_cycles {
        for (v, (vm, _, _)) in vms.iter().enumerate() {
            for d in 0..nd as usize {
                let pieces: Vec<Piece> = (0..per_disk / CHUNK)
                    .map(|i| Piece {
                        offset: i * CHUNK,
                        len: CHUNK,
                        kind: kind_of(i + d as u64),
                        seed: 3_000_000 + u64::from(round) * 10_000 + v as u64 * 100 + d as u64 * 10 + i,
                    })
                    .collect();
                write_pieces(vm, &target_name(d), &dir.join("pattern-mem.bin"), &gen, &pieces).await?;
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for mut p in primaries.drain(..) {
            set.spawn(async move {
                let r = if round == 0 { p.seed_and_initial().await } else { p.run_cycle(false).await };
                (p, r.map(|_| ()))
            });
        }
        while let Some(j) = set.join_next().await {
            let (p, r) = j.map_err(|e| Error::with_source(ErrorKind::Io, "Memory-test cycle panicked", e))?;
            r?;
            primaries.push(p);
        }
    }
    drop(primaries);
    for (vm, _, files) in &vms {
        vm.hard_stop().await.map_err(|e| Error::qemu("Cannot stop bench VM", e))?;
        for f in files {
            let _ = std::fs::remove_file(f);
        }
    }
    let _ = std::fs::remove_file(dir.join("pattern-mem.bin"));
    rep.mem_vms = nvm;
    rep.mem_disks = nvm * nd;
    rep.mem_cycles = opts.mem_cycles;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Targets

fn util_note(cpu: f64, wall: Duration, cpus: usize, sys: SysTimes) -> String {
    let util = cpu / (wall.as_secs_f64().max(1e-9) * cpus.max(1) as f64);
    let system = format!(
        "system-wide {:.1} s busy, {:.1} s iowait, {:.1} s idle, {:.1} s stolen",
        sys.busy, sys.iowait, sys.idle, sys.steal
    );
    if util > 0.85 {
        format!(
            "CPU-bound: {cpu:.2} CPU-s in {:.2} s on {cpus} cores ({:.0}% busy; {system})",
            wall.as_secs_f64(),
            util * 100.0
        )
    } else {
        let total = wall.as_secs_f64().max(1e-9) * cpus.max(1) as f64;
        let others = (sys.busy - cpu).max(0.0);
        let waits = if sys.busy / total > 0.85 {
            format!("the cores were full anyway: other processes on this machine took {others:.1} CPU-s")
        } else if sys.iowait >= sys.idle {
            "the rest is waiting on disk I/O (reads of the source, direct writes of the replica, fsyncs)".to_string()
        } else {
            "the rest is idle waiting, not on the disk: serial steps and synchronous round trips (NBD reads, extent queue, fsync ordering)".to_string()
        };
        format!(
            "not CPU-bound: {cpu:.2} CPU-s in {:.2} s on {cpus} cores ({:.0}% busy; {system}); {waits}",
            wall.as_secs_f64(),
            util * 100.0
        )
    }
}

/// What holds the initial copy back: the storage when Ferry comes close to a plain local copy
/// onto the replica's file system, else the CPU both ends share on this machine.
fn storage_or_cpu(r: &BenchReport) -> String {
    let copy = format!(
        "a plain local copy of the image onto the replica's file system (read and write at once, no CPU per byte) runs at {:.1} MiB/s = {:.2}× the read alone",
        r.local_copy_mib_s,
        r.local_copy_mib_s / r.seq_read_mib_s.max(1e-9)
    );
    let of_copy = r.initial_mib_s / r.local_copy_mib_s.max(1e-9);
    if of_copy >= 0.8 {
        format!("the storage: {copy}, and Ferry reaches {of_copy:.2}× of that copy")
    } else {
        format!(
            "the CPU, with both ends on this machine's {} cores: {copy}, Ferry reaches {of_copy:.2}× of it; the replica's {:.2} CPU-s would run on the secondary host",
            r.cpus, r.initial.cpu.replica
        )
    }
}

fn check(ratio: f64, at_least: bool, goal: f64) -> bool {
    if at_least {
        ratio >= goal
    } else {
        ratio <= goal
    }
}

fn targets(r: &BenchReport) -> Vec<Target> {
    let mut out = Vec::new();
    let i = &r.initial;
    let icpu = i.cpu.primary() + i.cpu.replica;
    // 1a
    let ratio = r.initial_mib_s / r.seq_read_mib_s.max(1e-9);
    out.push(Target {
        id: "1a",
        what: "initial replication vs sequential read".into(),
        measured: format!("{:.1} vs {:.1} MiB/s", r.initial_mib_s, r.seq_read_mib_s),
        goal: "≥ 0.80×".into(),
        ratio: Some(ratio),
        pass: Some(check(ratio, true, 0.8)),
        bound: format!(
            "{}; every byte is also handled on the way: QEMU reads it and serves it over NBD ({:.2} CPU-s), the agent hashes, frames and encrypts it ({:.2}), the replica decrypts, verifies and writes it ({:.2}); {}",
            storage_or_cpu(r),
            i.cpu.qemu,
            i.cpu.agent,
            i.cpu.replica,
            util_note(icpu, i.wall, r.cpus, r.initial_sys)
        ),
    });
    // 1b, 2
    match &r.rsync {
        Some(rs) => {
            let rate = rs.mib_s(rs.initial_daemon);
            let ratio = r.initial_mib_s / rate.max(1e-9);
            out.push(Target {
                id: "1b",
                what: "initial replication vs rsync over loopback".into(),
                measured: format!("{:.1} vs {:.1} MiB/s", r.initial_mib_s, rate),
                goal: "≥ 2.30×".into(),
                ratio: Some(ratio),
                pass: Some(check(ratio, true, 2.3)),
                bound: format!(
                    "rsync --whole-file: one unencrypted stream, no per-extent hash, no fsync ({:.2} CPU-s); Ferry: TLS and blake3 at both ends, direct writes ({:.2} CPU-s){}",
                    rs.initial_daemon_cpu,
                    icpu,
                    if rate * 2.3 > r.seq_read_mib_s {
                        format!(
                            "; 2.3× rsync is {:.0} MiB/s, more than the disk's own sequential read ({:.0} MiB/s)",
                            rate * 2.3,
                            r.seq_read_mib_s
                        )
                    } else if rate * 2.3 > r.local_copy_mib_s {
                        format!(
                            "; 2.3× rsync is {:.0} MiB/s, more than a plain local copy onto the replica's file system reaches ({:.0} MiB/s): rsync's writes stay in the page cache when it ends, a durable replica's cannot",
                            rate * 2.3,
                            r.local_copy_mib_s
                        )
                    } else {
                        String::new()
                    }
                ),
            });
            let ratio = rs.delta.as_secs_f64() / r.delta.wall.as_secs_f64().max(1e-9);
            out.push(Target {
                id: "2",
                what: format!("delta cycle at {}% change vs rsync delta", r.delta_percent),
                measured: format!(
                    "{:.0} ms vs {:.0} ms (medians of {} rounds)",
                    ms(r.delta.wall),
                    ms(rs.delta),
                    r.delta_rounds.len()
                ),
                goal: "≥ 40×".into(),
                ratio: Some(ratio),
                pass: Some(check(ratio, true, 40.0)),
                bound: format!(
                    "Ferry's cycle is fixed cost, not data: capture {:.0} ms (fleecing nodes, QMP transaction, NBD export) + ship {:.0} ms (TLS handshake, NBD reads, overlay write, fsync, catalog, pull teardown) for {:.1} MiB; rsync reads both {:.0} MiB copies",
                    ms(r.delta.capture),
                    ms(r.delta.ship()),
                    mib(r.delta.data_bytes),
                    mib(rs.image_bytes)
                ),
            });
        }
        None => {
            for (id, what) in [
                ("1b", "initial replication vs rsync over loopback".to_string()),
                ("2", format!("delta cycle at {}% change vs rsync delta", r.delta_percent)),
            ] {
                out.push(Target {
                    id,
                    what,
                    measured: "-".into(),
                    goal: if id == "2" { "≥ 40×".into() } else { "≥ 2.30×".into() },
                    ratio: None,
                    pass: None,
                    bound: r.rsync_note.clone(),
                });
            }
        }
    }
    // 3
    let z = &r.mixed_zstd;
    let b = &r.baseline;
    let ratio = z.cpu.primary() / b.total().max(1e-9);
    out.push(Target {
        id: "3",
        what: "delta CPU vs read+blake3+zstd+TLS alone".into(),
        measured: format!(
            "{:.3} vs {:.3} CPU-s ({:.0} MiB; median round of [{}])",
            z.cpu.primary(),
            b.total(),
            mib(z.data_bytes),
            r.cpu_ratio_rounds.iter().map(|x| format!("{x:.2}×")).collect::<Vec<_>>().join(", ")
        ),
        goal: "≤ 1.25×".into(),
        ratio: Some(ratio),
        pass: Some(check(ratio, false, 1.25)),
        bound: format!(
            "QEMU {:.3} s (reads the changed bytes and serves them over NBD), agent {:.3} s (NBD receive, blake3, zstd, TLS, TCP), qemu-img {:.3} s; the baseline reads once: read {:.3} + blake3 {:.3} + zstd {:.3} + TLS {:.3}; replica side {:.3} s not counted",
            z.cpu.qemu, z.cpu.agent, z.cpu.qemu_img, b.read_s, b.hash_s, b.zstd_s, b.tls_s, z.cpu.replica
        ),
    });
    // 4: frames + TLS record overhead vs zstd's own stream, + 2 %.
    let wire = z.wire_bytes as f64 * b.tls_overhead.max(1.0);
    let ratio = wire / (r.zstd_stream_bytes.max(1) as f64);
    out.push(Target {
        id: "4",
        what: "wire bytes vs changed × zstd -1 ratio".into(),
        measured: format!("{:.4} vs {:.4} of changed (raw {:.4})", wire / z.data_bytes.max(1) as f64, r.zstd_own_ratio, r.wire_ratio_raw),
        goal: "≤ 1.02×".into(),
        ratio: Some(ratio),
        pass: Some(check(ratio, false, 1.02)),
        bound: format!(
            "{} frames × {} B headers + TLS records (+{:.2}%); Ferry compresses each 1 MiB extent on its own, zstd -1 sees one stream",
            z.extents,
            FRAME_HEADER,
            (b.tls_overhead - 1.0) * 100.0
        ),
    });
    // 5
    let ratio = r.idle_cycle_time.as_secs_f64() / 0.050;
    out.push(Target {
        id: "5",
        what: "idle cycle (no changes), big sparse disk".into(),
        measured: format!(
            "{:.1} ms on {:.0} GiB ({:.1} ms on {:.1} GiB)",
            ms(r.idle_cycle_time),
            r.idle_disk_bytes as f64 / GIB,
            ms(r.idle_small_time),
            r.disk_bytes as f64 / GIB
        ),
        goal: "≤ 50 ms".into(),
        ratio: Some(ratio),
        pass: Some(check(ratio, false, 1.0)),
        bound: format!(
            "fixed cost of a cycle, not of the disk size: capture {:.1} ms (bitmap query and QMP transaction; no disk to copy), ship {:.1} ms (TLS handshake, empty overlay written and fsynced, catalog fsync)",
            ms(r.idle_capture_time),
            ms(r.idle_cycle_time.saturating_sub(r.idle_capture_time))
        ),
    });
    // 6
    let ratio = r.peak_rss_bytes as f64 / (200.0 * MIB as f64);
    out.push(Target {
        id: "6",
        what: "resident memory replicating 10 disks".into(),
        measured: format!("{:.1} MiB peak, {} disks", mib(r.peak_rss_bytes), r.mem_disks),
        goal: "≤ 200 MiB".into(),
        ratio: Some(ratio),
        pass: Some(check(ratio, false, 1.0)),
        bound: format!(
            "one process holds the agent, the replica receiver and the bench ({:.1} MiB at the start of the phase); extent queues of 8 × 1 MiB per disk being shipped",
            mib(r.mem_rss_start)
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rep_5_bench_figure_of_rounds_is_the_median_round() {
        let rounds = [Duration::from_millis(54), Duration::from_millis(31), Duration::from_millis(40)];
        assert_eq!(median_by(&rounds, |d| *d), Some(&Duration::from_millis(40)));
        assert_eq!(median_by(&rounds[..1], |d| *d), Some(&Duration::from_millis(54)));
        assert_eq!(median_by(&rounds[..2], |d| *d), Some(&Duration::from_millis(54)), "upper of two");
        assert_eq!(median_by::<Duration, Duration>(&[], |d| *d), None);
        assert_eq!(fmt_rounds(&rounds), "54, 31, 40");
    }
}
