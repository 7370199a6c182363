//! Prometheus metrics of the vault (JOB-2): jobs by operation and status, API latency
//! histograms by route, every site's heartbeat age, the alert outbox, protected items by state
//! and health, and `ferry_build_info`.
//!
//! They are served on a plain-HTTP listener of their own (`metrics_listen`, off by default):
//! keep it on loopback or a management network. It carries names and counts, never a secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ferry_core::metrics::{Exposition, Histogram, Kind, LATENCY_SECONDS};
use ferry_store::DocKind;
use ferry_types::fabric::Fabric;
use ferry_types::protection::ProtectedItem;
use ferry_types::vault::Vault;

use crate::state::AppState;

/// Request latencies by (method, route template, status code).
#[derive(Default)]
pub struct HttpMetrics {
    latencies: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl HttpMetrics {
    fn observe(&self, method: &str, route: &str, code: u16, secs: f64) {
        if let Ok(mut m) = self.latencies.lock() {
            m.entry((method.to_string(), route.to_string(), code))
                .or_insert_with(|| Histogram::new(LATENCY_SECONDS))
                .observe(secs);
        }
    }

    fn render(&self, e: &mut Exposition) {
        let name = "ferry_http_request_duration_seconds";
        e.family(name, Kind::Histogram, "Time to answer API and portal requests, by method, route and status code.");
        if let Ok(m) = self.latencies.lock() {
            for ((method, route, code), h) in m.iter() {
                let code = code.to_string();
                e.histogram(name, &[("method", method), ("route", route), ("code", &code)], h);
            }
        }
    }
}

/// Middleware: time every request by the route that matched (a bounded set of templates, so
/// ids in paths do not multiply the series); unmatched paths count as `unmatched`.
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let res = next.run(req).await;
    m.observe(&method, &route, res.status().as_u16(), started.elapsed().as_secs_f64());
    res
}

fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "unknown".into())
}

/// The whole `/metrics` document.
pub async fn render(state: &AppState) -> Result<String, ferry_store::Error> {
    let mut e = Exposition::new();
    e.build_info("vault");
    let vaults: Vec<Vault> =
        state.store.list_vaults().await?.into_iter().filter_map(|(b, _)| serde_json::from_value(b).ok()).collect();
    let vault_name =
        |id: uuid::Uuid| vaults.iter().find(|v| v.id == id).map_or_else(|| id.to_string(), |v| v.name.clone());

    let name = "ferry_jobs";
    e.family(name, Kind::Gauge, "Jobs kept in the vault, by operation and status.");
    for (vault, operation, status, n) in state.store.job_counts().await? {
        e.sample(name, &[("vault", &vault_name(vault)), ("operation", &operation), ("status", &status)], n as f64);
    }

    state.http_metrics.render(&mut e);

    let now = state.clock.now();
    let mut items: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let name = "ferry_site_heartbeat_age_seconds";
    e.family(name, Kind::Gauge, "Seconds since each site manager last reported (sites that never reported have none).");
    for v in &vaults {
        for f in state.store.all_docs::<Fabric>(DocKind::Fabric, v.id).await? {
            if let Some(t) = f.body.last_heartbeat {
                let age = (now - t).num_milliseconds().max(0) as f64 / 1000.0;
                e.sample(name, &[("vault", &v.name), ("site", &f.body.name)], age);
            }
        }
        for i in state.store.all_docs::<ProtectedItem>(DocKind::ProtectedItem, v.id).await? {
            *items.entry((v.name.clone(), word(&i.body.state), word(&i.body.health))).or_default() += 1;
        }
    }
    let name = "ferry_protected_items";
    e.family(name, Kind::Gauge, "Protected items by replication state and health.");
    for ((vault, st, health), n) in &items {
        e.sample(name, &[("vault", vault), ("state", st), ("health", health)], *n as f64);
    }

    let (pending, delivered, dropped) = state.store.alert_outbox_counts().await?;
    e.single("ferry_alert_outbox_pending", Kind::Gauge, "Alerts waiting for delivery (JOB-4).", pending as f64);
    e.single("ferry_alerts_delivered_total", Kind::Counter, "Alerts delivered.", delivered as f64);
    e.single("ferry_alerts_dropped_total", Kind::Counter, "Alerts dropped as undeliverable.", dropped as f64);
    Ok(e.finish())
}

/// Serve `/metrics` on `listener`.
pub fn serve(state: AppState, listener: std::net::TcpListener) -> std::io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let state = state.clone();
            async move {
                match render(&state).await {
                    Ok(text) => ([(header::CONTENT_TYPE, ferry_core::metrics::CONTENT_TYPE)], text).into_response(),
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics unavailable");
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
                    }
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(addr)
}
