//! The REST API. One file per resource; the tree mirrors the URL tree under `/api/v1`.

pub mod agent;
pub mod alerts;
pub mod capacity;
pub mod dashboard;
pub mod events;
pub mod fabrics;
pub mod items;
pub mod jobs;
pub mod mappings;
pub mod plans;
pub mod policies;
pub mod tokens;
pub mod vaults;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry vault API",
        description = "Site recovery for KVM/QEMU virtual machines. Resource names follow Azure Site Recovery."
    ),
    components(schemas(ferry_types::ApiError))
)]
pub struct ApiDoc;

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(vaults::list_vaults, vaults::create_vault))
        .routes(routes!(vaults::get_vault, vaults::delete_vault))
        .routes(routes!(vaults::set_protection_goal))
        .routes(routes!(vaults::list_keys, vaults::issue_key))
        .routes(routes!(vaults::revoke_key))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(agent::register))
        .routes(routes!(agent::report))
        .routes(routes!(agent::enable_protection))
        .routes(routes!(agent::fetch_commands))
        .routes(routes!(agent::command_result))
        .routes(routes!(agent::sign_host))
        .routes(routes!(fabrics::list_fabrics))
        .routes(routes!(fabrics::get_fabric, fabrics::delete_fabric))
        .routes(routes!(fabrics::list_clouds))
        .routes(routes!(fabrics::set_cloud_sync))
        .routes(routes!(fabrics::list_host_groups))
        .routes(routes!(fabrics::list_hosts))
        .routes(routes!(fabrics::list_logical_networks))
        .routes(routes!(fabrics::list_vm_networks))
        .routes(routes!(fabrics::list_storage_classifications))
        .routes(routes!(fabrics::list_protectable_items))
        .routes(routes!(fabrics::vm_action))
        .routes(routes!(fabrics::renew_certificate))
        .routes(routes!(policies::list_policies, policies::create_policy))
        .routes(routes!(policies::get_policy, policies::update_policy, policies::delete_policy))
        .routes(routes!(mappings::list_container_mappings, mappings::create_container_mapping))
        .routes(routes!(mappings::delete_container_mapping))
        .routes(routes!(mappings::list_network_mappings, mappings::create_network_mapping))
        .routes(routes!(mappings::delete_network_mapping))
        .routes(routes!(mappings::network_availability))
        .routes(routes!(mappings::list_storage_mappings, mappings::create_storage_mapping))
        .routes(routes!(mappings::delete_storage_mapping))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::export_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::restart_job))
        .routes(routes!(jobs::resume_job))
        .routes(routes!(events::list_events))
        .routes(routes!(dashboard::get_dashboard))
        .routes(routes!(alerts::get_alert_settings, alerts::put_alert_settings))
        .routes(routes!(alerts::test_alert))
        .routes(routes!(alerts::list_alerts))
        .routes(routes!(items::list_items, items::enable_protection))
        .routes(routes!(items::get_item))
        .routes(routes!(items::operate))
        .routes(routes!(items::verify_points))
        .routes(routes!(items::point_images))
        .routes(routes!(plans::list_plans, plans::create_plan))
        .routes(routes!(plans::get_plan, plans::update_plan, plans::delete_plan))
        .routes(routes!(plans::operate_plan))
        .routes(routes!(capacity::list_capacity_plans, capacity::create_capacity_plan))
        .routes(routes!(capacity::get_capacity_plan, capacity::delete_capacity_plan))
        .routes(routes!(capacity::capacity_report))
        .routes(routes!(capacity::stop_capacity_plan))
}

/// The router and the OpenAPI document it serves.
pub fn router(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (router, doc) = api_router().split_for_parts();
    let spec = doc.clone();
    let ca_pem = state.ca.cert_pem().to_string();
    let router = router
        .with_state(state.clone())
        .route(
            "/api/v1/health",
            get(|| async { Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})) }),
        )
        .route("/api/v1/openapi.json", get(move || async move { Json(spec) }))
        .route("/api/v1/ca", get(move || async move { ca_pem }))
        .merge(crate::portal::router(state.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(crate::extract::MAX_BODY_BYTES));
    (router, doc)
}

/// The OpenAPI document as pretty JSON (checked into `docs/openapi.json`).
pub fn openapi_json() -> String {
    let (_, doc) = api_router().split_for_parts();
    doc.to_pretty_json().unwrap_or_default() + "\n"
}
