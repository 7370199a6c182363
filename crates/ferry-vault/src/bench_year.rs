//! The retention bench (SEC-3): a year of a vault's append-mostly rows, simulated day by day
//! into two SQLite stores — one pruned at the end of every simulated day with the retention
//! (as the running vault does), one never pruned — then both databases' sizes, the rows each
//! keeps and what one pruning costs.
//!
//! The rates are a busy vault's, per protected item and day: events (an hourly health change or
//! point note), jobs (an operation or drill a day) with the site commands each runs, alerts.
//! They are options, printed with the figures.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_store::{CommandRecord, NewEvent, Pruned, Retention, Store};
use ferry_types::alert::{Alert, AlertKind, AlertVault};
use ferry_types::event::Severity;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::bench::BenchError;

#[derive(Debug, Clone)]
pub struct YearOptions {
    pub items: usize,
    pub days: u32,
    pub events_per_item_day: f64,
    pub jobs_per_item_day: f64,
    pub commands_per_job: usize,
    pub alerts_per_item_day: f64,
    pub retention: Retention,
    /// Where the two databases go; a temporary directory (removed afterwards) when absent.
    pub data_dir: Option<PathBuf>,
}

impl YearOptions {
    /// 1,000 protected items for 365 days at the default retention.
    pub fn full() -> Self {
        Self {
            items: 1_000,
            days: 365,
            events_per_item_day: 24.0,
            jobs_per_item_day: 1.0,
            commands_per_job: 4,
            alerts_per_item_day: 0.1,
            retention: Retention::default(),
            data_dir: None,
        }
    }

    /// A quick run for the test suite: 40 days of 50 items, everything kept 10 days.
    pub fn small() -> Self {
        let ten = Duration::from_secs(10 * 24 * 3600);
        Self {
            items: 50,
            days: 40,
            retention: Retention { events: ten, jobs: ten, site_commands: ten, alerts: ten },
            ..Self::full()
        }
    }
}

#[derive(Debug, Clone)]
pub struct YearReport {
    pub options: YearOptions,
    /// Rows written over the simulated time.
    pub written: Pruned,
    /// Rows the pruned database holds at the end.
    pub retained: Pruned,
    pub pruned_bytes: u64,
    pub unpruned_bytes: u64,
    /// Time of one day's pruning.
    pub prune_p50: Duration,
    pub prune_max: Duration,
    pub run_time: Duration,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for YearReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let days = |d: Duration| d.as_secs() / (24 * 3600);
        writeln!(
            f,
            "Retention bench: {} protected items for {} days ({:.1} s); per item and day {} events, {} jobs × {} site commands, {} alerts",
            o.items,
            o.days,
            self.run_time.as_secs_f64(),
            o.events_per_item_day,
            o.jobs_per_item_day,
            o.commands_per_job,
            o.alerts_per_item_day
        )?;
        writeln!(
            f,
            "Retention: events {} d, jobs {} d, site commands {} d, alerts {} d, pruned at the end of every day",
            days(o.retention.events),
            days(o.retention.jobs),
            days(o.retention.site_commands),
            days(o.retention.alerts)
        )?;
        writeln!(f, "{:<16} {:>12} {:>12}", "rows", "written", "kept")?;
        for (name, w, k) in [
            ("events", self.written.events, self.retained.events),
            ("jobs", self.written.jobs, self.retained.jobs),
            ("site commands", self.written.site_commands, self.retained.site_commands),
            ("alerts", self.written.alerts, self.retained.alerts),
        ] {
            writeln!(f, "{name:<16} {w:>12} {k:>12}")?;
        }
        writeln!(
            f,
            "Database after the year: {:.1} MiB with retention, {:.1} MiB without ({:.2}×)",
            mib(self.pruned_bytes),
            mib(self.unpruned_bytes),
            self.pruned_bytes as f64 / self.unpruned_bytes.max(1) as f64
        )?;
        write!(
            f,
            "One day's pruning: p50 {:.1} ms, max {:.1} ms",
            self.prune_p50.as_secs_f64() * 1000.0,
            self.prune_max.as_secs_f64() * 1000.0
        )
    }
}

/// Database file plus its write-ahead log.
fn database_bytes(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    [path.to_path_buf(), wal].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// How many of a rate happen on one day (the fraction by chance).
fn count(rng: &mut StdRng, rate: f64) -> usize {
    let whole = rate.floor();
    whole as usize + usize::from(rng.gen::<f64>() < rate - whole)
}

pub async fn run(opts: YearOptions) -> Result<YearReport, BenchError> {
    let (dir, temporary) = match &opts.data_dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("ferry-retention-bench-{}", Uuid::new_v4())), true),
    };
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&opts, &dir).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(opts: &YearOptions, dir: &Path) -> Result<YearReport, BenchError> {
    let started = Instant::now();
    let (pruned_path, unpruned_path) = (dir.join("pruned.db"), dir.join("unpruned.db"));
    let pruned = Store::open_sqlite(&pruned_path).await?;
    let unpruned = Store::open_sqlite(&unpruned_path).await?;
    let mut rng = StdRng::seed_from_u64(0x7ea5);
    let (vault, fabric) = (Uuid::new_v4(), Uuid::new_v4());
    let alert_vault = AlertVault { id: vault, name: "bench".into() };
    let end = Utc::now();
    let start = end - chrono::Duration::days(i64::from(opts.days));
    let messages: Vec<String> =
        (0..64).map(|i| format!("Health of app-server-{i:06} changed: replicating, last point 28 s old")).collect();
    let objects: Vec<String> = (0..opts.items).map(|i| format!("pi-{i:06}")).collect();
    let mut written = Pruned::default();
    let mut prune_times = Vec::with_capacity(opts.days as usize);
    for day in 0..opts.days {
        let day_start = start + chrono::Duration::days(i64::from(day));
        let at =
            |rng: &mut StdRng| -> DateTime<Utc> { day_start + chrono::Duration::seconds(rng.gen_range(0..86_400)) };
        let mut events = Vec::new();
        let mut jobs = Vec::new();
        let mut commands = Vec::new();
        let mut alerts = Vec::new();
        for (i, object) in objects.iter().enumerate() {
            for _ in 0..count(&mut rng, opts.events_per_item_day) {
                let r: u32 = rng.gen();
                events.push(NewEvent {
                    vault,
                    time: at(&mut rng),
                    severity: crate::bench::severity(r),
                    kind: "HealthChanged",
                    message: &messages[(r as usize) % messages.len()],
                    fabric: Some(fabric),
                    object_id: Some(object),
                });
            }
            for _ in 0..count(&mut rng, opts.jobs_per_item_day) {
                let created = at(&mut rng);
                let job = crate::bench::job(vault, fabric, i, created, &mut rng);
                for c in 0..opts.commands_per_job {
                    let t = created.timestamp_millis() + 1000 * c as i64;
                    commands.push(CommandRecord {
                        id: Uuid::new_v4(),
                        vault,
                        fabric,
                        job: Some(job.id),
                        body: serde_json::json!({"kind": "StartVm", "item": object, "step": c}),
                        created_ms: t,
                        done_ms: Some(t + 5_000),
                        result: Some(serde_json::json!({"ok": true, "output": {"disks": ["vda"]}})),
                    });
                }
                jobs.push(job);
            }
            for _ in 0..count(&mut rng, opts.alerts_per_item_day) {
                let raised = at(&mut rng);
                let alert = Alert {
                    id: Uuid::new_v4(),
                    vault: alert_vault.clone(),
                    kind: AlertKind::CriticalHealth,
                    severity: Severity::Critical,
                    subject: format!("[Ferry bench] Critical health: {object}"),
                    message: "The replica host has not answered for 3 copy frequencies".into(),
                    object: None,
                    raised_at: raised,
                };
                alerts.push((alert, Some(raised.timestamp_millis() + 2_000)));
            }
        }
        written.events += events.len() as u64;
        written.jobs += jobs.len() as u64;
        written.site_commands += commands.len() as u64;
        written.alerts += alerts.len() as u64;
        for store in [&pruned, &unpruned] {
            store.append_events(&events).await?;
            store.insert_jobs(&jobs).await?;
            store.insert_command_records(&commands).await?;
            store.insert_alert_records(&alerts, "email").await?;
        }
        let t = Instant::now();
        pruned.prune((day_start + chrono::Duration::days(1)).timestamp_millis(), &opts.retention).await?;
        prune_times.push(t.elapsed());
    }
    let retained = pruned.retained_counts().await?;
    pruned.checkpoint().await?;
    unpruned.checkpoint().await?;
    prune_times.sort();
    Ok(YearReport {
        options: opts.clone(),
        written,
        retained,
        pruned_bytes: database_bytes(&pruned_path),
        unpruned_bytes: database_bytes(&unpruned_path),
        prune_p50: prune_times.get(prune_times.len() / 2).copied().unwrap_or_default(),
        prune_max: prune_times.last().copied().unwrap_or_default(),
        run_time: started.elapsed(),
    })
}
