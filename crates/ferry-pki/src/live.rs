//! An agent's TLS identity that can be replaced while servers and clients use it (certificate
//! renewal without a restart, SEC-3): configs built with it ask it for the current certificate
//! at every handshake; connections already open keep theirs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

use rustls::sign::CertifiedKey;

use crate::error::{Context, ErrorKind, Result};
use crate::pem::{parse_certs, parse_private_key};

/// Fingerprints (SHA-256 of the DER, hex) of certificates revoked before they expired, as the
/// vault last listed them; shared by the TLS configs that check peers against them (SEC-1).
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<RwLock<std::collections::HashSet<String>>>);

impl Revocations {
    /// Replace the list.
    pub fn set(&self, fingerprints: &[String]) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) =
            fingerprints.iter().map(|f| f.to_ascii_lowercase()).collect();
    }

    /// Was the certificate with this fingerprint revoked?
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(&fingerprint.to_ascii_lowercase())
    }
}

/// The certificate and key presented now.
#[derive(Debug, Clone)]
pub struct LiveIdentity {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
    /// Increases with every replacement (sessions of an earlier identity are not resumed).
    generation: Arc<AtomicU64>,
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>> {
    let certs = parse_certs(cert_pem)?;
    let key = crate::tls::provider()
        .key_provider
        .load_private_key(parse_private_key(key_pem)?)
        .ctx(ErrorKind::InvalidInput, || "The private key cannot sign TLS handshakes".to_string())?;
    let ck = CertifiedKey::new(certs, key);
    ck.keys_match().ctx(ErrorKind::InvalidInput, || "The certificate is not the key's".to_string())?;
    Ok(Arc::new(ck))
}

impl LiveIdentity {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Ok(Self { current: Arc::new(RwLock::new(certified(cert_pem, key_pem)?)), generation: Default::default() })
    }

    /// Present `cert_pem`/`key_pem` from the next handshake on (checked first: a pair that does
    /// not match leaves the current identity in place).
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let next = certified(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// A client session cache for configs that present this identity: a TLS session resumed
    /// keeps the client certificate of its first handshake, so sessions made with an earlier
    /// certificate are forgotten once it was replaced (the peer would see a revoked one).
    pub fn session_store(&self) -> Arc<dyn ClientSessionStore> {
        Arc::new(SessionsOfIdentity {
            generation: self.generation.clone(),
            inner: Mutex::new((self.generation.load(Ordering::SeqCst), Arc::new(ClientSessionMemoryCache::new(64)))),
        })
    }

    /// The fingerprint (SHA-256 of the DER, hex) of the certificate presented now.
    pub fn fingerprint(&self) -> String {
        self.get().cert.first().map(|c| crate::pem::fingerprint_of_der(c)).unwrap_or_default()
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for LiveIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client sessions made with the identity of one generation.
#[derive(Debug)]
struct SessionsOfIdentity {
    generation: Arc<AtomicU64>,
    inner: Mutex<(u64, Arc<ClientSessionMemoryCache>)>,
}

impl SessionsOfIdentity {
    /// The cache of the current identity (a new, empty one after a replacement).
    fn cache(&self) -> Arc<ClientSessionMemoryCache> {
        let now = self.generation.load(Ordering::SeqCst);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.0 != now {
            *inner = (now, Arc::new(ClientSessionMemoryCache::new(64)));
        }
        inner.1.clone()
    }
}

impl ClientSessionStore for SessionsOfIdentity {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.cache().set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.cache().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache().remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.cache().insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.cache().take_tls13_ticket(server_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_3_a_replaced_identity_is_checked_and_forgets_earlier_sessions() {
        let ca = crate::Ca::create("t").expect("ca");
        let a = ca.issue_server_cert("host-a", &[], &[]).expect("a");
        let b = ca.issue_server_cert("host-a", &[], &[]).expect("b");
        let live = LiveIdentity::new(&a.cert_pem, &a.key_pem).expect("identity");
        let store = live.session_store();
        let server = ServerName::try_from("host-a").expect("name");
        store.set_kx_hint(server.clone(), NamedGroup::X25519);
        assert_eq!(store.kx_hint(&server), Some(NamedGroup::X25519));
        assert!(live.replace(&b.cert_pem, &a.key_pem).is_err(), "a certificate of another key");
        assert_eq!(store.kx_hint(&server), Some(NamedGroup::X25519), "a refused replacement changes nothing");
        assert_eq!(live.fingerprint(), crate::fingerprint_of_pem(&a.cert_pem).expect("a"));
        live.replace(&b.cert_pem, &b.key_pem).expect("replace");
        assert_eq!(live.fingerprint(), crate::fingerprint_of_pem(&b.cert_pem).expect("b"));
        assert_eq!(store.kx_hint(&server), None, "sessions of the earlier certificate are forgotten");
        assert_eq!(live.get().cert[0].as_ref(), crate::pem::parse_certs(&b.cert_pem).expect("der")[0].as_ref());
    }
}
