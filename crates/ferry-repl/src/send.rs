//! The sending side of the protocol: ship one cycle with resume after broken connections, and
//! query block hashes for resync.
//!
//! Extents are read, checksummed and compressed on a blocking thread and handed to the async
//! writer through a small queue, so reading/compression and TLS overlap on two cores.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, ErrorKind, Result};
use crate::image::{ChainReader, PlannedExtent};
use crate::protocol::{
    encode_data_frame, expect_frame, is_zero, read_frame, seal_data_frame, write_msg, write_raw, zero_extent,
    BeginCycle, Direction, ExtentKind, Message, DATA_FRAME_HEADER, PROTOCOL_VERSION,
};
use crate::transport::{self, Limiter};

/// Extents read ahead of the one being sent (NBD sources): many small ones for a scattered
/// delta, a few large ones for a full copy.
const READ_AHEAD: usize = 15;
const READ_AHEAD_BYTES: u64 = 6 << 20;

/// Where and as whom to send.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Name in the replica host's certificate (DNS name or IP).
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub vm_id: String,
    pub pair_id: String,
    pub direction: Direction,
}

/// Test hook: break the connection after this many extents of the first attempt.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Fault {
    pub cut_after_extents: Option<u64>,
}

/// How to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// zstd per extent (POL-6).
    pub compress: bool,
    pub limiter: Option<Arc<Limiter>>,
    /// Reconnect attempts after a broken connection (each resumes from the receiver's position).
    pub retries: u32,
    pub retry_delay: Duration,
    /// Wait for the durable ack after `EndCycle`.
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
    #[doc(hidden)]
    pub fault: Fault,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            compress: false,
            limiter: None,
            retries: 3,
            retry_delay: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            fault: Fault::default(),
        }
    }
}

/// What to send: the header, the planned extents, and a reader per disk.
#[derive(Debug)]
pub struct CycleSource {
    pub header: BeginCycle,
    pub extents: Vec<PlannedExtent>,
    pub readers: Vec<ChainReader>,
}

impl CycleSource {
    /// Sum of all extents' lengths (what `EndCycle.total_bytes` carries).
    pub fn covered_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// The encoded frame of extent `i` and the data bytes it carries (0 for a zero extent).
    /// Data that reads back as zeros travels as a zero extent. `buf` is scratch space for
    /// compression; without it the data is read straight into the frame, built in `spare` (a
    /// sent frame given back for reuse, or an empty vector).
    pub fn extent_frame(
        &self,
        i: u64,
        buf: &mut Vec<u8>,
        spare: Vec<u8>,
        zctx: Option<&mut zstd::bulk::Compressor<'static>>,
    ) -> Result<(Vec<u8>, u64)> {
        let pe = self.extents.get(i as usize).ok_or_else(|| Error::new(ErrorKind::Invalid, "No such extent"))?;
        if pe.kind == ExtentKind::Data {
            let reader = self
                .readers
                .get(pe.disk as usize)
                .ok_or_else(|| Error::new(ErrorKind::Invalid, "No reader for disk"))?;
            // Keep the next extents of this disk in flight (NBD sources).
            let mut ahead = 0;
            for next in self.extents.iter().skip(i as usize + 1).take(READ_AHEAD) {
                if next.disk == pe.disk && next.kind == ExtentKind::Data {
                    ahead += next.len;
                    if ahead > READ_AHEAD_BYTES {
                        break;
                    }
                    reader.read_ahead(next.offset, next.len);
                }
            }
            match zctx {
                Some(z) => {
                    buf.resize(pe.len as usize, 0);
                    reader.read(pe.offset, buf)?;
                    if !is_zero(buf) {
                        return Ok((encode_data_frame(i, pe.disk, pe.offset, buf, Some(z))?, pe.len));
                    }
                }
                None => {
                    let mut frame = spare;
                    frame.resize(DATA_FRAME_HEADER + pe.len as usize, 0);
                    reader.read(pe.offset, &mut frame[DATA_FRAME_HEADER..])?;
                    if !is_zero(&frame[DATA_FRAME_HEADER..]) {
                        return Ok((seal_data_frame(i, pe.disk, pe.offset, frame)?, pe.len));
                    }
                }
            }
        }
        Ok((Message::Extent(zero_extent(i, pe.disk, pe.offset, pe.len)).encode()?, 0))
    }

    /// Sum of planned data extents.
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().filter(|e| e.kind == ExtentKind::Data).map(|e| e.len).sum()
    }
}

/// Figures of one shipped cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendStats {
    pub extents: u64,
    /// Extents actually written to the wire (over all attempts).
    pub extents_sent: u64,
    /// Uncompressed data bytes sent (over all attempts).
    pub data_bytes_sent: u64,
    /// Frame bytes written (after compression, before TLS).
    pub wire_bytes: u64,
    pub attempts: u32,
    /// Where each attempt started (the receiver's `ResumeFrom`).
    pub resumed_from: Vec<u64>,
    /// The receiver had already applied this cycle.
    pub already_applied: bool,
    /// Time spent waiting for the bandwidth limit (CAP-2), over all attempts.
    pub throttled: Duration,
    /// Time from the end of the data to the replica's durable acknowledgement (its apply and
    /// flush), of the attempt that succeeded.
    pub apply_wait: Duration,
}

type Reader = ReadHalf<TlsStream<TcpStream>>;
type Writer = WriteHalf<TlsStream<TcpStream>>;

/// An open session after the Hello exchange.
pub struct Session {
    rd: Reader,
    wr: Writer,
}

impl Session {
    /// Connect, say Hello, check the reply.
    pub async fn open(peer: &Peer, timeout: Duration) -> Result<Session> {
        let tls = transport::connect(peer.addr, &peer.server_name, peer.tls.clone(), timeout).await?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            vm_id: peer.vm_id.clone(),
            pair_id: peer.pair_id.clone(),
            direction: peer.direction,
        };
        write_msg(&mut wr, &hello).await?;
        match tokio::time::timeout(timeout, expect_frame(&mut rd)).await {
            Err(_) => Err(Error::new(ErrorKind::Disconnected, "No Hello from the replica")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Message::Hello { version, .. })) if version == PROTOCOL_VERSION => Ok(Session { rd, wr }),
            Ok(Ok(m)) => Err(unexpected(m)),
        }
    }

    /// Block hashes of the replica's latest point.
    pub async fn hashes(&mut self, disk: u16, block_size: u32, first: u64, count: u32) -> Result<Vec<[u8; 32]>> {
        write_msg(&mut self.wr, &Message::HashRequest { disk, block_size, first, count }).await?;
        match expect_frame(&mut self.rd).await? {
            Message::HashReply { disk: d, first: f, hashes } if d == disk && f == first => Ok(hashes),
            m => Err(unexpected(m)),
        }
    }
}

/// Turn an unexpected or `Error` message into an error.
pub fn unexpected(m: Message) -> Error {
    match m {
        Message::Error { code, message } => {
            let kind = match code {
                crate::protocol::ErrorCode::Unauthorized => ErrorKind::Unauthorized,
                crate::protocol::ErrorCode::Conflict => ErrorKind::Busy,
                crate::protocol::ErrorCode::NoSpace => ErrorKind::NoSpace,
                _ => ErrorKind::Remote,
            };
            Error::new(kind, format!("Replica refused: {message} ({code:?})"))
        }
        m => Error::protocol(format!("Unexpected {} frame", m.name())),
    }
}

/// Ship one cycle, reconnecting and resuming up to `opts.retries` times.
pub async fn send_cycle(peer: &Peer, opts: &SendOptions, src: Arc<CycleSource>) -> Result<SendStats> {
    let mut stats = SendStats { extents: src.extents.len() as u64, ..Default::default() };
    let mut attempt = 0;
    loop {
        attempt += 1;
        stats.attempts = attempt;
        match attempt_once(peer, opts, &src, &mut stats, attempt == 1).await {
            Ok(()) => return Ok(stats),
            Err(e) if attempt <= opts.retries && matches!(e.kind(), ErrorKind::Disconnected | ErrorKind::Tls) => {
                tracing::warn!(cycle = src.header.cycle, attempt, error = %e.chain(), "Cycle transfer interrupted; resuming");
                tokio::time::sleep(opts.retry_delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn attempt_once(
    peer: &Peer,
    opts: &SendOptions,
    src: &Arc<CycleSource>,
    stats: &mut SendStats,
    first: bool,
) -> Result<()> {
    let Session { mut rd, mut wr } = Session::open(peer, opts.connect_timeout).await?;
    let cycle = src.header.cycle;
    write_msg(&mut wr, &Message::BeginCycle(src.header.clone())).await?;
    let start = match tokio::time::timeout(opts.ack_timeout, expect_frame(&mut rd)).await {
        Err(_) => return Err(Error::new(ErrorKind::Disconnected, "No answer to BeginCycle")),
        Ok(r) => match r? {
            Message::Ack { cycle: c, durable: true } if c == cycle => {
                stats.already_applied = true;
                return Ok(());
            }
            Message::ResumeFrom { cycle: c, next_extent } if c == cycle && next_extent <= src.extents.len() as u64 => {
                next_extent
            }
            m => return Err(unexpected(m)),
        },
    };
    stats.resumed_from.push(start);
    // Acks and errors arrive while we stream.
    let acked = Arc::new(AtomicU64::new(start));
    let acked2 = acked.clone();
    let ack_reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut rd).await? {
                Some(Message::ResumeFrom { cycle: c, next_extent }) if c == cycle => {
                    acked2.store(next_extent, Ordering::Relaxed);
                }
                Some(Message::Ack { cycle: c, durable: true }) if c == cycle => return Ok(()),
                Some(m) => return Err(unexpected(m)),
                None => {
                    return Err(Error::new(ErrorKind::Disconnected, "Replica closed the connection before the ack"))
                }
            }
        }
    });
    let result = stream_extents(&mut wr, opts, src, start, stats, first).await;
    let result = match result {
        Ok(()) => {
            let end =
                Message::EndCycle { cycle, extent_count: src.extents.len() as u64, total_bytes: src.covered_bytes() };
            stats.wire_bytes += write_msg(&mut wr, &end).await? as u64;
            let ended = Instant::now();
            let acked = match tokio::time::timeout(opts.ack_timeout, ack_reader).await {
                Err(_) => Err(Error::new(ErrorKind::Disconnected, "No durable ack from the replica")),
                Ok(Err(e)) => Err(Error::with_source(ErrorKind::Disconnected, "Ack reader failed", e)),
                Ok(Ok(r)) => r,
            };
            stats.apply_wait = ended.elapsed();
            acked
        }
        Err(e) => {
            // Prefer the replica's own explanation if it sent one.
            match tokio::time::timeout(Duration::from_millis(200), ack_reader).await {
                Ok(Ok(Err(remote))) if remote.kind() != ErrorKind::Disconnected => Err(remote),
                _ => Err(e),
            }
        }
    };
    tracing::debug!(cycle, acked = acked.load(Ordering::Relaxed), ok = result.is_ok(), "Cycle attempt finished");
    result
}

async fn stream_extents(
    wr: &mut Writer,
    opts: &SendOptions,
    src: &Arc<CycleSource>,
    start: u64,
    stats: &mut SendStats,
    first: bool,
) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Vec<u8>, u64)>>(8);
    // Sent frames go back to the reader for reuse (no fresh pages per frame).
    let (back, spares) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let src2 = src.clone();
    let compress = opts.compress;
    let producer = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        let mut zctx = match compress.then(|| zstd::bulk::Compressor::new(1)).transpose() {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.blocking_send(Err(Error::io("Cannot create a zstd context", e)));
                return;
            }
        };
        for i in start..src2.extents.len() as u64 {
            let frame = src2.extent_frame(i, &mut buf, spares.try_recv().unwrap_or_default(), zctx.as_mut());
            let stop = frame.is_err();
            if tx.blocking_send(frame).is_err() || stop {
                break;
            }
        }
    });
    let mut sent = 0u64;
    while let Some(frame) = rx.recv().await {
        let (bytes, data) = frame?;
        if first && opts.fault.cut_after_extents.is_some_and(|n| sent >= n) {
            drop(rx);
            let _ = producer.await;
            return Err(Error::new(ErrorKind::Disconnected, "Connection cut (test fault)"));
        }
        if let Some(l) = &opts.limiter {
            let t = Instant::now();
            l.acquire(bytes.len() as u64).await;
            stats.throttled += t.elapsed();
        }
        write_raw(wr, &bytes).await?;
        sent += 1;
        stats.extents_sent += 1;
        stats.wire_bytes += bytes.len() as u64;
        stats.data_bytes_sent += data;
        let _ = back.try_send(bytes);
    }
    producer.await.map_err(|e| Error::with_source(ErrorKind::Io, "Extent reader failed", e))?;
    if start + sent != src.extents.len() as u64 {
        return Err(Error::new(ErrorKind::Io, "Extent reader stopped early"));
    }
    Ok(())
}
