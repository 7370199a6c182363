//! Test harness: a whole lab (vault, two sites, two hosts: separate `ferry` processes on
//! loopback TLS) in a temporary directory, stopped by PID when the test ends, also on failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// The test guest (built once per machine by scripts/build-test-guest.sh).
pub fn test_guest() -> ferry_qemu::guest_build::TestGuest {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = root.join("target/test-guest");
    ferry_qemu::guest_build::ensure_test_guest(&root.join("scripts/build-test-guest.sh"), &out)
        .expect("test guest builds")
}

/// A child process killed by its PID when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        term_and_wait(&mut self.0, Duration::from_secs(10));
    }
}

pub fn term_and_wait(c: &mut Child, grace: Duration) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    child: Option<Child>,
    pub bridge_prefix: String,
    /// The `ferry lab` arguments, to start the lab again on its directory.
    args: Vec<String>,
    env: Vec<(String, String)>,
}

#[derive(Default)]
pub struct LabOptions {
    pub demo_vms: bool,
    pub record: bool,
    /// Test-only replication cycle interval.
    pub test_copy_interval_ms: Option<u64>,
    /// Test failovers older than this are cleaned up by the vault (FO-1), seconds.
    pub test_failover_max_age_secs: Option<u64>,
    /// A second New York host in SilverCloud1 (SGL-1).
    pub sgl: bool,
    /// Replication bandwidth limit of the hosts, MiB/s (CAP-2).
    pub bandwidth_mib_s: Option<f64>,
    /// Replication bandwidth limit of site VMM-NewYork, pushed to its hosts (CAP-2).
    pub site_bandwidth_mib_s: Option<f64>,
    /// Daily window of automatic resynchronizations, `HH:MM-HH:MM` (REP-6).
    pub resync_window: Option<String>,
    /// Test-only tick of churn measurements (CAP-1).
    pub test_churn_tick_ms: Option<u64>,
    /// How often hosts apply retention, seconds (default: hourly, so that tests see every point).
    pub retention_interval_secs: Option<u64>,
    /// Hosts listen at their policies' replication ports (POL-2), each on its own loopback address.
    pub policy_ports: bool,
    /// Period of the hosts' background point verifier, seconds (RP-1).
    pub verify_period_secs: Option<u64>,
    /// Environment of the lab and every process it starts (e.g. FERRY_LOG_FORMAT).
    pub env: Vec<(String, String)>,
    /// Each host agent and its VMs in a network namespace of its own (`ferry lab --netns`).
    pub netns: bool,
}

impl Lab {
    pub fn start(opts: LabOptions) -> Lab {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("lab-data");
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let bridge_prefix = format!("t{}{}", std::process::id() % 1000, n);
        let mut args = vec![
            "lab".to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--port".into(),
            "0".into(),
            "--report-interval".into(),
            "1".into(),
            "--bridge-prefix".into(),
            bridge_prefix.clone(),
        ];
        if !opts.demo_vms {
            args.push("--no-demo-vms".into());
        }
        if opts.record {
            args.push("--record-vault-traffic".into());
        }
        // Retention is exercised by the engine's own tests; here it would merge the points the
        // tests inspect, so it runs rarely.
        args.push("--retention-interval-secs".into());
        args.push(opts.retention_interval_secs.unwrap_or(3600).to_string());
        if let Some(secs) = opts.verify_period_secs {
            args.push("--verify-period-secs".into());
            args.push(secs.to_string());
        }
        if let Some(b) = opts.bandwidth_mib_s {
            args.push("--bandwidth-mib-s".into());
            args.push(b.to_string());
        }
        if let Some(w) = &opts.resync_window {
            args.push("--resync-window".into());
            args.push(w.clone());
        }
        if let Some(b) = opts.site_bandwidth_mib_s {
            args.push("--site-bandwidth-mib-s".into());
            args.push(b.to_string());
        }
        if opts.sgl {
            args.push("--sgl".into());
        }
        if opts.policy_ports {
            args.push("--policy-ports".into());
        }
        if opts.netns {
            args.push("--netns".into());
        }
        if let Some(secs) = opts.test_failover_max_age_secs {
            args.push("--test-failover-max-age".into());
            args.push(secs.to_string());
        }
        if let Some(ms) = opts.test_copy_interval_ms {
            args.push("--test-copy-interval-ms".into());
            args.push(ms.to_string());
        }
        if let Some(ms) = opts.test_churn_tick_ms {
            args.push("--test-churn-tick-ms".into());
            args.push(ms.to_string());
        }
        std::fs::create_dir_all(tmp.path()).expect("tmp");
        let mut lab = Lab { tmp, dir, child: None, bridge_prefix, args, env: opts.env };
        lab.spawn_lab();
        lab
    }

    /// Start `ferry lab` on the lab's directory and wait until it is up.
    fn spawn_lab(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.tmp.path().join("lab.out")).expect("log");
        let child = Command::new(ferry_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .env("FERRY_ACCEL", "tcg")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("lab starts");
        self.child = Some(child);
        let lab = self;
        let deadline = Instant::now() + Duration::from_secs(240);
        while !lab.dir.join("ferry.env").exists() || !lab.dir.join("pids").exists() {
            if let Some(c) = lab.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("lab exited early ({st}):\n{}", lab.log());
                }
            }
            assert!(Instant::now() < deadline, "lab did not come up:\n{}", lab.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop the lab as Ctrl-C does (every process it started, VMs included) and start it again
    /// on the same directory, as a user runs `scripts/lab` again.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            term_and_wait(&mut c, Duration::from_secs(60));
        }
        assert!(!self.dir.join("pids").exists(), "the stopped lab removed its pid file:\n{}", self.log());
        assert_eq!(self.running_qemus(), Vec::<u32>::new(), "stopping the lab stops its VMs too");
        let _ = std::fs::remove_file(self.dir.join("ferry.env"));
        self.spawn_lab();
    }

    /// The QEMU processes of the lab's VMs that run now (from their pid files).
    pub fn running_qemus(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for host in ["ny1", "ny2", "ny3", "chi1", "chi2"] {
            let Ok(rd) = std::fs::read_dir(self.host_data(host).join("vms")) else { continue };
            for e in rd.flatten() {
                let Some(pid) =
                    std::fs::read_to_string(e.path().join("qemu.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok())
                else {
                    continue;
                };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&*e.path().to_string_lossy()) {
                    out.push(pid);
                }
            }
        }
        out
    }

    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.tmp.path().join("lab.out")).unwrap_or_default();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("logs")) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                s.push_str(&format!(
                    "\n--- {} ---\n{}",
                    e.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        s
    }

    /// PID of a lab process by name (`vault`, `site-newyork`, `host-ny1`, ...).
    pub fn pid(&self, name: &str) -> u32 {
        let text = std::fs::read_to_string(self.dir.join("pids")).expect("pids");
        text.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(name)).then(|| it.next().and_then(|p| p.parse().ok())).flatten()
            })
            .unwrap_or_else(|| panic!("no pid for {name}"))
    }

    pub fn env(&self, key: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join("ferry.env")).expect("env");
        text.lines()
            .find_map(|l| {
                l.strip_prefix("export ").and_then(|l| l.strip_prefix(&format!("{key}="))).map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no {key}"))
    }

    /// Run `ferry` with the lab's connection settings; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(ferry_bin())
            .args(args)
            .env("FERRY_LAB_DIR", &self.dir)
            .env_remove("FERRY_URL")
            .env_remove("FERRY_TOKEN")
            .env_remove("FERRY_CA")
            .output()
            .expect("ferry runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run a CLI command with `-o json` that must succeed; parse its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let (code, out, err) = self.cli(&a);
        assert_eq!(code, 0, "ferry {args:?} failed: {err}\n{out}");
        if out.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ferry {args:?}: not JSON ({e}): {out}"))
    }

    pub fn storage(&self, host: &str, sub: &str) -> PathBuf {
        self.dir.join("storage").join(host).join(sub)
    }

    pub fn host_data(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host).join("data")
    }

    /// Poll until `f` returns Some or the timeout passes.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Write a VM definition file and return its path.
    pub fn vm_def(&self, name: &str, def: &Value) -> PathBuf {
        let p = self.tmp.path().join(format!("{name}.json"));
        std::fs::write(&p, serde_json::to_vec_pretty(def).expect("json")).expect("write def");
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            term_and_wait(&mut c, Duration::from_secs(30));
        }
        // A lab that could not stop by itself: its network namespaces and links go anyway (its
        // processes died with it; nothing is signalled by a PID it may no longer own).
        if self.dir.join("netns").exists() {
            remove_lab_network(&self.bridge_prefix);
        }
        if std::thread::panicking() || std::env::var_os("FERRY_KEEP_LAB_LOGS").is_some() {
            self.keep_logs(std::thread::panicking());
        }
    }
}

/// Delete the network namespaces and links named after a lab's prefix (`ferry lab --netns`).
pub fn remove_lab_network(prefix: &str) {
    let list = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    for ns in list(&["netns", "list"]).lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(&format!("{prefix}-")) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
    // The bridge and the root ends of the hosts' veths, by their exact names.
    let mut names = vec![format!("{prefix}lnk")];
    names.extend(["ny1", "ny2", "ny3", "chi1", "chi2"].iter().map(|h| format!("{prefix}v{h}")));
    for name in names {
        let _ = Command::new("ip").args(["link", "del", &name]).output();
    }
}

impl Lab {
    /// Start a lab process again (after it was killed) with `args`; its log goes to the lab's
    /// logs as `<name>-restarted.log`. The process stops when the guard drops.
    fn respawn(&self, name: &str, args: &[String]) -> ChildGuard {
        self.respawn_with(name, args, &[])
    }

    fn respawn_with(&self, name: &str, args: &[String], env: &[(&str, &str)]) -> ChildGuard {
        let log = self.dir.join("logs").join(format!("{name}-restarted.log"));
        ChildGuard(
            Command::new(ferry_bin())
                .args(args)
                .envs(env.iter().copied())
                // As the lab runs its processes (tests read their logs).
                .env("FERRY_LOG", std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into()))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).expect("log"))
                .spawn()
                .unwrap_or_else(|e| panic!("{name} restarts: {e}")),
        )
    }

    /// Start host agent `host` again from its configuration and data directory.
    pub fn restart_host(&self, host: &str) -> ChildGuard {
        self.restart_host_with(host, &[])
    }

    /// [`Self::restart_host`] with more environment (failpoints of a crash test).
    pub fn restart_host_with(&self, host: &str, env: &[(&str, &str)]) -> ChildGuard {
        let hdir = self.dir.join("hosts").join(host);
        let (config, data) = (hdir.join("host.toml"), hdir.join("data"));
        self.respawn_with(
            &format!("host-{host}"),
            &[
                "host".into(),
                "--config".into(),
                config.display().to_string(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
            env,
        )
    }

    /// The replication address host agent `host` listens on (from its first log).
    pub fn replication_address(&self, host: &str) -> String {
        let log = std::fs::read_to_string(self.dir.join("logs").join(format!("host-{host}.log"))).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("Replication receiver listening"))
            .find_map(|l| strip_ansi(l).split_whitespace().find_map(|w| w.strip_prefix("addr=").map(str::to_string)))
            .expect("the agent logs its replication address")
    }

    /// Make host agent `host` listen at the replication address it has now when it is started
    /// again, so that sources find their replicas there.
    pub fn pin_replication_address(&self, host: &str) {
        let addr = self.replication_address(host);
        let config = self.dir.join("hosts").join(host).join("host.toml");
        let toml = std::fs::read_to_string(&config).expect("host.toml");
        let toml = toml.replace("replication_listen = \"127.0.0.1:0\"", &format!("replication_listen = \"{addr}\""));
        std::fs::write(&config, toml).expect("host.toml");
    }

    /// Start site manager `site` (its directory name under `sites/`) again.
    pub fn restart_site(&self, site: &str) -> ChildGuard {
        let sdir = self.dir.join("sites").join(site);
        let (config, data) = (sdir.join("site.toml"), sdir.join("data"));
        self.respawn(
            &format!("site-{site}"),
            &[
                "site".into(),
                "run".into(),
                "--config".into(),
                config.display().to_string(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
        )
    }

    /// Start the vault again on its data directory and address (heartbeat timeout 5 s).
    pub fn restart_vault(&self) -> ChildGuard {
        self.restart_vault_with(&[])
    }

    /// [`Self::restart_vault`] with more environment (failpoints of a crash test).
    pub fn restart_vault_with(&self, env: &[(&str, &str)]) -> ChildGuard {
        let listen = self.env("FERRY_URL").trim_start_matches("https://").to_string();
        self.respawn_with(
            "vault",
            &[
                "vault".into(),
                "--data-dir".into(),
                self.dir.join("vault").display().to_string(),
                "--listen".into(),
                listen,
                "--heartbeat-timeout".into(),
                "5".into(),
            ],
            env,
        )
    }

    /// A failed test (or any, with `FERRY_KEEP_LAB_LOGS` set) keeps the lab's logs in
    /// `target/lab-failures/<test>/`; a failed one also prints their warnings and errors, so a
    /// run whose files are gone can still be diagnosed.
    fn keep_logs(&self, failed: bool) {
        let test = std::thread::current().name().unwrap_or("lab").replace("::", "-");
        let dest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/lab-failures").join(test);
        let _ = std::fs::create_dir_all(&dest);
        let _ = std::fs::copy(self.tmp.path().join("lab.out"), dest.join("lab.out"));
        if let Ok(rd) = std::fs::read_dir(self.dir.join("logs")) {
            for e in rd.flatten() {
                let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
                if failed {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let bad: Vec<String> = text
                        .lines()
                        .map(strip_ansi)
                        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                        .collect();
                    if !bad.is_empty() {
                        eprintln!("--- warnings and errors of {} ---", e.file_name().to_string_lossy());
                        for l in bad.iter().rev().take(40).rev() {
                            eprintln!("{l}");
                        }
                    }
                }
            }
        }
        eprintln!("lab logs kept in {}", dest.display());
    }
}

/// A log line without its terminal colour codes.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A test-guest VM on ny1 (GOLD storage) writing records to its data disk `vdb`, with a guest
/// agent.
pub fn guest_vm(lab: &Lab, name: &str, vdb_mib: u64, nic_ip: Option<&str>) -> PathBuf {
    guest_vm_with(lab, name, vdb_mib, nic_ip, true)
}

/// [`guest_vm`], with or without a guest-agent channel.
pub fn guest_vm_with(lab: &Lab, name: &str, vdb_mib: u64, nic_ip: Option<&str>, guest_agent: bool) -> PathBuf {
    guest_vm_append(lab, name, vdb_mib, nic_ip, guest_agent, "")
}

/// [`guest_vm_with`], with more parameters for the guest's `/init` (e.g. `ferry.acpi=off`).
pub fn guest_vm_append(
    lab: &Lab,
    name: &str,
    vdb_mib: u64,
    nic_ip: Option<&str>,
    guest_agent: bool,
    more: &str,
) -> PathBuf {
    create_and_start(lab, name, &guest_vm_def(lab, name, vdb_mib, nic_ip, guest_agent, more))
}

/// The definition [`guest_vm_append`] creates on ny1.
pub fn guest_vm_def(lab: &Lab, name: &str, vdb_mib: u64, nic_ip: Option<&str>, guest_agent: bool, more: &str) -> Value {
    let guest = test_guest();
    let gold = lab.storage("ny1", "gold");
    let nics = match nic_ip {
        Some(ip) => serde_json::json!([{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": ip}]),
        None => serde_json::json!([]),
    };
    serde_json::json!({
        "name": name, "vcpus": 1, "memory_mib": 256,
        "disks": [
            {"target": "vda", "path": gold.join(format!("{name}-vda.qcow2")), "format": "qcow2", "create_size": 8u64 << 20},
            {"target": "vdb", "path": gold.join(format!("{name}-vdb.qcow2")), "format": "qcow2", "create_size": vdb_mib << 20}
        ],
        "nics": nics,
        "guest_agent": guest_agent,
        "kernel_boot": {"kernel": guest.kernel, "initrd": guest.initrd,
            "append": format!("console=ttyS0 quiet panic=-1 ferry.workload=records ferry.disk=/dev/vdb ferry.interval_ms=300 ferry.count=100000 {more}").trim_end()}
    })
}

/// Create `def` on ny1, start it and wait until the vault lists it; returns its serial log.
pub fn create_and_start(lab: &Lab, name: &str, def: &Value) -> PathBuf {
    lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def(name, def).display().to_string(),
    ]);
    lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", name]);
    lab.wait_for("the VM in the vault's inventory", Duration::from_secs(30), || {
        let items = lab.json(&["protectable-list", "--site", "VMM-NewYork"]);
        items["items"].as_array().is_some_and(|a| a.iter().any(|v| v["name"] == name)).then_some(())
    });
    lab.host_data("ny1").join("vms").join(name).join("serial.log")
}

/// Create a policy associating GoldCloud1 with GoldCloud2 and wait for the pair to be configured.
pub fn pair_gold(lab: &Lab, policy: &[&str]) {
    let mut args = vec!["policy-create"];
    args.extend_from_slice(policy);
    args.extend(["--associate", "VMM-NewYork/GoldCloud1=VMM-Chicago/GoldCloud2"]);
    lab.json(&args);
    lab.wait_for("the pair to be configured", Duration::from_secs(30), || {
        (lab.json(&["job-list", "--operation", "ConfigureCloudPair"])["items"][0]["status"] == "Succeeded")
            .then_some(())
    });
}

/// Enable protection of a VM of VMM-NewYork; returns the protected item's id.
pub fn protect(lab: &Lab, vm: &str) -> String {
    let enabled = lab.json(&["protect", "--site", "VMM-NewYork", vm, "--wait"]);
    enabled[0]["id"].as_str().expect("protected item id").to_string()
}

/// Wait until the guest wrote `records` records and the item has `points` recovery points.
pub fn wait_records_and_points(lab: &Lab, id: &str, serial: &Path, records: u64, points: usize) {
    lab.wait_for("records and recovery points", Duration::from_secs(150), || {
        let n = ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(serial).unwrap_or_default())
            .unwrap_or(0);
        let it = lab.json(&["item-show", id]);
        let rps = it["recovery_points"].as_array().map(Vec::len).unwrap_or(0);
        (n >= records && it["state"] == "Protected" && rps >= points).then_some(())
    });
}

/// The number of records a (re)started test guest found on its data disk (`FERRY FOUND n` on
/// the serial console of `vm` on `host`).
pub fn found_records(lab: &Lab, host: &str, vm: &str) -> u64 {
    let serial = lab.host_data(host).join("vms").join(vm).join("serial.log");
    lab.wait_for("the guest to report the records it found", Duration::from_secs(120), || {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        text.lines().find_map(|l| l.trim().strip_prefix("FERRY FOUND ").and_then(|n| n.trim().parse::<u64>().ok()))
    })
}

/// The last record a guest wrote, from its serial console.
pub fn last_record(serial: &Path) -> u64 {
    ferry_qemu::guest_records::last_serial_record(&std::fs::read_to_string(serial).unwrap_or_default()).unwrap_or(0)
}

/// The records held by `point` of the replica of `item` on `host` (its `vdb` chain verified).
pub fn records_in_point(lab: &Lab, host: &str, item: &str, point: &str) -> u64 {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = ferry_repl::ReplicaStore::open(&lab.host_data(host).join("replicas")).expect("store");
    let vm = rt.block_on(store.vm(item)).expect("replica");
    let top = vm.chain(point, "vdb").expect("chain")[0].clone();
    rt.block_on(ferry_qemu::guest_records::verify_image(&top)).expect("verify").clean_prefix_len
}

/// Every recovery point of `vm` holds a clean prefix of the guest's records on `vdb`, with no
/// corrupt record, and the prefixes only grow point by point; returns (point, time, records)
/// per point, oldest first.
pub fn clean_prefixes(
    rt: &tokio::runtime::Runtime,
    vm: &ferry_repl::VmReplica,
) -> Vec<(String, chrono::DateTime<chrono::Utc>, u64)> {
    let mut out: Vec<(String, chrono::DateTime<chrono::Utc>, u64)> = Vec::new();
    for p in vm.recovery_points().expect("points") {
        let top = vm.chain(&p.id, "vdb").expect("chain")[0].clone();
        let report = rt.block_on(ferry_qemu::guest_records::verify_image(&top)).expect("verify");
        assert!(report.corrupted.is_empty(), "point {} has corrupted records: {report:?}", p.id);
        assert!(
            report.first_gap.is_none() || report.last_record == Some(report.clean_prefix_len),
            "point {} is not a clean prefix: {report:?}",
            p.id
        );
        let prev = out.last().map_or(0, |x| x.2);
        assert!(report.clean_prefix_len >= prev, "points only move forward: {out:?}, then {}", report.clean_prefix_len);
        out.push((p.id.clone(), p.time, report.clean_prefix_len));
    }
    out
}

/// The Prometheus metrics text of a lab host (plain HTTP on loopback).
pub fn host_metrics(lab: &Lab, host: &str) -> String {
    use std::io::{Read, Write};
    let addr = std::fs::read_to_string(lab.host_data(host).join("metrics-endpoint")).expect("metrics endpoint");
    let mut s = std::net::TcpStream::connect(addr.trim()).expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// Alerts a webhook received: (X-Ferry-Signature, body).
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Value)>>>;

/// An HTTP server on 127.0.0.1 taking `POST /hook` in its own runtime (stopped with it): the
/// alert receiver an operator would have, not part of Ferry.
pub fn webhook_receiver() -> (tokio::runtime::Runtime, String, Received) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let got: Received = Default::default();
    let g2 = got.clone();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let got = g2.clone();
            async move {
                let sig = headers.get("x-ferry-signature").and_then(|v| v.to_str().ok()).map(str::to_string);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                got.lock().expect("lock").push((sig, v));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (rt, format!("http://{addr}/hook"), got)
}

/// The alerts of `kind` a webhook received.
pub fn alerts_of_kind(got: &Received, kind: &str) -> Vec<Value> {
    got.lock().expect("lock").iter().filter(|(_, v)| v["kind"] == kind).map(|(_, v)| v.clone()).collect()
}

/// Events of `kind` about `object` (an item id), oldest first.
pub fn events_of(lab: &Lab, kind: &str, object: &str) -> Vec<Value> {
    let ev = lab.json(&["event-list", "--kind", kind]);
    let mut v: Vec<Value> =
        ev["items"].as_array().into_iter().flatten().filter(|e| e["object_id"] == object).cloned().collect();
    v.reverse();
    v
}

/// Map VMNetwork1-NewYork to VMNetwork1-Chicago (NET-2); returns the mapping.
pub fn map_network1(lab: &Lab) -> Value {
    lab.json(&[
        "network-map-create",
        "--source",
        "VMM-NewYork/VMNetwork1-NewYork",
        "--target",
        "VMM-Chicago/VMNetwork1-Chicago",
    ])
}

/// SEC-3: no secret of the lab (admin and API tokens, site and host credentials, join tokens,
/// registration key secrets, the CA's private key, and `extra`) appears in any process's log, in
/// the vault's events, or in plain text in the vault's database (tokens are stored hashed).
pub fn assert_no_secret_leaked(lab: &Lab, extra: &[&str]) {
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let json = |p: PathBuf| serde_json::from_str::<Value>(&read(p)).unwrap_or(Value::Null);
    let mut secrets: Vec<(String, String)> = vec![("admin token".into(), read(lab.dir.join("vault/admin-token")))];
    for site in ["newyork", "chicago"] {
        let d = lab.dir.join("sites").join(site);
        secrets.push((
            format!("{site} site token"),
            json(d.join("data/registration.json"))["site_token"].as_str().unwrap_or("").into(),
        ));
        for t in std::fs::read_dir(d.join("data/join-tokens")).into_iter().flatten().flatten() {
            secrets.push((format!("{site} open join token {:?}", t.file_name()), read(t.path())));
        }
        secrets.push((
            format!("{site} registration key"),
            json(d.join("registration-key.json"))["secret"].as_str().unwrap_or("").into(),
        ));
    }
    for e in std::fs::read_dir(lab.dir.join("hosts")).into_iter().flatten().flatten() {
        let token = json(e.path().join("data/host.json"))["host_token"].as_str().unwrap_or("").to_string();
        secrets.push((format!("host token of {}", e.file_name().to_string_lossy()), token));
        secrets.push((format!("join token of {}", e.file_name().to_string_lossy()), read(e.path().join("join-token"))));
    }
    // A line from the middle of the CA key's base64.
    let ca_key = read(lab.dir.join("vault/pki/ca-key.pem"));
    secrets.push(("CA private key".into(), ca_key.lines().nth(1).unwrap_or("").to_string()));
    for (i, x) in extra.iter().enumerate() {
        secrets.push((format!("secret {i} of the test"), x.to_string()));
    }
    let secrets: Vec<(String, String)> =
        secrets.into_iter().map(|(w, s)| (w, s.trim().to_string())).filter(|(_, s)| s.len() >= 16).collect();
    assert!(secrets.len() >= 8, "the lab's secrets were found: {:?}", secrets.iter().map(|s| &s.0).collect::<Vec<_>>());
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir(lab.dir.join("logs")).into_iter().flatten().flatten() {
        places.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap_or_default()));
    }
    let events = lab.json(&["event-list", "--limit", "1000"]);
    places.push(("the vault's events".into(), events.to_string().into_bytes()));
    for f in ["vault.db", "vault.db-wal"] {
        places.push((format!("vault/{f}"), std::fs::read(lab.dir.join("vault").join(f)).unwrap_or_default()));
    }
    assert!(places.len() >= 5, "logs, events and the database were read");
    for (what, secret) in &secrets {
        for (place, bytes) in &places {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "the {what} appears in {place}");
        }
    }
}
