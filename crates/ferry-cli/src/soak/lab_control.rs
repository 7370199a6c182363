//! The lab a soak runs against: started detached on its own directory with two sites × two
//! hosts, its processes found by the PIDs the lab recorded, killed, stopped and started again
//! with the command line they ran with, and read on disk (replica stores, serial consoles).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use ferry_client::Client;

/// A process of the lab, by its name in `<dir>/pids` (`vault`, `site-newyork`, `host-ny1`, ...).
pub type ProcName = String;

/// A started lab.
pub struct LabUnderTest {
    pub dir: PathBuf,
    pub client: Client,
    pub vault: String,
}

#[derive(Parser)]
struct LabCli {
    #[command(flatten)]
    lab: crate::lab::LabArgs,
}

impl LabUnderTest {
    /// Start the lab detached on `dir` (demo VMs, two hosts per site, `extra` more arguments).
    pub async fn start(dir: &Path, extra: &[String]) -> Result<LabUnderTest> {
        let mut argv: Vec<String> = vec![
            "lab".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--port".into(),
            "0".into(),
            "--detach".into(),
            "--two-hosts".into(),
            "--bridge-prefix".into(),
            "sk".into(),
        ];
        argv.extend(extra.iter().cloned());
        let args = LabCli::try_parse_from(&argv).map_err(|e| anyhow!("soak's lab arguments: {e}"))?.lab;
        crate::lab::run(args).await?;
        let env = std::fs::read_to_string(dir.join("ferry.env")).context("the lab wrote no ferry.env")?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix("export ").and_then(|l| l.strip_prefix(&format!("{k}="))))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{k} missing in ferry.env"))
        };
        let ca = std::fs::read_to_string(get("FERRY_CA")?)?;
        let client = Client::builder(get("FERRY_URL")?).ca(ca).token(get("FERRY_TOKEN")?).build()?;
        Ok(LabUnderTest { dir: dir.to_path_buf(), client, vault: get("FERRY_VAULT")? })
    }

    /// `/api/v1/vaults/<vault><rest>`.
    pub fn v(&self, rest: &str) -> String {
        format!("/api/v1/vaults/{}{rest}", self.vault)
    }

    pub fn host_data(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host).join("data")
    }

    /// The network of the lab's hosts when they run in namespaces of their own.
    pub fn net(&self) -> Option<crate::lab_net::LabNet> {
        crate::lab::lab_net(&self.dir)
    }

    /// The PID of a lab process now.
    pub fn pid(&self, name: &str) -> Result<u32> {
        let text = std::fs::read_to_string(self.dir.join("pids"))?;
        text.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(name)).then(|| it.next().and_then(|p| p.parse().ok())).flatten()
            })
            .ok_or_else(|| anyhow!("no running {name}"))
    }

    /// The names of the lab's processes.
    pub fn processes(&self) -> Vec<ProcName> {
        std::fs::read_to_string(self.dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Kill `name` with SIGKILL; returns its command line, to start it again.
    pub fn kill(&self, name: &str) -> Result<Vec<String>> {
        let pid = self.pid(name)?;
        let argv = cmdline(pid)?;
        signal(pid, nix::sys::signal::Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(10));
        Ok(argv)
    }

    /// Start `name` again with `argv` (its log goes on in `logs/<name>.log`) and record its PID.
    pub fn restart(&self, name: &str, argv: &[String]) -> Result<u32> {
        self.restart_with_env(name, argv, &[])
    }

    /// [`Self::restart`] with more environment variables.
    pub fn restart_with_env(&self, name: &str, argv: &[String], env: &[(String, String)]) -> Result<u32> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{name}.log")))?;
        let (exe, args) = argv.split_first().ok_or_else(|| anyhow!("empty command line of {name}"))?;
        // A host agent of a lab with namespaces starts again in its own.
        let mut cmd = match (name.strip_prefix("host-"), self.net()) {
            (Some(host), Some(net)) => {
                let [program, rest @ ..] = net.exec_prefix(host);
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
            .env("FERRY_LOG", std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().map(|(k, v)| (k, v)));
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a Ctrl-C of the soak does not reach it; `lab --down` stops it.
            cmd.process_group(0);
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {name} again"))?;
        let pid = child.id();
        let pids = std::fs::read_to_string(self.dir.join("pids"))?;
        let updated: Vec<String> = pids
            .lines()
            .map(|l| if l.split_whitespace().next() == Some(name) { format!("{name} {pid}") } else { l.to_string() })
            .collect();
        std::fs::write(self.dir.join("pids"), updated.join("\n") + "\n")?;
        Ok(pid)
    }

    /// Give host `host` another replication port (its configuration), as an operator would.
    pub fn move_replication_port(&self, host: &str) -> Result<u16> {
        let path = self.dir.join("hosts").join(host).join("host.toml");
        let text = std::fs::read_to_string(&path)?;
        let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut out = Vec::new();
        for l in text.lines() {
            if let Some(addr) = l.strip_prefix("replication_listen = \"") {
                // The same address (loopback, or the host's namespace), another port.
                let ip = addr.trim_end_matches('"').rsplit_once(':').map_or("127.0.0.1", |(ip, _)| ip);
                out.push(format!("replication_listen = \"{ip}:{free}\""));
            } else {
                out.push(l.to_string());
            }
        }
        std::fs::write(&path, out.join("\n") + "\n")?;
        Ok(free)
    }

    /// The replication port host `host` is configured to listen at.
    pub fn replication_port(&self, host: &str) -> Option<u16> {
        let text = std::fs::read_to_string(self.dir.join("hosts").join(host).join("host.toml")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("replication_listen = \""))
            .and_then(|a| a.trim_end_matches('"').rsplit(':').next().and_then(|p| p.parse().ok()))
    }

    /// The QEMU process of VM `vm` on `host`, if it runs.
    pub fn qemu_pid(&self, host: &str, vm: &str) -> Option<u32> {
        let dir = self.host_data(host).join("vms").join(vm);
        let pid = std::fs::read_to_string(dir.join("qemu.pid")).ok()?.trim().parse::<u32>().ok()?;
        let argv = cmdline(pid).ok()?;
        argv.iter().any(|a| a.contains(&*dir.to_string_lossy())).then_some(pid)
    }

    /// Stop everything (`ferry lab --down`).
    pub fn down(&self) -> Result<()> {
        let exe = std::env::current_exe()?;
        let st = Command::new(exe).args(["lab", "--down", "--dir"]).arg(&self.dir).stdout(Stdio::null()).status()?;
        if !st.success() {
            bail!("ferry lab --down failed ({st})");
        }
        Ok(())
    }
}

pub fn cmdline(pid: u32) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).with_context(|| format!("process {pid} is gone"))?;
    Ok(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn alive(pid: u32) -> bool {
    // A zombie (killed, not reaped by its parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn wait_gone(pid: u32, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
