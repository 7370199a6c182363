//! The alert outbox (JOB-4): one row per alert and channel, written in the transaction of the
//! event that raised the alert, then delivered by the vault with retries. A delivered or dropped
//! row stays as the record of what was sent.

use ferry_types::alert::{Alert, AlertDelivery, DeliveryState};
use uuid::Uuid;

use crate::db::{Store, Tx};
use crate::error::{Error, Result};
use crate::from_ms;

/// An outbox row.
#[derive(Debug, Clone)]
pub struct AlertRow {
    pub seq: i64,
    pub vault: Uuid,
    /// `email` or `webhook:<url>`.
    pub channel: String,
    pub alert: Alert,
    pub raised_ms: i64,
    pub attempts: u32,
    pub next_ms: i64,
    pub last_error: Option<String>,
    pub delivered_ms: Option<i64>,
    pub dropped_ms: Option<i64>,
}

impl AlertRow {
    /// The row as the API shows it.
    pub fn delivery(&self) -> AlertDelivery {
        let state = match (self.delivered_ms, self.dropped_ms) {
            (Some(_), _) => DeliveryState::Delivered,
            (None, Some(_)) => DeliveryState::Dropped,
            (None, None) => DeliveryState::Pending,
        };
        AlertDelivery {
            alert: self.alert.clone(),
            channel: self.channel.clone(),
            state,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            next_attempt_at: (state == DeliveryState::Pending).then(|| from_ms(self.next_ms)),
            delivered_at: self.delivered_ms.map(from_ms),
        }
    }
}

type Row = (i64, String, String, String, i64, i64, i64, Option<String>, Option<i64>, Option<i64>);

const COLUMNS: &str =
    "seq, vault, channel, body, raised_ms, attempts, next_ms, last_error, delivered_ms, dropped_ms FROM alert_outbox";

fn decode(r: Row) -> Result<AlertRow> {
    Ok(AlertRow {
        seq: r.0,
        vault: Uuid::parse_str(&r.1).unwrap_or_default(),
        channel: r.2,
        alert: serde_json::from_str(&r.3).map_err(|e| Error::corrupt("Decode alert", e))?,
        raised_ms: r.4,
        attempts: u32::try_from(r.5).unwrap_or(u32::MAX),
        next_ms: r.6,
        last_error: r.7,
        delivered_ms: r.8,
        dropped_ms: r.9,
    })
}

impl Store {
    /// Queue `alert` for `channel` inside the transaction of the event that raised it. Queuing
    /// the same alert for the same channel twice is a no-op.
    pub async fn enqueue_alert_tx(tx: &mut Tx<'_>, alert: &Alert, channel: &str) -> Result<()> {
        let body = serde_json::to_string(alert).map_err(|e| Error::corrupt("Encode alert", e))?;
        let raised = alert.raised_at.timestamp_millis();
        sqlx::query("INSERT INTO alert_outbox (alert_id, vault, channel, body, raised_ms, next_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (alert_id, channel) DO NOTHING")
            .bind(alert.id.to_string())
            .bind(alert.vault.id.to_string())
            .bind(channel)
            .bind(body)
            .bind(raised)
            .bind(raised)
            .execute(&mut **tx)
            .await
            .map_err(|e| Error::query("Queue alert", e))?;
        Ok(())
    }

    /// Write delivered (`Some(time)`) or pending (`None`) rows of `alerts` for `channel` in one
    /// transaction, as imports and the retention bench do.
    pub async fn insert_alert_records(&self, alerts: &[(Alert, Option<i64>)], channel: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        for (alert, delivered_ms) in alerts {
            Store::enqueue_alert_tx(&mut tx, alert, channel).await?;
            if let Some(t) = delivered_ms {
                sqlx::query(
                    "UPDATE alert_outbox SET delivered_ms = $1, attempts = 1 WHERE alert_id = $2 AND channel = $3",
                )
                .bind(t)
                .bind(alert.id.to_string())
                .bind(channel)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::query("Record alert delivery", e))?;
            }
        }
        Store::commit(tx).await
    }

    /// Rows not yet delivered or dropped whose next attempt is due at `now_ms`, oldest first.
    pub async fn due_alerts(&self, now_ms: i64, limit: i64) -> Result<Vec<AlertRow>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} WHERE delivered_ms IS NULL AND dropped_ms IS NULL AND next_ms <= $1 ORDER BY next_ms, seq LIMIT $2"
        ))
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::query("List due alerts", e))?;
        rows.into_iter().map(decode).collect()
    }

    /// When the next pending row is due, if any.
    /// Outbox rows by state: (pending, delivered, dropped), over every vault.
    pub async fn alert_outbox_counts(&self) -> Result<(i64, i64, i64)> {
        sqlx::query_as(
            "SELECT COALESCE(SUM(delivered_ms IS NULL AND dropped_ms IS NULL), 0), \
             COALESCE(SUM(delivered_ms IS NOT NULL), 0), \
             COALESCE(SUM(delivered_ms IS NULL AND dropped_ms IS NOT NULL), 0) FROM alert_outbox",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::query("Count alerts", e))
    }

    pub async fn next_alert_due(&self) -> Result<Option<i64>> {
        let row: (Option<i64>,) =
            sqlx::query_as("SELECT MIN(next_ms) FROM alert_outbox WHERE delivered_ms IS NULL AND dropped_ms IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| Error::query("Next alert due", e))?;
        Ok(row.0)
    }

    pub async fn alert_delivered(&self, seq: i64, attempts: u32, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE alert_outbox SET delivered_ms = $1, attempts = $2, last_error = NULL WHERE seq = $3")
            .bind(now_ms)
            .bind(i64::from(attempts))
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query("Mark alert delivered", e))?;
        Ok(())
    }

    /// A failed attempt: try again at `next_ms`.
    pub async fn alert_retry(&self, seq: i64, attempts: u32, next_ms: i64, error: &str) -> Result<()> {
        sqlx::query("UPDATE alert_outbox SET attempts = $1, next_ms = $2, last_error = $3 WHERE seq = $4")
            .bind(i64::from(attempts))
            .bind(next_ms)
            .bind(error)
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query("Reschedule alert", e))?;
        Ok(())
    }

    /// Give up on a row.
    pub async fn alert_dropped(&self, seq: i64, attempts: u32, now_ms: i64, error: &str) -> Result<()> {
        sqlx::query("UPDATE alert_outbox SET dropped_ms = $1, attempts = $2, last_error = $3 WHERE seq = $4")
            .bind(now_ms)
            .bind(i64::from(attempts))
            .bind(error)
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query("Drop alert", e))?;
        Ok(())
    }

    /// A vault's outbox rows, newest first; `before` is a row cursor.
    pub async fn list_alerts(
        &self,
        vault: Uuid,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<AlertRow>, Option<i64>)> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} WHERE vault = $1 AND ($2 IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3"
        ))
        .bind(vault.to_string())
        .bind(before)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::query("List alerts", e))?;
        let more = rows.len() as i64 > limit;
        let out: Vec<AlertRow> = rows.into_iter().take(limit.max(0) as usize).map(decode).collect::<Result<_>>()?;
        let next = if more { out.last().map(|r| r.seq) } else { None };
        Ok((out, next))
    }
}
