//! Process plumbing for QEMU: detached spawn, liveness by pid, signals, exit information.
//!
//! QEMU runs in its own session (`setsid`) with stdin closed and stdout/stderr appended to a log
//! file, so it survives the host agent. While the agent that spawned it lives, a reaper thread per
//! child waits for it and records its exit status (exit code or signal) in a process-wide table;
//! after an agent restart QEMU is no longer our child and death is only seen as "pid gone".

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::{Error, ErrorKind, Result};

/// Pids spawned by this process whose reaper has not recorded an exit yet.
fn reaping() -> &'static Mutex<std::collections::HashSet<u32>> {
    static REAPING: OnceLock<Mutex<std::collections::HashSet<u32>>> = OnceLock::new();
    REAPING.get_or_init(|| Mutex::new(std::collections::HashSet::new()))
}

fn exits() -> &'static Mutex<HashMap<u32, ExitStatus>> {
    static EXITS: OnceLock<Mutex<HashMap<u32, ExitStatus>>> = OnceLock::new();
    EXITS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// How a process ended, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode {
    /// Exit status, when it exited normally.
    pub code: Option<i32>,
    /// Terminating signal.
    pub signal: Option<i32>,
}

/// Spawn `program args` detached (new session), output appended to `log`. Returns the pid.
pub fn spawn_detached(program: &str, args: &[String], log: &Path) -> Result<u32> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("Cannot open log {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| Error::io("Cannot duplicate log handle", e))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
    // SAFETY: setsid() is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child =
        cmd.spawn().map_err(|e| Error::with_source(ErrorKind::Process, format!("Cannot start {program}"), e))?;
    let pid = child.id();
    crate::qmp::lock(exits()).remove(&pid);
    crate::qmp::lock(reaping()).insert(pid);
    std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            if let Ok(status) = child.wait() {
                crate::qmp::lock(exits()).insert(pid, status);
            }
            crate::qmp::lock(reaping()).remove(&pid);
        })
        .map_err(|e| Error::io("Cannot start reaper thread", e))?;
    Ok(pid)
}

/// Exit information recorded by the reaper (only for processes this agent spawned).
pub fn recorded_exit(pid: u32) -> Option<ExitCode> {
    // A child that just died may be a zombie whose reaper has not run yet: give it a moment, so
    // the exit status (and the signal) is not lost to a race.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if let Some(s) = crate::qmp::lock(exits()).get(&pid) {
            return Some(ExitCode { code: s.code(), signal: s.signal() });
        }
        let pending = crate::qmp::lock(reaping()).contains(&pid);
        if !pending || std::time::Instant::now() >= deadline || !is_zombie_or_gone(pid) {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("Z"),
        Err(_) => true,
    }
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    if recorded_exit(pid).is_some() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the last ')' (the command may contain spaces or parentheses).
            let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// argv of `pid` from /proc.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

/// Send `sig` to `pid` (only pids Ferry started or attached to).
pub fn send_signal(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid).map_err(|_| Error::new(ErrorKind::Process, format!("Pid {pid} out of range")))?;
    match signal::kill(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(Error::with_source(ErrorKind::Process, format!("Cannot send {sig} to pid {pid}"), e)),
    }
}

/// Wait until `pid` is gone, polling; true if it went away within `timeout`.
pub async fn wait_gone(pid: u32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if !pid_alive(pid) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Last `n` non-empty lines of a log file (empty when missing).
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Signal name for messages.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {sig}"))
}
