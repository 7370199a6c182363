//! Configuration documents: one JSON body per resource, versioned.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{Executor, Sqlite};
use uuid::Uuid;

use crate::db::{Store, Tx};
use crate::error::{Error, ErrorKind, Result};

/// Kinds of documents a vault holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Fabric,
    Policy,
    ContainerMapping,
    NetworkMapping,
    StorageMapping,
    ProtectedItem,
    RecoveryPlan,
    /// A vault's alert settings (JOB-4), one document with id [`ALERT_SETTINGS_ID`].
    AlertSettings,
    /// A capacity plan and the churn measured for it (CAP-1).
    CapacityPlan,
    /// Where a replica kept when protection was disabled lies (REP-7), by the VM's origin.
    KeptReplica,
    /// The certificate a host holds now and its earlier ones revoked (SEC-1), by certificate
    /// name, under the host's site.
    HostCertificate,
}

impl DocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Fabric => "fabric",
            DocKind::Policy => "policy",
            DocKind::ContainerMapping => "containerMapping",
            DocKind::NetworkMapping => "networkMapping",
            DocKind::StorageMapping => "storageMapping",
            DocKind::ProtectedItem => "protectedItem",
            DocKind::RecoveryPlan => "recoveryPlan",
            DocKind::AlertSettings => "alertSettings",
            DocKind::CapacityPlan => "capacityPlan",
            DocKind::KeptReplica => "keptReplica",
            DocKind::HostCertificate => "hostCertificate",
        }
    }
}

/// The id of a vault's one alert settings document.
pub const ALERT_SETTINGS_ID: &str = "alertSettings";

/// A stored document with its version.
#[derive(Debug, Clone)]
pub struct Doc<T> {
    pub id: String,
    pub version: i64,
    pub body: T,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn get_in<'c, E, T>(ex: E, kind: DocKind, vault: Uuid, id: &str) -> Result<Option<Doc<T>>>
where
    E: Executor<'c, Database = Sqlite>,
    T: DeserializeOwned,
{
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT version, body FROM docs WHERE kind = $1 AND vault = $2 AND id = $3")
            .bind(kind.as_str())
            .bind(vault.to_string())
            .bind(id)
            .fetch_optional(ex)
            .await
            .map_err(|e| Error::query(format!("Read {} {id}", kind.as_str()), e))?;
    row.map(|(version, body)| {
        let body =
            serde_json::from_str(&body).map_err(|e| Error::corrupt(format!("Decode {} {id}", kind.as_str()), e))?;
        Ok(Doc { id: id.to_string(), version, body })
    })
    .transpose()
}

#[allow(clippy::too_many_arguments)]
/// Insert (expected_version = None and no row) or update (expected_version = Some(current)).
/// Returns the new version.
async fn put_in<'c, E, T>(
    ex: E,
    kind: DocKind,
    vault: Uuid,
    id: &str,
    parent: Option<&str>,
    unique_name: Option<&str>,
    body: &T,
    expected_version: Option<i64>,
) -> Result<i64>
where
    E: Executor<'c, Database = Sqlite>,
    T: Serialize,
{
    let json = serde_json::to_string(body).map_err(|e| Error::corrupt(format!("Encode {} {id}", kind.as_str()), e))?;
    let what = format!("Write {} {id}", kind.as_str());
    match expected_version {
        None => {
            sqlx::query("INSERT INTO docs (kind, vault, id, parent, unique_name, version, body, updated_ms) VALUES ($1, $2, $3, $4, $5, 1, $6, $7)")
                .bind(kind.as_str())
                .bind(vault.to_string())
                .bind(id)
                .bind(parent)
                .bind(unique_name)
                .bind(json)
                .bind(now_ms())
                .execute(ex)
                .await
                .map_err(|e| Error::query(what, e))?;
            Ok(1)
        }
        Some(v) => {
            let res = sqlx::query("UPDATE docs SET parent = $1, unique_name = $2, version = version + 1, body = $3, updated_ms = $4 WHERE kind = $5 AND vault = $6 AND id = $7 AND version = $8")
                .bind(parent)
                .bind(unique_name)
                .bind(json)
                .bind(now_ms())
                .bind(kind.as_str())
                .bind(vault.to_string())
                .bind(id)
                .bind(v)
                .execute(ex)
                .await
                .map_err(|e| Error::query(what, e))?;
            if res.rows_affected() == 0 {
                return Err(Error::new(
                    ErrorKind::VersionMismatch,
                    format!("{} {id} changed since version {v}", kind.as_str()),
                ));
            }
            Ok(v + 1)
        }
    }
}

impl Store {
    pub async fn get_doc<T: DeserializeOwned>(&self, kind: DocKind, vault: Uuid, id: &str) -> Result<Option<Doc<T>>> {
        get_in(&self.pool, kind, vault, id).await
    }

    pub async fn get_doc_tx<T: DeserializeOwned>(
        tx: &mut Tx<'_>,
        kind: DocKind,
        vault: Uuid,
        id: &str,
    ) -> Result<Option<Doc<T>>> {
        get_in(&mut **tx, kind, vault, id).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn put_doc<T: Serialize>(
        &self,
        kind: DocKind,
        vault: Uuid,
        id: &str,
        parent: Option<&str>,
        unique_name: Option<&str>,
        body: &T,
        expected_version: Option<i64>,
    ) -> Result<i64> {
        put_in(&self.pool, kind, vault, id, parent, unique_name, body, expected_version).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn put_doc_tx<T: Serialize>(
        tx: &mut Tx<'_>,
        kind: DocKind,
        vault: Uuid,
        id: &str,
        parent: Option<&str>,
        unique_name: Option<&str>,
        body: &T,
        expected_version: Option<i64>,
    ) -> Result<i64> {
        put_in(&mut **tx, kind, vault, id, parent, unique_name, body, expected_version).await
    }

    /// List documents of a kind (optionally under a parent) ordered by id, after a cursor id.
    pub async fn list_docs<T: DeserializeOwned>(
        &self,
        kind: DocKind,
        vault: Uuid,
        parent: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Doc<T>>> {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT id, version, body FROM docs WHERE kind = $1 AND vault = $2 AND ($3 IS NULL OR parent = $3) AND ($4 IS NULL OR id > $4) ORDER BY id LIMIT $5",
        )
        .bind(kind.as_str())
        .bind(vault.to_string())
        .bind(parent)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::query(format!("List {}", kind.as_str()), e))?;
        rows.into_iter()
            .map(|(id, version, body)| {
                let body = serde_json::from_str(&body)
                    .map_err(|e| Error::corrupt(format!("Decode {} {id}", kind.as_str()), e))?;
                Ok(Doc { id, version, body })
            })
            .collect()
    }

    /// Every document of a kind in a vault (for rule checks over small sets like mappings).
    pub async fn all_docs<T: DeserializeOwned>(&self, kind: DocKind, vault: Uuid) -> Result<Vec<Doc<T>>> {
        self.list_docs(kind, vault, None, None, i64::MAX).await
    }

    pub async fn delete_doc(&self, kind: DocKind, vault: Uuid, id: &str) -> Result<bool> {
        delete_in(&self.pool, kind, vault, id).await
    }

    pub async fn delete_doc_tx(tx: &mut Tx<'_>, kind: DocKind, vault: Uuid, id: &str) -> Result<bool> {
        delete_in(&mut **tx, kind, vault, id).await
    }
}

async fn delete_in<'c, E: Executor<'c, Database = Sqlite>>(
    ex: E,
    kind: DocKind,
    vault: Uuid,
    id: &str,
) -> Result<bool> {
    let res = sqlx::query("DELETE FROM docs WHERE kind = $1 AND vault = $2 AND id = $3")
        .bind(kind.as_str())
        .bind(vault.to_string())
        .bind(id)
        .execute(ex)
        .await
        .map_err(|e| Error::query(format!("Delete {} {id}", kind.as_str()), e))?;
    Ok(res.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sec_3_stale_version_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("v.db")).await.expect("open");
        let vault = Uuid::new_v4();
        let v1 = store
            .put_doc(DocKind::Policy, vault, "p1", None, Some("gold"), &serde_json::json!({"a": 1}), None)
            .await
            .expect("insert");
        let v2 = store
            .put_doc(DocKind::Policy, vault, "p1", None, Some("gold"), &serde_json::json!({"a": 2}), Some(v1))
            .await
            .expect("update");
        assert_eq!(v2, 2);
        let err = store
            .put_doc(DocKind::Policy, vault, "p1", None, Some("gold"), &serde_json::json!({"a": 3}), Some(v1))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::VersionMismatch);
        let dup = store
            .put_doc(DocKind::Policy, vault, "p2", None, Some("gold"), &serde_json::json!({}), None)
            .await
            .unwrap_err();
        assert_eq!(dup.kind, ErrorKind::Conflict);
        let doc: Doc<serde_json::Value> =
            store.get_doc(DocKind::Policy, vault, "p1").await.expect("get").expect("exists");
        assert_eq!(doc.body["a"], 2);
        assert_eq!(doc.version, 2);
    }
}
