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

use std::borrow::Cow;

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
}

impl ErrorCode {
    fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Unauthorized,
            3 => ErrorCode::Checksum,
            4 => ErrorCode::Conflict,
            6 => ErrorCode::Version,
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

/// Read one frame. `Ok(None)` on a clean end of stream before a frame starts. Oversized and
/// truncated frames are [`ErrorKind::Protocol`] errors; nothing beyond the length prefix of an
/// oversized frame is read.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Message>> {
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
    // (Room beyond the frame, so the final zero-length read does not grow the buffer.)
    let mut buf = Vec::with_capacity(len as usize + 64);
    let got = (&mut *r).take(u64::from(len)).read_to_end(&mut buf).await.map_err(|e| {
        Error::with_source(ErrorKind::Disconnected, format!("Connection closed inside a frame of {len} bytes"), e)
    })?;
    if got != len as usize {
        return Err(Error::new(ErrorKind::Disconnected, format!("Connection closed inside a frame of {len} bytes")));
    }
    Message::decode_owned(Bytes::from(buf)).map(Some)
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

/// Encode a data extent frame straight from `data` (one copy): checksum of the raw data, zstd
/// with the caller's reusable context when given, raw when compression does not shrink it.
pub fn encode_data_frame(
    index: u64,
    disk: u16,
    offset: u64,
    data: &[u8],
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
) -> Result<Vec<u8>> {
    const HEADER: usize = 4 + 1 + 8 + 2 + 8 + 8 + 1 + 1 + 32;
    if data.is_empty() || data.len() as u64 > MAX_DATA_EXTENT {
        return Err(Error::new(ErrorKind::Invalid, format!("Data extent of {} bytes", data.len())));
    }
    let checksum = blake3::hash(data);
    let mut b = Vec::with_capacity(HEADER + data.len());
    b.extend_from_slice(&[0, 0, 0, 0, 3]);
    b.extend_from_slice(&index.to_be_bytes());
    b.extend_from_slice(&disk.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&(data.len() as u64).to_be_bytes());
    b.push(0);
    b.push(0);
    b.extend_from_slice(checksum.as_bytes());
    let mut compressed = false;
    if let Some(c) = compressor {
        b.resize(HEADER + data.len(), 0);
        // A result that does not fit in `data.len()` bytes is not worth sending compressed.
        if let Ok(n) = c.compress_to_buffer(data, &mut b[HEADER..]) {
            if n < data.len() {
                b.truncate(HEADER + n);
                compressed = true;
            }
        }
        if !compressed {
            b[HEADER..].copy_from_slice(data);
        }
    } else {
        b.extend_from_slice(data);
    }
    b[HEADER - 33] = u8::from(compressed);
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    Ok(b)
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
    /// The uncompressed payload, verified against the checksum (`None` for zero extents).
    pub fn verified_data(&self) -> Result<Option<Cow<'_, [u8]>>> {
        if self.kind == ExtentKind::Zero {
            return Ok(None);
        }
        let data: Cow<'_, [u8]> = if self.compressed {
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
            Cow::Owned(d)
        } else {
            Cow::Borrowed(&self.payload)
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
