//! Registration keys (FAB-2): issued, used once, revocable. Only the secret's hash is stored.

use uuid::Uuid;

use crate::db::{Store, Tx};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: Uuid,
    pub vault: Uuid,
    pub issued_ms: i64,
    pub used_ms: Option<i64>,
    pub used_by_fabric: Option<Uuid>,
    pub revoked_ms: Option<i64>,
    /// The site the key was issued for (it may add an instance of that site only).
    pub for_fabric: Option<Uuid>,
}

/// Outcome of trying to consume a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    Consumed,
    Unknown,
    SecretMismatch,
    Revoked,
    AlreadyUsed,
}

type Row = (String, String, i64, Option<i64>, Option<String>, Option<i64>, Option<String>);

fn decode(r: Row) -> KeyRow {
    KeyRow {
        id: Uuid::parse_str(&r.0).unwrap_or_default(),
        vault: Uuid::parse_str(&r.1).unwrap_or_default(),
        issued_ms: r.2,
        used_ms: r.3,
        used_by_fabric: r.4.and_then(|f| Uuid::parse_str(&f).ok()),
        revoked_ms: r.5,
        for_fabric: r.6.and_then(|f| Uuid::parse_str(&f).ok()),
    }
}

impl Store {
    pub async fn insert_key(
        &self,
        id: Uuid,
        vault: Uuid,
        secret_hash: &str,
        issued_ms: i64,
        for_fabric: Option<Uuid>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO registration_keys (id, vault, secret_hash, issued_ms, for_fabric) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(vault.to_string())
        .bind(secret_hash)
        .bind(issued_ms)
        .bind(for_fabric.map(|f| f.to_string()))
        .execute(&self.pool)
        .await
        .map_err(|e| Error::query("Insert registration key", e))?;
        Ok(())
    }

    pub async fn list_keys(&self, vault: Uuid) -> Result<Vec<KeyRow>> {
        let rows: Vec<Row> = sqlx::query_as("SELECT id, vault, issued_ms, used_ms, used_by_fabric, revoked_ms, for_fabric FROM registration_keys WHERE vault = $1 ORDER BY issued_ms")
            .bind(vault.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::query("List registration keys", e))?;
        Ok(rows.into_iter().map(decode).collect())
    }

    pub async fn revoke_key(&self, vault: Uuid, id: Uuid, now_ms: i64) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE registration_keys SET revoked_ms = $1 WHERE vault = $2 AND id = $3 AND revoked_ms IS NULL",
        )
        .bind(now_ms)
        .bind(vault.to_string())
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| Error::query("Revoke registration key", e))?;
        Ok(res.rows_affected() > 0)
    }

    /// The site a key was issued for, if any (`None` also for an unknown key).
    pub async fn key_site(&self, vault: Uuid, id: Uuid) -> Result<Option<Uuid>> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT for_fabric FROM registration_keys WHERE vault = $1 AND id = $2")
                .bind(vault.to_string())
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::query("Read registration key", e))?;
        Ok(row.and_then(|r| r.0).and_then(|f| Uuid::parse_str(&f).ok()))
    }

    /// Consume a key inside the registration transaction: at most one registration wins.
    pub async fn consume_key_tx(
        tx: &mut Tx<'_>,
        vault: Uuid,
        id: Uuid,
        secret_hash: &str,
        fabric: Uuid,
        now_ms: i64,
    ) -> Result<KeyUse> {
        let row: Option<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT secret_hash, used_ms, revoked_ms FROM registration_keys WHERE vault = $1 AND id = $2",
        )
        .bind(vault.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| Error::query("Read registration key", e))?;
        let Some((hash, used, revoked)) = row else { return Ok(KeyUse::Unknown) };
        if hash != secret_hash {
            return Ok(KeyUse::SecretMismatch);
        }
        if revoked.is_some() {
            return Ok(KeyUse::Revoked);
        }
        if used.is_some() {
            return Ok(KeyUse::AlreadyUsed);
        }
        let res = sqlx::query(
            "UPDATE registration_keys SET used_ms = $1, used_by_fabric = $2 WHERE id = $3 AND used_ms IS NULL",
        )
        .bind(now_ms)
        .bind(fabric.to_string())
        .bind(id.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::query("Consume registration key", e))?;
        Ok(if res.rows_affected() == 1 { KeyUse::Consumed } else { KeyUse::AlreadyUsed })
    }
}
