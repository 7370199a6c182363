//! Alerts (JOB-4): a webhook call or an e-mail when an item's health becomes Critical, a site
//! manager's heartbeat is lost, or a failover ends Failed.
//!
//! Alerts hang on the events the vault already raises: the code that raises such an event passes
//! what the alert is about ([`AlertOf`]), and [`record_tx`] writes the event and, when the vault's
//! settings send that kind, one outbox row per configured channel, in the same transaction.
//! A vault that stops right after never loses the alert and never sends one for an event it did
//! not record. Delivery runs apart ([`deliver`]):
//!
//! ```text
//!  raiser (report, job, heartbeat monitor)     store                 delivery task      channel
//!     | BEGIN; event; outbox rows; COMMIT ----> |                          |                  |
//!     | notify ------------------------------------------------------->   |                  |
//!     |                                          | <--- due rows ---------- |                  |
//!     |                                          |                          | -- POST / SMTP ->|
//!     |                                          | <--- delivered / retry - |                  |
//! ```
//!
//! A failed attempt is retried with exponential backoff; a row still undeliverable 24 hours
//! after the alert was raised is dropped with a Warning event (`AlertDropped`). Delivery is at
//! least once: an alert whose answer was lost is sent again with the same `id`. Nothing the
//! delivery does can fail or delay the job or report that raised the alert.
//!
//! "Once per edge": Critical health is raised by the write that changes the stored health from
//! something else to Critical (optimistic concurrency makes that one write), the heartbeat
//! monitor raises a lost heartbeat once until the site reports again, and a job fails once.

pub mod channels;
pub mod deliver;

use ferry_store::{DocKind, NewEvent, Store, Tx, ALERT_SETTINGS_ID};
use ferry_types::alert::{Alert, AlertKind, AlertObject, AlertSettingsSpec, AlertVault};
use ferry_types::event::Severity;
use uuid::Uuid;

use crate::state::AppState;

/// What an event raises an alert about.
#[derive(Debug, Clone)]
pub struct AlertOf {
    pub kind: AlertKind,
    pub object: Option<AlertObject>,
}

/// Job operations whose failure raises a `FailoverFailed` alert.
pub const FAILOVER_OPERATIONS: [&str; 6] = [
    crate::jobs::OP_TEST_FAILOVER,
    crate::jobs::OP_PLANNED_FAILOVER,
    crate::jobs::OP_UNPLANNED_FAILOVER,
    crate::jobs::OP_PLAN_TEST_FAILOVER,
    crate::jobs::OP_PLAN_PLANNED_FAILOVER,
    crate::jobs::OP_PLAN_UNPLANNED_FAILOVER,
];

/// The channel names of settings: `webhook:<url>` for each webhook, then `email`.
pub fn channels(s: &AlertSettingsSpec) -> Vec<String> {
    let mut out: Vec<String> = s.webhooks.iter().map(|w| format!("webhook:{}", w.url)).collect();
    if s.email.is_some() {
        out.push("email".into());
    }
    out
}

/// A vault's stored settings (secrets included); the defaults while never set.
pub async fn settings(store: &Store, vault: Uuid) -> Result<(AlertSettingsSpec, i64), ferry_store::Error> {
    Ok(store
        .get_doc::<AlertSettingsSpec>(DocKind::AlertSettings, vault, ALERT_SETTINGS_ID)
        .await?
        .map(|d| (d.body, d.version))
        .unwrap_or_default())
}

/// The alert for an event.
pub fn build(
    vault: &AlertVault,
    of: &AlertOf,
    severity: Severity,
    message: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Alert {
    let about = of.object.as_ref().map(|o| format!(": {}", o.name)).unwrap_or_default();
    Alert {
        id: Uuid::new_v4(),
        vault: vault.clone(),
        kind: of.kind,
        severity,
        subject: format!("[Ferry {}] {}{about}", vault.name, of.kind.label()),
        message: message.to_string(),
        object: of.object.clone(),
        raised_at: now,
    }
}

/// The vault's id and name, for the alert (its id alone when it cannot be read).
pub async fn vault_of(state: &AppState, id: Uuid) -> AlertVault {
    let name = state.vault(&id.to_string()).await.map(|(v, _)| v.name).unwrap_or_else(|_| id.to_string());
    AlertVault { id, name }
}

/// Write `ev` and, when `of` is given and the vault's settings send this kind somewhere, its
/// alert to the outbox, inside `tx`. Returns whether an alert was queued.
pub async fn record_tx(
    tx: &mut Tx<'_>,
    vault: &AlertVault,
    ev: NewEvent<'_>,
    of: Option<&AlertOf>,
) -> Result<bool, ferry_store::Error> {
    let (severity, message, time) = (ev.severity, ev.message.to_string(), ev.time);
    Store::append_event_tx(tx, ev).await?;
    let Some(of) = of else { return Ok(false) };
    let settings = Store::get_doc_tx::<AlertSettingsSpec>(tx, DocKind::AlertSettings, vault.id, ALERT_SETTINGS_ID)
        .await?
        .map(|d| d.body)
        .unwrap_or_default();
    if !settings.triggers.allows(of.kind) {
        return Ok(false);
    }
    let chans = channels(&settings);
    if chans.is_empty() {
        return Ok(false);
    }
    let alert = build(vault, of, severity, &message, time);
    for c in &chans {
        Store::enqueue_alert_tx(tx, &alert, c).await?;
    }
    Ok(true)
}

impl AppState {
    /// Record an event that may raise an alert: the event and the alert go in one transaction.
    /// If that transaction fails, the event is still recorded on its own (and the failure logged).
    #[allow(clippy::too_many_arguments)]
    pub async fn event_alerting(
        &self,
        vault: Uuid,
        severity: Severity,
        kind: &str,
        message: &str,
        fabric: Option<Uuid>,
        object_id: Option<&str>,
        of: AlertOf,
    ) {
        let v = vault_of(self, vault).await;
        let ev = NewEvent { vault, time: self.clock.now(), severity, kind, message, fabric, object_id };
        let res = async {
            let mut tx = self.store.begin().await?;
            let queued = record_tx(&mut tx, &v, ev, Some(&of)).await?;
            Store::commit(tx).await?;
            Ok::<_, ferry_store::Error>(queued)
        }
        .await;
        match res {
            Ok(true) => self.alerts.queued.notify_one(),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = ?e, kind, "cannot record the event with its alert");
                self.event(vault, severity, kind, message, fabric, object_id).await;
            }
        }
    }
}

/// What the delivery side shares: the wake-up of the delivery task and the HTTP client.
pub struct Alerts {
    /// Woken when an alert is queued.
    pub queued: tokio::sync::Notify,
    pub http: reqwest::Client,
}

impl Alerts {
    pub fn new(timeout: std::time::Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ferry-vault/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { queued: tokio::sync::Notify::new(), http })
    }
}
