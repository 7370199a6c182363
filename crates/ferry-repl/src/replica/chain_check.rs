//! The replica's chain check (SEC-3): every layer the catalogue names exists, reads as a qcow2
//! layer whose data lies inside its file, and names as its backing file the layer below it in
//! the catalogue. It reads only metadata (headers and tables), so it runs at every host start
//! over every replica and before a point is used for a test failover or a failover; a broken
//! chain is recorded as damage on every point that reads through it, so the item's health turns
//! Critical naming the point, and such a point is refused with the reason instead of booting a
//! VM on a disk with holes. A repair (REP-6) heals it: the points behind the broken layer —
//! unreadable anyway — are set aside and the resync compares the source's disks with the newest
//! intact point, sending only what differs.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use super::*;
use crate::manifest::Damage;

/// What is wrong with one layer file, if anything.
fn layer_fault(path: &Path, expected_backing: Option<&str>) -> Option<String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(format!("layer {name} is missing")),
        Err(e) => return Some(format!("layer {name} cannot be read: {e}")),
    };
    let extents = match crate::qcow2::map_layer(path) {
        Ok(x) => x,
        Err(e) => return Some(format!("layer {name} is not a readable qcow2 layer: {e}")),
    };
    if let Some(x) = extents.iter().find(|x| x.data && x.offset.is_some_and(|o| o.saturating_add(x.length) > len)) {
        return Some(format!("layer {name} is cut short: data at guest offset {} lies past its end", x.start));
    }
    match (backing_name(path), expected_backing) {
        (Ok(found), Some(want)) if found.as_deref() != Some(want) => Some(format!(
            "layer {name} reads through {} instead of {want}",
            found.as_deref().unwrap_or("no backing file")
        )),
        (Err(e), _) => Some(format!("layer {name} has an unreadable header: {e}")),
        _ => None,
    }
}

/// The backing file name in a qcow2 header.
fn backing_name(path: &Path) -> std::io::Result<Option<String>> {
    let f = File::open(path)?;
    let mut h = [0u8; 20];
    f.read_exact_at(&mut h, 0)?;
    let offset = u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let size = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    if offset == 0 || size == 0 {
        return Ok(None);
    }
    if size > 1023 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "backing file name too long"));
    }
    let mut b = vec![0u8; size as usize];
    f.read_exact_at(&mut b, offset)?;
    Ok(Some(String::from_utf8_lossy(&b).into_owned()))
}

impl VmReplica {
    /// Check the chain of every point; returns the damage found per point (points whose chain
    /// is intact are not listed). Metadata only; each layer file is read once.
    pub fn chain_faults(&self) -> Result<Vec<(String, Vec<Damage>)>> {
        let cat = self.read_catalog()?;
        let size_of = |target: &str| cat.disks.iter().find(|d| d.target == target).map_or(0, |d| d.size);
        // Per layer file: its fault, given the layer the catalogue puts below it.
        let mut faults: HashMap<String, Option<String>> = HashMap::new();
        let mut below: HashMap<String, String> = HashMap::new();
        let mut out = Vec::new();
        for (i, p) in cat.points.iter().enumerate() {
            if cat.merging.as_deref() == Some(p.id.as_str()) {
                continue;
            }
            let mut damage = Vec::new();
            for d in &p.disks {
                let lower = cat.points[..i]
                    .iter()
                    .rev()
                    .find_map(|q| q.disks.iter().find(|x| x.target == d.target).map(|x| x.file.clone()));
                if let Some(l) = &lower {
                    below.insert(d.file.clone(), l.clone());
                }
                let fault = faults
                    .entry(d.file.clone())
                    .or_insert_with(|| layer_fault(&self.dir.join(&d.file), lower.as_deref()))
                    .clone();
                // A point reads through every layer below its own.
                let mut broken: Vec<String> = fault.into_iter().collect();
                let mut at = lower;
                while let Some(f) = at {
                    if let Some(Some(x)) = faults.get(&f) {
                        broken.push(x.clone());
                    }
                    at = below.get(&f).cloned();
                }
                for detail in broken {
                    damage.push(Damage { target: d.target.clone(), offset: 0, len: size_of(&d.target), detail });
                }
            }
            if !damage.is_empty() {
                out.push((p.id.clone(), damage));
            }
        }
        Ok(out)
    }

    /// Check every chain and record the damage found on its points (their health turns
    /// Critical); returns the damaged points' ids.
    pub async fn check_chains(&self) -> Result<Vec<String>> {
        let _chain = self.chain_lock().await?;
        let found = self.chain_faults()?;
        if found.is_empty() {
            return Ok(vec![]);
        }
        let mut cat = self.read_catalog()?;
        for (id, damage) in &found {
            if let Some(p) = cat.points.iter_mut().find(|p| &p.id == id) {
                tracing::error!(vm = %self.vm_id, point = %id, damage = ?damage, "The replica's chain is broken");
                p.check = Some(PointCheck {
                    at: Utc::now(),
                    sealed: p.manifest.is_some(),
                    bytes_read: 0,
                    damage: damage.clone(),
                    since: None,
                });
            }
        }
        self.write_catalog(&cat)?;
        Ok(found.into_iter().map(|(id, _)| id).collect())
    }

    /// Refuse `point` (or the latest) when its chain is broken, with what is wrong; the damage
    /// is recorded on the point as by [`Self::check_chains`].
    pub(crate) async fn require_intact_chain(&self, point: &str) -> Result<()> {
        let id = {
            let cat = self.read_catalog()?;
            let p = if point == LATEST { cat.points.last() } else { cat.points.iter().find(|p| p.id == point) };
            p.ok_or_else(|| not_found(point))?.id.clone()
        };
        if !self.check_chains().await?.contains(&id) {
            return Ok(());
        }
        let cat = self.read_catalog()?;
        let why: Vec<String> = cat
            .points
            .iter()
            .find(|p| p.id == id)
            .and_then(|p| p.check.as_ref())
            .map(|c| c.damage.iter().map(|d| format!("{}: {}", d.target, d.detail)).collect())
            .unwrap_or_default();
        Err(Error::new(
            ErrorKind::Store,
            format!(
                "Recovery point {id} cannot be used: its chain on the replica is broken ({}); choose an older point whose chain is intact, or repair replication",
                why.join("; ")
            ),
        ))
    }

    /// REP-6 heal: remove the points that read through a broken layer (they cannot be read,
    /// so they hold nothing to keep) with their files, so a resync continues from the newest
    /// intact point. Refused when the base itself is broken (only a full copy helps then) or
    /// when a broken point is still in use. Returns the ids removed.
    pub async fn drop_broken_points(&self) -> Result<Vec<String>> {
        let _chain = self.chain_lock().await?;
        let faults = self.chain_faults()?;
        let Some((first, damage)) = faults.first() else { return Ok(vec![]) };
        let mut cat = self.read_catalog()?;
        let k = cat.points.iter().position(|p| &p.id == first).ok_or_else(|| not_found(first))?;
        let why: Vec<String> = damage.iter().map(|d| format!("{}: {}", d.target, d.detail)).collect();
        if k == 0 {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "The base of the replica's chain is broken ({}); disable protection deleting the replica and enable it again for a full copy",
                    why.join("; ")
                ),
            ));
        }
        if let Some(p) = cat.points[k..].iter().find(|p| !p.in_use.is_empty()) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("Recovery point {} is in use ({}); end that first", p.id, p.in_use.join(", ")),
            ));
        }
        let removed: Vec<RecoveryPoint> = cat.points.drain(k..).collect();
        self.write_catalog(&cat)?;
        let ids = self.remove_point_files(removed)?;
        tracing::warn!(vm = %self.vm_id, points = ?ids, reason = %why.join("; "), "Recovery points behind a broken layer set aside; the resync continues from the newest intact point");
        Ok(ids)
    }
}
