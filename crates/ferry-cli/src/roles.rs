//! Running Ferry's roles in the foreground: `ferry vault`, `ferry site`, `ferry host`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where a running vault writes its URL (so scripts and the lab can find a port-0 vault).
pub const ENDPOINT_FILE: &str = "endpoint";

/// Where a role writes the address of its metrics listener (port 0 picks one).
pub const METRICS_ENDPOINT_FILE: &str = "metrics-endpoint";

/// Tell systemd (a `Type=notify` unit) that the role is ready, or stopping; nothing happens
/// outside systemd (no NOTIFY_SOCKET).
pub fn notify_systemd(ready: bool, status: &str) {
    let state = if ready { sd_notify::NotifyState::Ready } else { sd_notify::NotifyState::Stopping };
    if let Err(e) = sd_notify::notify(false, &[state, sd_notify::NotifyState::Status(status)]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub async fn vault(args: crate::vault_file::VaultArgs) -> Result<()> {
    let s = crate::vault_file::VaultSettings::resolve(args)?;
    let data_dir = s.data_dir.clone();
    let mut cfg = ferry_vault::VaultConfig::new(data_dir.clone(), s.listen);
    cfg.heartbeat_timeout = std::time::Duration::from_secs(s.heartbeat_timeout_secs);
    cfg.test_failover_max_age = std::time::Duration::from_secs(s.test_failover_max_age_secs.max(1));
    cfg.public_url = s.public_url;
    cfg.dns_names = s.dns_names;
    cfg.metrics_listen = s.metrics_listen;
    cfg.retention = s.retention;
    let handle = ferry_vault::start(cfg).await.context("Cannot start the vault")?;
    if let Some(m) = handle.metrics_addr {
        std::fs::write(data_dir.join(METRICS_ENDPOINT_FILE), m.to_string())
            .context("Cannot write the metrics endpoint file")?;
    }
    std::fs::write(data_dir.join(ENDPOINT_FILE), &handle.url).context("Cannot write the endpoint file")?;
    println!("Ferry vault listening on {}", handle.url);
    println!("CA certificate: {}", data_dir.join("ca-cert.pem").display());
    if handle.new_admin_token.is_some() {
        // SEC-3: the token itself never goes to the output (a service's output is its log).
        println!(
            "Admin token (Contributor) created in {} (readable by this user only)",
            data_dir.join(ferry_vault::server::ADMIN_TOKEN_FILE).display()
        );
        println!(
            "Use it: export FERRY_URL={} FERRY_CA={} FERRY_TOKEN=$(cat {})",
            handle.url,
            data_dir.join("ca-cert.pem").display(),
            data_dir.join("admin-token").display()
        );
    }
    notify_systemd(true, &format!("Vault listening on {}", handle.url));
    tokio::select! {
        r = handle_wait(handle) => r,
        _ = shutdown_signal() => Ok(()),
    }
}

async fn handle_wait(h: ferry_vault::VaultHandle) -> Result<()> {
    h.wait().await.context("The vault server stopped")
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

pub async fn site_register(config: &Path, data_dir: &Path, key: &Path, record: Option<PathBuf>) -> Result<()> {
    let cfg = ferry_site::SiteConfig::load(config)?;
    std::fs::create_dir_all(data_dir)?;
    let key_text =
        std::fs::read_to_string(key).with_context(|| format!("Cannot read the registration key {}", key.display()))?;
    let recorder = ferry_site::recorder::Recorder::new(record)?;
    let reg = ferry_site::register::register(&cfg, data_dir, &key_text, &recorder).await?;
    println!("Site {} registered with vault {} as fabric {}", cfg.name, cfg.vault_name, reg.fabric_id);
    Ok(())
}

pub async fn site_protect(config: &Path, data_dir: &Path, vms: Vec<String>) -> Result<()> {
    let cfg = ferry_site::SiteConfig::load(config)?;
    let enabled = ferry_site::enable_protection(&cfg, data_dir, vms).await?;
    println!("{}", serde_json::to_string_pretty(&enabled)?);
    Ok(())
}

pub fn site_join_token(config: &Path, data_dir: &Path, host: &str) -> Result<()> {
    let cfg = ferry_site::SiteConfig::load(config)?;
    let path = ferry_site::join_tokens::issue(data_dir, &cfg.fabric()?, host)?;
    println!("Join token for host {host}: {}", path.display());
    println!("Copy it to the host (mode 0600) as its join_token_file; it is valid for one join of {host}.");
    Ok(())
}

pub async fn site_run(config: &Path, data_dir: &Path, key: Option<&Path>, record: Option<PathBuf>) -> Result<()> {
    let cfg = ferry_site::SiteConfig::load(config)?;
    if !data_dir.join("registration.json").exists() {
        match key {
            Some(k) => site_register(config, data_dir, k, record.clone()).await?,
            None => anyhow::bail!(ferry_site::SiteError::NotRegistered),
        }
    }
    let handle = ferry_site::start(cfg, data_dir, record).await?;
    if let Some(m) = handle.metrics_addr {
        std::fs::write(data_dir.join(METRICS_ENDPOINT_FILE), m.to_string())
            .context("Cannot write the metrics endpoint file")?;
    }
    println!("Site manager {} running; hosts join at https://{}", handle.site.cfg.name, handle.host_addr);
    println!(
        "Join tokens of hosts that have not joined: {}/<host name>",
        data_dir.join(ferry_site::join_tokens::JOIN_TOKENS_DIR).display()
    );
    notify_systemd(true, &format!("Site manager {} running", handle.site.cfg.name));
    shutdown_signal().await;
    notify_systemd(false, "Stopping");
    handle.stop();
    Ok(())
}

pub async fn host_run(config: &Path, data_dir: &Path) -> Result<()> {
    let cfg = ferry_host::HostConfig::load(config)?;
    let handle = ferry_host::start(cfg, data_dir).await?;
    std::fs::write(data_dir.join(ENDPOINT_FILE), handle.api_addr.to_string())?;
    println!("Host agent {} running; API on {}", handle.host.cfg.name, handle.api_addr);
    notify_systemd(true, &format!("Host agent {} running", handle.host.cfg.name));
    shutdown_signal().await;
    notify_systemd(false, "Stopping");
    handle.stop();
    Ok(())
}
