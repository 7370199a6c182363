//! Alert settings (JOB-4): what a vault's webhooks and e-mail channel may be set to.
//!
//! A webhook URL is `http` or `https` with a host and carries no credentials (a signing secret
//! is set apart and never read back); e-mail addresses are plain `local@domain` addresses; the
//! SMTP relay is a host name or IP address and a port. Credentials for the relay go only over
//! STARTTLS.

use std::net::IpAddr;

use ferry_types::alert::AlertSettingsSpec;

use crate::error::Error;

/// At most this many webhooks per vault.
pub const MAX_WEBHOOKS: usize = 10;
/// At most this many e-mail recipients.
pub const MAX_RECIPIENTS: usize = 50;
const MAX_URL_LEN: usize = 2048;
const MAX_SECRET_LEN: usize = 256;

fn settings(reason: impl Into<String>) -> Error {
    Error::AlertSettingsInvalid { reason: reason.into() }
}

/// A webhook URL: `http(s)://host[:port]/path?query`, without user name, password or fragment.
pub fn validate_webhook_url(raw: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::AlertWebhookUrlInvalid { url: raw.to_string(), reason: reason.to_string() };
    if raw.is_empty() {
        return Err(bad("it is empty"));
    }
    if raw.len() > MAX_URL_LEN {
        return Err(bad("it is longer than 2048 characters"));
    }
    if raw.trim() != raw || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains spaces or control characters"));
    }
    // The parser reads `https:///x` as host `x`; an operator who wrote that forgot the host.
    if raw.split_once("://").is_none_or(|(_, rest)| rest.is_empty() || rest.starts_with('/')) {
        return Err(bad("it has no host (write scheme://host/path)"));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https are supported"));
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(bad("it has no host")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("put no credentials in the URL; use the webhook's secret"));
    }
    if url.fragment().is_some() {
        return Err(bad("a fragment (#...) is not sent to the server"));
    }
    Ok(())
}

fn is_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+/=?^_`{|}~-";

/// A plain `local@domain` address (dot-atom local part, host name domain).
pub fn is_email_address(addr: &str) -> bool {
    if addr.len() > 254 {
        return false;
    }
    let Some((local, domain)) = addr.rsplit_once('@') else { return false };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.split('.').all(|atom| {
            !atom.is_empty() && atom.bytes().all(|b| b.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(&b))
        });
    local_ok && is_hostname(domain)
}

fn check_address(field: &str, addr: &str) -> Result<(), Error> {
    if is_email_address(addr) {
        Ok(())
    } else {
        Err(Error::AlertEmailAddressInvalid { field: field.to_string(), address: addr.to_string() })
    }
}

/// The SMTP relay: a host name or IP address, and a port other than 0.
pub fn validate_smtp_relay(host: &str, port: u16) -> Result<(), Error> {
    let bad = |reason: &str| Error::AlertSmtpRelayInvalid { relay: format!("{host}:{port}"), reason: reason.into() };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    if host.parse::<IpAddr>().is_err() && !is_hostname(host) {
        return Err(bad("the host is not a host name or IP address"));
    }
    if port == 0 {
        return Err(bad("port 0 is not valid; use 1..=65535"));
    }
    Ok(())
}

/// Split `host:port` (`[v6]:port` for IPv6) as typed by an operator.
pub fn parse_relay(raw: &str) -> Result<(String, u16), Error> {
    let bad = |reason: &str| Error::AlertSmtpRelayInvalid { relay: raw.to_string(), reason: reason.into() };
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(|| bad("write an IPv6 relay as [address]:port"))?;
        (h, p)
    } else {
        raw.rsplit_once(':').ok_or_else(|| bad("write the relay as host:port"))?
    };
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number in 1..=65535"))?;
    validate_smtp_relay(host, port)?;
    Ok((host.to_string(), port))
}

fn check_secret(what: &str, s: &str) -> Result<(), Error> {
    if s.len() > MAX_SECRET_LEN {
        return Err(settings(format!("the {what} is longer than {MAX_SECRET_LEN} bytes")));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(settings(format!("the {what} contains control characters")));
    }
    Ok(())
}

/// Validate settings as written. `has_password` says whether, after keeping what was already
/// set, the SMTP user has a password.
pub fn validate_alert_settings(spec: &AlertSettingsSpec, has_password: bool) -> Result<(), Error> {
    if spec.webhooks.len() > MAX_WEBHOOKS {
        return Err(settings(format!("at most {MAX_WEBHOOKS} webhooks; {} given", spec.webhooks.len())));
    }
    for (i, w) in spec.webhooks.iter().enumerate() {
        validate_webhook_url(&w.url)?;
        if spec.webhooks[..i].iter().any(|o| o.url == w.url) {
            return Err(settings(format!("webhook {} is listed twice", w.url)));
        }
        if let Some(s) = &w.secret {
            check_secret("webhook secret", s)?;
        }
    }
    if let Some(e) = &spec.email {
        validate_smtp_relay(&e.smtp_host, e.smtp_port)?;
        check_address("from", &e.from)?;
        if e.to.is_empty() {
            return Err(settings("e-mail needs at least one recipient"));
        }
        if e.to.len() > MAX_RECIPIENTS {
            return Err(settings(format!("at most {MAX_RECIPIENTS} e-mail recipients; {} given", e.to.len())));
        }
        for (i, a) in e.to.iter().enumerate() {
            check_address("to", a)?;
            if e.to[..i].iter().any(|o| o.eq_ignore_ascii_case(a)) {
                return Err(settings(format!("recipient {a} is listed twice")));
            }
        }
        if let Some(p) = &e.password {
            check_secret("SMTP password", p)?;
        }
        match e.username.as_deref() {
            Some(u) => {
                if u.is_empty() || u.len() > MAX_SECRET_LEN || u.chars().any(|c| c.is_control()) {
                    return Err(settings("the SMTP user name is empty, too long or has control characters"));
                }
                if !e.starttls {
                    return Err(settings("SMTP credentials are only sent over STARTTLS; turn starttls on"));
                }
                if !has_password {
                    return Err(settings("the SMTP user needs a password"));
                }
            }
            None => {
                if e.password.as_deref().is_some_and(|p| !p.is_empty()) {
                    return Err(settings("an SMTP password needs a user name"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::alert::{EmailSpec, WebhookSpec};

    fn email() -> EmailSpec {
        EmailSpec {
            smtp_host: "smtp.example.com".into(),
            smtp_port: 587,
            starttls: true,
            username: None,
            password: None,
            from: "ferry@example.com".into(),
            to: vec!["ops@example.com".into()],
        }
    }

    fn code(r: Result<(), Error>) -> &'static str {
        r.err().map(|e| e.code()).unwrap_or("ok")
    }

    #[test]
    fn job_4_alert_webhook_urls() {
        for ok in ["http://127.0.0.1:8080/hook", "https://hooks.example.com/x?y=1", "http://[::1]:9/a"] {
            assert_eq!(code(validate_webhook_url(ok)), "ok", "{ok}");
        }
        for bad in [
            "",
            "ftp://example.com/x",
            "example.com/hook",
            "http:///nohost",
            "https://user:pw@example.com/",
            "https://example.com/a#frag",
            "https://exa mple.com/",
            "file:///etc/passwd",
            " http://example.com",
        ] {
            assert_eq!(code(validate_webhook_url(bad)), "AlertWebhookUrlInvalid", "{bad:?}");
        }
    }

    #[test]
    fn job_4_alert_email_addresses_and_relay() {
        for ok in ["a@b", "ops.team+dr@mail.example.com", "x_y-z@h1"] {
            assert!(is_email_address(ok), "{ok}");
        }
        for bad in ["", "ops", "@example.com", "ops@", "a b@example.com", "a..b@example.com", "a@-x.com", "a@b@c"] {
            assert!(!is_email_address(bad), "{bad:?}");
        }
        assert_eq!(parse_relay("smtp.example.com:587").ok(), Some(("smtp.example.com".into(), 587)));
        assert_eq!(parse_relay("[::1]:25").ok(), Some(("::1".into(), 25)));
        assert_eq!(parse_relay("10.0.0.1:25").ok(), Some(("10.0.0.1".into(), 25)));
        for bad in ["smtp.example.com", "smtp.example.com:0", "smtp.example.com:99999", ":25", "bad host:25", "[::1]25"]
        {
            assert_eq!(parse_relay(bad).err().map(|e| e.code()), Some("AlertSmtpRelayInvalid"), "{bad:?}");
        }
    }

    #[test]
    fn job_4_alert_settings_rules() {
        let mut s = AlertSettingsSpec {
            webhooks: vec![WebhookSpec { url: "https://a.example/h".into(), secret: Some("s3cret".into()) }],
            email: Some(email()),
            ..Default::default()
        };
        assert_eq!(code(validate_alert_settings(&s, false)), "ok");
        s.webhooks.push(s.webhooks[0].clone());
        assert_eq!(code(validate_alert_settings(&s, false)), "AlertSettingsInvalid");
        s.webhooks.pop();
        let mut e = email();
        e.to.clear();
        s.email = Some(e);
        assert_eq!(code(validate_alert_settings(&s, false)), "AlertSettingsInvalid");
        let mut e = email();
        e.to.push("not an address".into());
        s.email = Some(e);
        assert_eq!(code(validate_alert_settings(&s, false)), "AlertEmailAddressInvalid");
        let mut e = email();
        e.username = Some("ferry".into());
        s.email = Some(e.clone());
        assert_eq!(code(validate_alert_settings(&s, false)), "AlertSettingsInvalid", "user without password");
        assert_eq!(code(validate_alert_settings(&s, true)), "ok");
        e.starttls = false;
        s.email = Some(e);
        assert_eq!(code(validate_alert_settings(&s, true)), "AlertSettingsInvalid", "credentials in clear");
        let mut e = email();
        e.password = Some("pw".into());
        s.email = Some(e);
        assert_eq!(code(validate_alert_settings(&s, true)), "AlertSettingsInvalid", "password without user");
        s.email = None;
        s.webhooks =
            (0..=MAX_WEBHOOKS).map(|i| WebhookSpec { url: format!("https://a.example/{i}"), secret: None }).collect();
        assert_eq!(code(validate_alert_settings(&s, false)), "AlertSettingsInvalid");
    }
}
