//! `/api/v1/agent`: the endpoints a site manager calls over its outbound connection.
//!
//! Registration (FAB-2, FAB-3, FAB-8) is authenticated by the registration key itself; every
//! other call carries the site credential issued at registration.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_pki::{ErrorKind as PkiKind, RegistrationKey};
use ferry_store::{DocKind, KeyUse, Store};
use ferry_types::event::Severity;
use ferry_types::fabric::{Cloud, Fabric, Provider, SiteInventory};
use ferry_types::site_protocol::{
    CommandResult, RegisterRequest, RegisterResponse, SignHostRequest, SignHostResponse, SiteCommandEnvelope,
    SiteEnableProtection, SiteReport, SiteReportAck,
};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{hash_secret, new_secret, Auth};
use crate::error::{ApiFailure, ApiResult};
use crate::extract::{parse_id, ApiJson, ApiQuery};
use crate::inventory;
use crate::state::AppState;

fn check_text(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.trim().is_empty() || value.len() > max || value.chars().any(|c| c.is_control()) {
        return Err(ApiFailure::bad_request(
            "InvalidValue",
            format!("{field} must be 1 to {max} printable characters"),
        ));
    }
    Ok(())
}

fn key_error(e: ferry_pki::Error) -> ApiFailure {
    match e.kind() {
        PkiKind::Expired => ApiFailure::unauthorized("RegistrationKeyExpired", e.to_string()),
        PkiKind::Forged => ApiFailure::unauthorized("RegistrationKeyForged", e.to_string()),
        PkiKind::OtherVault => ApiFailure::new(StatusCode::FORBIDDEN, "RegistrationKeyOtherVault", e.to_string()),
        _ => ApiFailure::bad_request("RegistrationKeyMalformed", e.to_string()),
    }
}

#[utoipa::path(post, path = "/api/v1/agent/register", tag = "agent", request_body = RegisterRequest, responses((status = 200, body = RegisterResponse), (status = 401, body = ferry_types::ApiError), (status = 403, body = ferry_types::ApiError), (status = 429, body = ferry_types::ApiError)))]
pub async fn register(
    State(st): State<AppState>,
    crate::auth::ClientAddress(from): crate::auth::ClientAddress,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    // SEC-3: guessing registration keys is limited per client address like sign-ins.
    st.failed_auth.check(from)?;
    let key = req.key.clone();
    let result = register_checked(&st, req).await;
    if result.as_ref().is_err_and(|e| {
        e.status == axum::http::StatusCode::UNAUTHORIZED || e.status == axum::http::StatusCode::FORBIDDEN
    }) {
        st.failed_auth.failed(from, &key);
    }
    result
}

async fn register_checked(st: &AppState, req: RegisterRequest) -> ApiResult<Json<RegisterResponse>> {
    let now = st.clock.now();
    let presented = RegistrationKey::parse(&req.key).map_err(key_error)?;
    let (vault, secret) = st.vault(&req.vault_name).await.map_err(|_| {
        ApiFailure::not_found("Vault", &req.vault_name)
            .into_code("VaultNameMismatch", "The vault name does not match any vault of this server")
    })?;
    let key =
        RegistrationKey::verify(&req.key, vault.id, secret.as_bytes(), now, ferry_pki::regkey::default_validity())
            .map_err(key_error)?;
    debug_assert_eq!(presented.key_id(), key.key_id());
    check_text("friendly_name", &req.friendly_name, 128)?;
    check_text("server_name", &req.server_name, 253)?;
    check_text("version", &req.version, 32)?;

    let existing = find_fabric_by_name(&st.store, vault.id, &req.friendly_name).await?;
    // A used, revoked or forged key is refused as such first; the site checks below run in
    // the same transaction, so a refused registration leaves the key unused.
    let key_site = st.store.key_site(vault.id, key.key_id()).await?;
    let mut tx = st.store.begin().await?;
    let fabric_id = existing.as_ref().map(|d| d.body.id).unwrap_or_else(Uuid::new_v4);
    match Store::consume_key_tx(&mut tx, vault.id, key.key_id(), &key.secret_hash(), fabric_id, now.timestamp_millis())
        .await?
    {
        KeyUse::Consumed => {}
        KeyUse::Revoked => {
            return Err(ApiFailure::unauthorized(
                "RegistrationKeyRevoked",
                format!("Registration key {} was revoked", key.key_id()),
            ))
        }
        KeyUse::AlreadyUsed => {
            return Err(ApiFailure::unauthorized(
                "RegistrationKeyAlreadyUsed",
                format!("Registration key {} was already used; issue a new key", key.key_id()),
            ))
        }
        KeyUse::Unknown | KeyUse::SecretMismatch => {
            return Err(ApiFailure::unauthorized(
                "RegistrationKeyForged",
                "This vault never issued this registration key",
            ))
        }
    }
    // FAB-8 / SEC: only a key issued for a site adds an instance to it; any other key would
    // take the site over (a working site credential for its hosts and commands).
    match (&existing, key_site) {
        (Some(d), Some(f)) if d.body.id == f => {}
        (Some(d), _) => {
            return Err(ApiFailure::conflict(
                "SiteAlreadyRegistered",
                format!(
                    "A site named {} is registered already; another instance of its site manager needs a key issued for it (ferry key-issue --site {})",
                    d.body.name, d.body.name
                ),
            ))
        }
        (None, Some(f)) => {
            return Err(ApiFailure::conflict(
                "RegistrationKeyForAnotherSite",
                format!("This key was issued to add an instance to site {f}, not to register {}", req.friendly_name),
            ))
        }
        (None, None) => {}
    }
    let provider = Provider {
        id: Uuid::new_v4(),
        server_name: req.server_name.clone(),
        version: req.version.clone(),
        active: existing.is_none(),
        last_heartbeat: Some(now),
    };
    let (fabric, expected) = match existing {
        Some(mut d) => {
            // FAB-8: another instance of a highly available site manager; same version required.
            if let Some(p) = d.body.providers.iter().find(|p| p.version != req.version) {
                return Err(ApiFailure::conflict(
                    "ProviderVersionMismatch",
                    format!("Site manager {} runs version {}, this one {}; all instances of a site must run the same version", p.server_name, p.version, req.version),
                ));
            }
            if d.body.providers.iter().any(|p| p.server_name == req.server_name) {
                d.body.providers.retain(|p| p.server_name != req.server_name);
                let active = d.body.providers.is_empty();
                d.body.providers.push(Provider { active, ..provider.clone() });
            } else {
                d.body.providers.push(provider.clone());
            }
            (d.body, Some(d.version))
        }
        None => {
            let inventory = SiteInventory {
                clouds: req
                    .clouds
                    .iter()
                    .map(|c| Cloud {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        host_groups: vec![],
                        sync_enabled: req.sync_all_clouds,
                    })
                    .collect(),
                ..Default::default()
            };
            let f = Fabric {
                id: fabric_id,
                vault_id: vault.id,
                name: req.friendly_name.clone(),
                registered_at: now,
                providers: vec![provider.clone()],
                sync_all_clouds: req.sync_all_clouds,
                proxy: req.proxy_address.clone(),
                last_heartbeat: Some(now),
                inventory,
            };
            (f, None)
        }
    };
    Store::put_doc_tx(
        &mut tx,
        DocKind::Fabric,
        vault.id,
        &fabric.id.to_string(),
        None,
        Some(&fabric.name),
        &fabric,
        expected,
    )
    .await?;
    let site_token = new_secret("fs_");
    Store::insert_token_tx(
        &mut tx,
        &ferry_store::TokenRow {
            id: Uuid::new_v4(),
            name: format!("site {} ({})", fabric.name, req.server_name),
            role: "Site".into(),
            fabric: Some(fabric.id),
            created_ms: now.timestamp_millis(),
            expires_ms: None,
        },
        &hash_secret(&site_token),
    )
    .await?;
    let cert = st
        .ca
        // SEC: agents are known by their certificate's name, never by an alternative name the
        // agent could choose: no DNS name or address a browser trusting the CA would accept.
        .sign_csr(&req.csr_pem, &format!("site-{}", fabric.id), &[], &[])
        .map_err(|e| ApiFailure::bad_request("InvalidCsr", e.to_string()))?;
    Store::commit(tx).await?;

    st.event(
        vault.id,
        Severity::Info,
        "SiteRegistered",
        &format!("Site manager {} ({}) registered", fabric.name, req.server_name),
        Some(fabric.id),
        None,
    )
    .await;
    let _ = st
        .jobs
        .record_done(
            st,
            crate::jobs::NewJob {
                vault: vault.id,
                operation: "RegisterSiteManager",
                object_type: "Fabric",
                object_id: fabric.id.to_string(),
                object_name: fabric.name.clone(),
                fabric: Some(fabric.id),
                params: crate::jobs::JobInput::of(&crate::jobs::RegisterSiteParams {
                    server_name: req.server_name.clone(),
                }),
                tasks: vec![
                    "Validate registration key".into(),
                    "Register site manager".into(),
                    "Issue certificate".into(),
                ],
            },
        )
        .await;
    Ok(Json(RegisterResponse {
        vault_id: vault.id,
        fabric_id: fabric.id,
        provider_id: provider.id,
        site_token,
        certificate_pem: cert,
        ca_pem: st.ca.cert_pem().to_string(),
    }))
}

async fn find_fabric_by_name(store: &Store, vault: Uuid, name: &str) -> ApiResult<Option<ferry_store::Doc<Fabric>>> {
    Ok(store.all_docs::<Fabric>(DocKind::Fabric, vault).await?.into_iter().find(|d| d.body.name == name))
}

/// Find the fabric (and its vault) of a site credential.
async fn site_fabric(st: &AppState, fabric: Uuid) -> ApiResult<ferry_store::Doc<Fabric>> {
    for (body, _) in st.store.list_vaults().await? {
        let Some(id) = body.get("id").and_then(|v| v.as_str()).and_then(|s| Uuid::parse_str(s).ok()) else { continue };
        if let Some(d) = st.store.get_doc::<Fabric>(DocKind::Fabric, id, &fabric.to_string()).await? {
            return Ok(d);
        }
    }
    Err(ApiFailure::unauthorized("SiteUnregistered", "This site is no longer registered with the vault"))
}

/// REP-1 from the site side: the site manager's operator enables protection for VMs of this
/// site (`ferry site protect`). Only VMs in the calling site's own inventory can be named; the
/// same planning and validation as the management API apply.
#[utoipa::path(post, path = "/api/v1/agent/enableProtection", tag = "agent", request_body = SiteEnableProtection, responses((status = 202, body = [crate::api::items::Enabled]), (status = 400, body = ferry_types::ApiError), (status = 404, body = ferry_types::ApiError), (status = 409, body = ferry_types::ApiError)))]
pub async fn enable_protection(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<SiteEnableProtection>,
) -> ApiResult<(StatusCode, Json<Vec<crate::api::items::Enabled>>)> {
    let fabric_id = auth.require_site()?;
    if req.vms.is_empty() || req.vms.len() > 100 {
        return Err(ApiFailure::bad_request("InvalidValue", "Give 1 to 100 VMs"));
    }
    for vm in &req.vms {
        check_text("vms", vm, 256)?;
    }
    let f = site_fabric(&st, fabric_id).await?.body;
    let out = crate::api::items::enable_on_site(&st, f.vault_id, &f, &req.vms, &[], Some(&f.name)).await?;
    Ok((StatusCode::ACCEPTED, Json(out)))
}

#[utoipa::path(post, path = "/api/v1/agent/report", tag = "agent", request_body = SiteReport, responses((status = 200, body = SiteReportAck)))]
pub async fn report(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(rep): ApiJson<SiteReport>,
) -> ApiResult<Json<SiteReportAck>> {
    let fabric_id = auth.require_site()?;
    for attempt in 0..5 {
        let doc = site_fabric(&st, fabric_id).await?;
        let mut f = doc.body;
        let now = st.clock.now();
        let Some(pos) = f.providers.iter().position(|p| p.id == rep.provider_id) else {
            return Err(ApiFailure::bad_request("UnknownProvider", "This site manager instance is not registered"));
        };
        f.providers[pos].last_heartbeat = Some(now);
        f.providers[pos].version = rep.version.clone();
        if !f.providers.iter().any(|p| p.active) {
            f.providers[pos].active = true;
        }
        let active = f.providers[pos].active;
        f.last_heartbeat = Some(now);
        let mut changes = Vec::new();
        if active {
            let merged = inventory::merge(&f.inventory, rep.inventory.clone(), f.sync_all_clouds);
            changes = inventory::changes(&f.inventory, &merged);
            f.inventory = merged;
        }
        let synced: Vec<String> = f.inventory.clouds.iter().filter(|c| c.sync_enabled).map(|c| c.id.clone()).collect();
        match st
            .store
            .put_doc(DocKind::Fabric, f.vault_id, &f.id.to_string(), None, Some(&f.name), &f, Some(doc.version))
            .await
        {
            Ok(_) => {
                if active {
                    st.peers.set_fabric(&f);
                    // The site's clock against the vault's, measured now (the hosts' offsets are
                    // measured by the site).
                    let site_offset_ms = rep.sent_at.map(|t| (t - now).num_milliseconds());
                    crate::replication::apply_statuses(&st, f.vault_id, f.id, site_offset_ms, &rep.replication).await;
                    crate::capacity::apply_profiles(&st, f.vault_id, f.id, &rep.churn).await;
                }
                for c in changes {
                    st.event(
                        f.vault_id,
                        Severity::Info,
                        "InventoryChanged",
                        &format!("{}: {c}", f.name),
                        Some(f.id),
                        None,
                    )
                    .await;
                }
                let peers = st.peers.peers(&st.store, f.vault_id).await;
                let revoked_certificates = crate::certificates::revoked(&st.store, f.vault_id, st.clock.now()).await?;
                return Ok(Json(SiteReportAck { synced_clouds: synced, active, peers, revoked_certificates }));
            }
            Err(e) if e.kind == ferry_store::ErrorKind::VersionMismatch && attempt < 4 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiFailure::conflict("Busy", "The site changed concurrently; retry"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// Seconds to wait for a command when none is pending (0..=60).
    pub wait: Option<u64>,
    /// The site manager instance asking (FAB-8): only the active instance gets commands.
    pub provider: Option<Uuid>,
}

#[utoipa::path(get, path = "/api/v1/agent/commands", tag = "agent", params(WaitParams), responses((status = 200, body = [SiteCommandEnvelope])))]
pub async fn fetch_commands(
    State(st): State<AppState>,
    auth: Auth,
    ApiQuery(p): ApiQuery<WaitParams>,
) -> ApiResult<Json<Vec<SiteCommandEnvelope>>> {
    let fabric = auth.require_site()?;
    let site = site_fabric(&st, fabric).await?.body;
    let vault = site.vault_id;
    // FAB-8: a standby instance of the site manager runs no command (the active one does).
    if let Some(provider) = p.provider {
        match site.providers.iter().find(|x| x.id == provider) {
            None => {
                return Err(ApiFailure::bad_request("UnknownProvider", "This site manager instance is not registered"))
            }
            Some(x) if !x.active => {
                return Err(ApiFailure::conflict(
                    "NotActiveProvider",
                    format!(
                        "Site manager instance {} is a standby; the active instance runs the site's commands",
                        x.server_name
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let wait = Duration::from_secs(p.wait.unwrap_or(0).min(60));
    let deadline = tokio::time::Instant::now() + wait;
    let timeout = chrono::Duration::from_std(st.config.site_command_timeout).unwrap_or(chrono::Duration::minutes(30));
    loop {
        let notified = st.commands_queued.notified();
        let rows = st.store.pending_commands(fabric, 100).await?;
        let mut out = Vec::new();
        for r in rows {
            // Stale commands are withdrawn, never delivered: too old, or their job ended.
            let queued = chrono::DateTime::from_timestamp_millis(r.created_ms).unwrap_or_else(|| st.clock.now());
            let expires_at = queued + timeout;
            if st.clock.now() > expires_at {
                crate::jobs::withdraw_command(&st, r.id, "it expired before the site fetched it").await;
                continue;
            }
            if let Some(job) = r.job {
                if st.store.get_job(vault, job).await?.is_some_and(|j| j.status.is_terminal()) {
                    crate::jobs::withdraw_command(&st, r.id, "its job has ended").await;
                    continue;
                }
            }
            match serde_json::from_value(r.body) {
                Ok(command) => out.push(SiteCommandEnvelope { id: r.id, command, expires_at: Some(expires_at) }),
                Err(e) => tracing::error!(command = %r.id, error = %e, "stored site command is unreadable"),
            }
        }
        if !out.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(out));
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

#[utoipa::path(post, path = "/api/v1/agent/commands/{id}/result", tag = "agent", request_body = CommandResult, params(("id" = String, Path)), responses((status = 204), (status = 404, body = ferry_types::ApiError)))]
pub async fn command_result(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(res): ApiJson<CommandResult>,
) -> ApiResult<StatusCode> {
    let fabric = auth.require_site()?;
    let cid = parse_id("Command", &id)?;
    let value = serde_json::to_value(&res).map_err(|e| ApiFailure::internal(e.to_string()))?;
    match st.store.get_command(cid).await? {
        Some(c) if c.fabric == fabric => {
            st.store.complete_command(fabric, cid, &value).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(ApiFailure::not_found("Command", &id)),
    }
}

#[utoipa::path(post, path = "/api/v1/agent/hosts/sign", tag = "agent", request_body = SignHostRequest, responses((status = 200, body = SignHostResponse)))]
pub async fn sign_host(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<SignHostRequest>,
) -> ApiResult<Json<SignHostResponse>> {
    let fabric = auth.require_site()?;
    check_text("host_name", &req.host_name, 253)?;
    check_text("host_id", &req.host_id, 128)?;
    let doc = site_fabric(&st, fabric).await?;
    // SEC-1: the certificate names the vault, the site and the host, so a host can check that
    // a replication peer belongs to the same vault and to a pair it serves.
    let cn = format!("host-{}-{}", fabric, req.host_id);
    let cert = st
        .ca
        .sign_csr(&req.csr_pem, &cn, &[], &[])
        .map_err(|e| ApiFailure::bad_request("InvalidCsr", e.to_string()))?;
    // The host's earlier certificate (it joined again) is revoked on every host (SEC-1).
    crate::certificates::record_issued(&st.store, doc.body.vault_id, fabric, &cn, &cert, st.clock.now()).await?;
    st.event(
        doc.body.vault_id,
        Severity::Info,
        "HostCertificateIssued",
        &format!("Certificate issued to host {} of {}", req.host_name, doc.body.name),
        Some(fabric),
        Some(&req.host_id),
    )
    .await;
    Ok(Json(SignHostResponse { certificate_pem: cert, ca_pem: st.ca.cert_pem().to_string() }))
}
