//! VM definitions and lifecycle on this host (HOST-1..HOST-3).
//!
//! Each VM has a directory `<data>/vms/<name>/` holding its definition (`definition.json`) and
//! QEMU's run files (QMP socket, pid file, logs). QEMU runs detached from the agent, so an agent
//! restart leaves VMs running; at start the agent re-attaches to every live QEMU it owns. A QEMU
//! that died without being asked to is reported `Crashed` with the reason, never restarted
//! silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_qemu::{Accel, Boot, DiskSpec, NicSpec, Qemu, RunningVm, VmSpec, VmState};
use ferry_types::fabric::{DiskFormat, PowerState, Vm, VmDefinition, VmDisk, VmNic, VmStatus};
use tokio::sync::{Mutex, OnceCell};

use crate::config::HostConfig;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Invalid VM definition: {0}")]
    Invalid(String),
    #[error("VM {0} does not exist")]
    NotFound(String),
    #[error("VM {0} already exists")]
    Exists(String),
    #[error("VM {name} is {state}; {action} is not possible now")]
    WrongState { name: String, state: String, action: String },
    #[error("QEMU failed")]
    Qemu(#[from] ferry_qemu::Error),
    #[error("Network setup failed")]
    Net(#[from] crate::net::NetError),
    #[error("VM storage I/O failed")]
    Io(#[from] std::io::Error),
}

impl VmError {
    pub fn code(&self) -> &'static str {
        match self {
            VmError::Invalid(_) => "InvalidVmDefinition",
            VmError::NotFound(_) => "VmNotFound",
            VmError::Exists(_) => "VmAlreadyExists",
            VmError::WrongState { .. } => "VmWrongState",
            VmError::Qemu(_) => "QemuError",
            VmError::Net(_) => "NetworkError",
            VmError::Io(_) => "HostIoError",
        }
    }
}

struct Entry {
    def: VmDefinition,
    running: Option<Arc<RunningVm>>,
}

pub struct VmManager {
    dir: PathBuf,
    cfg: HostConfig,
    vms: Mutex<HashMap<String, Entry>>,
    accel: OnceCell<Accel>,
}

const DEFINITION: &str = "definition.json";

fn qemu_format(f: DiskFormat) -> ferry_qemu::DiskFormat {
    match f {
        DiskFormat::Qcow2 => ferry_qemu::DiskFormat::Qcow2,
        DiskFormat::Raw => ferry_qemu::DiskFormat::Raw,
    }
}

/// A locally administered unicast MAC derived from the VM uuid and NIC index.
fn derived_mac(uuid: &uuid::Uuid, index: usize) -> String {
    let b = uuid.as_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], (b[3] as usize + index) as u8)
}

impl VmManager {
    /// Load definitions and re-attach to running QEMU processes (HOST-3).
    pub async fn open(dir: PathBuf, cfg: &HostConfig) -> Result<VmManager, VmError> {
        std::fs::create_dir_all(&dir)?;
        let mut vms = HashMap::new();
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            let Ok(bytes) = std::fs::read(path.join(DEFINITION)) else { continue };
            let def: VmDefinition = match serde_json::from_slice(&bytes) {
                Ok(d) => d,
                Err(err) => {
                    tracing::error!(path = %path.display(), error = %err, "unreadable VM definition skipped");
                    continue;
                }
            };
            let running = match RunningVm::attach(&path).await {
                Ok(r) => {
                    tracing::info!(vm = %def.name, pid = r.pid(), "re-attached to running VM");
                    Some(Arc::new(r))
                }
                Err(_) => None,
            };
            vms.insert(def.name.clone(), Entry { def, running });
        }
        Ok(VmManager { dir, cfg: cfg.clone(), vms: Mutex::new(vms), accel: OnceCell::new() })
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The accelerator, probed once (HOST-2).
    pub async fn accel(&self) -> Accel {
        *self
            .accel
            .get_or_init(|| async {
                match self.cfg.accel.as_str() {
                    "kvm" => Accel::Kvm,
                    "tcg" => Accel::Tcg,
                    _ => match (&self.cfg.probe_kernel, &self.cfg.probe_initrd) {
                        (Some(k), Some(i)) => {
                            let cache = self.dir.join("accel-probe.json");
                            ferry_qemu::probe_kvm(k, i, Some(&cache)).await.unwrap_or(Accel::Tcg)
                        }
                        _ => Accel::Tcg,
                    },
                }
            })
            .await
    }

    fn validate(&self, def: &VmDefinition, existing: &HashMap<String, Entry>) -> Result<(), VmError> {
        let bad = |m: String| Err(VmError::Invalid(m));
        if def.name.is_empty()
            || def.name.len() > 64
            || !def.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || def.name.starts_with('.')
        {
            return bad(format!("name '{}' must be 1 to 64 letters, digits, '-', '_' or '.'", def.name));
        }
        if existing.contains_key(&def.name) {
            return Err(VmError::Exists(def.name.clone()));
        }
        if def.vcpus == 0 || def.vcpus > 64 || def.memory_mib < 16 || def.memory_mib > 1 << 20 {
            return bad("vcpus must be 1..=64 and memory 16 MiB..=1 TiB".into());
        }
        if def.disks.len() > 16 {
            return bad("at most 16 disks".into());
        }
        let mut targets = std::collections::HashSet::new();
        for d in &def.disks {
            if !targets.insert(d.target.clone()) {
                return bad(format!("disk target {} is used twice", d.target));
            }
            if !(d.target.starts_with("vd")
                && d.target.len() <= 4
                && d.target[2..].chars().all(|c| c.is_ascii_lowercase()))
            {
                return bad(format!("disk target {} must look like vda, vdb, ...", d.target));
            }
            let p = Path::new(&d.path);
            if !p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return bad(format!("disk path {} must be absolute without '..'", d.path));
            }
            if !crate::storage::inside_locations(&self.cfg.storage, p) {
                return bad(format!("disk {} is outside this host's storage locations", d.path));
            }
            if !p.exists() && d.create_size.is_none() {
                return bad(format!("disk {} does not exist (give create_size to create it)", d.path));
            }
        }
        for (i, n) in def.nics.iter().enumerate() {
            if let Some(br) = &n.bridge {
                if !crate::net::valid_ifname(br) {
                    return bad(format!("NIC {i}: bridge name {br} is invalid"));
                }
                // SEC-3: a VM joins only the bridges of this host's configuration, or the
                // isolated bridge of its own test failover — never any interface of the host.
                if !self.cfg.bridges.iter().any(|b| &b.bridge == br) && !crate::net::is_test_bridge(br) {
                    return bad(format!(
                        "NIC {i}: bridge {br} is not one of this host's bridges (host.toml [[bridges]]) nor a test-failover bridge"
                    ));
                }
            } else if let Some(ln) = &n.logical_network {
                if !self.cfg.bridges.iter().any(|b| &b.logical_network == ln) {
                    return bad(format!("NIC {i}: logical network {ln} has no bridge on this host"));
                }
            } else if n.vm_network.is_some() {
                return bad(format!("NIC {i}: unknown network {}", n.vm_network.clone().unwrap_or_default()));
            }
        }
        if let Some(k) = &def.kernel_boot {
            if !Path::new(&k.kernel).is_file() {
                return bad(format!("kernel {} does not exist", k.kernel));
            }
            if let Some(i) = &k.initrd {
                if !Path::new(i).is_file() {
                    return bad(format!("initrd {i} does not exist"));
                }
            }
            for (what, file) in std::iter::once(("kernel", &k.kernel)).chain(k.initrd.iter().map(|i| ("initrd", i))) {
                if !self.boot_file_allowed(Path::new(file)) {
                    return bad(format!(
                        "{what} {file} is outside this host's storage locations and boot directories (host.toml boot_dirs)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// SEC-3: a kernel or initrd is taken only from a storage location or a configured boot
    /// directory, after following links (a link inside pointing elsewhere is refused).
    fn boot_file_allowed(&self, file: &Path) -> bool {
        let Ok(real) = file.canonicalize() else { return false };
        let dirs = self.cfg.storage.iter().map(|s| &s.path).chain(self.cfg.boot_dirs.iter());
        dirs.filter_map(|d| d.canonicalize().ok()).any(|d| real.starts_with(d))
    }

    /// Define a VM; missing disks with `create_size` are created. Nothing is created when the
    /// definition is invalid.
    pub async fn create(&self, mut def: VmDefinition) -> Result<VmStatus, VmError> {
        let mut vms = self.vms.lock().await;
        self.validate(&def, &vms)?;
        let uuid = *def.uuid.get_or_insert_with(uuid::Uuid::new_v4);
        for (i, n) in def.nics.iter_mut().enumerate() {
            if n.mac.is_none() {
                n.mac = Some(derived_mac(&uuid, i));
            }
        }
        let mut created = Vec::new();
        for d in &def.disks {
            let p = Path::new(&d.path);
            if !p.exists() {
                if let Some(size) = d.create_size {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let res = ferry_qemu::img::create(
                        p,
                        qemu_format(d.format),
                        &ferry_qemu::img::CreateOptions { size: Some(size), ..Default::default() },
                    )
                    .await;
                    if let Err(e) = res {
                        for c in &created {
                            let _ = std::fs::remove_file(c);
                        }
                        return Err(e.into());
                    }
                    created.push(p.to_path_buf());
                }
            }
        }
        let dir = self.run_dir(&def.name);
        std::fs::create_dir_all(&dir)?;
        crate::write_atomic(
            &dir.join(DEFINITION),
            &serde_json::to_vec_pretty(&def).map_err(|e| VmError::Invalid(e.to_string()))?,
        )?;
        let status = VmStatus {
            name: def.name.clone(),
            power_state: PowerState::Stopped,
            pid: None,
            reason: None,
            definition: def.clone(),
        };
        vms.insert(def.name.clone(), Entry { def, running: None });
        Ok(status)
    }

    async fn spec(&self, def: &VmDefinition) -> Result<VmSpec, VmError> {
        let uuid = def.uuid.unwrap_or_else(uuid::Uuid::new_v4);
        let mut nics = Vec::new();
        for (i, n) in def.nics.iter().enumerate() {
            let tap = match (&n.bridge, &n.logical_network) {
                (Some(bridge), _) => {
                    crate::net::ensure_bridge(bridge)?;
                    let tap = crate::net::tap_name(&self.cfg.name, &uuid, i);
                    crate::net::create_tap(&tap, bridge)?;
                    Some(tap)
                }
                (None, Some(ln)) => {
                    let bridge = self
                        .cfg
                        .bridges
                        .iter()
                        .find(|b| &b.logical_network == ln)
                        .map(|b| b.bridge.clone())
                        .ok_or_else(|| VmError::Invalid(format!("no bridge for {ln}")))?;
                    crate::net::ensure_bridge(&bridge)?;
                    let tap = crate::net::tap_name(&self.cfg.name, &uuid, i);
                    crate::net::create_tap(&tap, &bridge)?;
                    Some(tap)
                }
                (None, None) => None,
            };
            nics.push(NicSpec { mac: n.mac.clone().unwrap_or_else(|| derived_mac(&uuid, i)), tap });
        }
        Ok(VmSpec {
            name: def.name.clone(),
            uuid,
            vcpus: def.vcpus,
            memory_mib: def.memory_mib,
            disks: def
                .disks
                .iter()
                .map(|d| DiskSpec {
                    target: d.target.clone(),
                    path: PathBuf::from(&d.path),
                    format: qemu_format(d.format),
                })
                .collect(),
            nics,
            guest_agent: def.guest_agent,
            boot: match &def.kernel_boot {
                Some(k) => Boot::Kernel {
                    kernel: PathBuf::from(&k.kernel),
                    initrd: k.initrd.as_ref().map(PathBuf::from),
                    append: k.append.clone(),
                },
                None => Boot::Disk,
            },
            accel: self.accel().await,
            extra_serial_log: None,
        })
    }

    pub async fn start(&self, name: &str) -> Result<VmStatus, VmError> {
        let mut vms = self.vms.lock().await;
        let e = vms.get_mut(name).ok_or_else(|| VmError::NotFound(name.into()))?;
        if let Some(r) = &e.running {
            if matches!(r.status().await, Ok(VmState::Running(_))) {
                return Err(VmError::WrongState { name: name.into(), state: "running".into(), action: "start".into() });
            }
        }
        let spec = self.spec(&e.def).await?;
        let running = Qemu::start(&spec, &self.run_dir(name)).await?;
        e.running = Some(Arc::new(running));
        drop(vms);
        self.status(name).await
    }

    pub async fn shutdown(&self, name: &str, timeout: Duration) -> Result<VmStatus, VmError> {
        {
            let vms = self.vms.lock().await;
            let e = vms.get(name).ok_or_else(|| VmError::NotFound(name.into()))?;
            let r = e.running.as_ref().ok_or_else(|| VmError::WrongState {
                name: name.into(),
                state: "stopped".into(),
                action: "shutdown".into(),
            })?;
            r.shutdown_graceful(timeout).await?;
        }
        self.cleanup_taps(name).await;
        self.status(name).await
    }

    pub async fn stop(&self, name: &str) -> Result<VmStatus, VmError> {
        {
            let vms = self.vms.lock().await;
            let e = vms.get(name).ok_or_else(|| VmError::NotFound(name.into()))?;
            if let Some(r) = &e.running {
                r.hard_stop().await?;
            }
        }
        self.cleanup_taps(name).await;
        self.status(name).await
    }

    async fn cleanup_taps(&self, name: &str) {
        let vms = self.vms.lock().await;
        if let Some(e) = vms.get(name) {
            if let Some(uuid) = e.def.uuid {
                for i in 0..e.def.nics.len() {
                    let _ = crate::net::delete_link(&crate::net::tap_name(&self.cfg.name, &uuid, i));
                }
            }
        }
    }

    pub async fn delete(&self, name: &str, delete_disks: bool) -> Result<(), VmError> {
        let def = {
            let vms = self.vms.lock().await;
            let e = vms.get(name).ok_or_else(|| VmError::NotFound(name.into()))?;
            if let Some(r) = &e.running {
                if matches!(r.status().await, Ok(VmState::Running(_))) {
                    return Err(VmError::WrongState {
                        name: name.into(),
                        state: "running".into(),
                        action: "delete".into(),
                    });
                }
            }
            e.def.clone()
        };
        self.cleanup_taps(name).await;
        if delete_disks {
            for d in &def.disks {
                match std::fs::remove_file(&d.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let dir = self.run_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        self.vms.lock().await.remove(name);
        Ok(())
    }

    /// The running QEMU of a VM (for replication), if it runs.
    pub async fn running(&self, name: &str) -> Option<Arc<RunningVm>> {
        self.vms.lock().await.get(name).and_then(|e| e.running.clone())
    }

    /// The names of the VMs whose QEMU runs.
    pub async fn running_names(&self) -> Vec<String> {
        self.vms.lock().await.iter().filter(|(_, e)| e.running.is_some()).map(|(n, _)| n.clone()).collect()
    }

    /// A VM's definition.
    pub async fn definition(&self, name: &str) -> Option<VmDefinition> {
        self.vms.lock().await.get(name).map(|e| e.def.clone())
    }

    pub async fn status(&self, name: &str) -> Result<VmStatus, VmError> {
        let vms = self.vms.lock().await;
        let e = vms.get(name).ok_or_else(|| VmError::NotFound(name.into()))?;
        Ok(entry_status(name, e, &self.run_dir(name)).await)
    }

    pub async fn list(&self) -> Vec<VmStatus> {
        let vms = self.vms.lock().await;
        let mut out = Vec::new();
        for (name, e) in vms.iter() {
            out.push(entry_status(name, e, &self.run_dir(name)).await);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The VMs as inventory objects (FAB-4).
    pub async fn inventory(&self) -> Vec<Vm> {
        self.list()
            .await
            .into_iter()
            .map(|s| {
                let d = &s.definition;
                Vm {
                    id: d.uuid.map(|u| u.to_string()).unwrap_or_else(|| d.name.clone()),
                    name: d.name.clone(),
                    host: String::new(),
                    cloud: None,
                    power_state: s.power_state,
                    disks: d
                        .disks
                        .iter()
                        .map(|x| VmDisk {
                            target: x.target.clone(),
                            format: x.format,
                            path: x.path.clone(),
                            virtual_size: virtual_size(Path::new(&x.path), x.format).unwrap_or(0),
                            classification: self
                                .cfg
                                .storage
                                .iter()
                                .find(|l| Path::new(&x.path).starts_with(&l.path))
                                .and_then(|l| l.classification.clone()),
                            excluded: x.excluded,
                            encrypted: encrypted(Path::new(&x.path), x.format).unwrap_or(false),
                        })
                        .collect(),
                    nics: d
                        .nics
                        .iter()
                        .map(|n| VmNic {
                            mac: n.mac.clone().unwrap_or_default(),
                            vm_network: n.vm_network.clone(),
                            subnet: n.subnet.clone(),
                            ip: n.ip.clone(),
                        })
                        .collect(),
                    guest_agent: d.guest_agent,
                }
            })
            .collect()
    }
}

async fn entry_status(name: &str, e: &Entry, run_dir: &Path) -> VmStatus {
    let (power_state, pid, reason) = match &e.running {
        Some(r) => match r.status().await {
            Ok(VmState::Running(s)) if s.status == "paused" => (PowerState::Paused, Some(r.pid()), None),
            Ok(VmState::Running(s)) if s.status == "shutdown" => {
                (PowerState::Stopped, Some(r.pid()), Some("guest powered off".into()))
            }
            Ok(VmState::Running(_)) => (PowerState::Running, Some(r.pid()), None),
            Ok(VmState::Exited(x)) if x.kind == ferry_qemu::ExitKind::Crashed => {
                (PowerState::Crashed, None, Some(x.reason))
            }
            Ok(VmState::Exited(_)) => (PowerState::Stopped, None, None),
            Err(err) => (PowerState::Crashed, Some(r.pid()), Some(format!("QMP does not answer: {err}"))),
        },
        None => match Qemu::last_exit(run_dir) {
            Ok(Some(x)) if x.kind == ferry_qemu::ExitKind::Crashed => (PowerState::Crashed, None, Some(x.reason)),
            _ => (PowerState::Stopped, None, None),
        },
    };
    VmStatus { name: name.into(), power_state, pid, reason, definition: e.def.clone() }
}

/// The first 36 bytes of a qcow2 image (magic checked): size at 24..32, `crypt_method` at 32..36.
fn qcow2_header(path: &Path) -> std::io::Result<[u8; 36]> {
    use std::io::Read;
    let mut header = [0u8; 36];
    std::fs::File::open(path)?.read_exact(&mut header)?;
    if &header[..4] != b"QFI\xfb" {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a qcow2 image"));
    }
    Ok(header)
}

/// REP-9: whether a disk image is encrypted (the qcow2 header's `crypt_method` is not 0). A raw
/// image is what the guest sees, encrypted inside or not.
pub fn encrypted(path: &Path, format: DiskFormat) -> std::io::Result<bool> {
    match format {
        DiskFormat::Raw => Ok(false),
        DiskFormat::Qcow2 => Ok(qcow2_header(path)?[32..36] != [0, 0, 0, 0]),
    }
}

/// A disk's virtual size: the qcow2 header's size field, or a raw file's length.
pub fn virtual_size(path: &Path, format: DiskFormat) -> std::io::Result<u64> {
    match format {
        DiskFormat::Raw => Ok(std::fs::metadata(path)?.len()),
        DiskFormat::Qcow2 => {
            let header = qcow2_header(path)?;
            let mut size = [0u8; 8];
            size.copy_from_slice(&header[24..32]);
            Ok(u64::from_be_bytes(size))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn host_1_virtual_size_of_qcow2_and_raw() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = dir.path().join("a.qcow2");
        ferry_qemu::img::create(
            &q,
            ferry_qemu::DiskFormat::Qcow2,
            &ferry_qemu::img::CreateOptions { size: Some(3 << 30), ..Default::default() },
        )
        .await
        .expect("create");
        assert_eq!(virtual_size(&q, DiskFormat::Qcow2).expect("size"), 3 << 30);
        let r = dir.path().join("b.raw");
        std::fs::File::create(&r).expect("raw").set_len(5 << 20).expect("len");
        assert_eq!(virtual_size(&r, DiskFormat::Raw).expect("size"), 5 << 20);
        assert!(virtual_size(&r, DiskFormat::Qcow2).is_err(), "a raw file is not taken for qcow2");
    }

    #[tokio::test]
    async fn rep_9_encrypted_qcow2_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain.qcow2");
        ferry_qemu::img::create(
            &plain,
            ferry_qemu::DiskFormat::Qcow2,
            &ferry_qemu::img::CreateOptions { size: Some(1 << 20), ..Default::default() },
        )
        .await
        .expect("create");
        assert!(!encrypted(&plain, DiskFormat::Qcow2).expect("header"));
        // A real LUKS-encrypted qcow2 from qemu-img. Creating one makes qemu-img time PBKDF2,
        // which fails now and then with "Unable to get accurate CPU usage" when the machine is
        // loaded: it is tried a few times, and only if it keeps failing that way is the header
        // written as qemu-img writes it (crypt_method 2, LUKS), which is what the check reads.
        let secret = dir.path().join("key");
        std::fs::write(&secret, "ferry-test-key").expect("key");
        let enc = dir.path().join("enc.qcow2");
        let mut made = false;
        for _ in 0..3 {
            let out = std::process::Command::new("qemu-img")
                .args(["create", "-q", "--object"])
                .arg(format!("secret,id=sec0,file={}", secret.display()))
                .args(["-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"])
                .arg(&enc)
                .arg("1M")
                .output()
                .expect("qemu-img");
            if out.status.success() {
                made = true;
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("accurate CPU usage"), "qemu-img failed otherwise: {err}");
        }
        if !made {
            let mut bytes = std::fs::read(&plain).expect("read");
            bytes[32..36].copy_from_slice(&2u32.to_be_bytes());
            std::fs::write(&enc, &bytes).expect("write");
        }
        assert!(encrypted(&enc, DiskFormat::Qcow2).expect("header"));
        let raw = dir.path().join("r.raw");
        std::fs::write(&raw, b"QFI\xfb anything").expect("raw");
        assert!(!encrypted(&raw, DiskFormat::Raw).expect("raw"), "a raw disk is what the guest sees");
    }
}
