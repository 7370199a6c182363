//! The host agent's API, served over mutual TLS: only clients with a certificate of the vault
//! CA (the site manager) get a connection.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_types::site_protocol::VmAction;
use ferry_types::ApiError;

use crate::vms::VmError;
use crate::Host;

type Failure = (StatusCode, Json<ApiError>);

fn vm_failure(e: VmError) -> Failure {
    let status = match &e {
        VmError::Invalid(_) => StatusCode::BAD_REQUEST,
        VmError::NotFound(_) => StatusCode::NOT_FOUND,
        VmError::Exists(_) | VmError::WrongState { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    (status, Json(ApiError::new(e.code(), msg)))
}

pub fn serve(
    host: Arc<Host>,
    listener: std::net::TcpListener,
) -> Result<tokio::task::JoinHandle<()>, crate::HostError> {
    // SEC-1: only this host's own site manager may call it. The vault CA names host
    // certificates `host-<site id>-<host id>` and site manager certificates `site-<site id>`.
    let site = site_of_host_cert(&host.identity.tls.cert_pem).ok_or_else(|| {
        crate::HostError::Join("the host certificate does not name its site (host-<site>-<host>)".into())
    })?;
    let tls = ferry_pki::server_config_live(
        &host.live,
        ferry_pki::ClientAuth::RequiredNamed {
            ca_pem: host.identity.tls.ca_cert_pem.clone(),
            common_names: vec![format!("site-{site}")],
        },
        true,
    )?;
    let max_per_client = host.cfg.max_connections_per_client;
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/vm-actions", post(vm_action))
        .route("/v1/replication", post(replication_action))
        .route("/v1/profile", post(profile_action))
        .with_state(host);
    // SEC-3: connections per client address capped, slow or idle clients closed.
    let server = ferry_endpoint::tls_server(listener, tls, max_per_client, ferry_endpoint::HEADER_READ_TIMEOUT);
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "host API stopped");
        }
    }))
}

/// The site id in a host certificate's CN `host-<site uuid>-<host id>`.
fn site_of_host_cert(cert_pem: &str) -> Option<uuid::Uuid> {
    let cn = ferry_pki::cert_common_name(cert_pem)?;
    let rest = cn.strip_prefix("host-")?;
    uuid::Uuid::parse_str(rest.get(..36)?).ok()
}

async fn status(State(host): State<Arc<Host>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": host.cfg.name,
        "host_id": host.identity.host_id,
        "agent_version": env!("CARGO_PKG_VERSION"),
        "qemu_version": crate::qemu_version(),
        "accel": host.vms.accel().await.as_str(),
    }))
}

async fn vm_action(
    State(host): State<Arc<Host>>,
    Json(action): Json<VmAction>,
) -> Result<Json<serde_json::Value>, Failure> {
    let v = |x: Result<ferry_types::fabric::VmStatus, VmError>| -> Result<Json<serde_json::Value>, Failure> {
        x.map(|s| Json(serde_json::to_value(s).unwrap_or_default())).map_err(vm_failure)
    };
    match action {
        VmAction::Create { definition } => {
            let def = serde_json::from_value(definition)
                .map_err(|e| (StatusCode::BAD_REQUEST, Json(ApiError::new("InvalidVmDefinition", e.to_string()))))?;
            v(host.vms.create(def).await)
        }
        VmAction::Start { vm } => v(host.vms.start(&vm).await),
        VmAction::Shutdown { vm, timeout_secs, final_sync } => {
            let timeout = Duration::from_secs(timeout_secs.clamp(1, 3600));
            // A replicated VM: power the guest off, send its final state, then stop QEMU (no data
            // written before the shutdown is lost, FO-2).
            if let (Some(item), Some(running)) = (host.replication.item_of(&vm).await, host.vms.running(&vm).await) {
                let graceful = running.powerdown_guest(timeout).await.map_err(|e| vm_failure(e.into()))?;
                if !graceful {
                    // Paused, the guest writes nothing after the final point; every write it
                    // was told is done is in it.
                    running.pause_guest().await.map_err(|e| vm_failure(e.into()))?;
                    tracing::warn!(vm = %vm, ?timeout, "the guest did not power off; paused for the final replication cycle");
                }
                match host.replication.final_cycle(item, &host.vms).await {
                    Ok(()) => tracing::info!(vm = %vm, "final replication cycle after guest shutdown done"),
                    Err(e) if final_sync => {
                        tracing::error!(vm = %vm, error = %e, "final replication cycle failed; the VM is kept powered off");
                        return Err((
                            StatusCode::CONFLICT,
                            Json(ApiError::new(
                                "FinalReplicationFailed",
                                format!(
                                    "VM {vm} is powered off but its last changes could not be replicated ({e}); \
                                     they are kept, and the shutdown can be retried"
                                ),
                            )),
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(vm = %vm, error = %e, "final replication cycle failed; the next cycle sends the changes")
                    }
                }
                return v(host.vms.stop(&vm).await);
            }
            v(host.vms.shutdown(&vm, timeout).await)
        }
        VmAction::Stop { vm } => v(host.vms.stop(&vm).await),
        VmAction::Delete { vm, delete_disks } => {
            host.vms.delete(&vm, delete_disks).await.map(|()| Json(serde_json::Value::Null)).map_err(vm_failure)
        }
        VmAction::Status { vm } => v(host.vms.status(&vm).await),
        VmAction::List => Ok(Json(serde_json::to_value(host.vms.list().await).unwrap_or_default())),
        VmAction::ConfigureGuestNetwork { vm, nics, timeout_secs } => {
            let running = host.vms.running(&vm).await.ok_or_else(|| {
                (StatusCode::CONFLICT, Json(ApiError::new("VmNotRunning", format!("VM {vm} is not running"))))
            })?;
            let wait = Duration::from_secs(timeout_secs.clamp(1, 3600));
            match crate::guest_net::apply(&running.paths().qga, &nics, wait).await {
                Ok(applied) => Ok(Json(serde_json::json!({ "nics": applied }))),
                Err(e) => {
                    let code = match e {
                        crate::guest_net::GuestNetError::Invalid(_) => "InvalidGuestAddress",
                        crate::guest_net::GuestNetError::NoAgent(_) => "GuestAgentUnavailable",
                        _ => "GuestNetworkFailed",
                    };
                    Err((StatusCode::CONFLICT, Json(ApiError::new(code, e.to_string()))))
                }
            }
        }
    }
}

/// CAP-1: start, stop or forget a churn measurement.
async fn profile_action(
    State(host): State<Arc<Host>>,
    Json(action): Json<ferry_types::capacity::ProfileAction>,
) -> Result<Json<serde_json::Value>, Failure> {
    host.profiler.act(action, &host.vms).await.map(Json).map_err(|e| {
        let (status, code) = match &e {
            crate::profile::ProfileError::Invalid(_) => (StatusCode::BAD_REQUEST, "InvalidProfileRequest"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "ProfileError"),
        };
        (status, Json(ApiError::new(code, e.to_string())))
    })
}

async fn replication_action(
    State(host): State<Arc<Host>>,
    Json(action): Json<ferry_types::site_protocol::ReplicationAction>,
) -> Result<Json<serde_json::Value>, Failure> {
    use ferry_types::site_protocol::ReplicationAction as A;
    let res = match action {
        A::Prepare { replica } => host.replication.prepare(replica).await,
        A::Start { replication } => host.replication.start_source(replication, host.vms.clone()).await,
        A::Stop { item, delete_replica, keep_tracking } => {
            host.replication.stop(item, delete_replica, keep_tracking).await
        }
        A::ReleaseFailover { item } => host.replication.release_failover(item).await,
        A::Pause { item } => host.replication.pause(item).await,
        A::Resume { item } => host.replication.resume_paused(item, host.vms.clone()).await,
        A::CommitFailover { item } => host.replication.commit_failover(item).await,
        A::AdoptVm { vm, replica } => host.replication.adopt_vm(&vm, replica, &host.vms).await,
        A::ImportInitial { item, path, key } => host.replication.import_initial(item, &path, key.as_deref()).await,
        A::ConfirmImport { item, cycle } => host.replication.confirm_import(item, cycle).await,
        A::Repair { item } => host.replication.repair(item, host.vms.clone()).await,
        A::VerifyPoints { item, point } => host.replication.verify_points(item, point.as_deref()).await,
        A::PointImages { item, point, format, path } => {
            host.replication.point_images(item, &point, format, &path).await
        }
        A::TestOverlays { item, point } => host.replication.test_overlays(item, &point).await,
        A::ReleaseTest { item } => host.replication.release_test(item).await,
        A::FailoverOverlays { item, point } => host.replication.failover_overlays(item, &point).await,
        A::RemoveTestNetwork { bridge } => {
            if !crate::net::is_test_bridge(&bridge) {
                Err(crate::replication::ReplicationError::Invalid(format!("{bridge} is not a test-failover bridge")))
            } else {
                crate::net::delete_link(&bridge)
                    .map(|()| serde_json::Value::Null)
                    .map_err(|e| crate::replication::ReplicationError::Engine(e.to_string()))
            }
        }
    };
    res.map(Json).map_err(|e| {
        let (status, code) = match &e {
            crate::replication::ReplicationError::Invalid(_) => (StatusCode::BAD_REQUEST, "InvalidReplicationRequest"),
            e if e.no_space() => (StatusCode::INSUFFICIENT_STORAGE, "ReplicaLocationFull"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "ReplicationError"),
        };
        (status, Json(ApiError::new(code, e.to_string())))
    })
}
