//! Writing data clusters of an image off the receiving thread, bypassing the page cache.
//!
//! The replica's receive loop (TLS, frame decode, checksum) hands each data run to a writer
//! thread through a short queue, so receiving and writing overlap. The thread writes with
//! `O_DIRECT` where the file system supports it: received data is not read back soon, and
//! copying it into fresh page-cache pages cost more CPU than the whole rest of the receive path
//! (measured with the replication bench); direct writes also leave the final fsync little to do.
//! Where `O_DIRECT` is refused (tmpfs), the thread writes through the page cache and starts the
//! writeback of each run at once.
//!
//! A run whose memory is already 4 KiB-aligned and whole blocks long (the receiver lays every
//! frame out so that its payload is) is queued as it is, a reference to the received buffer, not a
//! copy ([`DataSink::write_shared`]); other runs are copied into aligned buffers taken from a small
//! pool, so the steady state allocates nothing. Writes happen in submission order, so a cluster written
//! twice ends with the later data. The first write error stops the thread; it is returned by the
//! next [`DataSink::write`] or by [`DataSink::close`].

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;

use crate::error::{Error, Result};

/// Alignment `O_DIRECT` needs for buffer address, length and file offset.
pub const DIRECT_ALIGN: usize = 4096;
/// Runs queued ahead of the writer thread at most (many small ones of a scattered delta batch
/// into one vectored write)...
const QUEUE_DEPTH: usize = 64;
/// ...and bytes queued at most (memory per disk being received stays bounded).
const QUEUE_BYTES: usize = 4 << 20;
/// Written buffers kept for reuse.
const POOL: usize = 4;

/// Bytes queued and not yet written, with a wait for room; closed when the writer ends.
#[derive(Debug, Default)]
struct Budget {
    state: Mutex<(usize, bool)>,
    room: Condvar,
}

impl Budget {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until `n` more bytes fit (one run always fits when nothing is queued).
    fn take(&self, n: usize) {
        let mut s = self.lock();
        while !s.1 && s.0 > 0 && s.0 + n > QUEUE_BYTES {
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.0 += n;
    }

    fn give(&self, n: usize) {
        let mut s = self.lock();
        s.0 = s.0.saturating_sub(n);
        self.room.notify_all();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.room.notify_all();
    }
}

/// A byte buffer whose usable part starts at a [`DIRECT_ALIGN`] boundary.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Make the buffer `len` bytes long (contents unspecified), reusing its memory when it fits.
    pub(crate) fn resize(&mut self, len: usize) {
        if self.raw.len() < len + DIRECT_ALIGN {
            self.raw = vec![0u8; len + DIRECT_ALIGN];
        }
        self.start = self.raw.as_ptr().align_offset(DIRECT_ALIGN);
        self.len = len;
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// The memory of one queued run.
enum Block {
    /// Copied into a pool buffer (returned to the pool once written).
    Copied(AlignedBuf),
    /// The caller's buffer, already aligned and padded.
    Shared(Bytes),
}

impl Block {
    fn as_slice(&self) -> &[u8] {
        match self {
            Block::Copied(b) => b.as_slice(),
            Block::Shared(b) => b,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

struct Job {
    at: u64,
    buf: Block,
}

/// Background writer of one file's data runs.
#[derive(Debug)]
pub struct DataSink {
    path: PathBuf,
    tx: Option<SyncSender<Job>>,
    free: Receiver<AlignedBuf>,
    /// The writer's outcome, sent when it ends (taken once).
    done: Option<Receiver<std::io::Result<()>>>,
    budget: Arc<Budget>,
    direct: bool,
}

impl DataSink {
    /// A sink writing into `path` (which must exist).
    pub fn open(path: &Path) -> Result<Self> {
        let (file, direct) = match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(format!("Cannot open {}", path.display()), e))?,
                false,
            ),
            Err(e) => return Err(Error::io(format!("Cannot open {}", path.display()), e)),
        };
        let (tx, rx) = sync_channel::<Job>(QUEUE_DEPTH);
        let (free_tx, free) = sync_channel::<AlignedBuf>(POOL);
        let (done_tx, done) = sync_channel::<std::io::Result<()>>(1);
        let budget = Arc::new(Budget::default());
        let b2 = budget.clone();
        let work = move || {
            let r = write_loop(&file, direct, &rx, &free_tx, &b2);
            b2.close();
            let _ = done_tx.send(r);
        };
        // On the caller's runtime when there is one (its blocking pool; the thread is then
        // accounted to that runtime), else on a thread of its own.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(work)),
            Err(_) => drop(
                std::thread::Builder::new()
                    .name("ferry-data-sink".into())
                    .spawn(work)
                    .map_err(|e| Error::io("Cannot start the image writer thread", e))?,
            ),
        }
        Ok(Self { path: path.to_path_buf(), tx: Some(tx), free, done: Some(done), budget, direct })
    }

    /// Whether writes bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Queue `data` for writing at `at` (a multiple of [`DIRECT_ALIGN`]), zero-padded to `padded`
    /// bytes (a multiple of [`DIRECT_ALIGN`], at least `data.len()`).
    pub fn write(&mut self, at: u64, data: &[u8], padded: usize) -> Result<()> {
        debug_assert!(at.is_multiple_of(DIRECT_ALIGN as u64) && padded.is_multiple_of(DIRECT_ALIGN));
        let mut buf = self.free.try_recv().unwrap_or_default();
        buf.resize(padded.max(data.len()));
        let dst = buf.as_mut_slice();
        dst[..data.len()].copy_from_slice(data);
        dst[data.len()..].fill(0);
        self.queue(at, Block::Copied(buf))
    }

    /// [`DataSink::write`] of a run the caller shares: queued without a copy when its memory is
    /// [`DIRECT_ALIGN`]-aligned and exactly `padded` bytes long (or writes go through the page
    /// cache, where alignment does not matter), copied otherwise.
    pub fn write_shared(&mut self, at: u64, data: &Bytes, padded: usize) -> Result<()> {
        let aligned = !self.direct || (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
        if data.len() == padded && aligned {
            self.queue(at, Block::Shared(data.clone()))
        } else {
            self.write(at, data, padded)
        }
    }

    fn queue(&mut self, at: u64, buf: Block) -> Result<()> {
        self.budget.take(buf.len());
        let sent = self.tx.as_ref().map(|tx| tx.send(Job { at, buf }).is_ok()).unwrap_or(false);
        if sent {
            Ok(())
        } else {
            Err(self.stop().err().unwrap_or_else(|| {
                Error::io(
                    format!("Cannot write {}", self.path.display()),
                    std::io::Error::other("writer thread stopped"),
                )
            }))
        }
    }

    fn stop(&mut self) -> Result<()> {
        self.tx = None;
        match self.done.take().map(|d| d.recv()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(Error::io(format!("Cannot write {}", self.path.display()), e)),
            Some(Err(_)) => Err(Error::io(
                format!("Cannot write {}", self.path.display()),
                std::io::Error::other("writer thread panicked"),
            )),
        }
    }

    /// Wait until every queued run is written; the first write error, if any.
    pub fn close(mut self) -> Result<()> {
        self.stop()
    }
}

impl Drop for DataSink {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn write_loop(
    file: &File,
    direct: bool,
    rx: &Receiver<Job>,
    free: &SyncSender<AlignedBuf>,
    budget: &Budget,
) -> std::io::Result<()> {
    let mut batch: Vec<Job> = Vec::with_capacity(QUEUE_DEPTH);
    while let Ok(first) = rx.recv() {
        // Runs queued meanwhile that continue the first one on disk go in the same write (the
        // overlay appends clusters in arrival order, so a delta's scattered runs are contiguous
        // in the file).
        let mut end = first.at + first.buf.len() as u64;
        batch.push(first);
        while batch.len() < QUEUE_DEPTH {
            match rx.try_recv() {
                Ok(job) if job.at == end => {
                    end += job.buf.len() as u64;
                    batch.push(job);
                }
                Ok(job) => {
                    write_batch(file, direct, &batch)?;
                    release(&mut batch, free, budget);
                    end = job.at + job.buf.len() as u64;
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        write_batch(file, direct, &batch)?;
        release(&mut batch, free, budget);
    }
    Ok(())
}

/// Give the bytes of written jobs back to the budget and their pool buffers to the pool.
fn release(batch: &mut Vec<Job>, free: &SyncSender<AlignedBuf>, budget: &Budget) {
    for j in batch.drain(..) {
        budget.give(j.buf.len());
        if let Block::Copied(b) = j.buf {
            let _ = free.try_send(b);
        }
    }
}

/// Write jobs that are contiguous on disk with one `pwritev` (the rest of a short write, which
/// regular files only do on errors such as a full disk, is retried run by run).
fn write_batch(file: &File, direct: bool, batch: &[Job]) -> std::io::Result<()> {
    let Some(first) = batch.first() else { return Ok(()) };
    let total: usize = batch.iter().map(|j| j.buf.len()).sum();
    let iov: Vec<libc::iovec> = batch
        .iter()
        .map(|j| libc::iovec { iov_base: j.buf.as_slice().as_ptr() as *mut libc::c_void, iov_len: j.buf.len() })
        .collect();
    // SAFETY: every iovec points into a buffer `batch` keeps alive for the call; pwritev only
    // reads them.
    let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, first.at as libc::off_t) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut done = n as usize;
    if done < total {
        for j in batch {
            let len = j.buf.len();
            if done >= len {
                done -= len;
                continue;
            }
            file.write_all_at(&j.buf.as_slice()[done..], j.at + done as u64)?;
            done = 0;
        }
    }
    if !direct {
        // SAFETY: advisory syscall on an open descriptor; failure only loses the head start.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), first.at as i64, total as i64, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rep_3_replica_write_queue_is_bounded_by_bytes() {
        let b = Arc::new(Budget::default());
        b.take(QUEUE_BYTES - 4096);
        // More than fits waits until the writer gives bytes back.
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || {
            b2.take(8192);
            b2.lock().0
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "a take beyond the budget must wait");
        b.give(QUEUE_BYTES - 4096);
        assert_eq!(waiter.join().expect("waiter"), 8192);
        // One run always fits an empty queue, however large; a closed budget never blocks.
        b.give(8192);
        b.take(QUEUE_BYTES * 2);
        b.close();
        b.take(4096);
    }

    #[test]
    fn rep_3_data_sink_writes_in_order_padded_and_reports_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Direct writes on ext4; tmpfs refuses O_DIRECT on older kernels (page-cache writes).
        let shm = tempfile::tempdir_in("/dev/shm").ok();
        for (d, direct) in [(Some(dir.path()), true), (shm.as_ref().map(|d| d.path()), false)] {
            let Some(d) = d else { continue };
            let p = d.join("f");
            std::fs::write(&p, b"").expect("create");
            let mut s = DataSink::open(&p).expect("open");
            assert!(s.is_direct() || !direct, "{} is written through the page cache", p.display());
            s.write(0, &[1u8; 5000], 8192).expect("write");
            s.write(8192, &[2u8; 4096], 4096).expect("write");
            // The same place again: the later data wins.
            s.write(0, &[3u8; 4096], 4096).expect("write");
            s.close().expect("close");
            let got = std::fs::read(&p).expect("read");
            assert_eq!(got.len(), 12288);
            // Many contiguous runs (batched into vectored writes when they queue up).
            let q = d.join("g");
            std::fs::write(&q, b"").expect("create");
            let mut s = DataSink::open(&q).expect("open");
            for i in 0..64u64 {
                s.write(i * 4096, &[i as u8; 4096], 4096).expect("write");
            }
            s.close().expect("close");
            let g = std::fs::read(&q).expect("read");
            assert_eq!(g.len(), 64 * 4096);
            assert!(g.chunks(4096).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
            assert!(got[..4096].iter().all(|&b| b == 3));
            assert!(got[4096..5000].iter().all(|&b| b == 1));
            assert!(got[5000..8192].iter().all(|&b| b == 0), "padding is zero");
            assert!(got[8192..].iter().all(|&b| b == 2));
        }

        // Shared runs: an aligned, whole-block buffer is written from where it is; others are
        // copied first (unaligned memory, or shorter than the padded length).
        let raw = Bytes::from(vec![5u8; 3 * DIRECT_ALIGN]);
        let off = (DIRECT_ALIGN - raw.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        let aligned = raw.slice(off..off + DIRECT_ALIGN);
        let unaligned = raw.slice(off + 1..off + 1 + DIRECT_ALIGN);
        let short = raw.slice(off..off + 100);
        let p = dir.path().join("shared");
        std::fs::write(&p, b"").expect("create");
        let mut s = DataSink::open(&p).expect("open");
        s.write_shared(0, &aligned, DIRECT_ALIGN).expect("aligned");
        s.write_shared(DIRECT_ALIGN as u64, &unaligned, DIRECT_ALIGN).expect("unaligned");
        s.write_shared(2 * DIRECT_ALIGN as u64, &short, DIRECT_ALIGN).expect("short");
        s.close().expect("close");
        let got = std::fs::read(&p).expect("read");
        assert_eq!(got.len(), 3 * DIRECT_ALIGN);
        assert!(got[..2 * DIRECT_ALIGN + 100].iter().all(|&b| b == 5));
        assert!(got[2 * DIRECT_ALIGN + 100..].iter().all(|&b| b == 0), "padding is zero");

        // A file that cannot be written: the error comes back, with the path.
        let ro = dir.path().join("ro");
        std::fs::write(&ro, b"").expect("create");
        let mut s = DataSink::open(&ro).expect("open");
        // Writing beyond what any file may hold fails in the thread.
        let _ = s.write(1u64 << 60, &[1u8; 4096], 4096);
        let err = s.close().expect_err("write past the maximum file size must fail");
        assert!(err.to_string().contains("ro"), "{err}");
    }
}
