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
use crate::source_status::{CycleHistograms, DURATION_BUCKETS};

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
    ferry_core::metrics::escape_label(v)
}

/// One metric: name, type, help, value of a status.
type Series = (&'static str, &'static str, &'static str, fn(&ReplicationStatus) -> f64);

/// The exposition text for `statuses` of host `host`.
pub fn render(host: &str, statuses: &[ReplicationStatus]) -> String {
    let mut out = String::new();
    let series: [Series; 10] = [
        (
            "ferry_replication_rpo_seconds",
            "gauge",
            "Seconds since the newest recovery point on the replica (-1: none yet)",
            |s| s.last_point.map(|t| (chrono::Utc::now() - t).num_milliseconds() as f64 / 1000.0).unwrap_or(-1.0),
        ),
        (
            "ferry_replication_cycles_expected_hour",
            "gauge",
            "Cycles expected in the last hour at the copy interval",
            |s| s.cycles_expected_hour as f64,
        ),
        (
            "ferry_replication_cycles_missed_hour",
            "gauge",
            "Expected cycles of the last hour that did not succeed",
            |s| s.cycles_expected_hour.saturating_sub(s.cycles_ok_hour) as f64,
        ),
        ("ferry_replication_cycles_total", "counter", "Replication cycles completed", |s| s.cycles_ok as f64),
        ("ferry_replication_cycles_failed_total", "counter", "Replication cycles that failed (missed)", |s| {
            s.cycles_failed as f64
        }),
        ("ferry_replication_last_sync_timestamp_seconds", "gauge", "Time of the last recovery point", |s| {
            s.last_sync.map(|t| t.timestamp_millis() as f64 / 1000.0).unwrap_or(0.0)
        }),
        ("ferry_replication_data_waiting_bytes", "gauge", "Changed bytes not yet sent", |s| {
            s.data_waiting_bytes as f64
        }),
        ("ferry_replica_recovery_points", "gauge", "Recovery points held on this host", |s| {
            s.recovery_points.len() as f64
        }),
        (
            "ferry_replica_recovery_points_verified",
            "gauge",
            "Recovery points whose last verification found them exact (RP-1)",
            |s| s.recovery_points.iter().filter(|p| p.verification.as_ref().is_some_and(|v| v.ok)).count() as f64,
        ),
        (
            "ferry_replica_recovery_points_damaged",
            "gauge",
            "Recovery points whose last verification found damage (RP-1)",
            |s| {
                s.recovery_points.iter().filter(|p| p.verification.as_ref().is_some_and(|v| v.sealed && !v.ok)).count()
                    as f64
            },
        ),
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

/// The cycle-duration histograms (seconds) of every VM this host replicates, by part.
pub fn render_histograms(host: &str, histograms: &[(uuid::Uuid, CycleHistograms)]) -> String {
    let mut out = String::new();
    let name = "ferry_replication_cycle_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Duration of successful replication cycles by part (capture, transfer, apply, total).\n# TYPE {name} histogram"
    );
    let host_raw = host.to_string();
    let host = label(host);
    for (item, h) in histograms {
        let item = label(&item.to_string());
        for (part, d) in [("capture", &h.capture), ("transfer", &h.transfer), ("apply", &h.apply), ("total", &h.total)]
        {
            for (bound, n) in DURATION_BUCKETS.iter().zip(d.buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{host=\"{host}\",item=\"{item}\",part=\"{part}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{host=\"{host}\",item=\"{item}\",part=\"{part}\",le=\"+Inf\"}} {}",
                d.count
            );
            let _ = writeln!(out, "{name}_sum{{host=\"{host}\",item=\"{item}\",part=\"{part}\"}} {}", d.sum_secs);
            let _ = writeln!(out, "{name}_count{{host=\"{host}\",item=\"{item}\",part=\"{part}\"}} {}", d.count);
        }
    }
    let mut bytes = ferry_core::metrics::Exposition::new();
    let name = "ferry_replication_cycle_data_bytes";
    bytes.family(
        name,
        ferry_core::metrics::Kind::Histogram,
        "Data bytes sent by successful replication cycles (the initial copy and resyncs included).",
    );
    for (item, h) in histograms {
        bytes.histogram(name, &[("host", &host_raw), ("item", &item.to_string())], &h.bytes);
    }
    out.push_str(&bytes.finish());
    out
}

/// Serve `/metrics` on `listener`.
pub fn serve(
    host: String,
    replication: Arc<ReplicationService>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (host, replication) = (host.clone(), replication.clone());
            async move {
                let mut info = ferry_core::metrics::Exposition::new();
                info.build_info("host");
                let mut text = info.finish();
                text.push_str(&render(&host, &replication.statuses().await));
                text.push_str(&render_histograms(&host, &replication.histograms()));
                let limit = replication.bandwidth_now().map_or(-1.0, |b| b as f64);
                let _ = writeln!(
                    text,
                    "# HELP ferry_bandwidth_limit_bytes_per_second Replication bandwidth limit in force now (-1: none).\n# TYPE ferry_bandwidth_limit_bytes_per_second gauge\nferry_bandwidth_limit_bytes_per_second{{host=\"{}\"}} {limit}",
                    label(&host)
                );
                ([(header::CONTENT_TYPE, ferry_core::metrics::CONTENT_TYPE)], text).into_response()
            }
        }),
    );
    if let Some(tls) = tls {
        let server = axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(tls));
        return Ok(tokio::spawn(async move {
            if let Err(e) = server.serve(app.into_make_service()).await {
                tracing::warn!(error = %e, "metrics listener stopped");
            }
        }));
    }
    let listener = tokio::net::TcpListener::from_std(listener)?;
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
        let mut s = ReplicationStatus::new(uuid::Uuid::nil(), PairRole::Source, ReplicationPhase::Replicating);
        s.initial_progress = 100;
        s.cycles_ok = 7;
        s.cycles_failed = 1;
        s.cycles_expected_hour = 10;
        s.cycles_ok_hour = 7;
        s.last_point = Some(chrono::Utc::now() - chrono::Duration::seconds(42));
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
        assert!(text.contains(&format!(
            "ferry_replication_cycles_missed_hour{{host=\"ny1\",item=\"{item}\",role=\"source\"}} 3"
        )));
        let rpo = text
            .lines()
            .find(|l| l.starts_with("ferry_replication_rpo_seconds{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .expect("rpo series");
        assert!((42.0..60.0).contains(&rpo), "RPO is the age of the newest point: {rpo}");
        let mut h = CycleHistograms::default();
        h.total.observe(std::time::Duration::from_millis(300));
        h.bytes.observe(3_000_000.0);
        let hist = render_histograms("ny1", &[(item, h)]);
        assert!(hist.contains("# TYPE ferry_replication_cycle_duration_seconds histogram"));
        assert!(hist.contains(&format!("ferry_replication_cycle_duration_seconds_bucket{{host=\"ny1\",item=\"{item}\",part=\"total\",le=\"0.5\"}} 1")));
        assert!(hist.contains(&format!(
            "ferry_replication_cycle_duration_seconds_count{{host=\"ny1\",item=\"{item}\",part=\"capture\"}} 0"
        )));
        assert!(hist.contains(&format!(
            "ferry_replication_cycle_data_bytes_bucket{{host=\"ny1\",item=\"{item}\",le=\"16777216\"}} 1"
        )));
        assert!(!text.contains("_avg"), "histograms, not averages");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
