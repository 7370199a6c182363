//! REP-9 through the vault's HTTPS API: VMs that cannot be replicated are refused when
//! protection is enabled, with a stable code, and nothing is created.

mod common;

use common::*;
use ferry_types::fabric::VmDisk;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_9_shared_encrypted_diskless_and_oversized_vms_are_refused_and_change_nothing() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (_l1, _) = ny.spawn_loop();
    let (_l2, _) = chi.spawn_loop();
    let (_policy, job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    wait_status(&tv.admin, "v1", job, ferry_types::job::JobStatus::Succeeded, 20).await;

    let mut inv = ny.inventory.clone();
    let vm1 = inv.vms[0].clone();
    let disk = |target: &str, path: &str| VmDisk {
        target: target.into(),
        format: ferry_types::fabric::DiskFormat::Qcow2,
        path: path.into(),
        virtual_size: 1 << 30,
        classification: None,
        excluded: false,
        encrypted: false,
    };
    let like_vm1 = |name: &str, disks: Vec<VmDisk>| {
        let mut v = vm1.clone();
        v.id = format!("id-{name}");
        v.name = name.into();
        v.disks = disks;
        v.nics.clear();
        v
    };
    // Shares vm1's disk (a shared disk attached to two VMs).
    inv.vms.push(like_vm1("shares", vec![disk("vda", "/var/lib/ferry/s/own.qcow2"), vm1.disks[0].clone()]));
    let mut enc = disk("vdb", "/var/lib/ferry/s/enc.qcow2");
    enc.encrypted = true;
    inv.vms.push(like_vm1("encrypted", vec![disk("vda", "/var/lib/ferry/s/enc-vda.qcow2"), enc.clone()]));
    // The same encrypted disk excluded from replication is no obstacle.
    let mut excluded = enc.clone();
    excluded.path = "/var/lib/ferry/s/enc-excluded.qcow2".into();
    excluded.excluded = true;
    inv.vms.push(like_vm1("enc-excluded", vec![disk("vda", "/var/lib/ferry/s/ok-vda.qcow2"), excluded]));
    let mut nodisk = disk("vda", "/var/lib/ferry/s/x.qcow2");
    nodisk.excluded = true;
    inv.vms.push(like_vm1("nodisk", vec![nodisk]));
    let many: Vec<VmDisk> = (0..17).map(|i| disk(&format!("vd{i}"), &format!("/var/lib/ferry/s/m{i}.qcow2"))).collect();
    inv.vms.push(like_vm1("many", many));
    // The same local path on two hosts is two images; in a location both hosts share, one.
    let h1 = vm1.host.clone();
    let h2 = inv.hosts.iter().find(|h| h.id != h1).map(|h| h.id.clone()).expect("a second host");
    for h in [&h1, &h2] {
        let host = inv.hosts.iter_mut().find(|x| &x.id == h).expect("host");
        host.storage_locations.push(ferry_types::fabric::StorageLocation {
            path: "/srv/san".into(),
            classification: None,
            free_bytes: 1 << 40,
            total_bytes: 1 << 40,
            default_replica: false,
            shared: false,
        });
    }
    let mut on_h2 = like_vm1("local-twin", vec![disk("vda", "/srv/local/same.qcow2")]);
    on_h2.host = h2.clone();
    inv.vms.push(on_h2);
    inv.vms.push(like_vm1("local-one", vec![disk("vda", "/srv/local/same.qcow2")]));
    let mut san_a = like_vm1("san-a", vec![disk("vda", "/srv/san/disk.qcow2")]);
    san_a.host = h2.clone();
    inv.vms.push(san_a);
    inv.vms.push(like_vm1("san-b", vec![disk("vda", "/srv/san/disk.qcow2")]));
    ny.report_inv(&inv).await;

    let items = "/api/v1/vaults/v1/replicationProtectedItems";
    let before = snapshot(&tv.admin, "v1").await;
    for (vms, code) in [
        (vec!["shares"], "SharedDiskNotSupported"),
        (vec![vm1.name.as_str()], "SharedDiskNotSupported"),
        (vec!["encrypted"], "EncryptedDiskNotSupported"),
        (vec!["nodisk"], "NoDiskToReplicate"),
        (vec!["many"], "TooManyDisks"),
        // One bad VM refuses the whole request.
        (vec!["enc-excluded", "encrypted"], "EncryptedDiskNotSupported"),
    ] {
        let e =
            expect_err(tv.admin.post::<_, serde_json::Value>(items, &json!({"source_site": "ny", "vms": vms})).await);
        assert_eq!(e, (400, code.to_string()), "{vms:?}");
    }
    assert_eq!(snapshot(&tv.admin, "v1").await.0, before.0, "nothing was created");
    let listed: serde_json::Value = tv.admin.get(items).await.expect("items");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0));

    // /srv/san is not shared yet: two hosts' files of the same path are two images.
    let ok: serde_json::Value =
        tv.admin.post(items, &json!({"source_site": "ny", "vms": ["local-one", "san-b"]})).await.expect("enable");
    assert_eq!(ok.as_array().map(Vec::len), Some(2));
    // Marked shared on both hosts, the location holds one image used by two VMs.
    for h in inv.hosts.iter_mut() {
        for l in h.storage_locations.iter_mut().filter(|l| l.path == "/srv/san") {
            l.shared = true;
        }
    }
    ny.report_inv(&inv).await;
    let e =
        expect_err(tv.admin.post::<_, serde_json::Value>(items, &json!({"source_site": "ny", "vms": ["san-a"]})).await);
    assert_eq!(e, (400, "SharedDiskNotSupported".to_string()));

    // A VM whose encrypted disk is excluded can be protected.
    let ok: serde_json::Value =
        tv.admin.post(items, &json!({"source_site": "ny", "vms": ["enc-excluded"]})).await.expect("enable");
    assert_eq!(ok[0]["item"]["name"], "enc-excluded");
}
