//! Events: the vault's append-only timeline.

use chrono::{DateTime, Utc};
use ferry_types::event::{Event, Severity};
use uuid::Uuid;

use crate::db::{Store, Tx};
use crate::error::{Error, Result};

/// What is recorded; the id is assigned by the store.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub vault: Uuid,
    pub time: DateTime<Utc>,
    pub severity: Severity,
    pub kind: &'a str,
    pub message: &'a str,
    pub fabric: Option<Uuid>,
    pub object_id: Option<&'a str>,
}

async fn append_in<'c, E: sqlx::Executor<'c, Database = sqlx::Sqlite>>(ex: E, e: NewEvent<'_>) -> Result<i64> {
    let ev = Event {
        id: 0,
        vault_id: e.vault,
        time: e.time,
        severity: e.severity,
        kind: e.kind.to_string(),
        message: e.message.to_string(),
        fabric: e.fabric,
        object_id: e.object_id.map(str::to_string),
    };
    let body = serde_json::to_string(&ev).map_err(|err| Error::corrupt("Encode event", err))?;
    let res = sqlx::query("INSERT INTO events (vault, time_ms, severity, kind, fabric, object_id, body) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(e.vault.to_string())
        .bind(e.time.timestamp_millis())
        .bind(e.severity.as_str())
        .bind(e.kind)
        .bind(e.fabric.map(|f| f.to_string()))
        .bind(e.object_id)
        .bind(body)
        .execute(ex)
        .await
        .map_err(|err| Error::query("Append event", err))?;
    Ok(res.last_insert_rowid())
}

impl Store {
    pub async fn append_event(&self, e: NewEvent<'_>) -> Result<i64> {
        append_in(&self.pool, e).await
    }

    /// Append an event inside a transaction (with what it goes with: an alert, a state change).
    pub async fn append_event_tx(tx: &mut Tx<'_>, e: NewEvent<'_>) -> Result<i64> {
        append_in(&mut **tx, e).await
    }

    /// Append many events in one transaction (imports, the scale bench).
    pub async fn append_events(&self, events: &[NewEvent<'_>]) -> Result<()> {
        let mut tx = self.begin().await?;
        for chunk in events.chunks(500) {
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                let ev = Event {
                    id: 0,
                    vault_id: e.vault,
                    time: e.time,
                    severity: e.severity,
                    kind: e.kind.to_string(),
                    message: e.message.to_string(),
                    fabric: e.fabric,
                    object_id: e.object_id.map(str::to_string),
                };
                let body = serde_json::to_string(&ev).map_err(|err| Error::corrupt("Encode event", err))?;
                rows.push((e, body));
            }
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO events (vault, time_ms, severity, kind, fabric, object_id, body) ",
            );
            qb.push_values(rows, |mut b, (e, body)| {
                b.push_bind(e.vault.to_string())
                    .push_bind(e.time.timestamp_millis())
                    .push_bind(e.severity.as_str())
                    .push_bind(e.kind.to_string())
                    .push_bind(e.fabric.map(|f| f.to_string()))
                    .push_bind(e.object_id.map(str::to_string))
                    .push_bind(body);
            });
            qb.build().execute(&mut *tx).await.map_err(|e| Error::query("Append events", e))?;
        }
        Store::commit(tx).await
    }

    /// Events newest first, optionally filtered; `before` is an event id cursor.
    pub async fn list_events(
        &self,
        vault: Uuid,
        severity: Option<Severity>,
        fabric: Option<Uuid>,
        kind: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<Event>, Option<i64>)> {
        // Only the filters given are in the SQL, so SQLite can use the (vault, severity, id) and
        // (vault, fabric, id) indexes instead of scanning the vault's whole timeline.
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT id, body FROM events WHERE vault = ");
        qb.push_bind(vault.to_string());
        if let Some(b) = before {
            qb.push(" AND id < ").push_bind(b);
        }
        if let Some(s) = severity {
            qb.push(" AND severity = ").push_bind(s.as_str());
        }
        if let Some(x) = fabric {
            qb.push(" AND fabric = ").push_bind(x.to_string());
        }
        if let Some(k) = kind {
            qb.push(" AND kind = ").push_bind(k.to_string());
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
        let rows: Vec<(i64, String)> =
            qb.build_query_as().fetch_all(&self.pool).await.map_err(|e| Error::query("List events", e))?;
        let more = rows.len() as i64 > limit;
        let mut out = Vec::new();
        let mut last = None;
        for (id, body) in rows.into_iter().take(limit.max(0) as usize) {
            let mut ev: Event = serde_json::from_str(&body).map_err(|e| Error::corrupt("Decode event", e))?;
            ev.id = id;
            out.push(ev);
            last = Some(id);
        }
        Ok((out, if more { last } else { None }))
    }
}
