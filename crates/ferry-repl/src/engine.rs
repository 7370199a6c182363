//! Glue on the primary: [`Primary`] runs seed + initial replication and delta cycles of one VM
//! (capture → ship → commit or fold), keeps lag/size counters (REP-5) and persists the cycle
//! counter. The replica side is [`Receiver`](crate::receiver::Receiver).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_qemu::{Qmp, RunningVm};
use serde::{Deserialize, Serialize};

use crate::capture::{Capture, CaptureDisk, Snapshot, TrackingState};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{plan_layer, ChainReader};
use crate::protocol::{BeginCycle, Direction, DiskInfo};
use crate::replica::atomic_write;
use crate::send::{send_cycle, CycleSource, Peer, SendOptions, SendStats};
use crate::transport::Limiter;

/// Anything that lends a QMP connection (the VM's monitor accepts only one client).
pub trait QmpHandle: Send + Sync {
    fn qmp(&self) -> &Qmp;
}

impl QmpHandle for RunningVm {
    fn qmp(&self) -> &Qmp {
        RunningVm::qmp(self)
    }
}

impl QmpHandle for Qmp {
    fn qmp(&self) -> &Qmp {
        self
    }
}

/// Settings of one protected VM on its primary host.
#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    pub vm_id: String,
    pub pair_id: String,
    pub disks: Vec<CaptureDisk>,
    /// Local directory for staging images and the primary's small state file.
    pub staging_dir: PathBuf,
    pub peer_addr: SocketAddr,
    pub peer_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub compression: bool,
    pub limiter: Option<Arc<Limiter>>,
    /// Guest-agent socket for app-consistent cycles (POL-5).
    pub qga_socket: Option<PathBuf>,
    pub send: SendOptions,
    /// Size at which an offline export starts a new segment file (POL-8).
    pub export_segment_bytes: u64,
    /// Test hook: an offline export stops (as if the host died) after this many segments.
    #[doc(hidden)]
    pub export_stop_after_segments: Option<usize>,
}

impl PrimaryConfig {
    /// Defaults for the optional settings.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm_id: &str,
        pair_id: &str,
        disks: Vec<CaptureDisk>,
        staging_dir: &Path,
        peer_addr: SocketAddr,
        peer_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            vm_id: vm_id.into(),
            pair_id: pair_id.into(),
            disks,
            staging_dir: staging_dir.into(),
            peer_addr,
            peer_name: peer_name.into(),
            tls,
            compression: false,
            limiter: None,
            qga_socket: None,
            send: SendOptions::default(),
            export_segment_bytes: crate::offline::DEFAULT_SEGMENT_BYTES,
            export_stop_after_segments: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PrimaryState {
    pub next_cycle: u64,
    pub seeded: bool,
    /// The initial copy went out as an offline export (POL-8) rather than over the network.
    #[serde(default)]
    pub export: Option<crate::offline::ExportState>,
}

/// Per-VM replication counters (REP-5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationCounters {
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    /// Consecutive failed cycles since the last success.
    pub missed_cycles: u64,
    /// Capture time of the newest point the replica has durably.
    pub last_point: Option<DateTime<Utc>>,
    /// Data bytes captured but not yet acknowledged (the failed cycle(s) folded into the next).
    pub unsent_bytes: u64,
    pub total_wire_bytes: u64,
}

impl ReplicationCounters {
    /// Replication lag now: age of the newest durable point.
    pub fn lag(&self) -> Option<chrono::Duration> {
        self.last_point.map(|t| Utc::now() - t)
    }
}

/// Result of one cycle.
#[derive(Debug, Clone)]
pub struct CycleReport {
    pub cycle: u64,
    pub point_id: String,
    pub base: bool,
    pub app_consistent: bool,
    pub warnings: Vec<String>,
    /// Planned data bytes of the cycle.
    pub data_bytes: u64,
    /// Disks whose changes had to be copied (a disk without changes needs no copy).
    pub copied_disks: usize,
    pub send: SendStats,
    pub capture_time: Duration,
    pub send_time: Duration,
    pub total_time: Duration,
}

/// Replication of one VM from its primary host.
pub struct Primary {
    pub(crate) cfg: PrimaryConfig,
    pub(crate) vm: Arc<dyn QmpHandle>,
    pub(crate) capture: Capture,
    pub(crate) state: PrimaryState,
    pub(crate) counters: ReplicationCounters,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary").field("vm_id", &self.cfg.vm_id).field("state", &self.state).finish_non_exhaustive()
    }
}

impl Primary {
    /// Set up replication of a running VM (nothing is captured yet).
    pub fn new(cfg: PrimaryConfig, vm: Arc<dyn QmpHandle>) -> Result<Self> {
        crate::protocol::valid_name(&cfg.vm_id, "VM id")?;
        crate::protocol::valid_name(&cfg.pair_id, "Pair id")?;
        let capture = Capture::new(cfg.disks.clone(), &cfg.staging_dir)?;
        let state = match std::fs::read(cfg.staging_dir.join("primary-state.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::with_source(ErrorKind::Store, "Primary state file is unreadable", e))?,
            Err(_) => PrimaryState { next_cycle: 1, seeded: false, export: None },
        };
        Ok(Self { cfg, vm, capture, state, counters: ReplicationCounters::default() })
    }

    /// The settings (e.g. to change the export segment size before an export).
    pub fn config_mut(&mut self) -> &mut PrimaryConfig {
        &mut self.cfg
    }

    /// The capture (e.g. to tune job or freeze timeouts).
    pub fn capture_mut(&mut self) -> &mut Capture {
        &mut self.capture
    }

    /// Counters (REP-5).
    pub fn counters(&self) -> &ReplicationCounters {
        &self.counters
    }

    /// REP-5: bytes the change-tracking bitmaps record as changed since the newest capture (what
    /// the next cycle sends), read from QEMU now.
    pub async fn data_waiting(&self) -> Result<u64> {
        self.capture.pending_bytes(self.vm.qmp()).await
    }

    /// Mutable send options (compression, limiter, retries).
    pub fn send_options_mut(&mut self) -> &mut SendOptions {
        &mut self.cfg.send
    }

    /// Turn compression on or off (POL-6).
    pub fn set_compression(&mut self, on: bool) {
        self.cfg.compression = on;
    }

    /// Current tracking state (discovers bitmaps; folds an interrupted cycle). No bitmap after
    /// the replica got its base (e.g. a QEMU crash before the new bitmap was ever stored, or a
    /// raw disk after a restart) means tracking is lost: resync.
    pub async fn tracking(&self) -> Result<TrackingState> {
        // A resynchronization in progress (paused, or cut by a restart of this agent) owns the
        // newest bitmap: a delta from it would miss the differences not sent yet.
        if self.resync_pending() {
            self.capture.discover(self.vm.qmp()).await?;
            return Ok(TrackingState::ResyncRequired { reason: "A resynchronization is in progress".into() });
        }
        match self.capture.discover(self.vm.qmp()).await? {
            TrackingState::Untracked if self.state.seeded => Ok(TrackingState::ResyncRequired {
                reason: "The change-tracking bitmaps are gone (QEMU restarted or crashed)".into(),
            }),
            // Bitmaps of a seed whose initial copy never completed: the copy starts over.
            TrackingState::Tracking { .. } if !self.state.seeded => Ok(TrackingState::Untracked),
            s => Ok(s),
        }
    }

    /// A copy of the capture settings (tests drive captures directly with it).
    #[doc(hidden)]
    pub fn capture_clone(&self) -> Capture {
        self.capture.clone()
    }

    /// Cycle ids grow monotonically: the persisted counter, the newest bitmap generation and the
    /// wall clock in milliseconds, whichever is largest, so even a lost state file never reuses an
    /// id the replica has already applied.
    pub(crate) fn alloc_cycle(&mut self, at_least: u64) -> Result<u64> {
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        let c = self.state.next_cycle.max(at_least).max(now).max(1);
        self.state.next_cycle = c + 1;
        self.save_state()?;
        Ok(c)
    }

    pub(crate) fn save_state(&self) -> Result<()> {
        let b = serde_json::to_vec(&self.state)
            .map_err(|e| Error::with_source(ErrorKind::Store, "Cannot encode state", e))?;
        atomic_write(&self.cfg.staging_dir.join("primary-state.json"), &b)
    }

    pub(crate) fn peer(&self) -> Peer {
        Peer {
            addr: self.cfg.peer_addr,
            server_name: self.cfg.peer_name.clone(),
            tls: self.cfg.tls.clone(),
            vm_id: self.cfg.vm_id.clone(),
            pair_id: self.cfg.pair_id.clone(),
            direction: Direction::Forward,
        }
    }

    pub(crate) fn send_options(&self) -> SendOptions {
        let mut o = self.cfg.send.clone();
        o.compress = self.cfg.compression;
        if self.cfg.limiter.is_some() {
            o.limiter = self.cfg.limiter.clone();
        }
        o
    }

    pub(crate) fn header(&self, snap: &Snapshot, base: bool) -> BeginCycle {
        BeginCycle {
            cycle: snap.cycle,
            disks: self.cfg.disks.iter().map(|d| DiskInfo { target: d.target.clone(), size: d.size }).collect(),
            app_consistent: snap.app_consistent,
            base,
            created_at_ms: snap.created_at.timestamp_millis(),
        }
    }

    pub(crate) async fn source_of(&self, snap: &Snapshot) -> Result<CycleSource> {
        let mut readers = Vec::new();
        let mut extents = Vec::new();
        for (i, (d, f)) in self.cfg.disks.iter().zip(&snap.files).enumerate() {
            let r = match (&snap.pull, f) {
                (Some(sock), Some(_)) => {
                    let bitmap = snap.old_generation.map(Capture::bitmap_name);
                    ChainReader::open_nbd(sock, &Capture::pull_export(snap.cycle, d), d.size, bitmap.as_deref()).await?
                }
                (None, Some(f)) => ChainReader::open_layer(f, d.size).await?,
                (_, None) => ChainReader::empty(d.size),
            };
            extents.extend(plan_layer(i as u16, &r, snap.base));
            readers.push(r);
        }
        Ok(CycleSource { header: self.header(snap, snap.base), extents, readers })
    }

    /// REP-2: seed (new bitmaps + full copy of every disk at one point) and ship the allocated
    /// data as the replica's base.
    /// If the replica turns out to hold a base already (this agent died after the replica's ack
    /// but before it recorded the success), it compares block hashes instead (REP-6).
    pub async fn seed_and_initial(&mut self) -> Result<CycleReport> {
        let t0 = Instant::now();
        let cycle = self.alloc_cycle(0)?;
        let snap = self.capture.seed_pull(self.vm.qmp(), cycle).await?;
        match self.ship(snap, t0).await {
            Ok(r) => {
                self.state.seeded = true;
                self.save_state()?;
                Ok(r)
            }
            Err(e) if e.kind() == ErrorKind::Busy && e.to_string().contains("already has recovery points") => {
                tracing::warn!(vm = %self.cfg.vm_id, "The replica has a base already; comparing instead of copying");
                match self.resync(&crate::resync::ResyncLimits::default()).await? {
                    crate::resync::ResyncOutcome::Completed { report, .. } => Ok(*report),
                    crate::resync::ResyncOutcome::Paused { .. } => {
                        Err(Error::new(ErrorKind::ResyncRequired, "Comparison paused; it continues next cycle"))
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// FO-5: start replicating a recovered VM back to its original side, whose replica holds the
    /// original disks as of the failover point (adopted). Ships only what the VM's top layer
    /// holds (everything written since the failover) as one point on top of that base; tracking
    /// starts at the same instant. Only valid when the original disks equal the failover point
    /// (planned failover); otherwise use [`Primary::resync`], which compares block hashes.
    pub async fn onboard_top_layer(&mut self) -> Result<CycleReport> {
        let t0 = Instant::now();
        let cycle = self.alloc_cycle(0)?;
        let snap = self.capture.seed_top_layer(self.vm.qmp(), cycle).await?;
        self.ship(snap, t0).await.inspect(|_| {
            self.state.seeded = true;
            let _ = self.save_state();
        })
    }

    /// REP-3: one delta cycle. `app_consistent` freezes the guest around the capture when a guest
    /// agent socket is configured (falls back to crash-consistent with a warning).
    pub async fn run_cycle(&mut self, app_consistent: bool) -> Result<CycleReport> {
        let t0 = Instant::now();
        let generation = match self.tracking().await? {
            TrackingState::Tracking { generation } => generation,
            TrackingState::Untracked => {
                return Err(Error::new(
                    ErrorKind::ResyncRequired,
                    "No change tracking on this VM; seed or resync first",
                ))
            }
            TrackingState::ResyncRequired { reason } => return Err(Error::new(ErrorKind::ResyncRequired, reason)),
        };
        let cycle = self.alloc_cycle(generation + 1)?;
        let qga = if app_consistent {
            if self.cfg.qga_socket.is_none() {
                tracing::warn!(vm = %self.cfg.vm_id, "App-consistent cycle requested without a guest agent channel");
            }
            self.cfg.qga_socket.clone()
        } else {
            None
        };
        let first = self.capture.cycle(self.vm.qmp(), generation, cycle, qga.as_deref(), true).await;
        let first = match first {
            // A write raced the start on a disk taken as unchanged; it is folded into bitmap
            // `cycle` now: capture again at once, copying every disk.
            Err(e) if e.kind() == ErrorKind::Raced => {
                tracing::debug!(vm = %self.cfg.vm_id, cycle, "a write raced the cycle's start; capturing again");
                let again = self.alloc_cycle(cycle + 1)?;
                self.capture.cycle(self.vm.qmp(), cycle, again, qga.as_deref(), false).await
            }
            r => r,
        };
        let mut snap = match first {
            Ok(s) => s,
            Err(e) => {
                self.counters.cycles_failed += 1;
                self.counters.missed_cycles += 1;
                return Err(e);
            }
        };
        if app_consistent && qga.is_none() {
            snap.warnings.push("No guest agent channel; the point is crash-consistent".into());
        }
        self.ship(snap, t0).await
    }

    pub(crate) async fn ship(&mut self, snap: Snapshot, t0: Instant) -> Result<CycleReport> {
        let capture_time = t0.elapsed();
        let result = async {
            let t1 = Instant::now();
            let src = Arc::new(self.source_of(&snap).await?);
            let (data_bytes, planned) = (src.data_bytes(), t1.elapsed());
            let t2 = Instant::now();
            let stats = send_cycle(&self.peer(), &self.send_options(), src).await?;
            tracing::debug!(
                cycle = snap.cycle,
                plan_ms = planned.as_secs_f64() * 1e3,
                send_ms = t2.elapsed().as_secs_f64() * 1e3,
                "ship timings"
            );
            Ok::<_, Error>((data_bytes, stats, t1.elapsed()))
        }
        .await;
        let t3 = Instant::now();
        let r = self.finish(snap, result, capture_time, t0).await;
        tracing::debug!(release_ms = t3.elapsed().as_secs_f64() * 1e3, "finish timings");
        r
    }

    pub(crate) async fn finish(
        &mut self,
        snap: Snapshot,
        result: Result<(u64, SendStats, Duration)>,
        capture_time: Duration,
        t0: Instant,
    ) -> Result<CycleReport> {
        match result {
            Ok((data_bytes, send, send_time)) => {
                ferry_core::failpoint::hit(ferry_core::failpoint::SOURCE_AFTER_ACK);
                self.capture.commit(self.vm.qmp(), &snap).await?;
                self.counters.cycles_ok += 1;
                self.counters.missed_cycles = 0;
                self.counters.unsent_bytes = 0;
                self.counters.last_point = Some(snap.created_at);
                self.counters.total_wire_bytes += send.wire_bytes;
                Ok(CycleReport {
                    copied_disks: snap.files.iter().flatten().count(),
                    cycle: snap.cycle,
                    point_id: format!("rp-{}", snap.cycle),
                    base: snap.base,
                    app_consistent: snap.app_consistent,
                    warnings: snap.warnings,
                    data_bytes,
                    send,
                    capture_time,
                    send_time,
                    total_time: t0.elapsed(),
                })
            }
            Err(e) => {
                tracing::warn!(vm = %self.cfg.vm_id, cycle = snap.cycle, error = %e.chain(), "Cycle failed; its changes fold into the next");
                self.counters.cycles_failed += 1;
                self.counters.missed_cycles += 1;
                let staged =
                    snap.files.iter().flatten().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum::<u64>();
                match self.capture.abort(self.vm.qmp(), &snap).await {
                    // What the recording bitmaps now hold is exactly what waits for the next cycle.
                    Ok(()) if snap.old_generation.is_some() => match self.capture.pending_bytes(self.vm.qmp()).await {
                        Ok(b) => self.counters.unsent_bytes = b,
                        Err(_) => self.counters.unsent_bytes += staged,
                    },
                    Ok(()) => self.counters.unsent_bytes += staged,
                    Err(fold) => {
                        tracing::error!(error = %fold.chain(), "Folding the bitmap back failed; a resync will be needed");
                    }
                }
                Err(e)
            }
        }
    }
}
