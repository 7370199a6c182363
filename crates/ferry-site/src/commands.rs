//! Running the vault's commands on this site. A command is answered once: its result is kept,
//! so a command delivered again (lost answer, vault restart) is not run twice.

use ferry_types::site_protocol::{
    CommandResult, PairConfig, ReplicationAction, SiteCommand, SiteCommandEnvelope, VmAction,
};
use ferry_types::ApiError;

use crate::Site;

pub async fn run_once(site: &Site, env: &SiteCommandEnvelope) -> CommandResult {
    if let Some(r) =
        site.persisted.lock().ok().and_then(|p| p.answered.iter().find(|(id, _)| *id == env.id).map(|(_, r)| r.clone()))
    {
        return r;
    }
    let result = match run(site, &env.command).await {
        Ok(output) => CommandResult { ok: true, error: None, output },
        Err(e) => CommandResult { ok: false, error: Some(e), output: serde_json::Value::Null },
    };
    if let Ok(mut p) = site.persisted.lock() {
        p.answered.push_back((env.id, result.clone()));
        while p.answered.len() > crate::state::MAX_ANSWERED {
            p.answered.pop_front();
        }
    }
    if let Err(e) = site.save() {
        tracing::error!(error = %e, "cannot persist site state");
    }
    result
}

async fn run(site: &Site, cmd: &SiteCommand) -> Result<serde_json::Value, ApiError> {
    match cmd {
        SiteCommand::ConfigurePair { mapping, role, source_cloud, target_cloud, policy_id, policy_version, policy } => {
            let cloud = match role {
                ferry_types::site_protocol::PairRole::Source => source_cloud,
                ferry_types::site_protocol::PairRole::Target => target_cloud,
            };
            if !site.fabric.clouds.iter().any(|c| &c.id == cloud) {
                return Err(ApiError::new(
                    "UnknownCloud",
                    format!("Cloud {cloud} is not defined on site {}", site.cfg.name),
                ));
            }
            let pc = PairConfig {
                mapping: *mapping,
                role: *role,
                source_cloud: source_cloud.clone(),
                target_cloud: target_cloud.clone(),
                policy_id: *policy_id,
                policy_version: *policy_version,
                policy: policy.clone(),
            };
            if let Ok(mut p) = site.persisted.lock() {
                p.pairs.retain(|x| !(x.mapping == *mapping && x.role == *role));
                p.pairs.push(pc);
            }
            Ok(serde_json::json!({"applied_policy_version": policy_version}))
        }
        SiteCommand::RemovePair { mapping } => {
            if let Ok(mut p) = site.persisted.lock() {
                p.pairs.retain(|x| x.mapping != *mapping);
            }
            Ok(serde_json::Value::Null)
        }
        SiteCommand::Vm { host, action } => vm_action(site, host, action).await,
        SiteCommand::PrepareReplica { host, replica } => {
            to_host(site, host, "/v1/replication", &ReplicationAction::Prepare { replica: replica.clone() }).await
        }
        SiteCommand::StartReplication { host, replication } => {
            to_host(site, host, "/v1/replication", &ReplicationAction::Start { replication: replication.clone() }).await
        }
        SiteCommand::Replication { host, action } => to_host(site, host, "/v1/replication", action).await,
        SiteCommand::Profile { host, action } => to_host(site, host, "/v1/profile", action).await,
        SiteCommand::RunScript { script } => {
            crate::scripts::run(site.cfg.script_library.as_deref(), &site.cfg.name, script).await
        }
        SiteCommand::StopReplication { host, item, delete_replica } => {
            to_host(
                site,
                host,
                "/v1/replication",
                &ReplicationAction::Stop { item: *item, delete_replica: *delete_replica, keep_tracking: false },
            )
            .await
        }
    }
}

/// Forward a VM action to a host agent over mutual TLS.
async fn vm_action(site: &Site, host: &str, action: &VmAction) -> Result<serde_json::Value, ApiError> {
    let action = resolve_networks(site, action)?;
    to_host(site, host, "/v1/vm-actions", &action).await
}

/// Send a request to one of this site's hosts over mutual TLS.
async fn to_host<B: serde::Serialize>(
    site: &Site,
    host: &str,
    path: &str,
    body: &B,
) -> Result<serde_json::Value, ApiError> {
    let entry = site
        .persisted
        .lock()
        .ok()
        .and_then(|p| p.hosts.iter().find(|h| h.id == host || h.name == host).cloned())
        .ok_or_else(|| ApiError::new("HostNotJoined", format!("Host {host} has not joined site {}", site.cfg.name)))?;
    let client = crate::host_server::host_client(site, &entry.address, &entry.id)
        .map_err(|e| ApiError::new("HostUnreachable", e.to_string()))?;
    client.post(path, body).await.map_err(|e| match e {
        ferry_client::Error::Api { api, .. } => api,
        other => ApiError::new("HostUnreachable", format!("Host {} cannot be reached: {other}", entry.name)),
    })
}

/// A VM definition names VM networks; hosts know logical networks (bridges). Fill them in.
fn resolve_networks(site: &Site, action: &VmAction) -> Result<VmAction, ApiError> {
    let VmAction::Create { definition } = action else { return Ok(action.clone()) };
    let mut def: ferry_types::fabric::VmDefinition = serde_json::from_value(definition.clone())
        .map_err(|e| ApiError::new("InvalidVmDefinition", format!("The VM definition is invalid: {e}")))?;
    for nic in &mut def.nics {
        if let Some(net) = &nic.vm_network {
            let vmn = site.fabric.vm_networks.iter().find(|n| &n.name == net || &n.id == net).ok_or_else(|| {
                ApiError::new("UnknownNetwork", format!("VM network {net} is not defined on site {}", site.cfg.name))
            })?;
            if let Some(sub) = &nic.subnet {
                if !vmn.subnets.iter().any(|s| &s.name == sub) {
                    return Err(ApiError::new("UnknownSubnet", format!("VM network {} has no subnet {sub}", vmn.name)));
                }
            }
            let ln = site.fabric.logical_networks.iter().find(|l| l.id == vmn.logical_network).map(|l| l.name.clone());
            nic.vm_network = Some(vmn.name.clone());
            nic.logical_network = ln;
        }
    }
    let definition = serde_json::to_value(&def).map_err(|e| ApiError::new("InvalidVmDefinition", e.to_string()))?;
    Ok(VmAction::Create { definition })
}
