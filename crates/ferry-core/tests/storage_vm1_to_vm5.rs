//! STO-1..STO-5 on the seed's storage example (VMM_Source → VMM_Target, VM1–VM5).

mod common;

use std::collections::HashMap;

use common::*;
use ferry_core::storage::*;
use ferry_core::{Error, ObjectKind};
use ferry_types::fabric::{Host, SiteInventory};
use ferry_types::mapping::CreateStorageMapping;

fn hosts(inv: &SiteInventory) -> Vec<&Host> {
    inv.hosts.iter().collect()
}

#[test]
fn sto_5_seed_vm1_to_vm5_table() {
    let (src, tgt, maps) = (storage_source(), storage_target(), seed_storage_mappings());
    // (VM, source storage, source classification, target location, target classification, kind)
    let rows = [
        (
            "VM1",
            "/srv/cluster/SourceVolume1",
            Some("GOLD"),
            "/srv/cluster/TargetVolume1",
            Some("GOLD_TARGET"),
            PlacementKind::Mapped,
        ),
        (
            "VM2",
            "/mnt/fileserver/SourceShare1",
            Some("GOLD"),
            "/srv/cluster/TargetVolume1",
            Some("GOLD_TARGET"),
            PlacementKind::Mapped,
        ),
        (
            "VM3",
            "/srv/cluster/SourceVolume2",
            Some("SILVER"),
            "/mnt/fileserver/TargetShare2",
            Some("SILVER_TARGET"),
            PlacementKind::Mapped,
        ),
        (
            "VM4",
            "/mnt/fileserver/SourceShare2",
            Some("SILVER"),
            "/mnt/fileserver/TargetShare2",
            Some("SILVER_TARGET"),
            PlacementKind::Mapped,
        ),
        // No mapping: the target host's default replica location.
        ("VM5", "/srv/cluster/SourceVolume3", None, "/var/lib/ferry/replicas", None, PlacementKind::DefaultNoMapping),
    ];
    for (name, src_loc, src_cls, tgt_loc, tgt_cls, kind) in rows {
        let vm = src.vm(name).expect("fixture VM");
        assert!(vm.disks[0].path.starts_with(src_loc), "{name}");
        assert_eq!(vm.disks[0].classification.as_deref(), src_cls, "{name}");
        let placed = place_vm(vm, &hosts(&tgt), &tgt, NY, CHI, &maps).expect("placement");
        assert_eq!(placed.host, "tgt-host1", "{name}");
        assert_eq!(
            placed.disks,
            vec![DiskPlacement {
                disk: "vda".into(),
                location: tgt_loc.into(),
                classification: tgt_cls.map(String::from),
                kind
            }],
            "{name}"
        );
    }
}

#[test]
fn sto_5_gold_goes_to_targetshare1_when_targetvolume1_is_full() {
    let (src, mut tgt, maps) = (storage_source(), storage_target(), seed_storage_mappings());
    tgt.hosts[0].storage_locations[0].free_bytes = 10 * GIB; // TargetVolume1 too small for 40 GiB
    let placed = place_vm(src.vm("VM1").expect("VM1"), &hosts(&tgt), &tgt, NY, CHI, &maps).expect("placement");
    assert_eq!(placed.disks[0].location, "/mnt/fileserver/TargetShare1");
    assert_eq!(placed.disks[0].classification.as_deref(), Some("GOLD_TARGET"));
}

#[test]
fn sto_3_disks_of_one_vm_share_free_space() {
    let (tgt, maps) = (storage_target(), seed_storage_mappings());
    let big = vm(
        "BIG",
        "src-host1",
        vec![],
        vec![
            disk("vda", "/srv/cluster/SourceVolume1/a.qcow2", Some("GOLD"), 300 * GIB),
            disk("vdb", "/srv/cluster/SourceVolume1/b.qcow2", Some("GOLD"), 300 * GIB),
        ],
    );
    let placed = place_vm(&big, &hosts(&tgt), &tgt, NY, CHI, &maps).expect("placement");
    let locs: Vec<&str> = placed.disks.iter().map(|d| d.location.as_str()).collect();
    // 500 GiB volume takes the first disk; 200 GiB are left, so the second goes to the 300 GiB share.
    assert_eq!(locs, vec!["/srv/cluster/TargetVolume1", "/mnt/fileserver/TargetShare1"]);
}

#[test]
fn sto_3_mapped_classification_without_location_uses_default() {
    let (tgt, maps) = (storage_target(), seed_storage_mappings());
    let bronze = vm(
        "VM9",
        "src-host1",
        vec![],
        vec![disk("vda", "/mnt/fileserver/SourceShare3/VM9.qcow2", Some("BRONZE"), 40 * GIB)],
    );
    let placed = place_vm(&bronze, &hosts(&tgt), &tgt, NY, CHI, &maps).expect("placement");
    assert_eq!(
        placed.disks,
        vec![DiskPlacement {
            disk: "vda".into(),
            location: "/var/lib/ferry/replicas".into(),
            classification: None,
            kind: PlacementKind::DefaultNoSuitableLocation
        }]
    );
}

#[test]
fn sto_3_nothing_fits_is_an_error() {
    let (tgt, maps) = (storage_target(), seed_storage_mappings());
    let huge = disk("vda", "/srv/cluster/SourceVolume3/x.qcow2", None, 200 * GIB);
    assert_eq!(
        place_disk(&huge, &tgt.hosts[0], &tgt, NY, CHI, &maps, &HashMap::new()),
        Err(Error::NoSuitableStorage { disk: "vda".into(), host: "tgt-host1".into(), bytes: 200 * GIB })
    );
    let vm_huge = vm("HUGE", "src-host1", vec![], vec![huge]);
    assert_eq!(place_vm(&vm_huge, &hosts(&tgt), &tgt, NY, CHI, &maps), Err(Error::NoTargetHost { vm: "HUGE".into() }));
}

#[test]
fn sto_2_host_reaching_mapped_storage_is_preferred() {
    let (src, mut tgt, maps) = (storage_source(), storage_target(), seed_storage_mappings());
    // A host in another group with lots of local space but no GOLD_TARGET location.
    tgt.hosts.push(host(
        "tgt-host3",
        "HG-Other",
        &[],
        vec![location("/var/lib/ferry/replicas", None, 4096 * GIB, false, true)],
    ));
    let placed = place_vm(src.vm("VM1").expect("VM1"), &hosts(&tgt), &tgt, NY, CHI, &maps).expect("placement");
    assert_eq!(placed.host, "tgt-host1");
    // Among hosts that reach it equally, more free space wins; here only tgt-host3 and tgt-host2
    // compete for VM5 (unmapped): tgt-host3 has the most.
    let candidates: Vec<&Host> = vec![&tgt.hosts[1], &tgt.hosts[2]];
    let placed = place_vm(src.vm("VM5").expect("VM5"), &candidates, &tgt, NY, CHI, &maps).expect("placement");
    assert_eq!(placed.host, "tgt-host3");
}

#[test]
fn sto_2_shared_locations_reachable_from_group_peers() {
    let tgt = storage_target();
    let peer = &tgt.hosts[1];
    let paths: Vec<&str> = reachable_locations(&tgt, peer).iter().map(|l| l.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/var/lib/ferry/replicas",
            "/srv/cluster/TargetVolume1",
            "/mnt/fileserver/TargetShare1",
            "/srv/cluster/TargetVolume2",
            "/mnt/fileserver/TargetShare2",
        ]
    );
    // tgt-host2's own default location is local: a 40 GiB GOLD disk still lands on the shared volume.
    let (src, maps) = (storage_source(), seed_storage_mappings());
    let d = &src.vm("VM1").expect("VM1").disks[0];
    let placed = place_disk(d, peer, &tgt, NY, CHI, &maps, &HashMap::new()).expect("placement");
    assert_eq!(placed.location, "/srv/cluster/TargetVolume1");
}

#[test]
fn sto_2_excluded_disks_are_not_placed() {
    let (tgt, maps) = (storage_target(), seed_storage_mappings());
    let mut d2 = disk("vdb", "/srv/cluster/SourceVolume1/scratch.qcow2", Some("GOLD"), 9000 * GIB);
    d2.excluded = true;
    let v =
        vm("VMX", "src-host1", vec![], vec![disk("vda", "/srv/cluster/SourceVolume1/x.qcow2", Some("GOLD"), GIB), d2]);
    let placed = place_vm(&v, &hosts(&tgt), &tgt, NY, CHI, &maps).expect("placement");
    assert_eq!(placed.disks.iter().map(|d| d.disk.as_str()).collect::<Vec<_>>(), vec!["vda"]);
}

#[test]
fn sto_1_mapping_validation() {
    let (src, tgt) = (storage_source(), storage_target());
    let maps = seed_storage_mappings();
    let req = CreateStorageMapping { source: r(NY, "GOLD"), target: r(CHI, "GOLD_TARGET") };
    assert_eq!(validate_storage_mapping(&req, &src, &tgt, &[]), Ok(()));
    assert_eq!(
        validate_storage_mapping(&req, &src, &tgt, &maps),
        Err(Error::StorageClassificationAlreadyMapped { classification: "GOLD".into() })
    );
    let req = CreateStorageMapping { source: r(NY, "PLATINUM"), target: r(CHI, "GOLD_TARGET") };
    assert_eq!(
        validate_storage_mapping(&req, &src, &tgt, &[]),
        Err(Error::NotFound { kind: ObjectKind::StorageClassification, id: "PLATINUM".into() })
    );
    let req = CreateStorageMapping { source: r(NY, "GOLD"), target: r(CHI, "GOLD") };
    assert_eq!(
        validate_storage_mapping(&req, &src, &tgt, &[]).map_err(|e| e.code()),
        Err("StorageClassificationNotFound")
    );
}

#[test]
fn sto_1_single_site_manager_mapping() {
    let src = storage_source();
    let req = CreateStorageMapping { source: r(NY, "GOLD"), target: r(NY, "SILVER") };
    assert_eq!(validate_storage_mapping(&req, &src, &src, &[]), Ok(()));
    let req = CreateStorageMapping { source: r(NY, "GOLD"), target: r(NY, "GOLD") };
    assert_eq!(
        validate_storage_mapping(&req, &src, &src, &[]),
        Err(Error::StorageMappingToItself { classification: "GOLD".into() })
    );
}

#[test]
fn sto_4_classification_available_to_cloud_host_groups() {
    let (mut src, tgt) = (storage_source(), storage_target());
    let req = CreateStorageMapping { source: r(NY, "GOLD"), target: r(CHI, "GOLD_TARGET") };
    let (sc, tc) = (src.clouds[0].clone(), tgt.clouds[0].clone());
    assert_eq!(check_mapping_available_to_pair(&req, &src, &sc, &tgt, &tc), Ok(()));
    src.host_groups[0].storage_classifications.retain(|c| c != "GOLD");
    assert_eq!(
        check_mapping_available_to_pair(&req, &src, &sc, &tgt, &tc),
        Err(Error::ClassificationNotAvailable { classification: "GOLD".into(), cloud: "SourceCloud".into() })
    );
    assert_eq!(
        check_classification_available(&tgt, &tc, "PLATINUM_TARGET"),
        Err(Error::ClassificationNotAvailable {
            classification: "PLATINUM_TARGET".into(),
            cloud: "TargetCloud".into()
        })
    );
}

#[test]
fn sto_1_mapped_classification_lookup() {
    let maps = seed_storage_mappings();
    assert_eq!(mapped_classification(&r(NY, "SILVER"), CHI, &maps), Some("SILVER_TARGET"));
    assert_eq!(mapped_classification(&r(NY, "SILVER"), NY, &maps), None);
    assert_eq!(mapped_classification(&r(NY, "NONE"), CHI, &maps), None);
}
