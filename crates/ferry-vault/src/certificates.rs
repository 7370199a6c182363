//! Host certificates issued and revoked (SEC-1).
//!
//! Agents are identified by their certificate's name (`host-<site>-<host>`), so a certificate
//! whose host joined again with a new key, or whose site was removed, would otherwise stay
//! valid under that name until it expires (a year). The vault keeps, per host, the fingerprint
//! of the certificate it issued last and the earlier ones it revoked, and hands every site the
//! revoked fingerprints that have not expired yet with each heartbeat answer; the sites pass
//! them to their hosts, whose replication receivers refuse those certificates.

use chrono::{DateTime, Utc};
use ferry_store::{DocKind, Store};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One host's certificates, stored under its certificate name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostCertificates {
    pub cn: String,
    /// The certificate issued last (SHA-256 of its DER, hex) and when it expires.
    pub current: Option<CertRef>,
    /// Earlier certificates that are no longer valid, until they expire.
    #[serde(default)]
    pub revoked: Vec<RevokedCert>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRef {
    pub sha256: String,
    pub not_after: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedCert {
    pub sha256: String,
    pub not_after: DateTime<Utc>,
    pub revoked_at: DateTime<Utc>,
    /// `Superseded` (the host joined again) or `SiteRemoved`.
    pub reason: String,
}

impl HostCertificates {
    /// Make `cert` the host's certificate; the one before it is revoked.
    fn issue(&mut self, cert: CertRef, now: DateTime<Utc>) {
        if let Some(old) = self.current.take().filter(|c| c.sha256 != cert.sha256) {
            self.revoke(old, "Superseded", now);
        }
        self.current = Some(cert);
    }

    fn revoke(&mut self, c: CertRef, reason: &str, now: DateTime<Utc>) {
        self.revoked.retain(|r| r.not_after > now && r.sha256 != c.sha256);
        self.revoked.push(RevokedCert {
            sha256: c.sha256,
            not_after: c.not_after,
            revoked_at: now,
            reason: reason.into(),
        });
    }
}

/// Record that `cert_pem` was issued to host `cn` of site `fabric`, revoking the host's earlier
/// certificate.
pub async fn record_issued(
    store: &Store,
    vault: Uuid,
    fabric: Uuid,
    cn: &str,
    cert_pem: &str,
    now: DateTime<Utc>,
) -> Result<(), ferry_store::Error> {
    let Ok(sha256) = ferry_pki::fingerprint_of_pem(cert_pem) else { return Ok(()) };
    let not_after = ferry_pki::cert_not_after(cert_pem).unwrap_or(now + chrono::Duration::days(366));
    let existing: Option<ferry_store::Doc<HostCertificates>> =
        store.get_doc(DocKind::HostCertificate, vault, cn).await?;
    let version = existing.as_ref().map(|d| d.version);
    let mut doc =
        existing.map(|d| d.body).unwrap_or(HostCertificates { cn: cn.to_string(), current: None, revoked: vec![] });
    doc.issue(CertRef { sha256, not_after }, now);
    store.put_doc(DocKind::HostCertificate, vault, cn, Some(&fabric.to_string()), None, &doc, version).await?;
    Ok(())
}

/// Revoke the certificates of every host of a removed site.
pub async fn revoke_site(
    store: &Store,
    vault: Uuid,
    fabric: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, ferry_store::Error> {
    let docs: Vec<ferry_store::Doc<HostCertificates>> =
        store.list_docs(DocKind::HostCertificate, vault, Some(&fabric.to_string()), None, i64::MAX).await?;
    let mut n = 0;
    for d in docs {
        let mut body = d.body;
        if let Some(c) = body.current.take() {
            body.revoke(c, "SiteRemoved", now);
            n += 1;
        }
        store
            .put_doc(DocKind::HostCertificate, vault, &d.id, Some(&fabric.to_string()), None, &body, Some(d.version))
            .await?;
    }
    Ok(n)
}

/// Revoke the current certificate of host `cn` (an operator's rotation, or a key that may have
/// leaked): every host refuses it from the next heartbeat, and the host's agent, told the same,
/// renews its certificate at once with its host token. Returns the revoked fingerprint, or
/// none when the host has no current certificate.
pub async fn revoke_host(
    store: &Store,
    vault: Uuid,
    fabric: Uuid,
    cn: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, ferry_store::Error> {
    let Some(d) = store.get_doc::<HostCertificates>(DocKind::HostCertificate, vault, cn).await? else {
        return Ok(None);
    };
    let mut body = d.body;
    let Some(c) = body.current.take() else { return Ok(None) };
    let sha256 = c.sha256.clone();
    body.revoke(c, "RenewalRequested", now);
    store.put_doc(DocKind::HostCertificate, vault, cn, Some(&fabric.to_string()), None, &body, Some(d.version)).await?;
    Ok(Some(sha256))
}

/// Fingerprints of the vault's revoked host certificates that have not expired yet.
pub async fn revoked(store: &Store, vault: Uuid, now: DateTime<Utc>) -> Result<Vec<String>, ferry_store::Error> {
    let docs: Vec<ferry_store::Doc<HostCertificates>> = store.all_docs(DocKind::HostCertificate, vault).await?;
    let mut out: Vec<String> =
        docs.into_iter().flat_map(|d| d.body.revoked).filter(|r| r.not_after > now).map(|r| r.sha256).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(n: u8, days: i64, now: DateTime<Utc>) -> CertRef {
        CertRef { sha256: format!("{n:064x}"), not_after: now + chrono::Duration::days(days) }
    }

    #[test]
    fn sec_1_a_new_certificate_revokes_the_one_before_until_it_expires() {
        let now = Utc::now();
        let mut h = HostCertificates { cn: "host-a".into(), current: None, revoked: vec![] };
        h.issue(cert(1, 365, now), now);
        assert!(h.revoked.is_empty(), "the first certificate revokes nothing");
        h.issue(cert(1, 365, now), now);
        assert!(h.revoked.is_empty(), "the same certificate again is not a new one");
        h.issue(cert(2, 365, now), now);
        assert_eq!(h.revoked.len(), 1);
        assert_eq!(h.revoked[0].sha256, cert(1, 365, now).sha256);
        assert_eq!(h.revoked[0].reason, "Superseded");
        // Expired revocations are dropped when the list changes next.
        let later = now + chrono::Duration::days(400);
        h.issue(cert(3, 365, later), later);
        assert_eq!(h.revoked.iter().map(|r| r.sha256.clone()).collect::<Vec<_>>(), vec![cert(2, 365, now).sha256]);
    }
}
