//! The outbox of commands for sites. A site fetches pending commands over its outbound
//! connection, runs them and posts the result; a job waits for that result.

use uuid::Uuid;

use crate::db::Store;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct SiteCommandRow {
    pub id: Uuid,
    pub fabric: Uuid,
    pub job: Option<Uuid>,
    pub body: serde_json::Value,
    pub result: Option<serde_json::Value>,
    /// When the command was queued (ms since the epoch).
    pub created_ms: i64,
}

type Row = (String, String, Option<String>, String, Option<String>, i64);

fn decode(r: Row) -> Result<SiteCommandRow> {
    Ok(SiteCommandRow {
        id: Uuid::parse_str(&r.0).unwrap_or_default(),
        fabric: Uuid::parse_str(&r.1).unwrap_or_default(),
        job: r.2.and_then(|j| Uuid::parse_str(&j).ok()),
        body: serde_json::from_str(&r.3).map_err(|e| Error::corrupt("Decode site command", e))?,
        result: r
            .4
            .map(|x| serde_json::from_str(&x))
            .transpose()
            .map_err(|e| Error::corrupt("Decode site command result", e))?,
        created_ms: r.5,
    })
}

/// A command with its whole history, as imports and the retention bench write it.
#[derive(Debug, Clone)]
pub struct CommandRecord {
    pub id: Uuid,
    pub vault: Uuid,
    pub fabric: Uuid,
    pub job: Option<Uuid>,
    pub body: serde_json::Value,
    pub created_ms: i64,
    pub done_ms: Option<i64>,
    pub result: Option<serde_json::Value>,
}

impl Store {
    /// Write command records as they are, in one transaction.
    pub async fn insert_command_records(&self, rows: &[CommandRecord]) -> Result<()> {
        let mut tx = self.begin().await?;
        for chunk in rows.chunks(500) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO site_commands (id, vault, fabric, job, body, created_ms, done_ms, result) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.id.to_string())
                    .push_bind(r.vault.to_string())
                    .push_bind(r.fabric.to_string())
                    .push_bind(r.job.map(|j| j.to_string()))
                    .push_bind(r.body.to_string())
                    .push_bind(r.created_ms)
                    .push_bind(r.done_ms)
                    .push_bind(r.result.as_ref().map(|x| x.to_string()));
            });
            qb.build().execute(&mut *tx).await.map_err(|e| Error::query("Insert site command records", e))?;
        }
        Store::commit(tx).await
    }

    pub async fn enqueue_command(
        &self,
        id: Uuid,
        vault: Uuid,
        fabric: Uuid,
        job: Option<Uuid>,
        body: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query("INSERT INTO site_commands (id, vault, fabric, job, body, created_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING")
            .bind(id.to_string())
            .bind(vault.to_string())
            .bind(fabric.to_string())
            .bind(job.map(|j| j.to_string()))
            .bind(body.to_string())
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query("Enqueue site command", e))?;
        Ok(())
    }

    /// Commands not yet answered for a site, oldest first.
    pub async fn pending_commands(&self, fabric: Uuid, limit: i64) -> Result<Vec<SiteCommandRow>> {
        let rows: Vec<Row> = sqlx::query_as("SELECT id, fabric, job, body, result, created_ms FROM site_commands WHERE fabric = $1 AND done_ms IS NULL ORDER BY seq LIMIT $2")
            .bind(fabric.to_string())
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::query("List site commands", e))?;
        rows.into_iter().map(decode).collect()
    }

    /// Record a site's answer; the first answer wins. Returns whether this call recorded it.
    pub async fn complete_command(&self, fabric: Uuid, id: Uuid, result: &serde_json::Value) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE site_commands SET done_ms = $1, result = $2 WHERE id = $3 AND fabric = $4 AND done_ms IS NULL",
        )
        .bind(chrono::Utc::now().timestamp_millis())
        .bind(result.to_string())
        .bind(id.to_string())
        .bind(fabric.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| Error::query("Complete site command", e))?;
        Ok(res.rows_affected() == 1)
    }

    /// Withdraw a command nobody answered yet (its job gave up on it, or it is too old): it
    /// is recorded as answered with `result` and no site fetches it any more. Returns whether it
    /// was still pending.
    pub async fn withdraw_command(&self, id: Uuid, result: &serde_json::Value) -> Result<bool> {
        let res = sqlx::query("UPDATE site_commands SET done_ms = $1, result = $2 WHERE id = $3 AND done_ms IS NULL")
            .bind(chrono::Utc::now().timestamp_millis())
            .bind(result.to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query("Withdraw site command", e))?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn get_command(&self, id: Uuid) -> Result<Option<SiteCommandRow>> {
        let row: Option<Row> =
            sqlx::query_as("SELECT id, fabric, job, body, result, created_ms FROM site_commands WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::query("Read site command", e))?;
        row.map(decode).transpose()
    }
}
