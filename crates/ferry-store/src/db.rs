//! Opening the database and running migrations.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::error::{Error, ErrorKind, Result};

/// Handle to the vault database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: SqlitePool,
}

pub type Tx<'a> = Transaction<'a, Sqlite>;

impl Store {
    /// Open (creating if needed) the SQLite database at `path` and apply migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        let url = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::from_str(&url)
            .map_err(|e| Error {
                kind: ErrorKind::Open,
                context: format!("Bad database path {}", path.display()),
                source: Some(Box::new(e)),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await.map_err(|e| Error {
            kind: ErrorKind::Open,
            context: format!("Cannot open database {}", path.display()),
            source: Some(Box::new(e)),
        })?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| Error {
            kind: ErrorKind::Open,
            context: "Cannot migrate the database".into(),
            source: Some(Box::new(e)),
        })?;
        Ok(Store { pool })
    }

    /// Begin a transaction; commit it with `tx.commit()`.
    pub async fn begin(&self) -> Result<Tx<'static>> {
        // IMMEDIATE: take the write lock now, so a read-then-write transaction cannot fail when
        // another writer commits in between (SQLite would refuse the upgrade).
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(|e| Error::query("Begin transaction", e))
    }

    pub async fn commit(tx: Tx<'_>) -> Result<()> {
        tx.commit().await.map_err(|e| Error::query("Commit transaction", e))
    }

    /// Move the write-ahead log into the database file and truncate the log (the database's
    /// size then is the file's).
    pub async fn checkpoint(&self) -> Result<()> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query("Checkpoint the write-ahead log", e))?;
        Ok(())
    }

    /// Row counts per table, for the bench and diagnostics.
    pub async fn count(&self, table: &str) -> Result<i64> {
        let table = match table {
            "jobs" | "events" | "docs" | "vaults" | "tokens" | "registration_keys" | "site_commands"
            | "alert_outbox" => table,
            _ => return Err(Error::new(ErrorKind::Query, format!("Unknown table {table}"))),
        };
        let n: (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::query(format!("Count {table}"), e))?;
        Ok(n.0)
    }
}

/// Vault rows: identity plus the secret that signs its registration keys.
impl Store {
    pub async fn insert_vault(
        &self,
        id: uuid::Uuid,
        name: &str,
        body: &serde_json::Value,
        signing_secret: &str,
        created_ms: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO vaults (id, name, body, signing_secret, created_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(id.to_string())
            .bind(name)
            .bind(body.to_string())
            .bind(signing_secret)
            .bind(created_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query(format!("Create vault {name}"), e))?;
        Ok(())
    }

    pub async fn update_vault_body(&self, id: uuid::Uuid, body: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE vaults SET body = $1 WHERE id = $2")
            .bind(body.to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query("Update vault", e))?;
        Ok(())
    }

    /// All vaults: (body, signing secret).
    pub async fn list_vaults(&self) -> Result<Vec<(serde_json::Value, String)>> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT body, signing_secret FROM vaults ORDER BY created_ms")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::query("List vaults", e))?;
        rows.into_iter()
            .map(|(b, s)| Ok((serde_json::from_str(&b).map_err(|e| Error::corrupt("Decode vault", e))?, s)))
            .collect()
    }

    pub async fn delete_vault(&self, id: uuid::Uuid) -> Result<bool> {
        let mut tx = self.begin().await?;
        for table in ["docs", "jobs", "events", "registration_keys", "site_commands", "alert_outbox"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE vault = $1"))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::query(format!("Delete vault rows from {table}"), e))?;
        }
        let res = sqlx::query("DELETE FROM vaults WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::query("Delete vault", e))?;
        Store::commit(tx).await?;
        Ok(res.rows_affected() > 0)
    }
}
