//! Test failovers left running are cleaned up automatically after 14 days (FO-1): the vault
//! checks now and then, and for every test failover older than the limit starts the same
//! cleanup job an operator would, with a note saying why, and raises a warning event.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_store::DocKind;
use ferry_types::event::Severity;
use ferry_types::protection::ProtectedItem;
use ferry_types::vault::Vault;

use crate::state::AppState;

/// FO-1: tests older than this are cleaned up.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// The note recorded on an automatic cleanup.
pub const AUTO_NOTE: &str = "Cleaned up automatically: the test failover ran longer than the limit";

/// Whether the test failover of `item` is older than `max_age` at `now`.
pub fn expired(item: &ProtectedItem, now: DateTime<Utc>, max_age: Duration) -> bool {
    let Some(t) = &item.test_failover else { return false };
    let max = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    now - t.started_at > max
}

/// Check every so often (a quarter of the limit, at most every ten minutes).
pub async fn run(state: AppState) {
    let max_age = state.config.test_failover_max_age;
    let period = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(period).await;
        if let Err(e) = sweep(&state, max_age).await {
            tracing::warn!(error = %e, "checking for expired test failovers failed; retried later");
        }
    }
}

async fn sweep(state: &AppState, max_age: Duration) -> Result<(), ferry_types::ApiError> {
    let store_err = |e: ferry_store::Error| ferry_types::ApiError::new("StoreError", e.to_string());
    let now = state.clock.now();
    for (body, _) in state.store.list_vaults().await.map_err(store_err)? {
        let Ok(v) = serde_json::from_value::<Vault>(body) else { continue };
        let items = state.store.all_docs::<ProtectedItem>(DocKind::ProtectedItem, v.id).await.map_err(store_err)?;
        for it in items.into_iter().map(|d| d.body).filter(|i| expired(i, now, max_age)) {
            if cleanup_pending(state, v.id, &it).await? {
                continue;
            }
            let job = crate::jobs::NewJob {
                vault: v.id,
                operation: crate::jobs::OP_TEST_FAILOVER_CLEANUP,
                object_type: "ProtectedItem",
                object_id: it.id.to_string(),
                object_name: it.name.clone(),
                fabric: Some(it.target.fabric),
                params: crate::jobs::JobInput::of(&crate::jobs::CleanupParams {
                    item: it.id,
                    notes: AUTO_NOTE.to_string(),
                }),
                tasks: crate::jobs::CLEANUP_TASKS.iter().map(|t| t.to_string()).collect(),
            };
            state.jobs.submit(state, job).await.map_err(store_err)?;
            let msg = format!("The test failover of {} ran longer than the limit; it is being cleaned up", it.name);
            state
                .event(
                    v.id,
                    Severity::Warning,
                    "TestFailoverExpired",
                    &msg,
                    Some(it.target.fabric),
                    Some(&it.id.to_string()),
                )
                .await;
        }
    }
    Ok(())
}

/// A cleanup job for this item has not ended yet.
async fn cleanup_pending(
    state: &AppState,
    vault: uuid::Uuid,
    it: &ProtectedItem,
) -> Result<bool, ferry_types::ApiError> {
    for status in [ferry_types::job::JobStatus::NotStarted, ferry_types::job::JobStatus::InProgress] {
        let f = ferry_types::job::JobFilter {
            status: Some(status),
            object_id: Some(it.id.to_string()),
            operation: Some(crate::jobs::OP_TEST_FAILOVER_CLEANUP.to_string()),
            ..Default::default()
        };
        let (jobs, _) = state
            .store
            .list_jobs(vault, &f, None, 1)
            .await
            .map_err(|e| ferry_types::ApiError::new("StoreError", e.to_string()))?;
        if !jobs.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::protection::{TestFailoverInfo, TestNetwork};

    fn item_with_test(started: DateTime<Utc>) -> ProtectedItem {
        let json = serde_json::json!({
            "id": uuid::Uuid::nil(), "vault_id": uuid::Uuid::nil(), "name": "vm1", "vm_id": "vm1",
            "container_mapping": uuid::Uuid::nil(), "policy": uuid::Uuid::nil(),
            "source": {"fabric": uuid::Uuid::nil(), "cloud": "c1", "host": "h1", "host_name": "h1"},
            "target": {"fabric": uuid::Uuid::nil(), "cloud": "c2", "host": "h2", "host_name": "h2"},
            "direction": "Forward", "state": "Protected", "health": "Normal", "created_at": started,
        });
        let mut it: ProtectedItem = serde_json::from_value(json).expect("item");
        it.test_failover = Some(TestFailoverInfo {
            job: uuid::Uuid::nil(),
            vm_name: "vm1-test".into(),
            recovery_point: "rp-1".into(),
            network: TestNetwork::None,
            created_bridge: None,
            started_at: started,
        });
        it
    }

    #[test]
    fn fo_1_test_failover_expires_after_14_days() {
        let t0 = Utc::now();
        let it = item_with_test(t0);
        assert!(!expired(&it, t0 + chrono::Duration::days(14) - chrono::Duration::seconds(1), DEFAULT_MAX_AGE));
        assert!(expired(&it, t0 + chrono::Duration::days(14) + chrono::Duration::seconds(1), DEFAULT_MAX_AGE));
        let mut none = it.clone();
        none.test_failover = None;
        assert!(!expired(&none, t0 + chrono::Duration::days(30), DEFAULT_MAX_AGE));
    }
}
