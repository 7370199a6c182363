//! A small blocking NBD client for reading QEMU's own NBD exports over a Unix socket: the
//! fixed-newstyle handshake, `NBD_OPT_GO`, reads with several requests in flight, and block
//! status through a metadata context (`base:allocation`, `qemu:dirty-bitmap:<name>`).
//!
//! Why not a crate: the Rust NBD crates are servers or lack structured replies and block status,
//! and libnbd would add a C library and FFI for the few messages Ferry needs. Only what QEMU's
//! server does is supported; anything else is a [`ErrorKind::Protocol`] error.
//!
//! A client negotiates structured replies only when it asks for a metadata context (block status
//! needs them). A client without one gets simple replies: each read's reply is one header plus
//! its data, which keeps the read path a straight copy into the caller's buffer even when QEMU
//! answers pipelined requests out of order.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const INFO_EXPORT: u16 = 0;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
const CMD_BLOCK_STATUS: u16 = 7;
const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
/// Largest read request sent (QEMU accepts up to 32 MiB).
pub const MAX_READ: u32 = 32 << 20;
/// `base:allocation`: not allocated in any layer.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation`: reads as zeroes.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:*`: dirty.
pub const STATE_DIRTY: u32 = 1;
/// Requests in flight at most (QEMU serves 16 per client).
const MAX_IN_FLIGHT: usize = 16;

/// One block-status extent: `len` bytes with the context's `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusExtent {
    pub offset: u64,
    pub len: u64,
    pub flags: u32,
}

/// A connection to one export.
#[derive(Debug)]
pub struct NbdClient {
    sock: UnixStream,
    export: String,
    size: u64,
    /// Context id of the negotiated metadata context (structured replies on).
    context: Option<u32>,
    next_cookie: u64,
    /// Reads sent and not yet taken by [`NbdClient::read`] (replied or not), in sending order.
    in_flight: VecDeque<(u64, u64, u32)>,
    /// Replies that arrived before the read that wants them (still listed in `in_flight`).
    arrived: HashMap<u64, Vec<u8>>,
}

fn proto(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, what)
}

impl NbdClient {
    /// Connect to `export` on the Unix socket `socket`. With `meta_context`, structured replies
    /// and that context are negotiated (the server must know it) for [`NbdClient::block_status`].
    pub fn connect(socket: &Path, export: &str, meta_context: Option<&str>, timeout: Duration) -> Result<Self> {
        let sock = UnixStream::connect(socket)
            .map_err(|e| Error::io(format!("Cannot connect to NBD socket {}", socket.display()), e))?;
        sock.set_read_timeout(Some(timeout)).map_err(|e| Error::io("Cannot set NBD timeout", e))?;
        sock.set_write_timeout(Some(timeout)).map_err(|e| Error::io("Cannot set NBD timeout", e))?;
        let mut c = Self {
            sock,
            export: export.to_string(),
            size: 0,
            context: None,
            next_cookie: 1,
            in_flight: VecDeque::new(),
            arrived: HashMap::new(),
        };
        c.handshake(meta_context)?;
        Ok(c)
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Requests sent on this connection so far.
    pub fn requests_sent(&self) -> u64 {
        self.next_cookie - 1
    }

    fn io(&self, what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        let ctx = format!("NBD export {}: {what}", self.export);
        move |e| {
            let kind = if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                ErrorKind::Timeout
            } else {
                ErrorKind::Disconnected
            };
            Error::with_source(kind, ctx, e)
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let ctx = format!("NBD export {}: {what}", self.export);
        self.sock.read_exact(buf).map_err(|e| {
            let kind = if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                ErrorKind::Timeout
            } else {
                ErrorKind::Disconnected
            };
            Error::with_source(kind, ctx, e)
        })
    }

    fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b, "handshake")?;
        Ok(u16::from_be_bytes(b))
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, "handshake")?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, "handshake")?;
        Ok(u64::from_be_bytes(b))
    }

    fn send(&mut self, buf: &[u8]) -> Result<()> {
        let r = self.sock.write_all(buf);
        r.map_err(self.io("send"))
    }

    fn option(&mut self, opt: u32, data: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b)
    }

    /// One option reply: (type, payload). Error replies become errors.
    fn option_reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>)> {
        if self.u64()? != REPLY_MAGIC {
            return Err(proto("NBD option reply has a bad magic"));
        }
        let (o, kind, len) = (self.u32()?, self.u32()?, self.u32()?);
        if o != opt {
            return Err(proto(format!("NBD reply to option {o}, expected {opt}")));
        }
        if len > 1 << 20 {
            return Err(proto(format!("NBD option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        self.read_exact(&mut data, "option reply")?;
        if kind & (1 << 31) != 0 {
            let msg = String::from_utf8_lossy(&data).into_owned();
            return Err(proto(format!("NBD server refused option {opt} of export {}: {msg}", self.export)));
        }
        Ok((kind, data))
    }

    fn name_field(&self) -> Vec<u8> {
        let mut b = (self.export.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(self.export.as_bytes());
        b
    }

    fn handshake(&mut self, meta_context: Option<&str>) -> Result<()> {
        if self.u64()? != NBDMAGIC || self.u64()? != IHAVEOPT {
            return Err(proto("Not a fixed-newstyle NBD server"));
        }
        let flags = self.u16()?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(proto("NBD server lacks fixed newstyle negotiation"));
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        self.send(&client_flags.to_be_bytes())?;
        if let Some(ctx) = meta_context {
            self.option(OPT_STRUCTURED_REPLY, &[])?;
            self.option_reply(OPT_STRUCTURED_REPLY)?;
            let mut d = self.name_field();
            d.extend_from_slice(&1u32.to_be_bytes());
            d.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
            d.extend_from_slice(ctx.as_bytes());
            self.option(OPT_SET_META_CONTEXT, &d)?;
            loop {
                let (kind, data) = self.option_reply(OPT_SET_META_CONTEXT)?;
                match kind {
                    REP_META_CONTEXT if data.len() >= 4 => {
                        self.context = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
                    }
                    REP_ACK => break,
                    k => return Err(proto(format!("Unexpected NBD reply {k} to SET_META_CONTEXT"))),
                }
            }
            if self.context.is_none() {
                return Err(proto(format!("NBD export {} has no metadata context {ctx}", self.export)));
            }
        }
        let mut d = self.name_field();
        d.extend_from_slice(&0u16.to_be_bytes());
        self.option(OPT_GO, &d)?;
        loop {
            let (kind, data) = self.option_reply(OPT_GO)?;
            match kind {
                REP_INFO if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT => {
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&data[2..10]);
                    self.size = u64::from_be_bytes(s);
                }
                REP_INFO => {}
                REP_ACK => break,
                k => return Err(proto(format!("Unexpected NBD reply {k} to GO"))),
            }
        }
        Ok(())
    }

    fn request(&mut self, kind: u16, offset: u64, len: u32) -> Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&kind.to_be_bytes());
        b[8..16].copy_from_slice(&cookie.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&len.to_be_bytes());
        self.send(&b)?;
        Ok(cookie)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 || len > u64::from(MAX_READ) || offset.checked_add(len).map_or(true, |e| e > self.size) {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                format!("NBD read {offset}+{len} outside the {} byte export {}", self.size, self.export),
            ));
        }
        Ok(())
    }

    /// Send a read of `[offset, offset+len)` now, to be taken later by [`NbdClient::read`] with
    /// the same range (read-ahead). Ignored when enough reads are in flight already.
    pub fn read_ahead(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.context.is_some()
            || self.in_flight.len() >= MAX_IN_FLIGHT
            || self.in_flight.iter().any(|r| r.1 == offset && u64::from(r.2) == len)
        {
            return Ok(());
        }
        self.check_range(offset, len)?;
        let cookie = self.request(CMD_READ, offset, len as u32)?;
        self.in_flight.push_back((cookie, offset, len as u32));
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset` (using a read-ahead of the same range if one was sent).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.context.is_some() {
            return Err(Error::new(ErrorKind::InvalidSpec, "This NBD client is for block status only"));
        }
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        let cookie = match self.in_flight.iter().find(|r| r.1 == offset && u64::from(r.2) == len) {
            Some(r) => r.0,
            None => {
                let c = self.request(CMD_READ, offset, len as u32)?;
                self.in_flight.push_back((c, offset, len as u32));
                c
            }
        };
        if let Some(data) = self.arrived.remove(&cookie) {
            buf.copy_from_slice(&data);
            self.in_flight.retain(|r| r.0 != cookie);
            return Ok(());
        }
        loop {
            let mut h = [0u8; 16];
            self.read_exact(&mut h, "read reply")?;
            if u32::from_be_bytes([h[0], h[1], h[2], h[3]]) != SIMPLE_REPLY_MAGIC {
                return Err(proto(format!("NBD export {}: bad reply magic", self.export)));
            }
            let err = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let mut c = [0u8; 8];
            c.copy_from_slice(&h[8..16]);
            let got = u64::from_be_bytes(c);
            let Some(&(_, at, n)) = self.in_flight.iter().find(|r| r.0 == got) else {
                return Err(proto(format!("NBD export {}: reply to unknown request {got}", self.export)));
            };
            if err != 0 {
                self.in_flight.retain(|r| r.0 != got);
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("NBD export {}: read of {n} bytes at {at} failed with error {err}", self.export),
                ));
            }
            if got == cookie {
                self.in_flight.retain(|r| r.0 != got);
                return self.read_exact(buf, "read data");
            }
            let mut data = vec![0u8; n as usize];
            self.read_exact(&mut data, "read data")?;
            self.arrived.insert(got, data);
        }
    }

    /// Block status of `[offset, offset+len)` in the negotiated context: extents covering the
    /// range in order (the last one may end early; ask again from its end).
    pub fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<StatusExtent>> {
        let ctx =
            self.context.ok_or_else(|| Error::new(ErrorKind::InvalidSpec, "Block status needs a metadata context"))?;
        if offset.checked_add(len).map_or(true, |e| e > self.size) || len == 0 {
            return Err(Error::new(ErrorKind::InvalidSpec, format!("Block status {offset}+{len} outside the export")));
        }
        let cookie = self.request(CMD_BLOCK_STATUS, offset, len.min(u64::from(u32::MAX) & !0xffff) as u32)?;
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.read_exact(&mut h, "block status reply")?;
            if u32::from_be_bytes([h[0], h[1], h[2], h[3]]) != STRUCTURED_REPLY_MAGIC {
                return Err(proto(format!("NBD export {}: bad structured reply magic", self.export)));
            }
            let flags = u16::from_be_bytes([h[4], h[5]]);
            let kind = u16::from_be_bytes([h[6], h[7]]);
            let mut c = [0u8; 8];
            c.copy_from_slice(&h[8..16]);
            let plen = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
            if u64::from_be_bytes(c) != cookie {
                return Err(proto(format!("NBD export {}: reply to an unknown request", self.export)));
            }
            if plen > 16 << 20 {
                return Err(proto(format!("NBD export {}: reply chunk of {plen} bytes", self.export)));
            }
            let mut p = vec![0u8; plen as usize];
            self.read_exact(&mut p, "block status payload")?;
            if kind & REPLY_TYPE_ERROR_BIT != 0 {
                let code = p.get(0..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let msg = p.get(6..).map(String::from_utf8_lossy).unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("NBD export {}: block status failed with error {code}: {msg}", self.export),
                ));
            }
            match kind {
                REPLY_TYPE_BLOCK_STATUS if p.len() >= 4 && (p.len() - 4) % 8 == 0 => {
                    if u32::from_be_bytes([p[0], p[1], p[2], p[3]]) == ctx {
                        let mut at = offset + out.iter().map(|e: &StatusExtent| e.len).sum::<u64>();
                        for d in p[4..].chunks_exact(8) {
                            let len = u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
                            let flags = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                            out.push(StatusExtent { offset: at, len, flags });
                            at += len;
                        }
                    }
                }
                REPLY_TYPE_NONE => {}
                k => return Err(proto(format!("NBD export {}: unexpected reply chunk type {k}", self.export))),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if out.is_empty() || out.iter().any(|e| e.len == 0) {
            return Err(proto(format!("NBD export {}: empty block status", self.export)));
        }
        Ok(out)
    }

    /// Block status of the whole export, merged into runs of equal flags.
    pub fn block_status_all(&mut self) -> Result<Vec<StatusExtent>> {
        let mut out: Vec<StatusExtent> = Vec::new();
        let mut at = 0;
        while at < self.size {
            for e in self.block_status(at, self.size - at)? {
                let len = e.len.min(self.size - at);
                match out.last_mut() {
                    Some(l) if l.flags == e.flags && l.offset + l.len == at => l.len += len,
                    _ => out.push(StatusExtent { offset: at, len, flags: e.flags }),
                }
                at += len;
                if at >= self.size {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        // Polite disconnect; the server copes with a closed socket too.
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
        let _ = self.sock.write_all(&b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn qemu_io(img: &Path, cmd: &str) {
        let ok = Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(img).output().expect("qemu-io");
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    }

    /// qemu-nbd serving `img` read-only on `sock` with export name `x`.
    fn serve(img: &Path, sock: &Path) -> Server {
        let child = Command::new("qemu-nbd")
            .args(["-r", "-t", "-e", "4", "-f", "qcow2", "-x", "x", "-k"])
            .arg(sock)
            .arg(img)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-nbd");
        let s = Server(child);
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    #[test]
    fn rep_2_nbd_client_reads_pipelined_and_reports_allocation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("d.qcow2");
        let out = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&img).arg("64M").output();
        assert!(out.expect("qemu-img").status.success());
        qemu_io(&img, "write -P 0x11 0 1M");
        qemu_io(&img, "write -P 0x22 8M 3M");
        qemu_io(&img, "write -z 20M 1M");
        let sock = dir.path().join("nbd.sock");
        let _srv = serve(&img, &sock);
        let t = Duration::from_secs(10);

        let mut st = NbdClient::connect(&sock, "x", Some("base:allocation"), t).expect("status client");
        assert_eq!(st.size(), 64 << 20);
        let map = st.block_status_all().expect("status");
        let data: Vec<_> = map.iter().filter(|e| e.flags & STATE_ZERO == 0).map(|e| (e.offset, e.len)).collect();
        assert_eq!(data, vec![(0, 1 << 20), (8 << 20, 3 << 20)], "{map:?}");
        assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), 64 << 20);
        assert!(st.read(0, &mut [0u8; 512]).is_err(), "the status client does not read");

        let mut rd = NbdClient::connect(&sock, "x", None, t).expect("read client");
        // Read-ahead of later ranges, then reads in another order: every read gets its bytes.
        for i in 0..4u64 {
            rd.read_ahead((8 << 20) + i * (512 << 10), 512 << 10).expect("ahead");
        }
        let mut b = vec![0u8; 512 << 10];
        rd.read((9 << 20) + (512 << 10), &mut b).expect("read");
        assert!(b.iter().all(|&x| x == 0x22));
        rd.read(0, &mut b).expect("read not ahead");
        assert!(b.iter().all(|&x| x == 0x11));
        rd.read(8 << 20, &mut b).expect("read");
        assert!(b.iter().all(|&x| x == 0x22));
        for i in [1u64, 2] {
            rd.read((8 << 20) + i * (512 << 10), &mut b).expect("read");
            assert!(b.iter().all(|&x| x == 0x22));
        }
        assert_eq!(rd.requests_sent(), 5, "each read-ahead answers its read; one read was not ahead");
        let mut z = vec![1u8; 4096];
        rd.read(20 << 20, &mut z).expect("zero read");
        assert!(z.iter().all(|&x| x == 0));
        // Bad ranges are refused before anything is sent; the connection stays usable.
        assert_eq!(rd.read((64 << 20) - 512, &mut b).map_err(|e| e.kind().clone()), Err(ErrorKind::InvalidSpec));
        rd.read((8 << 20) + (512 << 10), &mut b).expect("read after a refused one");
        assert!(b.iter().all(|&x| x == 0x22));

        // An unknown export or context is a clear error.
        let e = NbdClient::connect(&sock, "nope", None, t).expect_err("unknown export");
        assert!(e.to_string().contains("nope"), "{e}");
        let e = NbdClient::connect(&sock, "x", Some("qemu:dirty-bitmap:none"), t).expect_err("unknown context");
        assert!(e.to_string().contains("qemu:dirty-bitmap:none"), "{e}");
    }
}
