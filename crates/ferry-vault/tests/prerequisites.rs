//! FAB-5 and STO-4 prerequisite checks through the vault's HTTPS API: pairing, storage mapping
//! and enabling protection refuse what the checks refuse, with a 400 and the check's stable code,
//! and create nothing.

mod common;

use common::*;
use ferry_types::fabric::SiteInventory;
use ferry_types::job::JobStatus;
use serde_json::{json, Value};

const PAIRS: &str = "/api/v1/vaults/v1/replicationProtectionContainerMappings";
const POLICIES: &str = "/api/v1/vaults/v1/replicationPolicies";
const STORAGE_MAPS: &str = "/api/v1/vaults/v1/replicationStorageClassificationMappings";
const ITEMS: &str = "/api/v1/vaults/v1/replicationProtectedItems";

/// (status, code, message) of a call that must fail.
fn refusal<T: std::fmt::Debug>(r: ferry_client::Result<T>) -> (u16, String, String) {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(ferry_client::Error::Api { status, api }) => (status, api.code, api.message),
        Err(other) => panic!("expected an API error, got {other:?}"),
    }
}

/// `inv` with host `host` reporting these versions.
fn with_versions(inv: &SiteInventory, host: &str, agent: &str, qemu: &str) -> SiteInventory {
    let mut inv = inv.clone();
    let h = inv.hosts.iter_mut().find(|h| h.id == host).expect("host");
    h.agent_version = agent.into();
    h.qemu_version = qemu.into();
    inv
}

async fn list(tv: &TestVault, url: &str) -> Vec<Value> {
    tv.admin.get(url).await.expect("list")
}

async fn items(tv: &TestVault) -> Vec<Value> {
    let page: Value = tv.admin.get(ITEMS).await.expect("items");
    page["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_5_pairing_refuses_a_cloud_whose_host_runs_unsupported_software() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let created: Value = tv.admin.post(POLICIES, &policy_json("gold")).await.expect("policy");
    let policy = created["policy"]["id"].clone();
    let pair = json!({"source": ny.cloud("ny-gold"), "target": chi.cloud("chi-gold"), "policy": policy});
    let mut with_pair = policy_json("gold2");
    with_pair["associate"] = json!([{"source": ny.cloud("ny-gold"), "target": chi.cloud("chi-gold")}]);

    let mut no_host_group = chi.inventory.clone();
    no_host_group.clouds[0].host_groups.clear();
    // (what, site, its inventory, host named in the message, code)
    let cases = [
        // The sites' managers report 0.1.0: agents must be of the 0.1 series.
        (
            "target agent of another series",
            &chi,
            with_versions(&chi.inventory, "chi-h1", "0.2.0", QEMU),
            "chi-h1.lab",
            "AgentVersionMismatch",
        ),
        (
            "source agent of another series",
            &ny,
            with_versions(&ny.inventory, "ny-h1", "1.1.0", QEMU),
            "ny-h1.lab",
            "AgentVersionMismatch",
        ),
        (
            "unparsable agent version",
            &chi,
            with_versions(&chi.inventory, "chi-h1", "dev", QEMU),
            "chi-h1.lab",
            "AgentVersionMismatch",
        ),
        // A host whose agent never reported has no versions at all.
        ("agent not joined", &chi, with_versions(&chi.inventory, "chi-h1", "", ""), "chi-h1.lab", "HostAgentNotJoined"),
        (
            "QEMU older than 7.2",
            &chi,
            with_versions(&chi.inventory, "chi-h1", AGENT, "6.2.0"),
            "chi-h1.lab",
            "UnsupportedQemuVersion",
        ),
        ("cloud without host group", &chi, no_host_group, "GoldCloud-chi", "CloudHasNoHostGroups"),
    ];
    for (what, site, inv, named, code) in cases {
        site.report_inv(&inv).await;
        let before = snapshot(&tv.admin, "v1").await;
        let (status, got, message) = refusal(tv.admin.post::<_, Value>(PAIRS, &pair).await);
        assert_eq!((status, got.as_str()), (400, code), "{what}: {message}");
        assert!(message.contains(named), "{what}: {message}");
        // Associating at policy creation is refused the same way, and creates no policy.
        let (status, got, _) = refusal(tv.admin.post::<_, Value>(POLICIES, &with_pair).await);
        assert_eq!((status, got.as_str()), (400, code), "{what} (policy)");
        assert_eq!(snapshot(&tv.admin, "v1").await, before, "{what}: nothing was created");
        assert!(list(&tv, PAIRS).await.is_empty(), "{what}");
        assert_eq!(list(&tv, POLICIES).await.len(), 1, "{what}");
        site.report().await;
    }

    // With every host back on supported software, the same pair is accepted.
    let created: Value = tv.admin.post(PAIRS, &pair).await.expect("pair");
    assert!(created["mapping"]["id"].is_string());
    assert_eq!(list(&tv, PAIRS).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sto_4_storage_mapping_refuses_a_classification_not_available_to_the_cloud() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (_l1, _) = ny.spawn_loop();
    let (_l2, _) = chi.spawn_loop();
    // Pair ny gold -> chi gold: their host groups have GOLD only (SILVER is the silver clouds').
    let (_policy, job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    wait_status(&tv.admin, "v1", job, JobStatus::Succeeded, 20).await;
    let map = |s: &str, t: &str| json!({"source": ny.cloud(s), "target": chi.cloud(t)});

    for (what, body, message_expected) in [
        (
            "source classification not in the source cloud",
            map("ny-SILVER", "chi-GOLD"),
            "Storage classification SILVER is not available to a host group of cloud GoldCloud-ny",
        ),
        (
            "target classification not in the target cloud",
            map("ny-GOLD", "chi-SILVER"),
            "Storage classification SILVER is not available to a host group of cloud GoldCloud-chi",
        ),
    ] {
        let (status, code, message) = refusal(tv.admin.post::<_, Value>(STORAGE_MAPS, &body).await);
        assert_eq!((status, code.as_str()), (400, "ClassificationNotAvailable"), "{what}: {message}");
        assert_eq!(message, message_expected, "{what}");
        assert!(list(&tv, STORAGE_MAPS).await.is_empty(), "{what}: nothing was created");
    }

    // Available on both sides: mapped.
    let _: Value = tv.admin.post(STORAGE_MAPS, &map("ny-GOLD", "chi-GOLD")).await.expect("GOLD mapped");
    assert_eq!(list(&tv, STORAGE_MAPS).await.len(), 1);
    // The event names the classifications, not their ids.
    let events: Value = tv.admin.get("/api/v1/vaults/v1/events?kind=StorageMapped").await.expect("events");
    let text = events.to_string();
    assert!(text.contains("Storage classification GOLD mapped to GOLD"), "{text}");
    // SILVER once the silver clouds are paired too.
    let created: Value = tv.admin.get(POLICIES).await.expect("policies");
    let pair =
        json!({"source": ny.cloud("ny-silver"), "target": chi.cloud("chi-silver"), "policy": created[0]["id"].clone()});
    let _: Value = tv.admin.post(PAIRS, &pair).await.expect("silver pair");
    let _: Value = tv.admin.post(STORAGE_MAPS, &map("ny-SILVER", "chi-SILVER")).await.expect("SILVER mapped");
    assert_eq!(list(&tv, STORAGE_MAPS).await.len(), 2);
}

/// Two sites, ny gold -> chi gold paired (configured), VMNetwork1 mapped.
async fn paired(tv: &TestVault) -> (FakeSite, FakeSite) {
    let (ny, chi) = two_sites(tv, "v1").await;
    let (_policy, job) = policy_with_pair(tv, "v1", "gold", &ny, &chi).await;
    let (l1, _) = ny.spawn_loop();
    let (l2, _) = chi.spawn_loop();
    wait_status(&tv.admin, "v1", job, JobStatus::Succeeded, 20).await;
    l1.abort();
    l2.abort();
    let net = json!({"source": ny.cloud("ny-vmnet1"), "target": chi.cloud("chi-vmnet1")});
    let _: Value = tv.admin.post("/api/v1/vaults/v1/replicationNetworkMappings", &net).await.expect("network map");
    (ny, chi)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_5_enable_refuses_a_source_host_outside_the_pair() {
    let tv = start_vault().await;
    let (ny, _chi) = paired(&tv).await;
    // The site reports ny-vm1 in the gold cloud, but on ny-h2, a host of the silver cloud's host
    // group: the pair GoldCloud-ny -> GoldCloud-chi does not cover that host.
    let mut inv = ny.inventory.clone();
    inv.vms[0].host = "ny-h2".into();
    ny.report_inv(&inv).await;

    let before = snapshot(&tv.admin, "v1").await;
    let (status, code, message) =
        refusal(tv.admin.post::<_, Value>(ITEMS, &json!({"source_site": "ny", "vms": ["ny-vm1"]})).await);
    assert_eq!((status, code.as_str()), (400, "HostNotInPairedClouds"), "{message}");
    assert!(message.contains("ny-h2.lab"), "{message}");
    // From the site side too.
    let (status, code, _) =
        refusal(ny.client.post::<_, Value>("/api/v1/agent/enableProtection", &json!({"vms": ["ny-vm1"]})).await);
    assert_eq!((status, code.as_str()), (400, "HostNotInPairedClouds"));
    assert_eq!(snapshot(&tv.admin, "v1").await, before, "nothing was created");
    assert!(items(&tv).await.is_empty());

    // Back on its gold host, the VM is protected.
    ny.report().await;
    let enabled: Value = tv.admin.post(ITEMS, &json!({"source_site": "ny", "vms": ["ny-vm1"]})).await.expect("enable");
    assert_eq!(enabled[0]["item"]["source"]["host"], "ny-h1");
    assert_eq!(items(&tv).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_5_enable_refuses_source_and_target_hosts_of_unsupported_software() {
    let tv = start_vault().await;
    let (ny, chi) = paired(&tv).await;
    let enable = json!({"source_site": "ny", "vms": ["ny-vm1"]});

    // Hosts changed after the pair was made: the VM's source host, or the target host placement
    // chooses (chi-h1, the only host of GoldCloud-chi).
    let cases = [
        (
            "target agent of another series",
            &chi,
            with_versions(&chi.inventory, "chi-h1", "0.2.0", QEMU),
            "chi-h1.lab",
            "AgentVersionMismatch",
        ),
        (
            "target QEMU older than 7.2",
            &chi,
            with_versions(&chi.inventory, "chi-h1", AGENT, "7.1.0"),
            "chi-h1.lab",
            "UnsupportedQemuVersion",
        ),
        (
            "target agent not joined",
            &chi,
            with_versions(&chi.inventory, "chi-h1", "", ""),
            "chi-h1.lab",
            "HostAgentNotJoined",
        ),
        (
            "source agent of another series",
            &ny,
            with_versions(&ny.inventory, "ny-h1", "0.0.9", QEMU),
            "ny-h1.lab",
            "AgentVersionMismatch",
        ),
        (
            "source QEMU older than 7.2",
            &ny,
            with_versions(&ny.inventory, "ny-h1", AGENT, "6.2.0"),
            "ny-h1.lab",
            "UnsupportedQemuVersion",
        ),
    ];
    for (what, site, inv, named, code) in cases {
        site.report_inv(&inv).await;
        let before = snapshot(&tv.admin, "v1").await;
        let (status, got, message) = refusal(tv.admin.post::<_, Value>(ITEMS, &enable).await);
        assert_eq!((status, got.as_str()), (400, code), "{what}: {message}");
        assert!(message.contains(named), "{what}: {message}");
        let (status, got, _) =
            refusal(ny.client.post::<_, Value>("/api/v1/agent/enableProtection", &json!({"vms": ["ny-vm1"]})).await);
        assert_eq!((status, got.as_str()), (400, code), "{what} (from the site)");
        assert_eq!(snapshot(&tv.admin, "v1").await, before, "{what}: nothing was created");
        assert!(items(&tv).await.is_empty(), "{what}");
        site.report().await;
    }

    let enabled: Value = tv.admin.post(ITEMS, &enable).await.expect("enable");
    assert_eq!(enabled[0]["item"]["target"]["host"], "chi-h1");
    assert_eq!(items(&tv).await.len(), 1);
}
