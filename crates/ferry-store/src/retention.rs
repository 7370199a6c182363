//! Retention (SEC-3): the vault's append-mostly tables are pruned by age, so the database of a
//! vault that runs for years stays the size of its retention window.
//!
//! What goes, and what never does:
//! - events older than `events`;
//! - jobs created more than `jobs` ago that have ended (an open job is kept whatever its age);
//! - site commands queued more than `site_commands` ago whose job has ended or that have none
//!   (a command of an open job is kept: the job may read its answer again after a restart, and
//!   a command id that is gone would be queued and run a second time);
//! - alert outbox rows raised more than `alerts` ago that were delivered or dropped (a row still
//!   being retried is kept until the delivery gives up on it).
//!
//! Rows go in batches of [`BATCH`], each its own short transaction, so the job engine and the
//! API never wait long for the write lock. SQLite reuses the freed pages, so the file stops
//! growing once the window is full (it does not shrink; `VACUUM` does that offline).

use std::time::Duration;

use crate::db::Store;
use crate::error::{Error, Result};

/// Rows deleted per statement.
pub const BATCH: i64 = 5_000;

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub events: Duration,
    pub jobs: Duration,
    pub site_commands: Duration,
    pub alerts: Duration,
}

const DAY: u64 = 24 * 3600;

impl Default for Retention {
    /// Events and jobs 90 days (a quarter of history for audits and trends), answered site
    /// commands and finished alerts 30 days (they matter while their job or alert is fresh).
    fn default() -> Self {
        Self {
            events: Duration::from_secs(90 * DAY),
            jobs: Duration::from_secs(90 * DAY),
            site_commands: Duration::from_secs(30 * DAY),
            alerts: Duration::from_secs(30 * DAY),
        }
    }
}

impl Retention {
    /// Shortest and longest retention a setting may have, in days.
    pub const MIN_DAYS: u64 = 1;
    pub const MAX_DAYS: u64 = 3650;

    /// A retention of `days` days, or an error naming the setting.
    pub fn days(setting: &str, days: u64) -> Result<Duration> {
        if !(Self::MIN_DAYS..=Self::MAX_DAYS).contains(&days) {
            return Err(Error::invalid(format!(
                "Retention {setting} must be between {} and {} days, not {days}",
                Self::MIN_DAYS,
                Self::MAX_DAYS
            )));
        }
        Ok(Duration::from_secs(days * DAY))
    }
}

/// Rows one pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub jobs: u64,
    pub site_commands: u64,
    pub alerts: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.events + self.jobs + self.site_commands + self.alerts
    }
}

const OPEN_JOBS: &str = "SELECT id FROM jobs WHERE status IN ('NotStarted', 'InProgress', 'WaitingForInput')";

fn cutoff(now_ms: i64, keep: Duration) -> i64 {
    now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

impl Store {
    /// Remove what `retention` no longer keeps at `now_ms` (milliseconds since the epoch).
    pub async fn prune(&self, now_ms: i64, retention: &Retention) -> Result<Pruned> {
        // Commands before jobs: a command is kept while its job is open, and goes at the latest
        // with it.
        let site_commands = self
            .delete_batches(
                "Prune site commands",
                &format!(
                    "DELETE FROM site_commands WHERE seq IN (SELECT seq FROM site_commands WHERE created_ms < $1 \
                     AND (job IS NULL OR job NOT IN ({OPEN_JOBS})) LIMIT $2)"
                ),
                cutoff(now_ms, retention.site_commands),
            )
            .await?;
        let jobs = self
            .delete_batches(
                "Prune jobs",
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE created_ms < $1 \
                 AND status NOT IN ('NotStarted', 'InProgress', 'WaitingForInput') LIMIT $2)",
                cutoff(now_ms, retention.jobs),
            )
            .await?;
        // Commands of the jobs just pruned, whatever their own age (they cannot be read any more).
        let orphans = self
            .delete_batches(
                "Prune site commands of pruned jobs",
                "DELETE FROM site_commands WHERE seq IN (SELECT seq FROM site_commands WHERE created_ms < $1 \
                 AND job IS NOT NULL AND job NOT IN (SELECT id FROM jobs) LIMIT $2)",
                cutoff(now_ms, retention.jobs),
            )
            .await?;
        let events = self
            .delete_batches(
                "Prune events",
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time_ms < $1 LIMIT $2)",
                cutoff(now_ms, retention.events),
            )
            .await?;
        let alerts = self
            .delete_batches(
                "Prune alerts",
                "DELETE FROM alert_outbox WHERE seq IN (SELECT seq FROM alert_outbox WHERE raised_ms < $1 \
                 AND (delivered_ms IS NOT NULL OR dropped_ms IS NOT NULL) LIMIT $2)",
                cutoff(now_ms, retention.alerts),
            )
            .await?;
        Ok(Pruned { events, jobs, site_commands: site_commands + orphans, alerts })
    }

    async fn delete_batches(&self, what: &'static str, sql: &str, cutoff_ms: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let res = sqlx::query(sql)
                .bind(cutoff_ms)
                .bind(BATCH)
                .execute(&self.pool)
                .await
                .map_err(|e| Error::query(what, e))?;
            total += res.rows_affected();
            if res.rows_affected() < BATCH as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Rows per pruned table: (events, jobs, site commands, alert rows), over every vault.
    pub async fn retained_counts(&self) -> Result<Pruned> {
        let (e, j, c, a): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM jobs), \
             (SELECT COUNT(*) FROM site_commands), (SELECT COUNT(*) FROM alert_outbox)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::query("Count retained rows", e))?;
        let n = |x: i64| u64::try_from(x).unwrap_or(0);
        Ok(Pruned { events: n(e), jobs: n(j), site_commands: n(c), alerts: n(a) })
    }
}
