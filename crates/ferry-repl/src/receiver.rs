//! The receiving side (replica host): a TLS server that authorises peers, applies cycles into the
//! [`ReplicaStore`](crate::replica::ReplicaStore), acknowledges progress and durable points, and
//! answers resync hash requests.
//!
//! A cycle interrupted by a broken connection stays pending in memory (its overlays on disk) so
//! the sender can resume with the next extent; a new cycle for the same VM, or a receiver
//! restart, discards it (the files are then unreferenced and deleted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{
    read_frame, read_frame_pooled, valid_name, write_msg, ErrorCode, FramePool, Message, PROTOCOL_VERSION,
};
use crate::replica::{PendingApply, ReplicaStore, VmReplica};
use crate::transport::{self, Allowlist};

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub listen: SocketAddr,
    pub tls: Arc<rustls::ServerConfig>,
    pub allowlist: Allowlist,
    /// Replica store root.
    pub root: PathBuf,
    /// Send a progress `ResumeFrom` every this many extents.
    pub ack_every: u64,
    pub handshake_timeout: Duration,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once (handshakes included); more are closed at once (SEC-3).
    pub max_connections: usize,
    /// Sessions one peer host (by certificate name) may hold open at once; more are refused
    /// with a `Conflict` error frame (SEC-3).
    pub max_sessions_per_peer: usize,
}

impl ReceiverConfig {
    /// Defaults for everything but the essentials.
    pub fn new(listen: SocketAddr, tls: Arc<rustls::ServerConfig>, allowlist: Allowlist, root: PathBuf) -> Self {
        Self {
            listen,
            tls,
            allowlist,
            root,
            ack_every: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            max_sessions_per_peer: 256,
        }
    }
}

/// Counters of a receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub connections: AtomicU64,
    /// Connections refused for authorisation (SEC-1).
    pub unauthorized: AtomicU64,
    /// Malformed, oversized or out-of-sequence frames (SEC-3).
    pub rejected_frames: AtomicU64,
    /// Connections closed or sessions refused over the limits (SEC-3).
    pub over_limit: AtomicU64,
    pub cycles_applied: AtomicU64,
}

struct Slot {
    owner: u64,
    pending: Option<PendingApply>,
}

type Slots = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>>;

#[derive(Clone)]
struct Shared {
    cfg: ReceiverConfig,
    store: ReplicaStore,
    slots: Slots,
    stats: Arc<ReceiverStats>,
    next_session: Arc<AtomicU64>,
    /// Open sessions per peer certificate name.
    per_peer: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open session of a peer, counted until it drops.
struct PeerSession {
    per_peer: Arc<Mutex<HashMap<String, usize>>>,
    cn: String,
}

impl PeerSession {
    /// Count a session of `cn`, unless it holds `max` already.
    fn open(per_peer: &Arc<Mutex<HashMap<String, usize>>>, cn: &str, max: usize) -> Option<PeerSession> {
        let mut m = per_peer.lock().ok()?;
        let n = m.entry(cn.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSession { per_peer: per_peer.clone(), cn: cn.to_string() })
    }
}

impl Drop for PeerSession {
    fn drop(&mut self) {
        if let Ok(mut m) = self.per_peer.lock() {
            if let Some(n) = m.get_mut(&self.cn) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.cn);
                }
            }
        }
    }
}

/// A running receiver. Dropping it (or [`Receiver::stop`]) stops accepting and aborts every
/// connection, like a crashed host. Besides its first listener it may listen on more addresses
/// (one per replication port in use, POL-2); all serve the same store.
pub struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
    more: Mutex<Vec<(SocketAddr, tokio::task::JoinHandle<()>)>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
        for (_, t) in self.more.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

/// Accept connections on `listener` until aborted; aborting also aborts its connections.
fn accept_loop(shared: Shared, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let acceptor = TlsAcceptor::from(shared.cfg.tls.clone());
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, peer)) if conns.len() >= shared.cfg.max_connections.max(1) => {
                        shared.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, limit = shared.cfg.max_connections, "Too many replication connections; closed");
                        drop(tcp);
                    }
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let s = shared.clone();
                        let acc = acceptor.clone();
                        conns.spawn(async move { s.serve(acc, tcp, peer).await });
                    }
                    Err(e) => tracing::warn!(error = %e, "Accept failed"),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

impl Receiver {
    /// Bind and start serving.
    pub async fn start(cfg: ReceiverConfig) -> Result<Receiver> {
        let store = ReplicaStore::open(&cfg.root)?;
        let listener = transport::listen(cfg.listen).await?;
        let addr = listener.local_addr().map_err(|e| Error::io("Cannot read listen address", e))?;
        let shared = Shared {
            cfg,
            store,
            slots: Arc::default(),
            stats: Arc::default(),
            per_peer: Arc::default(),
            next_session: Arc::new(AtomicU64::new(1)),
        };
        let task = accept_loop(shared.clone(), listener);
        tracing::info!(%addr, "Replication receiver listening");
        Ok(Receiver { addr, shared, task, more: Mutex::new(Vec::new()) })
    }

    /// Listen on `addr` too (another replication port). Listening there already is a no-op.
    pub async fn listen_also(&self, addr: SocketAddr) -> Result<SocketAddr> {
        if let Some(a) = self.addresses().into_iter().find(|a| *a == addr) {
            return Ok(a);
        }
        let listener = transport::listen(addr).await?;
        let bound = listener.local_addr().map_err(|e| Error::io("Cannot read listen address", e))?;
        let task = accept_loop(self.shared.clone(), listener);
        self.more.lock().unwrap_or_else(|p| p.into_inner()).push((bound, task));
        tracing::info!(addr = %bound, "Replication receiver listening");
        Ok(bound)
    }

    /// Stop listening on `addr` (not the first listener); its connections are aborted.
    pub fn stop_listening(&self, addr: SocketAddr) -> bool {
        let mut more = self.more.lock().unwrap_or_else(|p| p.into_inner());
        match more.iter().position(|(a, _)| *a == addr) {
            Some(i) => {
                let (a, t) = more.remove(i);
                t.abort();
                tracing::info!(addr = %a, "Replication receiver no longer listening");
                true
            }
            None => false,
        }
    }

    /// Every address the receiver listens on, the first listener first.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut out = vec![self.addr];
        out.extend(self.more.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(a, _)| *a));
        out
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The replica store.
    pub fn store(&self) -> &ReplicaStore {
        &self.shared.store
    }

    /// Counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.shared.stats
    }

    /// Stop accepting and abort all connections (pending cycles are dropped).
    pub async fn stop(self) {
        self.task.abort();
        let _ = (&mut { self }.task).await;
    }
}

impl Shared {
    async fn serve(self, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let (tls, cn, fingerprint) = match transport::accept(&acceptor, tcp, self.cfg.handshake_timeout).await {
            Ok(x) => x,
            Err(e) => {
                if matches!(e.kind(), ErrorKind::Unauthorized | ErrorKind::Tls) {
                    self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(%peer, error = %e.chain(), "Replication connection refused");
                return;
            }
        };
        let (rd, mut wr) = tokio::io::split(tls);
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let counted = PeerSession::open(&self.per_peer, &cn, self.cfg.max_sessions_per_peer.max(1));
        let result = if self.cfg.allowlist.is_revoked(&fingerprint) {
            Err(Error::new(
                ErrorKind::Unauthorized,
                format!("The certificate of {cn} was revoked (its host joined again, or its site was removed)"),
            ))
        } else if !self.cfg.allowlist.knows(&cn) {
            Err(Error::new(ErrorKind::Unauthorized, format!("Host {cn} is not authorised to replicate to this host")))
        } else if counted.is_none() {
            self.stats.over_limit.fetch_add(1, Ordering::Relaxed);
            Err(Error::new(
                ErrorKind::Busy,
                format!("Host {cn} holds {} replication sessions already; retry later", self.cfg.max_sessions_per_peer),
            ))
        } else {
            self.session(rd, &mut wr, &cn, session).await
        };
        drop(counted);
        if let Err(e) = result {
            let code = match e.kind() {
                _ if e.is_no_space() => ErrorCode::NoSpace,
                ErrorKind::Protocol => ErrorCode::Protocol,
                ErrorKind::Checksum => ErrorCode::Checksum,
                ErrorKind::Unauthorized => ErrorCode::Unauthorized,
                ErrorKind::Busy => ErrorCode::Conflict,
                _ => ErrorCode::Internal,
            };
            if matches!(e.kind(), ErrorKind::Protocol | ErrorKind::Checksum) {
                self.stats.rejected_frames.fetch_add(1, Ordering::Relaxed);
            }
            if e.kind() == ErrorKind::Unauthorized {
                self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            }
            if e.kind() == ErrorKind::Disconnected {
                tracing::info!(%peer, %cn, error = %e.chain(), "Replication connection closed");
            } else {
                tracing::warn!(%peer, %cn, error = %e.chain(), "Replication session failed");
                let message = if code == ErrorCode::NoSpace { e.chain() } else { e.to_string() };
                let _ = write_msg(&mut wr, &Message::Error { code, message }).await;
            }
        }
    }

    /// Read frames on a task of their own (TLS decryption and frame assembly run beside the
    /// checksum verification and writing of the previous extents), a few frames ahead.
    fn pump<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        mut rd: R,
    ) -> (FramePump, tokio::sync::mpsc::Receiver<Result<Message>>) {
        let idle = self.cfg.idle_timeout;
        let (tx, frames) = tokio::sync::mpsc::channel::<Result<Message>>(2);
        let task = tokio::spawn(async move {
            let pool = FramePool::default();
            loop {
                let next = match tokio::time::timeout(idle, read_frame_pooled(&mut rd, Some(&pool))).await {
                    Err(_) => Err(Error::new(ErrorKind::Disconnected, "Connection idle too long")),
                    Ok(Ok(None)) => break,
                    Ok(Ok(Some(m))) => Ok(m),
                    Ok(Err(e)) => Err(e),
                };
                let failed = next.is_err();
                if tx.send(next).await.is_err() || failed {
                    break;
                }
            }
        });
        (FramePump(task), frames)
    }

    fn slot(&self, vm: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(vm.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Slot { owner: 0, pending: None })))
            .clone()
    }

    async fn session<R, W>(&self, mut rd: R, wr: &mut W, cn: &str, me: u64) -> Result<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        let hello = tokio::time::timeout(self.cfg.handshake_timeout, read_frame(&mut rd))
            .await
            .map_err(|_| Error::new(ErrorKind::Disconnected, "No Hello"))??;
        let (vm_id, pair_id, direction) = match hello {
            Some(Message::Hello { version, vm_id, pair_id, direction }) => {
                if version != PROTOCOL_VERSION {
                    return Err(Error::protocol(format!(
                        "Protocol version {version} not supported (this host speaks {PROTOCOL_VERSION})"
                    )));
                }
                (vm_id, pair_id, direction)
            }
            Some(m) => return Err(Error::protocol(format!("Expected Hello, got {}", m.name()))),
            None => return Ok(()),
        };
        valid_name(&vm_id, "VM id")?;
        valid_name(&pair_id, "Pair id")?;
        if !self.cfg.allowlist.permits(cn, &pair_id) {
            return Err(Error::new(ErrorKind::Unauthorized, format!("Host {cn} is not authorised for pair {pair_id}")));
        }
        // SEC-1: the replica this session opens, writes and reads (hashes) must be one the peer
        // is granted, not any VM id it names under a pair it holds.
        if !self.cfg.allowlist.permits_replica(cn, &pair_id, &vm_id) {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                format!("Host {cn} is not authorised for replica {vm_id} of pair {pair_id}"),
            ));
        }
        write_msg(
            wr,
            &Message::Hello { version: PROTOCOL_VERSION, vm_id: vm_id.clone(), pair_id: pair_id.clone(), direction },
        )
        .await?;
        let vm = self.store.vm(&vm_id).await?;
        let slot = self.slot(&vm_id);
        let mut cycle: Option<u64> = None;
        // REP-6: a resync (the sender's first hash request) starts from the newest point whose
        // chain is intact; points behind a broken layer are unreadable and set aside first.
        let mut chain_checked = false;
        let (_pump, mut frames) = self.pump(rd);
        while let Some(msg) = frames.recv().await.transpose()? {
            match msg {
                Message::BeginCycle(h) => {
                    let mut s = slot.lock().await;
                    match vm.last_cycle()? {
                        // A re-send after a lost ack: already durable.
                        Some(last) if last == h.cycle => {
                            tracing::info!(vm = %vm_id, cycle = h.cycle, "Cycle already durable; acknowledged again");
                            write_msg(wr, &Message::Ack { cycle: h.cycle, durable: true }).await?;
                            continue;
                        }
                        Some(last) if last > h.cycle => {
                            return Err(Error::new(
                                ErrorKind::Busy,
                                format!("Cycle {} is older than the replica's last cycle {last}", h.cycle),
                            ));
                        }
                        _ => {}
                    }
                    let resume = matches!(&s.pending, Some(p) if p.header() == &h);
                    if !resume {
                        s.pending = None;
                        s.pending = Some(vm.begin(&h).await?);
                    }
                    s.owner = me;
                    let next = s.pending.as_ref().map_or(0, PendingApply::next_extent);
                    cycle = Some(h.cycle);
                    tracing::info!(vm = %vm_id, cycle = h.cycle, next, resume, "Cycle started");
                    write_msg(wr, &Message::ResumeFrom { cycle: h.cycle, next_extent: next }).await?;
                }
                Message::Extent(e) => {
                    let c = cycle.ok_or_else(|| Error::protocol("Extent before BeginCycle"))?;
                    let mut s = slot.lock().await;
                    if s.owner != me {
                        return Err(Error::new(ErrorKind::Disconnected, "Another session took over this cycle"));
                    }
                    let p = s.pending.as_mut().ok_or_else(|| Error::protocol("Extent without a pending cycle"))?;
                    p.apply(&e)?;
                    let next = p.next_extent();
                    if next % self.cfg.ack_every.max(1) == 0 {
                        write_msg(wr, &Message::ResumeFrom { cycle: c, next_extent: next }).await?;
                    }
                }
                Message::EndCycle { cycle: c, extent_count, total_bytes } => {
                    if cycle != Some(c) {
                        return Err(Error::protocol(format!("EndCycle for cycle {c} which is not open")));
                    }
                    let p = {
                        let mut s = slot.lock().await;
                        if s.owner != me {
                            return Err(Error::new(ErrorKind::Disconnected, "Another session took over this cycle"));
                        }
                        s.pending.take().ok_or_else(|| Error::protocol("EndCycle without a pending cycle"))?
                    };
                    let point = p.finish(extent_count, total_bytes).await?;
                    self.stats.cycles_applied.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(vm = %vm_id, cycle = c, point = %point.id, "Cycle applied durably");
                    write_msg(wr, &Message::Ack { cycle: c, durable: true }).await?;
                    cycle = None;
                }
                Message::HashRequest { disk, block_size, first, count } => {
                    if !chain_checked {
                        vm.drop_broken_points().await?;
                        chain_checked = true;
                    }
                    let hashes = hash_request(&vm, disk, block_size, first, count).await?;
                    write_msg(wr, &Message::HashReply { disk, first, hashes }).await?;
                }
                m => return Err(Error::protocol(format!("Unexpected {} frame from the sender", m.name()))),
            }
        }
        Ok(())
    }
}

/// The frame-reading task of a session; stopped with the session.
struct FramePump(tokio::task::JoinHandle<()>);

impl Drop for FramePump {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn hash_request(vm: &VmReplica, disk: u16, block_size: u32, first: u64, count: u32) -> Result<Vec<[u8; 32]>> {
    vm.latest_block_hashes(disk, block_size as u64, first, count as u64).await
}
