//! Shared state of the vault server.

use std::sync::Arc;

use ferry_store::Store;
use ferry_types::event::Severity;
use ferry_types::vault::Vault;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::VaultConfig;
use crate::error::ApiFailure;
use crate::jobs::JobEngine;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub ca: Arc<ferry_pki::Ca>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<VaultConfig>,
    pub jobs: Arc<JobEngine>,
    /// Woken when a site command is queued, so a site's long poll returns at once.
    pub commands_queued: Arc<Notify>,
    /// Alert delivery: its wake-up and HTTP client (JOB-4).
    pub alerts: Arc<crate::alerts::Alerts>,
    /// The URL sites use to reach this vault (written into registration keys).
    pub public_url: String,
    /// Where every host receives replication now (passed on to the sites).
    pub peers: Arc<crate::peers::PeerDirectory>,
    /// Failed sign-ins and registrations per client address (SEC-3).
    pub failed_auth: Arc<crate::auth_limit::FailedAttempts>,
    /// API latency histograms (the vault's metrics).
    pub http_metrics: Arc<crate::metrics::HttpMetrics>,
}

impl AppState {
    /// Find a vault by id or by name.
    pub async fn vault(&self, raw: &str) -> Result<(Vault, String), ApiFailure> {
        let id = Uuid::parse_str(raw).ok();
        for (body, secret) in self.store.list_vaults().await? {
            let v: Vault = serde_json::from_value(body)
                .map_err(|e| ApiFailure::internal(format!("Stored vault is unreadable: {e}")))?;
            if Some(v.id) == id || v.name == raw {
                return Ok((v, secret));
            }
        }
        Err(ApiFailure::not_found("Vault", raw))
    }

    pub async fn event(
        &self,
        vault: Uuid,
        severity: Severity,
        kind: &str,
        message: &str,
        fabric: Option<Uuid>,
        object_id: Option<&str>,
    ) {
        let res = self
            .store
            .append_event(ferry_store::NewEvent {
                vault,
                time: self.clock.now(),
                severity,
                kind,
                message,
                fabric,
                object_id,
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = ?e, kind, "cannot record event");
        }
    }
}
