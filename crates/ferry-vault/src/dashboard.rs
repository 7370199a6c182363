//! The vault overview (JOB-4): the figures the portal's dashboard and
//! `GET /api/v1/vaults/{vault}/dashboard` show.
//!
//! [`compute`] is a pure function of the vault's documents, its open and recently failed jobs and
//! its recent events at one instant, so every figure is unit-tested; [`load`] gathers those
//! inputs from the store.
//!
//! - replicated items by health (Normal / Warning / Critical / Not applicable) and the items
//!   that need attention with their reasons (JOB-2);
//! - test failover status per VM: running, tested within the last 6 months, or "test
//!   recommended" when the last test is older than 6 months or there never was one (FO-1);
//! - configuration issues: what stops protection or failover from working as configured
//!   (missing protection goal, sites not reporting, hosts disconnected, paired clouds no longer
//!   synced, replica NICs without a network mapping, replica disks without a suitable mapped
//!   location);
//! - errors by severity: Warning / Error / Critical events of the last 24 hours;
//! - jobs failed (last 24 hours), in progress (and not started) and waiting for input;
//! - the latest events.

use chrono::{DateTime, Duration, Months, Utc};
use ferry_store::DocKind;
use ferry_types::event::{Event, Severity};
use ferry_types::fabric::Fabric;
use ferry_types::job::{Job, JobFilter, JobStatus};
use ferry_types::mapping::ContainerMapping;
use ferry_types::protection::{Health, ProtectedItem};
use ferry_types::vault::Vault;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiFailure;
use crate::state::AppState;

/// How many latest events the dashboard lists.
pub const RECENT_EVENTS: usize = 10;
/// How many jobs per status the dashboard lists.
pub const LISTED_JOBS: usize = 10;
/// A test failover older than this many months is due again ("test recommended").
pub const TEST_RECOMMENDED_MONTHS: u32 = 6;
/// Most events read to count the last 24 hours (the count says when it stopped there).
pub const MAX_EVENTS_SCANNED: usize = 20_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthCounts {
    pub normal: usize,
    pub warning: usize,
    pub critical: usize,
    pub not_applicable: usize,
}

/// An item whose health is not Normal, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ItemAttention {
    pub id: Uuid,
    pub name: String,
    pub health: Health,
    pub reasons: Vec<String>,
}

/// Test failover status of one replicated VM (FO-1, JOB-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum TestStatus {
    /// A test failover VM runs now.
    Running,
    /// Tested within the last 6 months.
    Tested,
    /// Never tested, or the last test is older than 6 months.
    TestRecommended,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ItemTestStatus {
    pub id: Uuid,
    pub name: String,
    pub status: TestStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestCounts {
    pub running: usize,
    pub tested: usize,
    pub test_recommended: usize,
}

/// Something in the configuration that keeps protection or failover from working as set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConfigIssue {
    pub severity: Severity,
    /// Stable code, e.g. `SiteNotReporting`.
    pub code: String,
    pub message: String,
    /// Id of the object concerned (site, host, cloud pair, protected item), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SeverityCounts {
    pub critical: usize,
    pub error: usize,
    pub warning: usize,
    /// True when more events than the dashboard reads happened in the window (the counts are
    /// then lower bounds).
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobCounts {
    /// Failed in the last 24 hours.
    pub failed: usize,
    /// In progress or not started yet.
    pub in_progress: usize,
    pub waiting_for_input: usize,
}

/// The vault overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dashboard {
    pub generated_at: DateTime<Utc>,
    pub items: usize,
    pub health: HealthCounts,
    /// Items whose health is Warning or Critical, worst first.
    pub attention: Vec<ItemAttention>,
    pub tests: TestCounts,
    /// Per replicated VM, test-recommended first.
    pub test_status: Vec<ItemTestStatus>,
    pub config_issues: Vec<ConfigIssue>,
    /// Warning, Error and Critical events of the last 24 hours.
    pub errors: SeverityCounts,
    pub jobs: JobCounts,
    /// The latest failed, in-progress and waiting jobs (newest first, at most 10 each).
    pub failed_jobs: Vec<Job>,
    pub active_jobs: Vec<Job>,
    pub waiting_jobs: Vec<Job>,
    pub recent_events: Vec<Event>,
}

/// Everything the dashboard is computed from.
pub struct Inputs<'a> {
    pub vault: &'a Vault,
    pub items: &'a [ProtectedItem],
    pub fabrics: &'a [Fabric],
    pub pairs: &'a [ContainerMapping],
    /// Jobs not finished plus jobs failed recently (others are ignored).
    pub jobs: &'a [Job],
    /// Latest events, newest first (at least those of the last 24 hours when available).
    pub events: &'a [Event],
    /// Whether `events` stopped before reaching 24 hours back.
    pub events_truncated: bool,
    pub now: DateTime<Utc>,
    /// A site that has not reported for longer is not reporting.
    pub heartbeat_timeout: std::time::Duration,
}

/// The instant before which a test failover is due again.
pub fn test_due_before(now: DateTime<Utc>) -> DateTime<Utc> {
    now.checked_sub_months(Months::new(TEST_RECOMMENDED_MONTHS)).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Test failover status of one item at `now`.
pub fn test_status(item: &ProtectedItem, now: DateTime<Utc>) -> TestStatus {
    if item.test_failover.is_some() {
        return TestStatus::Running;
    }
    match &item.last_test_failover {
        Some(t) if t.at >= test_due_before(now) => TestStatus::Tested,
        _ => TestStatus::TestRecommended,
    }
}

/// Compute the dashboard.
pub fn compute(input: &Inputs<'_>) -> Dashboard {
    let now = input.now;
    let mut health = HealthCounts::default();
    let mut attention = Vec::new();
    for it in input.items {
        match it.health {
            Health::Normal => health.normal += 1,
            Health::Warning => health.warning += 1,
            Health::Critical => health.critical += 1,
            Health::NotApplicable => health.not_applicable += 1,
        }
        if matches!(it.health, Health::Warning | Health::Critical) {
            attention.push(ItemAttention {
                id: it.id,
                name: it.name.clone(),
                health: it.health,
                reasons: it.health_reasons.clone(),
            });
        }
    }
    attention.sort_by(|a, b| b.health.cmp(&a.health).then_with(|| a.name.cmp(&b.name)));

    let mut tests = TestCounts::default();
    let mut test_rows: Vec<ItemTestStatus> = input
        .items
        .iter()
        .map(|it| {
            let status = test_status(it, now);
            match status {
                TestStatus::Running => tests.running += 1,
                TestStatus::Tested => tests.tested += 1,
                TestStatus::TestRecommended => tests.test_recommended += 1,
            }
            ItemTestStatus {
                id: it.id,
                name: it.name.clone(),
                status,
                last_test: it.last_test_failover.as_ref().map(|t| t.at),
            }
        })
        .collect();
    let rank = |s: TestStatus| match s {
        TestStatus::TestRecommended => 0,
        TestStatus::Running => 1,
        TestStatus::Tested => 2,
    };
    test_rows.sort_by(|a, b| rank(a.status).cmp(&rank(b.status)).then_with(|| a.name.cmp(&b.name)));

    let since = now - Duration::hours(24);
    let mut jobs = JobCounts::default();
    let (mut failed_jobs, mut active_jobs, mut waiting_jobs) = (Vec::new(), Vec::new(), Vec::new());
    let mut sorted: Vec<&Job> = input.jobs.iter().collect();
    sorted.sort_by_key(|j| std::cmp::Reverse(j.created_at));
    for j in sorted {
        let list = match j.status {
            JobStatus::Failed if j.ended_at.unwrap_or(j.created_at) >= since => {
                jobs.failed += 1;
                &mut failed_jobs
            }
            JobStatus::NotStarted | JobStatus::InProgress => {
                jobs.in_progress += 1;
                &mut active_jobs
            }
            JobStatus::WaitingForInput => {
                jobs.waiting_for_input += 1;
                &mut waiting_jobs
            }
            _ => continue,
        };
        if list.len() < LISTED_JOBS {
            list.push(j.clone());
        }
    }

    let mut errors = SeverityCounts { truncated: input.events_truncated, ..Default::default() };
    for e in input.events.iter().filter(|e| e.time >= since) {
        match e.severity {
            Severity::Critical => errors.critical += 1,
            Severity::Error => errors.error += 1,
            Severity::Warning => errors.warning += 1,
            Severity::Info => {}
        }
    }
    let mut recent: Vec<Event> = input.events.to_vec();
    recent.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    recent.truncate(RECENT_EVENTS);

    Dashboard {
        generated_at: now,
        items: input.items.len(),
        health,
        attention,
        tests,
        test_status: test_rows,
        config_issues: config_issues(input),
        errors,
        jobs,
        failed_jobs,
        active_jobs,
        waiting_jobs,
        recent_events: recent,
    }
}

fn issue(severity: Severity, code: &str, message: String, object_id: Option<String>) -> ConfigIssue {
    ConfigIssue { severity, code: code.to_string(), message, object_id }
}

/// Configuration issues, most severe first.
pub fn config_issues(input: &Inputs<'_>) -> Vec<ConfigIssue> {
    let mut out = Vec::new();
    if input.vault.protection_goal.is_none() {
        out.push(issue(
            Severity::Warning,
            "ProtectionGoalNotSet",
            format!("Vault {} has no protection goal; set it under Prepare infrastructure", input.vault.name),
            None,
        ));
    }
    let timeout = Duration::from_std(input.heartbeat_timeout).unwrap_or(Duration::MAX);
    for f in input.fabrics {
        let reporting = f.last_heartbeat.is_some_and(|t| input.now - t <= timeout);
        if !reporting {
            let since = f.last_heartbeat.map(|t| format!("since {}", t.format("%Y-%m-%d %H:%M:%S UTC")));
            out.push(issue(
                Severity::Critical,
                "SiteNotReporting",
                format!("Site {} is not reporting {}", f.name, since.unwrap_or_else(|| "(never reported)".into())),
                Some(f.id.to_string()),
            ));
        }
        for h in f.inventory.hosts.iter().filter(|h| !h.connected) {
            out.push(issue(
                Severity::Warning,
                "HostDisconnected",
                format!("Host {} of site {} is not connected", h.name, f.name),
                Some(h.id.clone()),
            ));
        }
    }
    for p in input.pairs {
        for (side, r) in [("source", &p.source), ("target", &p.target)] {
            let fabric = input.fabrics.iter().find(|f| f.id == r.fabric);
            let cloud = fabric.and_then(|f| f.inventory.cloud(&r.id));
            let problem = match (fabric, cloud) {
                (None, _) => Some(format!("the {side} site is no longer registered")),
                (Some(f), None) => Some(format!("the {side} cloud is no longer in the inventory of {}", f.name)),
                (Some(f), Some(c)) if !c.sync_enabled => {
                    Some(format!("metadata sync of the {side} cloud {} of {} is off", c.name, f.name))
                }
                _ => None,
            };
            if let Some(problem) = problem {
                out.push(issue(
                    Severity::Critical,
                    "PairedCloudUnavailable",
                    format!("Cloud pair {}: {problem}", p.id),
                    Some(p.id.to_string()),
                ));
            }
        }
    }
    for it in input.items {
        for nic in it.nics.iter().filter(|n| n.target_network.is_none()) {
            let net = nic.source_network.as_deref().map(|n| format!(" on network {n}")).unwrap_or_default();
            out.push(issue(
                Severity::Warning,
                "NicNotMapped",
                format!(
                    "{}: replica NIC {}{net} has no network mapping and stays disconnected after failover",
                    it.name, nic.mac
                ),
                Some(it.id.to_string()),
            ));
        }
        for d in it.disks.iter().filter(|d| d.placement == "DefaultNoSuitableLocation") {
            out.push(issue(
                Severity::Warning,
                "NoSuitableMappedLocation",
                format!(
                    "{}: disk {} went to the default replica location: no location of the mapped classification had room",
                    it.name, d.target
                ),
                Some(it.id.to_string()),
            ));
        }
    }
    out.sort_by_key(|i| std::cmp::Reverse(i.severity));
    out
}

/// Gather the inputs from the store and compute the dashboard of `vault`.
pub async fn load(st: &AppState, vault: &Vault) -> Result<Dashboard, ApiFailure> {
    let now = st.clock.now();
    let items: Vec<ProtectedItem> = st
        .store
        .all_docs::<ProtectedItem>(DocKind::ProtectedItem, vault.id)
        .await?
        .into_iter()
        .map(|d| d.body)
        .collect();
    let fabrics: Vec<Fabric> =
        st.store.all_docs::<Fabric>(DocKind::Fabric, vault.id).await?.into_iter().map(|d| d.body).collect();
    let pairs: Vec<ContainerMapping> = st
        .store
        .all_docs::<ContainerMapping>(DocKind::ContainerMapping, vault.id)
        .await?
        .into_iter()
        .map(|d| d.body)
        .collect();
    let since = now - Duration::hours(24);
    let mut jobs = Vec::new();
    let wanted = [
        (JobStatus::NotStarted, None),
        (JobStatus::InProgress, None),
        (JobStatus::WaitingForInput, None),
        (JobStatus::Failed, Some(since)),
    ];
    for (status, from) in wanted {
        let filter = JobFilter { status: Some(status), from, ..Default::default() };
        let mut cursor = None;
        loop {
            let (page, next) = st.store.list_jobs(vault.id, &filter, cursor, 1000).await?;
            jobs.extend(page);
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    }
    let mut events = Vec::new();
    let mut truncated = false;
    let mut cursor = None;
    loop {
        let (page, next) = st.store.list_events(vault.id, None, None, None, cursor, 1000).await?;
        let reached_start = page.last().is_none_or(|e| e.time < since);
        events.extend(page);
        if reached_start || next.is_none() {
            break;
        }
        if events.len() >= MAX_EVENTS_SCANNED {
            truncated = true;
            break;
        }
        cursor = next;
    }
    Ok(compute(&Inputs {
        vault,
        items: &items,
        fabrics: &fabrics,
        pairs: &pairs,
        jobs: &jobs,
        events: &events,
        events_truncated: truncated,
        now,
        heartbeat_timeout: st.config.heartbeat_timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::fabric::{Cloud, Host, SiteInventory};
    use ferry_types::mapping::SiteObjectRef;
    use ferry_types::protection::{
        CompletedTest, Direction, ItemSide, ReplicaNic, ReplicationState, ReplicationStats, TestFailoverInfo,
        TestNetwork,
    };
    use ferry_types::vault::{Hypervisor, ProtectionGoal, ReplicateTo};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    fn vault(goal: bool) -> Vault {
        Vault {
            id: Uuid::from_u128(1),
            name: "v".into(),
            description: String::new(),
            region: String::new(),
            created_at: t("2024-01-01T00:00:00Z"),
            protection_goal: goal.then_some(ProtectionGoal {
                replicate_to: ReplicateTo::RecoverySite,
                hypervisor: Hypervisor::Kvm,
                managed_by_site_manager: true,
                second_site_manager: true,
            }),
        }
    }

    fn side() -> ItemSide {
        ItemSide { fabric: Uuid::from_u128(7), cloud: "c".into(), host: "h".into(), host_name: "h".into() }
    }

    fn item(n: u128, name: &str, health: Health, reasons: &[&str]) -> ProtectedItem {
        ProtectedItem {
            id: Uuid::from_u128(n),
            vault_id: Uuid::from_u128(1),
            name: name.into(),
            vm_id: name.into(),
            container_mapping: Uuid::from_u128(50),
            policy: Uuid::from_u128(60),
            source: side(),
            target: side(),
            direction: Direction::Forward,
            state: ReplicationState::Protected,
            health,
            health_reasons: reasons.iter().map(|r| r.to_string()).collect(),
            disks: vec![],
            nics: vec![],
            stats: ReplicationStats::default(),
            recovery_points: vec![],
            allowed_operations: vec![],
            created_at: t("2024-01-01T00:00:00Z"),
            definition: None,
            test_failover: None,
            last_test_failover: None,
            failover: None,
            existing_replica: None,
        }
    }

    fn job(n: u128, status: JobStatus, created: &str) -> Job {
        Job {
            id: Uuid::from_u128(n),
            vault_id: Uuid::from_u128(1),
            operation: "TestFailover".into(),
            object_type: "ProtectedItem".into(),
            object_id: "x".into(),
            object_name: "x".into(),
            fabric: None,
            status,
            tasks: vec![],
            progress: 0,
            allowed_actions: Job::actions_for(status),
            errors: vec![],
            params: serde_json::Value::Null,
            created_at: t(created),
            started_at: None,
            ended_at: None,
            restart_of: None,
        }
    }

    fn event(id: i64, severity: Severity, time: &str) -> Event {
        Event {
            id,
            vault_id: Uuid::from_u128(1),
            time: t(time),
            severity,
            kind: "K".into(),
            message: format!("event {id}"),
            fabric: None,
            object_id: None,
        }
    }

    fn fabric(name: &str, heartbeat: Option<&str>, hosts: &[(&str, bool)], clouds: &[(&str, bool)]) -> Fabric {
        Fabric {
            id: Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()),
            vault_id: Uuid::from_u128(1),
            name: name.into(),
            registered_at: t("2024-01-01T00:00:00Z"),
            providers: vec![],
            sync_all_clouds: true,
            proxy: None,
            last_heartbeat: heartbeat.map(t),
            inventory: SiteInventory {
                clouds: clouds
                    .iter()
                    .map(|(c, sync)| Cloud {
                        id: c.to_string(),
                        name: c.to_string(),
                        host_groups: vec![],
                        sync_enabled: *sync,
                    })
                    .collect(),
                hosts: hosts
                    .iter()
                    .map(|(h, connected)| Host {
                        id: h.to_string(),
                        name: h.to_string(),
                        host_group: "hg".into(),
                        address: String::new(),
                        agent_version: String::new(),
                        qemu_version: String::new(),
                        logical_networks: vec![],
                        storage_locations: vec![],
                        connected: *connected,
                        replication_address: String::new(),
                        replication_addresses: Vec::new(),
                    })
                    .collect(),
                ..Default::default()
            },
        }
    }

    const NOW: &str = "2025-06-15T12:00:00Z";

    fn inputs<'a>(
        v: &'a Vault,
        items: &'a [ProtectedItem],
        fabrics: &'a [Fabric],
        pairs: &'a [ContainerMapping],
        jobs: &'a [Job],
        events: &'a [Event],
    ) -> Inputs<'a> {
        Inputs {
            vault: v,
            items,
            fabrics,
            pairs,
            jobs,
            events,
            events_truncated: false,
            now: t(NOW),
            heartbeat_timeout: std::time::Duration::from_secs(60),
        }
    }

    #[test]
    fn job_4_dashboard_counts_health_and_lists_reasons_worst_first() {
        let v = vault(true);
        let items = [
            item(1, "web1", Health::Normal, &[]),
            item(2, "db1", Health::Warning, &["Over 1 hour since the last sync"]),
            item(3, "app1", Health::Critical, &["Resynchronization is required"]),
            item(4, "old1", Health::NotApplicable, &[]),
            item(5, "aaa", Health::Warning, &["Initial replication is not complete"]),
        ];
        let d = compute(&inputs(&v, &items, &[], &[], &[], &[]));
        assert_eq!(d.items, 5);
        assert_eq!(d.health, HealthCounts { normal: 1, warning: 2, critical: 1, not_applicable: 1 });
        let names: Vec<&str> = d.attention.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["app1", "aaa", "db1"], "critical first, then by name");
        assert_eq!(d.attention[0].reasons, ["Resynchronization is required"]);
    }

    #[test]
    fn job_4_test_recommended_after_six_months_or_never() {
        let v = vault(true);
        let mut never = item(1, "never", Health::Normal, &[]);
        never.last_test_failover = None;
        let mut recent = item(2, "recent", Health::Normal, &[]);
        recent.last_test_failover =
            Some(CompletedTest { at: t("2025-01-01T00:00:00Z"), notes: "ok".into(), recovery_point: "p".into() });
        let mut edge = item(3, "edge", Health::Normal, &[]);
        // Exactly six months before NOW: still within the window.
        edge.last_test_failover =
            Some(CompletedTest { at: t("2024-12-15T12:00:00Z"), notes: String::new(), recovery_point: "p".into() });
        let mut stale = item(4, "stale", Health::Normal, &[]);
        stale.last_test_failover =
            Some(CompletedTest { at: t("2024-12-15T11:59:59Z"), notes: String::new(), recovery_point: "p".into() });
        let mut running = item(5, "running", Health::Normal, &[]);
        running.test_failover = Some(TestFailoverInfo {
            job: Uuid::from_u128(9),
            vm_name: "running-test".into(),
            recovery_point: "p".into(),
            network: TestNetwork::Automatic,
            created_bridge: None,
            started_at: t(NOW),
        });
        let items = [never, recent, edge, stale, running];
        let d = compute(&inputs(&v, &items, &[], &[], &[], &[]));
        assert_eq!(d.tests, TestCounts { running: 1, tested: 2, test_recommended: 2 });
        let status = |n: &str| d.test_status.iter().find(|s| s.name == n).map(|s| s.status);
        assert_eq!(status("never"), Some(TestStatus::TestRecommended));
        assert_eq!(status("stale"), Some(TestStatus::TestRecommended));
        assert_eq!(status("edge"), Some(TestStatus::Tested));
        assert_eq!(status("recent"), Some(TestStatus::Tested));
        assert_eq!(status("running"), Some(TestStatus::Running));
        assert_eq!(d.test_status[0].status, TestStatus::TestRecommended, "recommended listed first");
    }

    #[test]
    fn job_4_dashboard_counts_jobs_failed_in_progress_waiting() {
        let v = vault(true);
        let mut old_failed = job(1, JobStatus::Failed, "2025-06-13T12:00:00Z");
        old_failed.ended_at = Some(t("2025-06-13T12:05:00Z"));
        let mut late_failed = job(2, JobStatus::Failed, "2025-06-14T11:00:00Z");
        // Created 25 h ago but failed within the last 24 h: it counts.
        late_failed.ended_at = Some(t("2025-06-14T13:00:00Z"));
        let jobs = [
            old_failed,
            late_failed,
            job(3, JobStatus::Failed, "2025-06-15T11:00:00Z"),
            job(4, JobStatus::InProgress, "2025-06-15T11:30:00Z"),
            job(5, JobStatus::NotStarted, "2025-06-15T11:40:00Z"),
            job(6, JobStatus::WaitingForInput, "2025-06-01T00:00:00Z"),
            job(7, JobStatus::Succeeded, "2025-06-15T11:00:00Z"),
            job(8, JobStatus::Cancelled, "2025-06-15T11:00:00Z"),
        ];
        let d = compute(&inputs(&v, &[], &[], &[], &jobs, &[]));
        assert_eq!(d.jobs, JobCounts { failed: 2, in_progress: 2, waiting_for_input: 1 });
        let ids = |l: &[Job]| l.iter().map(|j| j.id.as_u128()).collect::<Vec<_>>();
        assert_eq!(ids(&d.failed_jobs), [3, 2], "newest first");
        assert_eq!(ids(&d.active_jobs), [5, 4]);
        assert_eq!(ids(&d.waiting_jobs), [6]);
    }

    #[test]
    fn job_4_errors_by_severity_in_the_last_24_hours_and_recent_events() {
        let v = vault(true);
        let mut events: Vec<Event> = vec![
            event(1, Severity::Critical, "2025-06-14T11:00:00Z"), // older than 24 h
            event(2, Severity::Critical, "2025-06-15T10:00:00Z"),
            event(3, Severity::Error, "2025-06-15T10:01:00Z"),
            event(4, Severity::Error, "2025-06-15T10:02:00Z"),
            event(5, Severity::Warning, "2025-06-15T10:03:00Z"),
            event(6, Severity::Info, "2025-06-15T10:04:00Z"),
        ];
        for i in 0..12 {
            events.push(event(10 + i, Severity::Info, "2025-06-15T11:00:00Z"));
        }
        events.reverse();
        let d = compute(&inputs(&v, &[], &[], &[], &[], &events));
        assert_eq!(d.errors, SeverityCounts { critical: 1, error: 2, warning: 1, truncated: false });
        assert_eq!(d.recent_events.len(), RECENT_EVENTS);
        assert_eq!(d.recent_events[0].id, 21, "newest first");
    }

    #[test]
    fn job_4_configuration_issues() {
        let v = vault(false);
        let ny = fabric("NY", Some("2025-06-15T11:59:50Z"), &[("ny1", true), ("ny2", false)], &[("gold1", true)]);
        let chi = fabric("CHI", Some("2025-06-15T11:00:00Z"), &[("chi1", true)], &[("gold2", false)]);
        let pair = ContainerMapping {
            id: Uuid::from_u128(50),
            source: SiteObjectRef { fabric: ny.id, id: "gold1".into() },
            target: SiteObjectRef { fabric: chi.id, id: "gold2".into() },
            policy: Uuid::from_u128(60),
            created_at: t(NOW),
        };
        let mut it = item(1, "web1", Health::Normal, &[]);
        it.nics = vec![
            ReplicaNic {
                mac: "52:54:00:00:00:01".into(),
                source_network: Some("VMNetwork2-NewYork".into()),
                target_network: None,
                subnet: None,
                ip: None,
            },
            ReplicaNic {
                mac: "52:54:00:00:00:02".into(),
                source_network: Some("VMNetwork1-NewYork".into()),
                target_network: Some("VMNetwork1-Chicago".into()),
                subnet: Some("Subnet1".into()),
                ip: None,
            },
        ];
        let fabrics = [ny, chi];
        let items = [it];
        let pairs = [pair];
        let d = compute(&inputs(&v, &items, &fabrics, &pairs, &[], &[]));
        let codes: Vec<&str> = d.config_issues.iter().map(|i| i.code.as_str()).collect();
        assert_eq!(
            codes,
            ["SiteNotReporting", "PairedCloudUnavailable", "ProtectionGoalNotSet", "HostDisconnected", "NicNotMapped"],
            "{:#?}",
            d.config_issues
        );
        assert!(d.config_issues[0].message.contains("CHI"));
        assert!(d.config_issues[1].message.contains("metadata sync of the target cloud gold2"));
        assert!(d.config_issues[3].message.contains("ny2"));
        assert!(d.config_issues[4].message.contains("VMNetwork2-NewYork"));

        // A healthy configuration has no issue.
        let v = vault(true);
        let ok = fabric("NY", Some("2025-06-15T11:59:50Z"), &[("ny1", true)], &[("gold1", true)]);
        let d = compute(&inputs(&v, &[], std::slice::from_ref(&ok), &[], &[], &[]));
        assert!(d.config_issues.is_empty(), "{:?}", d.config_issues);
    }
}
