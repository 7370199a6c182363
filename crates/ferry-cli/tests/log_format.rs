//! Logs as JSON lines on request (`--log-format json`): a real vault started with it writes
//! every log line to standard error as one JSON object with its level, target and message.
//! Under systemd (JOURNAL_STREAM set) text lines carry neither colour codes nor a timestamp of
//! their own, as journald adds its own.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Stops the process it was given (by its PID) when dropped, also when the test fails.
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a vault started with `args` and `env` logs at info level in its first seconds.
fn vault_log_lines(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(common::ferry_bin())
        .args(args)
        .args(["vault", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("vault"))
        .env("FERRY_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vault starts");
    let mut vault = Stop(child);
    let stderr = vault.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while lines.is_empty() && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            lines.push(l);
        }
    }
    // What else it logs while starting.
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
        lines.push(l);
    }
    lines
}

#[test]
fn fab_2_logs_are_json_lines_on_request() {
    let lines = vault_log_lines(&["--log-format", "json"], &[]);
    assert!(!lines.is_empty(), "the vault logged nothing at info");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{v}");
        assert!(v["fields"]["message"].is_string(), "{v}");
    }
}

#[test]
fn fab_2_logs_under_systemd_suit_journald() {
    // systemd sets JOURNAL_STREAM for a service whose output goes to the journal.
    let lines = vault_log_lines(&[], &[("JOURNAL_STREAM", "8:12345")]);
    assert!(!lines.is_empty(), "the vault logged nothing at info");
    for l in &lines {
        assert!(!l.contains('\u{1b}'), "no colour codes in the journal: {l:?}");
        assert!(
            l.trim_start().starts_with("INFO") || l.trim_start().starts_with("WARN"),
            "no timestamp of its own: {l}"
        );
    }
}
