//! Prometheus metrics of a host agent (JOB-2, REP-5): one series per replicated VM and role,
//! in the text exposition format, on a plain-HTTP listener of its own (`metrics_listen`; keep it
//! on loopback or a management network — it carries VM names and counters, no disk data).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ferry_types::site_protocol::{PairRole, ReplicationPhase, ReplicationStatus};

use crate::replication::ReplicationService;

const PHASES: [(ReplicationPhase, &str); 7] = [
    (ReplicationPhase::Waiting, "waiting"),
    (ReplicationPhase::InitialInProgress, "initial"),
    (ReplicationPhase::Replicating, "replicating"),
    (ReplicationPhase::ResyncRequired, "resync_required"),
    (ReplicationPhase::Resynchronizing, "resynchronizing"),
    (ReplicationPhase::Paused, "paused"),
    (ReplicationPhase::Retrying, "retrying"),
];

/// Label values are item ids and fixed words; escape anyway, as the format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric: name, type, help, value of a status.
type Series = (&'static str, &'static str, &'static str, fn(&ReplicationStatus) -> f64);

/// The exposition text for `statuses` of host `host`.
pub fn render(host: &str, statuses: &[ReplicationStatus]) -> String {
    let mut out = String::new();
    let series: [Series; 8] = [
        ("ferry_replication_cycles_total", "counter", "Replication cycles completed", |s| s.cycles_ok as f64),
        ("ferry_replication_cycles_failed_total", "counter", "Replication cycles that failed (missed)", |s| {
            s.cycles_failed as f64
        }),
        ("ferry_replication_last_sync_timestamp_seconds", "gauge", "Time of the last recovery point", |s| {
            s.last_sync.map(|t| t.timestamp_millis() as f64 / 1000.0).unwrap_or(0.0)
        }),
        ("ferry_replication_delta_bytes_avg", "gauge", "Average data bytes per cycle", |s| s.avg_delta_bytes as f64),
        ("ferry_replication_delta_bytes_max", "gauge", "Largest data bytes of a cycle", |s| s.max_delta_bytes as f64),
        ("ferry_replication_cycle_latency_ms_avg", "gauge", "Average cycle duration", |s| s.avg_latency_ms as f64),
        ("ferry_replication_data_waiting_bytes", "gauge", "Changed bytes not yet sent", |s| {
            s.data_waiting_bytes as f64
        }),
        ("ferry_replica_recovery_points", "gauge", "Recovery points held on this host", |s| {
            s.recovery_points.len() as f64
        }),
    ];
    let host = label(host);
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        for s in statuses {
            let role = match s.role {
                PairRole::Source => "source",
                PairRole::Target => "target",
            };
            let _ = writeln!(
                out,
                "{name}{{host=\"{host}\",item=\"{}\",role=\"{role}\"}} {}",
                label(&s.item.to_string()),
                value(s)
            );
        }
    }
    let _ = writeln!(out, "# HELP ferry_replication_phase Replication phase (1 for the current one).\n# TYPE ferry_replication_phase gauge");
    for s in statuses.iter().filter(|s| s.role == PairRole::Source) {
        for (p, n) in PHASES {
            let v = u8::from(s.phase == p);
            let _ = writeln!(
                out,
                "ferry_replication_phase{{host=\"{host}\",item=\"{}\",phase=\"{n}\"}} {v}",
                label(&s.item.to_string())
            );
        }
    }
    out
}

/// Serve `/metrics` on `listener`.
pub fn serve(
    host: String,
    replication: Arc<ReplicationService>,
    listener: std::net::TcpListener,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (host, replication) = (host.clone(), replication.clone());
            async move {
                let mut text = render(&host, &replication.statuses().await);
                let limit = replication.bandwidth_now().map_or(-1.0, |b| b as f64);
                let _ = writeln!(
                    text,
                    "# HELP ferry_bandwidth_limit_bytes_per_second Replication bandwidth limit in force now (-1: none).\n# TYPE ferry_bandwidth_limit_bytes_per_second gauge\nferry_bandwidth_limit_bytes_per_second{{host=\"{}\"}} {limit}",
                    label(&host)
                );
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
            }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    }))
}

/// Where the metrics listener ended up (port 0 picks one).
pub fn bound(listener: &std::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rep_5_metrics_render_one_series_per_item_and_role() {
        let s = ReplicationStatus {
            item: uuid::Uuid::nil(),
            role: PairRole::Source,
            phase: ReplicationPhase::Replicating,
            initial_progress: 100,
            last_sync: None,
            cycles_ok: 7,
            cycles_failed: 1,
            avg_delta_bytes: 65536,
            max_delta_bytes: 131072,
            avg_latency_ms: 40,
            data_waiting_bytes: 0,
            initial_bytes: 0,
            consistency_fallbacks: 0,
            last_warning: None,
            last_error: None,
            recovery_points: vec![],
        };
        let text = render("ny1", &[s]);
        let item = uuid::Uuid::nil();
        assert!(
            text.contains(&format!("ferry_replication_cycles_total{{host=\"ny1\",item=\"{item}\",role=\"source\"}} 7"))
        );
        assert!(
            text.contains(&format!("ferry_replication_phase{{host=\"ny1\",item=\"{item}\",phase=\"replicating\"}} 1"))
        );
        assert!(text.contains(&format!("ferry_replication_phase{{host=\"ny1\",item=\"{item}\",phase=\"paused\"}} 0")));
        assert!(text.contains("# TYPE ferry_replication_cycles_failed_total counter"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
