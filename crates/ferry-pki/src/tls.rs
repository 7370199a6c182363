//! rustls configurations that trust only the vault CA, always built on the
//! `ring` provider explicitly (never the process-wide default provider).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Context, Error, ErrorKind, Result};
use crate::live::{LiveIdentity, Revocations};
use crate::pem::{parse_certs, parse_private_key};

/// Whether and how a server asks for client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificate is requested.
    None,
    /// A client certificate is requested; if sent it must chain to this CA (PEM).
    Optional(String),
    /// A client certificate chaining to this CA (PEM) is mandatory.
    Required(String),
    /// Like `Required`, and the certificate's common name must be one of these.
    RequiredNamed { ca_pem: String, common_names: Vec<String> },
}

/// A client verifier that accepts only certificates of the CA whose CN is allowed.
#[derive(Debug)]
struct NamedClientVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    common_names: Vec<String>,
}

impl rustls::server::danger::ClientCertVerifier for NamedClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match peer_common_name(end_entity) {
            Some(cn) if self.common_names.contains(&cn) => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The subject alternative names (DNS names and addresses) of the first certificate in
/// `cert_pem`; empty when it has none, `None` when it cannot be read.
pub fn cert_alternative_names(cert_pem: &str) -> Option<Vec<String>> {
    let certs = parse_certs(cert_pem).ok()?;
    let (_, cert) = X509Certificate::from_der(certs.first()?).ok()?;
    let names = match cert.subject_alternative_name().ok()? {
        Some(ext) => ext.value.general_names.iter().map(|n| n.to_string()).collect(),
        None => Vec::new(),
    };
    Some(names)
}

/// When the first certificate in `cert_pem` expires.
pub fn cert_not_after(cert_pem: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let certs = parse_certs(cert_pem).ok()?;
    let (_, cert) = X509Certificate::from_der(certs.first()?).ok()?;
    chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
}

/// The subject common name of the first certificate in `cert_pem`.
pub fn cert_common_name(cert_pem: &str) -> Option<String> {
    let certs = parse_certs(cert_pem).ok()?;
    peer_common_name(certs.first()?)
}

/// ALPN protocols offered by servers built with `alpn = true`.
pub const ALPN_H2_HTTP11: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider every Ferry TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config presenting `cert_pem` (leaf first, chain may follow) and
/// `key_pem`. With `alpn` the server offers `h2` and `http/1.1`.
pub fn server_config(cert_pem: &str, key_pem: &str, client_auth: ClientAuth, alpn: bool) -> Result<Arc<ServerConfig>> {
    let certs = parse_certs(cert_pem)?;
    let key = parse_private_key(key_pem)?;
    let mut config = server_builder(client_auth)?
        .with_single_cert(certs, key)
        .ctx(ErrorKind::InvalidInput, || "Server certificate and key do not form a usable identity".to_string())?;
    if alpn {
        config.alpn_protocols = ALPN_H2_HTTP11.iter().map(|p| p.to_vec()).collect();
    }
    Ok(Arc::new(config))
}

/// Like [`server_config`], presenting whatever certificate `identity` holds at each handshake
/// (a renewed certificate is used from the next connection on, without a restart).
pub fn server_config_live(identity: &LiveIdentity, client_auth: ClientAuth, alpn: bool) -> Result<Arc<ServerConfig>> {
    let mut config = server_builder(client_auth)?.with_cert_resolver(Arc::new(identity.clone()));
    if alpn {
        config.alpn_protocols = ALPN_H2_HTTP11.iter().map(|p| p.to_vec()).collect();
    }
    Ok(Arc::new(config))
}

fn server_builder(
    client_auth: ClientAuth,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ctx(ErrorKind::Tls, || "TLS protocol versions not supported by the provider".to_string())?;
    Ok(match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca_pem) | ClientAuth::Required(ca_pem) if ca_pem.trim().is_empty() => {
            return Err(Error::new(ErrorKind::InvalidInput, "Client authentication needs a CA certificate"));
        }
        ClientAuth::Optional(ca_pem) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&ca_pem)?), provider)
                .allow_unauthenticated()
                .build()
                .ctx(ErrorKind::Tls, || "Cannot build the client certificate verifier".to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::Required(ca_pem) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&ca_pem)?), provider)
                .build()
                .ctx(ErrorKind::Tls, || "Cannot build the client certificate verifier".to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::RequiredNamed { ca_pem, common_names } => {
            if ca_pem.trim().is_empty() || common_names.is_empty() {
                return Err(Error::new(ErrorKind::InvalidInput, "Named client authentication needs a CA and names"));
            }
            let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&ca_pem)?), provider)
                .build()
                .ctx(ErrorKind::Tls, || "Cannot build the client certificate verifier".to_string())?;
            builder.with_client_cert_verifier(Arc::new(NamedClientVerifier { inner, common_names }))
        }
    })
}

/// A client config trusting only the CA in `ca_pem`, optionally presenting a
/// client certificate `(cert_pem, key_pem)` for mutual TLS.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
        .build()
        .ctx(ErrorKind::Tls, || "Cannot build the server certificate verifier".to_string())?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ctx(ErrorKind::Tls, || "TLS protocol versions not supported by the provider".to_string())?
        .with_webpki_verifier(verifier);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(parse_certs(cert_pem)?, parse_private_key(key_pem)?)
            .ctx(ErrorKind::InvalidInput, || "Client certificate and key do not form a usable identity".to_string())?,
    };
    Ok(Arc::new(config))
}

/// The certificate name a client expects of the server it connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerName {
    /// Exactly this common name (a replica host, a host's API, a site after its host joined).
    Exact(String),
    /// A common name starting with this (`site-` while a host joins, before it knows its site).
    Prefix(String),
}

impl PeerName {
    fn matches(&self, cn: &str) -> bool {
        match self {
            PeerName::Exact(n) => cn == n,
            PeerName::Prefix(p) => cn.starts_with(p.as_str()) && cn.len() > p.len(),
        }
    }
}

impl std::fmt::Display for PeerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerName::Exact(n) => f.write_str(n),
            PeerName::Prefix(p) => write!(f, "{p}…"),
        }
    }
}

/// A client config that trusts only the CA in `ca_pem`, optionally presents a client
/// certificate, and accepts a server only if its certificate's common name is `expected`. The
/// peer's identity is its certificate, not its address: a Ferry agent is accepted at any
/// address (its certificate carries no alternative name a browser could be fooled with), and an
/// address now held by another agent is refused. The server name the client sends is not
/// checked against the certificate.
pub fn named_server_client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    expected: PeerName,
) -> Result<Arc<ClientConfig>> {
    named_server_client_config_revoking(ca_pem, identity, expected, None)
}

/// Like [`named_server_client_config`], and a server presenting a certificate in `revoked` is
/// refused whatever name it carries (SEC-1).
pub fn named_server_client_config_revoking(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    expected: PeerName,
    revoked: Option<&Revocations>,
) -> Result<Arc<ClientConfig>> {
    let builder = named_client_builder(ca_pem, expected, revoked.cloned())?;
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(parse_certs(cert_pem)?, parse_private_key(key_pem)?)
            .ctx(ErrorKind::InvalidInput, || "Client certificate and key do not form a usable identity".to_string())?,
    };
    Ok(Arc::new(config))
}

/// Like [`named_server_client_config`], presenting whatever certificate `identity` holds at
/// each handshake (a renewed certificate is used from the next connection on).
pub fn named_server_client_config_live(
    ca_pem: &str,
    identity: &LiveIdentity,
    expected: PeerName,
    revoked: Option<&Revocations>,
) -> Result<Arc<ClientConfig>> {
    let mut config =
        named_client_builder(ca_pem, expected, revoked.cloned())?.with_client_cert_resolver(Arc::new(identity.clone()));
    config.resumption = rustls::client::Resumption::store(identity.session_store());
    Ok(Arc::new(config))
}

fn named_client_builder(
    ca_pem: &str,
    expected: PeerName,
    revoked: Option<Revocations>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>> {
    let empty = match &expected {
        PeerName::Exact(n) | PeerName::Prefix(n) => n.trim().is_empty(),
    };
    if empty {
        return Err(Error::new(ErrorKind::InvalidInput, "The expected peer certificate name is empty"));
    }
    let provider = provider();
    let verifier =
        Arc::new(NamedServerVerifier { roots: roots(ca_pem)?, provider: provider.clone(), expected, revoked });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ctx(ErrorKind::Tls, || "TLS protocol versions not supported by the provider".to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// A client config for host-to-host replication: presents `(cert_pem, key_pem)` and accepts
/// only the replica host named `expected_cn` (see [`named_server_client_config`]).
pub fn named_peer_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    expected_cn: &str,
) -> Result<Arc<ClientConfig>> {
    named_server_client_config(ca_pem, Some((cert_pem, key_pem)), PeerName::Exact(expected_cn.to_string()))
}

/// A server verifier that checks the chain to the vault CA (validity, usage, signatures) like
/// webpki, then the common name instead of an alternative name.
#[derive(Debug)]
struct NamedServerVerifier {
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
    expected: PeerName,
    /// Certificates refused although they chain to the CA and carry the expected name.
    revoked: Option<Revocations>,
}

impl rustls::client::danger::ServerCertVerifier for NamedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.revoked.as_ref().is_some_and(|r| r.contains(&crate::pem::fingerprint_of_der(end_entity))) {
            return Err(rustls::Error::General(format!("the certificate of {} was revoked", self.expected)));
        }
        match peer_common_name(end_entity) {
            Some(cn) if self.expected.matches(&cn) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "the peer is {}, not {}",
                other.unwrap_or_else(|| "a certificate without a common name".into()),
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The subject common name of a DER certificate (e.g. a peer's, from
/// `ServerConnection::peer_certificates()`), if it has a readable one.
pub fn peer_common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

fn roots(ca_pem: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        store
            .add(cert)
            .ctx(ErrorKind::InvalidInput, || "CA certificate cannot be used as a trust anchor".to_string())?;
    }
    Ok(store)
}
