//! FAB-1..FAB-8 through the vault's HTTPS API.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use ferry_types::event::Event;
use ferry_types::fabric::{Cloud, Fabric, Host, Vm, VmNetwork};
use ferry_types::vault::Vault;
use ferry_types::Page;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_1_vault_create_list_get_delete() {
    let tv = start_vault().await;
    let v = create_vault(&tv.admin, "Contoso-DR").await;
    assert_eq!(v.name, "Contoso-DR");
    assert_eq!(v.region, "lab");
    let list: Vec<Vault> = tv.admin.get("/api/v1/vaults").await.expect("list");
    assert_eq!(list.len(), 1);
    let by_id: Vault = tv.admin.get(&format!("/api/v1/vaults/{}", v.id)).await.expect("get by id");
    let by_name: Vault = tv.admin.get("/api/v1/vaults/Contoso-DR").await.expect("get by name");
    assert_eq!(by_id.id, v.id);
    assert_eq!(by_name.id, v.id);

    // Duplicate name: 409 NameConflict, nothing added.
    let dup = expect_err(tv.admin.post::<_, Vault>("/api/v1/vaults", &serde_json::json!({"name": "Contoso-DR"})).await);
    assert_eq!(dup, (409, "NameConflict".to_string()));
    // Invalid names: 400 InvalidName, nothing added.
    for bad in ["", "a/b", "x".repeat(65).as_str(), "semi;colon"] {
        let e = expect_err(tv.admin.post::<_, Vault>("/api/v1/vaults", &serde_json::json!({"name": bad})).await);
        assert_eq!(e, (400, "InvalidName".to_string()), "name {bad:?}");
    }
    let list: Vec<Vault> = tv.admin.get("/api/v1/vaults").await.expect("list");
    assert_eq!(list.len(), 1);

    tv.admin.delete(&format!("/api/v1/vaults/{}", v.id)).await.expect("delete");
    let list: Vec<Vault> = tv.admin.get("/api/v1/vaults").await.expect("list");
    assert!(list.is_empty());
    let gone = expect_err(tv.admin.get::<Vault>(&format!("/api/v1/vaults/{}", v.id)).await);
    assert_eq!(gone, (404, "NotFound".to_string()));
    // The name is free again.
    create_vault(&tv.admin, "Contoso-DR").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_1_vault_with_sites_cannot_be_deleted() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    register_site(&tv, "v1", "ny", true).await;
    let e = expect_err(tv.admin.delete("/api/v1/vaults/v1").await);
    assert_eq!(e, (409, "VaultNotEmpty".to_string()));
    let list: Vec<Vault> = tv.admin.get("/api/v1/vaults").await.expect("list");
    assert_eq!(list.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_2_registration_key_refusals_have_distinct_codes() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    create_vault(&tv.admin, "v2").await;
    let clouds = inventory("ny").clouds;
    let req =
        |file: &str, friendly: &str| register_request(file, "v1", friendly, "ny.lab", SITE_VERSION, true, &clouds);

    // A fresh key registers.
    let k1 = issue_key(&tv.admin, "v1").await;
    assert_eq!(k1.info.expires_at - k1.info.issued_at, Duration::days(5));
    let ok = register_raw(&tv, &req(&k1.file, "ny")).await.expect("register");
    let fabrics: Vec<Fabric> = tv.admin.get("/api/v1/vaults/v1/replicationFabrics").await.expect("fabrics");
    assert_eq!(fabrics.len(), 1);
    assert_eq!(fabrics[0].id, ok.fabric_id);
    assert!(ok.certificate_pem.contains("BEGIN CERTIFICATE"));
    let before = snapshot(&tv.admin, "v1").await;

    let mut codes = Vec::new();
    // The same key again (another site name, so it would create a fabric): refused.
    let e = expect_err(register_raw(&tv, &req(&k1.file, "other")).await);
    assert_eq!(e.1, "RegistrationKeyAlreadyUsed");
    codes.push(e.1);

    // A revoked key.
    let k2 = issue_key(&tv.admin, "v1").await;
    tv.admin.delete(&format!("/api/v1/vaults/v1/registrationKeys/{}", k2.info.id)).await.expect("revoke");
    let e = expect_err(register_raw(&tv, &req(&k2.file, "other")).await);
    assert_eq!(e.1, "RegistrationKeyRevoked");
    codes.push(e.1);

    // A forged key: one field edited.
    let k3 = issue_key(&tv.admin, "v1").await;
    let mut wire: serde_json::Value = serde_json::from_str(&k3.file).expect("key json");
    wire["issued_at"] = serde_json::json!((Utc::now() + Duration::days(3)).format("%Y-%m-%dT%H:%M:%SZ").to_string());
    let forged = serde_json::to_string_pretty(&wire).expect("json");
    let e = expect_err(register_raw(&tv, &req(&forged, "other")).await);
    assert_eq!(e.1, "RegistrationKeyForged");
    codes.push(e.1);
    // Forged secret too.
    let mut wire: serde_json::Value = serde_json::from_str(&k3.file).expect("key json");
    wire["vault_urls"] = serde_json::json!(["https://evil.example:443"]);
    let e = expect_err(register_raw(&tv, &req(&serde_json::to_string(&wire).expect("json"), "other")).await);
    assert_eq!(e.1, "RegistrationKeyForged");

    // A key of another vault presented to v1.
    let k4 = issue_key(&tv.admin, "v2").await;
    let e = expect_err(register_raw(&tv, &req(&k4.file, "other")).await);
    assert_eq!(e.1, "RegistrationKeyOtherVault");
    codes.push(e.1);

    let mut dedup = codes.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), codes.len(), "codes are distinct: {codes:?}");

    // Nothing changed on refusal: no fabric, the keys stay unused.
    let after = snapshot(&tv.admin, "v1").await;
    let mut expected = before.clone();
    expected.0.insert("keys", before.0["keys"] + 2);
    assert_eq!(after, expected);
    let fabrics: Vec<Fabric> = tv.admin.get("/api/v1/vaults/v2/replicationFabrics").await.expect("fabrics");
    assert!(fabrics.is_empty());
    // The unused, unrevoked key k3 still works.
    register_raw(&tv, &req(&k3.file, "chi")).await.expect("k3 still valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_2_registration_key_valid_exactly_five_days() {
    // A whole second, so the key's issued_at (second precision) equals the clock.
    let t0 = Utc.with_ymd_and_hms(2030, 1, 10, 8, 0, 0).single().expect("time");
    let clock = ManualClock::at(t0);
    let c2 = clock.clone();
    let tv = start_vault_with(move |cfg| cfg.clock = c2).await;
    create_vault(&tv.admin, "v1").await;
    let clouds = inventory("ny").clouds;
    let k1 = issue_key(&tv.admin, "v1").await;
    let k2 = issue_key(&tv.admin, "v1").await;
    assert_eq!(k1.info.issued_at, t0);
    assert_eq!(k1.info.expires_at, t0 + Duration::days(5));

    // +5 days + 1 s: expired, nothing created.
    clock.set(t0 + Duration::days(5) + Duration::seconds(1));
    let before = snapshot(&tv.admin, "v1").await;
    let e = expect_err(
        register_raw(&tv, &register_request(&k1.file, "v1", "ny", "ny.lab", SITE_VERSION, true, &clouds)).await,
    );
    assert_eq!(e, (401, "RegistrationKeyExpired".to_string()));
    assert_eq!(snapshot(&tv.admin, "v1").await, before);

    // Exactly +5 days: still valid.
    clock.set(t0 + Duration::days(5));
    register_raw(&tv, &register_request(&k2.file, "v1", "ny", "ny.lab", SITE_VERSION, true, &clouds))
        .await
        .expect("valid at exactly 5 days");
    let fabrics: Vec<Fabric> = tv.admin.get("/api/v1/vaults/v1/replicationFabrics").await.expect("fabrics");
    assert_eq!(fabrics.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_3_unsynced_clouds_are_listed_but_not_synced() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let site = register_site(&tv, "v1", "ny", false).await;
    let base = "/api/v1/vaults/v1/replicationFabrics/ny";

    let clouds: Vec<Cloud> = tv.admin.get(&format!("{base}/protectionContainers")).await.expect("clouds");
    assert_eq!(clouds.len(), 2);
    assert!(clouds.iter().all(|c| !c.sync_enabled && c.host_groups.is_empty()));
    let synced: Vec<Cloud> = tv.admin.get(&format!("{base}/protectionContainers?synced=true")).await.expect("synced");
    assert!(synced.is_empty());
    let hosts: Vec<Host> = tv.admin.get(&format!("{base}/hosts")).await.expect("hosts");
    assert!(hosts.is_empty(), "hosts of unsynced clouds are not stored");
    let vms: Page<Vm> = tv.admin.get(&format!("{base}/protectableItems")).await.expect("vms");
    assert!(vms.items.is_empty());
    let hgs: Vec<serde_json::Value> = tv.admin.get(&format!("{base}/hostGroups")).await.expect("hgs");
    assert!(hgs.is_empty());

    // Turn sync on for the gold cloud: its content arrives with the next report.
    let c: Cloud = tv
        .admin
        .patch(&format!("{base}/protectionContainers/ny-gold"), &serde_json::json!({"sync_enabled": true}))
        .await
        .expect("patch");
    assert!(c.sync_enabled);
    let ack = site.report().await;
    assert_eq!(ack.synced_clouds, vec!["ny-gold".to_string()]);
    let synced: Vec<Cloud> = tv.admin.get(&format!("{base}/protectionContainers?synced=true")).await.expect("synced");
    assert_eq!(synced.len(), 1);
    assert_eq!(synced[0].id, "ny-gold");
    assert_eq!(synced[0].host_groups, vec!["ny-hg-gold".to_string()]);
    let hosts: Vec<Host> = tv.admin.get(&format!("{base}/hosts")).await.expect("hosts");
    assert_eq!(hosts.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), vec!["ny-h1"]);
    let vms: Page<Vm> = tv.admin.get(&format!("{base}/protectableItems")).await.expect("vms");
    assert_eq!(vms.items.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), vec!["ny-vm1"]);
    let unsynced: Vec<Cloud> =
        tv.admin.get(&format!("{base}/protectionContainers?synced=false")).await.expect("unsynced");
    assert_eq!(unsynced.len(), 1);
    assert_eq!(unsynced[0].id, "ny-silver");

    // Unknown cloud: 404, nothing changed.
    let e = expect_err(
        tv.admin
            .patch::<_, Cloud>(&format!("{base}/protectionContainers/nope"), &serde_json::json!({"sync_enabled": true}))
            .await,
    );
    assert_eq!(e, (404, "NotFound".to_string()));
}

async fn inventory_events(tv: &TestVault) -> Vec<String> {
    let page: Page<Event> =
        tv.admin.get("/api/v1/vaults/v1/events?kind=InventoryChanged&limit=1000").await.expect("events");
    page.items.into_iter().map(|e| e.message).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_4_inventory_changes_are_followed() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let site = register_site(&tv, "v1", "ny", true).await;
    let base = "/api/v1/vaults/v1/replicationFabrics/ny";
    let f: Fabric = tv.admin.get(base).await.expect("fabric");
    assert_eq!(f.inventory.hosts.len(), 2);
    assert_eq!(f.inventory.vms.len(), 2);
    assert_eq!(f.inventory.storage_classifications.len(), 2);
    assert_eq!(f.inventory.vm_networks[0].subnets[0].pools.len(), 1);
    let before = inventory_events(&tv).await.len();

    let mut inv = site.inventory.clone();
    // New VM on h1.
    let mut vm3 = inv.vms[0].clone();
    vm3.id = "ny-vm3".into();
    vm3.name = "ny-vm3".into();
    inv.vms.push(vm3);
    // Host h2 removed (with its VM).
    inv.hosts.retain(|h| h.id != "ny-h2");
    inv.vms.retain(|v| v.host != "ny-h2");
    // Network renamed, same id.
    inv.vm_networks[0].name = "VMNetwork1-NY-renamed".into();
    site.report_inv(&inv).await;

    let msgs = inventory_events(&tv).await;
    assert_eq!(msgs.len() - before, 4, "{msgs:?}");
    let joined = msgs.join("\n");
    assert!(joined.contains("VM ny-vm3 added"), "{joined}");
    assert!(joined.contains("Host ny-h2.lab removed"), "{joined}");
    assert!(joined.contains("VM ny-vm2 removed"), "{joined}");
    assert!(joined.contains("VM network VMNetwork1-ny renamed to VMNetwork1-NY-renamed"), "{joined}");

    let hosts: Vec<Host> = tv.admin.get(&format!("{base}/hosts")).await.expect("hosts");
    assert_eq!(hosts.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), vec!["ny-h1"]);
    let vms: Page<Vm> = tv.admin.get(&format!("{base}/protectableItems")).await.expect("vms");
    let mut ids: Vec<&str> = vms.items.iter().map(|v| v.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["ny-vm1", "ny-vm3"]);
    let nets: Vec<VmNetwork> = tv.admin.get(&format!("{base}/vmNetworks")).await.expect("nets");
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].id, "ny-vmnet1");
    assert_eq!(nets[0].name, "VMNetwork1-NY-renamed");

    // The same report again changes nothing.
    site.report_inv(&inv).await;
    assert_eq!(inventory_events(&tv).await.len(), msgs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_4_protectable_items_paginate() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let site = register_site(&tv, "v1", "ny", true).await;
    let mut inv = site.inventory.clone();
    for n in 0..25 {
        let mut vm = inv.vms[0].clone();
        vm.id = format!("ny-extra-{n:02}");
        vm.name = vm.id.clone();
        inv.vms.push(vm);
    }
    site.report_inv(&inv).await;
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/api/v1/vaults/v1/replicationFabrics/ny/protectableItems?limit=10&cursor={c}"),
            None => "/api/v1/vaults/v1/replicationFabrics/ny/protectableItems?limit=10".to_string(),
        };
        let page: Page<Vm> = tv.admin.get(&url).await.expect("page");
        assert!(page.items.len() <= 10);
        all.extend(page.items.into_iter().map(|v| v.id));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(all.len(), 27);
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 27);
}

fn pair_body(src: serde_json::Value, tgt: serde_json::Value, policy: uuid::Uuid) -> serde_json::Value {
    serde_json::json!({"source": src, "target": tgt, "policy": policy})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_5_fab_7_pairing_errors_are_precise_and_change_nothing() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (_l1, _) = ny.spawn_loop();
    let (_l2, _) = chi.spawn_loop();
    let (policy, job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    wait_status(&tv.admin, "v1", job, ferry_types::job::JobStatus::Succeeded, 20).await;
    let pairs_url = "/api/v1/vaults/v1/replicationProtectionContainerMappings";

    // Turn the chi silver cloud's sync off (it is not paired).
    let _: Cloud = tv
        .admin
        .patch(
            "/api/v1/vaults/v1/replicationFabrics/chi/protectionContainers/chi-silver",
            &serde_json::json!({"sync_enabled": false}),
        )
        .await
        .expect("sync off");
    // A paired cloud's sync cannot be turned off.
    let e = expect_err(
        tv.admin
            .patch::<_, Cloud>(
                "/api/v1/vaults/v1/replicationFabrics/ny/protectionContainers/ny-gold",
                &serde_json::json!({"sync_enabled": false}),
            )
            .await,
    );
    assert_eq!(e, (409, "CloudInUse".to_string()));

    // ny silver has no VM any more.
    let mut inv = ny.inventory.clone();
    inv.vms.retain(|v| v.host != "ny-h2");
    ny.report_inv(&inv).await;

    let before = snapshot(&tv.admin, "v1").await;
    let cases = [
        ("unsynced target cloud", pair_body(ny.cloud("ny-silver"), chi.cloud("chi-silver"), policy), "CloudNotSynced"),
        ("source already paired", pair_body(ny.cloud("ny-gold"), ny.cloud("ny-silver"), policy), "CloudAlreadyPaired"),
        (
            "target already paired",
            pair_body(chi.cloud("chi-gold"), ny.cloud("ny-silver"), policy),
            "CloudAlreadyPaired",
        ),
        ("same cloud", pair_body(ny.cloud("ny-silver"), ny.cloud("ny-silver"), policy), "SameSourceAndTargetCloud"),
        (
            "same-site target already paired",
            pair_body(ny.cloud("ny-silver"), ny.cloud("ny-gold"), policy),
            "CloudAlreadyPaired",
        ),
        ("unknown cloud", pair_body(ny.cloud("nope"), chi.cloud("chi-silver"), policy), "CloudNotFound"),
    ];
    for (what, body, code) in cases {
        let e = expect_err(tv.admin.post::<_, serde_json::Value>(pairs_url, &body).await);
        assert_eq!(e, (400, code.to_string()), "{what}");
    }
    // No VMs: turn chi silver on again and pair the VM-less ny silver with it.
    let _: Cloud = tv
        .admin
        .patch(
            "/api/v1/vaults/v1/replicationFabrics/chi/protectionContainers/chi-silver",
            &serde_json::json!({"sync_enabled": true}),
        )
        .await
        .expect("sync on");
    chi.report().await;
    let e = expect_err(
        tv.admin
            .post::<_, serde_json::Value>(pairs_url, &pair_body(ny.cloud("ny-silver"), chi.cloud("chi-silver"), policy))
            .await,
    );
    assert_eq!(e, (400, "NoVmsToProtect".to_string()));
    // Unknown policy and unknown site: 404.
    let e = expect_err(
        tv.admin
            .post::<_, serde_json::Value>(
                pairs_url,
                &pair_body(ny.cloud("ny-silver"), chi.cloud("chi-silver"), uuid::Uuid::new_v4()),
            )
            .await,
    );
    assert_eq!(e, (404, "NotFound".to_string()));
    assert_eq!(snapshot(&tv.admin, "v1").await, before);

    // With the VM back, the same pair is accepted.
    ny.report().await;
    let created: serde_json::Value = tv
        .admin
        .post(pairs_url, &pair_body(ny.cloud("ny-silver"), chi.cloud("chi-silver"), policy))
        .await
        .expect("pair");
    assert!(created["mapping"]["id"].is_string());
    let pairs: Vec<serde_json::Value> = tv.admin.get(pairs_url).await.expect("pairs");
    assert_eq!(pairs.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_5_single_site_pairs_two_of_its_clouds() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let ny = register_site(&tv, "v1", "ny", true).await;
    let created: serde_json::Value =
        tv.admin.post("/api/v1/vaults/v1/replicationPolicies", &policy_json("p")).await.expect("policy");
    let policy: uuid::Uuid = serde_json::from_value(created["policy"]["id"].clone()).expect("id");
    let pairs_url = "/api/v1/vaults/v1/replicationProtectionContainerMappings";
    let e = expect_err(
        tv.admin
            .post::<_, serde_json::Value>(pairs_url, &pair_body(ny.cloud("ny-gold"), ny.cloud("ny-gold"), policy))
            .await,
    );
    assert_eq!(e, (400, "SameSourceAndTargetCloud".to_string()));
    let _: serde_json::Value = tv
        .admin
        .post(pairs_url, &pair_body(ny.cloud("ny-gold"), ny.cloud("ny-silver"), policy))
        .await
        .expect("same-site pair");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fab_8_second_provider_joins_same_version_only() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let first = register_site(&tv, "v1", "ny", true).await;
    let clouds = first.inventory.clouds.clone();

    // A key not issued for the site cannot add an instance of it (it would take the site over):
    // refused, the key stays unused, nothing changes.
    let before = snapshot(&tv.admin, "v1").await;
    let stray = issue_key(&tv.admin, "v1").await;
    let e = expect_err(
        register_raw(&tv, &register_request(&stray.file, "v1", "ny", "ny-node2.lab", SITE_VERSION, true, &clouds))
            .await,
    );
    assert_eq!(e, (409, "SiteAlreadyRegistered".to_string()));
    let mut expected = before.clone();
    expected.0.insert("keys", before.0["keys"] + 1);
    assert_eq!(snapshot(&tv.admin, "v1").await, expected, "nothing changed but the new key");
    // A key issued for the site cannot register another site either.
    let for_ny = issue_key_for(&tv.admin, "v1", "ny").await;
    let e = expect_err(
        register_raw(&tv, &register_request(&for_ny.file, "v1", "other", "other.lab", SITE_VERSION, true, &clouds))
            .await,
    );
    assert_eq!(e, (409, "RegistrationKeyForAnotherSite".to_string()));
    assert_eq!(
        expect_err(
            tv.admin
                .post::<_, ferry_vault::api::vaults::IssuedKey>(
                    "/api/v1/vaults/v1/registrationKeys",
                    &serde_json::json!({"site": "nowhere"})
                )
                .await
        )
        .0,
        404
    );

    // Another instance (other server name) of the same site, same version, with a key issued for
    // it: joins the fabric.
    let k = for_ny;
    let second = register_raw(&tv, &register_request(&k.file, "v1", "ny", "ny-node2.lab", SITE_VERSION, true, &clouds))
        .await
        .expect("second provider");
    assert_eq!(second.fabric_id, first.fabric_id);
    assert_ne!(second.provider_id, first.provider_id);
    let fabrics: Vec<Fabric> = tv.admin.get("/api/v1/vaults/v1/replicationFabrics").await.expect("fabrics");
    assert_eq!(fabrics.len(), 1);
    let providers = &fabrics[0].providers;
    assert_eq!(providers.len(), 2);
    assert!(providers.iter().any(|p| p.server_name == "ny.lab" && p.active));
    assert!(providers.iter().any(|p| p.server_name == "ny-node2.lab" && !p.active));
    // Only the active instance is handed the site's commands; the standby is told why.
    let standby = tv.client(Some(&second.site_token));
    let e = expect_err(
        standby
            .get::<Vec<serde_json::Value>>(&format!("/api/v1/agent/commands?wait=0&provider={}", second.provider_id))
            .await,
    );
    assert_eq!(e, (409, "NotActiveProvider".to_string()));
    let _: Vec<serde_json::Value> = first
        .client
        .get(&format!("/api/v1/agent/commands?wait=0&provider={}", first.provider_id))
        .await
        .expect("the active instance fetches commands");

    // A third instance with another version: refused, the key stays unused, nothing changes.
    let before = snapshot(&tv.admin, "v1").await;
    let k3 = issue_key_for(&tv.admin, "v1", "ny").await;
    let e = expect_err(
        register_raw(&tv, &register_request(&k3.file, "v1", "ny", "ny-node3.lab", "0.2.0", true, &clouds)).await,
    );
    assert_eq!(e, (409, "ProviderVersionMismatch".to_string()));
    let after = snapshot(&tv.admin, "v1").await;
    let mut expected = before.clone();
    expected.0.insert("keys", before.0["keys"] + 1);
    assert_eq!(after, expected);
    let fabrics: Vec<Fabric> = tv.admin.get("/api/v1/vaults/v1/replicationFabrics").await.expect("fabrics");
    assert_eq!(fabrics[0].providers.len(), 2);
}
