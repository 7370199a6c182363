//! Alerts (JOB-4): a vault's alert settings (webhooks, e-mail, which triggers are on) and the
//! alert a channel receives.
//!
//! Secrets (a webhook's signing secret, the SMTP password) are written with
//! [`AlertSettingsSpec`] and never read back: [`AlertSettings`] only says whether one is set.
//! In a `PUT`, an absent secret keeps the one already set for the same webhook URL (or the same
//! SMTP user), an empty string removes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::event::Severity;

/// What raises an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum AlertKind {
    /// A replicated item's health became Critical (once per change, again after it recovered).
    CriticalHealth,
    /// A replicated item made no recovery point for max(3 × copy frequency, 2 min), or its
    /// replica cannot take one (JOB-2); the alert names the cause. Sent with the Critical-health
    /// trigger.
    ReplicationStalled,
    /// A stalled item made a recovery point again. Sent with the Critical-health trigger.
    ReplicationRecovered,
    /// A site manager stopped reporting (its heartbeat is lost).
    SiteHeartbeatLost,
    /// A test, planned or unplanned failover (of a VM or a recovery plan) ended Failed.
    FailoverFailed,
    /// Sent on request to check the channels (`ferry alerts-test`).
    Test,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::CriticalHealth => "CriticalHealth",
            AlertKind::ReplicationStalled => "ReplicationStalled",
            AlertKind::ReplicationRecovered => "ReplicationRecovered",
            AlertKind::SiteHeartbeatLost => "SiteHeartbeatLost",
            AlertKind::FailoverFailed => "FailoverFailed",
            AlertKind::Test => "Test",
        }
    }

    /// A short label for subjects: "Critical health".
    pub fn label(self) -> &'static str {
        match self {
            AlertKind::CriticalHealth => "Critical health",
            AlertKind::ReplicationStalled => "Replication stalled",
            AlertKind::ReplicationRecovered => "Replication recovered",
            AlertKind::SiteHeartbeatLost => "Site heartbeat lost",
            AlertKind::FailoverFailed => "Failover failed",
            AlertKind::Test => "Test alert",
        }
    }
}

fn yes() -> bool {
    true
}

/// Which triggers raise alerts; every one is on unless turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertTriggers {
    #[serde(default = "yes")]
    pub critical_health: bool,
    #[serde(default = "yes")]
    pub site_heartbeat_lost: bool,
    #[serde(default = "yes")]
    pub failover_failed: bool,
}

impl Default for AlertTriggers {
    fn default() -> Self {
        Self { critical_health: true, site_heartbeat_lost: true, failover_failed: true }
    }
}

impl AlertTriggers {
    /// Whether alerts of `kind` are sent (test alerts always are).
    pub fn allows(&self, kind: AlertKind) -> bool {
        match kind {
            AlertKind::CriticalHealth | AlertKind::ReplicationStalled | AlertKind::ReplicationRecovered => {
                self.critical_health
            }
            AlertKind::SiteHeartbeatLost => self.site_heartbeat_lost,
            AlertKind::FailoverFailed => self.failover_failed,
            AlertKind::Test => true,
        }
    }
}

/// A webhook as written: `POST` of the alert as JSON to `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://` or `https://` URL with a host (no user name or password in it).
    pub url: String,
    /// Shared secret: the body is signed with HMAC-SHA256 in `X-Ferry-Signature: sha256=<hex>`.
    /// Absent keeps the secret already set for this URL; empty removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// E-mail through an SMTP relay, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// Relay host name or IP address.
    pub smtp_host: String,
    /// Relay port, e.g. 25 or 587.
    pub smtp_port: u16,
    /// Upgrade the connection with STARTTLS (required; the relay's certificate is verified).
    /// Credentials are only sent over STARTTLS.
    #[serde(default)]
    pub starttls: bool,
    /// SMTP user for AUTH (needs a password and STARTTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Absent keeps the password already set for the same user; empty removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Sender address, e.g. `ferry@example.com`.
    pub from: String,
    /// Recipient addresses (1..=50).
    pub to: Vec<String>,
}

/// The body of `PUT /api/v1/vaults/{vault}/alertSettings`: the whole settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSettingsSpec {
    /// At most 10 webhooks, each URL once.
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSpec>,
    #[serde(default)]
    pub triggers: AlertTriggers,
}

/// A webhook as read back (the secret is never returned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookInfo {
    pub url: String,
    /// Whether a signing secret is set.
    pub secret_set: bool,
}

/// The e-mail channel as read back (the password is never returned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EmailInfo {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub starttls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Whether an SMTP password is set.
    pub password_set: bool,
    pub from: String,
    pub to: Vec<String>,
}

/// `GET /api/v1/vaults/{vault}/alertSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertSettings {
    pub webhooks: Vec<WebhookInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailInfo>,
    pub triggers: AlertTriggers,
    /// 0 while never set; incremented on every change. Send it back in `If-Match`.
    pub version: i64,
}

/// The object an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertObject {
    /// `ProtectedItem`, `Fabric`, `RecoveryPlan`, `Job`.
    #[serde(rename = "type")]
    pub object_type: String,
    pub id: String,
    pub name: String,
}

/// The vault an alert comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertVault {
    pub id: Uuid,
    pub name: String,
}

/// What a webhook receives (JSON body) and what an e-mail says. The `id` is the same on every
/// channel and every retry: a receiver that may see a retry of an alert it already got
/// (delivery is at least once) drops the duplicate by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub id: Uuid,
    pub vault: AlertVault,
    pub kind: AlertKind,
    pub severity: Severity,
    /// One line, also the e-mail subject: `[Ferry ferry-lab] Critical health: web1`.
    pub subject: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<AlertObject>,
    pub raised_at: DateTime<Utc>,
}

/// Delivery state of one alert on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum DeliveryState {
    /// Not delivered yet; retried with backoff.
    Pending,
    Delivered,
    /// Given up: undeliverable for 24 hours, or the channel was removed.
    Dropped,
}

/// One alert on one channel, from the vault's outbox (`GET .../alerts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertDelivery {
    pub alert: Alert,
    /// `email` or `webhook:<url>`.
    pub channel: String,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The result of a test alert on one channel (`POST .../alertSettings/test`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelTestResult {
    /// `email` or `webhook:<url>`.
    pub channel: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/v1/vaults/{vault}/alertSettings/test`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertTestReport {
    pub alert: Alert,
    pub channels: Vec<ChannelTestResult>,
}
