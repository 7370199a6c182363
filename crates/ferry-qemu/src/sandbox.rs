//! QEMU's seccomp sandbox (SEC-3): every QEMU Ferry starts for a VM runs with `-sandbox on` and
//! denies what a VM process never needs — obsolete system calls, raising its privileges,
//! spawning processes (taps are created by the agent and passed with `script=no`), and changing
//! scheduling or resource limits — so a guest that takes over its QEMU gains little more than the
//! VM's own disks. QEMU built without seccomp support is started without it, with a warning.

use std::sync::OnceLock;

/// The option Ferry starts VM processes with.
pub const SANDBOX_ARGS: [&str; 2] =
    ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"];

/// Whether this QEMU knows `-sandbox` (built with seccomp), asked once per process.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let known = std::process::Command::new(crate::launcher::QEMU_BINARY)
            .arg("-help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("-sandbox ")))
            .unwrap_or(false);
        if !known {
            tracing::warn!("this QEMU has no seccomp sandbox (-sandbox); VMs run without it");
        }
        known
    })
}

/// `args` with the sandbox in front when QEMU supports it.
pub fn with_sandbox(args: Vec<String>) -> Vec<String> {
    if !supported() {
        return args;
    }
    SANDBOX_ARGS.iter().map(|s| s.to_string()).chain(args).collect()
}
