//! What a site manager keeps on disk: its registration, its hosts, its cloud pairs, and the
//! answers to commands it already ran (so a command delivered twice runs once).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use ferry_types::site_protocol::{CommandResult, HostReport, PairConfig, ReplicationPeer};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub vault_url: String,
    pub vault_id: Uuid,
    pub fabric_id: Uuid,
    pub provider_id: Uuid,
    pub site_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostEntry {
    pub id: String,
    pub name: String,
    pub address: String,
    pub token_hash: String,
    /// SHA-256 of the public key the host joined with (its certificate's key).
    #[serde(default)]
    pub key_sha256: Option<String>,
    #[serde(default)]
    pub last_report: Option<HostReport>,
    #[serde(default)]
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    pub hosts: Vec<HostEntry>,
    pub pairs: Vec<PairConfig>,
    /// Recently answered commands (bounded).
    pub answered: VecDeque<(Uuid, CommandResult)>,
    /// Where the vault's hosts receive replication, from the vault's last answer; passed on to
    /// this site's hosts (kept across a restart of the site while the vault is unreachable).
    #[serde(default)]
    pub peers: Vec<ReplicationPeer>,
    /// Host certificates the vault revoked (SEC-1), from its last answer; passed on to hosts.
    #[serde(default)]
    pub revoked_certificates: Vec<String>,
}

pub const MAX_ANSWERED: usize = 512;

pub fn tls_dir(data: &Path) -> PathBuf {
    data.join("tls")
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => {
            serde_json::from_slice(&b).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write atomically: temp file, fsync, rename, fsync the directory.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
