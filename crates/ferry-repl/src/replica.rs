//! The replica store (target side): per protected VM a directory holding, per disk, a forward
//! qcow2 chain `base ← rp1 ← … ← rpN` and a catalog of recovery points.
//!
//! # On-disk layout
//! ```text
//! <root>/<vm-id>/catalog.json          recovery points (atomic: temp + fsync + rename + dir fsync)
//! <root>/<vm-id>/<target>-<seq>.qcow2   one overlay per disk per point; backing = previous file
//! <root>/<vm-id>/.pending-<cycle>-<target>.qcow2   an apply in progress (never listed)
//! <root>/<vm-id>/.chain.lock            flock: catalog + chain mutations
//! <root>/<vm-id>/.receive.lock          flock: the one apply in progress
//! ```
//! Backing names are relative (same directory), so a replica directory can be moved.
//! A point is listed only once its overlays are finished (header written last, fsynced, renamed)
//! and the catalog that names them is durable; the sender is acknowledged after that. Files no
//! catalog entry names (a crash mid-apply) are deleted when the VM's store is opened.
//!
//! Removing point `Pk` (retention) commits the next overlay `F(k+1)` into `Fk` (`qemu-img commit
//! -d`), so `Fk` then holds `P(k+1)`; `F(k+2)` is rebased (`rebase -u`) onto `Fk` and `F(k+1)` is
//! deleted. An intent recorded in the catalog first makes an interrupted merge finish on restart.
//!
//! # Locking table
//! | A \ B                 | capture (primary) | apply stream | apply finish | retention merge | test VM on Pk | failover on Pk |
//! |-----------------------|-------------------|--------------|--------------|-----------------|---------------|----------------|
//! | capture (primary)     | one per VM (`&mut Primary`) | yes (other host) | yes | yes | yes | yes |
//! | apply stream          |                   | no: `.receive.lock` | no: same lock | yes: writes only its `.pending` files | yes | no: refused while a failover is pending |
//! | apply finish          |                   |              | no           | no: `.chain.lock` (backing = current latest file) | yes: new file on top, chain below untouched | no (refused) |
//! | retention merge       |                   |              |              | no: `.chain.lock` | merges only points NEWER than every in-use point (in-use mark in catalog); QEMU's image lock is the second guard | same as test VM |
//! | test VM on Pk         |                   |              |              |                 | yes (each has its own overlay; marks are per tag) | yes |
//! | failover on Pk        |                   |              |              |                 |               | one per VM (catalog `failover`) |
//!
//! In-use marks (`test:<dir>`, `failover`) are written to the catalog under `.chain.lock` before
//! the overlay exists, and removed after it is deleted, so a crash can leave a stale mark (safe:
//! it only defers retention) but never an unmarked overlay.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ferry_core::retention::{plan_retention, PointInfo};
use ferry_qemu::img::{self, CreateOptions};
use ferry_qemu::DiskFormat;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::image::{hash_blocks, ChainReader};
use crate::manifest::{self, PointCheck, PointManifest};
use crate::protocol::{valid_name, BeginCycle, DiskInfo, Extent, ExtentKind};
use crate::qcow2::Qcow2Writer;

mod apply;
mod chain_check;
mod verify;
pub use apply::PendingApply;

const CATALOG: &str = "catalog.json";

/// How a point came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointKind {
    /// Initial replication (a full image).
    Initial,
    /// A delta cycle.
    Delta,
    /// An existing image adopted as the base (REP-7).
    Adopted,
}

/// One disk of a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointDisk {
    pub target: String,
    /// Overlay file name inside the VM directory.
    pub file: String,
    /// blake3 over the received extents' checksums (hex).
    pub checksum: String,
}

/// A recovery point (RP-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    pub id: String,
    pub cycle: u64,
    pub time: DateTime<Utc>,
    pub app_consistent: bool,
    pub kind: PointKind,
    /// Bytes of data this point's cycle carried.
    pub bytes: u64,
    pub disks: Vec<PointDisk>,
    /// Holders that must not lose this point's chain (`test:<dir>`, `failover`).
    #[serde(default)]
    pub in_use: Vec<String>,
    /// The last verification of the point against its manifest (RP-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<PointCheck>,
    /// blake3 of the point's manifest file (RP-1); none for points recorded without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Catalog {
    vm_id: String,
    disks: Vec<DiskEntry>,
    last_cycle: Option<u64>,
    next_seq: u64,
    points: Vec<RecoveryPoint>,
    /// Point being removed by retention (finished on open).
    #[serde(default)]
    merging: Option<String>,
    #[serde(default)]
    failover: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskEntry {
    target: String,
    size: u64,
}

/// Result of a retention run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub merged: Vec<String>,
    /// Planned merges skipped because a point at or above them is in use.
    pub deferred: Vec<String>,
}

/// Throwaway overlays on one point (test failover, inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOverlay {
    pub point_id: String,
    pub tag: String,
    /// (target, overlay path) per disk.
    pub disks: Vec<(String, PathBuf)>,
}

/// The store root: one directory per VM.
#[derive(Debug, Clone)]
pub struct ReplicaStore {
    root: PathBuf,
}

/// An exclusive `flock`, released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("Cannot open lock {}", path.display()), e))
    }

    /// Block until the lock is held.
    pub async fn acquire(path: &Path) -> Result<FileLock> {
        let f = Self::open(path)?;
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            // SAFETY: flock on an owned, open descriptor.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::io(format!("Cannot lock {}", p.display()), std::io::Error::last_os_error()));
            }
            Ok(FileLock { _file: f })
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Io, "Lock task failed", e))?
    }

    /// Take the lock now or fail with [`ErrorKind::Busy`].
    pub fn try_acquire(path: &Path) -> Result<FileLock> {
        let f = Self::open(path)?;
        // SAFETY: flock on an owned, open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::new(ErrorKind::Busy, format!("{} is locked", path.display())));
        }
        Ok(FileLock { _file: f })
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("Cannot fsync directory {}", dir.display()), e))
}

/// Write `data` to `path` atomically: temp file, fsync, rename, directory fsync.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| Error::new(ErrorKind::Invalid, "Path without a directory"))?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(format!("Cannot create {}", tmp.display()), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("Cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("Cannot rename {}", tmp.display()), e))?;
    fsync_dir(dir)
}

impl ReplicaStore {
    /// Open (create) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(format!("Cannot create {}", root.display()), e))?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// The VM's replica (directory created on first use). Finishes an interrupted merge and deletes
    /// files of interrupted applies when no apply is running.
    pub async fn vm(&self, vm_id: &str) -> Result<VmReplica> {
        valid_name(vm_id, "VM id")?;
        let dir = self.root.join(vm_id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("Cannot create {}", dir.display()), e))?;
        let vm = VmReplica { dir, vm_id: vm_id.to_string() };
        vm.recover().await?;
        Ok(vm)
    }

    /// VM ids with a replica.
    pub fn vms(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(|e| Error::io("Cannot list the replica root", e))? {
            let e = e.map_err(|e| Error::io("Cannot list the replica root", e))?;
            if e.path().join(CATALOG).exists() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }
}

/// One VM's replica.
#[derive(Debug, Clone)]
pub struct VmReplica {
    dir: PathBuf,
    vm_id: String,
}

impl VmReplica {
    /// The VM directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VM's id in the store.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    pub(crate) fn read_catalog(&self) -> Result<Catalog> {
        let p = self.dir.join(CATALOG);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::with_source(ErrorKind::Store, format!("Catalog {} is unreadable", p.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Catalog { vm_id: self.vm_id.clone(), next_seq: 1, ..Default::default() })
            }
            Err(e) => Err(Error::io(format!("Cannot read {}", p.display()), e)),
        }
    }

    pub(crate) fn write_catalog(&self, c: &Catalog) -> Result<()> {
        let b = serde_json::to_vec_pretty(c)
            .map_err(|e| Error::with_source(ErrorKind::Store, "Cannot encode catalog", e))?;
        atomic_write(&self.dir.join(CATALOG), &b)
    }

    pub(crate) async fn chain_lock(&self) -> Result<FileLock> {
        FileLock::acquire(&self.dir.join(".chain.lock")).await
    }

    async fn recover(&self) -> Result<()> {
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        if let Some(id) = cat.merging.clone() {
            tracing::warn!(vm = %self.vm_id, point = %id, "Finishing an interrupted retention merge");
            self.merge_point(&mut cat, &id).await?;
        }
        let before = cat.points.iter().map(|p| p.in_use.len()).sum::<usize>();
        for p in cat.points.iter_mut() {
            p.in_use.retain(|t| holder_alive(t));
        }
        if cat.points.iter().map(|p| p.in_use.len()).sum::<usize>() != before {
            self.write_catalog(&cat)?;
        }
        if let Ok(rd) = std::fs::read_dir(manifest::manifest_dir(&self.dir)) {
            let listed: std::collections::HashSet<String> =
                cat.points.iter().map(|p| format!("{}.json", p.id)).collect();
            for e in rd.flatten() {
                if !listed.contains(&*e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let Ok(_recv) = FileLock::try_acquire(&self.dir.join(".receive.lock")) else { return Ok(()) };
        let referenced: std::collections::HashSet<&str> =
            cat.points.iter().flat_map(|p| p.disks.iter().map(|d| d.file.as_str())).collect();
        for e in std::fs::read_dir(&self.dir).map_err(|e| Error::io("Cannot list replica directory", e))? {
            let e = e.map_err(|e| Error::io("Cannot list replica directory", e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".qcow2") && !referenced.contains(name.as_str()) {
                tracing::warn!(vm = %self.vm_id, file = %name, "Deleting unreferenced overlay (interrupted apply)");
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Recovery points, oldest first (RP-1).
    pub fn recovery_points(&self) -> Result<Vec<RecoveryPoint>> {
        let c = self.read_catalog()?;
        Ok(c.points.into_iter().filter(|p| Some(&p.id) != c.merging.as_ref()).collect())
    }

    /// Last applied cycle id.
    pub fn last_cycle(&self) -> Result<Option<u64>> {
        Ok(self.read_catalog()?.last_cycle)
    }

    /// Points as retention/selection see them.
    pub fn point_infos(&self) -> Result<Vec<PointInfo>> {
        Ok(self
            .recovery_points()?
            .into_iter()
            .map(|p| PointInfo {
                id: p.id,
                time: p.time,
                app_consistent: p.app_consistent,
                in_use: !p.in_use.is_empty(),
                processed: true,
            })
            .collect())
    }

    /// Chain of `point` for disk `target`, top first (absolute paths).
    pub fn chain(&self, point_id: &str, target: &str) -> Result<Vec<PathBuf>> {
        let c = self.read_catalog()?;
        let idx = c.points.iter().position(|p| p.id == point_id).ok_or_else(|| not_found(point_id))?;
        c.points[..=idx]
            .iter()
            .rev()
            .map(|p| {
                p.disks
                    .iter()
                    .find(|d| d.target == target)
                    .map(|d| self.dir.join(&d.file))
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("Point {} has no disk {target}", p.id)))
            })
            .collect()
    }

    /// Top file of `point` for `target`.
    pub fn point_file(&self, point_id: &str, target: &str) -> Result<PathBuf> {
        let mut chain = self.chain(point_id, target)?;
        Ok(chain.swap_remove(0))
    }

    /// Start applying a cycle. Fails with [`ErrorKind::Busy`] if another apply runs.
    pub async fn begin(&self, h: &BeginCycle) -> Result<PendingApply> {
        let recv = FileLock::try_acquire(&self.dir.join(".receive.lock"))?;
        let cat = self.read_catalog()?;
        if cat.failover.is_some() {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("VM {} has a failover pending; replication is paused", self.vm_id),
            ));
        }
        if h.base && !cat.points.is_empty() {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("VM {} already has recovery points; a resync is needed, not a new base", self.vm_id),
            ));
        }
        if !h.base {
            if cat.points.is_empty() {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!("VM {} has no base yet; initial replication first", self.vm_id),
                ));
            }
            let disks: Vec<DiskEntry> =
                h.disks.iter().map(|d| DiskEntry { target: d.target.clone(), size: d.size }).collect();
            if disks != cat.disks {
                return Err(Error::new(
                    ErrorKind::Busy,
                    "The cycle's disks differ from the replica's (a resync is needed)",
                ));
            }
        }
        let mut writers = Vec::new();
        for d in &h.disks {
            let name = format!(".pending-{}-{}.qcow2", h.cycle, d.target);
            writers.push((
                name.clone(),
                Qcow2Writer::create(&self.dir.join(&name), d.size, !h.base)?,
                blake3::Hasher::new(),
            ));
        }
        Ok(PendingApply {
            vm: self.clone(),
            header: h.clone(),
            writers,
            next_extent: 0,
            data_bytes: 0,
            covered_bytes: 0,
            folds: h.disks.iter().map(|d| manifest::DiskFold::new(&d.target, d.size, h.base)).collect(),
            _recv: recv,
        })
    }

    async fn commit_point(&self, p: &mut PendingApply) -> Result<RecoveryPoint> {
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        let prev = cat.points.last().cloned();
        let seq = cat.next_seq.max(1);
        let point_id = format!("rp-{}", p.header.cycle);
        let writers = std::mem::take(&mut p.writers);
        let pending: Vec<String> = writers.iter().map(|(name, _, _)| name.clone()).collect();
        let (header, folds) = (p.header.clone(), std::mem::take(&mut p.folds));
        let result = self.finish_overlays(&header, folds, writers, prev.as_ref(), seq, &point_id).await;
        let (disks, manifest) = match result {
            Ok(v) => v,
            Err(e) => {
                for name in &pending {
                    let _ = std::fs::remove_file(self.dir.join(name));
                }
                return Err(e);
            }
        };
        let manifest_hash = manifest::write_manifest(&self.dir, &manifest)?;
        let h = &p.header;
        let point = RecoveryPoint {
            id: point_id,
            cycle: h.cycle,
            time: point_time(h.created_at_ms, prev.as_ref().map(|p| p.time)),
            app_consistent: h.app_consistent,
            kind: if h.base { PointKind::Initial } else { PointKind::Delta },
            bytes: p.data_bytes,
            disks,
            in_use: vec![],
            check: None,
            manifest: Some(manifest_hash),
        };
        if h.base {
            cat.disks = h.disks.iter().map(|d| DiskEntry { target: d.target.clone(), size: d.size }).collect();
        }
        cat.points.push(point.clone());
        cat.last_cycle = Some(h.cycle);
        cat.next_seq = seq + 1;
        self.write_catalog(&cat)?;
        ferry_core::failpoint::hit(ferry_core::failpoint::REPLICA_AFTER_CATALOG_WRITE);
        tracing::info!(vm = %self.vm_id, point = %point.id, bytes = point.bytes, "Recovery point recorded");
        Ok(point)
    }

    /// Finish the cycle's overlays, read every touched leaf back (checking the data against the
    /// source's hashes), rename them into the chain and fold the point's manifest (RP-1). The
    /// caller holds `.chain.lock` and deletes the pending files on error.
    async fn finish_overlays(
        &self,
        header: &BeginCycle,
        folds: Vec<manifest::DiskFold>,
        writers: Vec<(String, Qcow2Writer, blake3::Hasher)>,
        prev: Option<&RecoveryPoint>,
        seq: u64,
        point_id: &str,
    ) -> Result<(Vec<PointDisk>, PointManifest)> {
        let mut disks = Vec::new();
        for (i, (name, w, hasher)) in writers.into_iter().enumerate() {
            let target = &header.disks[i].target;
            let backing =
                match prev {
                    Some(prev) if !header.base => {
                        Some(prev.disks.iter().find(|d| &d.target == target).map(|d| d.file.clone()).ok_or_else(
                            || Error::new(ErrorKind::Store, format!("Previous point has no disk {target}")),
                        )?)
                    }
                    _ => None,
                };
            tokio::task::spawn_blocking(move || w.finish(backing.as_deref()))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Io, "Finish task failed", e))??;
            disks.push((name, target.clone(), hasher.finalize().to_hex().to_string()));
        }
        let mut point_disks = Vec::new();
        for (name, target, checksum) in disks {
            let file = format!("{target}-{seq:06}.qcow2");
            std::fs::rename(self.dir.join(&name), self.dir.join(&file))
                .map_err(|e| Error::io(format!("Cannot rename {name}"), e))?;
            point_disks.push(PointDisk { target, file, checksum });
        }
        fsync_dir(&self.dir)?;
        let prev_manifest = match prev {
            Some(prev) => manifest::read_manifest(&self.dir, &prev.id, prev.manifest.as_deref()).unwrap_or(None),
            None => None,
        };
        let mut out = Vec::new();
        for fold in folds {
            let prev_disk = prev_manifest.as_ref().and_then(|m| m.disks.iter().find(|d| d.target == fold.target));
            let stale = manifest::stale_groups(&self.dir, &fold, prev_disk)?;
            if let (Some(pp), false) = (prev, stale.is_empty()) {
                tracing::warn!(
                    vm = %self.vm_id,
                    disk = %fold.target,
                    groups = stale.len(),
                    "Leaf hashes of the previous point re-read from its chain (the table did not match its manifest)"
                );
                let chain = self.chain(&pp.id, &fold.target)?;
                let reader = ChainReader::open_chain(&chain, fold.size, true).await?;
                let (dir, target) = (self.dir.clone(), fold.target.clone());
                tokio::task::spawn_blocking(move || manifest::restore_groups(&dir, &target, &reader, &stale))
                    .await
                    .map_err(|e| Error::with_source(ErrorKind::Io, "Hash task failed", e))??;
            }
            out.push(manifest::fold_into_table(&self.dir, &fold, prev_disk.filter(|_| !fold.full()))?);
        }
        Ok((point_disks, PointManifest { point: point_id.to_string(), disks: out }))
    }

    /// Throwaway overlays on `point_id` in `dest` (one per disk), marking the point in use.
    pub async fn overlay_for_test(&self, point_id: &str, dest: &Path) -> Result<TestOverlay> {
        self.require_intact_chain(point_id).await?;
        self.overlay_with_tag(point_id, dest, format!("test:{}", dest.display())).await
    }

    async fn overlay_with_tag(&self, point_id: &str, dest: &Path, tag: String) -> Result<TestOverlay> {
        std::fs::create_dir_all(dest).map_err(|e| Error::io(format!("Cannot create {}", dest.display()), e))?;
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        // `latest` is resolved here, under the chain lock: retention cannot merge the point
        // between the choice and its use.
        let point = point_mut(&mut cat, point_id)?;
        let point_id = point.id.clone();
        // RP-1: a drill on a point known to be damaged proves nothing; a failover may still use
        // it (it may be all there is) and is told by the point listing.
        if let Some(c) = point.check.as_ref().filter(|c| !c.damage.is_empty() && tag.starts_with("test:")) {
            let what: Vec<String> = c.damage.iter().map(|d| format!("{} at {}", d.target, d.offset)).collect();
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "Recovery point {point_id} failed verification ({}); choose another point or repair replication",
                    what.join(", ")
                ),
            ));
        }
        if !point.in_use.contains(&tag) {
            point.in_use.push(tag.clone());
        }
        let files: Vec<(String, String)> = point.disks.iter().map(|d| (d.target.clone(), d.file.clone())).collect();
        self.write_catalog(&cat)?;
        let mut disks = Vec::new();
        for (target, file) in files {
            let size = cat.disks.iter().find(|d| d.target == target).map(|d| d.size);
            let ov = dest.join(format!("{target}.qcow2"));
            let opts =
                CreateOptions { size, backing: Some((self.dir.join(&file), DiskFormat::Qcow2)), unsafe_backing: true };
            img::create(&ov, DiskFormat::Qcow2, &opts)
                .await
                .map_err(|e| Error::qemu("Cannot create test overlay", e))?;
            disks.push((target, ov));
        }
        Ok(TestOverlay { point_id, tag, disks })
    }

    /// Mark `point` (or the latest, for [`LATEST`]) in use by `tag` so retention cannot merge it
    /// or anything below it; returns the point as marked.
    async fn hold_point(&self, point: &str, tag: &str) -> Result<RecoveryPoint> {
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        let p = point_mut(&mut cat, point)?;
        if !p.in_use.iter().any(|t| t == tag) {
            p.in_use.push(tag.to_string());
        }
        let held = p.clone();
        self.write_catalog(&cat)?;
        Ok(held)
    }

    /// Drop every in-use mark of `tag`.
    async fn release_hold(&self, tag: &str) -> Result<()> {
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        for p in cat.points.iter_mut() {
            p.in_use.retain(|t| t != tag);
        }
        self.write_catalog(&cat)
    }

    /// RP-3: write every disk of `point` (or of the latest point, for [`LATEST`]) as one
    /// standalone image in directory `dest` (`<target>.qcow2` or `<target>.raw`, no backing
    /// file), to mount, copy files from or attach elsewhere. The point is marked in use while it
    /// is read. Returns the point and the images written.
    pub async fn export_images(
        &self,
        point: &str,
        dest: &Path,
        format: DiskFormat,
    ) -> Result<(String, Vec<(String, PathBuf)>)> {
        let tag = format!("image:{}:{}", std::process::id(), dest.display());
        let held = self.hold_point(point, &tag).await?;
        let (point, targets): (String, Vec<String>) = (held.id, held.disks.into_iter().map(|d| d.target).collect());
        let mut written = Vec::new();
        let mut result = Ok(());
        for target in &targets {
            let out = dest.join(format!("{target}.{}", format.as_str()));
            let step = async {
                let top = self.point_file(&point, target)?;
                img::convert_from(&top, DiskFormat::Qcow2, &out, format)
                    .await
                    .map_err(|e| Error::qemu(format!("Cannot write {}", out.display()), e))?;
                File::open(&out)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(format!("Cannot fsync {}", out.display()), e))
            };
            match step.await {
                Ok(()) => written.push((target.clone(), out)),
                Err(e) => {
                    let _ = std::fs::remove_file(&out);
                    result = Err(e);
                    break;
                }
            }
        }
        self.release_hold(&tag).await?;
        if let Err(e) = result {
            for (_, f) in &written {
                let _ = std::fs::remove_file(f);
            }
            return Err(e);
        }
        Ok((point, written))
    }

    /// Delete a test overlay and drop its in-use mark.
    pub async fn release_test(&self, ov: &TestOverlay) -> Result<()> {
        let _chain = self.chain_lock().await?;
        for (_, p) in &ov.disks {
            let _ = std::fs::remove_file(p);
        }
        let mut cat = self.read_catalog()?;
        for p in cat.points.iter_mut() {
            p.in_use.retain(|t| t != &ov.tag);
        }
        if ov.tag == "failover" {
            cat.failover = None;
        }
        self.write_catalog(&cat)
    }

    /// Failover onto `point_id`: an overlay that becomes the VM's disk; replication into this
    /// replica is refused until the failover is released (cancel) or committed elsewhere.
    pub async fn begin_failover(&self, point_id: &str, dest: &Path) -> Result<TestOverlay> {
        self.require_intact_chain(point_id).await?;
        {
            let _chain = self.chain_lock().await?;
            let mut cat = self.read_catalog()?;
            if cat.failover.is_some() {
                return Err(Error::new(ErrorKind::Busy, "A failover is already pending"));
            }
            cat.failover = Some(point_id.to_string());
            self.write_catalog(&cat)?;
        }
        self.overlay_with_tag(point_id, dest, "failover".into()).await
    }

    /// The point a pending failover runs on, if any.
    pub fn failover_point(&self) -> Result<Option<String>> {
        Ok(self.read_catalog()?.failover)
    }

    /// FO-4: the failover is final. The points newer than the failover point are discarded (their
    /// files deleted); the failover point and the ones before it stay, as the backing chain of the
    /// recovered VM's disks. Idempotent.
    pub async fn commit_failover(&self) -> Result<Vec<String>> {
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        let Some(fp) = cat.failover.clone() else {
            return Err(Error::new(ErrorKind::Invalid, "No failover is pending on this replica"));
        };
        let k = cat.points.iter().position(|p| p.id == fp).ok_or_else(|| not_found(&fp))?;
        let newer: Vec<RecoveryPoint> = cat.points.drain(k + 1..).collect();
        self.write_catalog(&cat)?;
        self.remove_point_files(newer)
    }

    /// Delete the layers and manifests of `points`, which the catalogue no longer names (it was
    /// written first, so a crash in between leaves only unreferenced files, removed on open);
    /// returns their ids.
    pub(crate) fn remove_point_files(&self, points: Vec<RecoveryPoint>) -> Result<Vec<String>> {
        for p in &points {
            for d in &p.disks {
                let _ = std::fs::remove_file(self.dir.join(&d.file));
            }
            let _ = std::fs::remove_file(manifest::manifest_path(&self.dir, &p.id));
        }
        fsync_dir(&self.dir)?;
        Ok(points.into_iter().map(|p| p.id).collect())
    }

    /// RP-2: apply retention with ferry-core's plan; merges oldest first, never touches points in
    /// use or anything their chains depend on.
    pub async fn apply_retention(&self, retention_hours: u32, max_chain_depth: usize) -> Result<RetentionOutcome> {
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        let infos = self.point_infos()?;
        let plan = plan_retention(&infos, retention_hours, max_chain_depth);
        let newest_in_use = cat.points.iter().rposition(|p| !p.in_use.is_empty());
        let mut out = RetentionOutcome::default();
        for id in plan.merge {
            let Some(k) = cat.points.iter().position(|p| p.id == id) else { continue };
            if newest_in_use.is_some_and(|j| k <= j) || k + 1 >= cat.points.len() {
                out.deferred.push(id);
                continue;
            }
            cat.merging = Some(id.clone());
            self.write_catalog(&cat)?;
            self.merge_point(&mut cat, &id).await?;
            out.merged.push(id);
        }
        Ok(out)
    }

    /// Remove point `id` (not the latest): commit the next overlay into its file, rebase the one
    /// after, delete the next file, update the catalog. Idempotent (re-run after a crash).
    async fn merge_point(&self, cat: &mut Catalog, id: &str) -> Result<()> {
        let Some(k) = cat.points.iter().position(|p| p.id == id) else {
            cat.merging = None;
            return self.write_catalog(cat);
        };
        if k + 1 >= cat.points.len() {
            return Err(Error::new(ErrorKind::Store, format!("Cannot merge the latest point {id}")));
        }
        let disks: Vec<String> = cat.points[k].disks.iter().map(|d| d.target.clone()).collect();
        for target in &disks {
            let file_of = |i: usize| cat.points[i].disks.iter().find(|d| &d.target == target).map(|d| d.file.clone());
            let (Some(fk), Some(fnext)) = (file_of(k), file_of(k + 1)) else {
                return Err(Error::new(ErrorKind::Store, format!("Point chain of {target} is incomplete")));
            };
            let next_path = self.dir.join(&fnext);
            if next_path.exists() {
                img::commit(&next_path, None)
                    .await
                    .map_err(|e| Error::qemu(format!("Cannot merge {fnext} into {fk}"), e))?;
                ferry_core::failpoint::hit(ferry_core::failpoint::REPLICA_MID_MERGE);
            }
            if let Some(fafter) = (k + 2 < cat.points.len()).then(|| file_of(k + 2)).flatten() {
                img::rebase_unsafe(&self.dir.join(&fafter), Path::new(&fk), DiskFormat::Qcow2)
                    .await
                    .map_err(|e| Error::qemu(format!("Cannot rebase {fafter}"), e))?;
            }
            if next_path.exists() {
                std::fs::remove_file(&next_path).map_err(|e| Error::io(format!("Cannot delete {fnext}"), e))?;
            }
        }
        let removed = cat.points.remove(k);
        for (d, old) in cat.points[k].disks.iter_mut().zip(removed.disks.iter()) {
            d.file = old.file.clone();
        }
        cat.merging = None;
        self.write_catalog(cat)?;
        let _ = std::fs::remove_file(manifest::manifest_path(&self.dir, &removed.id));
        tracing::info!(vm = %self.vm_id, point = %id, "Recovery point merged by retention");
        Ok(())
    }

    /// blake3 hashes of blocks of the latest point's disk `disk` (resync, REP-6).
    pub async fn latest_block_hashes(
        &self,
        disk: u16,
        block_size: u64,
        first: u64,
        count: u64,
    ) -> Result<Vec<[u8; 32]>> {
        let _chain = self.chain_lock().await?;
        let cat = self.read_catalog()?;
        let latest = cat.points.last().ok_or_else(|| Error::new(ErrorKind::Store, "Replica has no points"))?;
        let d = cat.disks.get(disk as usize).ok_or_else(|| Error::protocol(format!("No disk {disk}")))?;
        let chain = self.chain(&latest.id, &d.target)?;
        let reader = ChainReader::open_chain(&chain, d.size, true).await?;
        tokio::task::spawn_blocking(move || hash_blocks(&reader, block_size, first, count))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, "Hash task failed", e))?
    }

    /// REP-7: adopt existing disk images (an earlier replica, a restored backup, an offline
    /// import) as this VM's base point. They are converted into the store (sources untouched);
    /// a resync then sends only the differences.
    pub async fn adopt_existing(&self, disks: &[(String, PathBuf)], time: DateTime<Utc>) -> Result<RecoveryPoint> {
        let _recv = self.receive_lock()?;
        self.adopt_locked(disks, Adoption { cycle: None, time, kind: PointKind::Adopted, bytes: 0, raw_source: false })
            .await
    }

    /// The lock every writer of new points holds (network apply, adoption, offline import).
    pub(crate) fn receive_lock(&self) -> Result<FileLock> {
        FileLock::try_acquire(&self.dir.join(".receive.lock"))
    }

    /// Adopt `disks` as the base point; the caller holds [`Self::receive_lock`].
    pub(crate) async fn adopt_locked(&self, disks: &[(String, PathBuf)], how: Adoption) -> Result<RecoveryPoint> {
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        if !cat.points.is_empty() {
            return Err(Error::new(ErrorKind::Busy, "Replica already has recovery points"));
        }
        let seq = cat.next_seq.max(1);
        let mut pds = Vec::new();
        let mut entries = Vec::new();
        for (target, src) in disks {
            valid_name(target, "Disk target")?;
            let file = format!("{target}-{seq:06}.qcow2");
            let size = match how.raw_source {
                // Raw images written from received data: never probe their format (a guest
                // could have written an image header into its own disk).
                true => {
                    img::convert_from(src, DiskFormat::Raw, &self.dir.join(&file), DiskFormat::Qcow2)
                        .await
                        .map_err(|e| Error::qemu(format!("Cannot import {}", src.display()), e))?;
                    std::fs::metadata(src).map_err(|e| Error::io(format!("Cannot inspect {}", src.display()), e))?.len()
                }
                false => {
                    let info = img::info(src, true)
                        .await
                        .map_err(|e| Error::qemu(format!("Cannot inspect {}", src.display()), e))?;
                    img::convert(src, &self.dir.join(&file), DiskFormat::Qcow2, true)
                        .await
                        .map_err(|e| Error::qemu(format!("Cannot import {}", src.display()), e))?;
                    info.virtual_size
                }
            };
            File::open(self.dir.join(&file))
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("Cannot fsync import", e))?;
            pds.push(PointDisk { target: target.clone(), file, checksum: String::new() });
            entries.push(DiskEntry { target: target.clone(), size });
        }
        fsync_dir(&self.dir)?;
        let point_id = match how.cycle {
            Some(c) => format!("rp-{c}"),
            None => format!("rp-adopted-{seq}"),
        };
        // The adopted images are sealed as they are now (RP-1): later cycles fold into this.
        let mut manifests = Vec::new();
        for (pd, entry) in pds.iter().zip(entries.iter()) {
            let reader = ChainReader::open_chain(&[self.dir.join(&pd.file)], entry.size, false).await?;
            let (dir, target) = (self.dir.clone(), pd.target.clone());
            let m = tokio::task::spawn_blocking(move || manifest::seal_image(&dir, &target, &reader))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Io, "Hash task failed", e))??;
            manifests.push(m);
        }
        let manifest_hash =
            manifest::write_manifest(&self.dir, &PointManifest { point: point_id.clone(), disks: manifests })?;
        let point = RecoveryPoint {
            id: point_id,
            cycle: how.cycle.unwrap_or(0),
            time: how.time,
            app_consistent: false,
            kind: how.kind,
            bytes: how.bytes,
            disks: pds,
            in_use: vec![],
            check: None,
            manifest: Some(manifest_hash),
        };
        cat.disks = entries;
        cat.points.push(point.clone());
        if how.cycle.is_some() {
            cat.last_cycle = how.cycle;
        }
        cat.next_seq = seq + 1;
        self.write_catalog(&cat)?;
        Ok(point)
    }

    /// The disks the replica holds.
    pub fn disks(&self) -> Result<Vec<DiskInfo>> {
        Ok(self.read_catalog()?.disks.into_iter().map(|d| DiskInfo { target: d.target, size: d.size }).collect())
    }
}

/// How adopted images enter the catalog.
pub(crate) struct Adoption {
    /// The cycle the images are the state of (an offline import); `None` for foreign images.
    pub cycle: Option<u64>,
    pub time: DateTime<Utc>,
    pub kind: PointKind,
    /// Data bytes the point brought.
    pub bytes: u64,
    /// The images are raw files Ferry wrote itself (read as raw, never probed).
    pub raw_source: bool,
}

/// Whether an in-use mark's holder may still hold it: marks of a verification or an image export
/// name the process that made them (`verify:<pid>`, `image:<pid>:<dest>`) and lapse with it.
fn holder_alive(tag: &str) -> bool {
    let pid = match (tag.strip_prefix("verify:"), tag.strip_prefix("image:")) {
        (Some(pid), _) => pid,
        (_, Some(rest)) => rest.split(':').next().unwrap_or(""),
        _ => return true,
    };
    !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && Path::new("/proc").join(pid).exists()
}

/// The point `point` names in `cat` (the newest for [`LATEST`]).
fn point_mut<'a>(cat: &'a mut Catalog, point: &str) -> Result<&'a mut RecoveryPoint> {
    if point == LATEST {
        cat.points.last_mut().ok_or_else(|| not_found(point))
    } else {
        cat.points.iter_mut().find(|p| p.id == point).ok_or_else(|| not_found(point))
    }
}

/// A point id that designates the newest point at the moment it is used (a test VM's overlays).
pub const LATEST: &str = "latest";

fn not_found(id: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("Recovery point {id} does not exist"))
}

/// The time of a new point: its capture time on the source host, but never before the point it
/// is built on. A source host whose clock was set back (or ran ahead before) would otherwise
/// make a newer point look older, and "latest", retention and the RPO all go by time.
fn point_time(created_at_ms: i64, prev: Option<DateTime<Utc>>) -> DateTime<Utc> {
    let sent = DateTime::from_timestamp_millis(created_at_ms).unwrap_or_else(Utc::now);
    match prev {
        Some(prev) if sent <= prev => {
            tracing::warn!(
                sent = %sent,
                previous = %prev,
                "The source host's clock says this point is not newer than the one before; it is dated just after it"
            );
            prev + chrono::Duration::milliseconds(1)
        }
        _ => sent,
    }
}
