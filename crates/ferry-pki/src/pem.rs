//! PEM parsing and private-file writing helpers shared by the other modules.

use std::fs;
use std::io::Write;
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, ErrorKind, Result};

/// All certificates in a PEM text, in order. At least one is required.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .ctx(ErrorKind::InvalidInput, || "Certificate PEM could not be read".to_string())?;
    if certs.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "Certificate PEM contains no certificate"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM text.
pub fn parse_private_key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .ctx(ErrorKind::InvalidInput, || "Private key PEM could not be read".to_string())?
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "Private key PEM contains no key"))
}

/// Hex SHA-256 of the first certificate's DER in `cert_pem` (lower case, 64 chars).
pub fn fingerprint_of_pem(cert_pem: &str) -> Result<String> {
    let certs = parse_certs(cert_pem)?;
    Ok(fingerprint_of_der(&certs[0]))
}

/// Hex SHA-256 of a certificate's DER (lower case, 64 chars).
pub fn fingerprint_of_der(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// Checks that `ca_pem` is the CA pinned by `expected_fingerprint` (as carried by a
/// registration key). Comparison ignores case and `:` separators.
pub fn verify_ca_pin(ca_pem: &str, expected_fingerprint: &str) -> Result<()> {
    let actual = fingerprint_of_pem(ca_pem)?;
    let expected: String = expected_fingerprint.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if actual == expected {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::PinMismatch,
            format!("CA certificate fingerprint {actual} does not match the pinned {expected}"),
        ))
    }
}

/// Writes a file readable by everyone (certificates).
pub(crate) fn write_public(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).ctx(ErrorKind::Io, || format!("Cannot write {}", path.display()))
}

/// Writes a file readable only by its owner (mode 0600 on Unix), replacing any old one.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    let err = || format!("Cannot write private key file {}", path.display());
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).ctx(ErrorKind::Io, err)?;
    // The mode above only applies on creation; tighten a pre-existing file too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600)).ctx(ErrorKind::Io, err)?;
    }
    file.write_all(contents.as_bytes()).ctx(ErrorKind::Io, err)?;
    file.sync_all().ctx(ErrorKind::Io, err)
}

/// Reads a whole text file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).ctx(ErrorKind::Io, || format!("Cannot read {}", path.display()))
}
