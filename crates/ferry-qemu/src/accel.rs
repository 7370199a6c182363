//! Accelerator choice (HOST-2): KVM only when it can really boot a Linux guest, else TCG.
//!
//! `/dev/kvm` may exist and still be unusable for normal guests (on the development machines it
//! is a nested PVM that hangs a stock 64-bit kernel). The probe therefore boots the test guest's
//! kernel with `-accel kvm -cpu qemu64` (`-cpu host` aborts QEMU 7.2 on PVM) and
//! `ferry.workload=probe`, whose `/init` prints `FERRY-BOOT-OK` on the serial console and powers
//! off. Marker seen within the timeout → KVM; otherwise TCG. The answer is cached in a file.
//! `FERRY_ACCEL=tcg|kvm` in the environment overrides everything.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Serial marker printed by the test guest's `/init` as its first line.
pub const BOOT_MARKER: &str = "FERRY-BOOT-OK";

/// Default time the probe waits for the marker.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// Probe with [`DEFAULT_PROBE_TIMEOUT`]; see [`probe_kvm_with_timeout`].
pub async fn probe_kvm(kernel: &Path, initrd: &Path, cache_file: Option<&Path>) -> Result<Accel> {
    probe_kvm_with_timeout(kernel, initrd, cache_file, DEFAULT_PROBE_TIMEOUT).await
}

/// Decide the accelerator: `FERRY_ACCEL`, then the cache file, then `/dev/kvm` presence, then a
/// real boot of `kernel` + `initrd` under KVM. The result (not an override) is written to the
/// cache file.
pub async fn probe_kvm_with_timeout(
    kernel: &Path,
    initrd: &Path,
    cache_file: Option<&Path>,
    timeout: Duration,
) -> Result<Accel> {
    if let Ok(v) = std::env::var("FERRY_ACCEL") {
        return Accel::parse(&v)
            .ok_or_else(|| Error::new(ErrorKind::InvalidSpec, format!("FERRY_ACCEL must be tcg or kvm, not {v:?}")));
    }
    if let Some(cache) = cache_file {
        if let Ok(s) = std::fs::read_to_string(cache) {
            if let Some(a) = Accel::parse(&s) {
                return Ok(a);
            }
            tracing::warn!(file = %cache.display(), "Ignoring unreadable accelerator cache");
        }
    }
    let accel = if !Path::new("/dev/kvm").exists() {
        tracing::info!("No /dev/kvm; using TCG");
        Accel::Tcg
    } else {
        boot_test(kernel, initrd, timeout).await?
    };
    if let Some(cache) = cache_file {
        std::fs::write(cache, accel.as_str())
            .map_err(|e| Error::io(format!("Cannot write accelerator cache {}", cache.display()), e))?;
    }
    Ok(accel)
}

async fn boot_test(kernel: &Path, initrd: &Path, timeout: Duration) -> Result<Accel> {
    for f in [kernel, initrd] {
        if !f.is_file() {
            return Err(Error::new(ErrorKind::InvalidSpec, format!("Probe file {} does not exist", f.display())));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| Error::io("Cannot create probe directory", e))?;
    let serial = dir.path().join("serial.log");
    let serial_arg = format!("file,id=s0,path={}", serial.to_string_lossy().replace(',', ",,"));
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-cpu", "qemu64", "-machine", "q35", "-m", "128"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-chardev", &serial_arg, "-serial", "chardev:s0"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 ferry.workload=probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io("Cannot start qemu-system-x86_64 for the KVM probe", e))?;
    let start = Instant::now();
    let mut result = Accel::Tcg;
    loop {
        let text = std::fs::read(&serial).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(BOOT_MARKER) {
            result = Accel::Kvm;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            tracing::info!(%status, "KVM probe QEMU exited before the guest booted");
            break;
        }
        if start.elapsed() > timeout {
            tracing::info!(?timeout, "KVM probe guest did not boot; using TCG");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stop the probe VM (our own child, by pid via the Child handle) and reap it.
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    tracing::info!(accel = result.as_str(), elapsed = ?start.elapsed(), "KVM probe done");
    Ok(result)
}
