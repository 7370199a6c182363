//! POL-1..POL-9 through the vault's HTTPS API: every invalid value is refused with the core's
//! error code and changes nothing; updates are versioned and applied to every pair.

mod common;

use chrono::{Duration, SecondsFormat, Utc};
use common::*;
use ferry_types::job::{Job, JobStatus};
use ferry_types::policy::Policy;
use ferry_types::site_protocol::SiteCommand;

const POLICIES: &str = "/api/v1/vaults/v1/replicationPolicies";

async fn policies(tv: &TestVault) -> Vec<Policy> {
    tv.admin.get(POLICIES).await.expect("policies")
}

/// Create `body`; it must be refused with 400 `code`, and the policy list must not change.
async fn refused(tv: &TestVault, body: serde_json::Value, code: &str) {
    let before = policies(tv).await;
    let e = expect_err(tv.admin.post::<_, serde_json::Value>(POLICIES, &body).await);
    assert_eq!(e, (400, code.to_string()), "body {body}");
    let after = policies(tv).await;
    assert_eq!(
        before.iter().map(|p| (p.id, p.version)).collect::<Vec<_>>(),
        after.iter().map(|p| (p.id, p.version)).collect::<Vec<_>>()
    );
}

async fn vault_with_policy() -> TestVault {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let _: serde_json::Value = tv.admin.post(POLICIES, &policy_json("existing")).await.expect("valid policy");
    tv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_1_policy_created_with_every_field() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    let created: serde_json::Value = tv.admin.post(POLICIES, &policy_json("gold")).await.expect("create");
    let p: Policy = serde_json::from_value(created["policy"].clone()).expect("policy");
    assert_eq!(p.spec, policy_spec("gold"));
    assert_eq!(p.version, 1);
    let got: Policy = tv.admin.get(&format!("{POLICIES}/gold")).await.expect("get by name");
    assert_eq!(got.id, p.id);
    assert_eq!(got.spec.effective_port(), 8084);
    // Duplicate name: 409.
    let r = tv.admin.post::<_, serde_json::Value>(POLICIES, &policy_json("gold")).await;
    let message = match &r {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    assert_eq!(expect_err(r), (409, "NameConflict".to_string()));
    assert!(message.contains("A replication policy named 'gold' exists already"), "{message}");
    refused(
        &tv,
        serde_json::json!({"name": "x", "host_version": "", "copy_frequency_secs": 300}),
        "PolicyInvalidHostVersion",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_1_host_version_must_match_paired_hosts() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let mut body = policy_json("qemu8");
    body["host_version"] = "qemu-8.0".into();
    body["associate"] = serde_json::json!([{"source": ny.cloud("ny-gold"), "target": chi.cloud("chi-gold")}]);
    refused(&tv, body, "HostVersionMismatch").await;
    let pairs: Vec<serde_json::Value> =
        tv.admin.get("/api/v1/vaults/v1/replicationProtectionContainerMappings").await.expect("pairs");
    assert!(pairs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_2_kerberos_without_realm_is_refused() {
    let tv = vault_with_policy().await;
    let mut b = policy_json("k");
    b["authentication"] = "Kerberos".into();
    refused(&tv, b, "KerberosRealmNotConfigured").await;
    let mut b = policy_json("port0");
    b["port"] = 0.into();
    refused(&tv, b, "PolicyInvalidPort").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_3_copy_frequency_is_30_300_or_900() {
    let tv = vault_with_policy().await;
    for bad in [0, 31, 60, 301, 3600] {
        let mut b = policy_json(&format!("f{bad}"));
        b["copy_frequency_secs"] = bad.into();
        refused(&tv, b, "PolicyInvalidCopyFrequency").await;
    }
    for ok in [30, 300, 900] {
        let mut b = policy_json(&format!("f{ok}"));
        b["copy_frequency_secs"] = ok.into();
        let _: serde_json::Value = tv.admin.post(POLICIES, &b).await.expect("valid frequency");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_4_retention_is_0_to_24_hours() {
    let tv = vault_with_policy().await;
    let mut b = policy_json("r25");
    b["recovery_point_retention_hours"] = 25.into();
    b["app_consistent_frequency_hours"] = serde_json::Value::Null;
    refused(&tv, b, "PolicyInvalidRetention").await;
    for ok in [0, 24] {
        let mut b = policy_json(&format!("r{ok}"));
        b["recovery_point_retention_hours"] = ok.into();
        b.as_object_mut().expect("obj").remove("app_consistent_frequency_hours");
        let _: serde_json::Value = tv.admin.post(POLICIES, &b).await.expect("valid retention");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_5_app_consistent_frequency_below_retained_points() {
    let tv = vault_with_policy().await;
    let mut b = policy_json("a4");
    b["recovery_point_retention_hours"] = 4.into();
    b["app_consistent_frequency_hours"] = 4.into();
    refused(&tv, b.clone(), "PolicyAppConsistentFrequencyNotBelowRetention").await;
    b["app_consistent_frequency_hours"] = 5.into();
    refused(&tv, b.clone(), "PolicyAppConsistentFrequencyNotBelowRetention").await;
    b["recovery_point_retention_hours"] = 24.into();
    b["app_consistent_frequency_hours"] = 13.into();
    refused(&tv, b.clone(), "PolicyInvalidAppConsistentFrequency").await;
    b["app_consistent_frequency_hours"] = 0.into();
    refused(&tv, b.clone(), "PolicyInvalidAppConsistentFrequency").await;
    b["recovery_point_retention_hours"] = 4.into();
    b["app_consistent_frequency_hours"] = 3.into();
    let _: serde_json::Value = tv.admin.post(POLICIES, &b).await.expect("3 < 4 is valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_8_schedule_at_most_7_days_ahead() {
    let tv = vault_with_policy().await;
    let at = |d: Duration| (Utc::now() + d).to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut b = policy_json("s8");
    b["initial_replication"] = serde_json::json!({"method": "OverNetworkScheduled", "start_at": at(Duration::days(8))});
    refused(&tv, b, "PolicyScheduleTooFar").await;
    let mut b = policy_json("past");
    b["initial_replication"] =
        serde_json::json!({"method": "OverNetworkScheduled", "start_at": at(-Duration::hours(1))});
    refused(&tv, b, "PolicyScheduleInPast").await;
    let mut b = policy_json("s6");
    b["initial_replication"] = serde_json::json!({"method": "OverNetworkScheduled", "start_at": at(Duration::days(6))});
    let _: serde_json::Value = tv.admin.post(POLICIES, &b).await.expect("6 days ahead is valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_8_offline_paths_are_absolute_without_traversal_and_off_replication_hosts() {
    let tv = start_vault().await;
    create_vault(&tv.admin, "v1").await;
    register_site(&tv, "v1", "ny", true).await;
    let offline = |export: &str, import: &str| {
        let mut b = policy_json("off");
        b["initial_replication"] =
            serde_json::json!({"method": "Offline", "export_path": export, "import_path": import});
        b
    };
    refused(&tv, offline("exports/vm1", "/mnt/import"), "PathNotAbsolute").await;
    refused(&tv, offline("/mnt/export", "import"), "PathNotAbsolute").await;
    refused(&tv, offline("/mnt/export/../../etc", "/mnt/import"), "PathTraversal").await;
    refused(&tv, offline("/mnt/export", "/mnt/import/.."), "PathTraversal").await;
    refused(&tv, offline("/var/lib/ferry/ny/h1/export", "/mnt/import"), "PathOnReplicationHost").await;
    refused(&tv, offline("/mnt/export", "/var/lib/ferry/ny/h2"), "PathOnReplicationHost").await;
    refused(&tv, offline("", "/mnt/import"), "PathEmpty").await;
    let _: serde_json::Value =
        tv.admin.post(POLICIES, &offline("/mnt/usb/export", "/mnt/usb/import")).await.expect("valid offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_9_update_with_stale_if_match_is_refused() {
    let tv = vault_with_policy().await;
    let p: Policy = tv.admin.get(&format!("{POLICIES}/existing")).await.expect("get");
    let path = format!("{POLICIES}/{}", p.id);
    let mut spec = policy_json("existing");
    spec["compression"] = false.into();
    let body = serde_json::to_vec(&spec).expect("json");
    let put = |v: &'static str| {
        let body = body.clone();
        let (tv, path) = (&tv, path.clone());
        async move {
            raw_request(
                tv,
                reqwest::Method::PUT,
                &path,
                Some(&tv.admin_token),
                &[("if-match", v)],
                Some(("application/json", body)),
            )
            .await
        }
    };
    let (status, updated) = put("1").await;
    assert_eq!(status, 202, "{updated}");
    assert_eq!(updated["policy"]["version"], 2);
    assert!(updated["job"].is_null(), "no pairs, no job");
    // Version 1 is stale now.
    let (status, e) = put("1").await;
    assert_eq!(status, 412, "{e}");
    assert_eq!(e["code"], "VersionMismatch");
    let (status, e) = put("\"abc\"").await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["code"], "InvalidHeader");
    let got: Policy = tv.admin.get(&path).await.expect("get");
    assert_eq!(got.version, 2);
    assert!(!got.spec.compression);
    // An invalid update changes nothing.
    spec["copy_frequency_secs"] = 31.into();
    let (status, e) = raw_request(
        &tv,
        reqwest::Method::PUT,
        &path,
        Some(&tv.admin_token),
        &[("if-match", "2")],
        Some(("application/json", serde_json::to_vec(&spec).expect("json"))),
    )
    .await;
    assert_eq!((status, e["code"].as_str()), (400, Some("PolicyInvalidCopyFrequency")));
    let got: Policy = tv.admin.get(&path).await.expect("get");
    assert_eq!(got.version, 2);
    assert_eq!(got.spec.copy_frequency_secs, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pol_9_update_applies_to_every_pair_under_the_policy() {
    let tv = start_vault().await;
    let (ny, chi) = two_sites(&tv, "v1").await;
    let (_l1, ny_seen) = ny.spawn_loop();
    let (_l2, chi_seen) = chi.spawn_loop();
    let (pid, job) = policy_with_pair(&tv, "v1", "gold", &ny, &chi).await;
    let done = wait_status(&tv.admin, "v1", job, JobStatus::Succeeded, 20).await;
    assert_eq!(done.operation, "ConfigureCloudPair");
    assert_eq!(done.progress, 100);
    let p: Policy = tv.admin.get(&format!("{POLICIES}/{pid}")).await.expect("get");
    assert_eq!(p.associated_clouds, vec!["ny-gold".to_string()]);
    // A second pair under the same policy (silver clouds).
    let created: serde_json::Value = tv
        .admin
        .post(
            "/api/v1/vaults/v1/replicationProtectionContainerMappings",
            &serde_json::json!({"source": ny.cloud("ny-silver"), "target": chi.cloud("chi-silver"), "policy": pid}),
        )
        .await
        .expect("pair 2");
    let job2: uuid::Uuid = serde_json::from_value(created["job"]["id"].clone()).expect("job id");
    wait_status(&tv.admin, "v1", job2, JobStatus::Succeeded, 20).await;

    let mut spec = policy_json("gold");
    spec["copy_frequency_secs"] = 30.into();
    let (status, updated) = raw_request(
        &tv,
        reqwest::Method::PUT,
        &format!("{POLICIES}/{pid}"),
        Some(&tv.admin_token),
        &[("if-match", &p.version.to_string())],
        Some(("application/json", serde_json::to_vec(&spec).expect("json"))),
    )
    .await;
    assert_eq!(status, 202, "{updated}");
    let job: Job = serde_json::from_value(updated["job"].clone()).expect("update job");
    assert_eq!(job.operation, "UpdatePolicy");
    let new_version = updated["policy"]["version"].as_i64().expect("version");
    let done = wait_status(&tv.admin, "v1", job.id, JobStatus::Succeeded, 20).await;
    assert_eq!(done.tasks.len(), 4, "two sides of two pairs: {:?}", done.tasks);

    // Both sites received the new policy version for both pairs.
    for seen in [ny_seen, chi_seen] {
        let cmds = seen.lock().expect("lock").clone();
        let updates: Vec<_> = cmds
            .iter()
            .filter_map(|c| match &c.command {
                SiteCommand::ConfigurePair { policy_version, policy, .. } if *policy_version == new_version => {
                    Some(policy.copy_frequency_secs)
                }
                _ => None,
            })
            .collect();
        assert_eq!(updates, vec![30, 30]);
    }
    let got: Policy = tv.admin.get(&format!("{POLICIES}/{pid}")).await.expect("get");
    assert_eq!(got.spec.copy_frequency_secs, 30);
    let mut assoc = got.associated_clouds.clone();
    assoc.sort();
    assert_eq!(assoc, vec!["ny-gold".to_string(), "ny-silver".to_string()]);

    // A policy in use cannot be deleted.
    let e = expect_err(tv.admin.delete(&format!("{POLICIES}/{pid}")).await);
    assert_eq!(e, (409, "PolicyInUse".to_string()));
}
