//! Offline initial replication (POL-8): the initial copy travels on removable media or a share
//! instead of the replication network.
//!
//! ```text
//!  primary host                       media                          replica host
//!  seed: bitmap ferry-C + full   ──▶  <export>/ferry-export.json ──▶ verify every segment
//!  copy at one point (as for the       seg-00000.ferry …             (size + blake3), then apply
//!  network); extents written as        (the network's Extent         segment by segment into raw
//!  the network's Extent frames         frames, per-extent blake3)    staging files, fsync, record
//!  into segments, manifest after                                     progress; finally the staging
//!  each durable segment                                              files become point rp-C
//!  ─ waits for the import ─                                          (the same point network
//!  then delta cycles from ferry-C                                    initial replication makes)
//! ```
//! * The export is resumable: the manifest lists the segments that are durable with their
//!   checksums; after a crash of the host agent the export continues after the last of them as
//!   long as the seed's staging images and bitmaps survived (otherwise it starts over).
//! * The import is resumable: its progress file lists the applied segments; an interrupted
//!   import continues after the last of them. Nothing becomes a recovery point before every
//!   segment is applied and the images are durable.
//! * Checksummed twice: each segment file as a whole (blake3 in the manifest, so damaged media
//!   is found before anything is applied, naming the segment) and each extent (the protocol's
//!   per-extent blake3, checked again while applying).
//! * Tracking starts at the export's point: the first delta cycle after the import ships
//!   everything written since the export, however long the media travelled.

use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::capture::{Snapshot, TrackingState};
use crate::engine::Primary;
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{DiskInfo, ExtentKind, Message, MAX_DISKS};
use crate::replica::{atomic_write, fsync_dir, Adoption, PointKind, RecoveryPoint, VmReplica};

/// Name of the manifest in an export directory.
pub const MANIFEST: &str = "ferry-export.json";
/// Format version of an export.
pub const FORMAT: u32 = 1;
/// Default segment size: small enough to re-copy one damaged file, large enough to stay few.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

/// What the primary remembers of an offline export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportState {
    pub cycle: u64,
    pub dir: PathBuf,
    /// The replica confirmed the import: delta cycles may run.
    pub imported: bool,
}

/// One segment file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub file: String,
    pub first_extent: u64,
    pub extents: u64,
    pub bytes: u64,
    /// blake3 of the whole file, hex.
    pub blake3: String,
}

/// The manifest of an export: the cycle header, the segments written so far, and whether the
/// export is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportManifest {
    pub format: u32,
    pub vm_id: String,
    pub cycle: u64,
    pub created_at: DateTime<Utc>,
    pub disks: Vec<DiskInfo>,
    pub compressed: bool,
    pub extent_count: u64,
    /// Bytes covered by all extents (data and zero).
    pub covered_bytes: u64,
    /// Planned data bytes.
    pub data_bytes: u64,
    pub segments: Vec<Segment>,
    pub complete: bool,
    /// Keyed blake3 of the manifest (with this field empty) under the item's [`ExportKey`]
    /// (SEC-3): the replica host imports only media sealed for the item it expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The key the manifest is sealed with when written (never written itself).
    #[serde(skip)]
    pub seal_with: Option<ExportKey>,
}

/// The per-item key an offline export's manifest is sealed with (keyed blake3). It reaches the
/// source host and the replica host through the vault, never on the media, so media altered in
/// transit (a segment swapped, its checksum rewritten in the manifest) or another item's export
/// is refused before anything is applied. Segments are bound through their checksums in the
/// sealed manifest; segment names are checked as plain file names.
#[derive(Clone, PartialEq, Eq)]
pub struct ExportKey([u8; 32]);

impl std::fmt::Debug for ExportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportKey(..)")
    }
}

impl ExportKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key given as 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Self> {
        let h = blake3::Hash::from_hex(hex.trim())
            .map_err(|_| Error::new(ErrorKind::Invalid, "An export key is 64 hexadecimal digits"))?;
        Ok(Self(*h.as_bytes()))
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }

    fn seal(&self, m: &ExportManifest) -> blake3::Hash {
        let mut bare = m.clone();
        bare.mac = None;
        // A manifest of ids, numbers and strings always encodes.
        blake3::keyed_hash(&self.0, &serde_json::to_vec(&bare).unwrap_or_default())
    }

    /// Whether `m` carries this key's seal (compared in constant time).
    pub fn verifies(&self, m: &ExportManifest) -> bool {
        m.mac.as_deref().and_then(|h| blake3::Hash::from_hex(h).ok()).is_some_and(|h| h == self.seal(m))
    }
}

impl ExportManifest {
    /// Read and sanity-check the manifest in `dir`.
    pub fn read(dir: &Path) -> Result<ExportManifest> {
        let p = dir.join(MANIFEST);
        let b = std::fs::read(&p).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound { ErrorKind::NotFound } else { ErrorKind::Io };
            Error::with_source(kind, format!("No readable export manifest {}", p.display()), e)
        })?;
        let m: ExportManifest = serde_json::from_slice(&b).map_err(|e| {
            Error::with_source(ErrorKind::Invalid, format!("Export manifest {} is damaged", p.display()), e)
        })?;
        if m.format != FORMAT {
            return Err(Error::new(ErrorKind::Invalid, format!("Export format {} is not supported", m.format)));
        }
        if m.disks.is_empty() || m.disks.len() > MAX_DISKS {
            return Err(Error::new(ErrorKind::Invalid, "The export lists no or too many disks"));
        }
        let mut next = 0;
        for s in &m.segments {
            crate::protocol::valid_name(&s.file, "Segment file")?;
            if s.first_extent != next {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("Segment {} does not follow its predecessor", s.file),
                ));
            }
            next += s.extents;
        }
        if next > m.extent_count || (m.complete && next != m.extent_count) {
            return Err(Error::new(ErrorKind::Invalid, "The export's segments do not add up to its extents"));
        }
        Ok(m)
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let mut sealed = self.clone();
        sealed.mac = self.seal_with.as_ref().map(|k| k.seal(self).to_hex().to_string());
        let b = serde_json::to_vec_pretty(&sealed)
            .map_err(|e| Error::with_source(ErrorKind::Store, "Cannot encode the export manifest", e))?;
        atomic_write(&dir.join(MANIFEST), &b)
    }

    fn extents_written(&self) -> u64 {
        self.segments.iter().map(|s| s.extents).sum()
    }
}

/// Figures of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub cycle: u64,
    pub segments: usize,
    pub data_bytes: u64,
    /// Bytes written to the export by this call.
    pub bytes_written: u64,
    /// The extent this call started from (> 0 when an interrupted export was resumed).
    pub resumed_from_extent: u64,
    /// The export was already complete; nothing was written.
    pub already_complete: bool,
    pub time: Duration,
}

/// Where the initial copy of a primary stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineStatus {
    /// No export yet (or an unfinished one).
    NotExported,
    /// Exported; waiting for the replica's import.
    AwaitingImport { cycle: u64, dir: PathBuf },
    /// Imported (or seeded over the network); delta cycles run.
    Imported,
}

impl Primary {
    /// Where this VM's offline initial replication stands.
    pub fn offline_status(&self) -> OfflineStatus {
        match &self.state.export {
            Some(e) if e.imported => OfflineStatus::Imported,
            Some(e) => OfflineStatus::AwaitingImport { cycle: e.cycle, dir: e.dir.clone() },
            // Seeded over the network (e.g. protected before the policy asked for offline).
            None if self.state.seeded => OfflineStatus::Imported,
            None => OfflineStatus::NotExported,
        }
    }

    /// The replica imported the export of `cycle`: delta cycles may run from now on.
    pub fn confirm_import(&mut self, cycle: u64) -> Result<()> {
        match self.state.export.as_mut() {
            Some(e) if e.cycle == cycle => {
                e.imported = true;
                self.save_state()
            }
            Some(e) => Err(Error::new(
                ErrorKind::Invalid,
                format!("The replica imported point {cycle}, but this VM's export is of point {}", e.cycle),
            )),
            None => Err(Error::new(ErrorKind::Invalid, "This VM has no offline export")),
        }
    }

    /// POL-8: seed tracking and write the initial copy to `dir` instead of the network.
    /// Continues an interrupted export of the same VM when its staging images and bitmaps
    /// survived; a complete export is not written again.
    pub async fn export_initial(&mut self, dir: &Path) -> Result<ExportReport> {
        self.export_initial_sealed(dir, None).await
    }

    /// [`Self::export_initial`] with the manifest sealed with the item's `key` (SEC-3). An
    /// earlier export in `dir` that this key does not verify is not continued but made anew.
    pub async fn export_initial_sealed(&mut self, dir: &Path, key: Option<ExportKey>) -> Result<ExportReport> {
        let t0 = Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("Cannot create {}", dir.display()), e))?;
        let existing = match ExportManifest::read(dir) {
            Ok(m) if key.as_ref().is_some_and(|k| !k.verifies(&m)) => {
                tracing::warn!(dir = %dir.display(), "an export not sealed with this item's key is made anew");
                None
            }
            Ok(m) => Some(m),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(m) = &existing {
            if m.vm_id != self.cfg.vm_id {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("{} holds an export of another VM ({})", dir.display(), m.vm_id),
                ));
            }
            if m.complete && self.state.export.as_ref().is_some_and(|e| e.cycle == m.cycle) {
                return Ok(ExportReport {
                    cycle: m.cycle,
                    segments: m.segments.len(),
                    data_bytes: m.data_bytes,
                    bytes_written: 0,
                    resumed_from_extent: m.extent_count,
                    already_complete: true,
                    time: t0.elapsed(),
                });
            }
        }
        let resumable = match &existing {
            Some(m) if !m.complete => self.resumable_snapshot(m).await,
            _ => None,
        };
        let (snap, mut manifest) = match resumable {
            Some(x) => x,
            None => {
                remove_export_files(dir)?;
                let cycle = self.alloc_cycle(0)?;
                let snap = self.capture.seed(self.vm.qmp(), cycle).await?;
                self.state.seeded = false;
                self.state.export = None;
                self.save_state()?;
                (snap, None)
            }
        };
        let src = match self.source_of(&snap).await {
            Ok(s) => std::sync::Arc::new(s),
            Err(e) => {
                crate::capture::Capture::remove_files(&snap);
                return Err(e);
            }
        };
        let mut m = match manifest.take() {
            Some(m) if m.extent_count == src.extents.len() as u64 => m,
            _ => {
                remove_export_files(dir)?;
                let m = ExportManifest {
                    format: FORMAT,
                    vm_id: self.cfg.vm_id.clone(),
                    cycle: snap.cycle,
                    created_at: snap.created_at,
                    disks: src.header.disks.clone(),
                    compressed: self.cfg.compression,
                    extent_count: src.extents.len() as u64,
                    covered_bytes: src.covered_bytes(),
                    data_bytes: src.data_bytes(),
                    segments: vec![],
                    complete: false,
                    mac: None,
                    seal_with: key.clone(),
                };
                m.write(dir)?;
                fsync_dir(dir)?;
                m
            }
        };
        m.seal_with = key;
        let resumed_from_extent = m.extents_written();
        let opts = WriteOptions {
            segment_bytes: self.cfg.export_segment_bytes.max(1),
            stop_after_segments: self.cfg.export_stop_after_segments,
        };
        let dir2 = dir.to_path_buf();
        let src2 = src.clone();
        let (m, bytes_written) = tokio::task::spawn_blocking(move || write_segments(&dir2, m, &src2, opts))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, "Export task failed", e))??;
        // The export is durable: the staging images are no longer needed; the bitmap keeps
        // recording what the guest writes until the first delta after the import.
        self.capture.commit(self.vm.qmp(), &snap).await?;
        self.state.seeded = true;
        self.state.export = Some(ExportState { cycle: m.cycle, dir: dir.to_path_buf(), imported: false });
        self.save_state()?;
        tracing::info!(vm = %self.cfg.vm_id, cycle = m.cycle, segments = m.segments.len(), bytes_written, "Offline export complete");
        Ok(ExportReport {
            cycle: m.cycle,
            segments: m.segments.len(),
            data_bytes: m.data_bytes,
            bytes_written,
            resumed_from_extent,
            already_complete: false,
            time: t0.elapsed(),
        })
    }

    /// The seed of an unfinished export, if its staging images and bitmaps are still there.
    async fn resumable_snapshot(&self, m: &ExportManifest) -> Option<(Snapshot, Option<ExportManifest>)> {
        let tracking = self.capture.discover(self.vm.qmp()).await.ok()?;
        if tracking != (TrackingState::Tracking { generation: m.cycle }) {
            return None;
        }
        let files: Vec<PathBuf> = self.cfg.disks.iter().map(|d| self.capture.staging_file(m.cycle, d)).collect();
        if !files.iter().all(|f| f.exists()) {
            return None;
        }
        let files = files.into_iter().map(Some).collect();
        tracing::info!(vm = %self.cfg.vm_id, cycle = m.cycle, segments = m.segments.len(), "Resuming an interrupted offline export");
        let snap = Snapshot {
            cycle: m.cycle,
            old_generation: None,
            files,
            base: true,
            app_consistent: false,
            created_at: m.created_at,
            warnings: vec![],
            pull: None,
        };
        Some((snap, Some(m.clone())))
    }
}

#[derive(Debug, Clone, Copy)]
struct WriteOptions {
    segment_bytes: u64,
    stop_after_segments: Option<usize>,
}

fn segment_name(n: usize) -> String {
    format!("seg-{n:05}.ferry")
}

/// Remove what an earlier export left in `dir` (only Ferry's own files).
fn remove_export_files(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(format!("Cannot list {}", dir.display()), e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == MANIFEST || (name.starts_with("seg-") && name.ends_with(".ferry")) {
            std::fs::remove_file(e.path()).map_err(|e| Error::io(format!("Cannot remove {name}"), e))?;
        }
    }
    Ok(())
}

/// Write the remaining extents into segments; the manifest is updated after each durable one.
fn write_segments(
    dir: &Path,
    mut m: ExportManifest,
    src: &crate::send::CycleSource,
    opts: WriteOptions,
) -> Result<(ExportManifest, u64)> {
    let mut zctx = match m.compressed {
        true => Some(zstd::bulk::Compressor::new(1).map_err(|e| Error::io("Cannot create a zstd context", e))?),
        false => None,
    };
    let (mut buf, mut spare) = (Vec::new(), Vec::new());
    let mut next = m.extents_written();
    let mut written_now = 0u64;
    let mut segments_now = 0usize;
    while next < m.extent_count {
        if opts.stop_after_segments.is_some_and(|n| segments_now >= n) {
            return Err(Error::new(ErrorKind::Disconnected, "Export stopped (test fault)"));
        }
        let name = segment_name(m.segments.len());
        let path = dir.join(&name);
        let file =
            std::fs::File::create(&path).map_err(|e| Error::io(format!("Cannot create {}", path.display()), e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut hasher = blake3::Hasher::new();
        let (first, mut bytes) = (next, 0u64);
        while next < m.extent_count && bytes < opts.segment_bytes {
            let (frame, _) = src.extent_frame(next, &mut buf, std::mem::take(&mut spare), zctx.as_mut())?;
            w.write_all(&frame).map_err(|e| Error::io(format!("Cannot write {}", path.display()), e))?;
            hasher.update(&frame);
            bytes += frame.len() as u64;
            spare = frame;
            next += 1;
        }
        let file = w.into_inner().map_err(|e| Error::io(format!("Cannot write {}", path.display()), e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(format!("Cannot fsync {}", path.display()), e))?;
        m.segments.push(Segment {
            file: name,
            first_extent: first,
            extents: next - first,
            bytes,
            blake3: hasher.finalize().to_hex().to_string(),
        });
        m.write(dir)?;
        written_now += bytes;
        segments_now += 1;
    }
    m.complete = true;
    m.write(dir)?;
    fsync_dir(dir)?;
    Ok((m, written_now))
}

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The item's key (SEC-3): an export whose manifest it does not verify is refused before
    /// anything is applied.
    pub key: Option<ExportKey>,
    /// Test hook: stop (as if the host died) after applying this many segments.
    #[doc(hidden)]
    pub stop_after_segments: Option<usize>,
}

/// Figures of an import.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    pub point: RecoveryPoint,
    pub segments: usize,
    /// The segment this call started applying from (> 0 when an interrupted import resumed).
    pub resumed_from_segment: usize,
    pub data_bytes: u64,
    /// The point was already there (an earlier call finished the import).
    pub already_imported: bool,
    pub time: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ImportProgress {
    cycle: u64,
    /// Every segment's size and checksum were verified.
    verified: bool,
    /// Segments applied to the staging images (durably).
    applied: usize,
}

impl VmReplica {
    /// POL-8: import an offline export from `dir` as this replica's first recovery point
    /// (`rp-<cycle>`, the point network initial replication would have made). Verifies every
    /// segment first; continues an interrupted import of the same export.
    pub async fn import_initial(&self, dir: &Path, opts: ImportOptions) -> Result<ImportReport> {
        let t0 = Instant::now();
        let m = ExportManifest::read(dir)?;
        if !m.complete {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "The export in {} is incomplete ({} of {} extents); finish the export first",
                    dir.display(),
                    m.extents_written(),
                    m.extent_count
                ),
            ));
        }
        if m.vm_id != self.vm_id() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{} holds the export of {}, not of {}", dir.display(), m.vm_id, self.vm_id()),
            ));
        }
        if opts.key.as_ref().is_some_and(|k| !k.verifies(&m)) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "The export in {} is not sealed with this item's key: the media was altered, or it holds an export another vault made; nothing was imported",
                    dir.display()
                ),
            ));
        }
        let points = self.recovery_points()?;
        if let Some(p) = points.iter().find(|p| p.cycle == m.cycle && p.kind == PointKind::Initial) {
            return Ok(ImportReport {
                point: p.clone(),
                segments: m.segments.len(),
                resumed_from_segment: m.segments.len(),
                data_bytes: m.data_bytes,
                already_imported: true,
                time: t0.elapsed(),
            });
        }
        if !points.is_empty() {
            return Err(Error::new(
                ErrorKind::Busy,
                "The replica already has recovery points; an offline import only seeds an empty replica",
            ));
        }
        let _recv = self.receive_lock()?;
        let work = self.dir().join(format!("import-{}", m.cycle));
        let progress_file = self.dir().join(format!("import-{}.json", m.cycle));
        let mut progress: ImportProgress = std::fs::read(&progress_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|p: &ImportProgress| p.cycle == m.cycle && work.is_dir())
            .unwrap_or(ImportProgress { cycle: m.cycle, ..Default::default() });
        if progress.applied == 0 {
            let _ = std::fs::remove_dir_all(&work);
        }
        std::fs::create_dir_all(&work).map_err(|e| Error::io(format!("Cannot create {}", work.display()), e))?;
        let resumed_from_segment = progress.applied;
        let (dir2, work2, m2, pf2) = (dir.to_path_buf(), work.clone(), m.clone(), progress_file.clone());
        progress = tokio::task::spawn_blocking(move || apply_segments(&dir2, &work2, &m2, &pf2, progress, opts))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, "Import task failed", e))??;
        debug_assert_eq!(progress.applied, m.segments.len());
        let disks: Vec<(String, PathBuf)> =
            m.disks.iter().map(|d| (d.target.clone(), raw_file(&work, &d.target))).collect();
        let point = self
            .adopt_locked(
                &disks,
                Adoption {
                    cycle: Some(m.cycle),
                    time: m.created_at,
                    kind: PointKind::Initial,
                    bytes: m.data_bytes,
                    raw_source: true,
                },
            )
            .await?;
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_file(&progress_file);
        tracing::info!(vm = %self.vm_id(), point = %point.id, segments = m.segments.len(), "Offline export imported");
        Ok(ImportReport {
            point,
            segments: m.segments.len(),
            resumed_from_segment,
            data_bytes: m.data_bytes,
            already_imported: false,
            time: t0.elapsed(),
        })
    }
}

fn raw_file(work: &Path, target: &str) -> PathBuf {
    work.join(format!("{target}.raw"))
}

fn save_progress(path: &Path, p: &ImportProgress) -> Result<()> {
    let b =
        serde_json::to_vec(p).map_err(|e| Error::with_source(ErrorKind::Store, "Cannot encode import progress", e))?;
    atomic_write(path, &b)
}

/// Check one segment's size and checksum.
fn verify_segment(dir: &Path, s: &Segment) -> Result<()> {
    let path = dir.join(&s.file);
    let damaged = |why: String| {
        Error::new(
            ErrorKind::Invalid,
            format!("Segment {} of the export is damaged ({why}); copy it again from the export", s.file),
        )
    };
    let mut f = std::fs::File::open(&path).map_err(|e| damaged(format!("cannot open: {e}")))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| damaged(format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if total != s.bytes {
        return Err(damaged(format!("{total} bytes instead of {}", s.bytes)));
    }
    if hasher.finalize().to_hex().as_str() != s.blake3 {
        return Err(damaged("checksum mismatch".into()));
    }
    Ok(())
}

/// Verify (once) and apply the segments not applied yet into raw staging images.
fn apply_segments(
    dir: &Path,
    work: &Path,
    m: &ExportManifest,
    progress_file: &Path,
    mut progress: ImportProgress,
    opts: ImportOptions,
) -> Result<ImportProgress> {
    if !progress.verified {
        for s in &m.segments {
            verify_segment(dir, s)?;
        }
        progress.verified = true;
        save_progress(progress_file, &progress)?;
    }
    let mut files = Vec::new();
    for d in &m.disks {
        crate::protocol::valid_name(&d.target, "Disk target")?;
        let path = raw_file(work, &d.target);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("Cannot create {}", path.display()), e))?;
        f.set_len(d.size).map_err(|e| Error::io(format!("Cannot size {}", path.display()), e))?;
        files.push(f);
    }
    for (applied_now, s) in m.segments.iter().skip(progress.applied).enumerate() {
        if opts.stop_after_segments.is_some_and(|n| applied_now >= n) {
            return Err(Error::new(ErrorKind::Disconnected, "Import stopped (test fault)"));
        }
        // Checked again here: the media may have changed since the verification.
        let bytes = std::fs::read(dir.join(&s.file)).map_err(|e| Error::io(format!("Cannot read {}", s.file), e))?;
        if blake3::hash(&bytes).to_hex().as_str() != s.blake3 {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("Segment {} changed after it was verified; copy it again from the export", s.file),
            ));
        }
        let mut pos = 0usize;
        let mut index = s.first_extent;
        while pos < bytes.len() {
            let len = bytes
                .get(pos..pos + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .filter(|l| *l > 0)
                .ok_or_else(|| Error::protocol(format!("Truncated frame in {}", s.file)))?;
            let frame = bytes
                .get(pos + 4..pos + 4 + len)
                .ok_or_else(|| Error::protocol(format!("Truncated frame in {}", s.file)))?;
            let Message::Extent(e) = Message::decode(frame)? else {
                return Err(Error::protocol(format!("{} holds a frame that is not an extent", s.file)));
            };
            if e.index != index {
                return Err(Error::protocol(format!(
                    "Extent {} out of order in {} (expected {index})",
                    e.index, s.file
                )));
            }
            let disk = m
                .disks
                .get(e.disk as usize)
                .ok_or_else(|| Error::protocol(format!("Extent for unknown disk {}", e.disk)))?;
            if e.offset.checked_add(e.len).is_none_or(|end| end > disk.size) {
                return Err(Error::protocol(format!("Extent {} lies outside disk {}", e.index, disk.target)));
            }
            if let (ExtentKind::Data, Some(data)) = (e.kind, e.verified_data()?) {
                files[e.disk as usize]
                    .write_all_at(&data, e.offset)
                    .map_err(|err| Error::io(format!("Cannot write the staging image of {}", disk.target), err))?;
            }
            index += 1;
            pos += 4 + len;
        }
        if index != s.first_extent + s.extents {
            return Err(Error::protocol(format!(
                "{} holds {} extents, the manifest says {}",
                s.file,
                index - s.first_extent,
                s.extents
            )));
        }
        for f in &files {
            f.sync_all().map_err(|e| Error::io("Cannot fsync a staging image", e))?;
        }
        progress.applied += 1;
        save_progress(progress_file, &progress)?;
    }
    Ok(progress)
}
