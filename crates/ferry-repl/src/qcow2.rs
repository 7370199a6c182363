//! A direct qcow2 (v3) overlay writer, without QEMU: the replica's fast path for turning a received
//! extent stream into a recovery-point overlay (a port of the validated `qcow2w.py` prototype).
//!
//! Layout of a written file, 64 KiB clusters:
//! ```text
//! cluster 0      header (104 bytes) + backing-format extension + backing file name
//! cluster 1      refcount table (one cluster: up to 16 TiB of image)
//! cluster 2..    L1 table
//! then           data clusters in arrival order (streamed while receiving)
//! then           L2 tables, then refcount blocks (16-bit, every cluster refcount 1)
//! ```
//! Data is appended as it arrives (through a [`DataSink`]: a writer thread, `O_DIRECT`); all metadata, the header last, is written by
//! [`Qcow2Writer::finish`], which also fsyncs. A file that was never finished has no valid header,
//! so a crash mid-apply can never be mistaken for a recovery point.
//!
//! Zero extents become zero-flag clusters so they mask older data in the backing chain; without a
//! backing file they are simply left unallocated (they read as zero anyway).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::data_sink::DataSink;
use crate::error::{Error, ErrorKind, Result};

const CLUSTER_BITS: u32 = 16;
/// Cluster size of every image Ferry writes.
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_ZERO: u64 = 1;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Streaming writer of one qcow2 overlay.
#[derive(Debug)]
pub struct Qcow2Writer {
    file: File,
    path: PathBuf,
    size: u64,
    l1_size: u64,
    next_cluster: u64,
    l2: BTreeMap<u64, Vec<u64>>,
    has_backing: bool,
    data_bytes: u64,
    /// Data clusters go through here (opened at the first data write).
    sink: Option<DataSink>,
}

impl Qcow2Writer {
    /// Create (truncate) `path` for an image of `size` virtual bytes. `has_backing` tells whether
    /// the finished image will get a backing file (zero extents must then mask it).
    pub fn create(path: &Path, size: u64, has_backing: bool) -> Result<Self> {
        if size == 0 || !size.is_multiple_of(512) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("Virtual size {size} is not a positive multiple of 512"),
            ));
        }
        let l1_size = size.div_ceil(CLUSTER * L2_ENTRIES);
        let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(format!("Cannot create {}", path.display()), e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            l1_size,
            next_cluster: 2 + l1_clusters,
            l2: BTreeMap::new(),
            has_backing,
            data_bytes: 0,
            sink: None,
        })
    }

    /// Virtual size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of data written so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset.checked_add(len).filter(|e| *e <= self.size);
        let aligned = offset.is_multiple_of(CLUSTER) && (len.is_multiple_of(CLUSTER) || end == Some(self.size));
        if end.is_none() || !aligned || len == 0 {
            return Err(Error::protocol(format!(
                "Extent {offset}+{len} is not cluster-aligned inside the {} byte disk",
                self.size
            )));
        }
        Ok(())
    }

    fn entry(&mut self, vcluster: u64) -> &mut u64 {
        let table = self.l2.entry(vcluster / L2_ENTRIES).or_insert_with(|| vec![0; L2_ENTRIES as usize]);
        &mut table[(vcluster % L2_ENTRIES) as usize]
    }

    /// Write data at a cluster-aligned offset (the last cluster of the disk may be partial). The
    /// writer thread writes from `data`'s own memory where it can (see [`DataSink::write_shared`]).
    pub fn write_data(&mut self, offset: u64, data: &Bytes) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        let first = offset / CLUSTER;
        let n = (data.len() as u64).div_ceil(CLUSTER);
        let all_new = (first..first + n)
            .all(|c| self.l2.get(&(c / L2_ENTRIES)).is_none_or(|t| t[(c % L2_ENTRIES) as usize] & OFFSET_MASK == 0));
        if all_new {
            let host0 = self.next_cluster * CLUSTER;
            for i in 0..n {
                let host = (self.next_cluster + i) * CLUSTER;
                *self.entry(first + i) = OFLAG_COPIED | host;
            }
            self.next_cluster += n;
            self.sink()?.write_shared(host0, data, (n * CLUSTER) as usize)?;
        } else {
            for i in 0..n {
                let e = *self.entry(first + i);
                let host = if e & OFFSET_MASK != 0 {
                    e & OFFSET_MASK
                } else {
                    let h = self.next_cluster * CLUSTER;
                    self.next_cluster += 1;
                    h
                };
                *self.entry(first + i) = OFLAG_COPIED | host;
                let lo = (i * CLUSTER) as usize;
                let hi = ((i + 1) * CLUSTER).min(data.len() as u64) as usize;
                self.sink()?.write_shared(host, &data.slice(lo..hi), CLUSTER as usize)?;
            }
        }
        self.data_bytes += data.len() as u64;
        Ok(())
    }

    /// Make `[offset, offset+len)` read as zeroes (cluster-aligned).
    pub fn write_zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let first = offset / CLUSTER;
        for c in first..first + len.div_ceil(CLUSTER) {
            let has_backing = self.has_backing;
            let known = self.l2.get(&(c / L2_ENTRIES)).map(|t| t[(c % L2_ENTRIES) as usize]);
            match known {
                // Unallocated without backing already reads as zero.
                None | Some(0) if !has_backing => {}
                Some(e) if e & OFFSET_MASK != 0 => *self.entry(c) = (e & OFFSET_MASK) | OFLAG_COPIED | OFLAG_ZERO,
                _ => *self.entry(c) = OFLAG_ZERO,
            }
        }
        Ok(())
    }

    fn sink(&mut self) -> Result<&mut DataSink> {
        match &mut self.sink {
            Some(s) => Ok(s),
            none => Ok(none.insert(DataSink::open(&self.path)?)),
        }
    }

    fn pwrite(&self, buf: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(buf, at)
            .map_err(|e| Error::io(format!("Cannot write {} at {at}", self.path.display()), e))
    }

    /// Write metadata and header with `backing` (file name, format qcow2), fsync. Returns the
    /// file size.
    pub fn finish(mut self, backing: Option<&str>) -> Result<u64> {
        if backing.is_some() != self.has_backing {
            return Err(Error::new(ErrorKind::Store, "Backing file given contrary to how the writer was created"));
        }
        if let Some(sink) = self.sink.take() {
            sink.close()?;
        }
        let l2 = std::mem::take(&mut self.l2);
        let mut l1 = vec![0u64; self.l1_size as usize];
        for (idx, table) in &l2 {
            let host = self.next_cluster * CLUSTER;
            self.next_cluster += 1;
            let mut buf = Vec::with_capacity(CLUSTER as usize);
            for e in table {
                buf.extend_from_slice(&e.to_be_bytes());
            }
            self.pwrite(&buf, host)?;
            l1[*idx as usize] = OFLAG_COPIED | host;
        }
        // Refcount blocks cover every cluster including themselves.
        let mut nrb = 1;
        while self.next_cluster + nrb > nrb * REFCOUNTS_PER_BLOCK {
            nrb += 1;
        }
        if nrb > L2_ENTRIES {
            return Err(Error::new(ErrorKind::Store, "Overlay too large for a one-cluster refcount table"));
        }
        let total = self.next_cluster + nrb;
        let mut reftable = Vec::with_capacity(CLUSTER as usize);
        for b in 0..nrb {
            let host = (self.next_cluster + b) * CLUSTER;
            reftable.extend_from_slice(&host.to_be_bytes());
            let lo = b * REFCOUNTS_PER_BLOCK;
            let hi = total.min((b + 1) * REFCOUNTS_PER_BLOCK);
            let mut rb = vec![0u8; CLUSTER as usize];
            for i in 0..(hi - lo) as usize {
                rb[2 * i + 1] = 1;
            }
            self.pwrite(&rb, host)?;
        }
        reftable.resize(CLUSTER as usize, 0);
        self.pwrite(&reftable, CLUSTER)?;
        let mut l1b = Vec::with_capacity(l1.len() * 8);
        for e in &l1 {
            l1b.extend_from_slice(&e.to_be_bytes());
        }
        self.pwrite(&l1b, 2 * CLUSTER)?;
        // Header + extensions + backing name.
        let mut ext = Vec::new();
        if backing.is_some() {
            let fmt = b"qcow2";
            ext.extend_from_slice(&0xE279_2ACAu32.to_be_bytes());
            ext.extend_from_slice(&(fmt.len() as u32).to_be_bytes());
            ext.extend_from_slice(fmt);
            ext.resize(ext.len() + (8 - fmt.len() % 8) % 8, 0);
        }
        ext.extend_from_slice(&[0u8; 8]);
        let bname = backing.unwrap_or("").as_bytes();
        let header_len = 104u32;
        let bofs = if backing.is_some() { header_len as u64 + ext.len() as u64 } else { 0 };
        if bofs + bname.len() as u64 > CLUSTER {
            return Err(Error::new(ErrorKind::Invalid, "Backing file name too long"));
        }
        let mut h = Vec::with_capacity(CLUSTER as usize);
        h.extend_from_slice(&0x5146_49FBu32.to_be_bytes()); // magic
        h.extend_from_slice(&3u32.to_be_bytes()); // version
        h.extend_from_slice(&bofs.to_be_bytes());
        h.extend_from_slice(&(bname.len() as u32).to_be_bytes());
        h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
        h.extend_from_slice(&self.size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // crypt
        h.extend_from_slice(&(self.l1_size as u32).to_be_bytes());
        h.extend_from_slice(&(2 * CLUSTER).to_be_bytes()); // l1 offset
        h.extend_from_slice(&CLUSTER.to_be_bytes()); // refcount table offset
        h.extend_from_slice(&1u32.to_be_bytes()); // refcount table clusters
        h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
        h.extend_from_slice(&[0u8; 24]); // incompatible, compatible, autoclear features
        h.extend_from_slice(&4u32.to_be_bytes()); // refcount order (16 bit)
        h.extend_from_slice(&header_len.to_be_bytes());
        debug_assert_eq!(h.len(), 104);
        h.extend_from_slice(&ext);
        h.extend_from_slice(bname);
        self.file.sync_data().map_err(|e| Error::io(format!("Cannot fsync {}", self.path.display()), e))?;
        self.pwrite(&h, 0)?;
        self.file.set_len(total * CLUSTER).map_err(|e| Error::io(format!("Cannot size {}", self.path.display()), e))?;
        self.file.sync_all().map_err(|e| Error::io(format!("Cannot fsync {}", self.path.display()), e))?;
        Ok(total * CLUSTER)
    }
}

/// The extents one qcow2 layer holds itself (its backing ignored), read from its metadata in
/// process: what `qemu-img map` reports at depth 0 — data clusters with their host offset and
/// zero-flag clusters — without starting a process on every cycle. Only what Ferry can read
/// directly is accepted: no encryption, compression, external data file or extended L2 entries.
pub fn map_layer(path: &Path) -> Result<Vec<ferry_qemu::img::MapExtent>> {
    let bad = |what: &str| Error::new(ErrorKind::Store, format!("{}: {what}", path.display()));
    let file = File::open(path).map_err(|e| Error::io(format!("Cannot open {}", path.display()), e))?;
    let mut h = [0u8; 104];
    file.read_exact_at(&mut h[..72], 0).map_err(|e| Error::io(format!("Cannot read {}", path.display()), e))?;
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let be64 = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(x)
    };
    if be32(&h, 0) != 0x5146_49fb {
        return Err(bad("not a qcow2 image"));
    }
    let version = be32(&h, 4);
    if version == 3 {
        file.read_exact_at(&mut h[72..80], 72).map_err(|e| Error::io(format!("Cannot read {}", path.display()), e))?;
        // dirty (bit 0) and the compression type (bit 3) do not change how L2 entries read.
        if be64(&h, 72) & !0b1001 != 0 {
            return Err(bad("incompatible features Ferry cannot read in place"));
        }
    } else if version != 2 {
        return Err(bad("unknown qcow2 version"));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad("cluster size out of range"));
    }
    if be32(&h, 32) != 0 {
        return Err(bad("encrypted"));
    }
    let cluster = 1u64 << cluster_bits;
    let size = be64(&h, 24);
    let l1_size = u64::from(be32(&h, 36));
    let l1_offset = be64(&h, 40);
    let l2_entries = cluster / 8;
    if l1_size > size.div_ceil(cluster * l2_entries) + 1 {
        return Err(bad("L1 table larger than the image needs"));
    }
    // A table must lie inside the file: its size in the header is checked against the file
    // before anything is allocated for it (a damaged or hostile header could ask for GiBs).
    let file_len = file.metadata().map_err(|e| Error::io(format!("Cannot stat {}", path.display()), e))?.len();
    let read_table = |offset: u64, entries: u64| -> Result<Vec<u64>> {
        let end = entries.checked_mul(8).and_then(|n| offset.checked_add(n));
        if end.is_none_or(|end| end > file_len) {
            return Err(bad("a table lies past the end of the file"));
        }
        let mut b = vec![0u8; (entries * 8) as usize];
        file.read_exact_at(&mut b, offset).map_err(|e| Error::io(format!("Cannot read {}", path.display()), e))?;
        Ok(b.chunks_exact(8).map(|c| be64(c, 0)).collect())
    };
    let l1 = read_table(l1_offset, l1_size)?;
    let mut out: Vec<ferry_qemu::img::MapExtent> = Vec::new();
    for (i, l1e) in l1.iter().enumerate() {
        let l2_offset = l1e & OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        for (j, e) in read_table(l2_offset, l2_entries)?.into_iter().enumerate() {
            let start = (i as u64 * l2_entries + j as u64) * cluster;
            if start >= size {
                break;
            }
            if e & (1 << 62) != 0 {
                return Err(bad("compressed cluster"));
            }
            let host = e & OFFSET_MASK;
            let zero = version == 3 && e & OFLAG_ZERO != 0;
            if host == 0 && !zero {
                continue;
            }
            let length = cluster.min(size - start);
            let data = !zero;
            let offset = data.then_some(host);
            match out.last_mut() {
                Some(last)
                    if last.start + last.length == start
                        && last.data == data
                        && (!data || last.offset.map(|o| o + last.length) == offset) =>
                {
                    last.length += length;
                }
                _ => {
                    out.push(ferry_qemu::img::MapExtent { start, length, depth: 0, present: true, zero, data, offset })
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_qemu::img;

    /// Found by the fuzz target of the qcow2 reader: a header that announces a huge image and
    /// an L1 table of 2^32-1 entries made the reader allocate 32 GiB before reading it.
    #[test]
    fn sec_3_a_table_past_the_end_of_the_file_is_refused_before_it_is_allocated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hostile.qcow2");
        let mut h = Vec::new();
        h.extend_from_slice(b"QFI\xfb");
        h.extend_from_slice(&3u32.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes()); // backing offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing size
        h.extend_from_slice(&16u32.to_be_bytes()); // cluster bits
        h.extend_from_slice(&(1u64 << 62).to_be_bytes()); // virtual size
        h.extend_from_slice(&0u32.to_be_bytes()); // encryption
        h.extend_from_slice(&u32::MAX.to_be_bytes()); // L1 entries
        h.extend_from_slice(&0x10000u64.to_be_bytes()); // L1 offset
        h.resize(512, 0);
        std::fs::write(&path, &h).expect("write");
        let e = map_layer(&path).expect_err("refused");
        assert!(e.to_string().contains("past the end of the file"), "{e}");
    }

    #[tokio::test]
    async fn rep_3_in_process_layer_map_matches_qemu_img() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("staging.qcow2");
        let size = 40 << 20;
        Qcow2Writer::create(&path, size, false).expect("create").finish(None).expect("finish");
        assert!(map_layer(&path).expect("map").is_empty(), "a fresh image holds nothing");
        // QEMU writes into it as a backup job would: data, zeroes, data at the end.
        let out = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x11 0 192k", "-c", "write -z 1M 128k", "-c"])
            .arg("write -P 0x22 33M 64k")
            .args(["-c", "write -P 0x33 39936k 1024k"])
            .arg(&path)
            .output()
            .expect("qemu-io");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mine = map_layer(&path).expect("map");
        let theirs = img::map_layer(&path, false).await.expect("qemu-img map");
        let cover = |m: &[img::MapExtent]| -> Vec<(u64, bool, bool)> {
            let mut v = Vec::new();
            for e in m {
                let mut at = e.start;
                while at < e.start + e.length {
                    v.push((at, e.data, e.zero));
                    at += CLUSTER;
                }
            }
            v
        };
        assert_eq!(cover(&mine), cover(&theirs), "mine {mine:?}\ntheirs {theirs:?}");
        // Host offsets read back the guest's bytes.
        let f = File::open(&path).expect("open");
        for (pattern, at) in [(0x11u8, 0u64), (0x22, 33 << 20), (0x33, (39936 + 512) << 10)] {
            let e = mine.iter().find(|e| e.data && e.start <= at && at < e.start + e.length).expect("extent");
            let mut b = [0u8; 512];
            f.read_exact_at(&mut b, e.offset.expect("offset") + (at - e.start)).expect("read");
            assert!(b.iter().all(|x| *x == pattern), "{pattern:#x} at {at}");
        }
        assert!(map_layer(&dir.path().join("missing.qcow2")).is_err());
        std::fs::write(dir.path().join("raw.img"), vec![0u8; 4096]).expect("raw");
        assert!(map_layer(&dir.path().join("raw.img")).is_err(), "a raw file is refused");
    }

    #[tokio::test]
    async fn rep_3_qcow2_writer_output_is_clean_and_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.qcow2");
        let size = 8 << 20;
        let mut w = Qcow2Writer::create(&base, size, false).expect("create");
        w.write_data(0, &Bytes::from(vec![0xaa; 3 * CLUSTER as usize])).expect("data");
        w.write_zero(CLUSTER * 8, CLUSTER).expect("zero without backing is a no-op");
        w.finish(None).expect("finish");
        let top = dir.path().join("top.qcow2");
        let mut w = Qcow2Writer::create(&top, size, true).expect("create");
        w.write_zero(CLUSTER, CLUSTER).expect("zero");
        w.write_data(CLUSTER * 100, &Bytes::from(vec![0xbb; CLUSTER as usize])).expect("data");
        w.write_data(CLUSTER * 100, &Bytes::from(vec![0xcc; CLUSTER as usize])).expect("overwrite");
        assert!(w.write_data(100, &Bytes::from_static(&[0; 512])).is_err());
        w.finish(Some("base.qcow2")).expect("finish");
        assert!(img::check(&top).await.expect("check").is_clean());
        assert!(img::check(&base).await.expect("check").is_clean());
        let raw = dir.path().join("out.raw");
        img::convert(&top, &raw, ferry_qemu::DiskFormat::Raw, false).await.expect("convert");
        let bytes = std::fs::read(&raw).expect("read");
        let c = CLUSTER as usize;
        assert!(bytes[..c].iter().all(|b| *b == 0xaa));
        assert!(bytes[c..2 * c].iter().all(|b| *b == 0));
        assert!(bytes[2 * c..3 * c].iter().all(|b| *b == 0xaa));
        assert!(bytes[100 * c..101 * c].iter().all(|b| *b == 0xcc));
        assert_eq!(bytes.len() as u64, size);
    }
}
