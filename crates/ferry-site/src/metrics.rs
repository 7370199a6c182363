//! Prometheus metrics of a site manager (JOB-2): its link to the vault, its hosts' report ages
//! and the commands it ran, with `ferry_build_info`. Served on a plain-HTTP listener of its own
//! (`metrics_listen` in the site definition, off when absent; keep it on loopback or a
//! management network). No secret is ever part of a series.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ferry_core::metrics::{Exposition, Kind};

use crate::Site;

/// Commands this process answered, by outcome.
#[derive(Debug, Default)]
pub struct CommandCounters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
}

impl CommandCounters {
    pub fn count(&self, ok: bool) {
        let c = if ok { &self.succeeded } else { &self.failed };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The whole `/metrics` document of `site` at `now_ms` (ms since the epoch).
pub fn render(site: &Site, now_ms: i64) -> String {
    let mut e = Exposition::new();
    e.build_info("site");
    let name = site.cfg.name.as_str();
    let age = |ms: i64| (now_ms - ms).max(0) as f64 / 1000.0;
    let family = "ferry_site_vault_report_age_seconds";
    e.family(family, Kind::Gauge, "Seconds since the vault last accepted this site's report (none before the first).");
    let last = site.last_vault_report_ms.load(Ordering::Relaxed);
    if last > 0 {
        e.sample(family, &[("site", name)], age(last));
    }
    let hosts = site.persisted.lock().map(|p| p.hosts.clone()).unwrap_or_default();
    e.family("ferry_site_hosts", Kind::Gauge, "Hosts joined to this site.").sample(
        "ferry_site_hosts",
        &[("site", name)],
        hosts.len() as f64,
    );
    let family = "ferry_site_host_report_age_seconds";
    e.family(family, Kind::Gauge, "Seconds since each host last reported to this site (none before its first report).");
    for h in &hosts {
        if h.last_seen_ms > 0 {
            e.sample(family, &[("site", name), ("host", &h.name)], age(h.last_seen_ms));
        }
    }
    let running = site.in_flight.lock().map(|s| s.len()).unwrap_or(0);
    e.family("ferry_site_commands_running", Kind::Gauge, "Vault commands running now.").sample(
        "ferry_site_commands_running",
        &[("site", name)],
        running as f64,
    );
    let family = "ferry_site_commands_total";
    e.family(family, Kind::Counter, "Vault commands answered since this process started, by outcome.");
    e.sample(
        family,
        &[("site", name), ("outcome", "succeeded")],
        site.commands.succeeded.load(Ordering::Relaxed) as f64,
    );
    e.sample(family, &[("site", name), ("outcome", "failed")], site.commands.failed.load(Ordering::Relaxed) as f64);
    e.finish()
}

/// Serve `/metrics` on `listener`; returns where it listens.
pub fn serve(
    site: Arc<Site>,
    listener: std::net::TcpListener,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let site = site.clone();
            async move {
                let text = render(&site, chrono::Utc::now().timestamp_millis());
                ([(header::CONTENT_TYPE, ferry_core::metrics::CONTENT_TYPE)], text).into_response()
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok((addr, task))
}
