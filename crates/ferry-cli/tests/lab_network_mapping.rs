//! NET-2: replica NICs follow the network mappings, also for VMs already protected: mapping a
//! network connects their planned NICs (NET-3 subnet, NET-4 address), removing it disconnects.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

#[test]
fn net_2_mapping_changes_update_existing_replicas() {
    let lab = Lab::start(LabOptions::default());
    common::guest_vm(&lab, "nm1", 8, Some("10.11.0.60"));
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "nm1");
    let it = lab.json(&["item-show", &id]);
    assert!(it["nics"][0]["target_network"].is_null(), "unmapped: disconnected: {it}");

    let m = common::map_network1(&lab);
    let chicago = lab.json(&["network-list", "--site", "VMM-Chicago"]);
    let net1 = chicago
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "VMNetwork1-Chicago"))
        .map(|n| n["id"].clone())
        .expect("VMNetwork1-Chicago");
    let it = lab.json(&["item-show", &id]);
    assert_eq!(it["nics"][0]["target_network"], net1, "mapped now: {it}");
    assert_eq!(it["nics"][0]["subnet"], "Subnet1", "NET-3");
    assert_eq!(it["nics"][0]["ip"], "10.21.0.10", "NET-4: an address of the target pool");

    let mapping = m["id"].as_str().expect("mapping id");
    lab.json(&["network-map-delete", mapping]);
    // Events name what was unmapped, not ids.
    let ev = common::events_of(&lab, "NetworkUnmapped", mapping);
    assert_eq!(ev[0]["message"], "VM network VMNetwork1-NewYork no longer mapped to VMNetwork1-Chicago", "{ev:?}");
    let it = lab.wait_for("the NIC plan to drop the network", Duration::from_secs(10), || {
        let it = lab.json(&["item-show", &id]);
        it["nics"][0]["target_network"].is_null().then_some(it)
    });
    assert!(it["nics"][0]["ip"].is_null(), "{it}");

    // Tables name both ends of a mapping and the cloud pairs, not their ids.
    let (code, table, err) = lab.cli(&[
        "network-map-create",
        "--source",
        "VMM-NewYork/VMNetwork1-NewYork",
        "--target",
        "VMM-Chicago/VMNetwork1-Chicago",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("VMM-NewYork/VMNetwork1-NewYork") && table.contains("VMM-Chicago/VMNetwork1-Chicago"),
        "{table}"
    );
    let (_, avail, _) = lab.cli(&["network-map-availability"]);
    assert!(avail.contains("GoldCloud1 → GoldCloud2") && avail.contains("VMM-Chicago/VMNetwork1-Chicago"), "{avail}");

    let sm =
        lab.json(&["storage-map-create", "--source", "VMM-NewYork/SILVER", "--target", "VMM-Chicago/SILVER_TARGET"]);
    let smid = sm["id"].as_str().expect("storage mapping id");
    lab.json(&["storage-map-delete", smid]);
    let ev = common::events_of(&lab, "StorageUnmapped", smid);
    assert_eq!(ev[0]["message"], "Storage classification SILVER no longer mapped to SILVER_TARGET", "{ev:?}");
}
