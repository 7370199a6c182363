//! Starting, re-attaching to, stopping and watching QEMU processes (HOST-1, HOST-3).
//!
//! A VM runs in a run directory that holds everything needed to find it again after the host
//! agent restarts: `spec.json`, `qemu.pid`, `qmp.sock`, `qga.sock`, `qemu.log` (QEMU's
//! stdout+stderr), `serial.log` and `stop-requested` (written before Ferry asks QEMU to quit, so
//! that a later exit is not mistaken for a crash).
//!
//! Dropping a [`RunningVm`] closes the QMP connection and leaves QEMU running;
//! [`RunningVm::attach`] connects again.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::process::{self, ExitCode};
use crate::qga::Qga;
use crate::qmp::{Qmp, RunState};
use crate::spec::{RunPaths, VmSpec};

/// The QEMU system emulator binary.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Why a QEMU process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Ferry asked it to stop.
    Stopped,
    /// It went away without being asked to.
    Crashed,
}

/// What is known about an exited QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitReport {
    pub kind: ExitKind,
    pub pid: u32,
    /// Exit status or signal, known only if this agent spawned the process.
    pub exit: Option<ExitCode>,
    /// One-line human reason.
    pub reason: String,
    /// Last lines of `qemu.log`.
    pub log_tail: Vec<String>,
}

/// State of a VM's QEMU process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    /// QEMU runs; its QMP run state (`running`, `paused`, `shutdown` after a guest poweroff...).
    Running(RunState),
    /// QEMU is gone.
    Exited(ExitReport),
}

/// How [`RunningVm::shutdown_graceful`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownOutcome {
    /// The guest powered off by itself after the ACPI request.
    pub graceful: bool,
    pub elapsed: Duration,
}

/// Namespace for starting and deleting VMs.
pub struct Qemu;

/// Build the exit report for `pid` from the run directory.
pub fn exit_report(pid: u32, paths: &RunPaths) -> ExitReport {
    let exit = process::recorded_exit(pid);
    let log_tail = process::log_tail(&paths.log, 5);
    let requested = paths.stop_marker.exists();
    let how = match exit {
        Some(ExitCode { signal: Some(sig), .. }) => format!("was killed by {}", process::signal_name(sig)),
        Some(ExitCode { code: Some(code), .. }) => format!("exited with status {code}"),
        _ => "disappeared (exit status unknown: not started by this agent)".to_string(),
    };
    let (kind, reason) = if requested {
        (ExitKind::Stopped, format!("QEMU pid {pid} stopped on request ({how})"))
    } else {
        let mut r = format!("QEMU pid {pid} {how}");
        if let Some(last) = log_tail.last() {
            r.push_str(&format!("; last log line: {last}"));
        }
        (ExitKind::Crashed, r)
    };
    ExitReport { kind, pid, exit, reason, log_tail }
}

fn read_pid(paths: &RunPaths) -> Result<u32> {
    let s = std::fs::read_to_string(&paths.pidfile).map_err(|e| {
        Error::with_source(ErrorKind::Process, format!("Cannot read pidfile {}", paths.pidfile.display()), e)
    })?;
    s.trim().parse().map_err(|e| {
        Error::with_source(ErrorKind::Parse, format!("Pidfile {} holds no pid", paths.pidfile.display()), e)
    })
}

fn read_spec(run_dir: &Path) -> Result<VmSpec> {
    let p = RunPaths::new(run_dir, None).spec;
    let text = std::fs::read(&p)
        .map_err(|e| Error::with_source(ErrorKind::Process, format!("Cannot read {}", p.display()), e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::with_source(ErrorKind::Parse, format!("Invalid VM spec in {}", p.display()), e))
}

fn is_our_qemu(pid: u32, paths: &RunPaths) -> bool {
    let Some(argv) = process::cmdline(pid) else {
        return false;
    };
    let qmp = paths.qmp.to_string_lossy().replace(',', ",,");
    argv.first().is_some_and(|a| a.contains("qemu-system")) && argv.iter().any(|a| a.contains(qmp.as_str()))
}

impl Qemu {
    /// Validate `spec`, then start QEMU detached in `run_dir` and connect to its QMP socket.
    /// An invalid spec is refused before anything is created.
    pub async fn start(spec: &VmSpec, run_dir: &Path) -> Result<RunningVm> {
        spec.validate(run_dir)?;
        let paths = RunPaths::new(run_dir, Some(spec));
        if let Ok(pid) = read_pid(&paths) {
            if process::pid_alive(pid) && is_our_qemu(pid, &paths) {
                return Err(Error::new(
                    ErrorKind::Process,
                    format!("A QEMU (pid {pid}) already runs in {}", run_dir.display()),
                ));
            }
        }
        std::fs::create_dir_all(run_dir)
            .map_err(|e| Error::io(format!("Cannot create run directory {}", run_dir.display()), e))?;
        for stale in [&paths.qmp, &paths.qga, &paths.pidfile, &paths.stop_marker] {
            match std::fs::remove_file(stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("Cannot remove {}", stale.display()), e)),
            }
        }
        let spec_json = serde_json::to_vec_pretty(spec)
            .map_err(|e| Error::with_source(ErrorKind::Parse, "Cannot serialise VM spec", e))?;
        std::fs::write(&paths.spec, spec_json)
            .map_err(|e| Error::io(format!("Cannot write {}", paths.spec.display()), e))?;
        let args = crate::sandbox::with_sandbox(spec.to_args(&paths));
        tracing::info!(vm = %spec.name, args = ?args, "Starting QEMU");
        let pid = process::spawn_detached(QEMU_BINARY, &args, &paths.log)?;
        let started = Instant::now();
        let qmp = loop {
            match Qmp::connect(&paths.qmp, Duration::from_millis(200)).await {
                Ok(q) => break q,
                Err(e) => {
                    if !process::pid_alive(pid) {
                        let report = exit_report(pid, &paths);
                        return Err(Error::with_source(
                            ErrorKind::Process,
                            format!("QEMU for {} failed to start: {}", spec.name, report.reason),
                            e,
                        ));
                    }
                    if started.elapsed() > Duration::from_secs(20) {
                        let _ = process::send_signal(pid, Signal::SIGKILL);
                        return Err(Error::with_source(
                            ErrorKind::Timeout,
                            format!("QEMU for {} opened no QMP socket within 20 s", spec.name),
                            e,
                        ));
                    }
                }
            }
        };
        tracing::info!(vm = %spec.name, pid, elapsed = ?started.elapsed(), "QEMU started");
        Ok(RunningVm { pid, paths, spec: spec.clone(), qmp })
    }

    /// The exit report of the QEMU recorded in `run_dir`, or `None` if it still runs.
    pub fn last_exit(run_dir: &Path) -> Result<Option<ExitReport>> {
        let spec = read_spec(run_dir).ok();
        let paths = RunPaths::new(run_dir, spec.as_ref());
        let pid = read_pid(&paths)?;
        if process::pid_alive(pid) && is_our_qemu(pid, &paths) {
            Ok(None)
        } else {
            Ok(Some(exit_report(pid, &paths)))
        }
    }

    /// Delete a stopped VM's run directory, and its disk files when `with_disks`.
    pub fn delete(run_dir: &Path, with_disks: bool) -> Result<()> {
        let spec = read_spec(run_dir)?;
        let paths = RunPaths::new(run_dir, Some(&spec));
        if let Ok(pid) = read_pid(&paths) {
            if process::pid_alive(pid) && is_our_qemu(pid, &paths) {
                return Err(Error::new(
                    ErrorKind::Process,
                    format!("VM {} still runs (pid {pid}); stop it first", spec.name),
                ));
            }
        }
        if with_disks {
            for d in &spec.disks {
                match std::fs::remove_file(&d.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(format!("Cannot delete disk {}", d.path.display()), e)),
                }
            }
        }
        std::fs::remove_dir_all(run_dir).map_err(|e| Error::io(format!("Cannot delete {}", run_dir.display()), e))
    }
}

/// A QEMU process Ferry started or attached to, with its QMP connection.
#[derive(Debug)]
pub struct RunningVm {
    pid: u32,
    paths: RunPaths,
    spec: VmSpec,
    qmp: Qmp,
}

impl RunningVm {
    /// Re-attach to the QEMU recorded in `run_dir` (after a host-agent restart). Fails with
    /// [`ErrorKind::Process`] if the pid is gone or is not our QEMU ([`Qemu::last_exit`] tells why).
    pub async fn attach(run_dir: &Path) -> Result<RunningVm> {
        let spec = read_spec(run_dir)?;
        let paths = RunPaths::new(run_dir, Some(&spec));
        let pid = read_pid(&paths)?;
        if !process::pid_alive(pid) {
            let report = exit_report(pid, &paths);
            return Err(Error::new(ErrorKind::Process, format!("Cannot attach to {}: {}", spec.name, report.reason)));
        }
        if !is_our_qemu(pid, &paths) {
            return Err(Error::new(
                ErrorKind::Process,
                format!("Pid {pid} from {} is not the QEMU of this run directory", paths.pidfile.display()),
            ));
        }
        let qmp = Qmp::connect(&paths.qmp, Duration::from_secs(5)).await?;
        tracing::info!(vm = %spec.name, pid, "Re-attached to QEMU");
        Ok(RunningVm { pid, paths, spec, qmp })
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The run directory files.
    pub fn paths(&self) -> &RunPaths {
        &self.paths
    }

    /// The definition it runs.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The QMP connection.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// Connect to the guest agent channel (the spec must have `guest_agent`).
    pub async fn connect_qga(&self) -> Result<Qga> {
        if !self.spec.guest_agent {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                format!("VM {} has no guest agent channel", self.spec.name),
            ));
        }
        Qga::connect(&self.paths.qga).await
    }

    /// The serial console output so far.
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.paths.serial).unwrap_or_default()).into_owned()
    }

    /// `None` while QEMU runs, else why it is gone.
    pub fn exit_report(&self) -> Option<ExitReport> {
        if process::pid_alive(self.pid) {
            None
        } else {
            Some(exit_report(self.pid, &self.paths))
        }
    }

    /// Process state plus QMP run state.
    pub async fn status(&self) -> Result<VmState> {
        if let Some(r) = self.exit_report() {
            return Ok(VmState::Exited(r));
        }
        match self.qmp.execute_with_timeout("query-status", Value::Null, Duration::from_secs(5)).await {
            Ok(v) => {
                let status = v.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string();
                let running = v.get("running").and_then(Value::as_bool).unwrap_or(false);
                Ok(VmState::Running(RunState { status, running }))
            }
            Err(e) if *e.kind() == ErrorKind::Disconnected => {
                // QEMU closed the socket: it is exiting. Give it a moment to be reaped.
                process::wait_gone(self.pid, Duration::from_secs(2)).await;
                match self.exit_report() {
                    Some(r) => Ok(VmState::Exited(r)),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn mark_stop(&self) {
        if let Err(e) = std::fs::write(&self.paths.stop_marker, b"stop\n") {
            tracing::warn!(error = %e, "Cannot write stop marker");
        }
    }

    /// Ask the guest to power off (ACPI), wait for the `SHUTDOWN` event or process exit, then
    /// quit QEMU (it stays alive because of `-no-shutdown`). After `timeout` the VM is stopped
    /// hard instead.
    pub async fn shutdown_graceful(&self, timeout: Duration) -> Result<ShutdownOutcome> {
        let start = Instant::now();
        let graceful = self.powerdown_guest(timeout).await?;
        self.hard_stop().await?;
        Ok(ShutdownOutcome { graceful, elapsed: start.elapsed() })
    }

    /// Ask the guest to power off (ACPI) and wait up to `timeout` for it; QEMU stays alive
    /// (`-no-shutdown`) so its disks can still be read, e.g. for a final replication cycle.
    /// Returns whether the guest powered off (false at once for a paused guest).
    pub async fn powerdown_guest(&self, timeout: Duration) -> Result<bool> {
        let mut events = self.qmp.subscribe();
        let status = match self.status().await? {
            VmState::Running(s) => s.status,
            VmState::Exited(_) => return Ok(true),
        };
        let graceful = if status == "shutdown" {
            true
        } else if status == "paused" {
            // A paused guest cannot handle the power button.
            false
        } else {
            self.qmp.execute("system_powerdown", Value::Null).await?;
            tokio::select! {
                r = events.wait_named("SHUTDOWN", timeout) => r.is_ok(),
                gone = process::wait_gone(self.pid, timeout) => gone,
            }
        };
        Ok(graceful)
    }

    /// Pause the vCPUs (QMP `stop`): the guest writes nothing more, and QEMU completes the
    /// requests already in flight before it answers.
    pub async fn pause_guest(&self) -> Result<()> {
        self.qmp.execute("stop", Value::Null).await.map(|_| ())
    }

    /// If QEMU paused the guest on a failed write (run state `io-error`, e.g. its image's file
    /// system ran full: QEMU's default `werror=enospc`), let it go on (`cont`): QEMU retries
    /// the failed requests, so nothing the guest wrote is lost; if the cause persists, the
    /// guest pauses again at its next write. Whether it was paused so.
    pub async fn resume_after_io_error(&self) -> Result<bool> {
        match self.status().await? {
            VmState::Running(r) if r.status == "io-error" => {
                self.qmp.execute("cont", Value::Null).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Stop QEMU now: `quit`, then SIGKILL by pid if it lingers.
    pub async fn hard_stop(&self) -> Result<()> {
        self.mark_stop();
        if !process::pid_alive(self.pid) {
            return Ok(());
        }
        if let Err(e) = self.qmp.quit(Duration::from_secs(3)).await {
            tracing::warn!(error = %e, "QMP quit failed; killing QEMU");
        }
        if process::wait_gone(self.pid, Duration::from_secs(5)).await {
            return Ok(());
        }
        process::send_signal(self.pid, Signal::SIGKILL)?;
        if process::wait_gone(self.pid, Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Process, format!("QEMU pid {} survived SIGKILL", self.pid)))
        }
    }
}
