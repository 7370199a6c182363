//! Ferry's replication protocol: length-prefixed binary frames over mutually authenticated TLS
//! (default port [`DEFAULT_PORT`]).
//!
//! # Frames
//! ```text
//! +----------------+--------+--------------------------+
//! | length: u32 BE | type:u8| body (length - 1 bytes)  |
//! +----------------+--------+--------------------------+
//! ```
//! `length` counts the type byte and the body and must be in `1..=MAX_FRAME` (8 MiB). Integers are
//! big-endian; strings are `u16 length + UTF-8` (at most [`MAX_STR`] bytes). A frame that is
//! oversized, truncated, of unknown type, has trailing bytes or invalid fields is refused with
//! [`ErrorKind::Protocol`](crate::ErrorKind::Protocol); the receiver logs it, answers `Error` and
//! closes the connection without changing anything (SEC-3).
//!
//! # Sequence (one cycle, with a broken connection and resume)
//! ```text
//! primary (client)                                 replica (server)
//!   |--- TCP + TLS 1.3, client cert (vault CA) ------>|  CN must be in the allowlist (SEC-1)
//!   |--- Hello{version, vm, pair, direction} -------->|  pair must be authorised for that CN
//!   |<-- Hello{version, vm, pair, direction} ---------|  (or Error{code, message} + close)
//!   |--- BeginCycle{cycle, disks, app, created_at} -->|
//!   |<-- ResumeFrom{cycle, next=0} -------------------|  (Ack{cycle, durable} if already applied)
//!   |--- Extent{#0: disk, off, len, Data|Zero, ...} ->|  checksum verified, written to new overlay
//!   |--- Extent{#1} ... Extent{#k} ------------------>|
//!   |<-- ResumeFrom{cycle, next=k+1} -----------------|  periodic progress ack
//!   |--- Extent{#k+1} ...   X connection breaks X     |  (receiver keeps the pending overlay)
//!   |=== reconnect, Hello, Hello =====================|
//!   |--- BeginCycle{same cycle} --------------------->|
//!   |<-- ResumeFrom{cycle, next=k+1} -----------------|  only unacknowledged extents are resent
//!   |--- Extent{#k+1} ... Extent{#n-1} -------------->|
//!   |--- EndCycle{extent count, total bytes} -------->|  fsync overlays, write catalog atomically
//!   |<-- Ack{cycle, durable=true} --------------------|  the primary now drops its old bitmap
//! ```
//! Resync (REP-6) adds `HashRequest{disk, block size, first, count}` → `HashReply{disk, first,
//! hashes}`: blake3 of each block of the replica's latest point.
//!
//! Extents carry the blake3 hash of the *uncompressed* payload. With compression on (POL-6) the
//! payload is zstd (level 1) unless that does not make it smaller; then it is sent raw with the
//! `compressed` flag clear.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, ErrorKind, Result};

/// Default replication port (POL-2).
pub const DEFAULT_PORT: u16 = 8084;
/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest accepted frame (type byte + body).
pub const MAX_FRAME: u32 = 8 << 20;
/// Largest uncompressed payload of one data extent.
pub const MAX_DATA_EXTENT: u64 = 4 << 20;
/// Longest string field.
pub const MAX_STR: usize = 1024;
/// Most disks per VM (REP-9).
pub const MAX_DISKS: usize = 16;
/// Largest virtual disk (64 TiB).
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// Most hashes per `HashReply`.
pub const MAX_HASHES: u32 = 65536;

/// Replication direction of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Primary site to recovery site.
    Forward,
    /// After failover: recovery site back to the primary site (reverse replication).
    Reverse,
}

/// Kind of extent content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    Data,
    /// Reads as zeroes (masks older data in the chain); carries no payload.
    Zero,
}

/// One disk of a cycle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskInfo {
    /// Disk target, e.g. `vda`.
    pub target: String,
    /// Virtual size in bytes.
    pub size: u64,
}

/// Header of a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginCycle {
    pub cycle: u64,
    pub disks: Vec<DiskInfo>,
    pub app_consistent: bool,
    /// A full image that starts a chain (initial replication) rather than a delta.
    pub base: bool,
    /// Capture time, unix milliseconds.
    pub created_at_ms: i64,
}

/// One extent of a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Position in the cycle's extent sequence (0-based, gap-free).
    pub index: u64,
    pub disk: u16,
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
    pub compressed: bool,
    /// blake3 of the uncompressed payload (all-zero hash input for `Zero` is empty).
    pub checksum: [u8; 32],
    /// A view into the received frame (no copy on the receiving side).
    pub payload: Bytes,
}

/// Stable error codes of `Error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    Protocol = 1,
    Unauthorized = 2,
    Checksum = 3,
    Conflict = 4,
    Internal = 5,
    Version = 6,
    /// The replica's storage is full.
    NoSpace = 7,
}

impl ErrorCode {
    fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Unauthorized,
            3 => ErrorCode::Checksum,
            4 => ErrorCode::Conflict,
            6 => ErrorCode::Version,
            7 => ErrorCode::NoSpace,
            _ => ErrorCode::Internal,
        }
    }
}

/// A protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello { version: u16, vm_id: String, pair_id: String, direction: Direction },
    BeginCycle(BeginCycle),
    Extent(Extent),
    EndCycle { cycle: u64, extent_count: u64, total_bytes: u64 },
    Ack { cycle: u64, durable: bool },
    ResumeFrom { cycle: u64, next_extent: u64 },
    Error { code: ErrorCode, message: String },
    HashRequest { disk: u16, block_size: u32, first: u64, count: u32 },
    HashReply { disk: u16, first: u64, hashes: Vec<[u8; 32]> },
}

impl Message {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::BeginCycle(_) => "BeginCycle",
            Message::Extent(_) => "Extent",
            Message::EndCycle { .. } => "EndCycle",
            Message::Ack { .. } => "Ack",
            Message::ResumeFrom { .. } => "ResumeFrom",
            Message::Error { .. } => "Error",
            Message::HashRequest { .. } => "HashRequest",
            Message::HashReply { .. } => "HashReply",
        }
    }

    fn type_byte(&self) -> u8 {
        match self {
            Message::Hello { .. } => 1,
            Message::BeginCycle(_) => 2,
            Message::Extent(_) => 3,
            Message::EndCycle { .. } => 4,
            Message::Ack { .. } => 5,
            Message::ResumeFrom { .. } => 6,
            Message::Error { .. } => 7,
            Message::HashRequest { .. } => 8,
            Message::HashReply { .. } => 9,
        }
    }

    /// The whole frame (length prefix included).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut b = Vec::with_capacity(match self {
            Message::Extent(e) => 64 + e.payload.len(),
            _ => 64,
        });
        b.extend_from_slice(&[0, 0, 0, 0, self.type_byte()]);
        match self {
            Message::Hello { version, vm_id, pair_id, direction } => {
                b.extend_from_slice(&version.to_be_bytes());
                put_str(&mut b, vm_id)?;
                put_str(&mut b, pair_id)?;
                b.push(match direction {
                    Direction::Forward => 0,
                    Direction::Reverse => 1,
                });
            }
            Message::BeginCycle(c) => {
                b.extend_from_slice(&c.cycle.to_be_bytes());
                b.push(u8::from(c.app_consistent) | (u8::from(c.base) << 1));
                b.extend_from_slice(&c.created_at_ms.to_be_bytes());
                if c.disks.is_empty() || c.disks.len() > MAX_DISKS {
                    return Err(Error::new(ErrorKind::Invalid, format!("A cycle needs 1..={MAX_DISKS} disks")));
                }
                b.extend_from_slice(&(c.disks.len() as u16).to_be_bytes());
                for d in &c.disks {
                    put_str(&mut b, &d.target)?;
                    b.extend_from_slice(&d.size.to_be_bytes());
                }
            }
            Message::Extent(e) => {
                b.extend_from_slice(&e.index.to_be_bytes());
                b.extend_from_slice(&e.disk.to_be_bytes());
                b.extend_from_slice(&e.offset.to_be_bytes());
                b.extend_from_slice(&e.len.to_be_bytes());
                b.push(match e.kind {
                    ExtentKind::Data => 0,
                    ExtentKind::Zero => 1,
                });
                b.push(u8::from(e.compressed));
                b.extend_from_slice(&e.checksum);
                b.extend_from_slice(&e.payload);
            }
            Message::EndCycle { cycle, extent_count, total_bytes } => {
                for v in [cycle, extent_count, total_bytes] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
            }
            Message::Ack { cycle, durable } => {
                b.extend_from_slice(&cycle.to_be_bytes());
                b.push(u8::from(*durable));
            }
            Message::ResumeFrom { cycle, next_extent } => {
                b.extend_from_slice(&cycle.to_be_bytes());
                b.extend_from_slice(&next_extent.to_be_bytes());
            }
            Message::Error { code, message } => {
                b.extend_from_slice(&(*code as u16).to_be_bytes());
                let mut m = message.clone();
                truncate_utf8(&mut m, MAX_STR);
                put_str(&mut b, &m)?;
            }
            Message::HashRequest { disk, block_size, first, count } => {
                b.extend_from_slice(&disk.to_be_bytes());
                b.extend_from_slice(&block_size.to_be_bytes());
                b.extend_from_slice(&first.to_be_bytes());
                b.extend_from_slice(&count.to_be_bytes());
            }
            Message::HashReply { disk, first, hashes } => {
                b.extend_from_slice(&disk.to_be_bytes());
                b.extend_from_slice(&first.to_be_bytes());
                b.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
                for h in hashes {
                    b.extend_from_slice(h);
                }
            }
        }
        let len = b.len() - 4;
        if len > MAX_FRAME as usize {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{} frame of {len} bytes exceeds {MAX_FRAME}", self.name()),
            ));
        }
        b[..4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(b)
    }

    /// Decode one frame body (`type` byte + body, without the length prefix).
    pub fn decode(frame: &[u8]) -> Result<Message> {
        Self::decode_owned(Bytes::copy_from_slice(frame))
    }

    /// [`Message::decode`] of a frame the caller gives away: an extent's payload is a view
    /// into it, not a copy.
    pub fn decode_owned(frame: Bytes) -> Result<Message> {
        let (&ty, body) = frame.split_first().ok_or_else(|| Error::protocol("Empty frame"))?;
        let mut r = Reader { b: body, pos: 0 };
        let msg = match ty {
            1 => {
                let version = r.u16()?;
                let vm_id = r.str()?;
                let pair_id = r.str()?;
                let direction = match r.u8()? {
                    0 => Direction::Forward,
                    1 => Direction::Reverse,
                    d => return Err(Error::protocol(format!("Unknown direction {d}"))),
                };
                Message::Hello { version, vm_id, pair_id, direction }
            }
            2 => {
                let cycle = r.u64()?;
                let flags = r.u8()?;
                if flags & !3 != 0 {
                    return Err(Error::protocol(format!("Unknown cycle flags {flags:#x}")));
                }
                let created_at_ms = r.u64()? as i64;
                let n = r.u16()? as usize;
                if n == 0 || n > MAX_DISKS {
                    return Err(Error::protocol(format!("Cycle with {n} disks (allowed 1..={MAX_DISKS})")));
                }
                let mut disks = Vec::with_capacity(n);
                for _ in 0..n {
                    let target = r.str()?;
                    valid_name(&target, "Disk target")?;
                    let size = r.u64()?;
                    if size == 0 || size > MAX_DISK_SIZE || !size.is_multiple_of(512) {
                        return Err(Error::protocol(format!("Disk {target} size {size} is invalid")));
                    }
                    disks.push(DiskInfo { target, size });
                }
                Message::BeginCycle(BeginCycle {
                    cycle,
                    disks,
                    app_consistent: flags & 1 != 0,
                    base: flags & 2 != 0,
                    created_at_ms,
                })
            }
            3 => {
                let index = r.u64()?;
                let disk = r.u16()?;
                let offset = r.u64()?;
                let len = r.u64()?;
                let kind = match r.u8()? {
                    0 => ExtentKind::Data,
                    1 => ExtentKind::Zero,
                    k => return Err(Error::protocol(format!("Unknown extent kind {k}"))),
                };
                let compressed = match r.u8()? {
                    0 => false,
                    1 => true,
                    c => return Err(Error::protocol(format!("Invalid compressed flag {c}"))),
                };
                let checksum = r.array32()?;
                let start = 1 + r.pos;
                let payload = frame.slice(start..);
                if offset.checked_add(len).is_none() || len == 0 {
                    return Err(Error::protocol(format!("Invalid extent range {offset}+{len}")));
                }
                match kind {
                    ExtentKind::Data if len > MAX_DATA_EXTENT => {
                        return Err(Error::protocol(format!("Data extent of {len} bytes exceeds {MAX_DATA_EXTENT}")))
                    }
                    ExtentKind::Data if !compressed && payload.len() as u64 != len => {
                        return Err(Error::protocol(format!(
                            "Extent payload {} bytes, header says {len}",
                            payload.len()
                        )))
                    }
                    ExtentKind::Zero if !payload.is_empty() || compressed => {
                        return Err(Error::protocol("Zero extent with a payload"))
                    }
                    _ => {}
                }
                return Ok(Message::Extent(Extent { index, disk, offset, len, kind, compressed, checksum, payload }));
            }
            4 => Message::EndCycle { cycle: r.u64()?, extent_count: r.u64()?, total_bytes: r.u64()? },
            5 => {
                let cycle = r.u64()?;
                let durable = match r.u8()? {
                    0 => false,
                    1 => true,
                    d => return Err(Error::protocol(format!("Invalid durable flag {d}"))),
                };
                Message::Ack { cycle, durable }
            }
            6 => Message::ResumeFrom { cycle: r.u64()?, next_extent: r.u64()? },
            7 => Message::Error { code: ErrorCode::from_u16(r.u16()?), message: r.str()? },
            8 => {
                let disk = r.u16()?;
                let block_size = r.u32()?;
                let first = r.u64()?;
                let count = r.u32()?;
                if count > MAX_HASHES || block_size == 0 || block_size > 16 << 20 {
                    return Err(Error::protocol(format!("Hash request of {count} blocks of {block_size} bytes")));
                }
                Message::HashRequest { disk, block_size, first, count }
            }
            9 => {
                let disk = r.u16()?;
                let first = r.u64()?;
                let count = r.u32()?;
                if count > MAX_HASHES || r.remaining() != count as usize * 32 {
                    return Err(Error::protocol(format!("Hash reply with {count} hashes is malformed")));
                }
                let mut hashes = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    hashes.push(r.array32()?);
                }
                Message::HashReply { disk, first, hashes }
            }
            t => return Err(Error::protocol(format!("Unknown frame type {t}"))),
        };
        if r.remaining() != 0 {
            return Err(Error::protocol(format!("{} frame has {} trailing bytes", msg.name(), r.remaining())));
        }
        Ok(msg)
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Names used in paths on the replica (VM ids, pair ids, disk targets): `[A-Za-z0-9._-]`, not
/// starting with a dot, 1..=128 bytes. Refuses path traversal (SEC-3).
pub fn valid_name(s: &str, what: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::protocol(format!("{what} {s:?} is not a valid name")))
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) -> Result<()> {
    if s.len() > MAX_STR {
        return Err(Error::new(ErrorKind::Invalid, format!("String field of {} bytes exceeds {MAX_STR}", s.len())));
    }
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.b.len()).ok_or_else(|| {
            Error::protocol(format!("Frame truncated: needed {n} bytes at {} of {}", self.pos, self.b.len()))
        })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(a))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn array32(&mut self) -> Result<[u8; 32]> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn str(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        if n > MAX_STR {
            return Err(Error::protocol(format!("String field of {n} bytes exceeds {MAX_STR}")));
        }
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "String field is not UTF-8", e))
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
}

/// Frame buffers of one reader, kept for reuse: a received extent's payload stays a view into its
/// frame until the replica has written it; then the buffer comes back here, so a long transfer
/// neither allocates nor faults in fresh pages for every frame. At most [`FramePool::KEEP`]
/// buffers wait here; they are freed with the pool (the connection).
#[derive(Debug, Clone, Default)]
pub struct FramePool(Arc<Mutex<Vec<Vec<u8>>>>);

impl FramePool {
    /// Buffers kept at most (those in flight while a transfer streams).
    pub const KEEP: usize = 4;

    /// An empty buffer with room for `cap` bytes.
    fn take(&self, cap: usize) -> Vec<u8> {
        let mut v = self.0.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
        v.clear();
        v.reserve(cap);
        v
    }

    /// Buffers waiting for reuse.
    pub fn idle(&self) -> usize {
        self.0.lock().map(|p| p.len()).unwrap_or(0)
    }
}

/// A frame's buffer, back to its pool when the last view of it is dropped.
struct PooledFrame {
    buf: Vec<u8>,
    pool: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for PooledFrame {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledFrame {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            if let Ok(mut p) = pool.lock() {
                if p.len() < FramePool::KEEP {
                    p.push(std::mem::take(&mut self.buf));
                }
            }
        }
    }
}

/// Read one frame. `Ok(None)` on a clean end of stream before a frame starts. Oversized and
/// truncated frames are [`ErrorKind::Protocol`] errors; nothing beyond the length prefix of an
/// oversized frame is read.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Message>> {
    read_frame_pooled(r, None).await
}

/// [`read_frame`] into a buffer of `pool` (returned to it once the message and every view of
/// its payload are dropped).
pub async fn read_frame_pooled<R: AsyncRead + Unpin>(r: &mut R, pool: Option<&FramePool>) -> Result<Option<Message>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n =
            r.read(&mut len[got..]).await.map_err(|e| Error::with_source(ErrorKind::Disconnected, "Read failed", e))?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::new(ErrorKind::Disconnected, "Connection closed inside a frame header"))
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len);
    if len == 0 || len > MAX_FRAME {
        return Err(Error::protocol(format!("Frame length {len} outside 1..={MAX_FRAME}")));
    }
    // Read into spare capacity: no zeroing pass, and the buffer becomes the extent's payload.
    // The frame starts where a data extent's payload lands on a DIRECT_ALIGN boundary, so the
    // replica writes it to disk (O_DIRECT) from this very buffer. (Room beyond the frame, so the
    // final zero-length read does not grow, and so move, the buffer.)
    const ALIGN: usize = crate::data_sink::DIRECT_ALIGN;
    let cap = len as usize + ALIGN + 64;
    let mut buf = pool.map_or_else(|| Vec::with_capacity(cap), |p| p.take(cap));
    let pad =
        if len as usize >= ALIGN { (ALIGN - (buf.as_ptr() as usize + DATA_PAYLOAD_AT) % ALIGN) % ALIGN } else { 0 };
    buf.resize(pad, 0);
    let got = (&mut *r).take(u64::from(len)).read_to_end(&mut buf).await.map_err(|e| {
        Error::with_source(ErrorKind::Disconnected, format!("Connection closed inside a frame of {len} bytes"), e)
    })?;
    if got != len as usize {
        return Err(Error::new(ErrorKind::Disconnected, format!("Connection closed inside a frame of {len} bytes")));
    }
    let frame = match pool {
        Some(p) => Bytes::from_owner(PooledFrame { buf, pool: Arc::downgrade(&p.0) }),
        None => Bytes::from(buf),
    };
    Message::decode_owned(frame.slice(pad..)).map(Some)
}

/// Read one frame; end of stream is an error.
pub async fn expect_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message> {
    read_frame(r).await?.ok_or_else(|| Error::new(ErrorKind::Disconnected, "Peer closed the connection"))
}

/// Write one message and flush.
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<usize> {
    let buf = msg.encode()?;
    write_raw(w, &buf).await?;
    Ok(buf.len())
}

/// Write an already encoded frame and flush.
pub async fn write_raw<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> Result<()> {
    w.write_all(buf).await.map_err(|e| Error::with_source(ErrorKind::Disconnected, "Write failed", e))?;
    w.flush().await.map_err(|e| Error::with_source(ErrorKind::Disconnected, "Flush failed", e))
}

/// True if `b` is all zero bytes (word-wise).
pub fn is_zero(b: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets the aligned middle.
    let (head, mid, tail) = unsafe { b.align_to::<u128>() };
    head.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

/// Build an extent from raw data: checksum, optional zstd (kept only if smaller).
pub fn data_extent(index: u64, disk: u16, offset: u64, data: &[u8], compress: bool) -> Result<Extent> {
    let frame = encode_data_frame(
        index,
        disk,
        offset,
        data,
        compress
            .then(|| zstd::bulk::Compressor::new(1))
            .transpose()
            .map_err(|e| Error::io("Cannot create a zstd context", e))?
            .as_mut(),
    )?;
    match Message::decode(&frame[4..])? {
        Message::Extent(e) => Ok(e),
        m => Err(Error::protocol(format!("Encoded a {} instead of an extent", m.name()))),
    }
}

/// Bytes of a data extent frame before its payload: length prefix, type, index, disk, offset,
/// length, kind, compressed flag, blake3.
pub const DATA_FRAME_HEADER: usize = 4 + 1 + 8 + 2 + 8 + 8 + 1 + 1 + 32;
/// Where a data extent's payload starts in a frame body (after the length prefix).
const DATA_PAYLOAD_AT: usize = DATA_FRAME_HEADER - 4;

/// Fill the [`DATA_FRAME_HEADER`] bytes at the start of `frame` (the whole frame).
fn put_data_header(
    frame: &mut [u8],
    index: u64,
    disk: u16,
    offset: u64,
    raw_len: u64,
    compressed: bool,
    sum: &[u8; 32],
) {
    let body = (frame.len() - 4) as u32;
    let h = &mut frame[..DATA_FRAME_HEADER];
    h[..4].copy_from_slice(&body.to_be_bytes());
    h[4] = 3;
    h[5..13].copy_from_slice(&index.to_be_bytes());
    h[13..15].copy_from_slice(&disk.to_be_bytes());
    h[15..23].copy_from_slice(&offset.to_be_bytes());
    h[23..31].copy_from_slice(&raw_len.to_be_bytes());
    h[31] = 0;
    h[32] = u8::from(compressed);
    h[33..].copy_from_slice(sum);
}

fn check_data_len(n: usize) -> Result<()> {
    if n == 0 || n as u64 > MAX_DATA_EXTENT {
        return Err(Error::new(ErrorKind::Invalid, format!("Data extent of {n} bytes")));
    }
    Ok(())
}

/// Encode a data extent frame from `data` (one copy): checksum of the raw data, zstd with the
/// caller's reusable context when given, raw when compression does not shrink it.
pub fn encode_data_frame(
    index: u64,
    disk: u16,
    offset: u64,
    data: &[u8],
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
) -> Result<Vec<u8>> {
    check_data_len(data.len())?;
    if let Some(c) = compressor {
        let mut b = vec![0u8; DATA_FRAME_HEADER + data.len()];
        // A result that does not fit in `data.len()` bytes is not worth sending compressed.
        match c.compress_to_buffer(data, &mut b[DATA_FRAME_HEADER..]) {
            Ok(n) if n < data.len() => {
                b.truncate(DATA_FRAME_HEADER + n);
                let sum = blake3::hash(data);
                put_data_header(&mut b, index, disk, offset, data.len() as u64, true, sum.as_bytes());
                return Ok(b);
            }
            _ => {
                b[DATA_FRAME_HEADER..].copy_from_slice(data);
                return seal_data_frame(index, disk, offset, b);
            }
        }
    }
    let mut b = Vec::with_capacity(DATA_FRAME_HEADER + data.len());
    b.resize(DATA_FRAME_HEADER, 0);
    b.extend_from_slice(data);
    seal_data_frame(index, disk, offset, b)
}

/// Finish a raw (uncompressed) data extent frame whose payload is already in place after
/// [`DATA_FRAME_HEADER`] bytes of room: checksum and header. The sender reads the disk straight
/// into the frame, so the data is never copied on the way to TLS.
pub fn seal_data_frame(index: u64, disk: u16, offset: u64, mut frame: Vec<u8>) -> Result<Vec<u8>> {
    let n = frame.len().saturating_sub(DATA_FRAME_HEADER);
    check_data_len(n)?;
    let sum = blake3::hash(&frame[DATA_FRAME_HEADER..]);
    put_data_header(&mut frame, index, disk, offset, n as u64, false, sum.as_bytes());
    Ok(frame)
}

/// A zero extent.
pub fn zero_extent(index: u64, disk: u16, offset: u64, len: u64) -> Extent {
    Extent {
        index,
        disk,
        offset,
        len,
        kind: ExtentKind::Zero,
        compressed: false,
        checksum: *blake3::hash(&[]).as_bytes(),
        payload: Bytes::new(),
    }
}

impl Extent {
    /// The uncompressed payload, verified against the checksum (`None` for zero extents): the
    /// received payload itself (a view, not a copy) unless it was compressed.
    pub fn verified_data(&self) -> Result<Option<Bytes>> {
        if self.kind == ExtentKind::Zero {
            return Ok(None);
        }
        let data = if self.compressed {
            let d = zstd::bulk::decompress(&self.payload, self.len as usize).map_err(|e| {
                Error::with_source(ErrorKind::Protocol, format!("Extent {} does not decompress", self.index), e)
            })?;
            if d.len() as u64 != self.len {
                return Err(Error::protocol(format!(
                    "Extent {} decompresses to {} bytes, not {}",
                    self.index,
                    d.len(),
                    self.len
                )));
            }
            Bytes::from(d)
        } else {
            self.payload.clone()
        };
        if blake3::hash(&data).as_bytes() != &self.checksum {
            return Err(Error::new(
                ErrorKind::Checksum,
                format!("Extent {} (disk {} offset {}) fails its checksum", self.index, self.disk, self.offset),
            ));
        }
        Ok(Some(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_3_roundtrip_and_rejections() {
        let msgs = vec![
            Message::Hello { version: 1, vm_id: "vm1".into(), pair_id: "p".into(), direction: Direction::Reverse },
            Message::BeginCycle(BeginCycle {
                cycle: 7,
                disks: vec![DiskInfo { target: "vda".into(), size: 1 << 30 }],
                app_consistent: true,
                base: false,
                created_at_ms: 123,
            }),
            Message::Extent(data_extent(3, 0, 65536, &[7u8; 65536], true).expect("extent")),
            Message::Extent(zero_extent(4, 1, 0, 1 << 40)),
            Message::EndCycle { cycle: 7, extent_count: 5, total_bytes: 9 },
            Message::Ack { cycle: 7, durable: true },
            Message::ResumeFrom { cycle: 7, next_extent: 3 },
            Message::Error { code: ErrorCode::Checksum, message: "bad".into() },
            Message::HashRequest { disk: 0, block_size: 1 << 20, first: 0, count: 2 },
            Message::HashReply { disk: 0, first: 0, hashes: vec![[1; 32], [2; 32]] },
        ];
        for m in msgs {
            let f = m.encode().expect("encode");
            assert_eq!(Message::decode(&f[4..]).expect("decode"), m);
        }
        let e = data_extent(0, 0, 0, &[1u8; 4096], true).expect("extent");
        assert!(e.compressed && e.payload.len() < 4096);
        assert_eq!(e.verified_data().expect("verify").expect("data"), vec![1u8; 4096]);
        let mut bad = e.clone();
        bad.checksum[0] ^= 1;
        assert_eq!(bad.verified_data().expect_err("checksum").kind(), ErrorKind::Checksum);
        // Unknown type, truncated, trailing bytes.
        assert!(Message::decode(&[42]).is_err());
        assert!(Message::decode(&[5, 0, 0]).is_err());
        assert!(Message::decode(&[5, 0, 0, 0, 0, 0, 0, 0, 1, 1, 9]).is_err());
        assert!(Message::decode(&[]).is_err());
        // Path traversal in a disk target.
        let mut f = Message::BeginCycle(BeginCycle {
            cycle: 1,
            disks: vec![DiskInfo { target: "vda".into(), size: 512 }],
            app_consistent: false,
            base: false,
            created_at_ms: 0,
        })
        .encode()
        .expect("encode");
        let n = f.len();
        f[n - 11..n - 8].copy_from_slice(b"../");
        assert!(Message::decode(&f[4..]).is_err());
    }

    #[tokio::test]
    async fn rep_4_data_frame_sealed_in_place_arrives_with_an_aligned_payload() {
        let data: Vec<u8> = (0..3 * 65536u32).map(|i| (i * 7 % 251) as u8).collect();
        // The sender's in-place frame equals the copying encoder's, compressed or not.
        let mut framed = vec![0u8; DATA_FRAME_HEADER];
        framed.extend_from_slice(&data);
        let sealed = seal_data_frame(9, 1, 1 << 20, framed).expect("seal");
        assert_eq!(sealed, encode_data_frame(9, 1, 1 << 20, &data, None).expect("encode"));
        assert!(seal_data_frame(9, 1, 0, vec![0u8; DATA_FRAME_HEADER]).is_err(), "empty extent");
        let mut z = zstd::bulk::Compressor::new(1).expect("zstd");
        let compressed = encode_data_frame(9, 1, 1 << 20, &data, Some(&mut z)).expect("encode");
        assert!(compressed.len() < sealed.len());
        // Received frames place a data payload on a DIRECT_ALIGN boundary (written to disk from
        // there), whatever came before them on the stream.
        for lead in [0usize, 1, 3, 4095] {
            let mut stream =
                Message::Error { code: ErrorCode::Internal, message: "x".repeat(lead) }.encode().expect("e");
            stream.extend_from_slice(&sealed);
            stream.extend_from_slice(&compressed);
            let mut r = stream.as_slice();
            assert!(matches!(read_frame(&mut r).await.expect("read"), Some(Message::Error { .. })));
            for _ in 0..2 {
                let Some(Message::Extent(e)) = read_frame(&mut r).await.expect("read") else { panic!("extent") };
                let got = e.verified_data().expect("verify").expect("data");
                assert_eq!(got, data);
                if !e.compressed {
                    assert!(
                        (e.payload.as_ptr() as usize).is_multiple_of(crate::data_sink::DIRECT_ALIGN),
                        "payload not aligned"
                    );
                }
            }
            assert!(read_frame(&mut r).await.expect("end").is_none());
        }
        // Pooled reads: a frame's buffer comes back once its payload is dropped, and is reused
        // (still aligned) for the next frame.
        let pool = FramePool::default();
        let mut stream = sealed.clone();
        stream.extend_from_slice(&sealed);
        stream.extend_from_slice(&sealed);
        let mut r = stream.as_slice();
        let Some(Message::Extent(first)) = read_frame_pooled(&mut r, Some(&pool)).await.expect("read") else {
            panic!("extent")
        };
        let payload = first.verified_data().expect("verify").expect("data");
        drop(first);
        assert_eq!(pool.idle(), 0, "a view of the payload keeps the buffer");
        let at = payload.as_ptr() as usize;
        drop(payload);
        assert_eq!(pool.idle(), 1);
        for _ in 0..2 {
            let Some(Message::Extent(e)) = read_frame_pooled(&mut r, Some(&pool)).await.expect("read") else {
                panic!("extent")
            };
            assert_eq!(pool.idle(), 0);
            assert!((e.payload.as_ptr() as usize).is_multiple_of(crate::data_sink::DIRECT_ALIGN));
            assert_eq!(e.payload.as_ptr() as usize, at, "the pooled buffer is reused");
            assert_eq!(e.verified_data().expect("verify").expect("data"), data);
        }
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn pol_6_incompressible_data_is_sent_raw() {
        let mut data = vec![0u8; 65536];
        let mut x = 0x1234_5678_9abc_def0u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let e = data_extent(0, 0, 0, &data, true).expect("extent");
        assert!(!e.compressed);
        assert_eq!(e.payload, data);
    }
}
