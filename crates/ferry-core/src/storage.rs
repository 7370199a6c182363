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
use ferry_types::mapping::{ContainerMapping, CreateStorageMapping, SiteObjectRef, StorageMapping};
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

/// STO-4 for a new mapping: when cloud pairs exist from the mapping's source site to its target
/// site, at least one of them can use it (`check_mapping_available_to_pair`). Without such a
/// pair there is no cloud to check yet (as for network mappings, NET-1). A refusal names the
/// classification that is missing: the target one when a paired source cloud has the source
/// classification (that pair is the one the mapping was meant for), else the source one.
pub fn check_mapping_available_to_pairs(
    req: &CreateStorageMapping,
    source_inv: &SiteInventory,
    target_inv: &SiteInventory,
    pairs: &[ContainerMapping],
) -> Result<(), Error> {
    let mut source_missing = None;
    let mut target_missing = None;
    for p in pairs.iter().filter(|p| p.source.fabric == req.source.fabric && p.target.fabric == req.target.fabric) {
        let (Some(source_cloud), Some(target_cloud)) = (source_inv.cloud(&p.source.id), target_inv.cloud(&p.target.id))
        else {
            continue;
        };
        match check_mapping_available_to_pair(req, source_inv, source_cloud, target_inv, target_cloud) {
            Ok(()) => return Ok(()),
            Err(e) if check_classification_available(source_inv, source_cloud, &req.source.id).is_ok() => {
                target_missing.get_or_insert(e);
            }
            Err(e) => {
                source_missing.get_or_insert(e);
            }
        }
    }
    match target_missing.or(source_missing) {
        Some(e) => Err(e),
        None => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ferry_types::fabric::{HostGroup, StorageClassification};

    const NY: Uuid = Uuid::from_u128(1);
    const CHI: Uuid = Uuid::from_u128(2);

    fn r(fabric: Uuid, id: &str) -> SiteObjectRef {
        SiteObjectRef { fabric, id: id.into() }
    }

    /// A site with clouds `<prefix>Gold` (group classifications `gold`) and `<prefix>Silver`
    /// (`silver`); every classification of both lists exists.
    fn site(prefix: &str, gold: &[&str], silver: &[&str]) -> SiteInventory {
        let group = |id: &str, cls: &[&str]| HostGroup {
            id: id.into(),
            name: id.into(),
            storage_classifications: cls.iter().map(|c| c.to_string()).collect(),
        };
        let cloud = |id: &str, hg: &str| Cloud {
            id: id.into(),
            name: id.into(),
            host_groups: vec![hg.into()],
            sync_enabled: true,
        };
        let mut names: Vec<&str> = gold.iter().chain(silver).copied().collect();
        names.sort();
        names.dedup();
        SiteInventory {
            clouds: vec![cloud(&format!("{prefix}Gold"), "HG-Gold"), cloud(&format!("{prefix}Silver"), "HG-Silver")],
            host_groups: vec![group("HG-Gold", gold), group("HG-Silver", silver)],
            storage_classifications: names
                .into_iter()
                .map(|n| StorageClassification { id: n.into(), name: n.into(), kind: "local".into() })
                .collect(),
            ..Default::default()
        }
    }

    fn pair(source: &str, target: &str) -> ContainerMapping {
        ContainerMapping {
            id: Uuid::new_v4(),
            source: r(NY, source),
            target: r(CHI, target),
            policy: Uuid::from_u128(9),
            created_at: Utc::now(),
        }
    }

    fn req(source: &str, target: &str) -> CreateStorageMapping {
        CreateStorageMapping { source: r(NY, source), target: r(CHI, target) }
    }

    fn not_available(classification: &str, cloud: &str) -> Result<(), Error> {
        Err(Error::ClassificationNotAvailable { classification: classification.into(), cloud: cloud.into() })
    }

    #[test]
    fn sto_4_mapping_needs_one_pair_that_can_use_it() {
        let ny = site("NY", &["GOLD"], &["SILVER"]);
        let chi = site("CHI", &["GOLD_T"], &["SILVER_T", "OTHER_T"]);
        let pairs = [pair("NYGold", "CHIGold"), pair("NYSilver", "CHISilver")];
        // Each mapping is usable by one of the two pairs.
        assert_eq!(check_mapping_available_to_pairs(&req("GOLD", "GOLD_T"), &ny, &chi, &pairs), Ok(()));
        assert_eq!(check_mapping_available_to_pairs(&req("SILVER", "SILVER_T"), &ny, &chi, &pairs), Ok(()));
        // GOLD is in the gold pair's source cloud, SILVER_T not in its target cloud: the target
        // classification is the one named, with the cloud of the pair the mapping was meant for.
        assert_eq!(
            check_mapping_available_to_pairs(&req("GOLD", "SILVER_T"), &ny, &chi, &pairs),
            not_available("SILVER_T", "CHIGold")
        );
        // No paired source cloud has the source classification.
        let ny_more = site("NY", &["GOLD"], &["SILVER", "BRONZE"]);
        assert_eq!(
            check_mapping_available_to_pairs(&req("BRONZE", "GOLD_T"), &ny_more, &chi, &pairs[..1]),
            not_available("BRONZE", "NYGold")
        );
        // Pairs of other sites do not count; without a pair between the two sites there is no
        // cloud to check yet.
        let mut reverse = pair("NYGold", "CHIGold");
        reverse.source.fabric = CHI;
        reverse.target.fabric = NY;
        assert_eq!(check_mapping_available_to_pairs(&req("GOLD", "SILVER_T"), &ny, &chi, &[reverse]), Ok(()));
        assert_eq!(check_mapping_available_to_pairs(&req("GOLD", "SILVER_T"), &ny, &chi, &[]), Ok(()));
    }
}
