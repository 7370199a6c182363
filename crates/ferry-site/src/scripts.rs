//! Recovery plan scripts (PLAN-3), run by the site manager itself — never on a host.
//!
//! A plan names a script by a path relative to the site manager's script library
//! (`script_library` in the site file); the same relative path is used on both sites. The path is
//! checked as text first (no absolute path, no `..`, canonical form: `ferry_core::paths`), then
//! resolved on disk: after following symlinks it must still lie inside the library, be a regular
//! file and be executable. The script runs in its own process group with the library as working
//! directory, a clean environment and a time limit (600 s at most); the group is killed when the
//! limit passes. Exit code 0 and nothing on stderr means success; anything else fails the step.
//!
//! The environment tells the script where it runs:
//!
//! | variable | value |
//! |---|---|
//! | `FERRY_PLAN_NAME` | the plan's name |
//! | `FERRY_PLAN_GROUP` | the group number (1..=7) |
//! | `FERRY_PLAN_STEP` | `Pre` or `Post` |
//! | `FERRY_FAILOVER_TYPE` | `TestFailover`, `PlannedFailover` or `UnplannedFailover` |
//! | `FERRY_FAILOVER_DIRECTION` | `PrimaryToRecovery` or `RecoveryToPrimary` |
//! | `FERRY_SITE_NAME` | this site manager's friendly name |
//!
//! Only the exit code and the run time go back to the vault; the script's output stays in the
//! site manager's log (a failed script's first stderr line is quoted in the error message).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_types::plan::{ScriptRun, SCRIPT_TIMEOUT_SECS};
use ferry_types::ApiError;

/// Resolve a library-relative script path to the file it names, refusing escapes.
pub fn resolve(library: Option<&Path>, path: &str) -> Result<PathBuf, ApiError> {
    ferry_core::paths::validate_relative_script_path(path).map_err(ApiError::from)?;
    let library = library.ok_or_else(|| {
        ApiError::new("NoScriptLibrary", "This site manager has no script library")
            .recommend("Set script_library in the site manager's configuration to the directory of plan scripts")
    })?;
    let lib = std::fs::canonicalize(library).map_err(|e| {
        ApiError::new("ScriptLibraryMissing", format!("The script library {} cannot be read: {e}", library.display()))
    })?;
    let full = std::fs::canonicalize(lib.join(path)).map_err(|_| {
        ApiError::new("ScriptNotFound", format!("Script {path} is not in the script library"))
            .recommend("Put the script at the same relative path in the script library of both sites")
    })?;
    if !full.starts_with(&lib) {
        return Err(ApiError::new("ScriptOutsideLibrary", format!("Script {path} leads outside the script library"))
            .cause("A symbolic link in the library points elsewhere"));
    }
    let meta = std::fs::metadata(&full)
        .map_err(|e| ApiError::new("ScriptNotFound", format!("Script {path} cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(ApiError::new("ScriptNotFound", format!("Script {path} is not a file")));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ApiError::new("ScriptNotExecutable", format!("Script {path} is not executable"))
            .recommend("chmod +x the script in the script library"));
    }
    Ok(full)
}

fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// Run a plan script; the output for the vault holds the exit code and the run time.
pub async fn run(library: Option<&Path>, site_name: &str, run: &ScriptRun) -> Result<serde_json::Value, ApiError> {
    let file = resolve(library, &run.path)?;
    let cwd = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    let limit = Duration::from_secs(run.timeout_secs.clamp(1, SCRIPT_TIMEOUT_SECS));
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&file);
    cmd.current_dir(&cwd)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .env("FERRY_PLAN_NAME", &run.plan)
        .env("FERRY_PLAN_GROUP", run.group.to_string())
        .env("FERRY_PLAN_STEP", format!("{:?}", run.phase))
        .env("FERRY_FAILOVER_TYPE", run.failover_type.as_str())
        .env("FERRY_FAILOVER_DIRECTION", &run.direction)
        .env("FERRY_SITE_NAME", site_name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| ApiError::new("ScriptFailed", format!("Script {} cannot be started: {e}", run.path)))?;
    let pid = child.id();
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| ApiError::new("ScriptFailed", format!("Script {} failed: {e}", run.path)))?,
        Err(_) => {
            if let Some(pid) = pid {
                // The whole process group: the script and whatever it started.
                let _ =
                    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            return Err(ApiError::new(
                "ScriptTimedOut",
                format!("Script {} did not finish within {} s and was stopped", run.path, limit.as_secs()),
            ));
        }
    };
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        script = %run.path, plan = %run.plan, group = run.group, status = ?output.status, ms,
        stdout = %String::from_utf8_lossy(&output.stdout), stderr = %String::from_utf8_lossy(&output.stderr),
        "recovery plan script ran"
    );
    match output.status.code() {
        Some(0) if output.stderr.is_empty() => {
            Ok(serde_json::json!({"script": run.path, "exit_code": 0, "duration_ms": ms}))
        }
        Some(0) => Err(ApiError::new(
            "ScriptWroteToStderr",
            format!("Script {} wrote to stderr: {}", run.path, first_line(&output.stderr)),
        )
        .cause("A plan script that writes to stderr fails its step")),
        Some(code) => Err(ApiError::new(
            "ScriptFailed",
            format!("Script {} exited with code {code}: {}", run.path, first_line(&output.stderr)),
        )),
        None => Err(ApiError::new("ScriptFailed", format!("Script {} was killed by a signal", run.path))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::plan::{PlanFailoverType, StepPhase};

    fn write(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn script(path: &str, timeout: u64) -> ScriptRun {
        ScriptRun {
            path: path.into(),
            plan: "app".into(),
            group: 2,
            phase: StepPhase::Pre,
            failover_type: PlanFailoverType::PlannedFailover,
            direction: "PrimaryToRecovery".into(),
            timeout_secs: timeout,
        }
    }

    fn code(r: Result<serde_json::Value, ApiError>) -> String {
        match r {
            Ok(_) => "Ok".into(),
            Err(e) => e.code,
        }
    }

    #[tokio::test]
    async fn plan_3_script_runs_with_its_environment_and_fails_on_exit_code_or_stderr() {
        let tmp = tempfile::tempdir().expect("tmp");
        let lib = tmp.path().join("lib");
        std::fs::create_dir_all(lib.join("db")).expect("mkdir");
        let out = tmp.path().join("env.txt");
        write(
            &lib,
            "db/env.sh",
            &format!("#!/bin/sh\necho \"$FERRY_PLAN_NAME $FERRY_PLAN_GROUP $FERRY_PLAN_STEP $FERRY_FAILOVER_TYPE $FERRY_FAILOVER_DIRECTION $FERRY_SITE_NAME $(pwd)\" > {}\n", out.display()),
        );
        write(&lib, "fail.sh", "#!/bin/sh\necho 'database not ready' >&2\nexit 3\n");
        write(&lib, "stderr.sh", "#!/bin/sh\necho 'warning: slow' >&2\n");
        write(&lib, "slow.sh", "#!/bin/sh\nsleep 30\n");
        std::fs::write(lib.join("noexec.sh"), "#!/bin/sh\n").expect("write");
        let r = run(Some(&lib), "VMM-Chicago", &script("db/env.sh", 600)).await;
        assert_eq!(r.as_ref().map(|v| v["exit_code"].clone()).ok(), Some(serde_json::json!(0)), "{r:?}");
        let env = std::fs::read_to_string(&out).expect("env written");
        let lib_canon = std::fs::canonicalize(&lib).expect("canon");
        assert_eq!(
            env.trim(),
            format!("app 2 Pre PlannedFailover PrimaryToRecovery VMM-Chicago {}", lib_canon.join("db").display())
        );
        let e = run(Some(&lib), "s", &script("fail.sh", 600)).await.expect_err("fails");
        assert_eq!(e.code, "ScriptFailed");
        assert_eq!(e.message, "Script fail.sh exited with code 3: database not ready");
        assert_eq!(code(run(Some(&lib), "s", &script("stderr.sh", 600)).await), "ScriptWroteToStderr");
        let t0 = Instant::now();
        assert_eq!(code(run(Some(&lib), "s", &script("slow.sh", 1)).await), "ScriptTimedOut");
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert_eq!(code(run(Some(&lib), "s", &script("noexec.sh", 600)).await), "ScriptNotExecutable");
        assert_eq!(code(run(Some(&lib), "s", &script("missing.sh", 600)).await), "ScriptNotFound");
        assert_eq!(code(run(None, "s", &script("fail.sh", 600)).await), "NoScriptLibrary");
    }

    #[tokio::test]
    async fn plan_3_script_paths_cannot_leave_the_library() {
        let tmp = tempfile::tempdir().expect("tmp");
        let lib = tmp.path().join("lib");
        std::fs::create_dir_all(&lib).expect("mkdir");
        write(tmp.path(), "outside.sh", "#!/bin/sh\ntouch /tmp/should-not-run\n");
        std::os::unix::fs::symlink(tmp.path().join("outside.sh"), lib.join("link.sh")).expect("symlink");
        std::os::unix::fs::symlink(tmp.path(), lib.join("up")).expect("symlink dir");
        assert_eq!(code(run(Some(&lib), "s", &script("../outside.sh", 600)).await), "PathTraversal");
        assert_eq!(code(run(Some(&lib), "s", &script("/bin/true", 600)).await), "PathNotRelative");
        assert_eq!(code(run(Some(&lib), "s", &script("link.sh", 600)).await), "ScriptOutsideLibrary");
        assert_eq!(code(run(Some(&lib), "s", &script("up/outside.sh", 600)).await), "ScriptOutsideLibrary");
        assert_eq!(code(run(Some(&lib), "s", &script("./link.sh", 600)).await), "PathNotNormalized");
    }
}
