//! `ferry lab`: the whole scenario on one machine. A vault, the seed's two site managers
//! (VMM-NewYork, VMM-Chicago) with their clouds, networks and storage classifications, and one
//! host agent per site — each a separate `ferry` process talking TLS on loopback, registered
//! through real registration keys. Stopping the lab stops every process it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use ferry_client::Client;
use serde_json::{json, Value};

#[derive(Args, Debug, Clone)]
pub struct LabArgs {
    /// Lab state directory (kept across runs).
    #[arg(long, default_value = "lab-data")]
    pub dir: PathBuf,
    /// Vault port (0 picks a free one).
    #[arg(long, default_value_t = 8443)]
    pub port: u16,
    /// Report interval of sites and hosts, seconds.
    #[arg(long, default_value_t = 2)]
    pub report_interval: u64,
    /// Start, print the summary and exit, leaving the processes running (their PIDs are in
    /// `<dir>/pids`); `ferry lab --down` stops them.
    #[arg(long)]
    pub detach: bool,
    /// Stop a detached lab.
    #[arg(long)]
    pub down: bool,
    /// Record every site → vault message to `<dir>/logs/<site>.vault-traffic.jsonl` (FAB-9).
    #[arg(long)]
    pub record_vault_traffic: bool,
    /// Prefix of the lab's bridge names (keep it short: names are at most 15 bytes).
    #[arg(long, default_value = "fy")]
    pub bridge_prefix: String,
    /// Do not create the demo VMs.
    #[arg(long)]
    pub no_demo_vms: bool,
    /// Test-only: replication cycle interval of the hosts, instead of the policy's frequency.
    #[arg(long)]
    pub test_copy_interval_ms: Option<u64>,
    /// Test-only: tick of the hosts' churn measurements (CAP-1) instead of 30 s.
    #[arg(long)]
    pub test_churn_tick_ms: Option<u64>,
    /// How often the hosts apply retention to their replicas, seconds.
    #[arg(long, default_value_t = 60)]
    pub retention_interval_secs: u64,
    /// Every recovery point is re-read and verified within this period, seconds (RP-1; default
    /// the host's, a week).
    #[arg(long)]
    pub verify_period_secs: Option<u64>,
    /// Replication bandwidth limit of every host, MiB/s (CAP-2; default unlimited).
    #[arg(long)]
    pub bandwidth_mib_s: Option<f64>,
    /// Daily window (`HH:MM-HH:MM`, local time) in which the hosts may run automatic
    /// resynchronizations (REP-6; default any time).
    #[arg(long)]
    pub resync_window: Option<String>,
    /// Replication bandwidth limit set on site VMM-NewYork and pushed to its hosts that have no
    /// limit of their own, MiB/s (CAP-2 per site).
    #[arg(long)]
    pub site_bandwidth_mib_s: Option<f64>,
    /// Add a second New York host (ny2, in SilverCloud1's host group) so that the two clouds of
    /// VMM-NewYork can protect each other (SGL-1).
    #[arg(long)]
    pub sgl: bool,
    /// A second host in each site's Gold host group (ny3, chi2): two sites × two hosts.
    #[arg(long)]
    pub two_hosts: bool,
    /// POL-2: hosts listen at the port of their policies (each on a loopback address of its
    /// own) instead of a fixed port per host.
    #[arg(long)]
    pub policy_ports: bool,
    /// Seconds after which a test failover left running is cleaned up (FO-1: 14 days).
    #[arg(long, default_value_t = 14 * 24 * 3600)]
    pub test_failover_max_age: u64,
    /// Run each host agent (and its VMs) in a network namespace of its own, joined to the site
    /// managers by a veth pair and a bridge, so that links between the sites' hosts can be cut
    /// and slowed (the soak does); the site managers listen on the bridge's address.
    #[arg(long)]
    pub netns: bool,
}

/// The file naming the lab's network prefix when its hosts run in namespaces (`--netns`).
pub const NETNS_FILE: &str = "netns";

/// The lab's hosts with their numbers (their place in every site's list), for addresses.
pub fn numbered_hosts() -> Vec<(&'static str, usize)> {
    all_hosts().enumerate().map(|(i, h)| (h.name, i)).collect()
}

/// The network of a lab whose hosts run in namespaces, from its directory.
pub fn lab_net(dir: &Path) -> Option<crate::lab_net::LabNet> {
    let prefix = std::fs::read_to_string(dir.join(NETNS_FILE)).ok()?;
    Some(crate::lab_net::LabNet::new(prefix.trim()))
}

/// Remove a lab's namespaces and bridge (after its processes stopped).
fn remove_lab_net(dir: &Path) {
    if let Some(net) = lab_net(dir) {
        net.down(all_hosts().map(|h| h.name));
        let _ = std::fs::remove_file(dir.join(NETNS_FILE));
    }
}

pub const VAULT_NAME: &str = "ferry-lab";

/// One site of the seed: name, config file content, hosts.
struct SiteSpec {
    key: &'static str,
    name: &'static str,
    toml: &'static str,
    hosts: &'static [HostSpec],
}

/// One host of a site: its host group, storage locations and bridges.
struct HostSpec {
    name: &'static str,
    host_group: &'static str,
    /// (directory, classification, default replica location)
    storage: &'static [(&'static str, Option<&'static str>, bool)],
    bridges: &'static [(&'static str, &'static str)],
    /// When the lab runs this host.
    when: HostWhen,
}

/// Which labs have a host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HostWhen {
    Always,
    /// `--sgl`: a second New York host, in the host group of SilverCloud1, so that the two
    /// clouds of one site manager can protect each other (SGL-1).
    Sgl,
    /// `--two-hosts`: a second host in each site's Gold host group (the soak's two sites × two
    /// hosts).
    TwoHosts,
}

impl SiteSpec {
    fn hosts(&self, args: &LabArgs) -> impl Iterator<Item = &'static HostSpec> {
        let (sgl, two) = (args.sgl, args.two_hosts);
        self.hosts.iter().filter(move |h| match h.when {
            HostWhen::Always => true,
            HostWhen::Sgl => sgl,
            HostWhen::TwoHosts => two,
        })
    }
}

const NEW_YORK: &str = r#"
[[storage_classifications]]
name = "GOLD"
kind = "local"
[[storage_classifications]]
name = "SILVER"
kind = "local"

[[host_groups]]
name = "HG-NewYork-Gold"
storage_classifications = ["GOLD", "SILVER"]
[[host_groups]]
name = "HG-NewYork-Silver"
storage_classifications = ["SILVER"]

[[logical_networks]]
name = "LogicalNetwork1-NewYork"
host_groups = ["HG-NewYork-Gold", "HG-NewYork-Silver"]
[[logical_networks]]
name = "LogicalNetwork2-NewYork"
host_groups = ["HG-NewYork-Gold"]

[[vm_networks]]
name = "VMNetwork1-NewYork"
logical_network = "LogicalNetwork1-NewYork"
[[vm_networks.subnets]]
name = "Subnet1"
cidr = "10.11.0.0/24"
gateway = "10.11.0.1"
pools = [{ name = "Pool1", start = "10.11.0.10", end = "10.11.0.99" }]
[[vm_networks]]
name = "VMNetwork2-NewYork"
logical_network = "LogicalNetwork2-NewYork"
[[vm_networks.subnets]]
name = "Subnet1"
cidr = "10.12.0.0/24"
pools = [{ name = "Pool1", start = "10.12.0.10", end = "10.12.0.99" }]

[[clouds]]
name = "GoldCloud1"
host_groups = ["HG-NewYork-Gold"]
[[clouds]]
name = "SilverCloud1"
host_groups = ["HG-NewYork-Silver"]
"#;

const CHICAGO: &str = r#"
[[storage_classifications]]
name = "GOLD_TARGET"
kind = "cluster-volume"
[[storage_classifications]]
name = "SILVER_TARGET"
kind = "shared-fs"

[[host_groups]]
name = "HG-Chicago-Gold"
storage_classifications = ["GOLD_TARGET", "SILVER_TARGET"]
[[host_groups]]
name = "HG-Chicago-Silver"
storage_classifications = ["SILVER_TARGET"]

[[logical_networks]]
name = "LogicalNetwork1-Chicago"
host_groups = ["HG-Chicago-Gold", "HG-Chicago-Silver"]
[[logical_networks]]
name = "LogicalNetwork2-Chicago"
host_groups = ["HG-Chicago-Gold"]

[[vm_networks]]
name = "VMNetwork1-Chicago"
logical_network = "LogicalNetwork1-Chicago"
[[vm_networks.subnets]]
name = "Subnet1"
cidr = "10.21.0.0/24"
gateway = "10.21.0.1"
pools = [{ name = "Pool1", start = "10.21.0.10", end = "10.21.0.99" }]
[[vm_networks]]
name = "VMNetwork2-Chicago"
logical_network = "LogicalNetwork2-Chicago"
[[vm_networks.subnets]]
name = "Subnet1"
cidr = "10.22.0.0/24"
pools = [{ name = "Pool1", start = "10.22.0.10", end = "10.22.0.99" }]

[[clouds]]
name = "GoldCloud2"
host_groups = ["HG-Chicago-Gold"]
[[clouds]]
name = "SilverCloud2"
host_groups = ["HG-Chicago-Silver"]
"#;

const SITES: [SiteSpec; 2] = [
    SiteSpec {
        key: "newyork",
        name: "VMM-NewYork",
        toml: NEW_YORK,
        hosts: &[
            HostSpec {
                name: "ny1",
                host_group: "HG-NewYork-Gold",
                storage: &[("gold", Some("GOLD"), false), ("silver", Some("SILVER"), false), ("replica", None, true)],
                bridges: &[("LogicalNetwork1-NewYork", "ny-ln1"), ("LogicalNetwork2-NewYork", "ny-ln2")],
                when: HostWhen::Always,
            },
            HostSpec {
                name: "ny2",
                host_group: "HG-NewYork-Silver",
                storage: &[("silver", Some("SILVER"), false), ("replica", None, true)],
                bridges: &[("LogicalNetwork1-NewYork", "ny-ln1")],
                when: HostWhen::Sgl,
            },
            HostSpec {
                name: "ny3",
                host_group: "HG-NewYork-Gold",
                storage: &[("gold", Some("GOLD"), false), ("silver", Some("SILVER"), false), ("replica", None, true)],
                bridges: &[("LogicalNetwork1-NewYork", "ny-ln1"), ("LogicalNetwork2-NewYork", "ny-ln2")],
                when: HostWhen::TwoHosts,
            },
        ],
    },
    SiteSpec {
        key: "chicago",
        name: "VMM-Chicago",
        toml: CHICAGO,
        hosts: &[
            HostSpec {
                name: "chi1",
                host_group: "HG-Chicago-Gold",
                storage: &[
                    ("gold_target", Some("GOLD_TARGET"), false),
                    ("silver_target", Some("SILVER_TARGET"), false),
                    ("replica", None, true),
                ],
                bridges: &[("LogicalNetwork1-Chicago", "chi-ln1"), ("LogicalNetwork2-Chicago", "chi-ln2")],
                when: HostWhen::Always,
            },
            HostSpec {
                name: "chi2",
                host_group: "HG-Chicago-Gold",
                storage: &[
                    ("gold_target", Some("GOLD_TARGET"), false),
                    ("silver_target", Some("SILVER_TARGET"), false),
                    ("replica", None, true),
                ],
                bridges: &[("LogicalNetwork1-Chicago", "chi-ln1"), ("LogicalNetwork2-Chicago", "chi-ln2")],
                when: HostWhen::TwoHosts,
            },
        ],
    },
];

/// Every host a lab may have (for stopping and cleaning up whatever ran).
fn all_hosts() -> impl Iterator<Item = &'static HostSpec> {
    SITES.iter().flat_map(|s| s.hosts.iter())
}

/// Children started by the lab; all are stopped when this is dropped.
struct Procs {
    children: Vec<(String, Child)>,
    detach: bool,
}

impl Drop for Procs {
    fn drop(&mut self) {
        if self.detach {
            return;
        }
        for (_, c) in self.children.iter() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, c) in self.children.iter_mut() {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

fn stop_pid(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if nix::sys::signal::kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

fn spawn(procs: &mut Procs, name: &str, log_dir: &Path, args: &[&str]) -> Result<()> {
    spawn_in(procs, name, log_dir, None, args)
}

/// Start `ferry args`, inside the command prefix `within` when given (a network namespace).
fn spawn_in(procs: &mut Procs, name: &str, log_dir: &Path, within: Option<&[String]>, args: &[&str]) -> Result<()> {
    let exe = std::env::current_exe().context("Cannot find the ferry executable")?;
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let mut cmd = match within {
        Some([program, rest @ ..]) => {
            let mut c = Command::new(program);
            c.args(rest).arg(exe);
            c
        }
        _ => Command::new(exe),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("FERRY_LOG", std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into()));
    if !procs.detach {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; the child dies with the lab.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    let child = cmd.spawn().with_context(|| format!("Cannot start {name}"))?;
    procs.children.push((name.to_string(), child));
    Ok(())
}

async fn wait_file(path: &Path, procs: &mut Procs, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_string());
            }
        }
        for (name, c) in procs.children.iter_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("{name} exited ({st}) while the lab was starting; see its log");
            }
        }
        if Instant::now() > deadline {
            bail!("Timed out waiting for {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: LabArgs) -> Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    if args.down {
        return down(&dir);
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    if dir.join("pids").exists() {
        down(&dir)?;
    }
    let mut procs = Procs { children: Vec::new(), detach: args.detach };
    // Ctrl-C (or SIGTERM) at any moment, also while the lab starts, stops everything it started,
    // VMs included; so does a failed start.
    let started = tokio::select! {
        r = start(&args, &dir, &mut procs) => r,
        _ = crate::roles::shutdown_signal() => Err(anyhow!("Interrupted while the lab was starting")),
    };
    match started {
        Ok(()) if args.detach => {
            println!("Detached; stop with: ferry lab --down --dir {}", args.dir.display());
            return Ok(());
        }
        Ok(()) => {
            println!("Press Ctrl-C to stop the lab.");
            crate::roles::shutdown_signal().await;
            println!("Stopping the lab...");
        }
        Err(e) => {
            eprintln!("Stopping what the lab started: {e:#}");
            procs.detach = false;
            stop_everything(&dir, procs);
            return Err(e);
        }
    }
    stop_everything(&dir, procs);
    Ok(())
}

/// Stop the lab's VMs, then its processes (by the PIDs it started), then remove its bridges.
fn stop_everything(dir: &Path, procs: Procs) {
    stop_vms(dir);
    drop(procs);
    let _ = std::fs::remove_file(dir.join("pids"));
    remove_bridges(dir);
    remove_lab_net(dir);
}

/// Start the vault, the sites, their hosts and the demo VMs.
async fn start(args: &LabArgs, dir: &Path, procs: &mut Procs) -> Result<()> {
    let logs = dir.join("logs");
    let vault_dir = dir.join("vault");
    let _ = std::fs::remove_file(vault_dir.join(crate::roles::ENDPOINT_FILE));
    // The sites know the vault by its address: a lab started again on its directory keeps the
    // vault's port (with `--port 0`, the one the previous run picked, if still free).
    let port = match args.port {
        0 => {
            let prev = std::fs::read_to_string(dir.join(VAULT_PORT_FILE)).ok().and_then(|p| p.trim().parse().ok());
            keep_port(prev)?
        }
        p => p,
    };
    std::fs::write(dir.join(VAULT_PORT_FILE), port.to_string())?;
    let listen = format!("127.0.0.1:{port}");
    spawn(
        procs,
        "vault",
        &logs,
        &[
            "vault",
            "--data-dir",
            &vault_dir.to_string_lossy(),
            "--listen",
            &listen,
            "--heartbeat-timeout",
            &(args.report_interval * 5).to_string(),
            "--test-failover-max-age",
            &args.test_failover_max_age.to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )?;
    let url = wait_file(&vault_dir.join(crate::roles::ENDPOINT_FILE), procs, Duration::from_secs(30)).await?;
    let token = wait_file(&vault_dir.join("admin-token"), procs, Duration::from_secs(5)).await?;
    let ca_path = vault_dir.join("ca-cert.pem");
    let ca = std::fs::read_to_string(&ca_path)?;
    let client = Client::builder(&url).ca(ca).token(&token).build()?;
    let vaults: Value = client.get("/api/v1/vaults").await?;
    if !vaults.as_array().is_some_and(|a| a.iter().any(|v| v["name"] == VAULT_NAME)) {
        let _: Value = client
            .post(
                "/api/v1/vaults",
                &json!({"name": VAULT_NAME, "description": "Ferry lab: New York → Chicago", "region": "lab"}),
            )
            .await?;
    }
    if args.netns {
        let net = crate::lab_net::LabNet::new(&args.bridge_prefix);
        std::fs::write(dir.join(NETNS_FILE), &args.bridge_prefix)?;
        net.up(&numbered_hosts()).context("Cannot create the lab's network namespaces")?;
    }
    let goal = json!({"replicate_to": "RecoverySite", "hypervisor": "Kvm", "managed_by_site_manager": true, "second_site_manager": true});
    let _: Value = client.put(&format!("/api/v1/vaults/{VAULT_NAME}/protectionGoal"), &goal).await?;

    for s in &SITES {
        let sdir = dir.join("sites").join(s.key);
        std::fs::create_dir_all(&sdir)?;
        let mut cfg = format!("name = \"{}\"\nserver_name = \"{}-vmm\"\nvault_name = \"{VAULT_NAME}\"\nreport_interval_secs = {}\nscript_library = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n{}{}", s.name, s.key, args.report_interval, dir.join("scripts").display(), site_listen(args), s.toml);
        for h in s.hosts(args) {
            cfg.push_str(&format!("\n[[hosts]]\nname = \"{}\"\nhost_group = \"{}\"\n", h.name, h.host_group));
        }
        if let (Some(b), "newyork") = (args.site_bandwidth_mib_s, s.key) {
            cfg.push_str(&format!("\n[bandwidth]\ndefault_mib_per_sec = {b}\n"));
        }
        let cfg_path = sdir.join("site.toml");
        std::fs::write(&cfg_path, cfg)?;
        let data = sdir.join("data");
        std::fs::create_dir_all(&data)?;
        let _ = std::fs::remove_file(data.join("host-endpoint"));
        let mut run_args: Vec<String> = vec![
            "site".into(),
            "run".into(),
            "--config".into(),
            cfg_path.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        if !data.join("registration.json").exists() {
            let key: Value =
                client.post(&format!("/api/v1/vaults/{VAULT_NAME}/registrationKeys"), &json!(null)).await?;
            let key_path = sdir.join("registration-key.json");
            std::fs::write(&key_path, key["file"].as_str().unwrap_or_default())?;
            run_args.extend(["--key".into(), key_path.display().to_string()]);
        }
        if args.record_vault_traffic {
            run_args.extend([
                "--record-vault-traffic".into(),
                logs.join(format!("{}.vault-traffic.jsonl", s.key)).display().to_string(),
            ]);
        }
        let refs: Vec<&str> = run_args.iter().map(String::as_str).collect();
        spawn(procs, &format!("site-{}", s.key), &logs, &refs)?;
        let endpoint = wait_file(&data.join("host-endpoint"), procs, Duration::from_secs(30)).await?;
        for h in s.hosts(args) {
            spawn_host(procs, args, dir, &logs, h, &endpoint, &ca_path, &data)?;
        }
    }

    // Wait until the vault shows both sites with their hosts connected.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fabrics: Value = client.get(&format!("/api/v1/vaults/{VAULT_NAME}/replicationFabrics")).await?;
        let ready = SITES.iter().all(|s| {
            s.hosts(args).all(|host| {
                fabrics.as_array().into_iter().flatten().any(|f| {
                    f["name"] == s.name
                        && f["inventory"]["hosts"]
                            .as_array()
                            .is_some_and(|h| h.iter().any(|h| h["name"] == host.name && h["connected"] == true))
                })
            })
        });
        if ready {
            break;
        }
        for (name, c) in procs.children.iter_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("{name} exited ({st}); see {}", logs.join(format!("{name}.log")).display());
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "The sites did not report their hosts within 60 s; see the logs in {}",
                logs.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    if !args.no_demo_vms && crate::lab_demo::demo_vms(&client, dir).await? {
        crate::lab_demo::demo_replication(&client, dir).await?;
    }

    let env = format!(
        "export FERRY_URL={url}\nexport FERRY_CA={}\nexport FERRY_TOKEN={token}\nexport FERRY_VAULT={VAULT_NAME}\n",
        ca_path.display()
    );
    std::fs::write(dir.join("ferry.env"), &env)?;
    let pids: Vec<String> = procs.children.iter().map(|(n, c)| format!("{n} {}", c.id())).collect();
    std::fs::write(dir.join("pids"), pids.join("\n") + "\n")?;
    println!("Ferry lab is up.");
    println!("  vault       {url}   (vault '{VAULT_NAME}')");
    println!(
        "  portal      {url}/portal/   sign in with the admin token in {}",
        vault_dir.join(ferry_vault::server::ADMIN_TOKEN_FILE).display()
    );
    println!("              (the browser warns about the lab's private CA: {})", ca_path.display());
    for s in &SITES {
        let hosts: Vec<&str> = s.hosts(args).map(|h| h.name).collect();
        println!("  site        {:<12} hosts {}", s.name, hosts.join(", "));
    }
    println!("  logs        {}", logs.display());
    println!(
        "Use the CLI from this directory (it reads {}), or: source {}",
        dir.join("ferry.env").display(),
        dir.join("ferry.env").display()
    );
    // The binary that runs now: `ferry` need not be on the PATH.
    let ferry = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferry".into());
    println!("  {ferry} site-list");
    println!("  {ferry} cloud-list --site VMM-NewYork");
    println!("  {ferry} host-list --site VMM-Chicago");
    println!("  (shell completion: source <({ferry} completion bash))");
    Ok(())
}

/// `previous` when that port is free on 127.0.0.1, else a free port the system picks.
fn keep_port(previous: Option<u16>) -> Result<u16> {
    if let Some(p) = previous {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The file in which the lab keeps its vault's port, so that `--port 0` restarts on it.
const VAULT_PORT_FILE: &str = "vault-port";

/// Where a site manager listens for its hosts: loopback, or the bridge of the hosts' namespaces.
fn site_listen(args: &LabArgs) -> String {
    if args.netns {
        format!("listen = \"{}:0\"\n", crate::lab_net::LabNet::new(&args.bridge_prefix).gateway())
    } else {
        String::new()
    }
}

/// Remove the bridges named in the lab's host configurations.
fn remove_bridges(dir: &Path) {
    for h in all_hosts() {
        let Ok(text) = std::fs::read_to_string(dir.join("hosts").join(h.name).join("host.toml")) else { continue };
        let Ok(cfg) = toml::from_str::<ferry_host::HostConfig>(&text) else { continue };
        for b in cfg.bridges {
            let _ = ferry_host::net::delete_link(&b.bridge);
        }
    }
}

/// Stop the processes of a detached lab, by the PIDs it recorded.
fn down(dir: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join("pids")) else {
        // What a lab that died may have left of its network.
        remove_lab_net(dir);
        println!("No running lab in {}", dir.display());
        return Ok(());
    };
    stop_vms(dir);
    for line in text.lines().rev() {
        if let Some(pid) = line.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
            stop_pid(pid);
        }
    }
    let _ = std::fs::remove_file(dir.join("pids"));
    remove_bridges(dir);
    remove_lab_net(dir);
    println!("Lab stopped.");
    Ok(())
}

/// Where the test guest lives: `FERRY_TEST_GUEST`, else `target/test-guest` next to the build.
pub fn test_guest_dir() -> PathBuf {
    if let Ok(p) = std::env::var("FERRY_TEST_GUEST") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(|p| p.parent()).map(|t| t.join("test-guest")))
        .unwrap_or_else(|| PathBuf::from("target/test-guest"))
}

/// Stop the QEMU processes the lab's host agents started (by the PIDs in their run directories).
fn stop_vms(dir: &Path) {
    for h in all_hosts() {
        let vms = dir.join("hosts").join(h.name).join("data").join("vms");
        let Ok(entries) = std::fs::read_dir(&vms) else { continue };
        for e in entries.flatten() {
            let pid =
                std::fs::read_to_string(e.path().join("qemu.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&*e.path().to_string_lossy()) {
                    let _ = std::fs::write(e.path().join("stop-requested"), b"lab stopped\n");
                    stop_pid(pid);
                }
            }
            remove_taps(h.name, &e.path());
        }
    }
}

/// Remove the taps of a VM whose QEMU the lab stopped (the agent removes them only when it
/// stops the VM itself).
fn remove_taps(host: &str, vm_dir: &Path) {
    let Ok(bytes) = std::fs::read(vm_dir.join("definition.json")) else { return };
    let Ok(def) = serde_json::from_slice::<ferry_types::fabric::VmDefinition>(&bytes) else { return };
    let Some(uuid) = def.uuid else { return };
    for i in 0..def.nics.len() {
        let _ = ferry_host::net::delete_link(&ferry_host::net::tap_name(host, &uuid, i));
    }
}

/// Write a host agent's configuration and start it, joining the site whose host endpoint is
/// `endpoint` (its join token is in the site's data directory `site_data`).
#[allow(clippy::too_many_arguments)]
fn spawn_host(
    procs: &mut Procs,
    args: &LabArgs,
    dir: &Path,
    logs: &Path,
    h: &HostSpec,
    endpoint: &str,
    ca_path: &Path,
    site_data: &Path,
) -> Result<()> {
    let hdir = dir.join("hosts").join(h.name);
    std::fs::create_dir_all(&hdir)?;
    // The host keeps its replication port across restarts of the lab (and of the agent alone):
    // the one of its previous configuration when it is still free, else a new free one.
    let previous = std::fs::read_to_string(hdir.join("host.toml"))
        .ok()
        .and_then(|t| toml::from_str::<ferry_host::HostConfig>(&t).ok())
        .and_then(|c| c.replication_listen)
        .map(|a| a.port())
        .filter(|p| *p != 0);
    let net = args.netns.then(|| crate::lab_net::LabNet::new(&args.bridge_prefix));
    let number = all_hosts().position(|x| x.name == h.name).unwrap_or(0);
    // In its own namespace a host is reached at the namespace's address; else on loopback.
    let own_ip = net.as_ref().map_or_else(|| "127.0.0.1".to_string(), |n| n.host_ip(number).to_string());
    let listen = if let Some(n) = &net {
        let port = previous.unwrap_or(7100 + number as u16);
        if args.policy_ports {
            format!("replication_ip = \"{}\"\nlisten = \"{own_ip}:0\"", n.host_ip(number))
        } else {
            format!("replication_listen = \"{own_ip}:{port}\"\nlisten = \"{own_ip}:0\"")
        }
    } else if args.policy_ports {
        // POL-2: the host listens at its policies' ports, on a loopback address of its own (the
        // lab's hosts share one machine), derived from the vault's port so that labs running
        // side by side do not collide.
        let port: u16 =
            std::fs::read_to_string(dir.join(VAULT_PORT_FILE)).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(8443);
        let n = all_hosts().position(|x| x.name == h.name).unwrap_or(0) + 1;
        format!("replication_ip = \"127.{}.{}.{n}\"", port >> 8, port & 0xff)
    } else {
        format!("replication_listen = \"127.0.0.1:{}\"", keep_port(previous)?)
    };
    // As an operator copies it to the host: the join token the site issued for this host (SEC-1;
    // used up by the join, so a host that joined before has none to copy).
    let token_copy = hdir.join("join-token");
    let issued = ferry_site::join_tokens::path(site_data, h.name);
    if issued.exists() {
        let token = ferry_pki::read_private_text(&issued)?;
        ferry_pki::write_private_file(&token_copy, token.as_bytes())?;
    }
    let mut hcfg = format!(
            "name = \"{}\"\n{listen}\nsite_url = \"https://{endpoint}\"\nca_cert = \"{}\"\njoin_token_file = \"{}\"\nreport_interval_secs = {}\naccel = \"{}\"\n",
            h.name,
            ca_path.display(),
            token_copy.display(),
            args.report_interval,
            std::env::var("FERRY_ACCEL").unwrap_or_else(|_| "auto".into()),
        );
    hcfg.push_str(&format!("retention_interval_secs = {}\n", args.retention_interval_secs));
    if let Some(secs) = args.verify_period_secs {
        hcfg.push_str(&format!("verify_period_secs = {secs}\n"));
    }
    hcfg.push_str(&format!("metrics_listen = \"{own_ip}:0\"\n"));
    if net.is_some() {
        // The namespaces' bridge is the lab's own isolated network.
        hcfg.push_str("metrics_plain_http = true\n");
    }
    if let Some(ms) = args.test_copy_interval_ms {
        hcfg.push_str(&format!("test_copy_interval_ms = {ms}\n"));
    }
    if let Some(ms) = args.test_churn_tick_ms {
        hcfg.push_str(&format!("test_churn_tick_ms = {ms}\n"));
    }
    let guest = test_guest_dir();
    // The test guest's kernel boots the lab's VMs (SEC-3: from a configured directory only).
    hcfg.push_str(&format!("boot_dirs = [\"{}\"]\n", guest.display()));
    if guest.join("vmlinuz").exists() {
        hcfg.push_str(&format!(
            "probe_kernel = \"{}\"\nprobe_initrd = \"{}\"\n",
            guest.join("vmlinuz").display(),
            guest.join("initrd.img").display()
        ));
    }
    for (sub, class, default) in h.storage {
        let p = dir.join("storage").join(h.name).join(sub);
        std::fs::create_dir_all(&p)?;
        hcfg.push_str(&format!("[[storage]]\npath = \"{}\"\n", p.display()));
        if let Some(c) = class {
            hcfg.push_str(&format!("classification = \"{c}\"\n"));
        }
        if *default {
            hcfg.push_str("default_replica = true\n");
        }
    }
    for (ln, br) in h.bridges {
        hcfg.push_str(&format!("[[bridges]]\nlogical_network = \"{ln}\"\nbridge = \"{}{br}\"\n", args.bridge_prefix));
    }
    if let Some(b) = args.bandwidth_mib_s {
        hcfg.push_str(&format!("[bandwidth]\ndefault_mib_per_sec = {b}\n"));
    }
    if let Some(w) = &args.resync_window {
        let (from, to) =
            w.split_once('-').ok_or_else(|| anyhow::anyhow!("--resync-window {w:?} is not HH:MM-HH:MM"))?;
        hcfg.push_str(&format!("[resync_window]\nfrom = \"{from}\"\nto = \"{to}\"\n"));
    }
    std::fs::write(hdir.join("host.toml"), hcfg)?;
    let hdata = hdir.join("data");
    let within = net.as_ref().map(|n| n.exec_prefix(h.name));
    spawn_in(
        procs,
        &format!("host-{}", h.name),
        logs,
        within.as_ref().map(|w| &w[..]),
        &["host", "--config", &hdir.join("host.toml").to_string_lossy(), "--data-dir", &hdata.to_string_lossy()],
    )?;
    Ok(())
}
