//! `ferry`: one binary for every role and every operator command.
//!
//! Roles: `ferry vault`, `ferry site run|register`, `ferry host`, and `ferry lab` which starts a
//! whole two-site lab on one machine. Operator commands talk to the vault's REST API; they find
//! it through `--url/--token/--ca` or `FERRY_URL/FERRY_TOKEN/FERRY_CA` (the lab writes these to
//! `lab-data/ferry.env`, which is read when nothing else is given).
//!
//! Exit codes: 0 success, 1 error, 2 usage, 3 not found, 4 conflict or not allowed,
//! 5 authentication or permission, 6 a waited-for job failed or was cancelled.

mod alert_cmds;
mod api_cmds;
mod capacity_cmds;
mod lab;
mod lab_demo;
mod lab_net;
mod names;
mod output;
mod protection_cmds;
mod recovery_cmds;
mod roles;
mod soak;
mod vault_file;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry", version, about = "Ferry: site recovery for KVM/QEMU virtual machines")]
struct Cli {
    #[command(flatten)]
    conn: api_cmds::Connection,
    /// Log lines as text (default) or as JSON objects, one per line (env FERRY_LOG_FORMAT).
    /// Under systemd (journald) text logs carry no colour codes.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the vault server (control plane).
    Vault(vault_file::VaultArgs),
    /// Run or register a site manager.
    Site {
        #[command(subcommand)]
        cmd: SiteCmd,
    },
    /// Run a host agent.
    Host {
        /// Configuration file (TOML)
        #[arg(long)]
        config: PathBuf,
        /// Data directory (state, identity and logs of this role)
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Measure Ferry on this machine and print the figures.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Start the two-site lab (vault, VMM-NewYork, VMM-Chicago, one host each) on this machine.
    Lab(lab::LabArgs),
    /// Run random operations and faults against a lab of its own and check Ferry's invariants
    /// throughout (exit code 1 on a violation).
    Soak(soak::SoakArgs),
    /// Print the shell completion script, e.g. `ferry completion bash > /etc/bash_completion.d/ferry`.
    Completion {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Api(api_cmds::ApiCmd),
    #[command(flatten)]
    Protection(protection_cmds::ProtectionCmd),
    #[command(flatten)]
    Recovery(recovery_cmds::RecoveryCmd),
    #[command(flatten)]
    Alerts(alert_cmds::AlertCmd),
    #[command(flatten)]
    Capacity(capacity_cmds::CapacityCmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Vault listing and job updates at scale (10,000 items, 100,000 jobs, 1,000,000 events).
    Vault {
        /// A quick run with small tables.
        #[arg(long)]
        small: bool,
    },
    /// Database size after a simulated year of a busy vault, pruned by the retention against
    /// never pruned (SEC-3).
    VaultYear {
        /// Protected items.
        #[arg(long, default_value_t = 1000)]
        items: usize,
        /// Simulated days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Failover: failover to QEMU running, reverse replication bytes against the change.
    Failover {
        /// Scratch directory.
        #[arg(long, default_value = "/var/tmp/ferry-bench-failover")]
        dir: PathBuf,
        /// Data written before the failover, MiB.
        #[arg(long, default_value_t = 256)]
        data_mib: u64,
        /// Data the recovered VM writes before reverse replication, MiB.
        #[arg(long, default_value_t = 16)]
        changed_mib: u64,
    },
    /// Replication: initial copy, delta cycles, wire bytes with and without zstd, idle cost.
    Replication {
        /// Scratch directory (needs about 3× the data size).
        #[arg(long, default_value = "/var/tmp/ferry-bench")]
        dir: PathBuf,
        /// Allocated data for the initial replication, MiB.
        #[arg(long, default_value_t = 1024)]
        data_mib: u64,
        /// Where the replica side writes (replica, rsync and local copies); default: DIR. Other
        /// storage here measures as with a secondary site's own disks.
        #[arg(long)]
        replica_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Register with a vault using a registration key file.
    Register {
        /// Configuration file (TOML)
        #[arg(long)]
        config: PathBuf,
        /// Data directory (state, identity and logs of this role)
        #[arg(long)]
        data_dir: PathBuf,
        /// Registration key file downloaded from the vault
        #[arg(long)]
        key: PathBuf,
        /// Write every message sent to the vault to this file (JSON lines).
        #[arg(long)]
        record_vault_traffic: Option<PathBuf>,
    },
    /// Enable protection for VMs of this site from the site manager's server (REP-1), with the
    /// site's own credential; prints the protected items and their Enable protection jobs.
    Protect {
        /// Configuration file (TOML)
        #[arg(long)]
        config: PathBuf,
        /// Data directory (state, identity and logs of this role)
        #[arg(long)]
        data_dir: PathBuf,
        /// VM names or ids of this site.
        #[arg(required = true)]
        vms: Vec<String>,
    },
    /// Issue a new join token for one host of this site (SEC-1): a host joins with a token
    /// issued for it, once. The site manager issues one for every host that never joined; use
    /// this for a host that must join again (reinstalled). Prints the token's file; copy it to
    /// the host (mode 0600) as its `join_token_file`.
    JoinToken {
        /// Configuration file (TOML)
        #[arg(long)]
        config: PathBuf,
        /// Data directory (state, identity and logs of this role)
        #[arg(long)]
        data_dir: PathBuf,
        /// The host's name in the site's definition.
        #[arg(long)]
        host: String,
    },
    /// Run the site manager (registers first when given a key and not yet registered).
    Run {
        /// Configuration file (TOML)
        #[arg(long)]
        config: PathBuf,
        /// Data directory (state, identity and logs of this role)
        #[arg(long)]
        data_dir: PathBuf,
        /// Registration key file downloaded from the vault
        #[arg(long)]
        key: Option<PathBuf>,
        /// Record what the site managers send to the vault (docs/data-privacy.md checks)
        #[arg(long)]
        record_vault_traffic: Option<PathBuf>,
    },
}

/// Logs go to standard error, filtered by `FERRY_LOG` (default `warn`), as text or JSON lines.
fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd: journald keeps its own timestamps and records colour codes verbatim.
        builder.with_ansi(false).without_time().init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    if let Cmd::Completion { shell } = cli.cmd {
        print_completion(shell, &mut std::io::stdout());
        return;
    }
    if matches!(cli.cmd, Cmd::Api(_) | Cmd::Protection(_) | Cmd::Recovery(_) | Cmd::Alerts(_) | Cmd::Capacity(_)) {
        // A client command piped into `head` ends quietly when the reader goes away, like other
        // command-line tools (Rust ignores SIGPIPE, so printing would panic). The long-running
        // roles keep ignoring it: their sockets and pipes report EPIPE as errors instead.
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        let _ = unsafe {
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
        };
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Vault(args) => roles::vault(args).await,
            Cmd::Site { cmd: SiteCmd::Register { config, data_dir, key, record_vault_traffic } } => {
                roles::site_register(&config, &data_dir, &key, record_vault_traffic).await
            }
            Cmd::Site { cmd: SiteCmd::Protect { config, data_dir, vms } } => {
                roles::site_protect(&config, &data_dir, vms).await
            }
            Cmd::Site { cmd: SiteCmd::JoinToken { config, data_dir, host } } => {
                roles::site_join_token(&config, &data_dir, &host)
            }
            Cmd::Site { cmd: SiteCmd::Run { config, data_dir, key, record_vault_traffic } } => {
                roles::site_run(&config, &data_dir, key.as_deref(), record_vault_traffic).await
            }
            Cmd::Host { config, data_dir } => roles::host_run(&config, &data_dir).await,
            Cmd::Lab(args) => lab::run(args).await,
            Cmd::Soak(args) => soak::run(args).await,
            Cmd::Completion { .. } => Ok(()),
            Cmd::Bench { what: BenchCmd::Vault { small } } => {
                let opts = if small {
                    ferry_vault::bench::BenchOptions::small()
                } else {
                    ferry_vault::bench::BenchOptions::full()
                };
                let report = ferry_vault::bench::run(opts).await?;
                println!("{report}");
                Ok(())
            }
            Cmd::Bench { what: BenchCmd::VaultYear { items, days } } => {
                let opts = ferry_vault::bench_year::YearOptions {
                    items,
                    days,
                    ..ferry_vault::bench_year::YearOptions::full()
                };
                println!("{}", ferry_vault::bench_year::run(opts).await?);
                Ok(())
            }
            Cmd::Bench { what: BenchCmd::Failover { dir, data_mib, changed_mib } } => {
                let mut opts = ferry_repl::bench_failover::FailoverBenchOptions::new(&dir);
                opts.data_mib = data_mib;
                opts.changed_mib = changed_mib;
                let report = ferry_repl::bench_failover::run(&opts).await;
                let _ = std::fs::remove_dir_all(&dir);
                println!("{}", report?);
                Ok(())
            }
            Cmd::Bench { what: BenchCmd::Replication { dir, data_mib, replica_dir } } => {
                let mut opts = ferry_repl::bench::BenchOptions::new(&dir);
                opts.data_mib = data_mib;
                opts.replica_dir = replica_dir.clone();
                let far_existed = replica_dir.as_ref().is_some_and(|d| d.exists());
                let report = ferry_repl::bench::run(&opts).await;
                let _ = std::fs::remove_dir_all(&dir);
                if let Some(far) = &replica_dir {
                    // Only what the bench made there (the directory may hold other things).
                    for sub in ["replica", "rsync", "local-copy.img"] {
                        let p = far.join(sub);
                        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                    }
                    if !far_existed {
                        let _ = std::fs::remove_dir(far);
                    }
                }
                let report = report?;
                println!("{report}");
                Ok(())
            }
            Cmd::Api(cmd) => api_cmds::run(&cli.conn, cmd).await,
            Cmd::Protection(cmd) => protection_cmds::run(&cli.conn, cmd).await,
            Cmd::Recovery(cmd) => recovery_cmds::run(&cli.conn, cmd).await,
            Cmd::Alerts(cmd) => alert_cmds::run(&cli.conn, cmd).await,
            Cmd::Capacity(cmd) => capacity_cmds::run(&cli.conn, cmd).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        let mut src = e.source();
        while let Some(s) = src {
            eprintln!("  caused by: {s}");
            src = s.source();
        }
        std::process::exit(exit_code(&e));
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(api_cmds::JobEnded(_)) = e.downcast_ref::<api_cmds::JobEnded>() {
        return 6;
    }
    match e.downcast_ref::<ferry_client::Error>().and_then(|c| c.status()) {
        Some(404) => 3,
        Some(409) | Some(412) => 4,
        Some(401) | Some(403) => 5,
        _ => 1,
    }
}

/// Write the completion script of `shell` for the whole command tree.
fn print_completion(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "ferry", out);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn fab_2_shell_completion_knows_every_command() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            super::print_completion(shell, &mut out);
            let text = String::from_utf8(out).expect("utf-8");
            for cmd in ["point-verify", "planned-failover", "soak", "site-list"] {
                assert!(text.contains(cmd), "{shell:?} completion lacks {cmd}");
            }
        }
    }

    /// Every command and option the CLI offers, with what lacks a help text.
    fn missing_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} --{}", arg.get_long().unwrap_or(arg.get_id().as_str())));
            }
        }
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() && sub.get_name() != "help" {
                out.push(p.clone());
            }
            missing_help(sub, &p, out);
        }
    }

    #[test]
    fn fab_2_every_command_and_option_has_help_text() {
        let mut missing = Vec::new();
        missing_help(&super::Cli::command(), "ferry", &mut missing);
        assert!(missing.is_empty(), "{} without help text:\n{}", missing.len(), missing.join("\n"));
    }
}
