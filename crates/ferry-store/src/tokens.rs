//! API tokens (SEC-2) and site credentials, stored as SHA-256 hashes of their secrets.

use uuid::Uuid;

use crate::db::Store;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: Uuid,
    pub name: String,
    /// `Reader`, `Operator`, `Contributor`, or `Site` for a site manager's credential.
    pub role: String,
    /// For a site credential: the fabric it belongs to.
    pub fabric: Option<Uuid>,
    pub created_ms: i64,
    /// When the token stops working (ms since the epoch); `None` = never.
    pub expires_ms: Option<i64>,
}

type Row = (String, String, String, Option<String>, i64, Option<i64>);

fn decode(r: Row) -> TokenRow {
    TokenRow {
        id: Uuid::parse_str(&r.0).unwrap_or_default(),
        name: r.1,
        role: r.2,
        fabric: r.3.and_then(|f| Uuid::parse_str(&f).ok()),
        created_ms: r.4,
        expires_ms: r.5,
    }
}

async fn insert_in<'c, E: sqlx::Executor<'c, Database = sqlx::Sqlite>>(
    ex: E,
    row: &TokenRow,
    secret_hash: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO tokens (id, name, role, secret_hash, fabric, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
        .bind(row.id.to_string())
        .bind(&row.name)
        .bind(&row.role)
        .bind(secret_hash)
        .bind(row.fabric.map(|f| f.to_string()))
        .bind(row.created_ms)
        .bind(row.expires_ms)
        .execute(ex)
        .await
        .map_err(|e| Error::query("Insert token", e))?;
    Ok(())
}

impl Store {
    pub async fn insert_token_tx(tx: &mut crate::db::Tx<'_>, row: &TokenRow, secret_hash: &str) -> Result<()> {
        insert_in(&mut **tx, row, secret_hash).await
    }

    pub async fn insert_token(&self, row: &TokenRow, secret_hash: &str) -> Result<()> {
        insert_in(&self.pool, row, secret_hash).await
    }

    /// The live token whose secret hashes to `secret_hash`.
    pub async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenRow>> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, name, role, fabric, created_ms, expires_ms FROM tokens WHERE secret_hash = $1 AND revoked_ms IS NULL",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::query("Look up token", e))?;
        Ok(row.map(decode))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        let rows: Vec<Row> = sqlx::query_as("SELECT id, name, role, fabric, created_ms, expires_ms FROM tokens WHERE revoked_ms IS NULL AND role != 'Site' ORDER BY created_ms")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::query("List tokens", e))?;
        Ok(rows.into_iter().map(decode).collect())
    }

    pub async fn revoke_token(&self, id: Uuid, now_ms: i64) -> Result<bool> {
        let res = sqlx::query("UPDATE tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query("Revoke token", e))?;
        Ok(res.rows_affected() > 0)
    }
}
