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

/// A role's data directory: created if missing and made private to its owner (mode 0700), so
/// that its database, tokens, keys and replicas are out of other local users' reach whatever
/// the modes of the files inside. Fails (and the role must not start) when that cannot be done.
pub fn ensure_private_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).ctx(ErrorKind::Io, || format!("Cannot create {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .ctx(ErrorKind::Io, || format!("Cannot make {} private (mode 0700)", path.display()))?;
        let mode =
            fs::metadata(path).ctx(ErrorKind::Io, || format!("Cannot read {}", path.display()))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{} is open to other users (mode {:o}); refusing to use it", path.display(), mode & 0o777),
            ));
        }
    }
    Ok(())
}

/// Write `contents` to `path` readable only by its owner (0600), atomically.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    let err = || format!("Cannot write {}", path.display());
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp).ctx(ErrorKind::Io, err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600)).ctx(ErrorKind::Io, err)?;
    }
    file.write_all(contents).ctx(ErrorKind::Io, err)?;
    file.sync_all().ctx(ErrorKind::Io, err)?;
    fs::rename(&tmp, path).ctx(ErrorKind::Io, err)
}

/// Reads a whole text file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).ctx(ErrorKind::Io, || format!("Cannot read {}", path.display()))
}

/// Reads a secret (a private key, a token): refused when other users may read or write it,
/// as an attacker on the machine could have taken or replaced it (SEC-3).
pub fn read_private_text(path: &Path) -> Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            fs::metadata(path).ctx(ErrorKind::Io, || format!("Cannot read {}", path.display()))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{} is open to other users (mode {:o}); refusing to use a secret others may have read \
                     (make it the owner's only: chmod 600 {})",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ),
            ));
        }
    }
    read_text(path)
}

#[cfg(test)]
mod private_tests {
    use super::*;

    #[test]
    fn sec_3_a_secret_open_to_other_users_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        write_private_file(&key, b"secret").expect("write");
        assert_eq!(read_private_text(&key).expect("0600 reads"), "secret");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).expect("chmod");
            let err = read_private_text(&key).expect_err("refused");
            assert!(err.to_string().contains("chmod 600"), "{mode:o}: {err}");
        }
    }

    #[test]
    fn sec_3_data_directories_and_secret_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).expect("mkdir");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private_dir(&data).expect("private");
        assert_eq!(fs::metadata(&data).expect("meta").permissions().mode() & 0o777, 0o700);
        let f = data.join("token");
        fs::write(&f, "old").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private_file(&f, b"secret").expect("write");
        assert_eq!(fs::metadata(&f).expect("meta").permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&f).expect("read"), "secret");
    }
}
