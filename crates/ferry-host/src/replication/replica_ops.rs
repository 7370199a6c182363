//! The replica side of a host's replication service: test and failover overlays, point
//! verification (RP-1) and standalone images (RP-3), offline initial import, and adopting a
//! replica as a VM's disks (re-protect). Replication loops are in the parent module.

use super::*;

impl ReplicationService {
    /// Throwaway overlays on a recovery point for a test VM (FO-1); the point stays in use (so
    /// retention never merges it) until [`ReplicationService::release_test`].
    pub async fn test_overlays(&self, item: Uuid, point: &str) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let real = std::fs::canonicalize(self.root.join(item.to_string()))?;
        let dest = real.join("test");
        let ov = vm.overlay_for_test(point, &dest).await?;
        let mut p = self.persisted.lock().await;
        p.tests.retain(|t| t.item != item);
        p.tests.push(TestRecord { item, point: ov.point_id.clone(), tag: ov.tag.clone(), disks: ov.disks.clone() });
        write_state(&self.data.join("replication.json"), &p)?;
        Ok(serde_json::json!({
            "point": ov.point_id,
            "disks": ov.disks.iter().map(|(t, path)| serde_json::json!({"target": t, "path": path})).collect::<Vec<_>>(),
        }))
    }

    /// RP-1: verify `point` (an id or `latest`) of `item`'s replica, or every point, against
    /// the points' manifests. Reads at most `verify_rate` bytes per second.
    pub async fn verify_points(&self, item: Uuid, point: Option<&str>) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let ids: Vec<String> = match point {
            Some(p) => vec![p.to_string()],
            None => vm.recovery_points()?.into_iter().map(|p| p.id).collect(),
        };
        if ids.is_empty() {
            return Err(ReplicationError::Invalid(format!("The replica of {item} has no recovery points")));
        }
        let mut out = Vec::new();
        for id in ids {
            let (id, check) = vm.verify_point(&id, self.verify_rate).await?;
            out.push(serde_json::json!({"point": id, "verification": point_verification(&check)}));
        }
        Ok(serde_json::json!({"points": out}))
    }

    /// RP-3: write every disk of `point` of `item`'s replica as a standalone image into the new
    /// directory `path`, which must lie inside one of this host's storage locations.
    pub async fn point_images(
        &self,
        item: Uuid,
        point: &str,
        format: ferry_types::fabric::DiskFormat,
        path: &str,
    ) -> Result<serde_json::Value, ReplicationError> {
        let dest = Path::new(path);
        let inside = |p: &Path| {
            self.storage_roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|r| p.starts_with(r))
        };
        let parent = dest.parent().filter(|_| dest.is_absolute() && dest.file_name().is_some());
        let parent = parent.and_then(|p| std::fs::canonicalize(p).ok()).filter(|p| inside(p)).ok_or_else(|| {
            ReplicationError::Invalid(format!("{path} is not a new folder inside one of this host's storage locations"))
        })?;
        let dest = parent.join(dest.file_name().unwrap_or_default());
        if dest.exists() {
            return Err(ReplicationError::Invalid(format!("{} exists already", dest.display())));
        }
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        if vm.recovery_points()?.is_empty() {
            return Err(ReplicationError::Invalid(format!("The replica of {item} has no recovery points")));
        }
        std::fs::create_dir(&dest)?;
        let format = match format {
            ferry_types::fabric::DiskFormat::Qcow2 => ferry_qemu::DiskFormat::Qcow2,
            ferry_types::fabric::DiskFormat::Raw => ferry_qemu::DiskFormat::Raw,
        };
        let (point, images) = match vm.export_images(point, &dest, format).await {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir(&dest);
                return Err(e.into());
            }
        };
        Ok(serde_json::json!({
            "point": point,
            "images": images
                .iter()
                .map(|(t, p)| serde_json::json!({
                    "target": t,
                    "path": p,
                    "bytes": std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                }))
                .collect::<Vec<_>>(),
        }))
    }

    /// RP-1: verify the point of the replicas this host holds that is most overdue (never
    /// verified first, then the oldest verification older than `period`). False when none is due.
    pub async fn verify_next_due(&self, period: Duration) -> bool {
        let now = chrono::Utc::now();
        let period = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::days(7));
        let items: Vec<Uuid> = self.persisted.lock().await.replicas.iter().map(|r| r.item).collect();
        // (last verified, item, point, the newest older point found exact: a new point is read
        // only where it differs from that one; an overdue point is read whole).
        type Due = (Option<chrono::DateTime<chrono::Utc>>, Uuid, String, Option<String>);
        let mut due: Option<Due> = None;
        for item in items {
            let Ok(vm) = self.receiver.store().vm(&item.to_string()).await else { continue };
            if vm.failover_point().ok().flatten().is_some() {
                continue;
            }
            let mut last_exact: Option<String> = None;
            for p in vm.recovery_points().unwrap_or_default() {
                let last = p.check.as_ref().map(|c| c.at);
                let since = if last.is_none() { last_exact.clone() } else { None };
                if p.check.as_ref().is_some_and(|c| c.ok()) {
                    last_exact = Some(p.id.clone());
                }
                if last.is_some_and(|t| now - t < period) {
                    continue;
                }
                if due.as_ref().is_none_or(|(d, _, _, _)| last < *d) {
                    due = Some((last, item, p.id.clone(), since));
                }
            }
        }
        let Some((_, item, point, since)) = due else { return false };
        let Ok(vm) = self.receiver.store().vm(&item.to_string()).await else { return false };
        match vm.verify_point_since(&point, since.as_deref(), self.verify_rate).await {
            Ok((_, c)) => tracing::debug!(%item, point, ok = c.ok(), bytes = c.bytes_read, "Recovery point verified"),
            // Merged by retention meanwhile, or a busy replica: the next round picks again.
            Err(e) => {
                tracing::debug!(%item, point, error = %e, "Recovery point not verified");
                return false;
            }
        }
        true
    }

    /// Failover disks: overlays on `point` that become the recovered VM's disks; the replica is
    /// marked failed over, so no replication lands in it until the failover is released.
    pub async fn failover_overlays(&self, item: Uuid, point: &str) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let real = std::fs::canonicalize(self.root.join(item.to_string()))?;
        // `latest`: the newest point this host holds now (it includes a final cycle the vault
        // may not have heard of yet).
        let latest = vm.recovery_points()?.last().map(|p| p.id.clone());
        let point = if point == ferry_repl::replica::LATEST { latest.as_deref().unwrap_or(point) } else { point };
        let ov = vm.begin_failover(point, &real.join("failover")).await?;
        Ok(serde_json::json!({
            "point": ov.point_id,
            "disks": ov.disks.iter().map(|(t, path)| serde_json::json!({"target": t, "path": path})).collect::<Vec<_>>(),
        }))
    }

    /// Drop the failover overlays of `item` (the recovered VM was deleted first): the replica
    /// accepts replication again (FO-4 change of point, cancel). Idempotent.
    pub async fn release_failover(&self, item: Uuid) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let Some(point) = vm.failover_point()? else { return Ok(serde_json::Value::Null) };
        let dir = std::fs::canonicalize(self.root.join(item.to_string()))?.join("failover");
        let disks =
            vm.disks()?.into_iter().map(|d| (d.target.clone(), dir.join(format!("{}.qcow2", d.target)))).collect();
        vm.release_test(&ferry_repl::TestOverlay { point_id: point, tag: "failover".into(), disks }).await?;
        let _ = std::fs::remove_dir(&dir);
        Ok(serde_json::Value::Null)
    }

    /// POL-8, target side: import the offline export of `item` from `<path>/<item>` as the
    /// replica's first point. Verifies every segment first; an interrupted import continues
    /// where it stopped; an import that already finished reports its point again.
    pub async fn import_initial(
        &self,
        item: Uuid,
        path: &str,
        key: Option<&str>,
    ) -> Result<serde_json::Value, ReplicationError> {
        let key = key.map(ferry_repl::offline::ExportKey::from_hex).transpose()?;
        let base = Path::new(path);
        if !base.is_absolute() || base.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(ReplicationError::Invalid(format!("{path} is not an absolute path without '..'")));
        }
        if !self.persisted.lock().await.replicas.iter().any(|r| r.item == item) {
            return Err(ReplicationError::Invalid(format!("{item} is not replicated to this host")));
        }
        let dir = base.join(item.to_string());
        if !dir.is_dir() {
            return Err(ReplicationError::Invalid(format!(
                "{} does not exist; copy the export folder {item} into {path} first",
                dir.display()
            )));
        }
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let r = vm.import_initial(&dir, ferry_repl::offline::ImportOptions { key, ..Default::default() }).await?;
        Ok(serde_json::json!({
            "point": r.point.id,
            "cycle": r.point.cycle,
            "segments": r.segments,
            "resumed_from_segment": r.resumed_from_segment,
            "data_bytes": r.data_bytes,
            "already_imported": r.already_imported,
        }))
    }

    /// POL-8, source side: the replica imported the export of `cycle`; delta cycles start.
    pub async fn confirm_import(&self, item: Uuid, cycle: u64) -> Result<serde_json::Value, ReplicationError> {
        let slot = self
            .primaries
            .lock()
            .ok()
            .and_then(|p| p.get(&item).cloned())
            .ok_or_else(|| ReplicationError::Invalid(format!("{item} is not replicated from this host")))?;
        let mut primary = slot.lock().await;
        let p = primary.as_mut().ok_or_else(|| {
            ReplicationError::Invalid(format!("The VM of {item} is not running; start it and try again"))
        })?;
        p.confirm_import(cycle)?;
        Ok(serde_json::Value::Null)
    }

    /// FO-4 commit: discard the points newer than the failover point and stop receiving this
    /// replica (the recovered VM runs on its chain now). Idempotent.
    pub async fn commit_failover(&self, item: Uuid) -> Result<serde_json::Value, ReplicationError> {
        let vm = self.receiver.store().vm(&item.to_string()).await?;
        let discarded = match vm.failover_point()? {
            Some(_) => vm.commit_failover().await?,
            None => vec![],
        };
        let mut p = self.persisted.lock().await;
        if let Some(r) = p.replicas.iter().find(|r| r.item == item) {
            self.allowlist.revoke_pair(&r.source_host_cn, &item.to_string());
        }
        p.replicas.retain(|r| r.item != item);
        write_state(&self.data.join("replication.json"), &p)?;
        Ok(serde_json::json!({ "discarded_points": discarded }))
    }

    /// FO-5: the stopped VM `vm` becomes the base of the replica this host receives back. Its
    /// disks are converted into a new store next to the final one, then the VM and any previous
    /// store of the item are removed and the new store takes its place. A retry after a crash
    /// finds either the VM (and redoes the copy) or the adopted store (and only registers it).
    pub async fn adopt_vm(
        &self,
        vm_name: &str,
        spec: ReplicaSpec,
        vms: &Arc<VmManager>,
    ) -> Result<serde_json::Value, ReplicationError> {
        let item = spec.item.to_string();
        let location = spec.disks.first().map(|d| PathBuf::from(&d.2)).filter(|p| !p.as_os_str().is_empty());
        let parent = match &location {
            Some(loc) => loc.join("ferry-replicas"),
            None => self.data.join("replica-store"),
        };
        let final_dir = parent.join(&item);
        let link = self.root.join(&item);
        if let Some(def) = vms.definition(vm_name).await {
            if vms.running(vm_name).await.is_some()
                && matches!(
                    vms.status(vm_name).await.map(|s| s.power_state),
                    Ok(ferry_types::fabric::PowerState::Running)
                )
            {
                return Err(ReplicationError::Invalid(format!("VM {vm_name} runs; it must be off to be adopted")));
            }
            let staging_root = parent.join(format!(".adopt-{item}"));
            let _ = std::fs::remove_dir_all(&staging_root);
            std::fs::create_dir_all(&staging_root)?;
            let store = ferry_repl::ReplicaStore::open(&staging_root)?;
            let disks: Vec<(String, PathBuf)> =
                def.disks.iter().filter(|d| !d.excluded).map(|d| (d.target.clone(), PathBuf::from(&d.path))).collect();
            store.vm(&item).await?.adopt_existing(&disks, Utc::now()).await?;
            vms.delete(vm_name, true).await.map_err(|e| ReplicationError::Engine(e.to_string()))?;
            if let Ok(old) = std::fs::read_link(&link) {
                let _ = std::fs::remove_dir_all(old);
            }
            let _ = std::fs::remove_file(&link);
            let _ = std::fs::remove_dir_all(&link);
            let _ = std::fs::remove_dir_all(&final_dir);
            std::fs::rename(staging_root.join(&item), &final_dir)?;
            let _ = std::fs::remove_dir_all(&staging_root);
            // Tracking state of this host's earlier role as a source of the item is void now.
            let _ = std::fs::remove_dir_all(self.data.join("staging").join(&item));
        } else if !final_dir.exists() {
            return Err(ReplicationError::Invalid(format!("VM {vm_name} is not defined on this host")));
        }
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&final_dir, &link)?;
        }
        if let Some(origin) = &spec.origin {
            let rec =
                crate::onboard::OriginRecord { origin: origin.clone(), item: spec.item, vm_name: spec.vm_name.clone() };
            crate::onboard::write_origin(&final_dir, &rec)?;
        }
        self.allowlist.allow_replica(&spec.source_host_cn, &item, &item);
        let mut p = self.persisted.lock().await;
        p.sources.retain(|s| s.item != spec.item);
        p.replicas.retain(|r| r.item != spec.item);
        p.replicas.push(spec);
        write_state(&self.data.join("replication.json"), &p)?;
        Ok(serde_json::json!({"receiver": self.address().to_string()}))
    }

    pub async fn release_test(&self, item: Uuid) -> Result<serde_json::Value, ReplicationError> {
        let rec = self.persisted.lock().await.tests.iter().find(|t| t.item == item).cloned();
        if let Some(rec) = rec {
            let vm = self.receiver.store().vm(&item.to_string()).await?;
            let ov =
                ferry_repl::TestOverlay { point_id: rec.point.clone(), tag: rec.tag.clone(), disks: rec.disks.clone() };
            vm.release_test(&ov).await?;
            if let Some((_, first)) = rec.disks.first() {
                if let Some(dir) = first.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            let mut p = self.persisted.lock().await;
            p.tests.retain(|t| t.item != item);
            write_state(&self.data.join("replication.json"), &p)?;
        }
        Ok(serde_json::Value::Null)
    }
}
