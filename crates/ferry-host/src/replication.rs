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

mod replica_ops;
mod source_loop;
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

    /// SEC-3: check the chain of every replica this host keeps (every layer the catalogue
    /// names exists and reads, metadata only); a broken chain is recorded on its points, which
    /// the next report carries to the vault (the item's health turns Critical naming the
    /// point). Returns the number of damaged points found.
    pub async fn check_replica_chains(&self) -> usize {
        let replicas = self.persisted.lock().await.replicas.clone();
        let mut damaged = 0;
        for r in replicas {
            let Ok(vm) = self.receiver.store().vm(&r.item.to_string()).await else { continue };
            match vm.check_chains().await {
                Ok(points) => damaged += points.len(),
                Err(e) => tracing::warn!(item = %r.item, error = %e.chain(), "cannot check the replica's chain"),
            }
        }
        damaged
    }

    /// SEC-1: certificates the vault revoked are refused by this host's receiver from now on
    /// (the site keeps the vault's last list while the vault is unreachable).
    pub fn apply_revoked_certificates(&self, fingerprints: &[String]) {
        self.allowlist.set_revoked_certificates(fingerprints);
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
