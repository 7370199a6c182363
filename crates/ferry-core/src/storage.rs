//! Storage classification mapping (STO-1, STO-4) and replica placement (STO-2, STO-3).
//!
//! A disk stored under source classification S replicates into a location of the classification
//! S is mapped to on the target site. The locations a host can use are its own plus the shared
//! locations of its host group (a shared filesystem is visible from every host of the group).
//! Among mapped locations with room, the one with the most free space wins. With no mapping, or
//! no mapped location with room, the disk goes to the host's default replica location. A replica
//! VM goes to the candidate host (already filtered by NET-5) that holds all its disks, preferring
//! hosts that put more disks into mapped storage, then more free space.

use std::collections::HashMap;

use ferry_types::fabric::{Cloud, Host, SiteInventory, StorageLocation, Vm, VmDisk};
use ferry_types::mapping::{CreateStorageMapping, SiteObjectRef, StorageMapping};
use uuid::Uuid;

use crate::error::{Error, ObjectKind};

/// STO-1: both classifications exist, the mapping does not point at itself, and the source
/// classification has no other mapping to the same target site. One site manager may map
/// between two of its own classifications.
pub fn validate_storage_mapping(
    req: &CreateStorageMapping,
    source_inv: &SiteInventory,
    target_inv: &SiteInventory,
    existing: &[StorageMapping],
) -> Result<(), Error> {
    let source = classification_name(source_inv, &req.source.id)?;
    classification_name(target_inv, &req.target.id)?;
    if req.source == req.target {
        return Err(Error::StorageMappingToItself { classification: source.to_string() });
    }
    if existing.iter().any(|m| m.source == req.source && m.target.fabric == req.target.fabric) {
        return Err(Error::StorageClassificationAlreadyMapped { classification: source.to_string() });
    }
    Ok(())
}

fn classification_name<'a>(inv: &'a SiteInventory, id: &str) -> Result<&'a str, Error> {
    inv.storage_classifications
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.name.as_str())
        .ok_or_else(|| Error::NotFound { kind: ObjectKind::StorageClassification, id: id.to_string() })
}

/// STO-4: the classification is available to at least one host group of the cloud.
pub fn check_classification_available(inv: &SiteInventory, cloud: &Cloud, classification: &str) -> Result<(), Error> {
    let available = cloud
        .host_groups
        .iter()
        .filter_map(|g| inv.host_group(g))
        .any(|g| g.storage_classifications.iter().any(|c| c == classification));
    if available {
        return Ok(());
    }
    let name = classification_name(inv, classification).unwrap_or(classification);
    Err(Error::ClassificationNotAvailable { classification: name.to_string(), cloud: cloud.name.clone() })
}

/// STO-4 for a mapping used by a cloud pair: source classification available to the source
/// cloud, target classification to the target cloud.
pub fn check_mapping_available_to_pair(
    req: &CreateStorageMapping,
    source_inv: &SiteInventory,
    source_cloud: &Cloud,
    target_inv: &SiteInventory,
    target_cloud: &Cloud,
) -> Result<(), Error> {
    check_classification_available(source_inv, source_cloud, &req.source.id)?;
    check_classification_available(target_inv, target_cloud, &req.target.id)
}

/// The target classification `source` is mapped to on `target_fabric`.
pub fn mapped_classification<'a>(
    source: &SiteObjectRef,
    target_fabric: Uuid,
    mappings: &'a [StorageMapping],
) -> Option<&'a str> {
    mappings.iter().find(|m| m.source == *source && m.target.fabric == target_fabric).map(|m| m.target.id.as_str())
}

/// Locations a host can write to: its own, then the shared ones of its host group's other hosts.
pub fn reachable_locations<'a>(inv: &'a SiteInventory, host: &'a Host) -> Vec<&'a StorageLocation> {
    let mut out: Vec<&StorageLocation> = host.storage_locations.iter().collect();
    for peer in inv.hosts.iter().filter(|h| h.host_group == host.host_group && h.id != host.id) {
        for loc in peer.storage_locations.iter().filter(|l| l.shared) {
            if !out.iter().any(|o| o.path == loc.path) {
                out.push(loc);
            }
        }
    }
    out
}

/// Why a disk landed where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementKind {
    /// A location of the mapped target classification.
    Mapped,
    /// The default replica location: the disk's classification is not mapped (or it has none).
    DefaultNoMapping,
    /// The default replica location: no mapped location is reachable with room.
    DefaultNoSuitableLocation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlacement {
    /// Disk target name, e.g. `vda`.
    pub disk: String,
    /// Storage location path the replica goes to.
    pub location: String,
    /// Target classification of that location, if any.
    pub classification: Option<String>,
    pub kind: PlacementKind,
}

/// STO-2/3: where one disk's replica goes on `host`. `reserved` holds bytes already promised on
/// each location path (other disks of the same VM).
pub fn place_disk(
    disk: &VmDisk,
    host: &Host,
    target_inv: &SiteInventory,
    source_fabric: Uuid,
    target_fabric: Uuid,
    mappings: &[StorageMapping],
    reserved: &HashMap<String, u64>,
) -> Result<DiskPlacement, Error> {
    let locations = reachable_locations(target_inv, host);
    let room = |l: &StorageLocation| l.free_bytes.saturating_sub(reserved.get(&l.path).copied().unwrap_or(0));
    let fits = |l: &StorageLocation| room(l) >= disk.virtual_size;
    let target_cls = disk.classification.as_ref().and_then(|c| {
        mapped_classification(&SiteObjectRef { fabric: source_fabric, id: c.clone() }, target_fabric, mappings)
    });
    let mut kind = PlacementKind::DefaultNoMapping;
    if let Some(cls) = target_cls {
        let mut best: Option<&StorageLocation> = None;
        for l in locations.iter().copied().filter(|l| l.classification.as_deref() == Some(cls) && fits(l)) {
            let better = match best {
                Some(b) => room(l) > room(b),
                None => true,
            };
            if better {
                best = Some(l);
            }
        }
        if let Some(l) = best {
            return Ok(placement(disk, l, PlacementKind::Mapped));
        }
        kind = PlacementKind::DefaultNoSuitableLocation;
    }
    match locations.iter().copied().find(|l| l.default_replica && fits(l)) {
        Some(l) => Ok(placement(disk, l, kind)),
        None => Err(Error::NoSuitableStorage {
            disk: disk.target.clone(),
            host: host.name.clone(),
            bytes: disk.virtual_size,
        }),
    }
}

fn placement(disk: &VmDisk, l: &StorageLocation, kind: PlacementKind) -> DiskPlacement {
    DiskPlacement {
        disk: disk.target.clone(),
        location: l.path.clone(),
        classification: l.classification.clone(),
        kind,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlacement {
    pub host: String,
    pub disks: Vec<DiskPlacement>,
}

/// STO-2/3 with NET-5: the host (among `candidates`) and locations for every replicated disk.
pub fn place_vm(
    vm: &Vm,
    candidates: &[&Host],
    target_inv: &SiteInventory,
    source_fabric: Uuid,
    target_fabric: Uuid,
    mappings: &[StorageMapping],
) -> Result<VmPlacement, Error> {
    let mut best: Option<((usize, u64), VmPlacement)> = None;
    for host in candidates {
        let Some(disks) = place_all(vm, host, target_inv, source_fabric, target_fabric, mappings) else {
            continue;
        };
        let mapped = disks.iter().filter(|d| d.kind == PlacementKind::Mapped).count();
        let free: u64 = reachable_locations(target_inv, host).iter().map(|l| l.free_bytes).sum();
        let score = (mapped, free);
        let better = match &best {
            Some((s, _)) => score > *s,
            None => true,
        };
        if better {
            best = Some((score, VmPlacement { host: host.id.clone(), disks }));
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| Error::NoTargetHost { vm: vm.name.clone() })
}

fn place_all(
    vm: &Vm,
    host: &Host,
    inv: &SiteInventory,
    source_fabric: Uuid,
    target_fabric: Uuid,
    mappings: &[StorageMapping],
) -> Option<Vec<DiskPlacement>> {
    let mut reserved: HashMap<String, u64> = HashMap::new();
    let mut out = Vec::new();
    for disk in vm.disks.iter().filter(|d| !d.excluded) {
        let p = place_disk(disk, host, inv, source_fabric, target_fabric, mappings, &reserved).ok()?;
        *reserved.entry(p.location.clone()).or_insert(0) += disk.virtual_size;
        out.push(p);
    }
    Some(out)
}
