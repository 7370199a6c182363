//! The host's side of replication: a receiver for replicas of VMs protected from other hosts,
//! and one capture loop per VM this host replicates (REP-2, REP-3), built on `ferry-repl`.
//!
//! What the host was asked to do (replicas to receive, VMs to replicate) is kept in
//! `<data>/replication.json`, so a restarted agent resumes every loop; the loops themselves
//! resume from the bitmaps persisted in the VMs' qcow2 images.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_repl::{Allowlist, CaptureDisk, Primary, PrimaryConfig, Receiver, ReceiverConfig, TlsIdentity};
use ferry_types::protection::RecoveryPoint;
use ferry_types::site_protocol::{
    FailureCause, InitialReplication, PairConfig, PairRole, ReplicaSpec, ReplicationPeer, ReplicationPhase,
    ReplicationSpec, ReplicationStatus,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::source_status::{classify, CycleCost, SourceStatus, Wait};
use crate::vms::VmManager;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("Invalid replication request: {0}")]
    Invalid(String),
    #[error("Replication engine failed: {0}")]
    Engine(String),
    #[error("Replication state I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl ReplicationError {
    /// The file system holding the replica or the host's state is full.
    pub fn no_space(&self) -> bool {
        match self {
            ReplicationError::Io(e) => e.raw_os_error() == Some(28),
            ReplicationError::Engine(m) => m.contains("No space left on device"),
            ReplicationError::Invalid(_) => false,
        }
    }
}

/// How long a final cycle (shutdown, planned failover) keeps trying before it is reported
/// failed: long enough for a replica host that restarts (also on a new address) to be back.
pub const FINAL_CYCLE_PATIENCE: Duration = Duration::from_secs(60);
/// The first pause between attempts; it doubles up to [`FINAL_CYCLE_RETRY_MAX`].
const FINAL_CYCLE_RETRY: Duration = Duration::from_secs(2);
const FINAL_CYCLE_RETRY_MAX: Duration = Duration::from_secs(10);

impl From<ferry_repl::Error> for ReplicationError {
    fn from(e: ferry_repl::Error) -> Self {
        ReplicationError::Engine(e.chain())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    replicas: Vec<ReplicaSpec>,
    sources: Vec<ReplicationSpec>,
    /// Test overlays in use (item, point, holder tag, (disk target, overlay path)).
    #[serde(default)]
    tests: Vec<TestRecord>,
    /// Sources whose replication an operator paused (JOB-3); their tracking continues in QEMU.
    #[serde(default)]
    paused: Vec<Uuid>,
    /// Sources an operator asked to resynchronize (REP-6 repair): the next cycle compares block
    /// hashes with the replica whatever the tracking state; cleared when it completed.
    #[serde(default)]
    repairs: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TestRecord {
    item: Uuid,
    point: String,
    tag: String,
    disks: Vec<(String, PathBuf)>,
}

/// What a capture loop applies at its next cycle.
struct LiveSettings {
    interval: Duration,
    compression: bool,
    app_every: Option<Duration>,
    policy_version: i64,
    peer: Option<SocketAddr>,
    target_name: String,
}

pub struct ReplicationService {
    data: PathBuf,
    receiver: Receiver,
    allowlist: Allowlist,
    identity: TlsIdentity,
    test_interval: Option<Duration>,
    persisted: Mutex<Persisted>,
    sources: Arc<std::sync::Mutex<HashMap<Uuid, SourceStatus>>>,
    loops: Mutex<HashMap<Uuid, tokio::task::JoinHandle<()>>>,
    /// The Primary of each replicated VM, shared by its loop and by final cycles.
    primaries: std::sync::Mutex<HashMap<Uuid, Arc<Mutex<Option<Primary>>>>>,
    /// How each replicated VM's Primary is made (its configuration and VM name): a final cycle
    /// makes it when the loop has none at that moment (after a failed cycle, before the next).
    primary_configs: std::sync::Mutex<HashMap<Uuid, (PrimaryConfig, String)>>,
    /// Replica root: per-item directories (symlinks to the chosen storage location).
    root: PathBuf,
    /// CAP-2: the host's bandwidth limit, shared by every VM it replicates.
    limiter: Option<Arc<ferry_repl::Limiter>>,
    /// The bandwidth of the host's own configuration; when set, the site's does not apply.
    own_bandwidth: Option<ferry_repl::RateSchedule>,
    /// REP-6: when automatic resynchronizations may run (None = any time).
    pub resync_window: Option<ferry_repl::RateWindow>,
    /// The host's storage locations (REP-7: where kept replicas and existing images may lie).
    pub storage_roots: Vec<PathBuf>,
    /// Where the replica hosts are now, by certificate name (from the site's answers).
    peers: crate::peers::Peers,
    /// Wakes a capture loop before its next tick (the replica host moved, the policy changed).
    wakes: std::sync::Mutex<HashMap<Uuid, Arc<tokio::sync::Notify>>>,
    /// A loop could not reach its replica host: the report loop asks the site at once.
    pub resolve_wanted: Arc<tokio::sync::Notify>,
    /// POL-2: the address listeners bind at the pairs' policy ports; `None` when the host file
    /// fixes the replication listener.
    pub policy_ports_ip: Option<std::net::IpAddr>,
    /// RP-1: the most bytes per second the point verifier reads.
    pub verify_rate: Option<u64>,
}

fn write_state(path: &Path, p: &Persisted) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?;
    crate::write_atomic(path, &bytes)
}

impl ReplicationService {
    pub async fn start(
        data: &Path,
        listen: SocketAddr,
        identity: TlsIdentity,
        test_interval: Option<Duration>,
        bandwidth: Option<ferry_repl::RateSchedule>,
    ) -> Result<ReplicationService, ReplicationError> {
        let root = data.join("replicas");
        std::fs::create_dir_all(&root)?;
        let allowlist = Allowlist::new();
        let persisted: Persisted = match std::fs::read(data.join("replication.json")) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| ReplicationError::Invalid(format!("replication.json: {e}")))?
            }
            Err(_) => Persisted::default(),
        };
        for r in &persisted.replicas {
            allowlist.allow_replica(&r.source_host_cn, &r.item.to_string(), &r.item.to_string());
        }
        let cfg = ReceiverConfig::new(listen, identity.server_config()?, allowlist.clone(), root.clone());
        let receiver = Receiver::start(cfg).await?;
        Ok(ReplicationService {
            data: data.to_path_buf(),
            receiver,
            allowlist,
            identity,
            test_interval,
            persisted: Mutex::new(persisted),
            sources: Default::default(),
            loops: Default::default(),
            primaries: Default::default(),
            primary_configs: Default::default(),
            root,
            limiter: Some(Arc::new(ferry_repl::Limiter::new(bandwidth.clone().unwrap_or_default()))),
            own_bandwidth: bandwidth,
            resync_window: None,
            storage_roots: Vec::new(),
            peers: Default::default(),
            wakes: Default::default(),
            resolve_wanted: Default::default(),
            policy_ports_ip: None,
            verify_rate: None,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.receiver.local_addr()
    }

    /// Every replication listener (the first one first).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.receiver.addresses()
    }

    /// POL-2: listen at the port of every policy of the site's pairs (8084 when a policy names
    /// none), and stop listening at ports no policy uses any more; the first listener stays.
    /// Peers learn the new addresses from this host's next report, through the vault.
    pub async fn apply_listen_ports(&self, pairs: &[PairConfig]) {
        let Some(ip) = self.policy_ports_ip else { return };
        let wanted: std::collections::BTreeSet<u16> =
            pairs.iter().map(|p| p.policy.port.unwrap_or(crate::peers::DEFAULT_CERTIFICATE_PORT)).collect();
        let first = self.receiver.local_addr();
        for port in &wanted {
            let addr = SocketAddr::new(ip, *port);
            if addr != first && !self.receiver.addresses().contains(&addr) {
                if let Err(e) = self.receiver.listen_also(addr).await {
                    tracing::warn!(%addr, error = %e.chain(), "cannot listen at a policy's replication port");
                }
            }
        }
        for addr in self.receiver.addresses().into_iter().skip(1) {
            if !wanted.contains(&addr.port()) {
                self.receiver.stop_listening(addr);
            }
        }
    }

    /// Resume the capture loops of every VM this host replicated before a restart.
    pub async fn resume(self: &Arc<Self>, vms: &Arc<VmManager>) {
        let (sources, paused) = {
            let p = self.persisted.lock().await;
            (p.sources.clone(), p.paused.clone())
        };
        for s in sources {
            if paused.contains(&s.item) {
                let interval = self.interval_of(&s.policy);
                if let Ok(mut st) = self.sources.lock() {
                    st.entry(s.item).or_insert_with(|| SourceStatus::new(interval)).paused(Instant::now());
                }
                continue;
            }
            if let Err(e) = self.spawn_loop(s.clone(), vms.clone()).await {
                tracing::warn!(item = %s.item, error = %e, "cannot resume replication");
            }
        }
    }

    /// Target side: accept this item's replica from its source host only (SEC-1), stored in the
    /// chosen storage location (STO-2). REP-7: a replica of the same VM this host kept, or the
    /// existing images the spec names, become the replica's start (see [`crate::onboard`]); the
    /// answer's `existing_replica` says what it holds then, and `existing_replica_refused` why a
    /// kept replica of the VM was not used.
    pub async fn prepare(&self, spec: ReplicaSpec) -> Result<serde_json::Value, ReplicationError> {
        let item = spec.item.to_string();
        let location = spec.disks.first().map(|d| PathBuf::from(&d.2)).filter(|p| !p.as_os_str().is_empty());
        let link = self.root.join(&item);
        let disks: Vec<(String, u64)> = spec.disks.iter().map(|d| (d.0.clone(), d.1)).collect();
        let mut refused = Vec::new();
        let mut kept_location = None;
        if std::fs::symlink_metadata(&link).is_err() && spec.existing_disks.is_empty() {
            if let Some(origin) = &spec.origin {
                let active: std::collections::HashSet<String> =
                    self.persisted.lock().await.replicas.iter().map(|r| r.item.to_string()).collect();
                let dirs = crate::onboard::candidate_dirs(&self.storage_roots, &self.data);
                let (found, why) = crate::onboard::find_kept(&dirs, origin, &disks, &active, spec.item).await;
                refused = why;
                if let Some(kept) = found {
                    let dir = crate::onboard::take_over(&kept.dir, &self.root, spec.item)?;
                    kept_location = Some(crate::onboard::location_of(&dir));
                    tracing::info!(item = %item, dir = %dir.display(), points = kept.points, "reusing a kept replica of the VM (REP-7)");
                }
            }
        }
        if std::fs::symlink_metadata(&link).is_err() {
            if let Some(loc) = location {
                let dir = loc.join(crate::onboard::REPLICAS_DIR).join(&item);
                std::fs::create_dir_all(&dir)?;
                std::os::unix::fs::symlink(&dir, &link)?;
            } else {
                std::fs::create_dir_all(&link)?;
            }
        }
        if let Some(origin) = &spec.origin {
            let rec =
                crate::onboard::OriginRecord { origin: origin.clone(), item: spec.item, vm_name: spec.vm_name.clone() };
            crate::onboard::write_origin(&link, &rec)?;
        }
        let vm = self.receiver.store().vm(&item).await?;
        if !spec.existing_disks.is_empty() && vm.recovery_points()?.is_empty() {
            let images =
                crate::onboard::check_existing_images(&spec.existing_disks, &disks, &self.storage_roots).await?;
            let point = vm.adopt_existing(&images, crate::onboard::images_time(&images)).await?;
            tracing::info!(item = %item, point = %point.id, "existing images adopted as the replica's base (REP-7)");
        }
        let points = vm.recovery_points()?;
        let existing = points.last().map(|latest| ferry_types::site_protocol::ExistingReplica {
            source: if spec.existing_disks.is_empty() {
                ferry_types::site_protocol::ExistingReplicaSource::KeptReplica
            } else {
                ferry_types::site_protocol::ExistingReplicaSource::ExistingImages
            },
            points: points.len() as u32,
            latest: Some(latest.time),
            location: kept_location.clone(),
        });
        self.allowlist.allow_replica(&spec.source_host_cn, &item, &item);
        let mut p = self.persisted.lock().await;
        p.replicas.retain(|r| r.item != spec.item);
        p.replicas.push(spec);
        write_state(&self.data.join("replication.json"), &p)?;
        let mut out = serde_json::json!({"receiver": self.address().to_string()});
        if let Some(e) = existing {
            out["existing_replica"] = serde_json::to_value(e).map_err(std::io::Error::other)?;
        }
        if !refused.is_empty() {
            out["existing_replica_refused"] = serde_json::json!(refused);
        }
        Ok(out)
    }

    /// Source side: start replicating a running VM.
    pub async fn start_source(
        self: &Arc<Self>,
        spec: ReplicationSpec,
        vms: Arc<VmManager>,
    ) -> Result<serde_json::Value, ReplicationError> {
        if vms.running(&spec.vm_name).await.is_none() {
            return Err(ReplicationError::Invalid(format!("VM {} is not running on this host", spec.vm_name)));
        }
        if spec.initial != InitialReplication::Full {
            // A replica that did not come from this host's tracking (reverse replication): any
            // tracking state left from an earlier direction does not apply to it.
            if let Some(h) = self.loops.lock().await.remove(&spec.item) {
                h.abort();
            }
            let _ = std::fs::remove_dir_all(self.data.join("staging").join(spec.item.to_string()));
        }
        {
            let mut p = self.persisted.lock().await;
            p.sources.retain(|s| s.item != spec.item);
            p.sources.push(spec.clone());
            write_state(&self.data.join("replication.json"), &p)?;
        }
        self.spawn_loop(spec, vms).await?;
        Ok(serde_json::Value::Null)
    }

    /// Stop replicating `item` from or to this host. `keep_tracking` keeps a source's tracking
    /// state (bitmaps and cycle counter) so that starting again continues with deltas.
    pub async fn stop(
        &self,
        item: Uuid,
        delete_replica: bool,
        keep_tracking: bool,
    ) -> Result<serde_json::Value, ReplicationError> {
        if let Some(h) = self.loops.lock().await.remove(&item) {
            h.abort();
        }
        if let Ok(mut s) = self.sources.lock() {
            s.remove(&item);
        }
        if let Ok(mut w) = self.wakes.lock() {
            w.remove(&item);
        }
        let mut p = self.persisted.lock().await;
        p.sources.retain(|s| s.item != item);
        p.paused.retain(|i| *i != item);
        p.repairs.retain(|i| *i != item);
        if let Some(r) = p.replicas.iter().find(|r| r.item == item) {
            self.allowlist.revoke_pair(&r.source_host_cn, &item.to_string());
        }
        p.replicas.retain(|r| r.item != item);
        write_state(&self.data.join("replication.json"), &p)?;
        if let Ok(mut p) = self.primaries.lock() {
            p.remove(&item);
        }
        if let Ok(mut c) = self.primary_configs.lock() {
            c.remove(&item);
        }
        if !keep_tracking {
            let _ = std::fs::remove_dir_all(self.data.join("staging").join(item.to_string()));
        }
        if delete_replica {
            let link = self.root.join(item.to_string());
            if let Ok(target) = std::fs::read_link(&link) {
                let _ = std::fs::remove_dir_all(&target);
            }
            let _ = std::fs::remove_file(&link);
            let _ = std::fs::remove_dir_all(&link);
        }
        Ok(serde_json::Value::Null)
    }

    /// The copy interval of a policy on this host (the test knob overrides it).
    fn interval_of(&self, policy: &ferry_types::policy::PolicySpec) -> Duration {
        self.test_interval.unwrap_or(Duration::from_secs(policy.copy_frequency_secs.max(1) as u64))
    }

    /// Where the replica host of `spec` is now: the address the vault resolved for its
    /// certificate name, else the one the replication started with.
    fn target_of(&self, spec: &ReplicationSpec) -> Result<SocketAddr, ReplicationError> {
        let port = spec.policy.port.unwrap_or(crate::peers::DEFAULT_CERTIFICATE_PORT);
        if let Some(a) = self.peers.resolve(&spec.target_host_cn, port) {
            return Ok(a);
        }
        spec.target_address
            .parse()
            .map_err(|_| ReplicationError::Invalid(format!("bad target address {}", spec.target_address)))
    }

    /// What a loop applies at its next cycle: the policy as the site pushed it last (POL-9)
    /// and the replica host's current address. `None` once the item is no longer replicated
    /// from here.
    async fn live_settings(&self, item: Uuid) -> Option<LiveSettings> {
        let spec = self.persisted.lock().await.sources.iter().find(|s| s.item == item).cloned()?;
        Some(LiveSettings {
            interval: self.interval_of(&spec.policy),
            compression: spec.policy.compression,
            app_every: spec.policy.app_consistent_frequency_hours.map(|h| Duration::from_secs(h as u64 * 3600)),
            policy_version: spec.policy_version,
            peer: self.target_of(&spec).ok(),
            target_name: if spec.target_host_name.is_empty() {
                spec.target_host_cn.clone()
            } else {
                spec.target_host_name.clone()
            },
        })
    }

    async fn spawn_loop(self: &Arc<Self>, spec: ReplicationSpec, vms: Arc<VmManager>) -> Result<(), ReplicationError> {
        let def = vms
            .definition(&spec.vm_name)
            .await
            .ok_or_else(|| ReplicationError::Invalid(format!("VM {} is not defined here", spec.vm_name)))?;
        let mut disks = Vec::new();
        for target in &spec.disks {
            let d = def
                .disks
                .iter()
                .find(|d| &d.target == target)
                .ok_or_else(|| ReplicationError::Invalid(format!("VM {} has no disk {target}", def.name)))?;
            let size = crate::vms::virtual_size(Path::new(&d.path), d.format)?;
            let format = match d.format {
                ferry_types::fabric::DiskFormat::Qcow2 => ferry_qemu::DiskFormat::Qcow2,
                ferry_types::fabric::DiskFormat::Raw => ferry_qemu::DiskFormat::Raw,
            };
            disks.push(CaptureDisk { target: target.clone(), size, format });
        }
        let peer = self.target_of(&spec)?;
        let staging = self.data.join("staging").join(spec.item.to_string());
        std::fs::create_dir_all(&staging)?;
        // SEC-1: the replica host is whoever holds its certificate, wherever it listens.
        let tls = self.identity.peer_client_config(&spec.target_host_cn)?;
        let mut cfg = PrimaryConfig::new(
            &spec.item.to_string(),
            &spec.item.to_string(),
            disks,
            &staging,
            peer,
            &peer.ip().to_string(),
            tls,
        );
        cfg.compression = spec.policy.compression;
        cfg.limiter = self.limiter.clone();
        if def.guest_agent {
            cfg.qga_socket = vms.running(&spec.vm_name).await.map(|r| r.paths().qga.clone());
        }
        let sources = self.sources.clone();
        let interval0 = self.interval_of(&spec.policy);
        if let Ok(mut s) = sources.lock() {
            let st = s.entry(spec.item).or_insert_with(|| SourceStatus::new(interval0));
            st.loop_started(Instant::now());
            st.interval = interval0;
            st.policy_version = Some(spec.policy_version);
            if st.phase == ReplicationPhase::Paused {
                st.phase = ReplicationPhase::Waiting;
            }
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut w) = self.wakes.lock() {
            w.insert(spec.item, wake.clone());
        }
        let item = spec.item;
        let vm_name = spec.vm_name.clone();
        let initial = spec.initial;
        let scheduled = match &spec.policy.initial_replication {
            ferry_types::policy::InitialReplication::OverNetworkScheduled { start_at } => Some(*start_at),
            _ => None,
        };
        // POL-8: the initial copy goes to `<export path>/<item>` instead of the network.
        let offline_dir = match (&spec.policy.initial_replication, initial) {
            (ferry_types::policy::InitialReplication::Offline { export_path, .. }, InitialReplication::Full) => {
                Some(PathBuf::from(export_path).join(item.to_string()))
            }
            _ => None,
        };
        let this = self.clone();
        let resync_window = self.resync_window;
        let slot: Arc<Mutex<Option<Primary>>> = Arc::new(Mutex::new(None));
        if let Ok(mut p) = self.primaries.lock() {
            p.insert(item, slot.clone());
        }
        if let Ok(mut c) = self.primary_configs.lock() {
            c.insert(item, (cfg.clone(), vm_name.clone()));
        }
        let handle = tokio::spawn(async move {
            // POL-5: the first delta cycle is app-consistent, then one every N hours.
            let mut last_app: Option<Instant> = None;
            loop {
                let tick = Instant::now();
                // POL-9 and resolved endpoints: the settings and the replica's address of now.
                let Some(live) = this.live_settings(item).await else { break };
                let interval = live.interval;
                if let Some(addr) = live.peer.filter(|a| *a != cfg.peer_addr) {
                    tracing::info!(item = %item, from = %cfg.peer_addr, to = %addr, replica = %live.target_name, "the replica host listens at a new address");
                    cfg.peer_addr = addr;
                    cfg.peer_name = addr.ip().to_string();
                }
                cfg.compression = live.compression;
                if let Ok(mut c) = this.primary_configs.lock() {
                    c.insert(item, (cfg.clone(), vm_name.clone()));
                }
                if let Ok(mut s) = sources.lock() {
                    if let Some(st) = s.get_mut(&item) {
                        st.interval = interval;
                        st.policy_version = Some(live.policy_version);
                    }
                }
                let mut primary = slot.lock().await;
                if let Some(p) = primary.as_mut() {
                    let c = p.config_mut();
                    c.peer_addr = cfg.peer_addr;
                    c.peer_name = cfg.peer_name.clone();
                    c.compression = cfg.compression;
                }
                if primary.is_none() {
                    match vms.running(&vm_name).await {
                        Some(vm) => match Primary::new(cfg.clone(), vm) {
                            Ok(p) => *primary = Some(p),
                            Err(e) => fail(&sources, item, FailureCause::Other, e.chain(), tick),
                        },
                        None => fail(
                            &sources,
                            item,
                            FailureCause::VmNotRunning,
                            format!("VM {vm_name} is not running"),
                            tick,
                        ),
                    }
                }
                if let (Some(p), Some(dir)) = (primary.as_mut(), &offline_dir) {
                    use ferry_repl::offline::OfflineStatus;
                    let waiting = match p.offline_status() {
                        OfflineStatus::Imported => false,
                        OfflineStatus::AwaitingImport { .. } => true,
                        OfflineStatus::NotExported => {
                            set_phase(&sources, item, ReplicationPhase::InitialInProgress);
                            match p.export_initial(dir).await {
                                Ok(r) => {
                                    tracing::info!(item = %item, cycle = r.cycle, segments = r.segments, "offline export ready for import");
                                    if let Ok(mut s) = sources.lock() {
                                        if let Some(st) = s.get_mut(&item) {
                                            st.initial_bytes = r.data_bytes;
                                            st.last_error = None;
                                        }
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(item = %item, error = %e.chain(), "offline export failed; it resumes next cycle");
                                    set_error(&sources, item, e.chain());
                                    *primary = None;
                                }
                            }
                            true
                        }
                    };
                    if waiting {
                        if primary.as_ref().is_some_and(|p| p.offline_status() != OfflineStatus::NotExported) {
                            set_phase(&sources, item, ReplicationPhase::WaitingForImport);
                        }
                        drop(primary);
                        pause_for(&sources, item, &wake, interval.min(Duration::from_secs(5)), Wait::Window).await;
                        continue;
                    }
                }
                let repair = this.persisted.lock().await.repairs.contains(&item);
                let mut succeeded = primary.is_some();
                if let Some(p) = primary.as_mut() {
                    let tracking = if repair {
                        Ok(ferry_repl::TrackingState::ResyncRequired {
                            reason: "an operator asked for a repair".into(),
                        })
                    } else {
                        p.tracking().await
                    };
                    let mut initial_copy = false;
                    let res = match tracking {
                        Ok(ferry_repl::TrackingState::Tracking { .. }) => {
                            let app = live.app_every.is_some_and(|every| last_app.is_none_or(|t| t.elapsed() >= every));
                            let r = p.run_cycle(app).await;
                            if app && r.is_ok() {
                                last_app = Some(Instant::now());
                            }
                            r
                        }
                        // REP-6: outside the configured window an automatic resync waits (an
                        // operator's repair runs at once).
                        Ok(ferry_repl::TrackingState::ResyncRequired { .. })
                            if !repair && resync_window.is_some_and(|w| w.minutes_left(minute_now()).is_none()) =>
                        {
                            set_phase(&sources, item, ReplicationPhase::ResyncRequired);
                            if let Some(w) = resync_window {
                                set_error(
                                    &sources,
                                    item,
                                    format!("Resynchronization waits for its window ({})", fmt_window(&w)),
                                );
                            }
                            drop(primary);
                            pause_for(&sources, item, &wake, interval.min(Duration::from_secs(30)), Wait::Window).await;
                            continue;
                        }
                        // REP-6: tracking was lost (QEMU crash, raw disk after a restart) or an
                        // operator asked for a repair: compare block hashes with the replica and
                        // send only the differences; the replica's recovery points are kept.
                        Ok(ferry_repl::TrackingState::ResyncRequired { reason }) => {
                            tracing::warn!(item = %item, %reason, "change tracking lost; resynchronizing");
                            set_phase(&sources, item, ReplicationPhase::Resynchronizing);
                            let limits = ferry_repl::ResyncLimits {
                                max_duration: resync_window
                                    .filter(|_| !repair)
                                    .and_then(|w| w.minutes_left(minute_now()))
                                    .map(|m| Duration::from_secs(u64::from(m) * 60)),
                                ..Default::default()
                            };
                            match p.resync(&limits).await {
                                Ok(ferry_repl::ResyncOutcome::Completed {
                                    report,
                                    compared_blocks,
                                    differing_blocks,
                                }) => {
                                    tracing::info!(item = %item, compared_blocks, differing_blocks, "resync complete");
                                    if repair {
                                        let mut persisted = this.persisted.lock().await;
                                        persisted.repairs.retain(|i| *i != item);
                                        if let Err(e) = write_state(&this.data.join("replication.json"), &persisted) {
                                            tracing::warn!(item = %item, error = %e, "cannot record the finished repair");
                                        }
                                    }
                                    Ok(*report)
                                }
                                Ok(ferry_repl::ResyncOutcome::Paused { .. }) => Err(ferry_repl::Error::new(
                                    ferry_repl::ErrorKind::ResyncRequired,
                                    "Resync paused; it continues next cycle",
                                )),
                                Err(e) => Err(e),
                            }
                        }
                        // POL-8: a scheduled initial replication waits for its time.
                        _ if scheduled.is_some_and(|at| Utc::now() < at) => {
                            set_phase(&sources, item, ReplicationPhase::Waiting);
                            drop(primary);
                            pause_for(&sources, item, &wake, interval.min(Duration::from_secs(5)), Wait::Window).await;
                            continue;
                        }
                        _ => {
                            initial_copy = true;
                            set_phase(&sources, item, ReplicationPhase::InitialInProgress);
                            match initial {
                                InitialReplication::Full => p.seed_and_initial().await,
                                InitialReplication::SinceFailover => p.onboard_top_layer().await,
                                InitialReplication::CompareHashes => compare_with_replica(p).await,
                            }
                        }
                    };
                    match res {
                        Ok(report) => {
                            let point_time = p.counters().last_point.unwrap_or_else(Utc::now);
                            let waiting = p.data_waiting().await.ok();
                            if let Ok(mut s) = sources.lock() {
                                if let Some(st) = s.get_mut(&item) {
                                    st.record_success(CycleCost::of(&report), point_time, Instant::now(), initial_copy);
                                    st.data_waiting = waiting.unwrap_or(0);
                                    if !report.warnings.is_empty() {
                                        st.consistency_fallbacks += 1;
                                        st.last_warning = Some(report.warnings.join("; "));
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            succeeded = false;
                            let resync =
                                matches!(p.tracking().await, Ok(ferry_repl::TrackingState::ResyncRequired { .. }));
                            let cause = classify(&e);
                            let message = explain_failure(cause, &live.target_name, cfg.peer_addr, &e);
                            let waiting = p.data_waiting().await.unwrap_or(p.counters().unsent_bytes);
                            if let Ok(mut s) = sources.lock() {
                                if let Some(st) = s.get_mut(&item) {
                                    st.record_failure(cause, message, tick.elapsed(), Instant::now());
                                    st.phase = if resync {
                                        ReplicationPhase::ResyncRequired
                                    } else {
                                        ReplicationPhase::Retrying
                                    };
                                    st.data_waiting = waiting;
                                }
                            }
                            tracing::warn!(item = %item, error = %e.chain(), "replication cycle failed; the next cycle retries");
                            if matches!(cause, FailureCause::Unreachable | FailureCause::Refused) {
                                // Ask the site now where the replica host is (it may have moved).
                                this.resolve_wanted.notify_one();
                            }
                            // A restarted VM has a new QEMU: take it up on the next cycle.
                            *primary = None;
                        }
                    }
                }
                drop(primary);
                // The copy frequency is a period: the next cycle starts one interval after this
                // one started, at once if this one took longer. A wake (the replica host moved,
                // the policy changed) starts it earlier.
                let rest = (tick + interval).saturating_duration_since(Instant::now());
                let kind = if succeeded { Wait::Schedule } else { Wait::Backoff };
                pause_for(&sources, item, &wake, rest, kind).await;
            }
        });
        if let Some(old) = self.loops.lock().await.insert(item, handle) {
            old.abort();
        }
        Ok(())
    }

    /// Pause a source's replication (JOB-3): no more cycles until resumed. The dirty bitmaps keep
    /// recording, so resuming sends everything written meanwhile in one delta.
    pub async fn pause(&self, item: Uuid) -> Result<serde_json::Value, ReplicationError> {
        let mut p = self.persisted.lock().await;
        if !p.sources.iter().any(|s| s.item == item) {
            return Err(ReplicationError::Invalid(format!("{item} is not replicated from this host")));
        }
        if let Some(h) = self.loops.lock().await.remove(&item) {
            h.abort();
        }
        if !p.paused.contains(&item) {
            p.paused.push(item);
        }
        write_state(&self.data.join("replication.json"), &p)?;
        let interval = source_spec(&p, item).map(|s| self.interval_of(&s.policy)).unwrap_or(Duration::from_secs(300));
        if let Ok(mut st) = self.sources.lock() {
            st.entry(item).or_insert_with(|| SourceStatus::new(interval)).paused(Instant::now());
        }
        Ok(serde_json::Value::Null)
    }

    /// Resume a paused source's replication.
    pub async fn resume_paused(
        self: &Arc<Self>,
        item: Uuid,
        vms: Arc<VmManager>,
    ) -> Result<serde_json::Value, ReplicationError> {
        let spec = {
            let mut p = self.persisted.lock().await;
            let spec = source_spec(&p, item)?;
            p.paused.retain(|i| *i != item);
            write_state(&self.data.join("replication.json"), &p)?;
            spec
        };
        self.spawn_loop(spec, vms).await?;
        Ok(serde_json::Value::Null)
    }

    /// REP-6 repair: resynchronize `item` now by block-hash comparison with its replica, whatever
    /// the tracking state says (a replica restored from backup, a disk edited offline, a resync
    /// that keeps failing). The request is persisted, so it survives a restart of this agent.
    pub async fn repair(
        self: &Arc<Self>,
        item: Uuid,
        vms: Arc<VmManager>,
    ) -> Result<serde_json::Value, ReplicationError> {
        let spec = {
            let mut p = self.persisted.lock().await;
            let spec = source_spec(&p, item)?;
            if p.paused.contains(&item) {
                return Err(ReplicationError::Invalid(format!("Replication of {item} is paused; resume it first")));
            }
            if !p.repairs.contains(&item) {
                p.repairs.push(item);
            }
            write_state(&self.data.join("replication.json"), &p)?;
            spec
        };
        let interval = self.interval_of(&spec.policy);
        if let Ok(mut st) = self.sources.lock() {
            st.entry(item).or_insert_with(|| SourceStatus::new(interval)).phase = ReplicationPhase::Resynchronizing;
        }
        // A fresh loop takes the request up at once (and recovers a loop stuck on a dead QEMU).
        self.spawn_loop(spec, vms).await?;
        Ok(serde_json::Value::Null)
    }

    /// Throwaway overlays on a recovery point for a test VM (FO-1); the point stays in use (so
    /// retention never merges it) until [`ReplicationService::release_test`].
    pub async fn test_overlays(&self, item: Uuid, point: &str) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let real = std::fs::canonicalize(self.root.join(item.to_string()))?;
        let dest = real.join("test");
        let ov = vm.overlay_for_test(point, &dest).await?;
        let mut p = self.persisted.lock().await;
        p.tests.retain(|t| t.item != item);
        p.tests.push(TestRecord { item, point: ov.point_id.clone(), tag: ov.tag.clone(), disks: ov.disks.clone() });
        write_state(&self.data.join("replication.json"), &p)?;
        Ok(serde_json::json!({
            "point": ov.point_id,
            "disks": ov.disks.iter().map(|(t, path)| serde_json::json!({"target": t, "path": path})).collect::<Vec<_>>(),
        }))
    }

    /// RP-1: verify `point` (an id or `latest`) of `item`'s replica, or every point, against
    /// the points' manifests. Reads at most `verify_rate` bytes per second.
    pub async fn verify_points(&self, item: Uuid, point: Option<&str>) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let ids: Vec<String> = match point {
            Some(p) => vec![p.to_string()],
            None => vm.recovery_points()?.into_iter().map(|p| p.id).collect(),
        };
        if ids.is_empty() {
            return Err(ReplicationError::Invalid(format!("The replica of {item} has no recovery points")));
        }
        let mut out = Vec::new();
        for id in ids {
            let (id, check) = vm.verify_point(&id, self.verify_rate).await?;
            out.push(serde_json::json!({"point": id, "verification": point_verification(&check)}));
        }
        Ok(serde_json::json!({"points": out}))
    }

    /// RP-3: write every disk of `point` of `item`'s replica as a standalone image into the new
    /// directory `path`, which must lie inside one of this host's storage locations.
    pub async fn point_images(
        &self,
        item: Uuid,
        point: &str,
        format: ferry_types::fabric::DiskFormat,
        path: &str,
    ) -> Result<serde_json::Value, ReplicationError> {
        let dest = Path::new(path);
        let inside = |p: &Path| {
            self.storage_roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|r| p.starts_with(r))
        };
        let parent = dest.parent().filter(|_| dest.is_absolute() && dest.file_name().is_some());
        let parent = parent.and_then(|p| std::fs::canonicalize(p).ok()).filter(|p| inside(p)).ok_or_else(|| {
            ReplicationError::Invalid(format!("{path} is not a new folder inside one of this host's storage locations"))
        })?;
        let dest = parent.join(dest.file_name().unwrap_or_default());
        if dest.exists() {
            return Err(ReplicationError::Invalid(format!("{} exists already", dest.display())));
        }
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        if vm.recovery_points()?.is_empty() {
            return Err(ReplicationError::Invalid(format!("The replica of {item} has no recovery points")));
        }
        std::fs::create_dir(&dest)?;
        let format = match format {
            ferry_types::fabric::DiskFormat::Qcow2 => ferry_qemu::DiskFormat::Qcow2,
            ferry_types::fabric::DiskFormat::Raw => ferry_qemu::DiskFormat::Raw,
        };
        let (point, images) = match vm.export_images(point, &dest, format).await {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir(&dest);
                return Err(e.into());
            }
        };
        Ok(serde_json::json!({
            "point": point,
            "images": images
                .iter()
                .map(|(t, p)| serde_json::json!({
                    "target": t,
                    "path": p,
                    "bytes": std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                }))
                .collect::<Vec<_>>(),
        }))
    }

    /// RP-1: verify the point of the replicas this host holds that is most overdue (never
    /// verified first, then the oldest verification older than `period`). False when none is due.
    pub async fn verify_next_due(&self, period: Duration) -> bool {
        let now = chrono::Utc::now();
        let period = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::days(7));
        let items: Vec<Uuid> = self.persisted.lock().await.replicas.iter().map(|r| r.item).collect();
        // (last verified, item, point, the newest older point found exact: a new point is read
        // only where it differs from that one; an overdue point is read whole).
        type Due = (Option<chrono::DateTime<chrono::Utc>>, Uuid, String, Option<String>);
        let mut due: Option<Due> = None;
        for item in items {
            let Ok(vm) = self.receiver.store().vm(&item.to_string()).await else { continue };
            if vm.failover_point().ok().flatten().is_some() {
                continue;
            }
            let mut last_exact: Option<String> = None;
            for p in vm.recovery_points().unwrap_or_default() {
                let last = p.check.as_ref().map(|c| c.at);
                let since = if last.is_none() { last_exact.clone() } else { None };
                if p.check.as_ref().is_some_and(|c| c.ok()) {
                    last_exact = Some(p.id.clone());
                }
                if last.is_some_and(|t| now - t < period) {
                    continue;
                }
                if due.as_ref().is_none_or(|(d, _, _, _)| last < *d) {
                    due = Some((last, item, p.id.clone(), since));
                }
            }
        }
        let Some((_, item, point, since)) = due else { return false };
        let Ok(vm) = self.receiver.store().vm(&item.to_string()).await else { return false };
        match vm.verify_point_since(&point, since.as_deref(), self.verify_rate).await {
            Ok((_, c)) => tracing::debug!(%item, point, ok = c.ok(), bytes = c.bytes_read, "Recovery point verified"),
            // Merged by retention meanwhile, or a busy replica: the next round picks again.
            Err(e) => {
                tracing::debug!(%item, point, error = %e, "Recovery point not verified");
                return false;
            }
        }
        true
    }

    /// Failover disks: overlays on `point` that become the recovered VM's disks; the replica is
    /// marked failed over, so no replication lands in it until the failover is released.
    pub async fn failover_overlays(&self, item: Uuid, point: &str) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let real = std::fs::canonicalize(self.root.join(item.to_string()))?;
        // `latest`: the newest point this host holds now (it includes a final cycle the vault
        // may not have heard of yet).
        let latest = vm.recovery_points()?.last().map(|p| p.id.clone());
        let point = if point == ferry_repl::replica::LATEST { latest.as_deref().unwrap_or(point) } else { point };
        let ov = vm.begin_failover(point, &real.join("failover")).await?;
        Ok(serde_json::json!({
            "point": ov.point_id,
            "disks": ov.disks.iter().map(|(t, path)| serde_json::json!({"target": t, "path": path})).collect::<Vec<_>>(),
        }))
    }

    /// Drop the failover overlays of `item` (the recovered VM was deleted first): the replica
    /// accepts replication again (FO-4 change of point, cancel). Idempotent.
    pub async fn release_failover(&self, item: Uuid) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let Some(point) = vm.failover_point()? else { return Ok(serde_json::Value::Null) };
        let dir = std::fs::canonicalize(self.root.join(item.to_string()))?.join("failover");
        let disks =
            vm.disks()?.into_iter().map(|d| (d.target.clone(), dir.join(format!("{}.qcow2", d.target)))).collect();
        vm.release_test(&ferry_repl::TestOverlay { point_id: point, tag: "failover".into(), disks }).await?;
        let _ = std::fs::remove_dir(&dir);
        Ok(serde_json::Value::Null)
    }

    /// POL-8, target side: import the offline export of `item` from `<path>/<item>` as the
    /// replica's first point. Verifies every segment first; an interrupted import continues
    /// where it stopped; an import that already finished reports its point again.
    pub async fn import_initial(&self, item: Uuid, path: &str) -> Result<serde_json::Value, ReplicationError> {
        let base = Path::new(path);
        if !base.is_absolute() || base.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(ReplicationError::Invalid(format!("{path} is not an absolute path without '..'")));
        }
        if !self.persisted.lock().await.replicas.iter().any(|r| r.item == item) {
            return Err(ReplicationError::Invalid(format!("{item} is not replicated to this host")));
        }
        let dir = base.join(item.to_string());
        if !dir.is_dir() {
            return Err(ReplicationError::Invalid(format!(
                "{} does not exist; copy the export folder {item} into {path} first",
                dir.display()
            )));
        }
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let r = vm.import_initial(&dir, ferry_repl::offline::ImportOptions::default()).await?;
        Ok(serde_json::json!({
            "point": r.point.id,
            "cycle": r.point.cycle,
            "segments": r.segments,
            "resumed_from_segment": r.resumed_from_segment,
            "data_bytes": r.data_bytes,
            "already_imported": r.already_imported,
        }))
    }

    /// POL-8, source side: the replica imported the export of `cycle`; delta cycles start.
    pub async fn confirm_import(&self, item: Uuid, cycle: u64) -> Result<serde_json::Value, ReplicationError> {
        let slot = self
            .primaries
            .lock()
            .ok()
            .and_then(|p| p.get(&item).cloned())
            .ok_or_else(|| ReplicationError::Invalid(format!("{item} is not replicated from this host")))?;
        let mut primary = slot.lock().await;
        let p = primary.as_mut().ok_or_else(|| {
            ReplicationError::Invalid(format!("The VM of {item} is not running; start it and try again"))
        })?;
        p.confirm_import(cycle)?;
        Ok(serde_json::Value::Null)
    }

    /// FO-4 commit: discard the points newer than the failover point and stop receiving this
    /// replica (the recovered VM runs on its chain now). Idempotent.
    pub async fn commit_failover(&self, item: Uuid) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let discarded = match vm.failover_point()? {
            Some(_) => vm.commit_failover().await?,
            None => vec![],
        };
        let mut p = self.persisted.lock().await;
        if let Some(r) = p.replicas.iter().find(|r| r.item == item) {
            self.allowlist.revoke_pair(&r.source_host_cn, &item.to_string());
        }
        p.replicas.retain(|r| r.item != item);
        write_state(&self.data.join("replication.json"), &p)?;
        Ok(serde_json::json!({ "discarded_points": discarded }))
    }

    /// FO-5: the stopped VM `vm` becomes the base of the replica this host receives back. Its
    /// disks are converted into a new store next to the final one, then the VM and any previous
    /// store of the item are removed and the new store takes its place. A retry after a crash
    /// finds either the VM (and redoes the copy) or the adopted store (and only registers it).
    pub async fn adopt_vm(
        &self,
        vm_name: &str,
        spec: ReplicaSpec,
        vms: &Arc<VmManager>,
    ) -> Result<serde_json::Value, ReplicationError> {
        let item = spec.item.to_string();
        let location = spec.disks.first().map(|d| PathBuf::from(&d.2)).filter(|p| !p.as_os_str().is_empty());
        let parent = match &location {
            Some(loc) => loc.join("ferry-replicas"),
            None => self.data.join("replica-store"),
        };
        let final_dir = parent.join(&item);
        let link = self.root.join(&item);
        if let Some(def) = vms.definition(vm_name).await {
            if vms.running(vm_name).await.is_some()
                && matches!(
                    vms.status(vm_name).await.map(|s| s.power_state),
                    Ok(ferry_types::fabric::PowerState::Running)
                )
            {
                return Err(ReplicationError::Invalid(format!("VM {vm_name} runs; it must be off to be adopted")));
            }
            let staging_root = parent.join(format!(".adopt-{item}"));
            let _ = std::fs::remove_dir_all(&staging_root);
            std::fs::create_dir_all(&staging_root)?;
            let store = ferry_repl::ReplicaStore::open(&staging_root)?;
            let disks: Vec<(String, PathBuf)> =
                def.disks.iter().filter(|d| !d.excluded).map(|d| (d.target.clone(), PathBuf::from(&d.path))).collect();
            store.vm(&item).await?.adopt_existing(&disks, Utc::now()).await?;
            vms.delete(vm_name, true).await.map_err(|e| ReplicationError::Engine(e.to_string()))?;
            if let Ok(old) = std::fs::read_link(&link) {
                let _ = std::fs::remove_dir_all(old);
            }
            let _ = std::fs::remove_file(&link);
            let _ = std::fs::remove_dir_all(&link);
            let _ = std::fs::remove_dir_all(&final_dir);
            std::fs::rename(staging_root.join(&item), &final_dir)?;
            let _ = std::fs::remove_dir_all(&staging_root);
            // Tracking state of this host's earlier role as a source of the item is void now.
            let _ = std::fs::remove_dir_all(self.data.join("staging").join(&item));
        } else if !final_dir.exists() {
            return Err(ReplicationError::Invalid(format!("VM {vm_name} is not defined on this host")));
        }
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&final_dir, &link)?;
        }
        if let Some(origin) = &spec.origin {
            let rec =
                crate::onboard::OriginRecord { origin: origin.clone(), item: spec.item, vm_name: spec.vm_name.clone() };
            crate::onboard::write_origin(&final_dir, &rec)?;
        }
        self.allowlist.allow_replica(&spec.source_host_cn, &item, &item);
        let mut p = self.persisted.lock().await;
        p.sources.retain(|s| s.item != spec.item);
        p.replicas.retain(|r| r.item != spec.item);
        p.replicas.push(spec);
        write_state(&self.data.join("replication.json"), &p)?;
        Ok(serde_json::json!({"receiver": self.address().to_string()}))
    }

    pub async fn release_test(&self, item: Uuid) -> Result<serde_json::Value, ReplicationError> {
        let rec = self.persisted.lock().await.tests.iter().find(|t| t.item == item).cloned();
        if let Some(rec) = rec {
            let vm = self.receiver.store().vm(&item.to_string()).await?;
            let ov =
                ferry_repl::TestOverlay { point_id: rec.point.clone(), tag: rec.tag.clone(), disks: rec.disks.clone() };
            vm.release_test(&ov).await?;
            if let Some((_, first)) = rec.disks.first() {
                if let Some(dir) = first.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            let mut p = self.persisted.lock().await;
            p.tests.retain(|t| t.item != item);
            write_state(&self.data.join("replication.json"), &p)?;
        }
        Ok(serde_json::Value::Null)
    }

    /// The replicated item of a VM, if this host replicates it.
    pub async fn item_of(&self, vm_name: &str) -> Option<Uuid> {
        self.persisted.lock().await.sources.iter().find(|s| s.vm_name == vm_name).map(|s| s.item)
    }

    /// Run one cycle now (after the guest powered off: the final state, for a shutdown or a
    /// planned failover with no data loss, FO-2). Waits for a cycle in progress to end first;
    /// a failed cycle is retried (its changes fold into the next attempt, each attempt at the
    /// replica host's address of now) for up to [`FINAL_CYCLE_PATIENCE`].
    pub async fn final_cycle(&self, item: Uuid, vms: &VmManager) -> Result<(), ReplicationError> {
        let started = Instant::now();
        let mut attempt = 1;
        let mut pause = FINAL_CYCLE_RETRY;
        loop {
            match self.final_cycle_once(item, vms).await {
                Err(e)
                    if started.elapsed() + pause < FINAL_CYCLE_PATIENCE
                        && !matches!(e, ReplicationError::Invalid(_)) =>
                {
                    tracing::warn!(%item, attempt, error = %e, retry_in = ?pause, "final replication cycle failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(FINAL_CYCLE_RETRY_MAX);
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn final_cycle_once(&self, item: Uuid, vms: &VmManager) -> Result<(), ReplicationError> {
        let slot = self.primaries.lock().ok().and_then(|p| p.get(&item).cloned());
        let Some(slot) = slot else {
            return Err(ReplicationError::Invalid(format!("{item} is not replicated from this host")));
        };
        let mut guard = slot.lock().await;
        if guard.is_none() {
            // The loop let its Primary go after a failed cycle and makes a new one at its next
            // cycle; the final cycle cannot wait for that.
            let made = self.primary_configs.lock().ok().and_then(|c| c.get(&item).cloned());
            let (mut cfg, vm_name) =
                made.ok_or_else(|| ReplicationError::Invalid(format!("replication of {item} has not started")))?;
            // The replica host may have moved since the loop's last cycle (restarted on a new
            // address): use where it is now.
            if let Some(addr) = self.live_settings(item).await.and_then(|l| l.peer) {
                cfg.peer_addr = addr;
                cfg.peer_name = addr.ip().to_string();
            }
            let vm = vms
                .running(&vm_name)
                .await
                .ok_or_else(|| ReplicationError::Invalid(format!("VM {vm_name} is not running")))?;
            *guard = Some(Primary::new(cfg, vm)?);
        }
        let p = guard
            .as_mut()
            .ok_or_else(|| ReplicationError::Invalid(format!("replication of {item} has not started")))?;
        // A QEMU restarted since the last cycle (a crash, then started again) lost its change
        // tracking: the final state still reaches the replica, by a block-hash comparison
        // (REP-6) instead of a delta.
        let result = match p.tracking().await {
            Ok(ferry_repl::TrackingState::ResyncRequired { reason }) => {
                tracing::warn!(%item, %reason, "final cycle: change tracking lost; comparing with the replica");
                compare_with_replica(p).await
            }
            Ok(_) => p.run_cycle(false).await,
            Err(e) => Err(e),
        };
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                // The next attempt takes up the VM's QEMU of now (this one may be gone).
                *guard = None;
                return Err(e.into());
            }
        };
        let point_time = p.counters().last_point.unwrap_or_else(Utc::now);
        if let Ok(mut s) = self.sources.lock() {
            if let Some(st) = s.get_mut(&item) {
                st.record_success(CycleCost::of(&report), point_time, Instant::now(), false);
            }
        }
        Ok(())
    }

    /// Retention on every replica this host holds (RP-2, POL-4): merge points outside the
    /// window and keep chains short; points in use are never touched.
    pub async fn apply_retention(&self) {
        let replicas = self.persisted.lock().await.replicas.clone();
        for r in replicas {
            let Ok(vm) = self.receiver.store().vm(&r.item.to_string()).await else { continue };
            if let Err(e) = vm.apply_retention(r.retention_hours, ferry_core::retention::DEFAULT_MAX_CHAIN_DEPTH).await
            {
                tracing::warn!(item = %r.item, error = %e.chain(), "retention failed; retried later");
            }
        }
    }

    /// Take the replication addresses the site passed on; wake the loops whose replica host
    /// moved, so they replicate to it at once.
    pub async fn apply_peers(&self, peers: &[ReplicationPeer]) {
        let changed = self.peers.update(peers);
        if changed.is_empty() {
            return;
        }
        let sources = self.persisted.lock().await.sources.clone();
        for s in sources.iter().filter(|s| changed.contains(&s.target_host_cn)) {
            tracing::info!(item = %s.item, replica = %s.target_host_cn, "replica host address resolved");
            self.wake(s.item);
        }
    }

    /// POL-9: the policy of each pair as the site pushed it applies from the next cycle to every
    /// item of the pair this host replicates (frequency, compression, app-consistent frequency,
    /// port) or receives (retention). Only newer policy versions are taken.
    pub async fn apply_pairs(&self, pairs: &[PairConfig]) {
        let mut woken = Vec::new();
        let mut p = self.persisted.lock().await;
        let mut changed = false;
        for s in p.sources.iter_mut() {
            let Some(pair) = s.mapping.and_then(|m| pairs.iter().find(|x| x.mapping == m)) else { continue };
            if pair.policy_version > s.policy_version {
                tracing::info!(item = %s.item, from = s.policy_version, to = pair.policy_version, frequency = pair.policy.copy_frequency_secs, compression = pair.policy.compression, "policy edit applies from the next cycle (POL-9)");
                s.policy = pair.policy.clone();
                s.policy_version = pair.policy_version;
                woken.push(s.item);
                changed = true;
            }
        }
        for r in p.replicas.iter_mut() {
            let Some(pair) = r.mapping.and_then(|m| pairs.iter().find(|x| x.mapping == m)) else { continue };
            if pair.policy_version > r.policy_version {
                tracing::info!(item = %r.item, retention_hours = pair.policy.recovery_point_retention_hours, "policy edit applies to the replica's retention (POL-9)");
                r.retention_hours = pair.policy.recovery_point_retention_hours;
                r.policy_version = pair.policy_version;
                changed = true;
            }
        }
        if changed {
            if let Err(e) = write_state(&self.data.join("replication.json"), &p) {
                tracing::warn!(error = %e, "cannot record the policy edit; it is applied again at the next report");
            }
        }
        drop(p);
        for item in woken {
            self.wake(item);
        }
    }

    fn wake(&self, item: Uuid) {
        if let Some(w) = self.wakes.lock().ok().and_then(|w| w.get(&item).cloned()) {
            w.notify_one();
        }
    }

    /// The bandwidth limit in force now (bytes per second), if the host has one (CAP-2).
    pub fn bandwidth_now(&self) -> Option<u64> {
        self.limiter.as_ref().and_then(|l| l.rate_now())
    }

    /// CAP-2 per site: follow the schedule the site pushed, unless this host's own
    /// configuration sets one (the host's own setting wins). `None` = unlimited.
    pub fn apply_site_bandwidth(&self, schedule: Option<ferry_repl::RateSchedule>) {
        if let Some(l) = &self.limiter {
            let s = effective_bandwidth(self.own_bandwidth.as_ref(), schedule);
            if l.schedule() != s {
                tracing::info!(schedule = ?s, "bandwidth schedule from the site");
                l.set_schedule(s);
            }
        }
    }

    /// Cycle-duration histograms of every VM this host replicates (host metrics).
    pub fn histograms(&self) -> Vec<(Uuid, crate::source_status::CycleHistograms)> {
        self.sources.lock().map(|s| s.iter().map(|(k, v)| (*k, v.histograms.clone())).collect()).unwrap_or_default()
    }

    /// Status of every replication on this host (source loops and received replicas).
    pub async fn statuses(&self) -> Vec<ReplicationStatus> {
        let mut out = Vec::new();
        let items: Vec<Uuid> = self.sources.lock().map(|s| s.keys().copied().collect()).unwrap_or_default();
        let bandwidth = self.bandwidth_now();
        for item in items {
            // REP-5: data waiting is what the tracking bitmaps hold now (unless a cycle runs:
            // then the figure its loop recorded last).
            let slot = self.primaries.lock().ok().and_then(|p| p.get(&item).cloned());
            let waiting_now = match slot.as_ref().and_then(|s| s.try_lock().ok()) {
                Some(guard) => match guard.as_ref() {
                    Some(p) => {
                        tokio::time::timeout(Duration::from_secs(2), p.data_waiting()).await.ok().and_then(Result::ok)
                    }
                    None => None,
                },
                None => None,
            };
            let now = Instant::now();
            let Some(s) = self.sources.lock().ok().and_then(|mut m| {
                let st = m.get_mut(&item)?;
                if let Some(w) = waiting_now {
                    st.data_waiting = w;
                }
                Some(st.clone())
            }) else {
                continue;
            };
            let (expected, ok) = s.hour_counts(now);
            out.push(ReplicationStatus {
                item,
                role: PairRole::Source,
                phase: s.phase,
                initial_progress: if s.cycles_ok > 0 { 100 } else { 0 },
                last_sync: s.last_sync,
                clock_offset_ms: None,
                cycles_ok: s.cycles_ok,
                cycles_failed: s.cycles_failed,
                avg_delta_bytes: s.avg_delta_bytes(),
                max_delta_bytes: s.max_delta_bytes(),
                avg_latency_ms: s.avg_latency_ms(),
                data_waiting_bytes: s.data_waiting,
                initial_bytes: s.initial_bytes,
                consistency_fallbacks: s.consistency_fallbacks,
                last_warning: s.last_warning.clone(),
                last_error: s.last_error.clone(),
                recovery_points: vec![],
                interval_secs: s.interval.as_secs(),
                cycles_expected_hour: expected,
                cycles_ok_hour: ok,
                last_point: s.last_point,
                failing_since: s.failing_since,
                failure: s.failure,
                policy_version: s.policy_version,
                bandwidth_bytes_per_sec: bandwidth,
                recent_cycles: s.recent_cycles(),
            });
        }
        let replicas = self.persisted.lock().await.replicas.clone();
        for r in replicas {
            let points = match self.receiver.store().vm(&r.item.to_string()).await {
                Ok(vm) => vm.recovery_points().unwrap_or_default(),
                Err(_) => vec![],
            };
            let mut st = ReplicationStatus::new(r.item, PairRole::Target, ReplicationPhase::Replicating);
            st.last_sync = points.last().map(|p| p.time);
            st.last_point = st.last_sync;
            st.cycles_ok = points.len() as u64;
            st.policy_version = Some(r.policy_version);
            st.recovery_points = points
                .iter()
                .map(|p| RecoveryPoint {
                    id: p.id.clone(),
                    time: p.time,
                    app_consistent: p.app_consistent,
                    size_bytes: p.bytes,
                    verification: p.check.as_ref().map(point_verification),
                })
                .collect();
            out.push(st);
        }
        out
    }
}

/// A replica point's verification as the vault sees it (RP-1).
fn point_verification(c: &ferry_repl::manifest::PointCheck) -> ferry_types::protection::PointVerification {
    ferry_types::protection::PointVerification {
        at: c.at,
        sealed: c.sealed,
        ok: c.ok(),
        damage: c
            .damage
            .iter()
            .map(|d| format!("{} {}+{} MiB: {}", d.target, d.offset >> 20, d.len.div_ceil(1 << 20), d.detail))
            .collect(),
    }
}

/// The replication this host runs as the source of `item`.
fn source_spec(p: &Persisted, item: Uuid) -> Result<ReplicationSpec, ReplicationError> {
    p.sources
        .iter()
        .find(|s| s.item == item)
        .cloned()
        .ok_or_else(|| ReplicationError::Invalid(format!("{item} is not replicated from this host")))
}

/// Minutes after midnight, local time (the windows' clock).
fn minute_now() -> u16 {
    use chrono::Timelike;
    let now = chrono::Local::now();
    (now.hour() * 60 + now.minute()) as u16
}

fn fmt_window(w: &ferry_repl::RateWindow) -> String {
    format!("{:02}:{:02}-{:02}:{:02}", w.start_min / 60, w.start_min % 60, w.end_min / 60, w.end_min % 60)
}

/// REP-6 / FO-5: compare block hashes with the replica and send the differences.
async fn compare_with_replica(p: &mut Primary) -> Result<ferry_repl::CycleReport, ferry_repl::Error> {
    match p.resync(&ferry_repl::ResyncLimits::default()).await {
        Ok(ferry_repl::ResyncOutcome::Completed { report, .. }) => Ok(*report),
        Ok(ferry_repl::ResyncOutcome::Paused { .. }) => Err(ferry_repl::Error::new(
            ferry_repl::ErrorKind::ResyncRequired,
            "Comparison paused; it continues next cycle",
        )),
        Err(e) => Err(e),
    }
}

/// CAP-2: the schedule a host follows: its own configuration's if set, else its site's, else
/// none (unlimited).
fn effective_bandwidth(
    own: Option<&ferry_repl::RateSchedule>,
    site: Option<ferry_repl::RateSchedule>,
) -> ferry_repl::RateSchedule {
    own.cloned().or(site).unwrap_or_default()
}

/// The health reason's wording of a failed cycle: who could not reach whom, and why.
fn explain_failure(cause: FailureCause, target: &str, addr: SocketAddr, e: &ferry_repl::Error) -> String {
    let chain = e.chain();
    match cause {
        FailureCause::Unreachable => {
            // The engine says "Cannot connect to <addr>: …": keep only the cause after it.
            let cause = chain.strip_prefix(&format!("Cannot connect to {addr}: ")).unwrap_or(&chain);
            format!("cannot connect to {target} at {addr}: {cause}")
        }
        FailureCause::Refused => format!("{target} refuses this host: {chain}"),
        FailureCause::ReplicaFull => format!("replica location full on {target}: {chain}"),
        FailureCause::ReplicaPaused => format!("{target} does not take cycles now: {chain}"),
        FailureCause::VmNotRunning | FailureCause::Other => chain,
    }
}

/// A cycle could not even start (no QEMU, no capture): a missed cycle with its cause.
fn fail(
    sources: &std::sync::Mutex<HashMap<Uuid, SourceStatus>>,
    item: Uuid,
    cause: FailureCause,
    message: String,
    started: Instant,
) {
    if let Ok(mut s) = sources.lock() {
        if let Some(st) = s.get_mut(&item) {
            st.record_failure(cause, message, started.elapsed(), Instant::now());
        }
    }
}

/// Wait up to `d` before a loop's next cycle (a wake ends it early), counted as `kind`.
async fn pause_for(
    sources: &std::sync::Mutex<HashMap<Uuid, SourceStatus>>,
    item: Uuid,
    wake: &tokio::sync::Notify,
    d: Duration,
    kind: Wait,
) {
    let t = Instant::now();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = wake.notified() => {}
    }
    if let Ok(mut s) = sources.lock() {
        if let Some(st) = s.get_mut(&item) {
            st.add_wait(kind, t.elapsed());
        }
    }
}

fn set_error(sources: &std::sync::Mutex<HashMap<Uuid, SourceStatus>>, item: Uuid, e: String) {
    if let Ok(mut s) = sources.lock() {
        if let Some(st) = s.get_mut(&item) {
            st.last_error = Some(e);
        }
    }
}

fn set_phase(sources: &std::sync::Mutex<HashMap<Uuid, SourceStatus>>, item: Uuid, phase: ReplicationPhase) {
    if let Ok(mut s) = sources.lock() {
        if let Some(st) = s.get_mut(&item) {
            st.phase = phase;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_2_host_setting_wins_over_the_site_schedule() {
        let own = ferry_repl::RateSchedule::constant(64 << 20);
        let site = ferry_repl::RateSchedule::constant(32 << 20);
        assert_eq!(effective_bandwidth(Some(&own), Some(site.clone())), own);
        assert_eq!(effective_bandwidth(None, Some(site.clone())), site);
        assert_eq!(effective_bandwidth(None, None).rate_at(600), None, "no setting anywhere: unlimited");
    }
}
