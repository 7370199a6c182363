//! A cycle being applied to a replica: extents written straight into new overlays, hashed
//! for the point's manifest as they come, and sealed into a recovery point at the end.

use super::*;

/// A cycle being applied: extents go straight into new overlays (`.pending-*`).
#[derive(Debug)]
pub struct PendingApply {
    pub(super) vm: VmReplica,
    pub(super) header: BeginCycle,
    pub(super) writers: Vec<(String, Qcow2Writer, blake3::Hasher)>,
    pub(super) next_extent: u64,
    /// Data bytes received (the point's size).
    pub(super) data_bytes: u64,
    /// Bytes covered by all extents (data + zero), checked against `EndCycle`.
    pub(super) covered_bytes: u64,
    /// Per disk: the leaves written, hashed as they are applied (the point's manifest).
    pub(super) folds: Vec<manifest::DiskFold>,
    pub(super) _recv: FileLock,
}

impl PendingApply {
    /// The cycle header.
    pub fn header(&self) -> &BeginCycle {
        &self.header
    }

    /// Index of the next expected extent (everything before it is written).
    pub fn next_extent(&self) -> u64 {
        self.next_extent
    }

    /// Verify and write one extent; it must be the next in sequence.
    pub fn apply(&mut self, e: &Extent) -> Result<()> {
        if e.index != self.next_extent {
            return Err(Error::protocol(format!("Extent {} out of order (expected {})", e.index, self.next_extent)));
        }
        let (_, w, hasher) = self
            .writers
            .get_mut(e.disk as usize)
            .ok_or_else(|| Error::protocol(format!("Extent for unknown disk {}", e.disk)))?;
        let data = e.verified_data()?;
        let fold = self.folds.get_mut(e.disk as usize);
        match (e.kind, data) {
            (ExtentKind::Data, Some(d)) => {
                w.write_data(e.offset, &d)?;
                if let Some(f) = fold {
                    f.add_data(e.offset, &d);
                }
            }
            _ => {
                w.write_zero(e.offset, e.len)?;
                if let Some(f) = fold {
                    f.add_zero(e.offset, e.len);
                }
            }
        }
        hasher.update(&e.offset.to_be_bytes());
        hasher.update(&e.len.to_be_bytes());
        hasher.update(&e.checksum);
        if e.kind == ExtentKind::Data {
            self.data_bytes += e.len;
        }
        self.covered_bytes += e.len;
        self.next_extent += 1;
        Ok(())
    }

    /// All extents arrived: finish the overlays (fsync), record the point durably.
    pub async fn finish(mut self, extent_count: u64, total_bytes: u64) -> Result<RecoveryPoint> {
        if extent_count != self.next_extent || total_bytes != self.covered_bytes {
            return Err(Error::protocol(format!(
                "EndCycle says {extent_count} extents / {total_bytes} bytes, received {} / {}",
                self.next_extent, self.covered_bytes
            )));
        }
        let vm = self.vm.clone();
        vm.commit_point(&mut self).await
    }
}

impl Drop for PendingApply {
    fn drop(&mut self) {
        for (name, _, _) in &self.writers {
            let _ = std::fs::remove_file(self.vm.dir.join(name));
        }
    }
}
