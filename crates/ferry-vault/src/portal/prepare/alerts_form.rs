//! The prepare page's alert settings (JOB-4): the section and the form's parsing.

use super::*;

/// JOB-4: where alerts go and which triggers are on; a Contributor changes them and sends a
/// test alert. Secrets are never shown: an empty secret field keeps the one set.
pub(super) fn alerts_section(user: &User, base: &str, a: &AlertSettings) -> Markup {
    let contributor = user.can(Role::Contributor);
    let email = a.email.as_ref();
    let relay = email.map(|e| {
        if e.smtp_host.contains(':') {
            format!("[{}]:{}", e.smtp_host, e.smtp_port)
        } else {
            format!("{}:{}", e.smtp_host, e.smtp_port)
        }
    });
    let t = &a.triggers;
    html! {
        section id="alerts" {
            h2 { "Alerts" }
            p class="hint" { "A webhook call (JSON, signed with HMAC-SHA256 when a secret is set) or an e-mail when a replicated item's health becomes Critical, a site manager stops reporting, or a failover fails." }
            @if a.webhooks.is_empty() && email.is_none() { p class="muted" id="alerts-none" { "No alert channel: alerts are not sent." } }
            @else {
                table id="alert-channels" {
                    thead { tr { th { "Channel" } th { "Target" } th { "Details" } } }
                    tbody {
                        @for w in &a.webhooks {
                            tr { td { "Webhook" } td { code { (w.url) } } td { @if w.secret_set { "Signed (secret set)" } @else { "Not signed" } } }
                        }
                        @if let Some(e) = email {
                            tr {
                                td { "E-mail" }
                                td { code { (relay.clone().unwrap_or_default()) } }
                                td {
                                    "From " (e.from) " to " (e.to.join(", "))
                                    @if e.starttls { " · STARTTLS" }
                                    @if let Some(u) = &e.username { " · user " (u) @if e.password_set { " (password set)" } }
                                }
                            }
                        }
                    }
                }
            }
            p id="alert-triggers" {
                "Triggers: Critical health " (if t.critical_health { "on" } else { "off" })
                " · site heartbeat lost " (if t.site_heartbeat_lost { "on" } else { "off" })
                " · failover failed " (if t.failover_failed { "on" } else { "off" })
            }
            @if contributor {
                form method="post" action={ (base) "/alerts" } class="grid" id="alerts-form" {
                    (csrf_field(user))
                    input type="hidden" name="version" value=(a.version);
                    label { "Webhook URLs (one per line)"
                        textarea name="webhooks" rows="3" { (a.webhooks.iter().map(|w| w.url.as_str()).collect::<Vec<_>>().join("\n")) }
                    }
                    label { "Webhook signing secret (empty keeps the one set)" input type="password" name="webhook_secret" autocomplete="off"; }
                    label class="check" { input type="checkbox" name="remove_webhook_secret"; "Remove the webhooks' secrets" }
                    label { "SMTP relay (host:port; empty: no e-mail)" input type="text" name="smtp_relay" value=(relay.clone().unwrap_or_default()); }
                    label class="check" { input type="checkbox" name="starttls" checked[email.is_some_and(|e| e.starttls)]; "STARTTLS (required)" }
                    label { "SMTP user" input type="text" name="smtp_user" autocomplete="off" value=(email.and_then(|e| e.username.clone()).unwrap_or_default()); }
                    label { "SMTP password (empty keeps the one set)" input type="password" name="smtp_password" autocomplete="off"; }
                    label { "From" input type="text" name="from" value=(email.map(|e| e.from.clone()).unwrap_or_default()); }
                    label { "To (comma or line separated)" textarea name="to" rows="2" { (email.map(|e| e.to.join("\n")).unwrap_or_default()) } }
                    label class="check" { input type="checkbox" name="critical_health" checked[t.critical_health]; "Alert on Critical health" }
                    label class="check" { input type="checkbox" name="site_heartbeat_lost" checked[t.site_heartbeat_lost]; "Alert when a site heartbeat is lost" }
                    label class="check" { input type="checkbox" name="failover_failed" checked[t.failover_failed]; "Alert when a failover fails" }
                    button type="submit" id="save-alerts" { "Save alert settings" }
                }
                @if !a.webhooks.is_empty() || email.is_some() {
                    form method="post" action={ (base) "/alerts/test" } class="inline" id="test-alert-form" {
                        (csrf_field(user))
                        button type="submit" id="test-alert" { "Send test alert" }
                    }
                }
            }
        }
    }
}

/// The alert settings a form asks for.
pub(super) fn alerts_request(form: &Form) -> Result<AlertSettingsSpec, ApiFailure> {
    let secret = if form.checked("remove_webhook_secret") {
        Some(String::new())
    } else {
        form.get("webhook_secret").map(str::to_string)
    };
    let webhooks = form
        .get("webhooks")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|url| WebhookSpec { url: url.to_string(), secret: secret.clone() })
        .collect();
    let email = match form.get("smtp_relay") {
        None => None,
        Some(relay) => {
            let (smtp_host, smtp_port) = ferry_core::alerts::parse_relay(relay)?;
            let username = form.get("smtp_user").map(str::to_string);
            Some(EmailSpec {
                smtp_host,
                smtp_port,
                starttls: form.checked("starttls"),
                password: form.get("smtp_password").map(str::to_string),
                username,
                from: form.get("from").unwrap_or_default().to_string(),
                to: form
                    .get("to")
                    .unwrap_or_default()
                    .split([',', '\n'])
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        }
    };
    Ok(AlertSettingsSpec {
        webhooks,
        email,
        triggers: AlertTriggers {
            critical_health: form.checked("critical_health"),
            site_heartbeat_lost: form.checked("site_heartbeat_lost"),
            failover_failed: form.checked("failover_failed"),
        },
    })
}
