//! The seed document's New York / Chicago example as inventories (NET-7, STO-5).
//!
//! Network part: VMM-NewYork has GoldCloud1 and SilverCloud1 on LogicalNetwork1-NewYork;
//! VMM-Chicago has GoldCloud2 and SilverCloud2 on LogicalNetwork1-Chicago, and
//! LogicalNetwork2Chicago only in GoldCloud2's host group (that is why VMNetwork2-Chicago is
//! available to GoldCloud2 and not to SilverCloud2 in the seed's "target networks" table).
//!
//! Storage part: VMM_Source with GOLD/SILVER/BRONZE, VMM_Target with GOLD_TARGET/SILVER_TARGET/
//! BRONZE_TARGET; Windows paths become Linux ones (`C:\ClusterStorage\X` → `/srv/cluster/X`,
//! `\\FileServer\X` → `/mnt/fileserver/X`).
#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use ferry_types::fabric::*;
use ferry_types::mapping::{ContainerMapping, NetworkMapping, SiteObjectRef, StorageMapping};
use uuid::Uuid;

pub const NY: Uuid = Uuid::from_u128(0x4e59_0001); // VMM-NewYork / VMM_Source
pub const CHI: Uuid = Uuid::from_u128(0x0c41_0002); // VMM-Chicago / VMM_Target
pub const GIB: u64 = 1 << 30;

pub fn r(fabric: Uuid, id: &str) -> SiteObjectRef {
    SiteObjectRef { fabric, id: id.into() }
}

fn t() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).single().expect("valid time")
}

pub fn net_map(source: SiteObjectRef, target: SiteObjectRef) -> NetworkMapping {
    NetworkMapping { id: Uuid::new_v4(), source, target, created_at: t() }
}

pub fn sto_map(source: SiteObjectRef, target: SiteObjectRef) -> StorageMapping {
    StorageMapping { id: Uuid::new_v4(), source, target, created_at: t() }
}

pub fn pair(source: SiteObjectRef, target: SiteObjectRef) -> ContainerMapping {
    ContainerMapping { id: Uuid::new_v4(), source, target, policy: Uuid::from_u128(7), created_at: t() }
}

pub fn cloud(id: &str, groups: &[&str]) -> Cloud {
    Cloud {
        id: id.into(),
        name: id.into(),
        host_groups: groups.iter().map(|g| g.to_string()).collect(),
        sync_enabled: true,
    }
}

pub fn group(id: &str, classifications: &[&str]) -> HostGroup {
    HostGroup {
        id: id.into(),
        name: id.into(),
        storage_classifications: classifications.iter().map(|c| c.to_string()).collect(),
    }
}

pub fn host(id: &str, group: &str, lns: &[&str], locations: Vec<StorageLocation>) -> Host {
    Host {
        id: id.into(),
        name: id.into(),
        host_group: group.into(),
        address: format!("{id}:8443"),
        agent_version: "0.1.0".into(),
        qemu_version: "7.2.9".into(),
        logical_networks: lns.iter().map(|l| l.to_string()).collect(),
        storage_locations: locations,
        connected: true,
        replication_address: String::new(),
        replication_addresses: Vec::new(),
    }
}

pub fn ln(id: &str, groups: &[&str]) -> LogicalNetwork {
    LogicalNetwork { id: id.into(), name: id.into(), host_groups: groups.iter().map(|g| g.to_string()).collect() }
}

pub fn subnet(name: &str, cidr: &str, start: &str, end: &str) -> Subnet {
    Subnet {
        name: name.into(),
        cidr: cidr.into(),
        gateway: None,
        pools: vec![IpPool { name: format!("{name}-pool"), start: start.into(), end: end.into() }],
    }
}

pub fn vm_net(id: &str, logical: &str, subnets: Vec<Subnet>) -> VmNetwork {
    VmNetwork { id: id.into(), name: id.into(), logical_network: logical.into(), subnets }
}

pub fn nic(mac: &str, network: Option<&str>, subnet: Option<&str>, ip: Option<&str>) -> VmNic {
    VmNic {
        mac: mac.into(),
        vm_network: network.map(String::from),
        subnet: subnet.map(String::from),
        ip: ip.map(String::from),
    }
}

pub fn vm(id: &str, host: &str, nics: Vec<VmNic>, disks: Vec<VmDisk>) -> Vm {
    Vm {
        id: id.into(),
        name: id.into(),
        host: host.into(),
        cloud: None,
        power_state: PowerState::Running,
        disks,
        nics,
        guest_agent: true,
    }
}

pub fn disk(target: &str, path: &str, classification: Option<&str>, size: u64) -> VmDisk {
    VmDisk {
        target: target.into(),
        format: DiskFormat::Qcow2,
        path: path.into(),
        virtual_size: size,
        classification: classification.map(String::from),
        excluded: false,
        encrypted: false,
    }
}

pub fn location(
    path: &str,
    classification: Option<&str>,
    free: u64,
    shared: bool,
    default_replica: bool,
) -> StorageLocation {
    StorageLocation {
        path: path.into(),
        classification: classification.map(String::from),
        free_bytes: free,
        total_bytes: free * 2,
        default_replica,
        shared,
    }
}

/// VMM-NewYork.
pub fn new_york() -> SiteInventory {
    SiteInventory {
        clouds: vec![cloud("GoldCloud1", &["HG-NY-Gold"]), cloud("SilverCloud1", &["HG-NY-Silver"])],
        host_groups: vec![group("HG-NY-Gold", &[]), group("HG-NY-Silver", &[])],
        hosts: vec![
            host("ny-gold-host", "HG-NY-Gold", &["LogicalNetwork1-NewYork"], vec![]),
            host("ny-silver-host", "HG-NY-Silver", &["LogicalNetwork1-NewYork"], vec![]),
        ],
        logical_networks: vec![ln("LogicalNetwork1-NewYork", &["HG-NY-Gold", "HG-NY-Silver"])],
        vm_networks: vec![
            vm_net(
                "VMNetwork1-NewYork",
                "LogicalNetwork1-NewYork",
                vec![
                    subnet("Subnet1", "10.1.1.0/24", "10.1.1.10", "10.1.1.99"),
                    subnet("Backend", "10.1.9.0/24", "10.1.9.10", "10.1.9.99"),
                ],
            ),
            vm_net(
                "VMNetwork2-NewYork",
                "LogicalNetwork1-NewYork",
                vec![subnet("Subnet2", "10.1.2.0/24", "10.1.2.10", "10.1.2.99")],
            ),
        ],
        storage_classifications: vec![],
        vms: vec![
            vm(
                "VM1",
                "ny-gold-host",
                vec![nic("52:54:00:00:00:01", Some("VMNetwork1-NewYork"), Some("Subnet1"), Some("10.1.1.10"))],
                vec![],
            ),
            vm(
                "VM3",
                "ny-gold-host",
                vec![nic("52:54:00:00:00:03", Some("VMNetwork2-NewYork"), Some("Subnet2"), Some("10.1.2.10"))],
                vec![],
            ),
            vm(
                "VM4",
                "ny-silver-host",
                vec![nic("52:54:00:00:00:04", Some("VMNetwork1-NewYork"), Some("Backend"), Some("10.1.9.20"))],
                vec![],
            ),
        ],
    }
}

/// VMM-Chicago.
pub fn chicago() -> SiteInventory {
    SiteInventory {
        clouds: vec![cloud("GoldCloud2", &["HG-CHI-Gold"]), cloud("SilverCloud2", &["HG-CHI-Silver"])],
        host_groups: vec![group("HG-CHI-Gold", &[]), group("HG-CHI-Silver", &[])],
        hosts: vec![
            host("chi-gold-host", "HG-CHI-Gold", &["LogicalNetwork1-Chicago", "LogicalNetwork2Chicago"], vec![]),
            host("chi-silver-host", "HG-CHI-Silver", &["LogicalNetwork1-Chicago"], vec![]),
        ],
        logical_networks: vec![
            ln("LogicalNetwork1-Chicago", &["HG-CHI-Gold", "HG-CHI-Silver"]),
            ln("LogicalNetwork2Chicago", &["HG-CHI-Gold"]),
        ],
        vm_networks: vec![
            vm_net(
                "VMNetwork1-Chicago",
                "LogicalNetwork1-Chicago",
                vec![
                    subnet("Subnet0", "10.2.0.0/24", "10.2.0.10", "10.2.0.99"),
                    subnet("Subnet1", "10.1.1.0/24", "10.1.1.10", "10.1.1.99"),
                ],
            ),
            vm_net(
                "VMNetwork2-Chicago",
                "LogicalNetwork2Chicago",
                vec![subnet("Subnet2", "10.2.2.0/24", "10.2.2.10", "10.2.2.99")],
            ),
        ],
        storage_classifications: vec![],
        vms: vec![vm(
            "VM6",
            "chi-gold-host",
            vec![nic("52:54:00:00:00:06", Some("VMNetwork2-Chicago"), Some("Subnet2"), Some("10.2.2.10"))],
            vec![],
        )],
    }
}

/// The seed's network mapping table: VMNetwork1-NewYork ⇄ VMNetwork1-Chicago; the VMNetwork2
/// networks are not mapped.
pub fn seed_network_mappings() -> Vec<NetworkMapping> {
    vec![
        net_map(r(NY, "VMNetwork1-NewYork"), r(CHI, "VMNetwork1-Chicago")),
        net_map(r(CHI, "VMNetwork1-Chicago"), r(NY, "VMNetwork1-NewYork")),
    ]
}

/// The seed's cloud protection table: GoldCloud1 → GoldCloud2, SilverCloud1 → SilverCloud2.
pub fn seed_pairs() -> Vec<ContainerMapping> {
    vec![pair(r(NY, "GoldCloud1"), r(CHI, "GoldCloud2")), pair(r(NY, "SilverCloud1"), r(CHI, "SilverCloud2"))]
}

fn classification(id: &str, kind: &str) -> StorageClassification {
    StorageClassification { id: id.into(), name: id.into(), kind: kind.into() }
}

/// VMM_Source of the storage example.
pub fn storage_source() -> SiteInventory {
    let all = ["GOLD", "SILVER", "BRONZE"];
    SiteInventory {
        clouds: vec![cloud("SourceCloud", &["HG-Source"])],
        host_groups: vec![group("HG-Source", &all)],
        hosts: vec![host(
            "src-host1",
            "HG-Source",
            &[],
            vec![
                location("/srv/cluster/SourceVolume1", Some("GOLD"), 900 * GIB, true, false),
                location("/mnt/fileserver/SourceShare1", Some("GOLD"), 900 * GIB, true, false),
                location("/srv/cluster/SourceVolume2", Some("SILVER"), 900 * GIB, true, false),
                location("/mnt/fileserver/SourceShare2", Some("SILVER"), 900 * GIB, true, false),
                location("/mnt/fileserver/SourceShare3", Some("BRONZE"), 900 * GIB, true, false),
                location("/srv/cluster/SourceVolume3", None, 900 * GIB, true, true),
            ],
        )],
        storage_classifications: vec![
            classification("GOLD", "cluster-volume"),
            classification("SILVER", "cluster-volume"),
            classification("BRONZE", "shared-fs"),
        ],
        vms: vec![
            vm(
                "VM1",
                "src-host1",
                vec![],
                vec![disk("vda", "/srv/cluster/SourceVolume1/VM1.qcow2", Some("GOLD"), 40 * GIB)],
            ),
            vm(
                "VM2",
                "src-host1",
                vec![],
                vec![disk("vda", "/mnt/fileserver/SourceShare1/VM2.qcow2", Some("GOLD"), 40 * GIB)],
            ),
            vm(
                "VM3",
                "src-host1",
                vec![],
                vec![disk("vda", "/srv/cluster/SourceVolume2/VM3.qcow2", Some("SILVER"), 40 * GIB)],
            ),
            vm(
                "VM4",
                "src-host1",
                vec![],
                vec![disk("vda", "/mnt/fileserver/SourceShare2/VM4.qcow2", Some("SILVER"), 40 * GIB)],
            ),
            vm("VM5", "src-host1", vec![], vec![disk("vda", "/srv/cluster/SourceVolume3/VM5.qcow2", None, 40 * GIB)]),
        ],
        ..Default::default()
    }
}

/// VMM_Target of the storage example: GOLD_TARGET on TargetVolume1 (most free) and
/// TargetShare1; SILVER_TARGET on TargetVolume2 and TargetShare2 (most free); BRONZE_TARGET has
/// no location. Shared locations are reported by tgt-host1 and seen by tgt-host2 (same group).
pub fn storage_target() -> SiteInventory {
    let all = ["GOLD_TARGET", "SILVER_TARGET", "BRONZE_TARGET"];
    SiteInventory {
        clouds: vec![cloud("TargetCloud", &["HG-Target"])],
        host_groups: vec![group("HG-Target", &all)],
        hosts: vec![
            host(
                "tgt-host1",
                "HG-Target",
                &[],
                vec![
                    location("/srv/cluster/TargetVolume1", Some("GOLD_TARGET"), 500 * GIB, true, false),
                    location("/mnt/fileserver/TargetShare1", Some("GOLD_TARGET"), 300 * GIB, true, false),
                    location("/srv/cluster/TargetVolume2", Some("SILVER_TARGET"), 200 * GIB, true, false),
                    location("/mnt/fileserver/TargetShare2", Some("SILVER_TARGET"), 400 * GIB, true, false),
                    location("/var/lib/ferry/replicas", None, 100 * GIB, false, true),
                ],
            ),
            host("tgt-host2", "HG-Target", &[], vec![location("/var/lib/ferry/replicas", None, 50 * GIB, false, true)]),
        ],
        storage_classifications: vec![
            classification("GOLD_TARGET", "shared-fs"),
            classification("SILVER_TARGET", "cluster-volume"),
            classification("BRONZE_TARGET", "shared-fs"),
        ],
        ..Default::default()
    }
}

/// GOLD → GOLD_TARGET, SILVER → SILVER_TARGET, BRONZE → BRONZE_TARGET.
pub fn seed_storage_mappings() -> Vec<StorageMapping> {
    vec![
        sto_map(r(NY, "GOLD"), r(CHI, "GOLD_TARGET")),
        sto_map(r(NY, "SILVER"), r(CHI, "SILVER_TARGET")),
        sto_map(r(NY, "BRONZE"), r(CHI, "BRONZE_TARGET")),
    ]
}
