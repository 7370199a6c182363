//! Shared helpers for the integration tests: VM specs, a kill-by-pid guard and the test guest.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_qemu::guest_build::{ensure_test_guest, TestGuest};
use ferry_qemu::img::{self, CreateOptions};
use ferry_qemu::{process, Accel, Boot, DiskFormat, DiskSpec, VmSpec};

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

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build (once, under a file lock) or reuse the test guest in `<target>/test-guest`.
/// Returns `None` with a printed reason if the build is impossible here.
pub fn test_guest() -> Option<TestGuest> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let script = workspace_root().join("scripts/build-test-guest.sh");
    match ensure_test_guest(&script, &target.join("test-guest")) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("SKIP: the test guest cannot be built here: {e}");
            None
        }
    }
}

pub async fn qcow2(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    img::create(&p, DiskFormat::Qcow2, &CreateOptions { size: Some(size), ..Default::default() })
        .await
        .expect("qemu-img create");
    p
}

/// A TCG VM without OS (SeaBIOS finds nothing to boot) with the given qcow2 disks.
pub fn diskless_os_spec(name: &str, disks: &[(&str, &Path)]) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        uuid: uuid::Uuid::new_v4(),
        vcpus: 1,
        memory_mib: 64,
        disks: disks
            .iter()
            .map(|(t, p)| DiskSpec { target: t.to_string(), path: p.to_path_buf(), format: DiskFormat::Qcow2 })
            .collect(),
        nics: vec![],
        guest_agent: false,
        boot: Boot::Disk,
        accel: Accel::Tcg,
        extra_serial_log: None,
    }
}
