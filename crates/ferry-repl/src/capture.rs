//! Change capture on the primary (REP-2, REP-3, POL-5): persistent dirty bitmaps and ONE QMP
//! `transaction` per cycle covering every disk of the VM, so each point is crash-consistent across
//! disks.
//!
//! Bitmaps are named `ferry-<generation>`; the generation is also the cycle id of the point taken
//! when that bitmap was created. Steady state: exactly one recording `ferry-N` per disk.
//!
//! Points are *pulled* from QEMU (one pass, no copy written and read back): per disk a fleecing
//! node `ferry-fl-<cycle>-<disk>` (a scratch qcow2 whose backing is the running disk) and a
//! `blockdev-backup sync=none` job into it, so QEMU copies old data into the fleecing node
//! before the guest overwrites it and the node keeps reading as the disk did at the
//! transaction. QEMU's NBD server exports the node; the sender reads it with Ferry's NBD client.
//!
//! * seed ([`Capture::seed_pull`]): `{bitmap-add ferry-S; backup sync=none → fleece}` per disk,
//!   one transaction; exported with its `base:allocation` map (a full copy of the data).
//! * cycle ([`Capture::cycle`]): one transaction `{bitmap-add ferry-N+1; bitmap-disable ferry-N;
//!   backup sync=none → fleece}` per disk with changes; the export also carries `ferry-N` as the
//!   `qemu:dirty-bitmap:ferry-N` context: exactly the clusters to send.
//! * [`Capture::commit`] after the replica acknowledged a durable apply: stop the pull (exports,
//!   jobs, fleecing nodes, NBD server), then remove `ferry-N`.
//! * [`Capture::abort`] on any failure: stop the pull, merge `ferry-N` into `ferry-N+1`, remove
//!   `ferry-N`; the next cycle ships the union, nothing is lost.
//!
//! Offline export, resync and reverse-replication onboarding still copy the point into staging
//! images with `blockdev-backup` ([`Capture::seed`], [`Capture::seed_top_layer`]): those files
//! outlive the agent (an export resumes after a restart) or are compared block by block.
//!
//! After an agent restart [`Capture::discover`] finds the bitmaps again through
//! `query-named-block-nodes`; a half-finished cycle (two bitmaps) is folded back and a pull left
//! by a dead agent is stopped. A missing bitmap (raw disk after a QEMU restart) or an
//! inconsistent one (after a QEMU crash) means [`TrackingState::ResyncRequired`].
//!
//! While a pull runs, QEMU's copy-before-write filter sits above the disk: the guest writes
//! through it as always, but a second writer on the disk node itself is refused (tests write
//! through the guest's device).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_qemu::block::action;
use ferry_qemu::{DiskFormat, Qga, Qmp};

use crate::error::{Error, ErrorKind, Result};

const PREFIX: &str = "ferry-";
/// Fleecing nodes, their jobs and NBD exports (names that never parse as a bitmap generation).
const PULL_PREFIX: &str = "ferry-fl-";

/// One disk of a protected VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureDisk {
    /// Disk target (`vda`); also Ferry's QEMU format node name.
    pub target: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Image format: qcow2 disks get persistent bitmaps, raw disks in-memory ones.
    pub format: DiskFormat,
}

/// What the tracking bitmaps say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackingState {
    /// No Ferry bitmap on any disk: seed first.
    Untracked,
    /// Every disk records into `ferry-<generation>`.
    Tracking { generation: u64 },
    /// Tracking is lost or unusable; a compare-based resync is needed (REP-6).
    ResyncRequired { reason: String },
}

/// A captured point waiting to be shipped.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Cycle id = generation of the bitmap that records changes after this point.
    pub cycle: u64,
    /// The bitmap holding this cycle's changes (`None` for a seed).
    pub old_generation: Option<u64>,
    /// Staging image per disk, in disk order; `None` for a disk without changes in this cycle
    /// (nothing to copy: its point layer is empty).
    pub files: Vec<Option<PathBuf>>,
    /// Full image (seed) rather than a delta.
    pub base: bool,
    pub app_consistent: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Non-fatal problems (e.g. the guest agent did not answer).
    pub warnings: Vec<String>,
    /// Set when the point is read from QEMU over NBD instead of staging copies (a pulled seed):
    /// the NBD socket; disk `i` is export [`Capture::pull_export`]. `files` then hold the
    /// fleecing images (scratch, removed with the point).
    pub pull: Option<PathBuf>,
}

/// Change capture of one VM.
#[derive(Debug, Clone, Copy)]
enum SeedCopy {
    Full,
    TopLayer,
}

#[derive(Debug, Clone)]
pub struct Capture {
    disks: Vec<CaptureDisk>,
    staging: PathBuf,
    /// Budget for each block job.
    pub job_timeout: Duration,
    /// Budget for guest freeze / thaw.
    pub freeze_timeout: Duration,
}

fn bitmap(generation: u64) -> String {
    format!("{PREFIX}{generation}")
}

fn q(what: impl Into<String>) -> impl FnOnce(ferry_qemu::Error) -> Error {
    let what = what.into();
    move |e| Error::qemu(what, e)
}

impl Capture {
    /// Capture for `disks`, staging images under `staging` (created if missing).
    pub fn new(disks: Vec<CaptureDisk>, staging: &Path) -> Result<Self> {
        if disks.is_empty() || disks.len() > crate::protocol::MAX_DISKS {
            return Err(Error::new(ErrorKind::Invalid, "A VM needs 1 to 16 replicated disks"));
        }
        std::fs::create_dir_all(staging).map_err(|e| Error::io(format!("Cannot create {}", staging.display()), e))?;
        Ok(Self {
            disks,
            staging: staging.to_path_buf(),
            job_timeout: Duration::from_secs(3600),
            freeze_timeout: Duration::from_secs(10),
        })
    }

    /// The disks.
    pub fn disks(&self) -> &[CaptureDisk] {
        &self.disks
    }

    /// Staging image of `disk` for `cycle`.
    pub fn staging_file(&self, cycle: u64, disk: &CaptureDisk) -> PathBuf {
        self.staging.join(format!("c{cycle}-{}.qcow2", disk.target))
    }

    fn node(cycle: u64, disk: &CaptureDisk) -> String {
        format!("ferry-stg-{cycle}-{}", disk.target)
    }

    fn job(cycle: u64, disk: &CaptureDisk) -> String {
        format!("ferry-{cycle}-{}", disk.target)
    }

    /// Find the tracking state after a (re)start; folds a half-finished cycle back (merge the
    /// older bitmap into the newer) and detaches leftover staging nodes.
    pub async fn discover(&self, qmp: &Qmp) -> Result<TrackingState> {
        let nodes = qmp.query_named_block_nodes().await.map_err(q("Cannot list block nodes"))?;
        if nodes.iter().any(|n| n.node_name.starts_with(PULL_PREFIX)) {
            self.release_pulls(qmp).await;
        }
        for n in nodes.iter().filter(|n| n.node_name.starts_with("ferry-stg-")) {
            if let Err(e) = qmp.blockdev_del(&n.node_name).await {
                tracing::warn!(node = %n.node_name, error = %e, "Cannot detach leftover staging node");
            }
        }
        let mut gens_per_disk = Vec::new();
        for d in &self.disks {
            let node = nodes.iter().find(|n| n.node_name == d.target).ok_or_else(|| {
                Error::new(ErrorKind::Invalid, format!("Disk {} has no block node in this VM", d.target))
            })?;
            let mut gens = Vec::new();
            for b in &node.dirty_bitmaps {
                let Some(g) = b.name.strip_prefix(PREFIX).and_then(|s| s.parse::<u64>().ok()) else { continue };
                if b.inconsistent {
                    return Ok(TrackingState::ResyncRequired {
                        reason: format!("Bitmap {} of {} is inconsistent (QEMU exited uncleanly)", b.name, d.target),
                    });
                }
                gens.push((g, b.recording));
            }
            gens.sort();
            gens_per_disk.push(gens);
        }
        if gens_per_disk.iter().all(Vec::is_empty) {
            return Ok(TrackingState::Untracked);
        }
        let Some(newest) = gens_per_disk.iter().filter_map(|g| g.last().map(|x| x.0)).max() else {
            return Ok(TrackingState::Untracked);
        };
        for (d, gens) in self.disks.iter().zip(&gens_per_disk) {
            if gens.last().map(|x| x.0) != Some(newest) || !gens.last().is_some_and(|x| x.1) {
                return Ok(TrackingState::ResyncRequired {
                    reason: format!("Disk {} has no recording bitmap {}", d.target, bitmap(newest)),
                });
            }
        }
        // Fold older generations (an interrupted cycle) into the newest.
        let mut actions = Vec::new();
        for (d, gens) in self.disks.iter().zip(&gens_per_disk) {
            for (g, _) in gens.iter().filter(|(g, _)| *g != newest) {
                let old = bitmap(*g);
                actions.push(action::bitmap_merge(&d.target, &bitmap(newest), &[&old]));
                actions.push(action::bitmap_remove(&d.target, &old));
            }
        }
        if !actions.is_empty() {
            tracing::info!(generation = newest, "Folding bitmaps of an interrupted cycle");
            qmp.transaction(actions).await.map_err(q("Cannot fold bitmaps of an interrupted cycle"))?;
        }
        Ok(TrackingState::Tracking { generation: newest })
    }

    /// Remove every Ferry bitmap (before a seed or resync: tracking starts over).
    pub async fn drop_tracking(&self, qmp: &Qmp) -> Result<()> {
        for d in &self.disks {
            let bitmaps = qmp.dirty_bitmaps(&d.target).await.map_err(q("Cannot list bitmaps"))?;
            for b in bitmaps.iter().filter(|b| b.name.starts_with(PREFIX)) {
                qmp.block_dirty_bitmap_remove(&d.target, &b.name)
                    .await
                    .map_err(q(format!("Cannot remove bitmap {} of {}", b.name, d.target)))?;
            }
        }
        Ok(())
    }

    /// Create and attach a staging image for every disk `copy` selects.
    async fn add_staging(&self, qmp: &Qmp, cycle: u64, copy: &[bool]) -> Result<Vec<Option<PathBuf>>> {
        let mut files = Vec::new();
        for (d, c) in self.disks.iter().zip(copy) {
            if !c {
                files.push(None);
                continue;
            }
            let f = self.staging_file(cycle, d);
            let _ = std::fs::remove_file(&f);
            // An empty qcow2 written in-process (no `qemu-img create` on the cycle's path).
            let (path, size) = (f.clone(), d.size);
            tokio::task::spawn_blocking(move || crate::qcow2::Qcow2Writer::create(&path, size, false)?.finish(None))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Io, "Staging image task failed", e))?
                .map_err(|e| {
                    Error::with_source(ErrorKind::Io, format!("Cannot create staging image {}", f.display()), e)
                })?;
            if let Err(e) = qmp.blockdev_add_qcow2(&Self::node(cycle, d), &f).await {
                self.cleanup_staging(qmp, cycle, &files).await;
                return Err(Error::qemu(format!("Cannot attach staging image {}", f.display()), e));
            }
            files.push(Some(f));
        }
        Ok(files)
    }

    async fn cleanup_staging(&self, qmp: &Qmp, cycle: u64, files: &[Option<PathBuf>]) {
        for (d, f) in self.disks.iter().zip(files) {
            let Some(f) = f else { continue };
            if let Err(e) = qmp.blockdev_del(&Self::node(cycle, d)).await {
                tracing::debug!(error = %e, "Staging node already detached");
            }
            let _ = std::fs::remove_file(f);
        }
    }

    /// Wait for every job, detach the staging nodes; any failed job fails the whole capture.
    async fn finish_jobs(&self, qmp: &Qmp, cycle: u64, files: &[Option<PathBuf>]) -> Result<()> {
        let mut first_err = None;
        for (d, _) in self.disks.iter().zip(files).filter(|(_, f)| f.is_some()) {
            if let Err(e) = qmp.wait_block_job(&Self::job(cycle, d), self.job_timeout).await {
                first_err.get_or_insert(Error::qemu(format!("Capture of {} failed", d.target), e));
            }
        }
        for (d, _) in self.disks.iter().zip(files).filter(|(_, f)| f.is_some()) {
            if let Err(e) = qmp.blockdev_del(&Self::node(cycle, d)).await {
                first_err.get_or_insert(Error::qemu(format!("Cannot detach staging image of {}", d.target), e));
            }
        }
        match first_err {
            Some(e) => {
                for f in files.iter().flatten() {
                    let _ = std::fs::remove_file(f);
                }
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Seed (initial replication or resync): new bitmap `ferry-<cycle>` + full copy of every disk
    /// at one point. Existing Ferry bitmaps are removed first.
    pub async fn seed(&self, qmp: &Qmp, cycle: u64) -> Result<Snapshot> {
        self.seed_with(qmp, cycle, SeedCopy::Full).await
    }

    /// Seed for reverse replication (FO-5): new bitmap `ferry-<cycle>` + a copy of only what the
    /// top layer of every disk holds, at one point. The top layer of a recovered VM is the
    /// overlay put on its recovery point at failover, so the copy is exactly the divergence from
    /// that point, as QEMU itself knows it (no on-disk metadata read while the VM runs).
    pub async fn seed_top_layer(&self, qmp: &Qmp, cycle: u64) -> Result<Snapshot> {
        let mut snap = self.seed_with(qmp, cycle, SeedCopy::TopLayer).await?;
        snap.base = false;
        Ok(snap)
    }

    async fn seed_with(&self, qmp: &Qmp, cycle: u64, copy: SeedCopy) -> Result<Snapshot> {
        self.drop_tracking(qmp).await?;
        let files = self.add_staging(qmp, cycle, &vec![true; self.disks.len()]).await?;
        let mut actions = Vec::new();
        for d in &self.disks {
            actions.push(action::bitmap_add(&d.target, &bitmap(cycle), d.format == DiskFormat::Qcow2));
            let (job, node) = (Self::job(cycle, d), Self::node(cycle, d));
            actions.push(match copy {
                SeedCopy::Full => action::backup_full(&job, &d.target, &node),
                SeedCopy::TopLayer => action::backup_top(&job, &d.target, &node),
            });
        }
        let created_at = chrono::Utc::now();
        if let Err(e) = qmp.transaction(actions).await {
            self.cleanup_staging(qmp, cycle, &files).await;
            return Err(Error::qemu("Seed transaction failed", e));
        }
        // On failure the bitmap stays; the next seed removes it again.
        self.finish_jobs(qmp, cycle, &files).await?;
        Ok(Snapshot {
            cycle,
            old_generation: None,
            files,
            base: true,
            app_consistent: false,
            created_at,
            warnings: vec![],
            pull: None,
        })
    }

    /// Name of the dirty bitmap of `generation` (on every disk).
    pub fn bitmap_name(generation: u64) -> String {
        bitmap(generation)
    }

    /// Name of disk `disk`'s fleecing node, its `sync=none` job and its NBD export in `cycle`.
    pub fn pull_export(cycle: u64, disk: &CaptureDisk) -> String {
        format!("{PULL_PREFIX}{cycle}-{}", disk.target)
    }

    /// Where QEMU's NBD server listens for this VM's pulls: in the staging directory, or (if
    /// that path is too long for a Unix socket) in the temporary directory under a name derived
    /// from it.
    fn nbd_socket(&self) -> PathBuf {
        let p = self.staging.join("nbd.sock");
        if p.as_os_str().len() <= 100 {
            return p;
        }
        let h = blake3::hash(self.staging.as_os_str().as_encoded_bytes()).to_hex();
        std::env::temp_dir().join(format!("ferry-nbd-{}.sock", &h[..16]))
    }

    /// Seed read in one pass (REP-2): new bitmap `ferry-<cycle>` per disk and, in the same
    /// transaction, a `sync=none` backup job into a fleecing image whose backing is the disk.
    /// Each fleecing node reads as its disk did at that instant (QEMU copies old data into it
    /// before the guest overwrites it), and is exported over NBD on [`Snapshot::pull`]; the
    /// sender reads it directly: no full staging copy is written and read back. Release with
    /// [`Capture::commit`] or [`Capture::abort`], which stop the exports and jobs.
    pub async fn seed_pull(&self, qmp: &Qmp, cycle: u64) -> Result<Snapshot> {
        self.drop_tracking(qmp).await?;
        self.release_pulls(qmp).await;
        let all = vec![true; self.disks.len()];
        let files = self.add_fleece(qmp, cycle, &all).await?;
        let mut actions = Vec::new();
        for d in &self.disks {
            actions.push(action::bitmap_add(&d.target, &bitmap(cycle), d.format == DiskFormat::Qcow2));
            let id = Self::pull_export(cycle, d);
            actions.push(action::backup_none(&id, &d.target, &id));
        }
        let created_at = chrono::Utc::now();
        let result = match qmp.transaction(actions).await {
            Ok(()) => self.export_pull(qmp, cycle, &files, None).await,
            Err(e) => Err(Error::qemu("Seed transaction failed", e)),
        };
        // On failure the bitmap stays (like a failed copy seed); the next seed removes it again.
        let sock = self.drop_pull_on_error(qmp, &files, result).await?;
        Ok(Snapshot {
            cycle,
            old_generation: None,
            files,
            base: true,
            app_consistent: false,
            created_at,
            warnings: vec![],
            pull: Some(sock),
        })
    }

    /// Create and attach a fleecing image (backing: the disk) for every disk `copy` selects.
    async fn add_fleece(&self, qmp: &Qmp, cycle: u64, copy: &[bool]) -> Result<Vec<Option<PathBuf>>> {
        let mut files = Vec::new();
        for (d, c) in self.disks.iter().zip(copy) {
            if !c {
                files.push(None);
                continue;
            }
            let f = self.staging.join(format!("f{cycle}-{}.qcow2", d.target));
            let _ = std::fs::remove_file(&f);
            let (path, size) = (f.clone(), d.size);
            let created = tokio::task::spawn_blocking(move || {
                crate::qcow2::Qcow2Writer::create(&path, size, false)?.finish(None)
            })
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, "Fleecing image task failed", e))
            .and_then(|r| r);
            let attached = match created {
                Ok(_) => qmp
                    .blockdev_add_fleece(&Self::pull_export(cycle, d), &f, &d.target)
                    .await
                    .map_err(q(format!("Cannot attach fleecing image {}", f.display()))),
                Err(e) => Err(e),
            };
            files.push(Some(f));
            if let Err(e) = attached {
                self.release_pulls(qmp).await;
                Self::remove_paths(&files);
                return Err(e);
            }
        }
        Ok(files)
    }

    /// Start QEMU's NBD server and export the fleecing node of every disk that has one, with
    /// `bitmap` (on the disk) as a metadata context when given. Returns the socket.
    async fn export_pull(
        &self,
        qmp: &Qmp,
        cycle: u64,
        files: &[Option<PathBuf>],
        bitmap: Option<&str>,
    ) -> Result<PathBuf> {
        let sock = self.nbd_socket();
        let _ = std::fs::remove_file(&sock);
        qmp.nbd_server_start(&sock)
            .await
            .map_err(q(format!("Cannot start QEMU's NBD server on {}", sock.display())))?;
        let bitmaps: Vec<&str> = bitmap.into_iter().collect();
        for (d, _) in self.disks.iter().zip(files).filter(|(_, f)| f.is_some()) {
            let id = Self::pull_export(cycle, d);
            qmp.nbd_export_add(&id, &id, &d.target, &bitmaps).await.map_err(q(format!("Cannot export {id}")))?;
        }
        Ok(sock)
    }

    /// On error, release the pull and remove its fleecing images.
    async fn drop_pull_on_error<T>(&self, qmp: &Qmp, files: &[Option<PathBuf>], r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.release_pulls(qmp).await;
            Self::remove_paths(files);
        }
        r
    }

    /// Stop every pull of this VM, whatever its cycle: NBD exports, `sync=none` jobs and
    /// fleecing nodes named by Ferry (a crashed agent's leftovers included), QEMU's NBD server
    /// and the fleecing images.
    pub async fn release_pulls(&self, qmp: &Qmp) {
        let mut ids: Vec<String> = Vec::new();
        let exports = qmp.block_exports().await.unwrap_or_default();
        let jobs = qmp.block_jobs().await.unwrap_or_default();
        let nodes = qmp.query_named_block_nodes().await.unwrap_or_default();
        for id in exports.into_iter().chain(jobs).chain(nodes.into_iter().map(|n| n.node_name)) {
            if id.starts_with(PULL_PREFIX) && !ids.contains(&id) {
                ids.push(id);
            }
        }
        self.release_pull_ids(qmp, &ids).await;
    }

    /// Stop the pull of `snap` (its names are known: no listing on the cycle's path).
    async fn release_pull(&self, qmp: &Qmp, snap: &Snapshot) {
        let ids: Vec<String> = self
            .disks
            .iter()
            .zip(&snap.files)
            .filter(|(_, f)| f.is_some())
            .map(|(d, _)| Self::pull_export(snap.cycle, d))
            .collect();
        self.release_pull_ids(qmp, &ids).await;
    }

    /// For each id (export = job = fleecing node name): remove the export, stop the NBD server,
    /// cancel the job, detach the node; then remove the fleecing images. Best effort: a step that
    /// fails is logged (a missing export or job is not an error).
    async fn release_pull_ids(&self, qmp: &Qmp, ids: &[String]) {
        let t = Duration::from_secs(30);
        let missing = |e: &ferry_qemu::Error| match e.kind() {
            ferry_qemu::ErrorKind::Qmp { desc, .. } => {
                let d = desc.to_ascii_lowercase();
                d.contains("not found") || d.contains("cannot find") || d.contains("no active")
            }
            _ => false,
        };
        for id in ids {
            if let Err(e) = qmp.block_export_del(id, t).await {
                if !missing(&e) {
                    tracing::warn!(export = %id, error = %e, "Cannot remove NBD export");
                }
            }
        }
        if let Err(e) = qmp.nbd_server_stop().await {
            tracing::warn!(error = %e, "Cannot stop QEMU's NBD server");
        }
        let _ = std::fs::remove_file(self.nbd_socket());
        for id in ids {
            if let Err(e) = qmp.block_job_cancel(id, t).await {
                if !missing(&e) {
                    tracing::warn!(job = %id, error = %e, "Cannot cancel fleecing job");
                }
            }
        }
        for id in ids {
            if let Err(e) = qmp.blockdev_del(id).await {
                if !missing(&e) {
                    tracing::warn!(node = %id, error = %e, "Cannot detach fleecing node");
                }
            }
        }
        // Fleecing images (`f<cycle>-<disk>.qcow2`): only one pull runs per VM, so any left here
        // belongs to a finished or abandoned one.
        if let Ok(dir) = std::fs::read_dir(&self.staging) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let fleece = name.strip_prefix('f').and_then(|r| r.split_once('-')).is_some_and(|(c, rest)| {
                    !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && rest.ends_with(".qcow2")
                });
                if fleece {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// One delta capture: changes recorded in `ferry-<old>` since the previous point, as of now.
    /// With `qga`, the guest is frozen around the transaction (POL-5); if it does not answer, the
    /// point is crash-consistent and a warning says so.
    /// With `skip_idle`, disks whose bitmap is empty are not copied (see below); without it every
    /// disk is.
    pub async fn cycle(
        &self,
        qmp: &Qmp,
        old: u64,
        cycle: u64,
        qga: Option<&Path>,
        skip_idle: bool,
    ) -> Result<Snapshot> {
        if cycle <= old {
            return Err(Error::new(ErrorKind::Invalid, format!("Cycle {cycle} must follow generation {old}")));
        }
        // A disk whose bitmap is empty needs no copy: its layer of this point is empty. Its old
        // bitmap is disabled in the same transaction as the others and checked again after it:
        // a write that slipped in between fails the cycle (folded into the next), so the point
        // stays crash-consistent across disks.
        let t0 = std::time::Instant::now();
        let idle_before = match skip_idle {
            true => self.idle_disks(qmp, old).await?,
            false => vec![false; self.disks.len()],
        };
        let copy: Vec<bool> = idle_before.iter().map(|idle| !idle).collect();
        let files = self.add_fleece(qmp, cycle, &copy).await?;
        let staged = t0.elapsed();
        let mut actions = Vec::new();
        for (d, c) in self.disks.iter().zip(&copy) {
            actions.push(action::bitmap_add(&d.target, &bitmap(cycle), d.format == DiskFormat::Qcow2));
            actions.push(action::bitmap_disable(&d.target, &bitmap(old)));
            if *c {
                let id = Self::pull_export(cycle, d);
                actions.push(action::backup_none(&id, &d.target, &id));
            }
        }
        let mut warnings = Vec::new();
        let guard = match qga {
            Some(path) => match self.freeze(path).await {
                Ok(g) => Some(g),
                Err(e) => {
                    let w =
                        format!("Guest agent did not freeze the guest ({}); the point is crash-consistent", e.chain());
                    tracing::warn!("{w}");
                    warnings.push(w);
                    None
                }
            },
            None => None,
        };
        let created_at = chrono::Utc::now();
        let t1 = std::time::Instant::now();
        let txn = qmp.transaction(actions).await;
        let txn_time = t1.elapsed();
        let app_consistent = match guard {
            Some(g) => match g.thaw().await {
                Ok(_) => txn.is_ok(),
                Err(e) => {
                    let w = format!("Thaw failed: {e}; the point is not marked app-consistent");
                    tracing::error!("{w}");
                    warnings.push(w);
                    false
                }
            },
            None => false,
        };
        if let Err(e) = txn {
            self.drop_pull_on_error(qmp, &files, Err::<(), _>(Error::qemu("Cycle transaction failed", e))).await?;
        }
        let t2 = std::time::Instant::now();
        let exported = self.export_pull(qmp, cycle, &files, Some(&bitmap(old))).await;
        let sock = match self.drop_pull_on_error(qmp, &files, exported).await {
            Ok(s) => s,
            Err(e) => {
                self.fold(qmp, old, cycle).await?;
                return Err(e);
            }
        };
        tracing::debug!(
            cycle,
            copied = copy.iter().filter(|c| **c).count(),
            fleece_ms = staged.as_secs_f64() * 1e3,
            transaction_ms = txn_time.as_secs_f64() * 1e3,
            export_ms = t2.elapsed().as_secs_f64() * 1e3,
            "capture timings"
        );
        if idle_before.iter().any(|idle| *idle) {
            let idle_after = self.idle_disks(qmp, old).await;
            let slipped = match &idle_after {
                Ok(after) => idle_before.iter().zip(after).any(|(before, after)| *before && !after),
                Err(_) => true,
            };
            if slipped {
                self.release_pulls(qmp).await;
                Self::remove_paths(&files);
                self.fold(qmp, old, cycle).await?;
                return Err(Error::new(
                    ErrorKind::Raced,
                    "A disk was written while the cycle started; its changes go with the next cycle",
                ));
            }
        }
        Ok(Snapshot {
            cycle,
            old_generation: Some(old),
            files,
            base: false,
            app_consistent,
            created_at,
            warnings,
            pull: Some(sock),
        })
    }

    /// Bytes the newest Ferry bitmap of every disk records as changed (what the next cycle sends).
    pub async fn pending_bytes(&self, qmp: &Qmp) -> Result<u64> {
        let nodes = qmp.query_named_block_nodes().await.map_err(q("Cannot list block nodes"))?;
        Ok(self
            .disks
            .iter()
            .filter_map(|d| nodes.iter().find(|n| n.node_name == d.target))
            .filter_map(|n| {
                n.dirty_bitmaps
                    .iter()
                    .filter_map(|b| {
                        b.name.strip_prefix(PREFIX).and_then(|g| g.parse::<u64>().ok()).map(|g| (g, b.count))
                    })
                    .max()
                    .map(|(_, count)| count)
            })
            .sum())
    }

    /// Per disk: whether bitmap `ferry-<generation>` records no change.
    async fn idle_disks(&self, qmp: &Qmp, generation: u64) -> Result<Vec<bool>> {
        let nodes = qmp.query_named_block_nodes().await.map_err(q("Cannot list block nodes"))?;
        let name = bitmap(generation);
        Ok(self
            .disks
            .iter()
            .map(|d| {
                nodes
                    .iter()
                    .find(|n| n.node_name == d.target)
                    .and_then(|n| n.dirty_bitmaps.iter().find(|b| b.name == name))
                    .is_some_and(|b| b.count == 0)
            })
            .collect())
    }

    async fn freeze(&self, path: &Path) -> Result<ferry_qemu::FreezeGuard> {
        let t = self.freeze_timeout;
        let fut = async {
            let qga = Arc::new(Qga::connect(path).await?);
            qga.freeze(t).await
        };
        match tokio::time::timeout(t * 2 + Duration::from_secs(2), fut).await {
            Ok(r) => r.map_err(|e| Error::qemu("Guest freeze failed", e)),
            Err(_) => Err(Error::new(ErrorKind::Qemu, format!("Guest agent did not answer within {t:?}"))),
        }
    }

    async fn fold(&self, qmp: &Qmp, old: u64, new: u64) -> Result<()> {
        let mut actions = Vec::new();
        for d in &self.disks {
            actions.push(action::bitmap_merge(&d.target, &bitmap(new), &[&bitmap(old)]));
            actions.push(action::bitmap_remove(&d.target, &bitmap(old)));
        }
        qmp.transaction(actions).await.map_err(q("Cannot fold the unsent bitmap into the next one"))
    }

    pub(crate) fn remove_files(snap: &Snapshot) {
        Self::remove_paths(&snap.files);
    }

    fn remove_paths(files: &[Option<PathBuf>]) {
        for f in files.iter().flatten() {
            if let Err(e) = std::fs::remove_file(f) {
                tracing::debug!(file = %f.display(), error = %e, "Cannot remove staging image");
            }
        }
    }

    /// The replica durably applied `snap`: drop its bitmap and staging images (or its pull).
    pub async fn commit(&self, qmp: &Qmp, snap: &Snapshot) -> Result<()> {
        if snap.pull.is_some() {
            self.release_pull(qmp, snap).await;
        }
        if let Some(old) = snap.old_generation {
            let mut actions = Vec::new();
            for d in &self.disks {
                actions.push(action::bitmap_remove(&d.target, &bitmap(old)));
            }
            qmp.transaction(actions).await.map_err(q("Cannot remove the shipped bitmap"))?;
        }
        Self::remove_files(snap);
        Ok(())
    }

    /// Shipping `snap` failed: fold its bitmap into the next one (the next cycle sends the union)
    /// and drop the staging images. A failed seed keeps its bitmap; the next seed starts over.
    pub async fn abort(&self, qmp: &Qmp, snap: &Snapshot) -> Result<()> {
        if snap.pull.is_some() {
            self.release_pull(qmp, snap).await;
        }
        Self::remove_files(snap);
        match snap.old_generation {
            Some(old) => self.fold(qmp, old, snap.cycle).await,
            None => Ok(()),
        }
    }
}
