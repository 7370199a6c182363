//! Shared helpers: a test CA, QEMU VMs without OS (killed by pid on drop), a receiver on
//! loopback, a primary wired to it, and image comparison helpers.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_pki::Ca;
use ferry_qemu::img::{self, CreateOptions};
use ferry_qemu::iohelp::GuestIo;
use ferry_qemu::{process, Accel, Boot, DiskFormat, DiskSpec, Qemu, RunningVm, VmSpec};
use ferry_repl::{Allowlist, CaptureDisk, Primary, PrimaryConfig, Receiver, ReceiverConfig, TlsIdentity};

pub const MIB: u64 = 1 << 20;
pub const K64: u64 = 64 << 10;
pub const PRIMARY_CN: &str = "host-fab1-ny1";
pub const REPLICA_CN: &str = "host-fab2-chi1";

/// Kills the QEMU we started (by its pid) when the test ends, also on panic.
pub struct VmGuard(pub u32);

impl Drop for VmGuard {
    fn drop(&mut self) {
        if process::pid_alive(self.0) {
            let _ = process::send_signal(self.0, nix::sys::signal::Signal::SIGKILL);
            for _ in 0..250 {
                if !process::pid_alive(self.0) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

pub struct Pki {
    pub ca: Ca,
    pub replica: TlsIdentity,
    pub primary: TlsIdentity,
}

pub fn identity(ca: &Ca, cn: &str) -> TlsIdentity {
    let c =
        ca.issue_server_cert(cn, &["localhost".to_string()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).expect("issue cert");
    TlsIdentity { ca_pem: ca.cert_pem().to_string(), cert_pem: c.cert_pem, key_pem: c.key_pem, live: None }
}

pub fn pki() -> Pki {
    let ca = Ca::create("ferry-test-vault").expect("ca");
    let replica = identity(&ca, REPLICA_CN);
    let primary = identity(&ca, PRIMARY_CN);
    Pki { ca, replica, primary }
}

pub struct Vm {
    pub vm: Arc<RunningVm>,
    pub guard: VmGuard,
    /// (target, path, size)
    pub disks: Vec<(String, PathBuf, u64)>,
    pub run_dir: PathBuf,
}

impl Vm {
    pub fn capture_disks(&self) -> Vec<CaptureDisk> {
        self.disks
            .iter()
            .map(|(t, _, s)| CaptureDisk { target: t.clone(), size: *s, format: DiskFormat::Qcow2 })
            .collect()
    }

    pub async fn io(&self, target: &str) -> GuestIo<'_> {
        let t: &str = &self.disks.iter().find(|d| d.0 == target).expect("disk").0;
        GuestIo::open(self.vm.qmp(), t).await.expect("guest io")
    }

    pub async fn write(&self, target: &str, off: u64, len: u64, pattern: u8) {
        self.io(target).await.write_pattern(off, len, pattern).await.expect("write");
    }

    pub async fn flush_all(&self) {
        for (t, _, _) in &self.disks {
            self.io(t).await.flush().await.expect("flush");
        }
    }

    pub fn path(&self, target: &str) -> PathBuf {
        self.disks.iter().find(|d| d.0 == target).expect("disk").1.clone()
    }
}

pub fn spec(name: &str, disks: &[(String, PathBuf, u64)], guest_agent: bool) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        uuid: uuid::Uuid::new_v4(),
        vcpus: 1,
        memory_mib: 64,
        disks: disks
            .iter()
            .map(|(t, p, _)| DiskSpec { target: t.clone(), path: p.clone(), format: DiskFormat::Qcow2 })
            .collect(),
        nics: vec![],
        guest_agent,
        boot: Boot::Disk,
        accel: Accel::Tcg,
        extra_serial_log: None,
    }
}

/// Create qcow2 disks and start a VM without OS (vCPUs paused to spare the CPU; the block layer
/// keeps working).
pub async fn start_vm(dir: &Path, name: &str, disks: &[(&str, u64)], guest_agent: bool) -> Vm {
    let mut ds = Vec::new();
    for (t, size) in disks {
        let p = dir.join(format!("{name}-{t}.qcow2"));
        if !p.exists() {
            img::create(&p, DiskFormat::Qcow2, &CreateOptions { size: Some(*size), ..Default::default() })
                .await
                .expect("qemu-img create");
        }
        ds.push((t.to_string(), p, *size));
    }
    start_existing(dir, name, ds, guest_agent).await
}

pub async fn start_existing(dir: &Path, name: &str, ds: Vec<(String, PathBuf, u64)>, guest_agent: bool) -> Vm {
    let run_dir = dir.join(format!("run-{name}"));
    let vm = Qemu::start(&spec(name, &ds, guest_agent), &run_dir).await.expect("start qemu");
    let guard = VmGuard(vm.pid());
    vm.qmp().execute("stop", serde_json::Value::Null).await.expect("stop vcpus");
    Vm { vm: Arc::new(vm), guard, disks: ds, run_dir }
}

pub async fn receiver(root: &Path, pki: &Pki, ack_every: u64) -> Receiver {
    receiver_at(root, pki, ack_every, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
}

pub async fn receiver_at(root: &Path, pki: &Pki, ack_every: u64, addr: SocketAddr) -> Receiver {
    let allow = Allowlist::new();
    allow.allow_any_pair(PRIMARY_CN);
    let mut cfg =
        ReceiverConfig::new(addr, pki.replica.server_config().expect("server tls"), allow, root.to_path_buf());
    cfg.ack_every = ack_every;
    Receiver::start(cfg).await.expect("receiver")
}

pub fn primary(vm: &Vm, staging: &Path, vm_id: &str, addr: SocketAddr, pki: &Pki) -> Primary {
    let mut cfg = PrimaryConfig::new(
        vm_id,
        "pair-1",
        vm.capture_disks(),
        staging,
        addr,
        "localhost",
        pki.primary.client_config().expect("client tls"),
    );
    cfg.send.retry_delay = Duration::from_millis(100);
    Primary::new(cfg, vm.vm.clone()).expect("primary")
}

/// Flush the VM's disks and compare the replica's latest point of every disk with the source.
pub async fn assert_latest_identical(rx: &Receiver, vm_id: &str, vm: &Vm) {
    vm.flush_all().await;
    let rep = rx.store().vm(vm_id).await.expect("replica");
    let points = rep.recovery_points().expect("points");
    let latest = points.last().expect("a point");
    for (t, p, _) in &vm.disks {
        let top = rep.point_file(&latest.id, t).expect("point file");
        assert!(
            img::compare(&top, p, true).await.expect("compare"),
            "disk {t}: replica {} differs from source",
            latest.id
        );
    }
    // RP-1: the point's manifest describes the source disk as a whole, and re-reading the
    // replica's chain matches it.
    let (_, check) = rep.verify_point(&latest.id, None).await.expect("verify");
    assert!(check.ok(), "point {} verifies: {check:?}", latest.id);
    let m = rep.manifest(&latest.id).expect("manifest").expect("the point is sealed");
    for (t, p, _) in &vm.disks {
        let dm = m.disks.iter().find(|d| &d.target == t).expect("manifest of the disk");
        // A source with a backing chain (a failed-over VM's overlay) is read as one raw image.
        let raw = p.with_extension("describe.raw");
        let flat = match img::info(p, true).await.expect("info").backing_filename {
            Some(_) => {
                img::convert(p, &raw, DiskFormat::Raw, true).await.expect("flatten");
                raw.clone()
            }
            None => p.clone(),
        };
        let reader = ferry_repl::image::ChainReader::open_chain(&[flat], dm.size, true).await.expect("source reader");
        let source = ferry_repl::manifest::describe(&reader, t).expect("describe source");
        let _ = std::fs::remove_file(&raw);
        assert_eq!(source.root, dm.root, "disk {t}: the manifest's root is the source disk's");
    }
}

/// The content of a point's disk as raw bytes.
pub async fn point_bytes(rx: &Receiver, vm_id: &str, point: &str, target: &str, tmp: &Path) -> Vec<u8> {
    let rep = rx.store().vm(vm_id).await.expect("replica");
    let top = rep.point_file(point, target).expect("point file");
    let out = tmp.join(format!("{point}-{target}.raw"));
    img::convert(&top, &out, DiskFormat::Raw, true).await.expect("convert");
    let b = std::fs::read(&out).expect("read raw");
    let _ = std::fs::remove_file(&out);
    b
}

/// A file of pseudo-random bytes (incompressible).
pub fn random_file(path: &Path, len: usize, seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut b = vec![0u8; len];
    r.fill_bytes(&mut b);
    std::fs::write(path, b).expect("write random file");
}

/// A file of text-like, repetitive bytes (compressible).
pub fn text_file(path: &Path, len: usize, seed: u64) {
    let words = ["replica", "ferry", "cluster", "bitmap", "qcow2", "point", "host", "the", "and", "vault"];
    let mut s = String::with_capacity(len + 64);
    let mut i = seed as usize;
    while s.len() < len {
        s.push_str(words[i % words.len()]);
        s.push(if i.is_multiple_of(13) { '\n' } else { ' ' });
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s.truncate(len);
    std::fs::write(path, s).expect("write text file");
}

/// Write a file's content through HMP qemu-io (`write -s`).
pub async fn write_file(vm: &Vm, target: &str, off: u64, len: u64, file: &Path) {
    vm.vm.qmp().qemu_io(target, &format!("write -q -s {} {off} {len}", file.display())).await.expect("write -s");
}
