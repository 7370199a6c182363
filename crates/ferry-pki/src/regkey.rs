//! Registration keys (FAB-2): the file a vault hands to an administrator so a
//! site manager can register with that vault.
//!
//! The file is JSON with a `version` field. Its HMAC-SHA256 `signature`, keyed
//! with a secret only the vault knows, covers every other field in a fixed,
//! length-prefixed order, so editing any byte of any field is detected. The
//! site reads the file without the signing secret ([`RegistrationKey::parse`])
//! to learn the vault URLs and the CA fingerprint to pin; the vault checks it
//! with [`RegistrationKey::verify`]. Revocation and one-time use are the vault
//! store's job, keyed by [`RegistrationKey::key_id`] and
//! [`RegistrationKey::secret_hash`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::hmac::{constant_time_eq, hmac_sha256};

/// The only file format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// How long a key is valid after issue (FAB-2).
pub const DEFAULT_VALIDITY_DAYS: i64 = 5;
/// A key issued further than this in the future is refused (clock skew).
pub const MAX_CLOCK_SKEW_MINUTES: i64 = 5;
/// Key files larger than this are refused unread.
const MAX_FILE_LEN: usize = 64 * 1024;
/// Bytes of randomness in the one-time secret.
const SECRET_LEN: usize = 32;
/// Domain separator at the start of the signed message.
const SIGNING_DOMAIN: &[u8] = b"ferry-registration-key";

/// The default validity, [`DEFAULT_VALIDITY_DAYS`] days.
pub fn default_validity() -> Duration {
    Duration::days(DEFAULT_VALIDITY_DAYS)
}

/// The file's JSON shape, with the signed fields kept exactly as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u32,
    vault_id: String,
    vault_name: String,
    vault_urls: Vec<String>,
    ca_fingerprint: String,
    key_id: String,
    secret: String,
    issued_at: String,
    signature: String,
}

impl Wire {
    /// The canonical byte string the signature covers.
    fn signed_message(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(512);
        let mut field = |bytes: &[u8]| {
            msg.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            msg.extend_from_slice(bytes);
        };
        field(SIGNING_DOMAIN);
        field(self.version.to_string().as_bytes());
        field(self.vault_id.as_bytes());
        field(self.vault_name.as_bytes());
        field(self.vault_urls.len().to_string().as_bytes());
        for url in &self.vault_urls {
            field(url.as_bytes());
        }
        field(self.ca_fingerprint.as_bytes());
        field(self.key_id.as_bytes());
        field(self.secret.as_bytes());
        field(self.issued_at.as_bytes());
        msg
    }

    fn sign(&self, signing_secret: &[u8]) -> String {
        hex::encode(hmac_sha256(signing_secret, &self.signed_message()))
    }

    fn signature_valid(&self, signing_secret: &[u8]) -> bool {
        match hex::decode(&self.signature) {
            Ok(given) => constant_time_eq(&given, &hmac_sha256(signing_secret, &self.signed_message())),
            Err(_) => false,
        }
    }
}

/// A parsed registration key. Construct with [`RegistrationKey::issue`],
/// [`RegistrationKey::parse`] or [`RegistrationKey::verify`].
#[derive(Clone)]
pub struct RegistrationKey {
    wire: Wire,
    vault_id: Uuid,
    key_id: Uuid,
    secret: Vec<u8>,
    issued_at: DateTime<Utc>,
}

impl std::fmt::Debug for RegistrationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationKey")
            .field("key_id", &self.key_id)
            .field("vault_id", &self.vault_id)
            .field("vault_name", &self.wire.vault_name)
            .field("vault_urls", &self.wire.vault_urls)
            .field("ca_fingerprint", &self.wire.ca_fingerprint)
            .field("issued_at", &self.issued_at)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl RegistrationKey {
    /// Issues a new key for this vault at `now`, returning it and the file text
    /// to hand out. `ca_fingerprint` is the hex SHA-256 of the vault CA cert.
    pub fn issue(
        vault_id: Uuid,
        vault_name: &str,
        vault_urls: &[String],
        ca_fingerprint: &str,
        signing_secret: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(RegistrationKey, String)> {
        let invalid = |m: &str| Error::new(ErrorKind::InvalidInput, m.to_string());
        if signing_secret.len() < 16 {
            return Err(invalid("Vault signing secret must be at least 16 bytes"));
        }
        let ca_fingerprint = normalize_fingerprint(ca_fingerprint)
            .ok_or_else(|| invalid("CA fingerprint must be 64 hex digits (SHA-256)"))?;
        let mut secret = vec![0u8; SECRET_LEN];
        rand::thread_rng().fill_bytes(&mut secret);
        let mut wire = Wire {
            version: FORMAT_VERSION,
            vault_id: vault_id.to_string(),
            vault_name: vault_name.to_string(),
            vault_urls: vault_urls.to_vec(),
            ca_fingerprint,
            key_id: Uuid::new_v4().to_string(),
            secret: URL_SAFE_NO_PAD.encode(&secret),
            issued_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            signature: String::new(),
        };
        wire.signature = wire.sign(signing_secret);
        let key = Self::from_wire(wire).map_err(|e| Error::new(ErrorKind::InvalidInput, e.message().to_string()))?;
        let text = key.to_file_text();
        Ok((key, text))
    }

    /// Reads a key file without checking its signature or age (the site side,
    /// which has no signing secret). Fails with [`ErrorKind::Malformed`].
    pub fn parse(file_text: &str) -> Result<RegistrationKey> {
        Self::from_wire(read_wire(file_text)?)
    }

    /// Checks a key file presented to the vault `expected_vault_id` at `now`.
    ///
    /// Errors, in the order checked: [`ErrorKind::Malformed`] (unparseable or
    /// unknown version), [`ErrorKind::OtherVault`], [`ErrorKind::Forged`] (any
    /// field edited), [`ErrorKind::Malformed`] (issued more than five minutes in
    /// the future), [`ErrorKind::Expired`] (`now > issued_at + validity`; the
    /// last instant itself is still valid).
    pub fn verify(
        file_text: &str,
        expected_vault_id: Uuid,
        signing_secret: &[u8],
        now: DateTime<Utc>,
        validity: Duration,
    ) -> Result<RegistrationKey> {
        let wire = read_wire(file_text)?;
        let vault_id = parse_uuid(&wire.vault_id, "vault id")?;
        if vault_id != expected_vault_id {
            return Err(Error::new(
                ErrorKind::OtherVault,
                format!(
                    "Registration key was issued by vault {:?} ({vault_id}), not by this vault ({expected_vault_id})",
                    wire.vault_name
                ),
            ));
        }
        if !wire.signature_valid(signing_secret) {
            return Err(Error::new(
                ErrorKind::Forged,
                "Registration key signature does not match its content; the file was altered or not issued by this vault",
            ));
        }
        let key = Self::from_wire(wire)?;
        if key.issued_at > now + Duration::minutes(MAX_CLOCK_SKEW_MINUTES) {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "Registration key {} is issued in the future ({}); check the clocks",
                    key.key_id, key.wire.issued_at
                ),
            ));
        }
        let expires_at = key.expires_at(validity);
        if now > expires_at {
            return Err(Error::new(
                ErrorKind::Expired,
                format!(
                    "Registration key {} expired at {}; download a new key from the vault",
                    key.key_id,
                    expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)
                ),
            ));
        }
        Ok(key)
    }

    /// The key file text (pretty JSON).
    pub fn to_file_text(&self) -> String {
        // A struct of strings, a number and a list of strings always serializes.
        serde_json::to_string_pretty(&self.wire).unwrap_or_default() + "\n"
    }

    /// File format version.
    pub fn version(&self) -> u32 {
        self.wire.version
    }
    /// Id of the issuing vault.
    pub fn vault_id(&self) -> Uuid {
        self.vault_id
    }
    /// Name of the issuing vault.
    pub fn vault_name(&self) -> &str {
        &self.wire.vault_name
    }
    /// URLs at which the site manager reaches the vault.
    pub fn vault_urls(&self) -> &[String] {
        &self.wire.vault_urls
    }
    /// Hex SHA-256 of the vault CA certificate (lower case) to pin.
    pub fn ca_fingerprint(&self) -> &str {
        &self.wire.ca_fingerprint
    }
    /// Id of this key, for the vault's store (revocation, one-time use).
    pub fn key_id(&self) -> Uuid {
        self.key_id
    }
    /// The one-time secret, base64url without padding.
    pub fn secret(&self) -> &str {
        &self.wire.secret
    }
    /// Hex SHA-256 of the raw secret bytes; what the vault store keeps.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(&self.secret))
    }
    /// When the key was issued (whole seconds).
    pub fn issued_at(&self) -> DateTime<Utc> {
        self.issued_at
    }
    /// The last instant at which the key is valid for `validity`.
    pub fn expires_at(&self, validity: Duration) -> DateTime<Utc> {
        self.issued_at + validity
    }

    /// Full structural validation; every failure is `Malformed`.
    fn from_wire(wire: Wire) -> Result<RegistrationKey> {
        let vault_id = parse_uuid(&wire.vault_id, "vault id")?;
        let key_id = parse_uuid(&wire.key_id, "key id")?;
        if wire.vault_name.trim().is_empty() {
            return Err(malformed("Registration key has an empty vault name"));
        }
        if wire.vault_urls.is_empty() || wire.vault_urls.iter().any(|u| u.trim().is_empty()) {
            return Err(malformed("Registration key has no usable vault URL"));
        }
        if normalize_fingerprint(&wire.ca_fingerprint).as_deref() != Some(&wire.ca_fingerprint) {
            return Err(malformed("Registration key CA fingerprint is not 64 lower-case hex digits"));
        }
        let secret = URL_SAFE_NO_PAD
            .decode(&wire.secret)
            .ok()
            .filter(|s| s.len() == SECRET_LEN)
            .ok_or_else(|| malformed("Registration key secret is not 32 bytes of base64url"))?;
        let issued_at = DateTime::parse_from_rfc3339(&wire.issued_at)
            .map_err(|e| Error::with_source(ErrorKind::Malformed, "Registration key issue time is not RFC 3339", e))?
            .with_timezone(&Utc);
        Ok(RegistrationKey { wire, vault_id, key_id, secret, issued_at })
    }
}

fn malformed(message: &str) -> Error {
    Error::new(ErrorKind::Malformed, message.to_string())
}

fn read_wire(file_text: &str) -> Result<Wire> {
    if file_text.len() > MAX_FILE_LEN {
        return Err(malformed("Registration key file is too large"));
    }
    // Check the version first so a future format gives a clear message.
    let value: serde_json::Value = serde_json::from_str(file_text.trim())
        .map_err(|e| Error::with_source(ErrorKind::Malformed, "Registration key file is not valid JSON", e))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(malformed(&format!(
                "Registration key format version {v} is not supported (expected {FORMAT_VERSION})"
            )))
        }
        None => return Err(malformed("Registration key file has no format version")),
    }
    serde_json::from_value(value).map_err(|e| {
        Error::with_source(ErrorKind::Malformed, "Registration key file is missing fields or has unexpected ones", e)
    })
}

fn parse_uuid(text: &str, what: &str) -> Result<Uuid> {
    Uuid::parse_str(text)
        .map_err(|e| Error::with_source(ErrorKind::Malformed, format!("Registration key {what} is not a UUID"), e))
}

/// Lower-cases and strips `:` separators; `None` unless 64 hex digits remain.
fn normalize_fingerprint(fp: &str) -> Option<String> {
    let fp: String = fp.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    (fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit())).then_some(fp)
}
