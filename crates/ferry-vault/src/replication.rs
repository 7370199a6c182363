//! Applying replication status reported by sites to protected items: statistics (REP-5),
//! recovery points (RP-1), state changes (JOB-3) and health (JOB-2). When initial replication
//! completes, the item becomes Protected and a "Finalize protection" job is recorded (REP-1).

use ferry_store::DocKind;
use ferry_types::alert::{AlertKind, AlertObject};
use ferry_types::event::Severity;
use ferry_types::protection::{Health, ProtectedItem, ReplicationState};
use ferry_types::site_protocol::{PairRole, ReplicationPhase, ReplicationStatus};
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
        if item == before {
            return Ok(Some(item));
        }
        refresh_health(state, &mut item);
        let res = match health_change(&before, &item) {
            None => put_item(&mut PutOn::Pool(&state.store), vault, &item, doc.version).await,
            Some(change) => put_item_with_event(state, vault, &item, doc.version, change).await,
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

fn health_change(before: &ProtectedItem, after: &ProtectedItem) -> Option<HealthChange> {
    match (before.health == Health::Critical, after.health == Health::Critical) {
        (false, true) => Some(HealthChange {
            severity: Severity::Critical,
            kind: "HealthCritical",
            message: format!(
                "Replication health of {} is Critical: {}",
                after.name,
                after.health_reasons.iter().filter(|r| !r.is_empty()).cloned().collect::<Vec<_>>().join("; ")
            ),
            alert: Some(AlertOf {
                kind: AlertKind::CriticalHealth,
                object: Some(AlertObject {
                    object_type: "ProtectedItem".into(),
                    id: after.id.to_string(),
                    name: after.name.clone(),
                }),
            }),
        }),
        (true, false) => Some(HealthChange {
            severity: Severity::Info,
            kind: "HealthRecovered",
            message: format!("Replication health of {} is {:?} again", after.name, after.health),
            alert: None,
        }),
        _ => None,
    }
}

/// Write the item, its health event and the event's alert in one transaction, so the alert is
/// raised exactly by the write that changed the health.
async fn put_item_with_event(
    state: &AppState,
    vault: Uuid,
    item: &ProtectedItem,
    version: i64,
    change: HealthChange,
) -> Result<(), ferry_store::Error> {
    let v = crate::alerts::vault_of(state, vault).await;
    let mut tx = state.store.begin().await?;
    put_item(&mut PutOn::Tx(&mut tx), vault, item, version).await?;
    let object_id = item.id.to_string();
    let ev = ferry_store::NewEvent {
        vault,
        time: state.clock.now(),
        severity: change.severity,
        kind: change.kind,
        message: &change.message,
        fabric: Some(item.source.fabric),
        object_id: Some(&object_id),
    };
    let queued = crate::alerts::record_tx(&mut tx, &v, ev, change.alert.as_ref()).await?;
    ferry_store::Store::commit(tx).await?;
    if queued {
        state.alerts.queued.notify_one();
    }
    Ok(())
}

pub async fn set_state(state: &AppState, vault: Uuid, id: Uuid, to: ReplicationState) -> Result<(), ApiError> {
    update_item(state, vault, id, |i| i.state = to).await.map(|_| ())
}

fn refresh_health(state: &AppState, item: &mut ProtectedItem) {
    let mut input = ferry_core::health::HealthInput::for_state(item.state);
    input.last_sync = item.stats.last_sync;
    input.cycles_missed = item.stats.cycles_missed;
    input.cycles_expected = item.stats.cycles_ok + item.stats.cycles_missed;
    let (health, reasons) = ferry_core::health::compute_health(&input, state.clock.now());
    item.health = health;
    item.health_reasons = reasons.into_iter().map(|r| format!("{}: {}", r.code, r.message)).collect();
}

/// Whether a replica host's list of recovery points is taken for an item in `state`. Not once the
/// failover is committed: the commit discarded the points and the host stops reporting the item,
/// so a report taken just before the discard (arriving after it) would bring them back for good.
fn takes_target_points(state: ReplicationState) -> bool {
    state != ReplicationState::Committed
}

/// Apply the replication statuses a site reported.
pub async fn apply_statuses(state: &AppState, vault: Uuid, statuses: &[ReplicationStatus]) {
    for s in statuses {
        let mut finalized = None;
        let mut reversed = None;
        let mut fallback = None;
        let mut exported = None;
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
                item.stats.last_sync = s.last_sync.or(item.stats.last_sync);
                item.stats.cycles_ok = s.cycles_ok;
                item.stats.cycles_missed = s.cycles_failed;
                item.stats.avg_delta_bytes = s.avg_delta_bytes;
                item.stats.max_delta_bytes = s.max_delta_bytes;
                item.stats.avg_latency_ms = s.avg_latency_ms;
                item.stats.data_waiting_bytes = s.data_waiting_bytes;
                item.stats.awaiting_import = s.phase == ReplicationPhase::WaitingForImport;
                let next = match (item.state, s.phase) {
                    // POL-8: the offline export is complete; the import completes protection.
                    (ReplicationState::InitialReplicationInProgress, ReplicationPhase::WaitingForImport) => {
                        exported = Some(item.name.clone());
                        Some(ReplicationState::WaitingForInitialReplication)
                    }
                    (
                        ReplicationState::WaitingForInitialReplication | ReplicationState::InitialReplicationInProgress,
                        ReplicationPhase::Replicating,
                    ) => {
                        finalized = Some(item.name.clone());
                        Some(ReplicationState::Protected)
                    }
                    (ReplicationState::ReverseReplicating, ReplicationPhase::Replicating) => {
                        reversed = Some((item.name.clone(), s.initial_bytes));
                        item.failover = None;
                        Some(ReplicationState::Protected)
                    }
                    (ReplicationState::WaitingForInitialReplication, ReplicationPhase::InitialInProgress) => {
                        Some(ReplicationState::InitialReplicationInProgress)
                    }
                    (ReplicationState::Protected, ReplicationPhase::ResyncRequired) => {
                        Some(ReplicationState::ResyncRequired)
                    }
                    (
                        ReplicationState::Protected | ReplicationState::ResyncRequired,
                        ReplicationPhase::Resynchronizing,
                    ) => Some(ReplicationState::Resynchronizing),
                    (
                        ReplicationState::Resynchronizing | ReplicationState::ResyncRequired,
                        ReplicationPhase::Replicating,
                    ) => Some(ReplicationState::Protected),
                    _ => None,
                };
                if let Some(n) = next {
                    item.state = n;
                }
            }
            PairRole::Target => {
                if takes_target_points(item.state) {
                    item.recovery_points = s.recovery_points.clone();
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
                params: serde_json::json!({"item": item.id}),
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
}
