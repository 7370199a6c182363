//! The vault's private certificate authority: creation, persistence and issuing
//! of server/agent certificates (directly or from an agent's CSR).

use std::net::IpAddr;
use std::path::Path;

use chrono::{DateTime, Utc};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Context, Error, ErrorKind, Result};
use crate::pem::{self, fingerprint_of_pem, parse_certs};

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// File name of the CA private key inside a CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Validity of the CA certificate.
const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of every certificate the CA issues.
const LEAF_VALIDITY_DAYS: i64 = 365;
/// Certificates start this long in the past to tolerate small clock skew.
const BACKDATE_MINUTES: i64 = 5;
/// Organisation put in every subject.
const ORGANIZATION: &str = "Ferry";

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM. Keep it secret.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// A private CA: one per vault server.
pub struct Ca {
    /// The CA certificate exactly as created/persisted (what peers trust).
    cert_pem: String,
    /// Hex SHA-256 of the CA certificate DER.
    fingerprint: String,
    /// The CA certificate as rcgen needs it for signing (same subject and key).
    signer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a fresh CA (ECDSA P-256, 10 years) with the given common name.
    pub fn create(common_name: &str) -> Result<Ca> {
        let key = KeyPair::generate().ctx(ErrorKind::Crypto, || "Cannot generate the CA key".to_string())?;
        let now = Utc::now();
        let mut params = base_params(common_name, now, CA_VALIDITY_DAYS)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let signer =
            params.self_signed(&key).ctx(ErrorKind::Crypto, || "Cannot self-sign the CA certificate".to_string())?;
        let cert_pem = signer.pem();
        Ok(Ca { fingerprint: fingerprint_of_pem(&cert_pem)?, cert_pem, signer, key })
    }

    /// Rebuilds a CA from its persisted certificate and key PEMs, checking that
    /// they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem)
            .ctx(ErrorKind::InvalidInput, || "CA private key PEM is not usable".to_string())?;
        let der = parse_certs(cert_pem)?.remove(0);
        let (_, x509) = X509Certificate::from_der(&der)
            .ctx(ErrorKind::InvalidInput, || "CA certificate cannot be parsed".to_string())?;
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(Error::new(ErrorKind::InvalidInput, "CA private key does not match the CA certificate"));
        }
        let params = CertificateParams::from_ca_cert_der(&der)
            .ctx(ErrorKind::InvalidInput, || "CA certificate is not usable for signing".to_string())?;
        let signer = params.self_signed(&key).ctx(ErrorKind::Crypto, || "Cannot prepare the CA signer".to_string())?;
        Ok(Ca { fingerprint: crate::pem::fingerprint_of_der(&der), cert_pem: cert_pem.to_string(), signer, key })
    }

    /// Loads the CA from `dir/ca-cert.pem` and `dir/ca-key.pem`, or creates and
    /// persists a new one when neither exists. Refuses to overwrite a lone half.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = pem::read_text(&cert_path)?;
                let key_pem = pem::read_private_text(&key_path)?;
                Ca::from_pem(&cert_pem, &key_pem)
            }
            (false, false) => {
                std::fs::create_dir_all(dir)
                    .ctx(ErrorKind::Io, || format!("Cannot create CA directory {}", dir.display()))?;
                let ca = Ca::create(common_name)?;
                pem::write_private(&key_path, &ca.key_pem())?;
                pem::write_public(&cert_path, &ca.cert_pem)?;
                Ok(ca)
            }
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "CA directory {} has only one of {CA_CERT_FILE} and {CA_KEY_FILE}; refusing to replace it",
                    dir.display()
                ),
            )),
        }
    }

    /// The CA certificate, PEM (what every peer trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Hex SHA-256 of the CA certificate DER; carried by registration keys for pinning.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Issues a certificate with a fresh key for a server that is also a TLS
    /// client (EKU serverAuth + clientAuth), valid for one year.
    pub fn issue_server_cert(
        &self,
        common_name: &str,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
    ) -> Result<IssuedCert> {
        let key = KeyPair::generate().ctx(ErrorKind::Crypto, || format!("Cannot generate a key for {common_name}"))?;
        let params = leaf_params(common_name, dns_names, ip_addrs, Utc::now())?;
        let cert = params
            .signed_by(&key, &self.signer, &self.key)
            .ctx(ErrorKind::Crypto, || format!("Cannot sign the certificate of {common_name}"))?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Signs an agent's CSR. Only the CSR's public key (and its proof of
    /// possession) is used: the subject and SANs are decided here by the CA.
    pub fn sign_csr(&self, csr_pem: &str, common_name: &str, san_dns: &[String], san_ips: &[IpAddr]) -> Result<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .ctx(ErrorKind::InvalidInput, || "Certificate signing request is not valid".to_string())?;
        csr.params = leaf_params(common_name, san_dns, san_ips, Utc::now())?;
        let cert = csr
            .signed_by(&self.signer, &self.key)
            .ctx(ErrorKind::Crypto, || format!("Cannot sign the certificate of {common_name}"))?;
        Ok(cert.pem())
    }
}

/// The SHA-256 of the public key (SubjectPublicKeyInfo) a CSR asks to certify, in hex, once its
/// signature proved that the sender holds the private key. Binds a joined host to its key.
pub fn csr_key_fingerprint(csr_pem: &str) -> Result<String> {
    use rcgen::PublicKeyData;
    use sha2::Digest;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .ctx(ErrorKind::InvalidInput, || "Certificate signing request is not valid".to_string())?;
    Ok(hex::encode(sha2::Sha256::digest(csr.public_key.der_bytes())))
}

/// Generates an agent key pair and a CSR for it: `(key_pem, csr_pem)`.
pub fn generate_key_and_csr(common_name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().ctx(ErrorKind::Crypto, || format!("Cannot generate a key for {common_name}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    let csr =
        params.serialize_request(&key).ctx(ErrorKind::Crypto, || format!("Cannot create a CSR for {common_name}"))?;
    let csr_pem = csr.pem().ctx(ErrorKind::Crypto, || "Cannot encode the CSR as PEM".to_string())?;
    Ok((key.serialize_pem(), csr_pem))
}

fn distinguished_name(common_name: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

fn base_params(common_name: &str, now: DateTime<Utc>, days: i64) -> Result<CertificateParams> {
    if common_name.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "Certificate common name must not be empty"));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.not_before = to_offset(now - chrono::Duration::minutes(BACKDATE_MINUTES))?;
    params.not_after = to_offset(now + chrono::Duration::days(days))?;
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn leaf_params(
    common_name: &str,
    dns_names: &[String],
    ip_addrs: &[IpAddr],
    now: DateTime<Utc>,
) -> Result<CertificateParams> {
    let mut params = base_params(common_name, now, LEAF_VALIDITY_DAYS)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    for dns in dns_names {
        let name = dns
            .as_str()
            .try_into()
            .ctx(ErrorKind::InvalidInput, || format!("DNS name {dns:?} is not valid for a certificate"))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.subject_alt_names.extend(ip_addrs.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Positive and without a leading zero octet.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn to_offset(t: DateTime<Utc>) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.timestamp())
        .ctx(ErrorKind::InvalidInput, || format!("Time {t} is out of range for a certificate"))
}
