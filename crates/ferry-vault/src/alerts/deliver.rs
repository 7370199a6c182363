//! The delivery task: sends due outbox rows, retries failures with exponential backoff, drops a
//! row still undeliverable after the maximum age with a Warning event.

use std::collections::HashMap;
use std::time::Duration;

use ferry_store::AlertRow;
use ferry_types::alert::AlertSettingsSpec;
use ferry_types::event::Severity;
use uuid::Uuid;

use super::channels::{send, DeliveryError};
use crate::state::AppState;

/// Rows sent at once.
const BATCH: i64 = 32;
/// The longest the task sleeps without looking at the outbox.
const IDLE: Duration = Duration::from_secs(1);

/// Delay before attempt `attempts + 1` after `attempts` failed ones: base × 2^(attempts-1),
/// at most `max`.
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << exp).min(max)
}

/// Run forever: deliver what is due, then wait for a new alert or the next due row.
pub async fn run(state: AppState) {
    loop {
        if let Err(e) = pass(&state).await {
            tracing::warn!(error = %e, "alert delivery pass failed; retried");
        }
        let now = state.clock.now().timestamp_millis();
        let wait = match state.store.next_alert_due().await {
            Ok(Some(due)) => {
                Duration::from_millis(u64::try_from(due - now).unwrap_or(0)).clamp(Duration::from_millis(20), IDLE)
            }
            _ => IDLE,
        };
        tokio::select! {
            _ = state.alerts.queued.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Deliver every due row once (concurrently), recording each outcome.
pub async fn pass(state: &AppState) -> Result<(), ferry_store::Error> {
    loop {
        let due = state.store.due_alerts(state.clock.now().timestamp_millis(), BATCH).await?;
        if due.is_empty() {
            return Ok(());
        }
        let mut settings: HashMap<Uuid, AlertSettingsSpec> = HashMap::new();
        for r in &due {
            if let std::collections::hash_map::Entry::Vacant(e) = settings.entry(r.vault) {
                e.insert(super::settings(&state.store, r.vault).await?.0);
            }
        }
        let timeout = state.config.alert_timeout;
        let sends = due.iter().map(|r| {
            let s = settings.get(&r.vault).cloned().unwrap_or_default();
            let http = state.alerts.http.clone();
            async move { send(&http, &s, &r.channel, &r.alert, timeout).await }
        });
        let results = futures::future::join_all(sends).await;
        let n = due.len();
        for (row, res) in due.into_iter().zip(results) {
            record(state, row, res).await?;
        }
        if (n as i64) < BATCH {
            return Ok(());
        }
    }
}

async fn record(state: &AppState, row: AlertRow, res: Result<(), DeliveryError>) -> Result<(), ferry_store::Error> {
    let now = state.clock.now();
    let now_ms = now.timestamp_millis();
    let attempts = row.attempts.saturating_add(1);
    let err = match res {
        Ok(()) => {
            tracing::info!(alert = %row.alert.id, channel = %row.channel, attempts, "alert delivered");
            return state.store.alert_delivered(row.seq, attempts, now_ms).await;
        }
        Err(e) => e,
    };
    let why = err.chain();
    if matches!(err, DeliveryError::ChannelRemoved(_)) {
        tracing::info!(alert = %row.alert.id, channel = %row.channel, "alert channel removed; alert dropped");
        return state.store.alert_dropped(row.seq, row.attempts, now_ms, &why).await;
    }
    let age = Duration::from_millis(u64::try_from(now_ms - row.raised_ms).unwrap_or(0));
    if age >= state.config.alert_max_age {
        tracing::warn!(alert = %row.alert.id, channel = %row.channel, error = %why, "alert undeliverable; dropped");
        state.store.alert_dropped(row.seq, attempts, now_ms, &why).await?;
        let msg = format!(
            "Alert '{}' could not be delivered to {} within {} h and was dropped after {attempts} attempts: {why}",
            row.alert.subject,
            row.channel,
            state.config.alert_max_age.as_secs() / 3600
        );
        state.event(row.vault, Severity::Warning, "AlertDropped", &msg, None, None).await;
        return Ok(());
    }
    let delay = backoff(attempts, state.config.alert_retry_base, state.config.alert_retry_max);
    let next = now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
    tracing::info!(alert = %row.alert.id, channel = %row.channel, attempts, error = %why, "alert delivery failed; retried");
    state.store.alert_retry(row.seq, attempts, next, &why).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_4_alert_retry_backoff_doubles_up_to_the_cap() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(900));
        assert_eq!(backoff(1, b, m), Duration::from_secs(10));
        assert_eq!(backoff(2, b, m), Duration::from_secs(20));
        assert_eq!(backoff(4, b, m), Duration::from_secs(80));
        assert_eq!(backoff(7, b, m), Duration::from_secs(640));
        assert_eq!(backoff(8, b, m), m);
        assert_eq!(backoff(500, b, m), m);
    }
}
