//! CAP-1: measuring a running VM's churn without replicating it, the way a delta cycle would see
//! it: unique changed 64 KiB clusters per window, from QEMU dirty bitmaps.
//!
//! Every disk gets one in-memory (non-persistent) bitmap per window length, named
//! `churn-<tag>-<window>-<n>` (never `ferry-…`, so replication's own bitmaps and its clean-up do
//! not touch them, and a VM can be measured while it is protected; the tag keeps meters of
//! different plans on one VM apart). When a window ends, ONE QMP
//! transaction adds the next window's bitmap and disables the ended one on every disk, so no
//! write falls between two windows; the ended bitmaps' counts are then read and the bitmaps
//! removed. A cluster written many times within a window counts once, as a delta cycle sends it
//! once.
//!
//! The meter keeps nothing on disk: after a restart of the agent or of QEMU a new meter starts
//! fresh windows (stale bitmaps of an earlier meter with the same tag are removed first).

use ferry_qemu::block::action;
use ferry_qemu::Qmp;

use crate::error::{Error, ErrorKind, Result};

const PREFIX: &str = "churn-";
/// Bitmap granularity: the qcow2 cluster size, which is also replication's unit.
pub const GRANULARITY: u64 = 64 << 10;

fn prefix(tag: &str) -> String {
    format!("{PREFIX}{tag}-")
}

fn name(tag: &str, window: u32, n: u64) -> String {
    format!("{PREFIX}{tag}-{window}-{n}")
}

fn q(what: &'static str) -> impl Fn(ferry_qemu::Error) -> Error {
    move |e| Error::qemu(what, e)
}

/// One ended window of one length: unique changed bytes per disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowChurn {
    /// The window's length, in ticks of the meter.
    pub window: u32,
    /// Changed bytes per disk, in the meter's disk order.
    pub bytes: Vec<u64>,
}

impl WindowChurn {
    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }
}

/// The churn meter of one VM.
#[derive(Debug, Clone)]
pub struct ChurnMeter {
    tag: String,
    disks: Vec<String>,
    /// Window lengths in ticks, each with the number of its current window.
    windows: Vec<(u32, u64)>,
    ticks: u64,
}

impl ChurnMeter {
    /// Start measuring `disks` (QEMU node names = disk targets) in windows of the given lengths
    /// (in ticks; each ≥ 1). `tag` (letters and digits) names the meter's bitmaps; bitmaps of an
    /// earlier meter with that tag are removed first.
    pub async fn start(qmp: &Qmp, tag: &str, disks: &[String], windows: &[u32]) -> Result<ChurnMeter> {
        if disks.is_empty() || windows.is_empty() || windows.contains(&0) {
            return Err(Error::new(ErrorKind::Invalid, "A churn meter needs disks and windows of at least one tick"));
        }
        if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::new(ErrorKind::Invalid, format!("Churn meter tag {tag:?} is not letters and digits")));
        }
        let meter = ChurnMeter {
            tag: tag.to_string(),
            disks: disks.to_vec(),
            windows: windows.iter().map(|w| (*w, 0)).collect(),
            ticks: 0,
        };
        Self::remove(qmp, tag, disks).await?;
        let mut actions = Vec::new();
        for d in &meter.disks {
            for (w, n) in &meter.windows {
                actions.push(action::bitmap_add_granular(d, &name(tag, *w, *n), GRANULARITY, false));
            }
        }
        qmp.transaction(actions).await.map_err(q("Cannot add churn bitmaps"))?;
        Ok(meter)
    }

    /// The disks measured, in the order of [`WindowChurn::bytes`].
    pub fn disks(&self) -> &[String] {
        &self.disks
    }

    /// Ticks since the start.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// One tick: every window whose length divides the tick count ends; their churn is returned
    /// (shortest window first).
    pub async fn tick(&mut self, qmp: &Qmp) -> Result<Vec<WindowChurn>> {
        self.ticks += 1;
        let due: Vec<usize> =
            (0..self.windows.len()).filter(|i| self.ticks.is_multiple_of(u64::from(self.windows[*i].0))).collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut actions = Vec::new();
        for d in &self.disks {
            for i in &due {
                let (w, n) = self.windows[*i];
                actions.push(action::bitmap_add_granular(d, &name(&self.tag, w, n + 1), GRANULARITY, false));
                actions.push(action::bitmap_disable(d, &name(&self.tag, w, n)));
            }
        }
        qmp.transaction(actions).await.map_err(q("Cannot start the next churn windows"))?;
        let nodes = qmp.query_named_block_nodes().await.map_err(q("Cannot list block nodes"))?;
        let mut out = Vec::new();
        for i in &due {
            let (w, n) = self.windows[*i];
            let ended = name(&self.tag, w, n);
            let bytes = self
                .disks
                .iter()
                .map(|d| {
                    nodes
                        .iter()
                        .find(|x| &x.node_name == d)
                        .and_then(|x| x.dirty_bitmaps.iter().find(|b| b.name == ended))
                        .map_or(0, |b| b.count)
                })
                .collect();
            out.push(WindowChurn { window: w, bytes });
            for d in &self.disks {
                qmp.block_dirty_bitmap_remove(d, &ended).await.map_err(q("Cannot remove an ended churn bitmap"))?;
            }
            self.windows[*i].1 = n + 1;
        }
        Ok(out)
    }

    /// Stop measuring: the meter's bitmaps go.
    pub async fn stop(self, qmp: &Qmp) -> Result<()> {
        Self::remove(qmp, &self.tag, &self.disks).await
    }

    /// Remove the bitmaps of every meter tagged `tag` on `disks` (a meter of a dead agent).
    pub async fn remove(qmp: &Qmp, tag: &str, disks: &[String]) -> Result<()> {
        let mine = prefix(tag);
        let nodes = qmp.query_named_block_nodes().await.map_err(q("Cannot list block nodes"))?;
        for n in nodes.iter().filter(|n| disks.contains(&n.node_name)) {
            for b in n.dirty_bitmaps.iter().filter(|b| b.name.starts_with(&mine)) {
                qmp.block_dirty_bitmap_remove(&n.node_name, &b.name)
                    .await
                    .map_err(q("Cannot remove a churn bitmap"))?;
            }
        }
        Ok(())
    }
}
