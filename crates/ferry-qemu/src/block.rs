//! Typed QMP helpers for the block layer: node queries, dirty bitmaps, `blockdev-add/del`,
//! transaction action builders and block-job waiting.
//!
//! Node names are Ferry's: a disk with target `vda` is the format node `vda` on top of the file
//! node `vda-file`. With `-blockdev` the BlockBackend is anonymous, so `device` arguments take the
//! root node name; job ids are their own namespace.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::qmp::{lock, BlockJobEnd, Qmp};

/// One dirty bitmap on a node (`query-named-block-nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    pub name: String,
    /// Dirty bytes.
    pub count: u64,
    pub granularity: u64,
    pub recording: bool,
    pub persistent: bool,
    pub busy: bool,
    /// Set after an unclean QEMU exit; such a bitmap cannot be used (full resync needed).
    pub inconsistent: bool,
}

/// One block node (`query-named-block-nodes` with `flat: true`).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockNode {
    pub node_name: String,
    pub driver: String,
    pub file: String,
    pub read_only: bool,
    pub dirty_bitmaps: Vec<DirtyBitmap>,
    /// The raw entry, for fields without a typed accessor.
    pub raw: Value,
}

fn parse_bitmap(v: &Value) -> Option<DirtyBitmap> {
    let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    Some(DirtyBitmap {
        name: v.get("name")?.as_str()?.to_string(),
        count: v.get("count").and_then(Value::as_u64).unwrap_or(0),
        granularity: v.get("granularity").and_then(Value::as_u64).unwrap_or(0),
        recording: b("recording"),
        persistent: b("persistent"),
        busy: b("busy"),
        inconsistent: b("inconsistent"),
    })
}

fn parse_node(v: &Value) -> Option<BlockNode> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Some(BlockNode {
        node_name: v.get("node-name")?.as_str()?.to_string(),
        driver: s("drv"),
        file: s("file"),
        read_only: v.get("ro").and_then(Value::as_bool).unwrap_or(false),
        dirty_bitmaps: v
            .get("dirty-bitmaps")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(parse_bitmap).collect())
            .unwrap_or_default(),
        raw: v.clone(),
    })
}

/// Transaction action builders (`{"type": ..., "data": ...}`).
pub mod action {
    use serde_json::{json, Value};

    /// `block-dirty-bitmap-add`.
    pub fn bitmap_add(node: &str, name: &str, persistent: bool) -> Value {
        json!({"type": "block-dirty-bitmap-add",
               "data": {"node": node, "name": name, "persistent": persistent}})
    }

    /// `block-dirty-bitmap-add` with an explicit granularity (bytes, a power of two).
    pub fn bitmap_add_granular(node: &str, name: &str, granularity: u64, persistent: bool) -> Value {
        json!({"type": "block-dirty-bitmap-add",
               "data": {"node": node, "name": name, "granularity": granularity, "persistent": persistent}})
    }

    /// `block-dirty-bitmap-disable`.
    pub fn bitmap_disable(node: &str, name: &str) -> Value {
        json!({"type": "block-dirty-bitmap-disable", "data": {"node": node, "name": name}})
    }

    /// `block-dirty-bitmap-remove`.
    pub fn bitmap_remove(node: &str, name: &str) -> Value {
        json!({"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": name}})
    }

    /// `block-dirty-bitmap-merge` of `sources` into `target`.
    pub fn bitmap_merge(node: &str, target: &str, sources: &[&str]) -> Value {
        json!({"type": "block-dirty-bitmap-merge",
               "data": {"node": node, "target": target, "bitmaps": sources}})
    }

    /// `blockdev-backup sync=full` of `device` into node `target`.
    pub fn backup_full(job_id: &str, device: &str, target: &str) -> Value {
        json!({"type": "blockdev-backup",
               "data": {"job-id": job_id, "device": device, "target": target, "sync": "full"}})
    }

    /// `blockdev-backup sync=top`: only what the top layer of the device holds (the writes since
    /// an overlay was put on a backing chain).
    pub fn backup_top(job_id: &str, device: &str, target: &str) -> Value {
        json!({"type": "blockdev-backup",
               "data": {"job-id": job_id, "device": device, "target": target, "sync": "top"}})
    }

    /// `blockdev-backup sync=none`: copy-before-write only, into a fleecing node whose backing
    /// is `device` (the fleecing node then reads as `device` did when the job started).
    pub fn backup_none(job_id: &str, device: &str, target: &str) -> Value {
        json!({"type": "blockdev-backup",
               "data": {"job-id": job_id, "device": device, "target": target, "sync": "none"}})
    }

    /// `blockdev-backup sync=bitmap bitmap-mode=never` (the bitmap is left untouched).
    pub fn backup_bitmap(job_id: &str, device: &str, target: &str, bitmap: &str) -> Value {
        json!({"type": "blockdev-backup",
               "data": {"job-id": job_id, "device": device, "target": target,
                        "sync": "bitmap", "bitmap": bitmap, "bitmap-mode": "never"}})
    }
}

impl Qmp {
    /// `query-named-block-nodes` with `flat: true`.
    pub async fn query_named_block_nodes(&self) -> Result<Vec<BlockNode>> {
        let v = self.execute("query-named-block-nodes", json!({"flat": true})).await?;
        let arr = v
            .as_array()
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "query-named-block-nodes did not return a list"))?;
        Ok(arr.iter().filter_map(parse_node).collect())
    }

    /// The dirty bitmaps on `node`.
    pub async fn dirty_bitmaps(&self, node: &str) -> Result<Vec<DirtyBitmap>> {
        let nodes = self.query_named_block_nodes().await?;
        nodes
            .into_iter()
            .find(|n| n.node_name == node)
            .map(|n| n.dirty_bitmaps)
            .ok_or_else(|| Error::new(ErrorKind::Process, format!("Block node {node} does not exist")))
    }

    /// `block-dirty-bitmap-add`.
    pub async fn block_dirty_bitmap_add(&self, node: &str, name: &str, persistent: bool) -> Result<()> {
        self.execute("block-dirty-bitmap-add", json!({"node": node, "name": name, "persistent": persistent}))
            .await
            .map(|_| ())
    }

    /// `block-dirty-bitmap-remove`.
    pub async fn block_dirty_bitmap_remove(&self, node: &str, name: &str) -> Result<()> {
        self.execute("block-dirty-bitmap-remove", json!({"node": node, "name": name})).await.map(|_| ())
    }

    /// `block-dirty-bitmap-disable`.
    pub async fn block_dirty_bitmap_disable(&self, node: &str, name: &str) -> Result<()> {
        self.execute("block-dirty-bitmap-disable", json!({"node": node, "name": name})).await.map(|_| ())
    }

    /// `block-dirty-bitmap-enable`.
    pub async fn block_dirty_bitmap_enable(&self, node: &str, name: &str) -> Result<()> {
        self.execute("block-dirty-bitmap-enable", json!({"node": node, "name": name})).await.map(|_| ())
    }

    /// `block-dirty-bitmap-clear`.
    pub async fn block_dirty_bitmap_clear(&self, node: &str, name: &str) -> Result<()> {
        self.execute("block-dirty-bitmap-clear", json!({"node": node, "name": name})).await.map(|_| ())
    }

    /// `block-dirty-bitmap-merge` of `sources` into `target`.
    pub async fn block_dirty_bitmap_merge(&self, node: &str, target: &str, sources: &[&str]) -> Result<()> {
        self.execute("block-dirty-bitmap-merge", json!({"node": node, "target": target, "bitmaps": sources}))
            .await
            .map(|_| ())
    }

    /// `blockdev-add` with raw options.
    pub async fn blockdev_add(&self, options: Value) -> Result<()> {
        self.execute("blockdev-add", options).await.map(|_| ())
    }

    /// `blockdev-add` of a scratch qcow2 image file (staging of a capture) as node `node_name`
    /// (file node inline, no backing, never flushed).
    pub async fn blockdev_add_qcow2(&self, node_name: &str, path: &Path) -> Result<()> {
        let filename = path
            .to_str()
            .ok_or_else(|| Error::new(ErrorKind::InvalidSpec, format!("Path is not UTF-8: {}", path.display())))?;
        // A scratch image: its data is read back from the page cache and discarded, never
        // relied upon after a host crash, so QEMU need not flush it.
        self.blockdev_add(json!({
            "driver": "qcow2", "node-name": node_name, "backing": null,
            "cache": {"no-flush": true},
            "file": {"driver": "file", "filename": filename, "cache": {"no-flush": true}}
        }))
        .await
    }

    /// `blockdev-add` of a fleecing image: scratch qcow2 `path` as node `node_name` with the
    /// running node `backing` as its backing (never flushed, like a staging image).
    pub async fn blockdev_add_fleece(&self, node_name: &str, path: &Path, backing: &str) -> Result<()> {
        let filename = path
            .to_str()
            .ok_or_else(|| Error::new(ErrorKind::InvalidSpec, format!("Path is not UTF-8: {}", path.display())))?;
        self.blockdev_add(json!({
            "driver": "qcow2", "node-name": node_name, "backing": backing,
            "cache": {"no-flush": true},
            "file": {"driver": "file", "filename": filename, "cache": {"no-flush": true}}
        }))
        .await
    }

    /// `nbd-server-start` on the Unix socket `path`.
    pub async fn nbd_server_start(&self, path: &Path) -> Result<()> {
        let p = path
            .to_str()
            .ok_or_else(|| Error::new(ErrorKind::InvalidSpec, format!("Path is not UTF-8: {}", path.display())))?;
        self.execute("nbd-server-start", json!({"addr": {"type": "unix", "data": {"path": p}}})).await.map(|_| ())
    }

    /// `nbd-server-stop` (removes every NBD export of this QEMU). Not running is not an error.
    pub async fn nbd_server_stop(&self) -> Result<()> {
        match self.execute("nbd-server-stop", json!({})).await {
            Err(e) if matches!(e.kind(), ErrorKind::Qmp { desc, .. } if desc.contains("not running")) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// `block-export-add` of node `node` as read-only NBD export `id` (export name = id),
    /// exposing the dirty bitmaps `bitmaps` (name on node `bitmap_node`) as metadata contexts.
    pub async fn nbd_export_add(&self, id: &str, node: &str, bitmap_node: &str, bitmaps: &[&str]) -> Result<()> {
        let bm: Vec<Value> = bitmaps.iter().map(|b| json!({"node": bitmap_node, "name": b})).collect();
        self.execute(
            "block-export-add",
            json!({"type": "nbd", "id": id, "node-name": node, "name": id, "writable": false, "bitmaps": bm}),
        )
        .await
        .map(|_| ())
    }

    /// The `field` of every entry a `query-*` command lists.
    async fn listed(&self, query: &str, field: &str) -> Result<Vec<String>> {
        let v = self.execute(query, json!({})).await?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(|e| e.get(field).and_then(Value::as_str).map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// Ids of the block exports of this QEMU (`query-block-exports`).
    pub async fn block_exports(&self) -> Result<Vec<String>> {
        self.listed("query-block-exports", "id").await
    }

    /// `block-export-del` (mode `hard`: clients are disconnected) and wait until it is gone.
    pub async fn block_export_del(&self, id: &str, timeout: Duration) -> Result<()> {
        let mut stream = self.subscribe();
        self.execute("block-export-del", json!({"id": id, "mode": "hard"})).await?;
        if !self.block_exports().await?.iter().any(|e| e == id) {
            return Ok(());
        }
        stream
            .wait(|e| e.name == "BLOCK_EXPORT_DELETED" && e.data.get("id").and_then(Value::as_str) == Some(id), timeout)
            .await
            .map(|_| ())
    }

    /// Ids of the running block jobs (`query-block-jobs`).
    pub async fn block_jobs(&self) -> Result<Vec<String>> {
        self.listed("query-block-jobs", "device").await
    }

    /// Cancel block job `job_id` and wait until it ended (however it ended).
    pub async fn block_job_cancel(&self, job_id: &str, timeout: Duration) -> Result<()> {
        self.execute("block-job-cancel", json!({"device": job_id, "force": true})).await?;
        match self.wait_block_job(job_id, timeout).await {
            Ok(_) => Ok(()),
            Err(e) if *e.kind() == ErrorKind::BlockJob => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `blockdev-del`.
    pub async fn blockdev_del(&self, node_name: &str) -> Result<()> {
        self.execute("blockdev-del", json!({"node-name": node_name})).await.map(|_| ())
    }

    /// Wait until block job `job_id` ends. `BLOCK_JOB_COMPLETED` with an `error` member and
    /// `BLOCK_JOB_CANCELLED` are [`ErrorKind::BlockJob`] errors. Completions that arrived before
    /// this call are found too (the client keeps a table of finished jobs).
    pub async fn wait_block_job(&self, job_id: &str, timeout: Duration) -> Result<BlockJobEnd> {
        let mut stream = self.subscribe();
        let taken = lock(&self.finished_jobs).remove(job_id);
        let end = match taken {
            Some(end) => end,
            None => {
                stream
                    .wait(
                        |e| {
                            matches!(e.name.as_str(), "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED")
                                && e.data.get("device").and_then(Value::as_str) == Some(job_id)
                        },
                        timeout,
                    )
                    .await
                    .map_err(|e| {
                        if e.is_timeout() {
                            Error::new(
                                ErrorKind::Timeout,
                                format!("Block job {job_id} did not finish within {timeout:?}"),
                            )
                        } else {
                            e
                        }
                    })?;
                lock(&self.finished_jobs).remove(job_id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!("Block job {job_id} ended but its outcome was not recorded"),
                    )
                })?
            }
        };
        if let Some(err) = &end.error {
            return Err(Error::new(ErrorKind::BlockJob, format!("Block job {job_id} failed: {err}")));
        }
        if end.cancelled {
            return Err(Error::new(
                ErrorKind::BlockJob,
                format!("Block job {job_id} was cancelled at {} of {} bytes", end.offset, end.len),
            ));
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_1_named_block_node_parsing_is_tolerant() {
        let v: Value = serde_json::from_str(
            r#"{"node-name":"vda","drv":"qcow2","file":"/x/d.qcow2","ro":false,"extra":1,
               "dirty-bitmaps":[{"name":"bm0","count":65536,"granularity":65536,
               "recording":true,"persistent":true,"busy":false},{"nameless":true}]}"#,
        )
        .expect("json");
        let n = parse_node(&v).expect("node");
        assert_eq!(n.node_name, "vda");
        assert_eq!(n.dirty_bitmaps.len(), 1);
        assert!(n.dirty_bitmaps[0].persistent);
        assert!(!n.dirty_bitmaps[0].inconsistent);
        assert!(parse_node(&json!({"drv": "file"})).is_none());
    }

    #[test]
    fn host_1_backup_bitmap_action_sets_bitmap_mode() {
        let a = action::backup_bitmap("d1", "vda", "delta1", "bm0");
        assert_eq!(a["data"]["bitmap-mode"], "never");
        assert_eq!(a["data"]["sync"], "bitmap");
    }
}
