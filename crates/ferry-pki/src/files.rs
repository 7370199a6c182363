//! The fixed layout of an agent's TLS directory: `ca-cert.pem` (the vault CA),
//! `cert.pem` (the agent's own certificate) and `key.pem` (its key, mode 0600).

use std::path::Path;

use crate::ca::CA_CERT_FILE;
use crate::error::Result;
use crate::pem::{parse_certs, parse_private_key, read_private_text, read_text, write_private, write_public};

/// Own certificate file name in a TLS directory.
pub const CERT_FILE: &str = "cert.pem";
/// Own private key file name in a TLS directory (mode 0600).
pub const KEY_FILE: &str = "key.pem";

/// The three PEM texts of an agent's TLS identity.
#[derive(Clone)]
pub struct TlsFiles {
    /// The vault CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The agent's certificate, PEM.
    pub cert_pem: String,
    /// The agent's private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsFiles {
    /// True when all three files exist in `dir`.
    pub fn exists(dir: &Path) -> bool {
        [CA_CERT_FILE, CERT_FILE, KEY_FILE].iter().all(|f| dir.join(f).is_file())
    }

    /// Reads the three files and checks that each holds parseable PEM.
    pub fn load(dir: &Path) -> Result<TlsFiles> {
        let files = TlsFiles {
            ca_cert_pem: read_text(&dir.join(CA_CERT_FILE))?,
            cert_pem: read_text(&dir.join(CERT_FILE))?,
            key_pem: read_private_text(&dir.join(KEY_FILE))?,
        };
        parse_certs(&files.ca_cert_pem)?;
        parse_certs(&files.cert_pem)?;
        parse_private_key(&files.key_pem)?;
        Ok(files)
    }

    /// Writes the three files into `dir` (created if missing); the key gets mode 0600.
    pub fn save(dir: &Path, ca_cert_pem: &str, cert_pem: &str, key_pem: &str) -> Result<TlsFiles> {
        use crate::error::{Context, ErrorKind};
        std::fs::create_dir_all(dir).ctx(ErrorKind::Io, || format!("Cannot create TLS directory {}", dir.display()))?;
        write_private(&dir.join(KEY_FILE), key_pem)?;
        write_public(&dir.join(CERT_FILE), cert_pem)?;
        write_public(&dir.join(CA_CERT_FILE), ca_cert_pem)?;
        Ok(TlsFiles {
            ca_cert_pem: ca_cert_pem.to_string(),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }
}
