//! `/api/v1/vaults/{vault}/alertSettings` and `/alerts` (JOB-4): where alerts go, which
//! triggers are on, a test alert through every channel, and the outbox of alerts sent.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ferry_core::alerts::validate_alert_settings;
use ferry_store::{DocKind, ALERT_SETTINGS_ID};
use ferry_types::alert::{
    AlertKind, AlertSettings, AlertSettingsSpec, AlertTestReport, ChannelTestResult, EmailInfo, WebhookInfo,
};
use ferry_types::auth::Role;
use ferry_types::event::Severity;
use ferry_types::Page;

use crate::alerts::{channels, AlertOf};
use crate::auth::{Auth, Principal};
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{ApiJson, ApiQuery, PageParams};
use crate::state::AppState;

/// Settings as read back: secrets replaced by whether they are set.
pub fn view(s: &AlertSettingsSpec, version: i64) -> AlertSettings {
    AlertSettings {
        webhooks: s
            .webhooks
            .iter()
            .map(|w| WebhookInfo { url: w.url.clone(), secret_set: w.secret.as_deref().is_some_and(|x| !x.is_empty()) })
            .collect(),
        email: s.email.as_ref().map(|e| EmailInfo {
            smtp_host: e.smtp_host.clone(),
            smtp_port: e.smtp_port,
            starttls: e.starttls,
            username: e.username.clone(),
            password_set: e.password.as_deref().is_some_and(|x| !x.is_empty()),
            from: e.from.clone(),
            to: e.to.clone(),
        }),
        triggers: s.triggers,
        version,
    }
}

/// The settings to store: what was written, with an absent secret kept from `current` (same
/// webhook URL, same SMTP user) and an empty one removed.
pub fn resolve(mut spec: AlertSettingsSpec, current: &AlertSettingsSpec) -> AlertSettingsSpec {
    for w in &mut spec.webhooks {
        w.secret = match w.secret.take() {
            None => current.webhooks.iter().find(|c| c.url == w.url).and_then(|c| c.secret.clone()),
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s),
        };
    }
    if let Some(e) = &mut spec.email {
        e.password = match e.password.take() {
            None => current
                .email
                .as_ref()
                .filter(|c| c.username.is_some() && c.username == e.username)
                .and_then(|c| c.password.clone()),
            Some(p) if p.is_empty() => None,
            Some(p) => Some(p),
        };
    }
    spec
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/alertSettings", tag = "alerts", params(("vault" = String, Path)), responses((status = 200, body = AlertSettings)))]
pub async fn get_alert_settings(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<AlertSettings>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let (s, version) = crate::alerts::settings(&st.store, v.id).await?;
    Ok(Json(view(&s, version)))
}

#[utoipa::path(put, path = "/api/v1/vaults/{vault}/alertSettings", tag = "alerts", request_body = AlertSettingsSpec, params(("vault" = String, Path), ("If-Match" = Option<String>, Header, description = "Version the change is based on (0 while never set)")), responses((status = 200, body = AlertSettings), (status = 400, body = ferry_types::ApiError), (status = 412, body = ferry_types::ApiError)))]
pub async fn put_alert_settings(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<AlertSettingsSpec>,
) -> ApiResult<Json<AlertSettings>> {
    auth.require(Role::Contributor)?;
    let (v, _) = st.vault(&vault).await?;
    let (current, version) = crate::alerts::settings(&st.store, v.id).await?;
    let expected = match headers.get("if-match") {
        Some(h) => {
            h.to_str().ok().map(|s| s.trim_matches('"')).and_then(|s| s.parse::<i64>().ok()).ok_or_else(|| {
                ApiFailure::bad_request("InvalidHeader", "If-Match must be the alert settings version number")
            })?
        }
        None => version,
    };
    let stale = || {
        ApiFailure::new(
            StatusCode::PRECONDITION_FAILED,
            "VersionMismatch",
            format!("The alert settings changed since version {expected}"),
        )
    };
    if expected != version {
        return Err(stale());
    }
    let resolved = resolve(spec, &current);
    let has_password = resolved.email.as_ref().is_some_and(|e| e.password.is_some());
    validate_alert_settings(&resolved, has_password)?;
    let res = st
        .store
        .put_doc(
            DocKind::AlertSettings,
            v.id,
            ALERT_SETTINGS_ID,
            None,
            None,
            &resolved,
            (version > 0).then_some(version),
        )
        .await;
    let new_version = match res {
        Ok(n) => n,
        // Another first write won the race.
        Err(e) if e.kind == ferry_store::ErrorKind::Conflict => return Err(stale()),
        Err(e) => return Err(e.into()),
    };
    let chans = crate::alerts::channels(&resolved);
    let msg = format!(
        "Alert settings updated to version {new_version}: {}",
        if chans.is_empty() { "no channel".to_string() } else { chans.join(", ") }
    );
    st.event(v.id, Severity::Info, "AlertSettingsUpdated", &msg, None, None).await;
    Ok(Json(view(&resolved, new_version)))
}

#[utoipa::path(post, path = "/api/v1/vaults/{vault}/alertSettings/test", tag = "alerts", params(("vault" = String, Path)), responses((status = 200, body = AlertTestReport), (status = 409, body = ferry_types::ApiError)))]
pub async fn test_alert(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
) -> ApiResult<Json<AlertTestReport>> {
    auth.require(Role::Operator)?;
    let (v, _) = st.vault(&vault).await?;
    let (settings, _) = crate::alerts::settings(&st.store, v.id).await?;
    let chans = crate::alerts::channels(&settings);
    if chans.is_empty() {
        return Err(ApiFailure::conflict(
            "AlertChannelsNotConfigured",
            format!("Vault {} has no webhook and no e-mail to send alerts to", v.name),
        ));
    }
    let who = match &auth.0 {
        Principal::User { name, .. } => name.clone(),
        Principal::Site { .. } => String::new(),
    };
    let of = AlertOf { kind: AlertKind::Test, object: None };
    let vault = ferry_types::alert::AlertVault { id: v.id, name: v.name.clone() };
    let message = format!("Test alert of vault {}, requested by {who}. Alerts reach this channel.", v.name);
    let alert = crate::alerts::build(&vault, &of, Severity::Info, &message, st.clock.now());
    let sends = chans.iter().map(|c| {
        let (http, s, a, t) = (st.alerts.http.clone(), settings.clone(), alert.clone(), st.config.alert_timeout);
        async move { channels::send(&http, &s, c, &a, t).await }
    });
    let results = futures::future::join_all(sends).await;
    let channels: Vec<ChannelTestResult> = chans
        .into_iter()
        .zip(results)
        .map(|(channel, r)| ChannelTestResult { channel, ok: r.is_ok(), error: r.err().map(|e| e.chain()) })
        .collect();
    let summary: Vec<String> =
        channels.iter().map(|c| format!("{} {}", c.channel, if c.ok { "ok" } else { "failed" })).collect();
    st.event(v.id, Severity::Info, "AlertTest", &format!("Test alert sent: {}", summary.join(", ")), None, None).await;
    Ok(Json(AlertTestReport { alert, channels }))
}

#[utoipa::path(get, path = "/api/v1/vaults/{vault}/alerts", tag = "alerts", params(("vault" = String, Path), PageParams), responses((status = 200, body = Page<ferry_types::alert::AlertDelivery>)))]
pub async fn list_alerts(
    State(st): State<AppState>,
    auth: Auth,
    Path(vault): Path<String>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<ferry_types::alert::AlertDelivery>>> {
    auth.require(Role::Reader)?;
    let (v, _) = st.vault(&vault).await?;
    let (rows, next) = st.store.list_alerts(v.id, p.numeric_cursor()?, p.limit()?).await?;
    Ok(Json(Page { items: rows.iter().map(|r| r.delivery()).collect(), next: next.map(|n| n.to_string()) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::alert::{EmailSpec, WebhookSpec};

    #[test]
    fn job_4_alert_secrets_kept_removed_and_never_shown() {
        let hook = |url: &str, secret: Option<&str>| WebhookSpec { url: url.into(), secret: secret.map(Into::into) };
        let email = |user: Option<&str>, pw: Option<&str>| EmailSpec {
            smtp_host: "relay".into(),
            smtp_port: 587,
            starttls: true,
            username: user.map(Into::into),
            password: pw.map(Into::into),
            from: "f@x".into(),
            to: vec!["t@x".into()],
        };
        let current = AlertSettingsSpec {
            webhooks: vec![hook("https://a/1", Some("s1")), hook("https://a/2", Some("s2"))],
            email: Some(email(Some("u"), Some("pw"))),
            ..Default::default()
        };
        let next = AlertSettingsSpec {
            webhooks: vec![hook("https://a/1", None), hook("https://a/2", Some("")), hook("https://a/3", None)],
            email: Some(email(Some("u"), None)),
            ..Default::default()
        };
        let r = resolve(next, &current);
        assert_eq!(r.webhooks[0].secret.as_deref(), Some("s1"), "absent keeps");
        assert_eq!(r.webhooks[1].secret, None, "empty removes");
        assert_eq!(r.webhooks[2].secret, None, "new URL, no secret");
        assert_eq!(r.email.as_ref().and_then(|e| e.password.as_deref()), Some("pw"), "same user keeps");
        let other_user =
            resolve(AlertSettingsSpec { email: Some(email(Some("v"), None)), ..Default::default() }, &current);
        assert_eq!(other_user.email.and_then(|e| e.password), None, "another user does not inherit the password");
        let shown = serde_json::to_string(&view(&r, 3)).expect("json");
        assert!(!shown.contains("s1") && !shown.contains("\"pw\""), "{shown}");
        assert!(shown.contains("\"secret_set\":true") && shown.contains("\"password_set\":true"), "{shown}");
    }
}
