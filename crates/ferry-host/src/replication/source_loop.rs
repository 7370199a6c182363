//! The replication loop a host runs as the source of one protected VM: cycles on the copy
//! frequency (or the live policy), bandwidth and resync windows, retries with backoff and the
//! failure classes reported to the vault, pause and wake-ups. Started by
//! [`ReplicationService::start_source`] and at the agent's start.

use super::*;

impl ReplicationService {
    pub(super) async fn spawn_loop(
        self: &Arc<Self>,
        spec: ReplicationSpec,
        vms: Arc<VmManager>,
    ) -> Result<(), ReplicationError> {
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
        // A replica host whose certificate the vault revoked is refused, as it refuses ours.
        let tls = self.identity.peer_client_config_checked(&spec.target_host_cn, Some(self.allowlist.revocations()))?;
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
        // SEC-3: the export's manifest is sealed with the item's key from the vault.
        let offline_key = match spec.offline_key.as_deref().map(ferry_repl::offline::ExportKey::from_hex).transpose() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(item = %item, error = %e.chain(), "the offline export key is unusable; the export is not sealed");
                None
            }
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
                            match p.export_initial_sealed(dir, offline_key.clone()).await {
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
}
