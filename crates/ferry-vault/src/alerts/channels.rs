//! Sending one alert through one channel: a webhook `POST` (signed when the webhook has a
//! secret) or an e-mail through the SMTP relay.

use std::time::Duration;

use ferry_types::alert::{Alert, AlertSettingsSpec, EmailSpec, WebhookSpec};
use hmac::{Hmac, Mac};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;

/// The header carrying the body's HMAC-SHA256: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Ferry-Signature";
/// The header carrying the alert id (also in the body).
pub const ALERT_ID_HEADER: &str = "X-Ferry-Alert-Id";

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("The channel {0} is no longer configured")]
    ChannelRemoved(String),
    #[error("The webhook answered HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    HttpStatus { status: u16, body: String },
    #[error("Cannot call the webhook")]
    Request(#[source] reqwest::Error),
    #[error("Cannot sign the alert")]
    Sign,
    #[error("Cannot encode the alert")]
    Encode(#[source] serde_json::Error),
    #[error("E-mail address {0} is not valid")]
    Address(String, #[source] lettre::address::AddressError),
    #[error("Cannot build the e-mail")]
    Message(#[source] lettre::error::Error),
    #[error("SMTP relay {relay} refused or failed the delivery")]
    Smtp {
        relay: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("No answer within {0:?}")]
    Timeout(Duration),
}

impl DeliveryError {
    /// The message with every cause, on one line (kept with the outbox row, shown to operators).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            let t = e.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            src = e.source();
        }
        s
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> Result<String, DeliveryError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| DeliveryError::Sign)?;
    mac.update(body);
    Ok(format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

/// POST the alert as JSON; any 2xx answer delivers it.
pub async fn post_webhook(http: &reqwest::Client, hook: &WebhookSpec, alert: &Alert) -> Result<(), DeliveryError> {
    let body = serde_json::to_vec(alert).map_err(DeliveryError::Encode)?;
    let mut rb = http
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(ALERT_ID_HEADER, alert.id.to_string());
    if let Some(secret) = hook.secret.as_deref().filter(|s| !s.is_empty()) {
        rb = rb.header(SIGNATURE_HEADER, signature(secret, &body)?);
    }
    let resp = rb.body(body).send().await.map_err(DeliveryError::Request)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let body: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    Err(DeliveryError::HttpStatus { status: status.as_u16(), body })
}

/// The e-mail's text: the message, then every field of the alert.
pub fn email_text(alert: &Alert) -> String {
    let mut t = format!("{}\n\n", alert.message);
    t.push_str(&format!("Vault:     {} ({})\n", alert.vault.name, alert.vault.id));
    t.push_str(&format!("Alert:     {}\n", alert.kind.as_str()));
    t.push_str(&format!("Severity:  {}\n", alert.severity.as_str()));
    if let Some(o) = &alert.object {
        t.push_str(&format!("Object:    {} {} ({})\n", o.object_type, o.name, o.id));
    }
    t.push_str(&format!("Raised at: {}\n", alert.raised_at.to_rfc3339()));
    t.push_str(&format!("Alert id:  {}\n", alert.id));
    t
}

fn mailbox(addr: &str) -> Result<lettre::message::Mailbox, DeliveryError> {
    addr.parse().map_err(|e| DeliveryError::Address(addr.to_string(), e))
}

/// Send the alert by e-mail through the relay (STARTTLS and AUTH as configured).
pub async fn send_email(email: &EmailSpec, alert: &Alert, timeout: Duration) -> Result<(), DeliveryError> {
    let mut b = Message::builder().from(mailbox(&email.from)?).subject(alert.subject.clone());
    for to in &email.to {
        b = b.to(mailbox(to)?);
    }
    let mut msg = b.header(ContentType::TEXT_PLAIN).body(email_text(alert)).map_err(DeliveryError::Message)?;
    if let Ok(name) = HeaderName::new_from_ascii(ALERT_ID_HEADER.to_string()) {
        msg.headers_mut().insert_raw(HeaderValue::new(name, alert.id.to_string()));
    }
    let relay = format!("{}:{}", email.smtp_host, email.smtp_port);
    let smtp = |source| DeliveryError::Smtp { relay: relay.clone(), source };
    let tls = if email.starttls {
        Tls::Required(TlsParameters::new(email.smtp_host.clone()).map_err(smtp)?)
    } else {
        Tls::None
    };
    let mut tb = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(email.smtp_host.clone())
        .port(email.smtp_port)
        .tls(tls)
        .timeout(Some(timeout));
    if let (Some(u), Some(p)) = (&email.username, &email.password) {
        tb = tb.credentials(Credentials::new(u.clone(), p.clone()));
    }
    let transport = tb.build();
    transport.send(msg).await.map_err(smtp)?;
    Ok(())
}

/// Send `alert` through `channel` of `settings`.
pub async fn send(
    http: &reqwest::Client,
    settings: &AlertSettingsSpec,
    channel: &str,
    alert: &Alert,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let attempt = async {
        if let Some(url) = channel.strip_prefix("webhook:") {
            let hook = settings
                .webhooks
                .iter()
                .find(|w| w.url == url)
                .ok_or_else(|| DeliveryError::ChannelRemoved(channel.to_string()))?;
            post_webhook(http, hook, alert).await
        } else if channel == "email" {
            let email = settings.email.as_ref().ok_or_else(|| DeliveryError::ChannelRemoved(channel.to_string()))?;
            send_email(email, alert, timeout).await
        } else {
            Err(DeliveryError::ChannelRemoved(channel.to_string()))
        }
    };
    match tokio::time::timeout(timeout + Duration::from_secs(1), attempt).await {
        Ok(r) => r,
        Err(_) => Err(DeliveryError::Timeout(timeout)),
    }
}
