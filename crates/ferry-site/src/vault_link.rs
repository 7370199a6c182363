//! The site's outbound connection to the vault: periodic reports and the command long poll.
//! Both loops survive a vault outage: they log, back off and retry.

use std::sync::Arc;
use std::time::Duration;

use ferry_types::site_protocol::{SiteCommandEnvelope, SiteReport, SiteReportAck};

use crate::Site;

fn build_report(site: &Site) -> SiteReport {
    let inventory = crate::inventory::build(site);
    // Replication state and churn measurements (CAP-1) of the hosts whose content the vault
    // syncs.
    let (replication, churn) = site
        .persisted
        .lock()
        .map(|p| {
            let reports: Vec<_> = p
                .hosts
                .iter()
                .filter(|h| inventory.hosts.iter().any(|x| x.id == h.id))
                .filter_map(|h| h.last_report.as_ref())
                .collect();
            (
                reports.iter().flat_map(|r| r.replication.clone()).collect(),
                reports.iter().flat_map(|r| r.churn.clone()).collect(),
            )
        })
        .unwrap_or_default();
    SiteReport {
        provider_id: site.reg.provider_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        replication,
        churn,
        inventory,
        sent_at: Some(chrono::Utc::now()),
    }
}

pub async fn report_once(site: &Site) -> Result<SiteReportAck, ferry_client::Error> {
    let ack = report_and_answer(site).await?;
    take_peers(site, &ack);
    Ok(ack)
}

/// Keep where the vault's hosts receive replication now, for this site's hosts.
fn take_peers(site: &Site, ack: &SiteReportAck) {
    let changed = match site.persisted.lock() {
        Ok(mut p) if p.peers != ack.peers || p.revoked_certificates != ack.revoked_certificates => {
            p.peers = ack.peers.clone();
            p.revoked_certificates = ack.revoked_certificates.clone();
            true
        }
        _ => false,
    };
    if changed {
        if let Err(e) = site.save() {
            tracing::warn!(error = %e, "cannot record the replication peers");
        }
    }
}

async fn report_and_answer(site: &Site) -> Result<SiteReportAck, ferry_client::Error> {
    let report = build_report(site);
    site.recorder.record("/api/v1/agent/report", &report);
    let ack: SiteReportAck = site.vault.post("/api/v1/agent/report", &report).await?;
    let changed = match site.synced.lock() {
        Ok(mut s) => {
            let changed = s.as_ref() != Some(&ack.synced_clouds);
            *s = Some(ack.synced_clouds.clone());
            changed
        }
        Err(_) => false,
    };
    {
        if changed {
            // The set of synced clouds changed: send the new content now.
            let report = build_report(site);
            site.recorder.record("/api/v1/agent/report", &report);
            return site.vault.post("/api/v1/agent/report", &report).await;
        }
    }
    Ok(ack)
}

pub async fn report_loop(site: Arc<Site>) {
    let period = Duration::from_secs(site.cfg.report_interval_secs.max(1));
    let mut down = false;
    loop {
        match report_once(&site).await {
            Ok(_) => {
                site.last_vault_report_ms
                    .store(chrono::Utc::now().timestamp_millis(), std::sync::atomic::Ordering::SeqCst);
                if down {
                    tracing::info!("vault reachable again; inventory resynced");
                    down = false;
                }
            }
            Err(e) => {
                if !down {
                    tracing::warn!(error = %e, "cannot report to the vault; the site keeps working and retries");
                    down = true;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

pub async fn command_loop(site: Arc<Site>) {
    // FAB-8: the vault hands commands to the active instance only; a standby asks again later.
    let path = format!("/api/v1/agent/commands?wait=20&provider={}", site.reg.provider_id);
    let mut standby = false;
    loop {
        let fetched: Result<Vec<SiteCommandEnvelope>, _> = site.vault.get(&path).await;
        if let Err(ferry_client::Error::Api { api, .. }) = &fetched {
            if api.code == "NotActiveProvider" {
                if !standby {
                    tracing::info!("standby instance: the active site manager runs the site's commands");
                    standby = true;
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                continue;
            }
        }
        standby = false;
        match fetched {
            Ok(cmds) => {
                // Commands run concurrently (a plan starts many VMs at once; a script may run for
                // minutes). A command still running is not started again when it is delivered
                // again; it is answered when it ends.
                let mut started = 0;
                let delivered = cmds.len();
                for env in cmds {
                    let fresh = site.in_flight.lock().map(|mut s| s.insert(env.id)).unwrap_or(false);
                    if !fresh {
                        continue;
                    }
                    started += 1;
                    let site = site.clone();
                    tokio::spawn(async move {
                        let result = if stale(&env, chrono::Utc::now()) {
                            // Stale (the site was cut from the vault meanwhile): never run.
                            tracing::warn!(command = %env.id, "a command arrived after its deadline; not run");
                            ferry_types::site_protocol::CommandResult {
                                ok: false,
                                error: Some(ferry_types::ApiError::new(
                                    "CommandExpired",
                                    "The command arrived after its deadline and was not run",
                                )),
                                output: serde_json::Value::Null,
                            }
                        } else {
                            crate::commands::run_once(&site, &env).await
                        };
                        site.commands.count(result.ok);
                        let path = format!("/api/v1/agent/commands/{}/result", env.id);
                        site.recorder.record(&path, &result);
                        if let Err(e) = site.vault.post::<_, serde_json::Value>(&path, &result).await {
                            tracing::warn!(command = %env.id, error = %e, "cannot send a command result; it is sent again on the next poll");
                        }
                        if let Ok(mut s) = site.in_flight.lock() {
                            s.remove(&env.id);
                        }
                    });
                }
                if delivered > 0 && started == 0 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "command poll failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A command that arrives after its deadline (the site was cut from the vault meanwhile, and
/// its job no longer waits for it) is answered without being run.
fn stale(env: &SiteCommandEnvelope, now: chrono::DateTime<chrono::Utc>) -> bool {
    env.expires_at.is_some_and(|t| now > t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_1_a_command_past_its_deadline_is_not_run() {
        let now = chrono::Utc::now();
        let mut env = SiteCommandEnvelope {
            id: uuid::Uuid::new_v4(),
            command: ferry_types::site_protocol::SiteCommand::RemovePair { mapping: uuid::Uuid::new_v4() },
            expires_at: Some(now - chrono::Duration::seconds(1)),
        };
        assert!(stale(&env, now));
        env.expires_at = Some(now + chrono::Duration::minutes(5));
        assert!(!stale(&env, now));
        env.expires_at = None;
        assert!(!stale(&env, now), "a vault that sets no deadline");
    }
}
