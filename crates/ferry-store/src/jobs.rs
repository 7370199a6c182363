//! Jobs (JOB-1): durable rows with indexed filter columns and keyset pagination.

use ferry_types::job::{Job, JobFilter};
use uuid::Uuid;

use crate::db::Store;
use crate::error::{Error, ErrorKind, Result};

fn encode(job: &Job) -> Result<String> {
    serde_json::to_string(job).map_err(|e| Error::corrupt(format!("Encode job {}", job.id), e))
}

fn decode(body: &str) -> Result<Job> {
    serde_json::from_str(body).map_err(|e| Error::corrupt("Decode job", e))
}

impl Store {
    pub async fn insert_job(&self, job: &Job) -> Result<()> {
        sqlx::query("INSERT INTO jobs (id, vault, created_ms, status, fabric, object_type, object_id, operation, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(job.id.to_string())
            .bind(job.vault_id.to_string())
            .bind(job.created_at.timestamp_millis())
            .bind(job.status.as_str())
            .bind(job.fabric.map(|f| f.to_string()))
            .bind(&job.object_type)
            .bind(&job.object_id)
            .bind(&job.operation)
            .bind(encode(job)?)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query(format!("Insert job {}", job.id), e))?;
        Ok(())
    }

    /// Insert many jobs in one transaction (imports, the scale bench).
    pub async fn insert_jobs(&self, jobs: &[Job]) -> Result<()> {
        let mut tx = self.begin().await?;
        for chunk in jobs.chunks(500) {
            let mut encoded = Vec::with_capacity(chunk.len());
            for job in chunk {
                encoded.push((job, encode(job)?));
            }
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO jobs (id, vault, created_ms, status, fabric, object_type, object_id, operation, body) ",
            );
            qb.push_values(encoded, |mut b, (job, body)| {
                b.push_bind(job.id.to_string())
                    .push_bind(job.vault_id.to_string())
                    .push_bind(job.created_at.timestamp_millis())
                    .push_bind(job.status.as_str())
                    .push_bind(job.fabric.map(|f| f.to_string()))
                    .push_bind(job.object_type.clone())
                    .push_bind(job.object_id.clone())
                    .push_bind(job.operation.clone())
                    .push_bind(body);
            });
            qb.build().execute(&mut *tx).await.map_err(|e| Error::query("Insert jobs", e))?;
        }
        Store::commit(tx).await
    }

    /// Replace a job's body and status.
    pub async fn update_job(&self, job: &Job) -> Result<()> {
        let res = sqlx::query("UPDATE jobs SET status = $1, body = $2 WHERE id = $3")
            .bind(job.status.as_str())
            .bind(encode(job)?)
            .bind(job.id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| Error::query(format!("Update job {}", job.id), e))?;
        if res.rows_affected() == 0 {
            return Err(Error::new(ErrorKind::NotFound, format!("Job {} does not exist", job.id)));
        }
        Ok(())
    }

    pub async fn get_job(&self, vault: Uuid, id: Uuid) -> Result<Option<Job>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT body FROM jobs WHERE vault = $1 AND id = $2")
            .bind(vault.to_string())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::query(format!("Read job {id}"), e))?;
        row.map(|(b,)| decode(&b)).transpose()
    }

    /// Jobs newest first. `before` is the cursor returned with the previous page.
    pub async fn list_jobs(
        &self,
        vault: Uuid,
        f: &JobFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<Job>, Option<i64>)> {
        // Only the filters given are in the SQL, so SQLite can pick the index that serves them
        // (a `($n IS NULL OR col = $n)` form makes it scan every row of the vault).
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT seq, body FROM jobs WHERE vault = ");
        qb.push_bind(vault.to_string());
        if let Some(b) = before {
            qb.push(" AND seq < ").push_bind(b);
        }
        if let Some(s) = f.status {
            qb.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(x) = f.fabric {
            qb.push(" AND fabric = ").push_bind(x.to_string());
        }
        if let Some(x) = &f.object_type {
            qb.push(" AND object_type = ").push_bind(x.clone());
        }
        if let Some(x) = &f.object_id {
            qb.push(" AND object_id = ").push_bind(x.clone());
        }
        if let Some(x) = &f.operation {
            qb.push(" AND operation = ").push_bind(x.clone());
        }
        if let Some(t) = f.from {
            qb.push(" AND created_ms >= ").push_bind(t.timestamp_millis());
        }
        if let Some(t) = f.to {
            qb.push(" AND created_ms <= ").push_bind(t.timestamp_millis());
        }
        qb.push(" ORDER BY seq DESC LIMIT ").push_bind(limit + 1);
        let rows: Vec<(i64, String)> =
            qb.build_query_as().fetch_all(&self.pool).await.map_err(|e| Error::query("List jobs", e))?;
        let more = rows.len() as i64 > limit;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut last = None;
        for (seq, body) in rows.into_iter().take(limit.max(0) as usize) {
            jobs.push(decode(&body)?);
            last = Some(seq);
        }
        Ok((jobs, if more { last } else { None }))
    }

    /// Jobs not finished, across all vaults, oldest first (to resume after a restart).
    pub async fn open_jobs(&self) -> Result<Vec<Job>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT body FROM jobs WHERE status IN ('NotStarted', 'InProgress', 'WaitingForInput') ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::query("List open jobs", e))?;
        rows.iter().map(|(b,)| decode(b)).collect()
    }

    /// Jobs per vault, operation and status (the vault's metrics).
    pub async fn job_counts(&self) -> Result<Vec<(Uuid, String, String, i64)>> {
        let rows: Vec<(String, String, String, i64)> =
            sqlx::query_as("SELECT vault, operation, status, COUNT(*) FROM jobs GROUP BY vault, operation, status")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::query("Count jobs", e))?;
        Ok(rows.into_iter().map(|(v, o, s, n)| (Uuid::parse_str(&v).unwrap_or_default(), o, s, n)).collect())
    }
}
