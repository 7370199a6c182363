//! Join tokens (SEC-1): one per host, used once.
//!
//! A host joins its site with a token issued for that host only: the file
//! `<data>/join-tokens/<host name>` (mode 0600) holds it until the host joined, then it is gone.
//! The site manager issues one at start for every host of its definition that never joined;
//! the operator issues a new one (`ferry site join-token --host NAME`) for a host that must join
//! again (a reinstalled server). A token opens only its own host's name, so a token copied to one
//! host cannot take over another host's name, address, token or certificate; once a host joined,
//! joining again under its name needs a new token from the operator. The site records the key
//! each host joined (or renewed) with in its state.
//!
//! The token files are the state: the running site manager reads the file at each join, so the
//! command that issues a token needs no connection to it.

use std::path::{Path, PathBuf};

use crate::config::Fabric;
use crate::SiteError;

/// Directory of the open join tokens, under the site's data directory.
pub const JOIN_TOKENS_DIR: &str = "join-tokens";

/// Where the join token of host `host_name` is kept.
pub fn path(data: &Path, host_name: &str) -> PathBuf {
    data.join(JOIN_TOKENS_DIR).join(host_name)
}

/// A host name of the site's definition, usable as a file name.
fn defined_host<'a>(fabric: &'a Fabric, host_name: &str) -> Result<&'a str, SiteError> {
    let name = fabric
        .hosts
        .iter()
        .map(|(_, n, _)| n.as_str())
        .find(|n| *n == host_name)
        .ok_or_else(|| SiteError::UnknownHost(host_name.to_string()))?;
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !safe {
        return Err(SiteError::Config(crate::config::ConfigError::Invalid(format!(
            "host name {name:?} cannot name a join token (letters, digits, '-', '_' and '.' only)"
        ))));
    }
    Ok(name)
}

/// Issue a new join token for host `host_name` of the definition (any earlier open token of it
/// stops working); returns the file that holds it.
pub fn issue(data: &Path, fabric: &Fabric, host_name: &str) -> Result<PathBuf, SiteError> {
    let name = defined_host(fabric, host_name)?;
    let dir = data.join(JOIN_TOKENS_DIR);
    ferry_pki::ensure_private_dir(&dir)?;
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    let token = format!("fj_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let p = path(data, name);
    // Written beside and renamed: a join never reads half a token.
    ferry_pki::write_private_file(&p, token.as_bytes())?;
    Ok(p)
}

/// Issue a token for every host of the definition that never joined and has none open.
pub fn issue_missing(data: &Path, fabric: &Fabric, joined: &[String]) -> Result<Vec<PathBuf>, SiteError> {
    let mut issued = Vec::new();
    for (_, name, _) in &fabric.hosts {
        if joined.iter().any(|j| j == name) || path(data, name).exists() {
            continue;
        }
        issued.push(issue(data, fabric, name)?);
    }
    Ok(issued)
}

/// Whether `token` is the open join token of host `host_name`. A missing file (never issued,
/// or used already) is not an error of the site: the token is simply not valid.
pub fn matches(data: &Path, host_name: &str, token: &str) -> Result<bool, SiteError> {
    let p = path(data, host_name);
    if !p.exists() {
        return Ok(false);
    }
    let open = ferry_pki::read_private_text(&p)?;
    Ok(ferry_pki::constant_time_eq(open.trim().as_bytes(), token.trim().as_bytes()))
}

/// Use up the join token of host `host_name` (after the host joined).
pub fn consume(data: &Path, host_name: &str) -> Result<(), SiteError> {
    match std::fs::remove_file(path(data, host_name)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fabric(names: &[&str]) -> Fabric {
        Fabric {
            clouds: vec![],
            host_groups: vec![],
            logical_networks: vec![],
            vm_networks: vec![],
            storage_classifications: vec![],
            hosts: names.iter().map(|n| (format!("id-{n}"), n.to_string(), "g".to_string())).collect(),
        }
    }

    #[test]
    fn sec_1_a_join_token_opens_only_its_host_and_only_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = fabric(&["ny1", "ny2"]);
        let issued = issue_missing(d.path(), &f, &["ny2".to_string()]).expect("issue");
        assert_eq!(issued, vec![path(d.path(), "ny1")], "only the host that never joined gets one");
        let token = std::fs::read_to_string(&issued[0]).expect("token");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&issued[0]).expect("meta").permissions().mode() & 0o777, 0o600);
        assert!(matches(d.path(), "ny1", &token).expect("read"));
        assert!(!matches(d.path(), "ny2", &token).expect("read"), "another host's name");
        assert!(!matches(d.path(), "ny1", "fj_wrong").expect("read"));
        consume(d.path(), "ny1").expect("consume");
        assert!(!matches(d.path(), "ny1", &token).expect("read"), "used once");
        // A new token replaces the old one.
        let again = issue(d.path(), &f, "ny1").expect("issue");
        let fresh = std::fs::read_to_string(&again).expect("token");
        assert_ne!(fresh, token);
        assert!(matches(d.path(), "ny1", &fresh).expect("read"));
        assert!(matches!(issue(d.path(), &f, "ny9"), Err(SiteError::UnknownHost(_))));
        assert!(matches!(issue(d.path(), &fabric(&["../x"]), "../x"), Err(SiteError::Config(_))));
    }
}
