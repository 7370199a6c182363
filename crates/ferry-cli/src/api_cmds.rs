//! Operator commands against the vault's REST API (virsh-style hyphenated verbs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_client::Client;
use serde_json::{json, Value};

use crate::names::{print_mapping, rows_mut, Names};
use crate::output::{print, Output};

#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Vault URL (env FERRY_URL).
    #[arg(long, global = true, env = "FERRY_URL")]
    pub url: Option<String>,
    /// API token (env FERRY_TOKEN).
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Vault CA certificate file (env FERRY_CA).
    #[arg(long, global = true, env = "FERRY_CA")]
    pub ca: Option<PathBuf>,
    /// Vault name or id (env FERRY_VAULT).
    #[arg(long = "vault-name", global = true, env = "FERRY_VAULT", default_value = "ferry-lab")]
    pub vault: String,
    /// How results are printed: a table or JSON
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Output,
}

/// A waited-for job ended without success.
#[derive(Debug, thiserror::Error)]
#[error("job {0} did not succeed")]
pub struct JobEnded(pub String);

#[derive(Subcommand, Debug)]
pub enum ApiCmd {
    /// List vaults.
    VaultList,
    /// Create a vault.
    VaultCreate {
        /// Vault name
        name: String,
        /// Free text shown with it
        #[arg(long, default_value = "")]
        description: String,
        /// Region where the vault keeps its data (FAB-9)
        #[arg(long, default_value = "")]
        region: String,
    },
    /// Show the vault: its settings and protection goal.
    VaultShow,
    /// Show the versions of this CLI, the vault, every site manager and every host agent.
    Version,
    /// Delete a vault that protects nothing any more.
    VaultDelete,
    /// Set the protection goal (FAB-6).
    ProtectionGoalSet {
        /// Source and target on one site manager (no second site manager).
        #[arg(long)]
        single_site: bool,
    },
    /// Issue a registration key (valid 5 days).
    KeyIssue {
        /// Where the key file is written
        #[arg(long)]
        out: Option<PathBuf>,
        /// FAB-8: a key that adds another instance of this registered site's manager (without
        /// it, the key registers a new site only).
        #[arg(long)]
        site: Option<String>,
    },
    /// List registration keys (issued, used, expired).
    KeyList,
    /// Revoke a registration key that was not used yet.
    KeyRevoke {
        /// Registration key id (key-list)
        id: String,
    },
    /// List the registered sites with their last heartbeat and clouds.
    SiteList,
    /// Show one site: its inventory as its site manager reported it.
    SiteShow {
        /// Site (id or name)
        site: String,
    },
    /// Remove a site (its site manager must register again to come back).
    SiteDelete {
        /// Site (id or name)
        site: String,
    },
    /// List a site's clouds (protection containers).
    CloudList {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Only clouds whose synchronization is on
        #[arg(long)]
        synced: bool,
    },
    /// Turn a cloud's metadata sync on or off (FAB-3).
    CloudSync {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Cloud (id or name)
        #[arg(long)]
        cloud: String,
        /// Turn synchronization on
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Turn synchronization off
        #[arg(long)]
        disable: bool,
    },
    /// List a site's host groups.
    HostgroupList {
        /// Site (id or name)
        #[arg(long)]
        site: String,
    },
    /// List a site's hosts with their state and capacity.
    HostList {
        /// Site (id or name)
        #[arg(long)]
        site: String,
    },
    /// Rotate a host's certificate now: the current one is revoked at once (every host refuses
    /// it from its next report) and the agent renews it with a new key through its site.
    HostRenewCertificate {
        /// Site (id or name)
        #[arg(long)]
        site: String,
        /// Host (id or name)
        host: String,
    },
    /// List a site's VM networks.
    NetworkList {
        /// Site (id or name)
        #[arg(long)]
        site: String,
    },
    /// List a site's logical networks.
    LogicalNetworkList {
        /// Site (id or name)
        #[arg(long)]
        site: String,
    },
    /// List a site's storage classifications.
    ClassificationList {
        /// Site (id or name)
        #[arg(long)]
        site: String,
    },
    /// List a site's VMs that can be protected, with their protection state.
    ProtectableList {
        /// Site (id or name)
        #[arg(long)]
        site: String,
    },
    /// Create a replication policy.
    PolicyCreate(PolicyArgs),
    /// List replication policies.
    PolicyList,
    /// Show one replication policy.
    PolicyShow {
        /// Replication policy (id or name)
        policy: String,
    },
    /// Replace a policy's settings; applies to every VM under it.
    PolicyUpdate {
        /// Replication policy (id or name)
        policy: String,
        #[command(flatten)]
        spec: PolicyArgs,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Delete a replication policy no cloud pair uses.
    PolicyDelete {
        /// Replication policy (id or name)
        policy: String,
    },
    /// Pair a source cloud with a target cloud under a policy.
    PairCreate {
        /// SITE/CLOUD
        #[arg(long)]
        source: String,
        /// SITE/CLOUD
        #[arg(long)]
        target: String,
        /// Replication policy (id or name)
        #[arg(long)]
        policy: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// List cloud pairs (protection container mappings).
    PairList,
    /// Remove a cloud pair (no VM of it may be protected).
    PairDelete {
        /// Cloud pair id (pair-list)
        id: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Map a source VM network to a target VM network (NET-1).
    NetworkMapCreate {
        /// SITE/NETWORK
        #[arg(long)]
        source: String,
        /// SITE/NETWORK
        #[arg(long)]
        target: String,
    },
    /// List network mappings.
    NetworkMapList,
    /// Remove a network mapping.
    NetworkMapDelete {
        /// Network mapping id (network-map-list)
        id: String,
    },
    /// Show which VM networks of a site can still be mapped.
    NetworkMapAvailability,
    /// Map a storage classification (STO-1).
    StorageMapCreate {
        /// SITE/CLASSIFICATION
        #[arg(long)]
        source: String,
        /// SITE/CLASSIFICATION
        #[arg(long)]
        target: String,
    },
    /// List storage mappings.
    StorageMapList,
    /// Remove a storage mapping.
    StorageMapDelete {
        /// Storage mapping id (storage-map-list)
        id: String,
    },
    /// List jobs, newest first, filtered.
    JobList(JobFilterArgs),
    /// Show one job with its tasks and errors.
    JobShow {
        /// Job id
        id: String,
    },
    /// Cancel a running job (between its tasks).
    JobCancel {
        /// Job id
        id: String,
    },
    /// Start a failed or cancelled job again from the beginning.
    JobRestart {
        /// Job id
        id: String,
        /// Wait until the job ends, then print it
        #[arg(long)]
        wait: bool,
    },
    /// Export jobs as CSV or JSON (all matching, no cap).
    JobExport {
        /// csv or json
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write to this file instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        filter: JobFilterArgs,
    },
    /// Wait for a job with a progress bar.
    JobWait {
        /// Job id
        id: String,
    },
    /// List events, newest first.
    EventList {
        /// Only events of this severity (Info, Warning, Error)
        #[arg(long)]
        severity: Option<String>,
        /// Only events of this kind (e.g. ReplicationStalled)
        #[arg(long)]
        kind: Option<String>,
        /// Print at most this many entries
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Create an API token with a role; its secret is printed once.
    TokenCreate {
        /// Token name (who or what uses it)
        #[arg(long)]
        name: String,
        /// reader, operator or contributor
        #[arg(long)]
        role: String,
        /// The token stops working after this many days (1–3650); default: it does not expire.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List API tokens (never their secrets).
    TokenList,
    /// Revoke an API token.
    TokenRevoke {
        /// Token id (token-list)
        id: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    /// Policy name (unique in the vault)
    #[arg(long)]
    pub name: String,
    /// Host software the policy is for
    #[arg(long, default_value = "qemu-7.2")]
    pub host_version: String,
    /// certificate or kerberos
    #[arg(long, default_value = "certificate")]
    pub authentication: String,
    /// Replication port of the hosts under this policy (default 8084)
    #[arg(long)]
    pub port: Option<u16>,
    /// 30, 300 or 900
    #[arg(long, default_value_t = 300)]
    pub copy_frequency: u32,
    /// Hours of additional hourly recovery points to keep (0: only the latest)
    #[arg(long, default_value_t = 0)]
    pub retention_hours: u32,
    /// Hours between app-consistent points (guest freeze); none: crash-consistent only
    #[arg(long)]
    pub app_consistent_hours: Option<u32>,
    /// Compress replication data (zstd)
    #[arg(long)]
    pub compression: bool,
    /// Delete the replica when protection is disabled (default: keep it)
    #[arg(long)]
    pub delete_replica_on_disable: bool,
    /// RFC 3339 time for scheduled initial replication.
    #[arg(long, conflicts_with_all = ["export_path", "import_path"])]
    pub schedule: Option<String>,
    /// Offline initial replication: folder on the source host the export is written to
    #[arg(long, requires = "import_path")]
    pub export_path: Option<String>,
    /// Offline initial replication: folder on the target host the export is imported from
    #[arg(long, requires = "export_path")]
    pub import_path: Option<String>,
    /// SOURCE_SITE/CLOUD=TARGET_SITE/CLOUD pairs to associate at creation.
    #[arg(long)]
    pub associate: Vec<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct JobFilterArgs {
    /// Only jobs with this status (NotStarted, InProgress, WaitingForInput, Succeeded, Failed, Cancelled)
    #[arg(long)]
    pub status: Option<String>,
    /// Site (id or name)
    #[arg(long)]
    pub site: Option<String>,
    /// Only jobs on this kind of object (ProtectedItem, RecoveryPlan, Fabric, …)
    #[arg(long)]
    pub object_type: Option<String>,
    /// Only jobs of this operation (e.g. PlannedFailover)
    #[arg(long)]
    pub operation: Option<String>,
    /// Only jobs created at or after this time (RFC 3339)
    #[arg(long)]
    pub from: Option<String>,
    /// Only jobs created before this time (RFC 3339)
    #[arg(long)]
    pub to: Option<String>,
    /// Print at most this many entries
    #[arg(long)]
    pub limit: Option<i64>,
    /// Continue after this entry (the `--cursor` a previous page printed)
    #[arg(long)]
    pub cursor: Option<String>,
}

fn lab_env() -> Vec<(String, String)> {
    let path = std::env::var("FERRY_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("lab-data"))
        .join("ferry.env");
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| l.trim().strip_prefix("export ").unwrap_or(l.trim()).split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('\'').trim_matches('"').to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn client(c: &Connection) -> Result<Client> {
    let env = lab_env();
    let get = |k: &str| env.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let url = c
        .url
        .clone()
        .or_else(|| get("FERRY_URL"))
        .ok_or_else(|| anyhow!("No vault URL: pass --url or set FERRY_URL (the lab writes lab-data/ferry.env)"))?;
    let token = c
        .token
        .clone()
        .or_else(|| get("FERRY_TOKEN"))
        .ok_or_else(|| anyhow!("No API token: pass --token or set FERRY_TOKEN"))?;
    let ca =
        c.ca.clone()
            .or_else(|| get("FERRY_CA").map(PathBuf::from))
            .ok_or_else(|| anyhow!("No CA certificate: pass --ca or set FERRY_CA"))?;
    let ca_pem =
        std::fs::read_to_string(&ca).with_context(|| format!("Cannot read the CA certificate {}", ca.display()))?;
    Ok(Client::builder(url).ca(ca_pem).token(token).build()?)
}

pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) struct Ctx {
    pub(crate) c: Client,
    pub(crate) vault: String,
    pub(crate) out: Output,
}

impl Ctx {
    pub(crate) fn v(&self, rest: &str) -> String {
        format!("/api/v1/vaults/{}{}", enc(&self.vault), rest)
    }
    pub(crate) fn f(&self, site: &str, rest: &str) -> String {
        self.v(&format!("/replicationFabrics/{}{}", enc(site), rest))
    }

    /// Resolve SITE/NAME to a site object reference by looking the name up in `list`.
    async fn resolve(&self, spec: &str, list: &str) -> Result<Value> {
        let (site, name) = spec.split_once('/').ok_or_else(|| anyhow!("'{spec}' must be SITE/NAME"))?;
        let fabric: Value = self.c.get(&self.f(site, "")).await?;
        let items: Value = self.c.get(&self.f(site, list)).await?;
        let item = items
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name || i["id"] == name))
            .ok_or_else(|| anyhow!("Site {site} has no {} named {name}", list.trim_start_matches('/')))?;
        Ok(json!({"fabric": fabric["id"], "id": item["id"]}))
    }

    /// Wait until a job ends or waits for an operator (test failover waits at "Complete testing").
    pub(crate) async fn wait_input_or_end(&self, job: &Value) -> Result<Value> {
        let id = job["id"].as_str().ok_or_else(|| anyhow!("The answer carries no job id"))?.to_string();
        loop {
            let j: Value = self.c.get(&self.v(&format!("/replicationJobs/{id}"))).await?;
            match j["status"].as_str() {
                Some("WaitingForInput") => return Ok(j),
                Some("InProgress") | Some("NotStarted") => tokio::time::sleep(Duration::from_millis(300)).await,
                _ => return self.wait_job(&j).await,
            }
        }
    }

    pub(crate) async fn wait_job(&self, job: &Value) -> Result<Value> {
        let id = job["id"].as_str().ok_or_else(|| anyhow!("The answer carries no job id"))?.to_string();
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:30} [{bar:30}] {pos}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            let j: Value = self.c.get(&self.v(&format!("/replicationJobs/{id}"))).await?;
            bar.set_position(j["progress"].as_u64().unwrap_or(0));
            let running = j["tasks"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["status"] == "InProgress"))
                .and_then(|t| t["name"].as_str())
                .unwrap_or("");
            bar.set_message(format!("{} {}", j["operation"].as_str().unwrap_or(""), running));
            match j["status"].as_str() {
                Some("Succeeded") => {
                    bar.finish_and_clear();
                    return Ok(j);
                }
                Some("Failed") | Some("Cancelled") => {
                    bar.finish_and_clear();
                    print(self.out, &j, JOB_COLS);
                    for e in j["errors"].as_array().into_iter().flatten() {
                        eprintln!("{}: {}", e["code"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or(""));
                    }
                    return Err(JobEnded(id).into());
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }
}

pub(crate) const JOB_COLS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("OPERATION", "/operation"),
    ("OBJECT", "/object_name"),
    ("STATUS", "/status"),
    ("PROGRESS", "/progress"),
    ("CREATED", "/created_at"),
];

fn policy_spec(a: &PolicyArgs) -> Result<Value> {
    let auth = match a.authentication.to_ascii_lowercase().as_str() {
        "certificate" => "Certificate",
        "kerberos" => "Kerberos",
        other => bail!("Unknown authentication '{other}': use certificate or kerberos"),
    };
    let initial = match (&a.schedule, &a.export_path, &a.import_path) {
        (Some(t), _, _) => json!({"method": "OverNetworkScheduled", "start_at": t}),
        (None, Some(e), Some(i)) => json!({"method": "Offline", "export_path": e, "import_path": i}),
        _ => json!({"method": "OverNetworkNow"}),
    };
    let mut spec = json!({
        "name": a.name,
        "host_version": a.host_version,
        "authentication": auth,
        "copy_frequency_secs": a.copy_frequency,
        "recovery_point_retention_hours": a.retention_hours,
        "compression": a.compression,
        "delete_replica_on_disable": a.delete_replica_on_disable,
        "initial_replication": initial,
    });
    if let Some(p) = a.port {
        spec["port"] = json!(p);
    }
    if let Some(h) = a.app_consistent_hours {
        spec["app_consistent_frequency_hours"] = json!(h);
    }
    Ok(spec)
}

fn job_query(f: &JobFilterArgs, fabric: Option<String>) -> String {
    let mut q = Vec::new();
    let mut add = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(v)));
        }
    };
    add("status", &f.status);
    add("fabric", &fabric);
    add("objectType", &f.object_type);
    add("operation", &f.operation);
    add("from", &f.from);
    add("to", &f.to);
    add("cursor", &f.cursor);
    add("limit", &f.limit.map(|l| l.to_string()));
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub(crate) fn context(conn: &Connection) -> Result<Ctx> {
    Ok(Ctx { c: client(conn)?, vault: conn.vault.clone(), out: conn.output })
}

pub async fn run(conn: &Connection, cmd: ApiCmd) -> Result<()> {
    let ctx = context(conn)?;
    let out = ctx.out;
    let c = &ctx.c;
    match cmd {
        ApiCmd::VaultList => print(
            out,
            &c.get("/api/v1/vaults").await?,
            &[("ID", "/id"), ("NAME", "/name"), ("REGION", "/region"), ("CREATED", "/created_at")],
        ),
        ApiCmd::VaultCreate { name, description, region } => {
            let v: Value =
                c.post("/api/v1/vaults", &json!({"name": name, "description": description, "region": region})).await?;
            print(out, &v, &[("ID", "/id"), ("NAME", "/name")]);
        }
        ApiCmd::VaultShow => print(out, &c.get(&ctx.v("")).await?, &[]),
        ApiCmd::Version => {
            let mut rows = vec![json!({"component": "cli", "name": "ferry", "version": env!("CARGO_PKG_VERSION")})];
            let health: Value = c.get("/api/v1/health").await?;
            rows.push(json!({"component": "vault", "name": ctx.vault, "version": health["version"]}));
            let mut sites: Value = c.get(&ctx.v("/replicationFabrics")).await?;
            for s in rows_mut(&mut sites) {
                let site = s["name"].as_str().unwrap_or_default().to_string();
                for p in s["providers"].as_array().into_iter().flatten() {
                    let name = format!("{site}/{}", p["server_name"].as_str().unwrap_or_default());
                    rows.push(json!({"component": "site manager", "name": name, "version": p["version"]}));
                }
                for h in s["inventory"]["hosts"].as_array().into_iter().flatten() {
                    let name = format!("{site}/{}", h["name"].as_str().unwrap_or_default());
                    rows.push(json!({"component": "host agent", "name": name, "version": h["agent_version"]}));
                }
            }
            print(out, &json!(rows), &[("COMPONENT", "/component"), ("NAME", "/name"), ("VERSION", "/version")]);
        }
        ApiCmd::VaultDelete => {
            c.delete(&ctx.v("")).await?;
        }
        ApiCmd::ProtectionGoalSet { single_site } => {
            let goal = json!({"replicate_to": "RecoverySite", "hypervisor": "Kvm", "managed_by_site_manager": true, "second_site_manager": !single_site});
            print(out, &c.put(&ctx.v("/protectionGoal"), &goal).await?, &[]);
        }
        ApiCmd::KeyIssue { out: file, site } => {
            let body = match site {
                Some(s) => json!({"site": s}),
                None => json!({}),
            };
            let k: Value = c.post(&ctx.v("/registrationKeys"), &body).await?;
            let text = k["file"].as_str().unwrap_or_default();
            match file {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("Cannot write {}", p.display()))?;
                    println!(
                        "Registration key {} written to {} (valid until {})",
                        k["info"]["id"],
                        p.display(),
                        k["info"]["expires_at"]
                    );
                }
                None => print!("{text}"),
            }
        }
        ApiCmd::KeyList => print(
            out,
            &c.get(&ctx.v("/registrationKeys")).await?,
            &[
                ("ID", "/id"),
                ("ISSUED", "/issued_at"),
                ("EXPIRES", "/expires_at"),
                ("USED", "/used_at"),
                ("REVOKED", "/revoked_at"),
            ],
        ),
        ApiCmd::KeyRevoke { id } => {
            c.delete(&ctx.v(&format!("/registrationKeys/{}", enc(&id)))).await?;
        }
        ApiCmd::SiteList => {
            let mut list: Value = c.get(&ctx.v("/replicationFabrics")).await?;
            for site in rows_mut(&mut list) {
                let clouds: Vec<String> = site["inventory"]["clouds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect();
                site["cloud_names"] = json!(clouds.join(", "));
            }
            print(
                out,
                &list,
                &[("ID", "/id"), ("NAME", "/name"), ("LAST HEARTBEAT", "/last_heartbeat"), ("CLOUDS", "/cloud_names")],
            );
        }
        ApiCmd::SiteShow { site } => print(out, &c.get(&ctx.f(&site, "")).await?, &[]),
        ApiCmd::SiteDelete { site } => {
            c.delete(&ctx.f(&site, "")).await?;
        }
        ApiCmd::CloudList { site, synced } => {
            let q = if synced { "?synced=true" } else { "" };
            print(
                out,
                &c.get(&ctx.f(&site, &format!("/protectionContainers{q}"))).await?,
                &[("ID", "/id"), ("NAME", "/name"), ("SYNCED", "/sync_enabled"), ("HOST GROUPS", "/host_groups")],
            );
        }
        ApiCmd::CloudSync { site, cloud, enable, disable } => {
            if enable == disable {
                bail!("Give --enable or --disable");
            }
            let r: Value = c
                .patch(
                    &ctx.f(&site, &format!("/protectionContainers/{}", enc(&cloud))),
                    &json!({"sync_enabled": enable}),
                )
                .await?;
            print(out, &r, &[("ID", "/id"), ("NAME", "/name"), ("SYNCED", "/sync_enabled")]);
        }
        ApiCmd::HostgroupList { site } => print(
            out,
            &c.get(&ctx.f(&site, "/hostGroups")).await?,
            &[("ID", "/id"), ("NAME", "/name"), ("CLASSIFICATIONS", "/storage_classifications")],
        ),
        ApiCmd::HostList { site } => print(
            out,
            &c.get(&ctx.f(&site, "/hosts")).await?,
            &[
                ("NAME", "/name"),
                ("CONNECTED", "/connected"),
                ("AGENT", "/agent_version"),
                ("QEMU", "/qemu_version"),
                ("ADDRESS", "/address"),
            ],
        ),
        ApiCmd::HostRenewCertificate { site, host } => {
            let r: Value =
                c.post(&ctx.f(&site, &format!("/hosts/{}/renewCertificate", enc(&host))), &json!({})).await?;
            print(out, &r, &[("HOST", "/host"), ("REVOKED CERTIFICATE (SHA-256)", "/revoked_sha256")]);
        }
        ApiCmd::NetworkList { site } => print(
            out,
            &c.get(&ctx.f(&site, "/vmNetworks")).await?,
            &[("ID", "/id"), ("NAME", "/name"), ("LOGICAL NETWORK", "/logical_network")],
        ),
        ApiCmd::LogicalNetworkList { site } => {
            print(out, &c.get(&ctx.f(&site, "/logicalNetworks")).await?, &[("ID", "/id"), ("NAME", "/name")])
        }
        ApiCmd::ClassificationList { site } => print(
            out,
            &c.get(&ctx.f(&site, "/storageClassifications")).await?,
            &[("ID", "/id"), ("NAME", "/name"), ("KIND", "/kind")],
        ),
        ApiCmd::ProtectableList { site } => print(
            out,
            &c.get(&ctx.f(&site, "/protectableItems?limit=1000")).await?,
            &[("ID", "/id"), ("NAME", "/name"), ("STATE", "/power_state"), ("CLOUD", "/cloud")],
        ),
        ApiCmd::PolicyCreate(a) => {
            let mut body = policy_spec(&a)?;
            let mut assoc = Vec::new();
            for pair in &a.associate {
                let (s, t) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--associate takes SOURCE_SITE/CLOUD=TARGET_SITE/CLOUD"))?;
                assoc.push(json!({"source": ctx.resolve(s, "/protectionContainers").await?, "target": ctx.resolve(t, "/protectionContainers").await?}));
            }
            if !assoc.is_empty() {
                body["associate"] = json!(assoc);
            }
            let r: Value = c.post(&ctx.v("/replicationPolicies"), &body).await?;
            print(
                out,
                &r["policy"],
                &[
                    ("ID", "/id"),
                    ("NAME", "/name"),
                    ("FREQUENCY", "/copy_frequency_secs"),
                    ("RETENTION", "/recovery_point_retention_hours"),
                ],
            );
        }
        ApiCmd::PolicyList => print(
            out,
            &{
                let mut list: Value = c.get(&ctx.v("/replicationPolicies")).await?;
                let names = Names::load(&ctx).await?;
                for p in rows_mut(&mut list) {
                    let clouds: Vec<String> =
                        p["associated_clouds"].as_array().into_iter().flatten().map(|c| names.of(c)).collect();
                    p["associated_cloud_names"] = json!(clouds.join(", "));
                }
                list
            },
            &[
                ("ID", "/id"),
                ("NAME", "/name"),
                ("FREQUENCY", "/copy_frequency_secs"),
                ("RETENTION", "/recovery_point_retention_hours"),
                ("APP", "/app_consistent_frequency_hours"),
                ("CLOUDS", "/associated_cloud_names"),
            ],
        ),
        ApiCmd::PolicyShow { policy } => {
            print(out, &c.get(&ctx.v(&format!("/replicationPolicies/{}", enc(&policy)))).await?, &[])
        }
        ApiCmd::PolicyUpdate { policy, spec, wait } => {
            let r: Value =
                c.put(&ctx.v(&format!("/replicationPolicies/{}", enc(&policy))), &policy_spec(&spec)?).await?;
            if wait && !r["job"].is_null() {
                ctx.wait_job(&r["job"]).await?;
            }
            print(out, &r["policy"], &[("ID", "/id"), ("NAME", "/name"), ("VERSION", "/version")]);
        }
        ApiCmd::PolicyDelete { policy } => {
            c.delete(&ctx.v(&format!("/replicationPolicies/{}", enc(&policy)))).await?;
        }
        ApiCmd::PairCreate { source, target, policy, wait } => {
            let p: Value = c.get(&ctx.v(&format!("/replicationPolicies/{}", enc(&policy)))).await?;
            let body = json!({"source": ctx.resolve(&source, "/protectionContainers").await?, "target": ctx.resolve(&target, "/protectionContainers").await?, "policy": p["id"]});
            let r: Value = c.post(&ctx.v("/replicationProtectionContainerMappings"), &body).await?;
            if wait {
                ctx.wait_job(&r["job"]).await?;
            }
            let names = Names::load(&ctx).await?;
            let mut m = r["mapping"].clone();
            m["pair"] = json!(names.of(&m["id"]));
            m["policy_name"] = json!(names.of(&m["policy"]));
            print(out, &m, &[("ID", "/id"), ("PAIR", "/pair"), ("POLICY", "/policy_name")]);
        }
        ApiCmd::PairList => {
            let mut list: Value = c.get(&ctx.v("/replicationProtectionContainerMappings")).await?;
            let names = Names::load(&ctx).await?;
            for m in rows_mut(&mut list) {
                let pair = format!("{} → {}", names.of(&m["source"]["id"]), names.of(&m["target"]["id"]));
                m["pair"] = json!(pair);
                m["policy_name"] = json!(names.of(&m["policy"]));
            }
            print(out, &list, &[("ID", "/id"), ("PAIR", "/pair"), ("POLICY", "/policy_name")]);
        }
        ApiCmd::PairDelete { id, wait } => {
            let j: Value = c.delete(&ctx.v(&format!("/replicationProtectionContainerMappings/{}", enc(&id)))).await?;
            if wait {
                ctx.wait_job(&j).await?;
            }
            print(out, &j, JOB_COLS);
        }
        ApiCmd::NetworkMapCreate { source, target } => {
            let body = json!({"source": ctx.resolve(&source, "/vmNetworks").await?, "target": ctx.resolve(&target, "/vmNetworks").await?});
            let m: Value = c.post(&ctx.v("/replicationNetworkMappings"), &body).await?;
            print_mapping(out, &Names::load(&ctx).await?, m);
        }
        ApiCmd::NetworkMapList => {
            let mut list: Value = c.get(&ctx.v("/replicationNetworkMappings")).await?;
            let names = Names::load(&ctx).await?;
            for m in rows_mut(&mut list) {
                m["source_name"] = json!(names.qualified(&m["source"]));
                m["target_name"] = json!(names.qualified(&m["target"]));
            }
            print(out, &list, &[("ID", "/id"), ("SOURCE", "/source_name"), ("TARGET", "/target_name")]);
        }
        ApiCmd::NetworkMapDelete { id } => {
            c.delete(&ctx.v(&format!("/replicationNetworkMappings/{}", enc(&id)))).await?;
        }
        ApiCmd::NetworkMapAvailability => {
            let mut list: Value = c.get(&ctx.v("/replicationNetworkMappings/availability")).await?;
            if out == Output::Table {
                let names = Names::load(&ctx).await?;
                for a in rows_mut(&mut list) {
                    a["container_mapping"] = json!(names.of(&a["container_mapping"]));
                    a["source_cloud"] = json!(names.of(&a["source_cloud"]));
                    a["target_cloud"] = json!(names.of(&a["target_cloud"]));
                    let nets: Vec<String> =
                        a["target_networks"].as_array().into_iter().flatten().map(|n| names.qualified(n)).collect();
                    a["target_networks"] = json!(nets.join(", "));
                }
            }
            print(
                out,
                &list,
                &[
                    ("PAIR", "/container_mapping"),
                    ("SOURCE CLOUD", "/source_cloud"),
                    ("TARGET CLOUD", "/target_cloud"),
                    ("TARGET NETWORKS", "/target_networks"),
                ],
            )
        }
        ApiCmd::StorageMapCreate { source, target } => {
            let body = json!({"source": ctx.resolve(&source, "/storageClassifications").await?, "target": ctx.resolve(&target, "/storageClassifications").await?});
            let m: Value = c.post(&ctx.v("/replicationStorageClassificationMappings"), &body).await?;
            print_mapping(out, &Names::load(&ctx).await?, m);
        }
        ApiCmd::StorageMapList => {
            let mut list: Value = c.get(&ctx.v("/replicationStorageClassificationMappings")).await?;
            let names = Names::load(&ctx).await?;
            for m in rows_mut(&mut list) {
                m["source_name"] = json!(names.qualified(&m["source"]));
                m["target_name"] = json!(names.qualified(&m["target"]));
            }
            print(out, &list, &[("ID", "/id"), ("SOURCE", "/source_name"), ("TARGET", "/target_name")]);
        }
        ApiCmd::StorageMapDelete { id } => {
            c.delete(&ctx.v(&format!("/replicationStorageClassificationMappings/{}", enc(&id)))).await?;
        }
        ApiCmd::JobList(f) => {
            let fabric = match &f.site {
                Some(s) => Some(c.get::<Value>(&ctx.f(s, "")).await?["id"].as_str().unwrap_or_default().to_string()),
                None => None,
            };
            print(out, &c.get(&ctx.v(&format!("/replicationJobs{}", job_query(&f, fabric)))).await?, JOB_COLS);
        }
        ApiCmd::JobShow { id } => print(out, &c.get(&ctx.v(&format!("/replicationJobs/{}", enc(&id)))).await?, &[]),
        ApiCmd::JobCancel { id } => {
            print(out, &c.post(&ctx.v(&format!("/replicationJobs/{}/cancel", enc(&id))), &json!(null)).await?, JOB_COLS)
        }
        ApiCmd::JobRestart { id, wait } => {
            let j: Value = c.post(&ctx.v(&format!("/replicationJobs/{}/restart", enc(&id))), &json!(null)).await?;
            let j = if wait { ctx.wait_job(&j).await? } else { j };
            print(out, &j, JOB_COLS);
        }
        ApiCmd::JobExport { format, out: file, filter } => {
            let mut q = job_query(&filter, None);
            q = if q.is_empty() { format!("?format={}", enc(&format)) } else { format!("{q}&format={}", enc(&format)) };
            let text = c.get_text(&ctx.v(&format!("/replicationJobs/export{q}"))).await?;
            match file {
                Some(p) => std::fs::write(&p, text).with_context(|| format!("Cannot write {}", p.display()))?,
                None => print!("{text}"),
            }
        }
        ApiCmd::JobWait { id } => {
            let j = ctx.wait_job(&json!({"id": id})).await?;
            print(out, &j, JOB_COLS);
        }
        ApiCmd::EventList { severity, kind, limit } => {
            let mut q = vec![];
            if let Some(s) = severity {
                q.push(format!("severity={}", enc(&s)));
            }
            if let Some(k) = kind {
                q.push(format!("kind={}", enc(&k)));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let q = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
            print(
                out,
                &c.get(&ctx.v(&format!("/events{q}"))).await?,
                &[("TIME", "/time"), ("SEVERITY", "/severity"), ("KIND", "/kind"), ("MESSAGE", "/message")],
            );
        }
        ApiCmd::TokenCreate { name, role, expires_in_days } => {
            let role = ferry_types::auth::Role::parse(&role)
                .ok_or_else(|| anyhow!("Unknown role '{role}': use reader, operator or contributor"))?;
            let req = ferry_types::auth::CreateToken { name, role, expires_in_days };
            let t: Value = c.post("/api/v1/tokens", &req).await?;
            print(
                out,
                &t,
                &[
                    ("ID", "/info/id"),
                    ("NAME", "/info/name"),
                    ("ROLE", "/info/role"),
                    ("EXPIRES", "/info/expires_at"),
                    ("SECRET", "/secret"),
                ],
            );
        }
        ApiCmd::TokenList => print(
            out,
            &c.get("/api/v1/tokens").await?,
            &[
                ("ID", "/id"),
                ("NAME", "/name"),
                ("ROLE", "/role"),
                ("CREATED", "/created_at"),
                ("EXPIRES", "/expires_at"),
            ],
        ),
        ApiCmd::TokenRevoke { id } => {
            c.delete(&format!("/api/v1/tokens/{}", enc(&id))).await?;
        }
    }
    Ok(())
}

pub(crate) const ITEM_COLS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("STATE", "/state"),
    ("HEALTH", "/health"),
    ("SOURCE", "/source/host_name"),
    ("TARGET", "/target/host_name"),
    ("LAST SYNC", "/stats/last_sync"),
];
