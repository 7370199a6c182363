//! Resynchronisation (REP-6) and onboarding onto existing replica disks (REP-7).
//!
//! 1. One transaction takes a full copy of every disk into local staging images together with a
//!    new tracking bitmap (old, lost or inconsistent Ferry bitmaps are dropped first): the source
//!    side of the comparison is a consistent point, and writes after it are tracked.
//! 2. Blocks of [`ResyncLimits::block_size`] are hashed (blake3) on both sides: locally from the
//!    staging image, remotely by `HashRequest` against the replica's latest point.
//! 3. Only differing blocks are shipped, as ONE new recovery point on top of the existing chain;
//!    the existing points are kept (the original product deleted them).
//!
//! The comparison is pausable: its cursor (disk, next block) and the differing blocks found so far
//! are persisted in `resync.json` in the staging directory after every batch. A call stops when its
//! block budget, deadline or stop flag is reached and returns [`ResyncOutcome::Paused`]; the next
//! call resumes from the cursor. The final transfer itself resumes like any cycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::capture::Snapshot;
use crate::engine::{CycleReport, Primary};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{hash_blocks, ChainReader, PlannedExtent};
use crate::protocol::ExtentKind;
use crate::replica::atomic_write;
use crate::send::{send_cycle, CycleSource, Session};

/// Limits of one resync call.
#[derive(Debug, Clone)]
pub struct ResyncLimits {
    /// Block size of the comparison (multiple of 64 KiB, at most 4 MiB).
    pub block_size: u64,
    /// Blocks per hash request.
    pub batch: u32,
    /// Pause after comparing this many blocks in this call.
    pub max_blocks: Option<u64>,
    /// Pause after this much time in this call (time window).
    pub max_duration: Option<Duration>,
    /// Pause when set.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for ResyncLimits {
    fn default() -> Self {
        Self { block_size: 1 << 20, batch: 1024, max_blocks: None, max_duration: None, stop: None }
    }
}

/// Where a resync stands.
#[derive(Debug, Clone)]
pub enum ResyncOutcome {
    Paused { compared_blocks: u64, total_blocks: u64 },
    Completed { report: Box<CycleReport>, compared_blocks: u64, differing_blocks: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResyncState {
    cycle: u64,
    block_size: u64,
    created_at_ms: i64,
    disk: u16,
    next_block: u64,
    compared: u64,
    diffs: Vec<(u16, u64)>,
}

impl Primary {
    fn resync_path(&self) -> std::path::PathBuf {
        self.cfg.staging_dir.join("resync.json")
    }

    fn save_resync(&self, st: &ResyncState) -> Result<()> {
        let b = serde_json::to_vec(st)
            .map_err(|e| Error::with_source(ErrorKind::Store, "Cannot encode resync state", e))?;
        atomic_write(&self.resync_path(), &b)
    }

    /// A resync is in progress (paused or interrupted).
    pub fn resync_pending(&self) -> bool {
        self.resync_path().exists()
    }

    /// REP-6 / REP-7: compare source and replica block by block and send only the differences as
    /// a new recovery point. Call again after [`ResyncOutcome::Paused`] to continue.
    pub async fn resync(&mut self, limits: &ResyncLimits) -> Result<ResyncOutcome> {
        let t0 = Instant::now();
        let bs = limits.block_size;
        if bs == 0 || !bs.is_multiple_of(crate::qcow2::CLUSTER) || bs > crate::protocol::MAX_DATA_EXTENT {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("Resync block size {bs} must be a multiple of 64 KiB up to 4 MiB"),
            ));
        }
        let existing: Option<ResyncState> = match std::fs::read(self.resync_path()) {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(_) => None,
        };
        let mut st = match existing {
            Some(s)
                if s.block_size == bs
                    && self.cfg.disks.iter().all(|d| self.capture.staging_file(s.cycle, d).exists()) =>
            {
                s
            }
            _ => {
                let cycle = self.alloc_cycle(0)?;
                let snap = self.capture.seed(self.vm.qmp(), cycle).await?;
                let st = ResyncState {
                    cycle,
                    block_size: bs,
                    created_at_ms: snap.created_at.timestamp_millis(),
                    disk: 0,
                    next_block: 0,
                    compared: 0,
                    diffs: vec![],
                };
                self.save_resync(&st)?;
                st
            }
        };
        let files: Vec<_> = self.cfg.disks.iter().map(|d| self.capture.staging_file(st.cycle, d)).collect();
        let mut readers = Vec::new();
        for (d, f) in self.cfg.disks.iter().zip(&files) {
            readers.push(Arc::new(ChainReader::open_layer(f, d.size).await?));
        }
        let total_blocks: u64 = self.cfg.disks.iter().map(|d| d.size.div_ceil(bs)).sum();
        let mut session = Session::open(&self.peer(), self.cfg.send.connect_timeout).await?;
        let mut this_call = 0u64;
        while (st.disk as usize) < self.cfg.disks.len() {
            let d = &self.cfg.disks[st.disk as usize];
            let nblocks = d.size.div_ceil(bs);
            if st.next_block >= nblocks {
                st.disk += 1;
                st.next_block = 0;
                continue;
            }
            let paused = limits.max_blocks.is_some_and(|m| this_call >= m)
                || limits.max_duration.is_some_and(|m| t0.elapsed() >= m)
                || limits.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
            if paused {
                self.save_resync(&st)?;
                tracing::info!(vm = %self.cfg.vm_id, compared = st.compared, total_blocks, "Resync paused");
                return Ok(ResyncOutcome::Paused { compared_blocks: st.compared, total_blocks });
            }
            let mut count = (limits.batch as u64).min(nblocks - st.next_block);
            if let Some(m) = limits.max_blocks {
                count = count.min(m - this_call);
            }
            let remote = session.hashes(st.disk, bs as u32, st.next_block, count as u32).await?;
            let reader = readers[st.disk as usize].clone();
            let first = st.next_block;
            let local = tokio::task::spawn_blocking(move || hash_blocks(&reader, bs, first, count))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Io, "Hash task failed", e))??;
            if remote.len() != local.len() {
                return Err(Error::protocol(format!(
                    "Replica returned {} hashes for {} blocks",
                    remote.len(),
                    local.len()
                )));
            }
            for (i, (a, b)) in local.iter().zip(&remote).enumerate() {
                if a != b {
                    st.diffs.push((st.disk, first + i as u64));
                }
            }
            st.next_block += count;
            st.compared += count;
            this_call += count;
            self.save_resync(&st)?;
        }
        drop(session);
        // Ship the differences as one point.
        let extents: Vec<PlannedExtent> = st
            .diffs
            .iter()
            .map(|&(disk, b)| {
                let size = self.cfg.disks[disk as usize].size;
                let offset = b * bs;
                PlannedExtent { disk, offset, len: bs.min(size - offset), kind: ExtentKind::Data }
            })
            .collect();
        let snap = Snapshot {
            cycle: st.cycle,
            old_generation: None,
            files: files.into_iter().map(Some).collect(),
            base: false,
            app_consistent: false,
            created_at: chrono::DateTime::from_timestamp_millis(st.created_at_ms).unwrap_or_else(chrono::Utc::now),
            warnings: vec![],
            pull: None,
        };
        let readers = readers
            .into_iter()
            .map(|r| Arc::try_unwrap(r).map_err(|_| Error::new(ErrorKind::Io, "Staging reader still shared")))
            .collect::<Result<Vec<ChainReader>>>()?;
        let src = Arc::new(CycleSource { header: self.header(&snap, false), extents, readers });
        let data_bytes = src.data_bytes();
        let t1 = Instant::now();
        let capture_time = t1 - t0;
        match send_cycle(&self.peer(), &self.send_options(), src).await {
            Ok(stats) => {
                let report = self.finish(snap, Ok((data_bytes, stats, t1.elapsed())), capture_time, t0).await?;
                let _ = std::fs::remove_file(self.resync_path());
                self.state.seeded = true;
                self.save_state()?;
                Ok(ResyncOutcome::Completed {
                    report: Box::new(report),
                    compared_blocks: st.compared,
                    differing_blocks: st.diffs.len() as u64,
                })
            }
            // Keep the staging images and the comparison: the next call only re-sends.
            Err(e) => {
                self.counters.cycles_failed += 1;
                self.counters.missed_cycles += 1;
                Err(e)
            }
        }
    }
}
