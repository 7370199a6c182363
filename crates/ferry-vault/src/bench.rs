//! The vault scale bench (issue: "Scale"): a fresh vault whose SQLite store holds 10,000
//! protected items, 100,000 jobs and 1,000,000 events, then the latency of the calls an
//! operator makes most — job and event listings with and without filters, one job, a page of
//! protected items — and of a job status update, with the process's resident memory.
//!
//! Listings go through the vault's real router (authentication, query parsing, store, JSON),
//! in process and without TLS, so the figures are the server's own cost. Targets: listing and
//! filtering p99 < 100 ms, job status update p99 < 10 ms.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use chrono::{DateTime, Utc};
use ferry_store::{DocKind, NewEvent, Store};
use ferry_types::event::Severity;
use ferry_types::job::{Job, JobStatus, JobTask};
use ferry_types::vault::Vault;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::ServiceExt;
use uuid::Uuid;

use crate::config::VaultConfig;

/// Listing and filtering target (p99).
pub const LIST_TARGET: Duration = Duration::from_millis(100);
/// Job status update target (p99).
pub const UPDATE_TARGET: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub protected_items: usize,
    pub jobs: usize,
    pub events: usize,
    /// Timed calls per measurement.
    pub samples: usize,
    /// Where to build the vault; a fresh temporary directory (removed afterwards) when absent.
    pub data_dir: Option<PathBuf>,
}

impl BenchOptions {
    /// The figures: 10,000 protected items, 100,000 jobs, 1,000,000 events.
    pub fn full() -> Self {
        Self { protected_items: 10_000, jobs: 100_000, events: 1_000_000, samples: 300, data_dir: None }
    }

    /// A quick run for the test suite.
    pub fn small() -> Self {
        Self { protected_items: 500, jobs: 1_000, events: 10_000, samples: 50, data_dir: None }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self::full()
    }
}

/// Latency of one kind of call.
#[derive(Debug, Clone)]
pub struct Measure {
    pub name: String,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub target: Duration,
    /// Items returned per call, averaged (shows the filters really select rows).
    pub avg_items: f64,
}

impl Measure {
    pub fn ok(&self) -> bool {
        self.p99 < self.target
    }
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub protected_items: usize,
    pub jobs: usize,
    pub events: usize,
    pub fill_time: Duration,
    pub database_bytes: u64,
    /// VmRSS of this process after the measurements.
    pub resident_bytes: Option<u64>,
    pub measures: Vec<Measure>,
}

impl BenchReport {
    pub fn meets_targets(&self) -> bool {
        self.measures.iter().all(Measure::ok)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Vault bench: {} protected items, {} jobs, {} events (filled in {:.1} s, database {:.1} MiB)",
            self.protected_items,
            self.jobs,
            self.events,
            self.fill_time.as_secs_f64(),
            self.database_bytes as f64 / (1024.0 * 1024.0)
        )?;
        writeln!(
            f,
            "{:<48} {:>10} {:>10} {:>10} {:>8} {:>10}  result",
            "call", "p50", "p99", "max", "items", "target"
        )?;
        for m in &self.measures {
            writeln!(
                f,
                "{:<48} {:>10} {:>10} {:>10} {:>8.1} {:>10}  {}",
                m.name,
                ms(m.p50),
                ms(m.p99),
                ms(m.max),
                m.avg_items,
                format!("< {}", ms(m.target)),
                if m.ok() { "ok" } else { "MISSED" }
            )?;
        }
        match self.resident_bytes {
            Some(b) => writeln!(f, "Resident memory (VmRSS): {:.1} MiB", b as f64 / (1024.0 * 1024.0))?,
            None => writeln!(f, "Resident memory (VmRSS): unavailable")?,
        }
        write!(f, "All targets met: {}", if self.meets_targets() { "yes" } else { "no" })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("Cannot start the vault for the bench")]
    Start(#[from] crate::server::StartError),
    #[error("Store failure during the bench")]
    Store(#[from] ferry_store::Error),
    #[error("Bench request {0} failed: {1}")]
    Request(String, String),
    #[error("Bench I/O failure: {0}")]
    Io(#[from] std::io::Error),
}

/// VmRSS of this process, from /proc/self/status.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

const OPERATIONS: [&str; 8] = [
    "EnableProtection",
    "FinalizeProtection",
    "TestFailover",
    "TestFailoverCleanup",
    "PlannedFailover",
    "UnplannedFailover",
    "ReProtect",
    "DisableProtection",
];

fn job_status(r: u32) -> JobStatus {
    match r % 100 {
        0..=93 => JobStatus::Succeeded,
        94..=98 => JobStatus::Failed,
        _ => JobStatus::Cancelled,
    }
}

pub(crate) fn severity(r: u32) -> Severity {
    match r % 1000 {
        0..=899 => Severity::Info,
        900..=969 => Severity::Warning,
        970..=994 => Severity::Error,
        _ => Severity::Critical,
    }
}

fn protected_item(i: usize, fabric: Uuid, pair: Uuid) -> serde_json::Value {
    serde_json::json!({
        "id": format!("pi-{i:06}"),
        "vm_id": format!("vm-{i:06}"),
        "vm_name": format!("app-server-{i:06}"),
        "source_fabric": fabric,
        "container_mapping": pair,
        "state": "Protected",
        "health": "Normal",
        "health_reasons": [],
        "disks": [
            {"target": "vda", "format": "qcow2", "virtual_size": 64u64 << 30, "classification": "GOLD",
             "replica_path": format!("/srv/replica/gold/vm-{i:06}-vda.qcow2")},
            {"target": "vdb", "format": "raw", "virtual_size": 256u64 << 30, "classification": "GOLD",
             "replica_path": format!("/srv/replica/gold/vm-{i:06}-vdb.raw")}
        ],
        "nics": [{"mac": format!("52:54:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
                  "vm_network": "VMNetwork1-NewYork", "target_network": "VMNetwork1-Chicago",
                  "ip": format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)}],
        "stats": {"last_synced": "2025-03-01T12:00:00Z", "avg_delta_bytes": 12_582_912, "max_delta_bytes": 402_653_184,
                  "avg_latency_ms": 180, "cycles_ok": 8640, "cycles_missed": 3, "pending_bytes": 0},
        "recovery_points": 24,
        "policy_version": 3
    })
}

pub(crate) fn job(vault: Uuid, fabric: Uuid, i: usize, created: DateTime<Utc>, rng: &mut StdRng) -> Job {
    let status = job_status(rng.gen());
    let operation = OPERATIONS[rng.gen_range(0..OPERATIONS.len())];
    let task = |name: &str| JobTask {
        name: name.into(),
        status,
        started_at: Some(created),
        ended_at: Some(created + chrono::Duration::seconds(20)),
        error: None,
    };
    let errors = if status == JobStatus::Failed {
        vec![ferry_types::ApiError::new("SiteUnreachable", "The site did not answer the command in time")
            .cause("The site manager is stopped or cannot reach the vault")
            .recommend("Check the site manager's service and its connection to the vault, then restart the job")]
    } else {
        vec![]
    };
    Job {
        id: Uuid::new_v4(),
        vault_id: vault,
        operation: operation.into(),
        object_type: "ProtectedItem".into(),
        object_id: format!("pi-{:06}", i % 10_000),
        object_name: format!("app-server-{:06}", i % 10_000),
        fabric: Some(fabric),
        status,
        tasks: vec![task("Prerequisites check"), task("Run on source site"), task("Run on target site")],
        progress: if status == JobStatus::Succeeded { 100 } else { 66 },
        allowed_actions: Job::actions_for(status),
        errors,
        params: serde_json::json!({"item": format!("pi-{:06}", i % 10_000), "recovery_point": "Latest"}),
        created_at: created,
        started_at: Some(created),
        ended_at: Some(created + chrono::Duration::seconds(60)),
        restart_of: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn measure(name: &str, target: Duration, mut times: Vec<Duration>, items: usize) -> Measure {
    times.sort();
    let n = times.len().max(1);
    Measure {
        name: name.to_string(),
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
        max: times.last().copied().unwrap_or_default(),
        target,
        avg_items: items as f64 / n as f64,
    }
}

/// Run the bench: build the data set, time the calls, report.
pub async fn run(opts: BenchOptions) -> Result<BenchReport, BenchError> {
    let (dir, temporary) = match &opts.data_dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("ferry-vault-bench-{}", Uuid::new_v4())), true),
    };
    let result = run_in(&opts, dir.clone()).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(opts: &BenchOptions, dir: PathBuf) -> Result<BenchReport, BenchError> {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let handle = crate::start(VaultConfig::new(dir.clone(), listen)).await?;
    let token = match &handle.new_admin_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(dir.join(crate::server::ADMIN_TOKEN_FILE))?,
    };
    let state = handle.state.clone();
    let store = state.store.clone();
    let mut rng = StdRng::seed_from_u64(0x5eed);

    // ---- fill ----
    let fill_start = Instant::now();
    let now = Utc::now();
    let vault = Vault {
        id: Uuid::new_v4(),
        name: format!("bench-{}", &Uuid::new_v4().to_string()[..8]),
        description: "scale bench".into(),
        region: "lab".into(),
        created_at: now,
        protection_goal: None,
    };
    let body = serde_json::to_value(&vault).map_err(|e| BenchError::Request("vault".into(), e.to_string()))?;
    store.insert_vault(vault.id, &vault.name, &body, &crate::auth::new_secret(""), now.timestamp_millis()).await?;
    let fabric = Uuid::new_v4();
    let pairs: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();

    let mut tx = store.begin().await?;
    for i in 0..opts.protected_items {
        let pair = pairs[i % pairs.len()];
        let id = format!("pi-{i:06}");
        let body = protected_item(i, fabric, pair);
        Store::put_doc_tx(
            &mut tx,
            DocKind::ProtectedItem,
            vault.id,
            &id,
            Some(&pair.to_string()),
            Some(&id),
            &body,
            None,
        )
        .await?;
    }
    Store::commit(tx).await?;

    // Jobs over the last 90 days, oldest first.
    let span_ms = 90i64 * 24 * 3600 * 1000;
    let start_time = now - chrono::Duration::milliseconds(span_ms);
    let mut job_ids = Vec::with_capacity(opts.jobs);
    let mut batch = Vec::with_capacity(5000);
    for i in 0..opts.jobs {
        let created = start_time + chrono::Duration::milliseconds(span_ms * i as i64 / opts.jobs.max(1) as i64);
        let j = job(vault.id, fabric, i, created, &mut rng);
        job_ids.push(j.id);
        batch.push(j);
        if batch.len() == 5000 {
            store.insert_jobs(&batch).await?;
            batch.clear();
        }
    }
    store.insert_jobs(&batch).await?;

    const KINDS: [&str; 6] =
        ["InventoryChanged", "ReplicationCycle", "RecoveryPointCreated", "HealthChanged", "JobFailed", "HeartbeatLost"];
    let messages: Vec<String> = (0..64)
        .map(|i| format!("Replication cycle of app-server-{i:06} completed: 12.0 MiB sent in 1.8 s, lag 4 s"))
        .collect();
    let objects: Vec<String> = (0..1000).map(|i| format!("pi-{i:06}")).collect();
    let mut done = 0;
    while done < opts.events {
        let n = (opts.events - done).min(20_000);
        let mut evs = Vec::with_capacity(n);
        for k in 0..n {
            let i = done + k;
            let r: u32 = rng.gen();
            evs.push(NewEvent {
                vault: vault.id,
                time: start_time + chrono::Duration::milliseconds(span_ms * i as i64 / opts.events.max(1) as i64),
                severity: severity(r),
                kind: KINDS[(r as usize / 1000) % KINDS.len()],
                message: &messages[i % messages.len()],
                fabric: Some(fabric),
                object_id: Some(&objects[i % objects.len()]),
            });
        }
        store.append_events(&evs).await?;
        done += n;
    }
    let fill_time = fill_start.elapsed();

    // ---- measure ----
    let (router, _) = crate::api::router(state.clone());
    let bearer = format!("Bearer {token}");
    let call = |uri: String| {
        let router = router.clone();
        let bearer = bearer.clone();
        async move {
            let req = Request::get(&uri)
                .header(header::AUTHORIZATION, bearer)
                .body(Body::empty())
                .map_err(|e| BenchError::Request(uri.clone(), e.to_string()))?;
            let t = Instant::now();
            let resp = router.oneshot(req).await.map_err(|e| BenchError::Request(uri.clone(), e.to_string()))?;
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .map_err(|e| BenchError::Request(uri.clone(), e.to_string()))?;
            let elapsed = t.elapsed();
            if status != StatusCode::OK {
                return Err(BenchError::Request(uri, format!("{status}: {}", String::from_utf8_lossy(&bytes))));
            }
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| BenchError::Request(uri.clone(), e.to_string()))?;
            let items = v["items"].as_array().map(|a| a.len()).unwrap_or(1);
            Ok::<_, BenchError>((elapsed, items))
        }
    };
    let samples = opts.samples.max(1);
    let vpath = format!("/api/v1/vaults/{}", vault.id);
    let max_seq = (opts.jobs as i64).max(1) + 1;
    let max_event = (opts.events as i64).max(1) + 64;
    let mut measures = Vec::new();

    // Warm up the connection pool and the statement cache.
    for _ in 0..5 {
        call(format!("{vpath}/replicationJobs?limit=100")).await?;
        call(format!("{vpath}/events?limit=100")).await?;
    }

    type UriFn<'a> = Box<dyn FnMut(&mut StdRng) -> String + 'a>;
    let day_ms = 24 * 3600 * 1000;
    let fmt_time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let list_cases: Vec<(&str, UriFn)> = vec![
        ("jobs: first page (limit 100)", Box::new(|_| format!("{vpath}/replicationJobs?limit=100"))),
        (
            "jobs: page at a random cursor",
            Box::new(|r| format!("{vpath}/replicationJobs?limit=100&cursor={}", r.gen_range(101..=max_seq))),
        ),
        ("jobs: status=Failed", Box::new(|_| format!("{vpath}/replicationJobs?limit=100&status=Failed"))),
        (
            "jobs: status=Failed, random cursor",
            Box::new(|r| {
                format!("{vpath}/replicationJobs?limit=100&status=Failed&cursor={}", r.gen_range(1..=max_seq))
            }),
        ),
        (
            "jobs: operation=TestFailover",
            Box::new(|_| format!("{vpath}/replicationJobs?limit=100&operation=TestFailover")),
        ),
        (
            "jobs: status=Cancelled&operation=ReProtect",
            Box::new(|_| format!("{vpath}/replicationJobs?limit=100&status=Cancelled&operation=ReProtect")),
        ),
        (
            "jobs: one-day time range (random day)",
            Box::new(|r| {
                let from = start_time + chrono::Duration::milliseconds(r.gen_range(0..89) * day_ms);
                let to = from + chrono::Duration::milliseconds(day_ms);
                format!("{vpath}/replicationJobs?limit=100&from={}&to={}", fmt_time(from), fmt_time(to))
            }),
        ),
        (
            "jobs: objectId (one protected item)",
            Box::new(|r| {
                format!(
                    "{vpath}/replicationJobs?limit=100&objectType=ProtectedItem&objectId=pi-{:06}",
                    r.gen_range(0..10_000)
                )
            }),
        ),
        ("events: first page", Box::new(|_| format!("{vpath}/events?limit=100"))),
        ("events: severity=Critical", Box::new(|_| format!("{vpath}/events?limit=100&severity=Critical"))),
        (
            "events: severity=Error, random cursor",
            Box::new(|r| format!("{vpath}/events?limit=100&severity=Error&cursor={}", r.gen_range(1..=max_event))),
        ),
        ("events: kind=HeartbeatLost", Box::new(|_| format!("{vpath}/events?limit=100&kind=HeartbeatLost"))),
    ];
    for (name, mut uri) in list_cases {
        let mut times = Vec::with_capacity(samples);
        let mut items = 0;
        for _ in 0..samples {
            let (t, n) = call(uri(&mut rng)).await?;
            times.push(t);
            items += n;
        }
        measures.push(measure(name, LIST_TARGET, times, items));
    }

    // One job by id.
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let id = job_ids.get(rng.gen_range(0..job_ids.len().max(1))).copied().unwrap_or_default();
        times.push(call(format!("{vpath}/replicationJobs/{id}")).await?.0);
    }
    measures.push(measure("jobs: get one by id", LIST_TARGET, times, samples));

    // Protected items page (store level: the protected item API is not served yet).
    let mut times = Vec::with_capacity(samples);
    let mut items = 0;
    for _ in 0..samples {
        let after = format!("pi-{:06}", rng.gen_range(0..opts.protected_items.max(1)));
        let t = Instant::now();
        let page =
            store.list_docs::<serde_json::Value>(DocKind::ProtectedItem, vault.id, None, Some(&after), 100).await?;
        times.push(t.elapsed());
        items += page.len();
    }
    measures.push(measure("protected items: page at a random id (store)", LIST_TARGET, times, items));
    let mut times = Vec::with_capacity(samples);
    let mut items = 0;
    for _ in 0..samples {
        let pair = pairs[rng.gen_range(0..pairs.len())].to_string();
        let t = Instant::now();
        let page =
            store.list_docs::<serde_json::Value>(DocKind::ProtectedItem, vault.id, Some(&pair), None, 100).await?;
        times.push(t.elapsed());
        items += page.len();
    }
    measures.push(measure("protected items: page of one cloud pair (store)", LIST_TARGET, times, items));

    // Job status update: what the job engine writes at every task checkpoint.
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let id = job_ids.get(rng.gen_range(0..job_ids.len().max(1))).copied().unwrap_or_default();
        let Some(mut j) = store.get_job(vault.id, id).await? else { continue };
        j.status = if j.status == JobStatus::Failed { JobStatus::Succeeded } else { JobStatus::Failed };
        j.progress = 100;
        if let Some(t) = j.tasks.last_mut() {
            t.status = j.status;
            t.ended_at = Some(Utc::now());
        }
        let t = Instant::now();
        store.update_job(&j).await?;
        times.push(t.elapsed());
    }
    measures.push(measure("job status update (store, synchronous=FULL)", UPDATE_TARGET, times, samples));

    let resident_bytes = resident_bytes();
    let database_bytes =
        ["vault.db", "vault.db-wal"].iter().filter_map(|f| std::fs::metadata(dir.join(f)).ok()).map(|m| m.len()).sum();
    handle.shutdown().await;
    Ok(BenchReport {
        protected_items: opts.protected_items,
        jobs: opts.jobs,
        events: opts.events,
        fill_time,
        database_bytes,
        resident_bytes,
        measures,
    })
}
