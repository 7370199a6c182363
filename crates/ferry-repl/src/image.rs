//! Reading disk images without QEMU in the data path: a map tells where each extent lives (layer
//! depth + host offset; `qemu-img map` for chains, the qcow2 metadata read in process for one
//! staging layer), then the bytes are `pread` from the layer's file. Used for the
//! primary's staging layers, the replica's chains (resync hashing) and existing images (REP-7).
//! Only uncompressed, unencrypted images can be read this way; anything else is refused.
//!
//! A pulled point ([`ChainReader::open_nbd`]) is read from QEMU's NBD export of a fleecing node
//! instead: its map comes from NBD block status (`base:allocation`), its bytes from NBD reads with
//! a few requests in flight ahead of the sender.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ferry_qemu::img::{self, MapExtent};
use ferry_qemu::nbd::{NbdClient, StatusExtent, STATE_DIRTY, STATE_ZERO};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{is_zero, ExtentKind};

/// Largest data extent the sender ships (payload before compression).
pub const SEND_CHUNK: u64 = 1 << 20;

/// A readable image: a chain of files (top first) plus its map.
#[derive(Debug)]
pub struct ChainReader {
    files: Vec<File>,
    paths: Vec<PathBuf>,
    map: Vec<MapExtent>,
    size: u64,
    /// Reads go to this NBD export instead of `files` (a pulled point).
    nbd: Option<Mutex<NbdClient>>,
}

impl ChainReader {
    /// Reader over the whole chain whose top is `chain[0]` (its backing files follow in order,
    /// as `qemu-img map` depth numbers them). `force_share` for images another process holds.
    pub async fn open_chain(chain: &[PathBuf], size: u64, force_share: bool) -> Result<Self> {
        let top = chain.first().ok_or_else(|| Error::new(ErrorKind::Invalid, "Empty image chain"))?;
        let map =
            img::map(top, force_share).await.map_err(|e| Error::qemu(format!("Cannot map {}", top.display()), e))?;
        Self::from_map(chain, map, size)
    }

    /// A layer without any extent (a disk without changes in a cycle).
    pub fn empty(size: u64) -> Self {
        Self { files: vec![], paths: vec![], map: vec![], size, nbd: None }
    }

    /// Reader over NBD export `export` on `socket` (QEMU's export of a fleecing node): what the
    /// disk held at the point, all layers of its chain. Without `dirty_bitmap` the map marks
    /// data wherever `base:allocation` does not say "reads as zeroes" (a full copy); with it, the
    /// map marks as data what that bitmap (exported with the node) records as dirty, widened to
    /// whole 64 KiB clusters (a delta).
    pub async fn open_nbd(socket: &Path, export: &str, size: u64, dirty_bitmap: Option<&str>) -> Result<Self> {
        let (sock, name) = (socket.to_path_buf(), export.to_string());
        let context = match dirty_bitmap {
            Some(b) => format!("qemu:dirty-bitmap:{b}"),
            None => "base:allocation".to_string(),
        };
        let delta = dirty_bitmap.is_some();
        tokio::task::spawn_blocking(move || {
            let t = Duration::from_secs(60);
            let q = |e: ferry_qemu::Error| Error::qemu(format!("Cannot read NBD export {name}"), e);
            let mut status = NbdClient::connect(&sock, &name, Some(&context), t).map_err(q)?;
            if status.size() != size {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!("NBD export {name} has {} bytes, the disk {size}", status.size()),
                ));
            }
            let extents = status.block_status_all().map_err(q)?;
            let map = if delta { dirty_map(&extents, size) } else { allocation_map(&extents) };
            let client = NbdClient::connect(&sock, &name, None, t).map_err(q)?;
            Ok(Self { files: vec![], paths: vec![sock], map, size, nbd: Some(Mutex::new(client)) })
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Io, "NBD map task failed", e))?
    }

    /// Hint that `[offset, offset+len)` will be read soon (NBD: the request is sent now).
    pub fn read_ahead(&self, offset: u64, len: u64) {
        if let Some(c) = &self.nbd {
            if let Ok(mut c) = c.lock() {
                let _ = c.read_ahead(offset, len);
            }
        }
    }

    /// Reader over ONE qcow2 layer (its backing ignored): only that layer's extents.
    pub async fn open_layer(path: &Path, size: u64) -> Result<Self> {
        let p = path.to_path_buf();
        let map = tokio::task::spawn_blocking(move || crate::qcow2::map_layer(&p))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, "Map task failed", e))??;
        Self::from_map(&[path.to_path_buf()], map, size)
    }

    fn from_map(chain: &[PathBuf], mut map: Vec<MapExtent>, size: u64) -> Result<Self> {
        let files = chain
            .iter()
            .map(|p| File::open(p).map_err(|e| Error::io(format!("Cannot open {}", p.display()), e)))
            .collect::<Result<Vec<_>>>()?;
        map.sort_by_key(|e| e.start);
        for e in &map {
            if e.data && (e.offset.is_none() || e.depth as usize >= files.len()) {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!(
                        "Extent at {} of {} has no readable host offset (compressed or encrypted image?)",
                        e.start,
                        chain[0].display()
                    ),
                ));
            }
        }
        Ok(Self { files, paths: chain.to_vec(), map, size, nbd: None })
    }

    /// Virtual size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The map (sorted by start).
    pub fn map(&self) -> &[MapExtent] {
        &self.map
    }

    fn first_at(&self, offset: u64) -> usize {
        self.map.partition_point(|e| e.start + e.length <= offset)
    }

    /// True if `[offset, offset+len)` holds no data extent (reads as zero without reading).
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        self.map[self.first_at(offset)..].iter().take_while(|e| e.start < end).all(|e| !e.data)
    }

    /// Read `buf.len()` bytes at `offset`; areas without data read as zero.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if let Some(c) = &self.nbd {
            let mut c = c.lock().map_err(|_| Error::new(ErrorKind::Io, "NBD reader poisoned"))?;
            return c.read(offset, buf).map_err(|e| Error::qemu(format!("NBD read at {offset} failed"), e));
        }
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for e in self.map[self.first_at(offset)..].iter().take_while(|e| e.start < end) {
            if !e.data {
                continue;
            }
            let lo = e.start.max(offset);
            let hi = (e.start + e.length).min(end);
            let host = e.offset.unwrap_or(0) + (lo - e.start);
            let file = &self.files[e.depth as usize];
            file.read_exact_at(&mut buf[(lo - offset) as usize..(hi - offset) as usize], host).map_err(|err| {
                Error::io(format!("Cannot read {} at {host}", self.paths[e.depth as usize].display()), err)
            })?;
        }
        Ok(())
    }
}

/// Map of a full copy from `base:allocation`: data unless it reads as zeroes.
fn allocation_map(extents: &[StatusExtent]) -> Vec<MapExtent> {
    extents
        .iter()
        .map(|e| {
            let data = e.flags & STATE_ZERO == 0;
            MapExtent { start: e.offset, length: e.len, depth: 0, data, zero: !data, present: true, offset: None }
        })
        .collect()
}

/// Map of a delta from a dirty bitmap: dirty runs widened to whole clusters (the replica writes
/// clusters; the widened bytes are read from the same point, so they are exact), merged, clipped
/// to the disk. Clean areas are not part of the layer.
fn dirty_map(extents: &[StatusExtent], size: u64) -> Vec<MapExtent> {
    let cluster = crate::qcow2::CLUSTER;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for e in extents.iter().filter(|e| e.flags & STATE_DIRTY != 0) {
        let start = e.offset / cluster * cluster;
        let end = (e.offset + e.len).div_ceil(cluster).saturating_mul(cluster).min(size);
        match runs.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => runs.push((start, end)),
        }
    }
    runs.into_iter()
        .map(|(start, end)| MapExtent {
            start,
            length: end - start,
            depth: 0,
            data: true,
            zero: false,
            present: true,
            offset: None,
        })
        .collect()
}

/// One extent the sender will ship, before reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedExtent {
    pub disk: u16,
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

/// Plan the extents of one staging layer: its allocated data split into [`SEND_CHUNK`] pieces and
/// its zero clusters as zero extents (kept whole).
pub fn plan_layer(disk: u16, reader: &ChainReader, skip_zero: bool) -> Vec<PlannedExtent> {
    let mut out = Vec::new();
    for e in reader.map() {
        if !e.present || e.depth != 0 {
            continue;
        }
        if e.data {
            let mut off = e.start;
            let end = e.start + e.length;
            while off < end {
                let len = SEND_CHUNK.min(end - off);
                out.push(PlannedExtent { disk, offset: off, len, kind: ExtentKind::Data });
                off += len;
            }
        } else if e.zero && !skip_zero {
            out.push(PlannedExtent { disk, offset: e.start, len: e.length, kind: ExtentKind::Zero });
        }
    }
    out
}

/// blake3 hashes of `count` blocks of `block_size` starting at block `first` (the last block of
/// the disk may be short). Holes are hashed without reading.
pub fn hash_blocks(reader: &ChainReader, block_size: u64, first: u64, count: u64) -> Result<Vec<[u8; 32]>> {
    let mut out = Vec::with_capacity(count as usize);
    let mut buf = vec![0u8; block_size as usize];
    let zero_full = *blake3::hash(&buf).as_bytes();
    for b in first..first + count {
        let off = b * block_size;
        if off >= reader.size() {
            break;
        }
        let len = block_size.min(reader.size() - off);
        let slice = &mut buf[..len as usize];
        if reader.is_hole(off, len) {
            out.push(if len == block_size { zero_full } else { *blake3::hash(&vec![0u8; len as usize]).as_bytes() });
            continue;
        }
        reader.read(off, slice)?;
        out.push(*blake3::hash(slice).as_bytes());
    }
    Ok(out)
}

/// Read `[offset, offset+len)` and classify it: `None` if it is all zero.
pub fn read_block(reader: &ChainReader, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
    if reader.is_hole(offset, len) {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    reader.read(offset, &mut buf)?;
    Ok(if is_zero(&buf) { None } else { Some(buf) })
}
