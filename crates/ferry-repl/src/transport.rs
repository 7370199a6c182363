//! Transport: mutually authenticated TLS (vault CA only), peer authorisation by certificate CN
//! (SEC-1), and a token-bucket bandwidth limiter with a time-of-day schedule (CAP-2, REP-4).
//!
//! Host certificates are named `host-<fabricId>-<hostId>` by the vault. A receiving host accepts a
//! connection only if the client certificate chains to the vault CA (rustls, client auth
//! required) AND its CN is in the [`Allowlist`], and then only for the pairs granted to that CN.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Timelike;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::error::{Context, Error, ErrorKind, Result};

/// This host's TLS identity and the vault CA.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When set, the certificate presented at each handshake (a host agent renews its
    /// certificate there without a restart); `cert_pem`/`key_pem` are then the first one.
    pub live: Option<ferry_pki::LiveIdentity>,
}

impl TlsIdentity {
    /// Server config: client certificates required, chaining to the vault CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let auth = ferry_pki::ClientAuth::Required(self.ca_pem.clone());
        match &self.live {
            Some(live) => ferry_pki::server_config_live(live, auth, false),
            None => ferry_pki::server_config(&self.cert_pem, &self.key_pem, auth, false),
        }
        .ctx(ErrorKind::Tls, || "Cannot build the replication server TLS config".into())
    }

    /// Client config presenting this host's certificate to a replication peer that must present
    /// a certificate named `peer_cn` (wherever it is reached).
    pub fn peer_client_config(&self, peer_cn: &str) -> Result<Arc<rustls::ClientConfig>> {
        self.peer_client_config_checked(peer_cn, None)
    }

    /// [`TlsIdentity::peer_client_config`] that also refuses a replica host whose certificate
    /// is in `revoked` (SEC-1).
    pub fn peer_client_config_checked(
        &self,
        peer_cn: &str,
        revoked: Option<&ferry_pki::Revocations>,
    ) -> Result<Arc<rustls::ClientConfig>> {
        let live = match (&self.live, revoked) {
            (Some(live), _) => Some(live.clone()),
            (None, Some(_)) => Some(
                ferry_pki::LiveIdentity::new(&self.cert_pem, &self.key_pem)
                    .ctx(ErrorKind::Tls, || "Cannot load this host's TLS identity".into())?,
            ),
            (None, None) => None,
        };
        match live {
            Some(live) => ferry_pki::named_server_client_config_live(
                &self.ca_pem,
                &live,
                ferry_pki::PeerName::Exact(peer_cn.to_string()),
                revoked,
            ),
            None => ferry_pki::named_peer_client_config(&self.ca_pem, &self.cert_pem, &self.key_pem, peer_cn),
        }
        .ctx(ErrorKind::Tls, || format!("Cannot build the replication client TLS config for {peer_cn}"))
    }

    /// Client config presenting this host's certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        ferry_pki::client_config(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
            .ctx(ErrorKind::Tls, || "Cannot build the replication client TLS config".into())
    }
}

/// Which peers (by certificate CN) may replicate which replicas into this host. A grant is for
/// one replica (a pair and the VM id that names its folder), for every VM of a pair, or for
/// everything (benchmarks). The receiver checks the (peer, pair, VM) of a session's Hello before
/// it opens the replica, so a peer granted one item can neither write nor read another's.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    inner: Arc<Mutex<HashMap<String, Option<HashSet<Grant>>>>>,
    /// Fingerprints of certificates revoked before they expired (SEC-1): refused whatever name
    /// they carry.
    revoked: ferry_pki::Revocations,
}

/// (pair, VM): `None` for every VM of the pair.
type Grant = (String, Option<String>);

impl Allowlist {
    /// An empty allowlist (refuses everyone).
    pub fn new() -> Self {
        Self::default()
    }

    /// Allow `cn` for every pair.
    pub fn allow_any_pair(&self, cn: &str) {
        self.lock().insert(cn.to_string(), None);
    }

    fn grant(&self, cn: &str, g: Grant) {
        let mut m = self.lock();
        let e = m.entry(cn.to_string()).or_insert_with(|| Some(HashSet::new()));
        if let Some(set) = e {
            set.insert(g);
        }
    }

    /// Allow `cn` for every VM of `pair_id` (adds to earlier grants).
    pub fn allow_pair(&self, cn: &str, pair_id: &str) {
        self.grant(cn, (pair_id.to_string(), None));
    }

    /// Allow `cn` for the replica `vm_id` of `pair_id` only (adds to earlier grants).
    pub fn allow_replica(&self, cn: &str, pair_id: &str, vm_id: &str) {
        self.grant(cn, (pair_id.to_string(), Some(vm_id.to_string())));
    }

    /// Remove every grant of `cn`.
    pub fn revoke(&self, cn: &str) {
        self.lock().remove(cn);
    }

    /// Remove the grants of `pair_id` to `cn` only; its other pairs stay allowed. A peer left
    /// with no grant is forgotten.
    pub fn revoke_pair(&self, cn: &str, pair_id: &str) {
        let mut m = self.lock();
        if let Some(Some(set)) = m.get_mut(cn) {
            set.retain(|(p, _)| p != pair_id);
            if set.is_empty() {
                m.remove(cn);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<HashSet<Grant>>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the revoked certificates (SHA-256 fingerprints of their DER, hex).
    pub fn set_revoked_certificates(&self, fingerprints: &[String]) {
        self.revoked.set(fingerprints);
    }

    /// Was the certificate with this fingerprint revoked?
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.revoked.contains(fingerprint)
    }

    /// The revoked certificates, for the client configs of this host's replication connections.
    pub fn revocations(&self) -> &ferry_pki::Revocations {
        &self.revoked
    }

    /// Is `cn` known at all?
    pub fn knows(&self, cn: &str) -> bool {
        self.lock().contains_key(cn)
    }

    /// May `cn` replicate anything of `pair_id`?
    pub fn permits(&self, cn: &str, pair_id: &str) -> bool {
        match self.lock().get(cn) {
            Some(None) => true,
            Some(Some(set)) => set.iter().any(|(p, _)| p == pair_id),
            None => false,
        }
    }

    /// May `cn` write and read replica `vm_id` of `pair_id`?
    pub fn permits_replica(&self, cn: &str, pair_id: &str, vm_id: &str) -> bool {
        match self.lock().get(cn) {
            Some(None) => true,
            Some(Some(set)) => set.iter().any(|(p, v)| p == pair_id && v.as_deref().is_none_or(|v| v == vm_id)),
            None => false,
        }
    }
}

/// Accept one TLS connection (client certificate verified against the vault CA by rustls) and
/// return it with the peer's CN and its certificate's fingerprint. The caller checks both
/// against its [`Allowlist`] and answers a refused peer with an `Error` frame, so the peer
/// learns why it was refused.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(server::TlsStream<TcpStream>, String, String)> {
    let peer = tcp.peer_addr().ok();
    let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| Error::new(ErrorKind::Disconnected, "TLS handshake timed out"))?
        .map_err(|e| Error::with_source(ErrorKind::Tls, format!("TLS handshake with {peer:?} failed"), e))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| Error::new(ErrorKind::Unauthorized, "The peer sent no certificate"))?;
    let fingerprint = ferry_pki::fingerprint_of_der(leaf);
    let cn = ferry_pki::peer_common_name(leaf)
        .ok_or_else(|| Error::new(ErrorKind::Unauthorized, "Peer certificate has no common name"))?;
    Ok((tls, cn, fingerprint))
}

/// Connect to a replica host. `server_name` is the DNS name or IP in its certificate.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| Error::with_source(ErrorKind::Invalid, format!("Invalid server name {server_name}"), e))?;
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Disconnected, format!("Cannot connect to {addr}"), e))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Tls, format!("TLS handshake with {addr} failed"), e))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::new(ErrorKind::Disconnected, format!("Connecting to {addr} timed out")))?
}

/// Bind a listener.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| Error::io(format!("Cannot listen on {addr}"), e))
}

/// A time-of-day window with its own rate. `start > end` wraps past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    /// Minutes after midnight (local time), inclusive.
    pub start_min: u16,
    /// Minutes after midnight, exclusive.
    pub end_min: u16,
    /// Bytes per second; `None` = unlimited during this window.
    pub rate: Option<u64>,
}

impl RateWindow {
    /// Parse `"HH:MM"` times.
    pub fn new(start: &str, end: &str, rate: Option<u64>) -> Result<Self> {
        Ok(Self { start_min: parse_hhmm(start)?, end_min: parse_hhmm(end)?, rate })
    }

    /// Whether minute `m` after midnight lies in the window.
    pub fn contains(&self, m: u16) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&m)
        } else {
            m >= self.start_min || m < self.end_min
        }
    }

    /// Minutes from minute `m` to the window's end, when `m` lies in the window.
    pub fn minutes_left(&self, m: u16) -> Option<u16> {
        self.contains(m).then(|| (self.end_min + 24 * 60 - m - 1) % (24 * 60) + 1)
    }
}

fn parse_hhmm(s: &str) -> Result<u16> {
    let bad = || Error::new(ErrorKind::Invalid, format!("Time {s:?} is not HH:MM"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Rate by time of day: the first matching window wins, else `default` (`None` = unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateSchedule {
    pub default: Option<u64>,
    pub windows: Vec<RateWindow>,
}

impl RateSchedule {
    /// A constant rate.
    pub fn constant(rate: u64) -> Self {
        Self { default: Some(rate), windows: vec![] }
    }

    /// Rate at `minute` after midnight.
    pub fn rate_at(&self, minute: u16) -> Option<u64> {
        self.windows.iter().find(|w| w.contains(minute)).map_or(self.default, |w| w.rate)
    }

    /// Rate now (local time).
    pub fn rate_now(&self) -> Option<u64> {
        let now = chrono::Local::now();
        self.rate_at((now.hour() * 60 + now.minute()) as u16)
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token-bucket limiter on sent bytes (burst = a quarter second of the current rate). Shared by
/// every stream of a host when wrapped in an `Arc`.
#[derive(Debug)]
pub struct Limiter {
    schedule: std::sync::RwLock<RateSchedule>,
    bucket: Mutex<Bucket>,
}

impl Limiter {
    /// A limiter following `schedule`.
    pub fn new(schedule: RateSchedule) -> Self {
        Self {
            schedule: std::sync::RwLock::new(schedule),
            bucket: Mutex::new(Bucket { tokens: 0.0, last: Instant::now() }),
        }
    }

    /// Follow another schedule from now on (a site pushed new settings); streams in flight
    /// adopt it with their next extent.
    pub fn set_schedule(&self, schedule: RateSchedule) {
        *self.schedule.write().unwrap_or_else(|p| p.into_inner()) = schedule;
    }

    /// The schedule in force.
    pub fn schedule(&self) -> RateSchedule {
        self.schedule.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How long a caller must wait before sending `n` bytes at `rate` (takes the tokens now;
    /// the bucket may go into debt, which later callers pay off).
    pub fn reserve(&self, n: u64, rate: Option<u64>, now: Instant) -> Duration {
        let Some(rate) = rate.filter(|r| *r > 0) else { return Duration::ZERO };
        let rate = rate as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let burst = rate / 4.0;
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }

    /// The rate in force now (bytes per second; `None` = unlimited).
    pub fn rate_now(&self) -> Option<u64> {
        self.schedule.read().unwrap_or_else(|p| p.into_inner()).rate_now()
    }

    /// Wait until `n` bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let wait = self.reserve(n, self.rate_now(), Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_1_revoking_one_pair_keeps_the_peers_other_pairs() {
        let a = Allowlist::new();
        a.allow_pair("host-ny1", "web1");
        a.allow_pair("host-ny1", "db1");
        a.allow_pair("host-ny2", "app1");
        a.revoke_pair("host-ny1", "db1");
        assert!(!a.permits("host-ny1", "db1"));
        assert!(a.permits("host-ny1", "web1"), "another item of the same host stays allowed");
        assert!(a.permits("host-ny2", "app1"));
        a.revoke_pair("host-ny1", "web1");
        assert!(!a.knows("host-ny1"), "a peer with no pair left is forgotten");
        a.revoke_pair("host-unknown", "x");
        assert!(a.permits("host-ny2", "app1"));
    }

    #[test]
    fn sec_1_a_grant_for_one_replica_opens_no_other() {
        let a = Allowlist::new();
        a.allow_replica("host-ny1", "web1", "web1");
        assert!(a.permits_replica("host-ny1", "web1", "web1"));
        assert!(!a.permits_replica("host-ny1", "web1", "db1"), "another item's replica through web1's grant");
        assert!(!a.permits_replica("host-ny1", "db1", "db1"));
        a.allow_pair("host-ny2", "p");
        assert!(a.permits_replica("host-ny2", "p", "any-vm-of-p"));
        a.allow_any_pair("host-bench");
        assert!(a.permits_replica("host-bench", "x", "y"));
    }

    #[test]
    fn rep_6_resync_window_minutes_left() {
        let night = RateWindow::new("22:00", "06:00", None).expect("window");
        assert_eq!(night.minutes_left(22 * 60), Some(8 * 60));
        assert_eq!(night.minutes_left(5 * 60 + 59), Some(1));
        assert_eq!(night.minutes_left(6 * 60), None);
        assert_eq!(night.minutes_left(12 * 60), None);
        let day = RateWindow::new("08:00", "18:00", None).expect("window");
        assert_eq!(day.minutes_left(17 * 60), Some(60));
        assert_eq!(day.minutes_left(7 * 60), None);
    }

    #[test]
    fn cap_2_schedule_and_bucket_math() {
        let s = RateSchedule {
            default: None,
            windows: vec![
                RateWindow::new("08:00", "18:00", Some(1_000_000)).expect("w"),
                RateWindow::new("22:00", "02:00", Some(5_000_000)).expect("w"),
            ],
        };
        assert_eq!(s.rate_at(7 * 60 + 59), None);
        assert_eq!(s.rate_at(8 * 60), Some(1_000_000));
        assert_eq!(s.rate_at(18 * 60), None);
        assert_eq!(s.rate_at(23 * 60), Some(5_000_000));
        assert_eq!(s.rate_at(60), Some(5_000_000));
        assert!(RateWindow::new("25:00", "01:00", None).is_err());
        assert!(RateWindow::new("xx", "01:00", None).is_err());

        let l = Limiter::new(RateSchedule::constant(1_000_000));
        let t0 = Instant::now();
        // Empty bucket: 1 MB at 1 MB/s costs one second.
        let w = l.reserve(1_000_000, Some(1_000_000), t0);
        assert!((w.as_secs_f64() - 1.0).abs() < 0.01, "{w:?}");
        // Debt carries over: another 0.5 MB right away waits 1.5 s in total.
        let w = l.reserve(500_000, Some(1_000_000), t0);
        assert!((w.as_secs_f64() - 1.5).abs() < 0.01, "{w:?}");
        // After 10 s idle, only the burst (0.25 s) is available.
        let w = l.reserve(750_000, Some(1_000_000), t0 + Duration::from_secs(10));
        assert!((w.as_secs_f64() - 0.5).abs() < 0.01, "{w:?}");
        assert_eq!(l.reserve(u64::MAX, None, t0), Duration::ZERO);
    }
}
