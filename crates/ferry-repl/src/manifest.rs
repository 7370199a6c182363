//! Verified recovery points (RP-1): a hash manifest that describes each disk of a point as a
//! whole, so the point can be re-read later and proven bit-exact.
//!
//! # Model
//! ```text
//!  disk ── 64 KiB leaves ── blake3 per leaf ── 1024 leaves = one group (64 MiB of disk)
//!                                         group hash = blake3(leaf hashes of the group)
//!                                         root       = blake3(size ‖ group hashes)
//! ```
//! * Every extent of a cycle carries the blake3 of what the source host read and sent; the
//!   receiver checks it on arrival ([`crate::protocol`]) and, with the data still in memory,
//!   hashes each 64 KiB leaf it writes (extents are cluster-aligned and a leaf is one cluster).
//!   When the cycle's overlays are finished, those leaves are folded into the groups of the point
//!   before: the point's manifest describes the whole disk although only the changes were read.
//! * The leaf hashes of the latest point live in `leaves-<target>.bin` (32 bytes per leaf after a
//!   32-byte header). The table is a cache, never synced: before a fold, every group the cycle
//!   touches is hashed from the table and compared with the previous point's manifest, and a
//!   group that differs (a crash mid-write, a cycle that failed after writing it) is read again
//!   from the previous point's chain. Writing to disk is checked by re-reading: the background
//!   verifier re-reads every new point soon after it arrives.
//! * Each point's manifest (`manifests/<point>.json`) holds the group hashes and the root; it is
//!   written before the catalog lists the point, and the catalog keeps its hash (a manifest lost
//!   or cut short by a crash leaves the point unsealed, never falsely damaged). Retention merges keep the surviving points'
//!   content, so their manifests stay valid; a removed point's manifest is deleted.
//! * Verifying a point re-reads its chain (any layer: data, zero flags, metadata) and compares
//!   group by group; a mismatch names the disk range (one group) that is damaged.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::image::{hash_blocks, ChainReader};
use crate::qcow2::CLUSTER;

/// Bytes per leaf (one qcow2 cluster of the replica's overlays).
pub const LEAF: u64 = CLUSTER;
/// Leaves per group.
pub const GROUP_LEAVES: u64 = 1024;
/// Bytes of disk one group describes.
pub const GROUP_BYTES: u64 = LEAF * GROUP_LEAVES;

const TABLE_MAGIC: &[u8; 8] = b"FYLEAF01";
const TABLE_HEADER: u64 = 32;

/// The manifest of one disk of a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskManifest {
    pub target: String,
    pub size: u64,
    pub leaf_bytes: u64,
    pub group_bytes: u64,
    /// blake3 of each group's leaf hashes (hex), in disk order.
    pub groups: Vec<String>,
    /// blake3 of the size and the group hashes (hex): the whole disk in one value.
    pub root: String,
}

/// The manifest of a point: one entry per disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointManifest {
    pub point: String,
    pub disks: Vec<DiskManifest>,
}

/// A damaged range of a disk at a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    pub target: String,
    pub offset: u64,
    pub len: u64,
    /// What was found: a hash mismatch, or the chain could not be read at all.
    pub detail: String,
}

/// The outcome of verifying one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointCheck {
    pub at: chrono::DateTime<chrono::Utc>,
    /// False when the point has no manifest (recorded before manifests existed): nothing to
    /// compare with.
    pub sealed: bool,
    pub bytes_read: u64,
    pub damage: Vec<Damage>,
    /// Only the groups that differ from this earlier, verified point were read (the others are
    /// that point's, checked then); none: the whole point was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl PointCheck {
    /// The point was compared and found exact.
    pub fn ok(&self) -> bool {
        self.sealed && self.damage.is_empty()
    }
}

/// The number of leaves and groups of a disk of `size` bytes.
pub fn leaves_of(size: u64) -> u64 {
    size.div_ceil(LEAF)
}

fn groups_of(size: u64) -> u64 {
    leaves_of(size).div_ceil(GROUP_LEAVES)
}

/// The hash of a group from its leaf hashes.
pub fn group_hash(leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for l in leaves {
        h.update(l);
    }
    *h.finalize().as_bytes()
}

/// The root of a disk from its size and group hashes.
pub fn root_hash(size: u64, groups: &[[u8; 32]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    for g in groups {
        h.update(g);
    }
    *h.finalize().as_bytes()
}

fn hex(h: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*h).to_hex().to_string()
}

fn unhex(s: &str) -> Result<[u8; 32]> {
    blake3::Hash::from_hex(s)
        .map(|h| *h.as_bytes())
        .map_err(|e| Error::with_source(ErrorKind::Store, format!("Manifest hash {s} is malformed"), e))
}

impl DiskManifest {
    fn from_groups(target: &str, size: u64, groups: &[[u8; 32]]) -> Self {
        DiskManifest {
            target: target.to_string(),
            size,
            leaf_bytes: LEAF,
            group_bytes: GROUP_BYTES,
            groups: groups.iter().map(hex).collect(),
            root: hex(&root_hash(size, groups)),
        }
    }

    fn group_hashes(&self) -> Result<Vec<[u8; 32]>> {
        if self.leaf_bytes != LEAF
            || self.group_bytes != GROUP_BYTES
            || self.groups.len() as u64 != groups_of(self.size)
        {
            return Err(Error::new(
                ErrorKind::Store,
                format!("Manifest of {} does not fit this store's leaf and group sizes", self.target),
            ));
        }
        self.groups.iter().map(|g| unhex(g)).collect()
    }
}

/// The leaf hashes of the latest point of one disk, on disk: a cache that every fold checks
/// against the durable manifest of the point before, group by group.
pub(crate) struct LeafTable {
    file: File,
    path: PathBuf,
    size: u64,
}

impl LeafTable {
    pub(crate) fn path(dir: &Path, target: &str) -> PathBuf {
        dir.join(format!("leaves-{target}.bin"))
    }

    /// Open the table of `target`, or create an empty one for a disk of `size` bytes.
    pub(crate) fn open(dir: &Path, target: &str, size: u64) -> Result<Self> {
        let path = Self::path(dir, target);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("Cannot open {}", path.display()), e))?;
        let t = LeafTable { file, path, size };
        let mut head = [0u8; TABLE_HEADER as usize];
        let fresh = t.file.read_exact_at(&mut head, 0).is_err()
            || &head[..8] != TABLE_MAGIC
            || u64::from_le_bytes(head[16..24].try_into().unwrap_or_default()) != size;
        if fresh {
            head = [0u8; TABLE_HEADER as usize];
            head[..8].copy_from_slice(TABLE_MAGIC);
            head[16..24].copy_from_slice(&size.to_le_bytes());
            t.file
                .set_len(TABLE_HEADER + leaves_of(size) * 32)
                .and_then(|()| t.file.write_all_at(&head, 0))
                .map_err(|e| Error::io(format!("Cannot write {}", t.path.display()), e))?;
        }
        Ok(t)
    }

    fn read_leaves(&self, first: u64, count: u64) -> Result<Vec<[u8; 32]>> {
        let mut buf = vec![0u8; (count * 32) as usize];
        self.file
            .read_exact_at(&mut buf, TABLE_HEADER + first * 32)
            .map_err(|e| Error::io(format!("Cannot read {}", self.path.display()), e))?;
        Ok(buf.chunks_exact(32).map(|c| c.try_into().unwrap_or([0u8; 32])).collect())
    }

    fn write_leaves(&self, first: u64, leaves: &[[u8; 32]]) -> Result<()> {
        let buf: Vec<u8> = leaves.iter().flatten().copied().collect();
        self.file
            .write_all_at(&buf, TABLE_HEADER + first * 32)
            .map_err(|e| Error::io(format!("Cannot write {}", self.path.display()), e))
    }

    fn group_leaves(&self, g: u64) -> Result<Vec<[u8; 32]>> {
        let nleaves = leaves_of(self.size);
        let first = g * GROUP_LEAVES;
        self.read_leaves(first, GROUP_LEAVES.min(nleaves - first))
    }
}

/// The hash of a leaf of zeroes that starts at `offset` of a disk of `size` bytes.
fn zero_leaf(offset: u64, size: u64) -> [u8; 32] {
    let len = LEAF.min(size - offset) as usize;
    *blake3::hash(&vec![0u8; len]).as_bytes()
}

/// The leaves a cycle wrote to one disk, hashed as the extents are applied (the data is in
/// memory then and has just been checked against the source's hash): no read-back.
#[derive(Debug)]
pub(crate) struct DiskFold {
    pub target: String,
    pub size: u64,
    /// (leaf, hash) in the order applied; a later entry for the same leaf wins.
    leaves: Vec<(u64, [u8; 32])>,
    /// A base point: every leaf not written reads as zeroes.
    full: bool,
}

impl DiskFold {
    pub(crate) fn new(target: &str, size: u64, full: bool) -> Self {
        DiskFold { target: target.to_string(), size, leaves: Vec::new(), full }
    }

    /// Data written at a cluster-aligned `offset` (the disk's last leaf may be short).
    pub(crate) fn add_data(&mut self, offset: u64, data: &[u8]) {
        for (i, chunk) in data.chunks(LEAF as usize).enumerate() {
            let leaf = offset / LEAF + i as u64;
            let want = LEAF.min(self.size.saturating_sub(leaf * LEAF)) as usize;
            let h = if chunk.len() < want {
                // A short chunk inside the disk: the rest of the leaf reads as zeroes.
                let mut whole = chunk.to_vec();
                whole.resize(want, 0);
                *blake3::hash(&whole).as_bytes()
            } else {
                *blake3::hash(&chunk[..want.min(chunk.len())]).as_bytes()
            };
            self.leaves.push((leaf, h));
        }
    }

    /// Zeroes written at a cluster-aligned `offset`.
    pub(crate) fn add_zero(&mut self, offset: u64, len: u64) {
        let end = (offset + len).min(self.size);
        let mut off = offset / LEAF * LEAF;
        while off < end {
            self.leaves.push((off / LEAF, zero_leaf(off, self.size)));
            off += LEAF;
        }
    }

    /// The groups this cycle touched, ascending.
    pub(crate) fn touched_groups(&self) -> Vec<u64> {
        if self.full {
            return (0..groups_of(self.size)).collect();
        }
        let mut g: Vec<u64> = self.leaves.iter().map(|(l, _)| l / GROUP_LEAVES).collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    /// A base point (no point before it).
    pub(crate) fn full(&self) -> bool {
        self.full
    }
}

/// The groups of the table that do not hash to what the previous point's manifest says (a
/// crash while the table was rewritten, a cycle that failed after writing it): they must be
/// read again from the previous point's chain before the fold. Every group when the previous
/// point has no manifest.
pub(crate) fn stale_groups(dir: &Path, fold: &DiskFold, prev: Option<&DiskManifest>) -> Result<Vec<u64>> {
    if fold.full {
        return Ok(vec![]);
    }
    let ngroups = groups_of(fold.size);
    let Some(expected) = prev.and_then(|m| m.group_hashes().ok()) else { return Ok((0..ngroups).collect()) };
    let table = LeafTable::open(dir, &fold.target, fold.size)?;
    let mut stale = Vec::new();
    for g in fold.touched_groups() {
        if group_hash(&table.group_leaves(g)?) != expected[g as usize] {
            stale.push(g);
        }
    }
    Ok(stale)
}

/// Write the leaves of `groups` read from the previous point's chain into the table.
pub(crate) fn restore_groups(dir: &Path, target: &str, reader: &ChainReader, groups: &[u64]) -> Result<()> {
    let table = LeafTable::open(dir, target, reader.size())?;
    let nleaves = leaves_of(reader.size());
    for g in groups {
        let first = g * GROUP_LEAVES;
        table.write_leaves(first, &hash_blocks(reader, LEAF, first, GROUP_LEAVES.min(nleaves - first))?)?;
    }
    Ok(())
}

/// Fold the cycle's leaves into the table (which holds the previous point's leaves for every
/// group the cycle touches, see [`stale_groups`]) and return the new point's manifest of the
/// disk: the previous groups, with the touched ones hashed anew. The table is not synced: it is
/// checked against the manifests before every use.
pub(crate) fn fold_into_table(dir: &Path, fold: &DiskFold, prev: Option<&DiskManifest>) -> Result<DiskManifest> {
    let table = LeafTable::open(dir, &fold.target, fold.size)?;
    let ngroups = groups_of(fold.size);
    let nleaves = leaves_of(fold.size);
    let mut groups = match prev.filter(|_| !fold.full).map(DiskManifest::group_hashes) {
        Some(Ok(g)) => g,
        _ if fold.full => vec![[0u8; 32]; ngroups as usize],
        _ => (0..ngroups).map(|g| table.group_leaves(g).map(|l| group_hash(&l))).collect::<Result<_>>()?,
    };
    let mut by_group: std::collections::BTreeMap<u64, Vec<(u64, [u8; 32])>> = Default::default();
    for (leaf, h) in &fold.leaves {
        by_group.entry(leaf / GROUP_LEAVES).or_default().push((*leaf, *h));
    }
    let zero_group = fold.full.then(|| {
        let z = zero_leaf(0, fold.size.max(LEAF));
        vec![z; GROUP_LEAVES as usize]
    });
    for g in fold.touched_groups() {
        let first = g * GROUP_LEAVES;
        let count = GROUP_LEAVES.min(nleaves - first);
        let mut leaves = match &zero_group {
            Some(z) if first * LEAF + count * LEAF <= fold.size => z[..count as usize].to_vec(),
            Some(_) => (first..first + count).map(|l| zero_leaf(l * LEAF, fold.size)).collect(),
            None => table.group_leaves(g)?,
        };
        for (leaf, h) in by_group.get(&g).into_iter().flatten() {
            if let Some(slot) = leaves.get_mut((leaf - first) as usize) {
                *slot = *h;
            }
        }
        table.write_leaves(first, &leaves)?;
        groups[g as usize] = group_hash(&leaves);
    }
    Ok(DiskManifest::from_groups(&fold.target, fold.size, &groups))
}

/// Seal an adopted image (the base of a replica): its leaves are read, written to the table and
/// folded into its manifest.
pub(crate) fn seal_image(dir: &Path, target: &str, reader: &ChainReader) -> Result<DiskManifest> {
    let groups: Vec<u64> = (0..groups_of(reader.size())).collect();
    restore_groups(dir, target, reader, &groups)?;
    let fold = DiskFold::new(target, reader.size(), false);
    fold_into_table(dir, &fold, None)
}

/// Describe a whole disk as a manifest entry (full read; holes are not read). The source host
/// can describe its own disk at a point this way and compare roots with the replica's manifest
/// without sending any data.
pub fn describe(reader: &ChainReader, target: &str) -> Result<DiskManifest> {
    let size = reader.size();
    let nleaves = leaves_of(size);
    let groups = (0..groups_of(size))
        .map(|g| {
            let first = g * GROUP_LEAVES;
            hash_blocks(reader, LEAF, first, GROUP_LEAVES.min(nleaves - first)).map(|l| group_hash(&l))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DiskManifest::from_groups(target, size, &groups))
}

/// Where the manifests of a VM's points live.
pub(crate) fn manifest_dir(vm_dir: &Path) -> PathBuf {
    vm_dir.join("manifests")
}

pub(crate) fn manifest_path(vm_dir: &Path, point: &str) -> PathBuf {
    manifest_dir(vm_dir).join(format!("{point}.json"))
}

/// The manifest of `point` if its file is there and hashes to `expected` (the catalog's record
/// of it). The file is written without a sync of its own, so after a crash it can be missing or
/// short: the point then counts as unsealed, never as damaged.
pub(crate) fn read_manifest(vm_dir: &Path, point: &str, expected: Option<&str>) -> Result<Option<PointManifest>> {
    let Some(expected) = expected else { return Ok(None) };
    let p = manifest_path(vm_dir, point);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %p.display(), "The manifest of a recovery point is missing; the point counts as unsealed");
            return Ok(None);
        }
        Err(e) => return Err(Error::io(format!("Cannot read {}", p.display()), e)),
    };
    if blake3::hash(&bytes).to_hex().as_str() != expected {
        tracing::warn!(file = %p.display(), "The manifest of a recovery point does not match the catalog; the point counts as unsealed");
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::with_source(ErrorKind::Store, format!("Manifest {} is unreadable", p.display()), e))
}

/// Write the manifest of a point (before the catalog lists it) and return the hash the catalog
/// keeps of it. No sync of its own: the catalog's write is the commit, and a manifest lost in a
/// crash only leaves its point unsealed.
pub(crate) fn write_manifest(vm_dir: &Path, m: &PointManifest) -> Result<String> {
    let dir = manifest_dir(vm_dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("Cannot create {}", dir.display()), e))?;
    let b = serde_json::to_vec(m).map_err(|e| Error::with_source(ErrorKind::Store, "Cannot encode manifest", e))?;
    let p = manifest_path(vm_dir, &m.point);
    std::fs::write(&p, &b).map_err(|e| Error::io(format!("Cannot write {}", p.display()), e))?;
    Ok(blake3::hash(&b).to_hex().to_string())
}

/// The groups in which two manifests of one disk differ (ascending); None when they describe
/// disks of different sizes (everything must be read).
pub(crate) fn changed_groups(a: &DiskManifest, b: &DiskManifest) -> Option<Vec<u64>> {
    if a.size != b.size || a.groups.len() != b.groups.len() {
        return None;
    }
    Some(a.groups.iter().zip(&b.groups).enumerate().filter(|(_, (x, y))| x != y).map(|(g, _)| g as u64).collect())
}

/// Read every group of one disk from `reader` and compare with `m`; `rate` limits the bytes read
/// per second (holes are not read). Returns the damaged ranges and the bytes read.
/// `only`: the groups to read (the others are not compared); none: every group.
pub(crate) fn verify_disk(
    reader: &ChainReader,
    m: &DiskManifest,
    rate: Option<u64>,
    only: Option<&[u64]>,
) -> Result<(Vec<Damage>, u64)> {
    let expected = m.group_hashes()?;
    if reader.size() != m.size {
        return Ok((
            vec![Damage {
                target: m.target.clone(),
                offset: 0,
                len: m.size,
                detail: format!("the disk has {} bytes, the manifest {}", reader.size(), m.size),
            }],
            0,
        ));
    }
    let nleaves = leaves_of(m.size);
    let started = Instant::now();
    let mut read = 0u64;
    let mut damage = Vec::new();
    for (g, want) in expected.iter().enumerate() {
        if only.is_some_and(|o| o.binary_search(&(g as u64)).is_err()) {
            continue;
        }
        let first = g as u64 * GROUP_LEAVES;
        let count = GROUP_LEAVES.min(nleaves - first);
        let offset = first * LEAF;
        let len = (count * LEAF).min(m.size - offset);
        if !reader.is_hole(offset, len) {
            read += len;
        }
        let leaves = hash_blocks(reader, LEAF, first, count)?;
        if &group_hash(&leaves) != want {
            damage.push(Damage {
                target: m.target.clone(),
                offset,
                len,
                detail: "the data differs from the point's manifest".into(),
            });
        }
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(read as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok((damage, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rp_1_group_and_root_hashes_depend_on_every_leaf_and_the_size() {
        let a = [[1u8; 32], [2u8; 32]];
        let b = [[1u8; 32], [3u8; 32]];
        assert_ne!(group_hash(&a), group_hash(&b));
        let g = [group_hash(&a)];
        assert_ne!(root_hash(1 << 20, &g), root_hash(2 << 20, &g));
        assert_eq!(leaves_of(LEAF + 1), 2);
        assert_eq!(groups_of(GROUP_BYTES), 1);
        assert_eq!(groups_of(GROUP_BYTES + 1), 2);
    }

    #[test]
    fn rp_1_a_manifest_with_other_sizes_is_refused() {
        let mut m = DiskManifest::from_groups("vda", GROUP_BYTES * 2, &[[0u8; 32], [1u8; 32]]);
        assert!(m.group_hashes().is_ok());
        m.groups.pop();
        assert!(m.group_hashes().is_err());
    }
}
