//! Building and locating the test guest (HOST-6) from Rust: runs `scripts/build-test-guest.sh`
//! into an output directory once, under an exclusive `flock` on `<outdir>.lock`, so parallel
//! tests (threads or processes) never race. The script itself is idempotent (input-hash stamp).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, ErrorKind, Result};

/// Kernel and initramfs of the built test guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl TestGuest {
    /// Kernel command line for the records workload on `disk` (e.g. `/dev/vda`).
    pub fn records_cmdline(disk: &str, interval_ms: u64, count: u64) -> String {
        format!(
            "console=ttyS0 quiet panic=-1 ferry.workload=records ferry.disk={disk} \
             ferry.interval_ms={interval_ms} ferry.count={count}"
        )
    }

    /// Kernel command line for the idle workload (qemu-ga only).
    pub fn idle_cmdline() -> String {
        "console=ttyS0 quiet panic=-1 ferry.workload=idle".to_string()
    }
}

/// Build (or reuse) the test guest in `outdir` with the script at `script`.
pub fn ensure_test_guest(script: &Path, outdir: &Path) -> Result<TestGuest> {
    if let Some(parent) = outdir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("Cannot create {}", parent.display()), e))?;
    }
    let lock_path = outdir.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(format!("Cannot open {}", lock_path.display()), e))?;
    // SAFETY: flock on a valid descriptor owned by `lock`, which outlives the call.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io("Cannot lock the test guest build", std::io::Error::last_os_error()));
    }
    let out = Command::new("bash")
        .arg(script)
        .arg(outdir)
        .output()
        .map_err(|e| Error::io("Cannot run the test guest build script", e))?;
    drop(lock);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        return Err(Error::new(
            ErrorKind::Tool,
            format!(
                "Test guest build failed ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
        ));
    }
    let g = TestGuest { kernel: outdir.join("vmlinuz"), initrd: outdir.join("initrd.img") };
    if !g.kernel.is_file() || !g.initrd.is_file() {
        return Err(Error::new(
            ErrorKind::Tool,
            format!("Test guest build left no vmlinuz/initrd.img in {}", outdir.display()),
        ));
    }
    Ok(g)
}
