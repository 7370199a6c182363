//! JOB-2 / REP-5 monitoring: every role of a replicating lab serves Prometheus metrics that pass
//! `promtool check metrics` (Debian's prometheus package), with the series operators watch; the
//! Grafana dashboard in `deploy/grafana` queries only metrics the lab exposes; with JSON logs at
//! debug level no secret appears in any log or metrics text (SEC-3).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Lab, LabOptions};

/// The metrics text at the address a role wrote to `file`.
fn scrape(file: &Path) -> String {
    let addr = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut s = std::net::TcpStream::connect(addr.trim()).expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// `promtool check metrics` on `text`: its complaints (none expected).
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by scripts/setup-deps.sh)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        said
    } else {
        format!("exit {}: {said}", out.status)
    }
}

/// The value of the first sample line starting with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

/// Metric names a PromQL expression reads (`ferry_…` identifiers).
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ferry_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn dashboard() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/ferry-dashboard.json")
}

#[test]
fn job_2_every_roles_metrics_pass_promtool_and_feed_the_dashboard() {
    let env = [
        ("FERRY_LOG_FORMAT", "json"),
        ("FERRY_LOG", "info,ferry_vault=debug,ferry_site=debug,ferry_host=debug,ferry_client=debug,ferry_repl=debug"),
    ];
    let lab = Lab::start(LabOptions {
        test_copy_interval_ms: Some(1500),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    });
    let serial = common::guest_vm(&lab, "mx1", 8, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "mx1");
    common::wait_records_and_points(&lab, &id, &serial, 3, 2);
    let _ = lab.json(&["item-show", &id]);

    let vault = scrape(&lab.dir.join("vault/metrics-endpoint"));
    let sites: Vec<String> = ["newyork", "chicago"]
        .iter()
        .map(|s| scrape(&lab.dir.join("sites").join(s).join("data/metrics-endpoint")))
        .collect();
    let hosts: Vec<String> = ["ny1", "chi1"].iter().map(|h| common::host_metrics(&lab, h)).collect();
    let hosts: Vec<String> =
        hosts.iter().map(|t| t.split_once("\r\n\r\n").map_or(t.clone(), |(_, b)| b.to_string())).collect();

    for (who, text) in [("vault", &vault), ("VMM-NewYork", &sites[0]), ("VMM-Chicago", &sites[1])]
        .into_iter()
        .chain([("ny1", &hosts[0]), ("chi1", &hosts[1])])
    {
        let said = promtool(text);
        assert!(said.trim().is_empty(), "promtool on the metrics of {who}: {said}\n{text}");
        assert!(text.contains("ferry_build_info{role=\""), "{who}: {text}");
    }

    // The vault: jobs by operation and status, API latency by route, heartbeats, items, alerts.
    assert!(
        value(&vault, "ferry_jobs{vault=\"ferry-lab\",operation=\"EnableProtection\",status=\"Succeeded\"}") >= 1.0
    );
    assert!(
        vault.contains("ferry_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/vaults/{vault}/"),
        "API latency by route template: {vault}"
    );
    assert!(value(&vault, "ferry_site_heartbeat_age_seconds{vault=\"ferry-lab\",site=\"VMM-NewYork\"}") < 30.0);
    assert_eq!(value(&vault, "ferry_protected_items{vault=\"ferry-lab\",state=\"Protected\""), 1.0, "{vault}");
    assert_eq!(value(&vault, "ferry_alert_outbox_pending "), 0.0);
    // The sites: their hosts, their link to the vault, the commands they ran.
    assert_eq!(value(&sites[0], "ferry_site_hosts{site=\"VMM-NewYork\"}"), 1.0);
    assert!(value(&sites[0], "ferry_site_host_report_age_seconds{site=\"VMM-NewYork\",host=\"ny1\"}") < 30.0);
    assert!(value(&sites[0], "ferry_site_vault_report_age_seconds{site=\"VMM-NewYork\"}") < 30.0);
    assert!(value(&sites[0], "ferry_site_commands_total{site=\"VMM-NewYork\",outcome=\"succeeded\"}") >= 1.0);
    // The source host: a histogram of cycle sizes, no averages.
    assert!(
        value(&hosts[0], &format!("ferry_replication_cycle_data_bytes_count{{host=\"ny1\",item=\"{id}\"}}")) >= 2.0
    );
    assert!(!hosts[0].contains("_avg"), "histograms instead of averages");

    // Every metric the dashboard reads is exposed by the lab.
    let all = format!("{vault}{}{}", sites.join(""), hosts.join(""));
    let board: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard()).expect("dashboard")).expect("dashboard JSON");
    let panels = board["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{board}");
    let mut read = 0;
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for name in names_in(expr) {
                read += 1;
                let exposed = all.lines().any(|l| {
                    l.strip_prefix(&name).is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                        || l == format!("# TYPE {name} counter")
                        || l.starts_with(&format!("# TYPE {name} "))
                });
                assert!(exposed, "panel {:?} reads {name}, which no role exposes", p["title"]);
            }
        }
    }
    assert!(read >= 15, "the dashboard's queries were read");

    // SEC-3: JSON logs at debug level hold no secret; nor does any metrics text.
    let logs = lab.dir.join("logs");
    let mut json_lines = 0;
    let mut debug_lines = 0;
    for role in ["vault", "site-newyork", "site-chicago", "host-ny1", "host-chi1"] {
        let text = std::fs::read_to_string(logs.join(format!("{role}.log"))).expect("log");
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert!(!lines.is_empty(), "{role} logged JSON lines: {text}");
        json_lines += lines.len();
        debug_lines += lines.iter().filter(|l| l["level"] == "DEBUG").count();
    }
    assert!(json_lines >= 20 && debug_lines >= 5, "{json_lines} JSON lines, {debug_lines} at debug level");
    for (i, text) in [&vault].into_iter().chain(&sites).chain(&hosts).enumerate() {
        std::fs::write(logs.join(format!("metrics-{i}.txt")), text).expect("write");
    }
    common::assert_no_secret_leaked(&lab, &[]);
}

/// SEC-3: a host agent serves its metrics on another address than loopback only over TLS (or
/// when plain HTTP is chosen explicitly): a configuration that would expose them in plain text
/// is refused before the agent starts; with `metrics_tls` the agent serves HTTPS with the
/// configured certificate and plain HTTP gets no metrics.
#[test]
fn sec_3_host_metrics_over_tls_or_on_loopback_only() {
    let lab = Lab::start(LabOptions::default());
    let hdir = lab.dir.join("hosts/ny1");
    let toml = std::fs::read_to_string(hdir.join("host.toml")).expect("host.toml");
    let line = toml.lines().find(|l| l.starts_with("metrics_listen")).expect("metrics line").to_string();

    // Exposed in plain text: refused, nothing started.
    let exposed = lab.tmp.path().join("exposed.toml");
    std::fs::write(&exposed, toml.replace(&line, "metrics_listen = \"0.0.0.0:0\"")).expect("write");
    let out = Command::new(common::ferry_bin())
        .args(["host", "--config"])
        .arg(&exposed)
        .arg("--data-dir")
        .arg(lab.tmp.path().join("exposed-data"))
        .output()
        .expect("ferry host");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address") && err.contains("metrics_tls"), "{err}");
    assert!(!lab.tmp.path().join("exposed-data/tls").exists(), "the agent did not join");

    // Over TLS with the operator's certificate (its key 0600).
    let ca = ferry_pki::Ca::create("Operator PKI").expect("ca");
    let cert =
        ca.issue_server_cert("ny1-metrics", &["localhost".into()], &["127.0.0.1".parse().expect("ip")]).expect("cert");
    let (cert_file, key_file) = (lab.tmp.path().join("metrics-cert.pem"), lab.tmp.path().join("metrics-key.pem"));
    std::fs::write(&cert_file, &cert.cert_pem).expect("cert");
    ferry_pki::write_private_file(&key_file, cert.key_pem.as_bytes()).expect("key");
    let tls_line = format!(
        "metrics_listen = \"127.0.0.1:0\"\nmetrics_tls = {{ cert_file = \"{}\", key_file = \"{}\" }}",
        cert_file.display(),
        key_file.display()
    );
    std::fs::write(hdir.join("host.toml"), toml.replace(&line, &tls_line)).expect("write");
    let endpoint = hdir.join("data/metrics-endpoint");
    let before = std::fs::read_to_string(&endpoint).unwrap_or_default();
    common::kill9(lab.pid("host-ny1"));
    let _agent = lab.restart_host("ny1");
    let addr = lab.wait_for("the agent's new metrics endpoint", Duration::from_secs(60), || {
        std::fs::read_to_string(&endpoint).ok().filter(|a| *a != before)
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let body = rt.block_on(async {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("ca"))
            .build()
            .expect("client");
        let r = client.get(format!("https://127.0.0.1:{}/metrics", addr.trim().rsplit(':').next().unwrap_or("0")));
        r.send().await.expect("https scrape").text().await.expect("body")
    });
    assert!(body.contains("ferry_build_info{role=\"host\""), "{body}");
    let mut s = std::net::TcpStream::connect(addr.trim()).expect("connect");
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut plain = String::new();
    let _ = s.read_to_string(&mut plain);
    assert!(!plain.contains("ferry_build_info"), "no metrics in plain text");
}
