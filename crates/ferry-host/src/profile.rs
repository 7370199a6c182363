//! CAP-1 on the host: measuring the churn of VMs for capacity plans.
//!
//! Each (plan, VM) has a task that runs a [`ChurnMeter`] on the VM's QEMU with windows of 30 s,
//! 5 min, 15 min and 1 h (one tick = 30 s; a test-only setting shortens the tick, the windows
//! keep their number of ticks) and folds every ended window into the VM's [`ChurnProfile`]:
//! windows completed, total and largest churn per length, and the series of hours. The profile is
//! written to `<data>/profiles/<plan>-<vm>.json` after every window (atomic) and reported to the
//! site with every host report. What to measure is kept in `<data>/profiles.json`, so a restarted
//! agent measures on (its windows start over; the totals are kept).
//!
//! A VM that is not running is reported as such and measured again once it runs; a measurement
//! stops at its `until` time or when the plan is stopped (the meter's bitmaps are removed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_repl::churn::{ChurnMeter, WindowChurn};
use ferry_types::capacity::{
    ChurnProfile, ProfileAction, ProfileState, ProfiledDisk, WindowStats, MAX_HOURS, WINDOW_SECS,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::vms::VmManager;

/// The nominal tick: the shortest window (30 s).
const TICK_SECS: u32 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("Invalid profiling request: {0}")]
    Invalid(String),
    #[error("Profiling state I/O failed")]
    Io(#[from] std::io::Error),
}

/// One measurement the host was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Request {
    plan: Uuid,
    vm_name: String,
    #[serde(default)]
    until: Option<DateTime<Utc>>,
}

pub struct Profiler {
    data: PathBuf,
    tick: Duration,
    requests: Mutex<Vec<Request>>,
    profiles: Arc<std::sync::Mutex<HashMap<(Uuid, String), ChurnProfile>>>,
    tasks: Mutex<HashMap<(Uuid, String), tokio::task::JoinHandle<()>>>,
}

fn key(plan: Uuid, vm: &str) -> (Uuid, String) {
    (plan, vm.to_string())
}

/// The bitmap tag of a plan's meters.
fn tag(plan: Uuid) -> String {
    plan.simple().to_string()[..12].to_string()
}

impl Profiler {
    /// The profiler of a host; `test_tick` replaces the 30 s tick (tests).
    pub fn open(data: &Path, test_tick: Option<Duration>) -> Result<Profiler, ProfileError> {
        std::fs::create_dir_all(data.join("profiles"))?;
        let requests: Vec<Request> = match std::fs::read(data.join("profiles.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ProfileError::Invalid(format!("profiles.json: {e}")))?,
            Err(_) => Vec::new(),
        };
        let mut profiles = HashMap::new();
        for r in &requests {
            if let Some(p) = read_profile(&profile_path(data, r.plan, &r.vm_name)) {
                profiles.insert(key(r.plan, &r.vm_name), p);
            }
        }
        Ok(Profiler {
            data: data.to_path_buf(),
            tick: test_tick.unwrap_or(Duration::from_secs(u64::from(TICK_SECS))),
            requests: Mutex::new(requests),
            profiles: Arc::new(std::sync::Mutex::new(profiles)),
            tasks: Default::default(),
        })
    }

    /// Start the measurements of the last run again (after an agent restart).
    pub async fn resume(&self, vms: &Arc<VmManager>) {
        let requests = self.requests.lock().await.clone();
        for r in requests {
            self.spawn(r, vms.clone()).await;
        }
    }

    /// Handle a site's request.
    pub async fn act(&self, action: ProfileAction, vms: &Arc<VmManager>) -> Result<serde_json::Value, ProfileError> {
        match action {
            ProfileAction::Start { plan, vm, until } => {
                let def = vms
                    .definition(&vm)
                    .await
                    .ok_or_else(|| ProfileError::Invalid(format!("VM {vm} is not defined on this host")))?;
                let r = Request { plan, vm_name: def.name.clone(), until };
                {
                    let mut reqs = self.requests.lock().await;
                    if !reqs.iter().any(|x| x.plan == plan && x.vm_name == r.vm_name) {
                        reqs.push(r.clone());
                        self.save(&reqs)?;
                    }
                }
                self.spawn(r, vms.clone()).await;
                Ok(serde_json::Value::Null)
            }
            ProfileAction::Stop { plan, vm } => {
                self.stop(plan, &vm, vms).await?;
                Ok(serde_json::Value::Null)
            }
            ProfileAction::Forget { plan, vm } => {
                self.stop(plan, &vm, vms).await?;
                if let Ok(mut p) = self.profiles.lock() {
                    p.remove(&key(plan, &vm));
                }
                match std::fs::remove_file(profile_path(&self.data, plan, &vm)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                Ok(serde_json::Value::Null)
            }
        }
    }

    /// Stop measuring `vm` for `plan`; its profile stays with its final figures.
    async fn stop(&self, plan: Uuid, vm: &str, vms: &Arc<VmManager>) -> Result<(), ProfileError> {
        {
            let mut reqs = self.requests.lock().await;
            reqs.retain(|x| !(x.plan == plan && x.vm_name == vm));
            self.save(&reqs)?;
        }
        let task = self.tasks.lock().await.remove(&key(plan, vm));
        if let Some(t) = task {
            t.abort();
            let _ = t.await; // cancelled: it writes nothing after this
        }
        if let Some(running) = vms.running(vm).await {
            if let Some(def) = vms.definition(vm).await {
                let disks: Vec<String> = def.disks.iter().map(|d| d.target.clone()).collect();
                if let Err(e) = ChurnMeter::remove(running.qmp(), &tag(plan), &disks).await {
                    tracing::warn!(vm = %vm, error = %e.chain(), "cannot remove churn bitmaps");
                }
            }
        }
        if let Ok(mut p) = self.profiles.lock() {
            if let Some(p) = p.get_mut(&key(plan, vm)) {
                p.state = ProfileState::Stopped;
                p.updated_at = Utc::now();
                write_profile(&profile_path(&self.data, plan, vm), p)?;
            }
        }
        Ok(())
    }

    /// Every measurement's profile, for the host report; a stopped one is reported (with its
    /// final figures) until its plan forgets it.
    pub fn profiles(&self) -> Vec<ChurnProfile> {
        self.profiles.lock().map(|p| p.values().cloned().collect()).unwrap_or_default()
    }

    fn save(&self, reqs: &[Request]) -> Result<(), ProfileError> {
        let b = serde_json::to_vec_pretty(reqs).map_err(std::io::Error::other)?;
        crate::write_atomic(&self.data.join("profiles.json"), &b)?;
        Ok(())
    }

    async fn spawn(&self, r: Request, vms: Arc<VmManager>) {
        let k = key(r.plan, &r.vm_name);
        let mut tasks = self.tasks.lock().await;
        if tasks.get(&k).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let profiles = self.profiles.clone();
        let path = profile_path(&self.data, r.plan, &r.vm_name);
        let tick = self.tick;
        tasks.insert(k, tokio::spawn(async move { measure(r, vms, profiles, path, tick).await }));
    }
}

fn profile_path(data: &Path, plan: Uuid, vm: &str) -> PathBuf {
    data.join("profiles").join(format!("{plan}-{vm}.json"))
}

fn read_profile(path: &Path) -> Option<ChurnProfile> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_profile(path: &Path, p: &ChurnProfile) -> std::io::Result<()> {
    let b = serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?;
    crate::write_atomic(path, &b)
}

/// Fold ended windows into a profile (`tick_secs` = nominal seconds per tick).
pub fn fold(p: &mut ChurnProfile, ended: &[WindowChurn], tick_secs: u32) {
    for w in ended {
        let secs = w.window * tick_secs;
        let bytes = w.total();
        match p.windows.iter_mut().find(|s| s.window_secs == secs) {
            Some(s) => {
                s.windows += 1;
                s.total_bytes += bytes;
                s.max_bytes = s.max_bytes.max(bytes);
            }
            None => p.windows.push(WindowStats { window_secs: secs, windows: 1, total_bytes: bytes, max_bytes: bytes }),
        }
        if secs == 3600 {
            p.hours.push(bytes);
            if p.hours.len() > MAX_HOURS {
                p.hours.remove(0);
            }
        }
    }
    p.windows.sort_by_key(|s| s.window_secs);
}

async fn disks_now(vms: &VmManager, vm: &str) -> Vec<ProfiledDisk> {
    let Some(def) = vms.definition(vm).await else { return Vec::new() };
    let mut out = Vec::new();
    for d in &def.disks {
        let path = Path::new(&d.path);
        let virtual_size = crate::vms::virtual_size(path, d.format).unwrap_or(0);
        let allocated_bytes = match ferry_qemu::img::info(path, true).await {
            Ok(i) => i.actual_size.unwrap_or(0).min(virtual_size.max(1)),
            Err(_) => 0,
        };
        out.push(ProfiledDisk { target: d.target.clone(), virtual_size, allocated_bytes });
    }
    out
}

fn set(profiles: &std::sync::Mutex<HashMap<(Uuid, String), ChurnProfile>>, p: &ChurnProfile, path: &Path) {
    if let Err(e) = write_profile(path, p) {
        tracing::warn!(vm = %p.vm_name, error = %e, "cannot write the churn profile");
    }
    if let Ok(mut m) = profiles.lock() {
        m.insert(key(p.plan, &p.vm_name), p.clone());
    }
}

async fn measure(
    r: Request,
    vms: Arc<VmManager>,
    profiles: Arc<std::sync::Mutex<HashMap<(Uuid, String), ChurnProfile>>>,
    path: PathBuf,
    tick: Duration,
) {
    let windows: Vec<u32> = WINDOW_SECS.iter().map(|w| w / TICK_SECS).collect();
    let now = Utc::now();
    let mut p =
        profiles.lock().ok().and_then(|m| m.get(&key(r.plan, &r.vm_name)).cloned()).unwrap_or_else(|| ChurnProfile {
            plan: r.plan,
            vm_id: String::new(),
            vm_name: r.vm_name.clone(),
            state: ProfileState::Measuring,
            started_at: now,
            updated_at: now,
            measured_secs: 0,
            disks: Vec::new(),
            windows: Vec::new(),
            hours: Vec::new(),
            error: None,
        });
    let mut meter: Option<(ChurnMeter, u32)> = None;
    loop {
        if r.until.is_some_and(|u| Utc::now() >= u) {
            if let (Some((m, _)), Some(vm)) = (meter.take(), vms.running(&r.vm_name).await) {
                let _ = m.stop(vm.qmp()).await;
            }
            p.state = ProfileState::Stopped;
            p.updated_at = Utc::now();
            set(&profiles, &p, &path);
            return;
        }
        match vms.running(&r.vm_name).await {
            None => {
                meter = None;
                if p.state != ProfileState::VmNotRunning {
                    p.state = ProfileState::VmNotRunning;
                    p.updated_at = Utc::now();
                    set(&profiles, &p, &path);
                }
            }
            Some(vm) => {
                let pid = vm.pid();
                if meter.as_ref().is_some_and(|(_, at)| *at != pid) {
                    meter = None; // a new QEMU: its bitmaps are new too
                }
                if meter.is_none() {
                    if let Some(inv) = vms.inventory().await.into_iter().find(|v| v.name == r.vm_name) {
                        p.vm_id = inv.id;
                    }
                    p.disks = disks_now(&vms, &r.vm_name).await;
                    let targets: Vec<String> = p.disks.iter().map(|d| d.target.clone()).collect();
                    match ChurnMeter::start(vm.qmp(), &tag(r.plan), &targets, &windows).await {
                        Ok(m) => {
                            meter = Some((m, pid));
                            p.state = ProfileState::Measuring;
                            p.error = None;
                        }
                        Err(e) => p.error = Some(e.chain()),
                    }
                    p.updated_at = Utc::now();
                    set(&profiles, &p, &path);
                } else if let Some((m, _)) = meter.as_mut() {
                    match m.tick(vm.qmp()).await {
                        Ok(ended) => {
                            p.measured_secs += u64::from(TICK_SECS);
                            fold(&mut p, &ended, TICK_SECS);
                            if ended.iter().any(|w| w.window * TICK_SECS == 3600) {
                                p.disks = disks_now(&vms, &r.vm_name).await;
                            }
                            p.updated_at = Utc::now();
                            set(&profiles, &p, &path);
                        }
                        Err(e) => {
                            tracing::warn!(vm = %r.vm_name, error = %e.chain(), "churn window failed; starting over");
                            p.error = Some(e.chain());
                            meter = None;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(tick).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_1_ended_windows_fold_into_the_profile() {
        let now = Utc::now();
        let mut p = ChurnProfile {
            plan: Uuid::nil(),
            vm_id: "v".into(),
            vm_name: "v".into(),
            state: ProfileState::Measuring,
            started_at: now,
            updated_at: now,
            measured_secs: 0,
            disks: vec![],
            windows: vec![],
            hours: vec![],
            error: None,
        };
        fold(&mut p, &[WindowChurn { window: 1, bytes: vec![10, 5] }], 30);
        fold(
            &mut p,
            &[WindowChurn { window: 1, bytes: vec![40, 0] }, WindowChurn { window: 120, bytes: vec![70, 1] }],
            30,
        );
        assert_eq!(
            p.windows,
            vec![
                WindowStats { window_secs: 30, windows: 2, total_bytes: 55, max_bytes: 40 },
                WindowStats { window_secs: 3600, windows: 1, total_bytes: 71, max_bytes: 71 },
            ]
        );
        assert_eq!(p.hours, vec![71]);
        for _ in 0..MAX_HOURS + 5 {
            fold(&mut p, &[WindowChurn { window: 120, bytes: vec![1] }], 30);
        }
        assert_eq!(p.hours.len(), MAX_HOURS, "the series keeps the last day");
        let hourly = p.windows.iter().find(|w| w.window_secs == 3600).expect("hourly stats");
        assert_eq!(hourly.windows, MAX_HOURS as u64 + 6, "the totals keep every hour");
    }
}
