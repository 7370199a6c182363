//! Certificate renewal (SEC-3): before the agent's certificate expires, or at once when the
//! vault revoked it, the agent makes a new key, asks its site (with its host token) for a
//! certificate of the vault CA, stores both and presents them from the next handshake on — its
//! replication receiver, its replication connections and its API — without a restart. Open
//! connections keep the certificate they started with; the vault revokes the one before, so
//! other hosts refuse it from their next report on.
//!
//! The identity is replaced as a whole directory (`tls.new` → `tls`, the old one kept as
//! `tls.old` until the swap is done), so a crash at any moment leaves one complete identity
//! that [`recover_tls_dir`] finds at the next start.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_types::site_protocol::{HostRenewRequest, HostRenewResponse};

use crate::{Host, HostError};

/// Does a certificate that expires at `not_after` need renewing `days` ahead, at `now`?
pub fn due(not_after: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>, days: u32) -> bool {
    not_after - chrono::Duration::days(i64::from(days)) <= now
}

/// After a crash during a swap: the complete identity is `tls`, else `tls.new` (renewed, not yet
/// moved), else `tls.old` (moved away, new one not in place).
pub fn recover_tls_dir(data: &Path) -> std::io::Result<()> {
    let (tls, new, old) = (data.join("tls"), data.join("tls.new"), data.join("tls.old"));
    let complete = |d: &Path| ferry_pki::TlsFiles::load(d).is_ok();
    if !complete(&tls) {
        if complete(&new) {
            if tls.exists() {
                std::fs::remove_dir_all(&tls)?;
            }
            std::fs::rename(&new, &tls)?;
        } else if complete(&old) {
            if tls.exists() {
                std::fs::remove_dir_all(&tls)?;
            }
            std::fs::rename(&old, &tls)?;
        }
    }
    for leftover in [new, old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover)?;
        }
    }
    Ok(())
}

/// Store `ca`/`cert`/`key` as the agent's identity, replacing the directory as a whole.
fn store_identity(data: &Path, ca: &str, cert: &str, key: &str) -> Result<(), HostError> {
    let (tls, new, old) = (data.join("tls"), data.join("tls.new"), data.join("tls.old"));
    if new.exists() {
        std::fs::remove_dir_all(&new)?;
    }
    ferry_pki::TlsFiles::save(&new, ca, cert, key)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    std::fs::rename(&tls, &old)?;
    std::fs::rename(&new, &tls)?;
    std::fs::remove_dir_all(&old)?;
    Ok(())
}

/// Renew now: a new key, a certificate for it, stored and presented from the next handshake.
pub async fn renew_once(host: &Host) -> Result<(), HostError> {
    let (key_pem, csr_pem) = ferry_pki::generate_key_and_csr(&format!("host-{}", host.cfg.name))?;
    let resp: HostRenewResponse = host.site.post("/v1/renew", &HostRenewRequest { csr_pem }).await?;
    // Checked before anything is replaced: a certificate that is not this key's changes nothing.
    host.live.replace(&resp.certificate_pem, &key_pem)?;
    store_identity(&host.data, &resp.ca_pem, &resp.certificate_pem, &key_pem)?;
    host.certificate_revoked.store(false, Ordering::SeqCst);
    let until = ferry_pki::cert_not_after(&resp.certificate_pem).map(|t| t.to_rfc3339()).unwrap_or_default();
    tracing::info!(%until, "host certificate renewed");
    Ok(())
}

/// Check every `renew_check_secs` (and at once when the vault revoked this host's certificate)
/// and renew when due; a failed renewal is retried at the next check.
pub async fn renew_loop(host: Arc<Host>) {
    let check = Duration::from_secs(host.cfg.renew_check_secs.max(1));
    // A revoked certificate is renewed at once, but not more often than this while it fails.
    let retry = Duration::from_secs(10).min(check);
    let mut last_check = tokio::time::Instant::now() - check;
    loop {
        let revoked = host.certificate_revoked.load(Ordering::SeqCst);
        if (revoked && last_check.elapsed() >= retry) || last_check.elapsed() >= check {
            last_check = tokio::time::Instant::now();
            let cert = std::fs::read_to_string(host.data.join("tls").join(ferry_pki::CERT_FILE)).unwrap_or_default();
            let expiring = ferry_pki::cert_not_after(&cert)
                .is_none_or(|t| due(t, chrono::Utc::now(), host.cfg.renew_days_before_expiry));
            if revoked || expiring {
                if let Err(e) = renew_once(&host).await {
                    tracing::warn!(error = %e, revoked, "cannot renew the host certificate now; retrying later");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_3_renewal_is_due_the_configured_days_before_expiry() {
        let now = chrono::Utc::now();
        assert!(!due(now + chrono::Duration::days(31), now, 30));
        assert!(due(now + chrono::Duration::days(30), now, 30));
        assert!(due(now - chrono::Duration::days(1), now, 30), "expired");
    }

    #[test]
    fn sec_3_a_crash_during_the_swap_leaves_one_complete_identity() {
        let d = tempfile::tempdir().expect("tempdir");
        let ca = ferry_pki::Ca::create("t").expect("ca");
        let a = ca.issue_server_cert("host-a", &[], &[]).expect("a");
        let b = ca.issue_server_cert("host-a", &[], &[]).expect("b");
        let save = |dir: &str, c: &ferry_pki::IssuedCert| {
            ferry_pki::TlsFiles::save(&d.path().join(dir), ca.cert_pem(), &c.cert_pem, &c.key_pem).expect("save")
        };
        let current = || ferry_pki::TlsFiles::load(&d.path().join("tls")).expect("identity").cert_pem;
        // Moved away, the new one not in place yet.
        save("tls.old", &a);
        save("tls.new", &b);
        recover_tls_dir(d.path()).expect("recover");
        assert_eq!(current(), b.cert_pem, "the renewed identity wins");
        assert!(!d.path().join("tls.new").exists() && !d.path().join("tls.old").exists());
        // Only the old one left.
        std::fs::remove_dir_all(d.path().join("tls")).expect("rm");
        save("tls.old", &a);
        recover_tls_dir(d.path()).expect("recover");
        assert_eq!(current(), a.cert_pem);
        // A complete identity is kept; a half-written new one is dropped.
        std::fs::create_dir_all(d.path().join("tls.new")).expect("mkdir");
        recover_tls_dir(d.path()).expect("recover");
        assert_eq!(current(), a.cert_pem);
        assert!(!d.path().join("tls.new").exists());
    }
}
