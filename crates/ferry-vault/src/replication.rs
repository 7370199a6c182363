//! Applying replication status reported by sites to protected items: statistics (REP-5),
//! recovery points (RP-1), state changes (JOB-3) and health (JOB-2). When initial replication
//! completes, the item becomes Protected and a "Finalize protection" job is recorded (REP-1).

use ferry_core::state::Event;
use ferry_store::DocKind;
use ferry_types::alert::{AlertKind, AlertObject};
use ferry_types::event::Severity;
use ferry_types::protection::{Health, ProtectedItem, ReplicationState};
use ferry_types::site_protocol::{FailureCause, PairRole, ReplicationPhase, ReplicationStatus};
use ferry_types::ApiError;
use uuid::Uuid;

use crate::alerts::AlertOf;
use crate::state::AppState;

/// Read-modify-write of an item with optimistic concurrency (retries on a concurrent change).
pub async fn update_item<F>(
    state: &AppState,
    vault: Uuid,
    id: Uuid,
    mut f: F,
) -> Result<Option<ProtectedItem>, ApiError>
where
    F: FnMut(&mut ProtectedItem),
{
    for _ in 0..10 {
        let Some(doc) = state
            .store
            .get_doc::<ProtectedItem>(DocKind::ProtectedItem, vault, &id.to_string())
            .await
            .map_err(|e| ApiError::new("StoreError", e.to_string()))?
        else {
            return Ok(None);
        };
        let mut item = doc.body;
        let before = item.clone();
        f(&mut item);
        refresh_health(state, &mut item);
        if item == before {
            return Ok(Some(item));
        }
        let changes = health_changes(&before, &item);
        let res = if changes.is_empty() {
            put_item(&mut PutOn::Pool(&state.store), vault, &item, doc.version).await
        } else {
            put_item_with_events(state, vault, &item, doc.version, changes).await
        };
        match res {
            Ok(()) => return Ok(Some(item)),
            Err(e) if e.kind == ferry_store::ErrorKind::VersionMismatch => continue,
            Err(e) => return Err(ApiError::new("StoreError", e.to_string())),
        }
    }
    Err(ApiError::new("Busy", "The protected item changed concurrently; retry"))
}

/// Where an item is written: directly, or inside a transaction with its event.
enum PutOn<'a, 'b> {
    Pool(&'a ferry_store::Store),
    Tx(&'a mut ferry_store::Tx<'b>),
}

async fn put_item(
    on: &mut PutOn<'_, '_>,
    vault: Uuid,
    item: &ProtectedItem,
    version: i64,
) -> Result<(), ferry_store::Error> {
    let (id, parent, unique) =
        (item.id.to_string(), item.container_mapping.to_string(), format!("vm:{}/{}", item.source.fabric, item.vm_id));
    let kind = DocKind::ProtectedItem;
    match on {
        PutOn::Pool(store) => store.put_doc(kind, vault, &id, Some(&parent), Some(&unique), item, Some(version)).await,
        PutOn::Tx(tx) => {
            ferry_store::Store::put_doc_tx(tx, kind, vault, &id, Some(&parent), Some(&unique), item, Some(version))
                .await
        }
    }
    .map(|_| ())
}

/// A change of an item's health into or out of Critical (JOB-4): the event, and for the way in,
/// the alert.
struct HealthChange {
    severity: Severity,
    kind: &'static str,
    message: String,
    alert: Option<AlertOf>,
}

/// The stall reason among an item's health reasons, if any.
fn stall_of(item: &ProtectedItem) -> Option<&str> {
    item.health_reasons
        .iter()
        .find_map(|r| r.strip_prefix(ferry_core::health::STALLED).and_then(|m| m.strip_prefix(": ")))
}

fn item_object(item: &ProtectedItem) -> Option<AlertObject> {
    Some(AlertObject { object_type: "ProtectedItem".into(), id: item.id.to_string(), name: item.name.clone() })
}

/// The events (and alerts) a health change raises: a stall and its end (`ReplicationStalled`,
/// `ReplicationRecovered`, JOB-2), and any other way into or out of Critical (`HealthCritical`,
/// `HealthRecovered`). One event and one alert per transition.
fn health_changes(before: &ProtectedItem, after: &ProtectedItem) -> Vec<HealthChange> {
    let mut out = Vec::new();
    let (was_stalled, stalled) = (stall_of(before).is_some(), stall_of(after));
    match (was_stalled, stalled) {
        (false, Some(why)) => out.push(HealthChange {
            severity: Severity::Critical,
            kind: "ReplicationStalled",
            message: format!(
                "Replication of {} from {} to {} stalled: {why}",
                after.name, after.source.host_name, after.target.host_name
            ),
            alert: Some(AlertOf { kind: AlertKind::ReplicationStalled, object: item_object(after) }),
        }),
        (true, None) => out.push(HealthChange {
            severity: Severity::Info,
            kind: "ReplicationRecovered",
            message: format!(
                "Replication of {} from {} to {} recovered: newest recovery point {}",
                after.name,
                after.source.host_name,
                after.target.host_name,
                after.stats.latest_point.map(ferry_core::health::fmt_time).unwrap_or_else(|| "unknown".into())
            ),
            alert: Some(AlertOf { kind: AlertKind::ReplicationRecovered, object: item_object(after) }),
        }),
        _ => {}
    }
    let stall_event = was_stalled != stalled.is_some();
    match (before.health == Health::Critical, after.health == Health::Critical) {
        // Critical because it stalled: the stall event says so.
        (false, true) if !(stall_event && stalled.is_some()) => out.push(HealthChange {
            severity: Severity::Critical,
            kind: "HealthCritical",
            message: format!(
                "Replication health of {} is Critical: {}",
                after.name,
                after.health_reasons.iter().filter(|r| !r.is_empty()).cloned().collect::<Vec<_>>().join("; ")
            ),
            alert: Some(AlertOf { kind: AlertKind::CriticalHealth, object: item_object(after) }),
        }),
        (true, false) if !(stall_event && stalled.is_none()) => out.push(HealthChange {
            severity: Severity::Info,
            kind: "HealthRecovered",
            message: format!("Replication health of {} is {:?} again", after.name, after.health),
            alert: None,
        }),
        _ => {}
    }
    out
}

/// Write the item, its health events and their alerts in one transaction, so an alert is
/// raised exactly by the write that changed the health.
async fn put_item_with_events(
    state: &AppState,
    vault: Uuid,
    item: &ProtectedItem,
    version: i64,
    changes: Vec<HealthChange>,
) -> Result<(), ferry_store::Error> {
    let v = crate::alerts::vault_of(state, vault).await;
    let mut tx = state.store.begin().await?;
    put_item(&mut PutOn::Tx(&mut tx), vault, item, version).await?;
    let object_id = item.id.to_string();
    let mut queued = false;
    for change in changes {
        let ev = ferry_store::NewEvent {
            vault,
            time: state.clock.now(),
            severity: change.severity,
            kind: change.kind,
            message: &change.message,
            fabric: Some(item.source.fabric),
            object_id: Some(&object_id),
        };
        queued |= crate::alerts::record_tx(&mut tx, &v, ev, change.alert.as_ref()).await?;
    }
    ferry_store::Store::commit(tx).await?;
    if queued {
        state.alerts.queued.notify_one();
    }
    Ok(())
}

/// The one place an item's state is written (JOB-3): the state [`transition`] gives for
/// `event`; (from, to). A test keeps every other write of an item's state out of the vault.
///
/// [`transition`]: ferry_core::state::transition
pub fn set_by_transition(
    item: &mut ProtectedItem,
    event: Event,
) -> Result<(ReplicationState, ReplicationState), ferry_core::Error> {
    let from = item.state;
    let to = ferry_core::state::transition(from, event)?;
    item.state = to;
    Ok((from, to))
}

/// Apply `event` to item `id` (an operation's preparation or a job's step), with `more`
/// changes in the same write; the new state. An event that took effect before (a step run again
/// after a restart) changes the state no further but still applies `more`; one that does not fit
/// the state is refused (`InvalidStateTransition` / `OperationNotAllowed`) and changes nothing.
pub async fn apply_event_with<F>(
    state: &AppState,
    vault: Uuid,
    id: Uuid,
    event: Event,
    mut more: F,
) -> Result<ReplicationState, ApiError>
where
    F: FnMut(&mut ProtectedItem),
{
    let mut outcome = Err(ApiError::new("ProtectedItemNotFound", format!("Protected item {id} not found")));
    update_item(state, vault, id, |i| {
        outcome = match set_by_transition(i, event) {
            Ok((_, to)) => {
                more(i);
                Ok(to)
            }
            Err(_) if ferry_core::state::already_applied(i.state, event) => {
                more(i);
                Ok(i.state)
            }
            Err(e) => Err(ApiError::new(e.code(), e.to_string())),
        };
    })
    .await?;
    outcome
}

/// An operator's operation as the API prepares it (before its job): a refusal is a 409.
pub async fn apply_operation(
    state: &AppState,
    vault: Uuid,
    id: Uuid,
    op: ferry_types::protection::Operation,
) -> Result<ReplicationState, crate::error::ApiFailure> {
    apply_event(state, vault, id, Event::Operation(op))
        .await
        .map_err(|e| crate::error::ApiFailure::with(axum::http::StatusCode::CONFLICT, e))
}

/// [`apply_event_with`] and nothing more.
pub async fn apply_event(state: &AppState, vault: Uuid, id: Uuid, event: Event) -> Result<ReplicationState, ApiError> {
    apply_event_with(state, vault, id, event, |_| {}).await
}

/// States in which the source host runs cycles (a failure then counts).
fn replicating(state: ReplicationState) -> bool {
    matches!(
        state,
        ReplicationState::Protected
            | ReplicationState::ResyncRequired
            | ReplicationState::Resynchronizing
            | ReplicationState::WaitingForInitialReplication
            | ReplicationState::InitialReplicationInProgress
            | ReplicationState::ReverseReplicating
    )
}

/// JOB-2 stall detection input of an item.
pub fn stall_input(item: &ProtectedItem) -> ferry_core::health::StallInput {
    let active = replicating(item.state);
    ferry_core::health::StallInput {
        cycles_expected: item.state == ReplicationState::Protected,
        copy_frequency_secs: if item.stats.interval_secs > 0 { item.stats.interval_secs } else { 300 },
        last_good: item.stats.latest_point.max(item.stats.last_sync),
        protected_since: Some(item.created_at),
        failing_since: item.stats.failing_since.filter(|_| active),
        failure: item.stats.failure.filter(|_| active),
        failure_message: item.stats.last_error.clone().filter(|_| active),
        source_host: item.source.host_name.clone(),
        source_last_report: item.stats.last_report,
        target_host: item.target.host_name.clone(),
    }
}

/// Recompute an item's health and RPO as of now (JOB-2, REP-5).
pub fn refresh_health(state: &AppState, item: &mut ProtectedItem) {
    let now = state.clock.now();
    let mut input = ferry_core::health::HealthInput::for_state(item.state);
    input.last_sync = item.stats.last_sync;
    input.source_clock = item
        .stats
        .source_clock_offset_ms
        .filter(|_| replicating(item.state))
        .map(|ms| (item.source.host_name.clone(), chrono::Duration::milliseconds(ms)));
    input.point_damage = ferry_core::health::point_damage(&item.recovery_points);
    input.cycles_missed = item.stats.cycles_missed_hour;
    input.cycles_expected = item.stats.cycles_expected_hour;
    let active = replicating(item.state);
    input.replica_full = active && item.stats.failure == Some(FailureCause::ReplicaFull);
    input.replica_paused =
        item.state == ReplicationState::Protected && item.stats.failure == Some(FailureCause::ReplicaPaused);
    let stall = stall_input(item);
    let limit = ferry_core::health::stall_after(stall.copy_frequency_secs);
    input.primary_cannot_send = item.state == ReplicationState::Protected
        && (stall.source_last_report.is_some_and(|t| now - t > limit)
            || (item.stats.failure == Some(FailureCause::VmNotRunning)
                && stall.failing_since.is_some_and(|t| now - t > limit)));
    input.stall = Some(stall);
    let (health, reasons) = ferry_core::health::compute_health(&input, now);
    item.health = health;
    item.health_reasons = reasons.into_iter().map(|r| format!("{}: {}", r.code, r.message)).collect();
}

/// The item as an API reader sees it: its RPO now (REP-5).
pub fn present(item: &mut ProtectedItem, now: chrono::DateTime<chrono::Utc>) {
    item.stats.rpo_secs = ferry_core::health::rpo_secs(item.stats.latest_point, now);
    item.stats.rpo_explanation = (item.stats.interval_secs > 0).then(|| {
        ferry_core::rpo::explain(
            &item.stats.recent_cycles,
            item.stats.interval_secs,
            item.stats.churn_bytes_per_sec,
            item.stats.bandwidth_bytes_per_sec,
        )
    });
}

/// Re-check the health of every item of every vault, so a stall is seen even when no report
/// arrives (the source host or its site is gone). Writes only items whose health changed.
pub async fn sweep_health(state: &AppState) {
    let Ok(vaults) = state.store.list_vaults().await else { return };
    for (body, _) in vaults {
        let Ok(v) = serde_json::from_value::<ferry_types::vault::Vault>(body) else { continue };
        let Ok(items) = state.store.all_docs::<ProtectedItem>(DocKind::ProtectedItem, v.id).await else { continue };
        for doc in items {
            let mut probe = doc.body.clone();
            refresh_health(state, &mut probe);
            if probe.health != doc.body.health || probe.health_reasons != doc.body.health_reasons {
                if let Err(e) = update_item(state, v.id, doc.body.id, |_| {}).await {
                    tracing::warn!(item = %doc.body.id, error = %e, "cannot record the item's health");
                }
            }
        }
    }
}

/// Run [`sweep_health`] every `period`, after a first wait of `grace` (the sites report again
/// after a restart of the vault before anything counts as silent).
pub async fn health_sweeper(state: AppState, period: std::time::Duration, grace: std::time::Duration) {
    tokio::time::sleep(grace).await;
    loop {
        sweep_health(&state).await;
        tokio::time::sleep(period).await;
    }
}

/// Whether a replica host's list of recovery points is taken for an item in `state`. Not once the
/// failover is committed: the commit discarded the points and the host stops reporting the item,
/// so a report taken just before the discard (arriving after it) would bring them back for good.
fn takes_target_points(state: ReplicationState) -> bool {
    state != ReplicationState::Committed
}

/// Apply the replication statuses site `fabric` reported. A status is taken only for the side
/// of an item that lies at that site (its source for `Source`, its target for `Target`): a
/// site cannot report another site's item as protected, nor its points or health.
///
/// Times a host reports are on its clock: they are brought to the vault's with the host's
/// offset to its site (`clock_offset_ms`) and the site's to the vault (`site_offset_ms`), so a
/// host with a wrong clock shows neither a false stall nor a false RPO.
pub async fn apply_statuses(
    state: &AppState,
    vault: Uuid,
    fabric: Uuid,
    site_offset_ms: Option<i64>,
    statuses: &[ReplicationStatus],
) {
    for s in statuses {
        let offset_ms = match (s.clock_offset_ms, site_offset_ms) {
            (None, None) => None,
            (h, site) => Some(h.unwrap_or(0) + site.unwrap_or(0)),
        };
        let on_vault_clock = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t - chrono::Duration::milliseconds(offset_ms.unwrap_or(0)))
        };
        let side_ok =
            match state.store.get_doc::<ProtectedItem>(DocKind::ProtectedItem, vault, &s.item.to_string()).await {
                Ok(Some(d)) => match s.role {
                    PairRole::Source => d.body.source.fabric == fabric,
                    PairRole::Target => d.body.target.fabric == fabric,
                },
                _ => false,
            };
        if !side_ok {
            tracing::warn!(item = %s.item, %fabric, role = ?s.role, "a site reported replication of an item side it does not hold; ignored");
            continue;
        }
        let mut finalized = None;
        let mut reversed = None;
        let mut fallback = None;
        let mut exported = None;
        let mut policy_applied = None;
        let now = state.clock.now();
        let res = update_item(state, vault, s.item, |item| match s.role {
            PairRole::Source => {
                // POL-5: a new fallback to crash-consistent raises a warning (a restarted agent
                // counts from zero again).
                if s.consistency_fallbacks > item.stats.consistency_fallbacks {
                    fallback = Some((item.name.clone(), s.last_warning.clone().unwrap_or_default()));
                }
                item.stats.consistency_fallbacks = s.consistency_fallbacks;
                item.stats.initial_progress = s.initial_progress;
                item.stats.initial_bytes = s.initial_bytes;
                item.stats.source_clock_offset_ms = offset_ms;
                item.stats.last_sync = on_vault_clock(s.last_sync).or(item.stats.last_sync);
                item.stats.cycles_ok = s.cycles_ok;
                item.stats.cycles_missed = s.cycles_failed;
                item.stats.avg_delta_bytes = s.avg_delta_bytes;
                item.stats.max_delta_bytes = s.max_delta_bytes;
                item.stats.avg_latency_ms = s.avg_latency_ms;
                item.stats.data_waiting_bytes = s.data_waiting_bytes;
                item.stats.awaiting_import = s.phase == ReplicationPhase::WaitingForImport;
                // JOB-2 / REP-5: the missed-cycle share of the last hour, why cycles fail, and
                // where the time between points went.
                item.stats.last_report = Some(now);
                item.stats.interval_secs = s.interval_secs;
                item.stats.cycles_expected_hour = s.cycles_expected_hour;
                item.stats.cycles_missed_hour = s.cycles_expected_hour.saturating_sub(s.cycles_ok_hour);
                item.stats.failing_since = on_vault_clock(s.failing_since);
                item.stats.failure = s.failure;
                item.stats.last_error = s.last_error.clone();
                item.stats.latest_point = item.stats.latest_point.max(on_vault_clock(s.last_point));
                item.stats.bandwidth_bytes_per_sec = s.bandwidth_bytes_per_sec;
                item.stats.churn_bytes_per_sec = churn_rate(&s.recent_cycles);
                item.stats.recent_cycles = s.recent_cycles.clone();
                if let (Some(was), Some(now_v)) = (item.stats.policy_version, s.policy_version) {
                    if now_v > was {
                        policy_applied = Some((item.name.clone(), now_v, s.interval_secs));
                    }
                }
                item.stats.policy_version = s.policy_version.or(item.stats.policy_version);
                // The reported phase is an event of the item's state machine; one that does
                // not fit the state now (a report from before an operation) changes nothing.
                let moved = Event::reported(s.phase).and_then(|e| set_by_transition(item, e).ok());
                match moved {
                    // POL-8: the offline export is complete; the import completes protection.
                    Some((
                        ReplicationState::InitialReplicationInProgress,
                        ReplicationState::WaitingForInitialReplication,
                    )) => {
                        exported = Some(item.name.clone());
                    }
                    Some((
                        ReplicationState::WaitingForInitialReplication | ReplicationState::InitialReplicationInProgress,
                        ReplicationState::Protected,
                    )) => finalized = Some(item.name.clone()),
                    Some((ReplicationState::ReverseReplicating, ReplicationState::Protected)) => {
                        reversed = Some((item.name.clone(), s.initial_bytes));
                        item.failover = None;
                    }
                    _ => {}
                }
            }
            PairRole::Target => {
                if takes_target_points(item.state) {
                    item.recovery_points = s.recovery_points.clone();
                    // Point times are the source host's clock: corrected by its offset as the
                    // source's reports measured it, and never later than now (points dated
                    // while that clock was ahead keep their dates on the replica).
                    let source_offset = chrono::Duration::milliseconds(item.stats.source_clock_offset_ms.unwrap_or(0));
                    if let Some(newest) = s.recovery_points.iter().map(|p| p.time).max() {
                        item.stats.latest_point = Some((newest - source_offset).min(now));
                    }
                }
            }
        })
        .await;
        match res {
            Ok(Some(item)) => {
                if let Some(name) = finalized {
                    finalize(state, vault, &item, &name).await;
                }
                if let Some(name) = exported {
                    let msg = format!(
                        "The offline initial copy of {name} is exported to folder {} under the policy's export path; \
                         copy that folder into the import path on the target side, then run importInitialReplica",
                        item.id
                    );
                    state
                        .event(
                            vault,
                            Severity::Info,
                            "InitialCopyExported",
                            &msg,
                            Some(item.source.fabric),
                            Some(&item.id.to_string()),
                        )
                        .await;
                }
                if let Some((name, version, interval)) = policy_applied {
                    let msg = format!(
                        "{name} replicates under policy version {version} now (copy interval {interval} s) on {}",
                        item.source.host_name
                    );
                    state
                        .event(
                            vault,
                            Severity::Info,
                            "PolicyApplied",
                            &msg,
                            Some(item.source.fabric),
                            Some(&item.id.to_string()),
                        )
                        .await;
                }
                if let Some((name, why)) = fallback {
                    let msg =
                        format!("An app-consistent recovery point of {name} fell back to crash-consistent: {why}");
                    state
                        .event(
                            vault,
                            Severity::Warning,
                            "AppConsistencyFallback",
                            &msg,
                            Some(item.source.fabric),
                            Some(&item.id.to_string()),
                        )
                        .await;
                }
                if let Some((name, bytes)) = reversed {
                    let disks: u64 = item.disks.iter().map(|d| d.virtual_size).sum();
                    let msg = format!(
                        "{name} replicates from {} to {} again: reverse replication sent {bytes} bytes for {disks} bytes of disks",
                        item.source.host_name, item.target.host_name
                    );
                    state
                        .event(
                            vault,
                            Severity::Info,
                            "ReverseReplicationCompleted",
                            &msg,
                            Some(item.source.fabric),
                            Some(&item.id.to_string()),
                        )
                        .await;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(item = %s.item, error = %e, "cannot apply replication status"),
        }
    }
}

/// Changed data per second of wall time over the last cycles (explainable RPO: churn against
/// the bandwidth available).
fn churn_rate(cycles: &[ferry_types::site_protocol::CycleTiming]) -> u64 {
    let (first, last) = match (cycles.first(), cycles.last()) {
        (Some(f), Some(l)) if cycles.len() > 1 => (f, l),
        _ => return 0,
    };
    let span = (last.at - first.at).num_milliseconds();
    if span <= 0 {
        return 0;
    }
    let bytes: u64 = cycles.iter().skip(1).map(|c| c.bytes).sum();
    u64::try_from(u128::from(bytes) * 1000 / span as u128).unwrap_or(u64::MAX)
}

async fn finalize(state: &AppState, vault: Uuid, item: &ProtectedItem, name: &str) {
    let _ = state
        .jobs
        .record_done(
            state,
            crate::jobs::NewJob {
                vault,
                operation: crate::jobs::OP_FINALIZE_PROTECTION,
                object_type: "ProtectedItem",
                object_id: item.id.to_string(),
                object_name: name.to_string(),
                fabric: Some(item.source.fabric),
                params: crate::jobs::JobInput::of(&crate::jobs::ItemParams { item: item.id }),
                tasks: vec!["Initial replication complete".into(), "Ready for failover".into()],
            },
        )
        .await;
    state
        .event(
            vault,
            Severity::Info,
            "ProtectionFinalized",
            &format!("{name} is protected and ready for failover"),
            Some(item.source.fabric),
            Some(&item.id.to_string()),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fo_4_points_reported_before_a_commit_do_not_come_back_after_it() {
        assert!(!takes_target_points(ReplicationState::Committed));
        for st in [
            ReplicationState::Protected,
            ReplicationState::FailedOverCommitPending,
            ReplicationState::ReverseReplicating,
            ReplicationState::ResyncRequired,
        ] {
            assert!(takes_target_points(st), "{st:?}");
        }
    }

    /// Every line of the vault's code outside test modules that writes an item's state, as
    /// `file: line` (a field `state` assigned or set in a literal).
    fn state_writes() -> Vec<String> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).expect("src").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&root, &mut files);
        let mut writes = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source");
            // Test modules come last in a file.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let name = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
            for line in code.lines().map(str::trim) {
                let assigns = line.contains(".state = ") && !line.contains("CapacityPlanState");
                let literal = line.starts_with("state: ReplicationState::");
                if assigns || literal {
                    writes.push(format!("{name}: {line}"));
                }
            }
        }
        writes.sort();
        writes
    }

    /// JOB-3: the state machine of ferry-core is the only way an item's state changes; any
    /// other write of the state in the vault fails this test.
    #[test]
    fn job_3_transition_is_the_only_writer_of_an_items_state() {
        assert_eq!(
            state_writes(),
            [
                // A plan's view of a VM that is not protected (no item is written).
                "api/plans.rs: state: ReplicationState::NotEnabled,",
                "replication.rs: item.state = to;",
            ],
            "write an item's state only through replication::set_by_transition (ferry_core::state::transition)"
        );
    }
}
