//! RP-1 on a replica: a point's manifest, and re-reading a point's chain to compare it with
//! that manifest (whole, or only where it differs from an older point found exact).

use super::*;

impl VmReplica {
    /// The manifest of `point`, if it has one (points recorded before manifests existed do not).
    pub fn manifest(&self, point: &str) -> Result<Option<PointManifest>> {
        let cat = self.read_catalog()?;
        let p = cat.points.iter().find(|p| p.id == point).ok_or_else(|| not_found(point))?;
        manifest::read_manifest(&self.dir, point, p.manifest.as_deref())
    }

    /// RP-1: re-read `point`'s chain (or the latest point's, for [`LATEST`]) and compare it with
    /// its manifest; `rate` limits the bytes read per second. The point is marked in use while it
    /// is read (retention must not merge below it), and the result is recorded with it.
    pub async fn verify_point(&self, point: &str, rate: Option<u64>) -> Result<(String, PointCheck)> {
        self.verify_point_since(point, None, rate).await
    }

    /// RP-1, incremental: like [`Self::verify_point`], but only the groups in which `point`'s
    /// manifest differs from that of `since` (an older point whose last verification found it
    /// exact) are read; the rest is `since`'s data, checked then. A periodic full verification
    /// still re-reads everything. Without a usable `since` the whole point is read.
    pub async fn verify_point_since(
        &self,
        point: &str,
        since: Option<&str>,
        rate: Option<u64>,
    ) -> Result<(String, PointCheck)> {
        let tag = format!("verify:{}", std::process::id());
        let point = self.hold_point(point, &tag).await?.id;
        let size_of: Vec<(String, u64)> = self.disks()?.into_iter().map(|d| (d.target, d.size)).collect();
        let since = match since {
            Some(q) => {
                let cat = self.read_catalog()?;
                let ok = cat.points.iter().any(|p| p.id == q && p.check.as_ref().is_some_and(|c| c.ok()));
                match (ok, self.manifest(q).ok().flatten()) {
                    (true, Some(m)) => Some((q.to_string(), m)),
                    _ => None,
                }
            }
            None => None,
        };
        let checked = self.compare_with_manifest(&point, &size_of, rate, since).await;
        let _chain = self.chain_lock().await?;
        let mut cat = self.read_catalog()?;
        if let Some(p) = cat.points.iter_mut().find(|p| p.id == point) {
            p.in_use.retain(|t| t != &tag);
            if let Ok(c) = &checked {
                p.check = Some(c.clone());
            }
        }
        self.write_catalog(&cat)?;
        let check = checked?;
        if !check.damage.is_empty() {
            tracing::error!(vm = %self.vm_id, point = %point, damage = ?check.damage, "Recovery point failed verification");
        }
        Ok((point, check))
    }

    async fn compare_with_manifest(
        &self,
        point: &str,
        sizes: &[(String, u64)],
        rate: Option<u64>,
        since: Option<(String, PointManifest)>,
    ) -> Result<PointCheck> {
        let Some(m) = self.manifest(point)? else {
            return Ok(PointCheck { at: Utc::now(), sealed: false, bytes_read: 0, damage: vec![], since: None });
        };
        let unreadable = |target: &str, size: u64, e: Error| manifest::Damage {
            target: target.to_string(),
            offset: 0,
            len: size,
            detail: format!("the chain cannot be read: {e}"),
        };
        let mut damage = Vec::new();
        let mut bytes_read = 0;
        for (target, size) in sizes {
            let Some(dm) = m.disks.iter().find(|d| &d.target == target).cloned() else {
                damage.push(manifest::Damage {
                    target: target.clone(),
                    offset: 0,
                    len: *size,
                    detail: "the manifest does not describe this disk".into(),
                });
                continue;
            };
            let chain = self.chain(point, target)?;
            let reader = match ChainReader::open_chain(&chain, *size, true).await {
                Ok(r) => r,
                Err(e) => {
                    damage.push(unreadable(target, *size, e));
                    continue;
                }
            };
            let only = since
                .as_ref()
                .and_then(|(_, sm)| sm.disks.iter().find(|d| d.target == dm.target))
                .and_then(|sd| manifest::changed_groups(sd, &dm));
            let outcome =
                tokio::task::spawn_blocking(move || manifest::verify_disk(&reader, &dm, rate, only.as_deref()))
                    .await
                    .map_err(|e| Error::with_source(ErrorKind::Io, "Verify task failed", e))?;
            match outcome {
                Ok((d, n)) => {
                    damage.extend(d);
                    bytes_read += n;
                }
                Err(e) => damage.push(unreadable(target, *size, e)),
            }
        }
        Ok(PointCheck { at: Utc::now(), sealed: true, bytes_read, damage, since: since.map(|(q, _)| q) })
    }
}
