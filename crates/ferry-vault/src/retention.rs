//! Retention (SEC-3): the vault prunes its events, ended jobs, answered site commands and
//! finished alert rows by age ([`ferry_store::Retention`]) once at start and then every
//! `prune_interval` (an hour by default), so its database stays the size of the window.

use std::time::Duration;

use crate::state::AppState;

/// How often the vault prunes by default.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Prune now and then every `config.prune_interval`; a failed pruning is logged and tried again
/// at the next interval (nothing depends on it but the database's size).
pub async fn run(state: AppState) {
    let every = state.config.prune_interval.max(Duration::from_secs(1));
    loop {
        prune_once(&state).await;
        tokio::time::sleep(every).await;
    }
}

/// One pruning at the vault's clock; what it removed is logged.
pub async fn prune_once(state: &AppState) {
    let now = state.clock.now().timestamp_millis();
    match state.store.prune(now, &state.config.retention).await {
        Ok(p) if p.total() > 0 => tracing::info!(
            events = p.events,
            jobs = p.jobs,
            site_commands = p.site_commands,
            alerts = p.alerts,
            "pruned what the retention no longer keeps"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning the database failed; tried again later"),
    }
}
