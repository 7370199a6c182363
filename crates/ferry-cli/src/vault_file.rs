//! The vault's settings: command-line options over a TOML file over defaults.
//!
//! The packages run `ferry vault --config /etc/ferry/vault.toml`; the lab and the tests pass
//! options only. An option given on the command line wins over the same setting in the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// `ferry vault` options.
#[derive(clap::Args, Debug, Default)]
pub struct VaultArgs {
    /// Configuration file (TOML) with any of the settings below, e.g. /etc/ferry/vault.toml;
    /// options given here win over it
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory: database, CA and admin token [default: vault-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the vault's HTTPS API and portal [default: 127.0.0.1:8443]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The URL sites and operators reach this vault at (goes into registration keys and the
    /// vault's certificate), e.g. https://vault.example.com:8443
    #[arg(long)]
    pub public_url: Option<String>,
    /// Plain-HTTP address for Prometheus metrics (/metrics); off when absent
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds without a site report before its heartbeat is reported lost [default: 60]
    #[arg(long)]
    pub heartbeat_timeout: Option<u64>,
    /// Seconds after which a test failover left running is cleaned up (FO-1) [default: 14 days]
    #[arg(long)]
    pub test_failover_max_age: Option<u64>,
}

/// The file's settings (every one optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultFile {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub public_url: Option<String>,
    /// Extra names (or addresses) for the vault's HTTPS certificate.
    #[serde(default)]
    pub dns_names: Vec<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub heartbeat_timeout_secs: Option<u64>,
    pub test_failover_max_age_secs: Option<u64>,
    /// How long old rows are kept (SEC-3), in days.
    #[serde(default)]
    pub retention: RetentionFile,
}

/// `[retention]` of the vault's file: days each kind of row is kept (1–3650); absent ones keep
/// their defaults (events and jobs 90, site commands and alerts 30).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    pub events_days: Option<u64>,
    pub jobs_days: Option<u64>,
    pub site_commands_days: Option<u64>,
    pub alerts_days: Option<u64>,
}

impl RetentionFile {
    /// The retention these settings give, or an error naming the one out of range.
    pub fn resolve(&self) -> Result<ferry_store::Retention> {
        let mut r = ferry_store::Retention::default();
        let set = |name: &str, days: Option<u64>, into: &mut std::time::Duration| -> Result<()> {
            if let Some(d) = days {
                *into = ferry_store::Retention::days(&format!("retention.{name}"), d)?;
            }
            Ok(())
        };
        set("events_days", self.events_days, &mut r.events)?;
        set("jobs_days", self.jobs_days, &mut r.jobs)?;
        set("site_commands_days", self.site_commands_days, &mut r.site_commands)?;
        set("alerts_days", self.alerts_days, &mut r.alerts)?;
        Ok(r)
    }
}

impl VaultFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Cannot read the vault configuration {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid vault configuration", path.display()))
    }
}

/// What the vault runs with.
#[derive(Debug, PartialEq)]
pub struct VaultSettings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub dns_names: Vec<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub heartbeat_timeout_secs: u64,
    pub test_failover_max_age_secs: u64,
    pub retention: ferry_store::Retention,
}

impl VaultSettings {
    /// Options over the file (read when `--config` is given) over the defaults.
    pub fn resolve(args: VaultArgs) -> Result<Self> {
        let file = match &args.config {
            Some(p) => VaultFile::load(p)?,
            None => VaultFile::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: VaultArgs, file: VaultFile) -> Result<Self> {
        Ok(VaultSettings {
            retention: file.retention.resolve()?,
            data_dir: args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("vault-data")),
            listen: args.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
            public_url: args.public_url.or(file.public_url),
            dns_names: file.dns_names,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            heartbeat_timeout_secs: args.heartbeat_timeout.or(file.heartbeat_timeout_secs).unwrap_or(60),
            test_failover_max_age_secs: args
                .test_failover_max_age
                .or(file.test_failover_max_age_secs)
                .unwrap_or(14 * 24 * 3600),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fab_1_vault_options_win_over_the_file_which_wins_over_defaults() {
        let file: VaultFile = toml::from_str(
            "listen = \"0.0.0.0:8443\"\ndata_dir = \"/var/lib/ferry/vault\"\npublic_url = \"https://vault.example.com:8443\"\nheartbeat_timeout_secs = 90\n",
        )
        .expect("file");
        let args = VaultArgs { heartbeat_timeout: Some(30), ..VaultArgs::default() };
        let s = VaultSettings::merge(args, file).expect("valid");
        assert_eq!(s.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/ferry/vault"));
        assert_eq!(s.public_url.as_deref(), Some("https://vault.example.com:8443"));
        assert_eq!(s.heartbeat_timeout_secs, 30, "the option wins");
        assert_eq!(s.test_failover_max_age_secs, 14 * 24 * 3600, "the default");
        let d = VaultSettings::merge(VaultArgs::default(), VaultFile::default()).expect("valid");
        assert_eq!(d.retention, ferry_store::Retention::default());
        assert_eq!((d.listen.port(), d.data_dir), (8443, PathBuf::from("vault-data")));
    }

    #[test]
    fn fab_1_an_unknown_vault_setting_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vault.toml");
        std::fs::write(&p, "listne = \"0.0.0.0:8443\"\n").expect("write");
        let err = format!("{:#}", VaultFile::load(&p).expect_err("refused"));
        assert!(err.contains("listne") && err.contains("not a valid vault configuration"), "{err}");
    }

    #[test]
    fn sec_3_retention_days_come_from_the_file_and_out_of_range_is_refused() {
        let file: VaultFile = toml::from_str("[retention]\nevents_days = 30\nalerts_days = 7\n").expect("file");
        let s = VaultSettings::merge(VaultArgs::default(), file).expect("valid");
        let day = std::time::Duration::from_secs(24 * 3600);
        assert_eq!((s.retention.events, s.retention.alerts), (30 * day, 7 * day));
        assert_eq!(s.retention.jobs, ferry_store::Retention::default().jobs, "the default stays");
        let file: VaultFile = toml::from_str("[retention]\njobs_days = 0\n").expect("file");
        let err = format!("{:#}", VaultSettings::merge(VaultArgs::default(), file).expect_err("refused"));
        assert!(err.contains("retention.jobs_days"), "{err}");
        let err = toml::from_str::<VaultFile>("[retention]\nevent_days = 3\n").expect_err("unknown").to_string();
        assert!(err.contains("event_days"), "{err}");
    }
}
