//! Shared helpers of the vault's integration tests: an in-process vault on 127.0.0.1:0 in a
//! temporary directory, reached over real HTTPS with `ferry-client`, and fake site managers
//! that register through `/api/v1/agent/register` and report a small seed-like inventory.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_client::Client;
use ferry_types::fabric::{
    Cloud, DiskFormat, Host, HostGroup, IpPool, LogicalNetwork, PowerState, SiteInventory, StorageClassification,
    StorageLocation, Subnet, Vm, VmDisk, VmNetwork, VmNic,
};
use ferry_types::job::{Job, JobStatus};
use ferry_types::policy::{Authentication, InitialReplication, PolicySpec};
use ferry_types::site_protocol::{
    CloudName, CommandResult, RegisterRequest, RegisterResponse, SiteCommandEnvelope, SiteReportAck,
};
use ferry_types::vault::Vault;
use ferry_types::Page;
use ferry_vault::api::vaults::IssuedKey;
use ferry_vault::clock::Clock;
use ferry_vault::{VaultConfig, VaultHandle};
use uuid::Uuid;

pub const QEMU: &str = "7.2.22";
pub const AGENT: &str = "0.1.0";
pub const SITE_VERSION: &str = "0.1.0";

/// A clock the test sets to exact instants (registration key validity edges).
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicI64,
}

impl ManualClock {
    pub fn at(t: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self { ms: AtomicI64::new(t.timestamp_millis()) })
    }
    pub fn set(&self, t: DateTime<Utc>) {
        self.ms.store(t.timestamp_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.ms.load(Ordering::SeqCst)).unwrap_or_default()
    }
}

/// A running test vault and its admin client.
pub struct TestVault {
    pub handle: VaultHandle,
    pub admin: Client,
    pub admin_token: String,
    /// Keeps the temporary data directory alive (None when the caller owns the directory).
    pub dir: Option<tempfile::TempDir>,
    pub data_dir: PathBuf,
}

impl TestVault {
    pub fn url(&self) -> &str {
        &self.handle.url
    }
    pub fn ca(&self) -> &str {
        &self.handle.ca_pem
    }
    pub fn client(&self, token: Option<&str>) -> Client {
        client(&self.handle.url, &self.handle.ca_pem, token)
    }
    pub fn store(&self) -> &ferry_store::Store {
        &self.handle.state.store
    }
}

pub fn client(url: &str, ca: &str, token: Option<&str>) -> Client {
    let mut b = Client::builder(url).ca(ca).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        b = b.token(t);
    }
    b.build().expect("client")
}

pub fn config(dir: &Path) -> VaultConfig {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    VaultConfig::new(dir.to_path_buf(), listen)
}

/// Start a vault in a fresh temporary directory.
pub async fn start_vault() -> TestVault {
    start_vault_with(|_| {}).await
}

pub async fn start_vault_with(tune: impl FnOnce(&mut VaultConfig)) -> TestVault {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tv = start_vault_in(dir.path(), tune).await;
    tv.dir = Some(dir);
    tv
}

/// Start a vault on `data_dir` (first start or restart; the admin token is read from its file).
pub async fn start_vault_in(data_dir: &Path, tune: impl FnOnce(&mut VaultConfig)) -> TestVault {
    let mut cfg = config(data_dir);
    tune(&mut cfg);
    let handle = ferry_vault::start(cfg).await.expect("vault starts");
    let admin_token = match &handle.new_admin_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(data_dir.join(ferry_vault::server::ADMIN_TOKEN_FILE)).expect("admin token"),
    };
    let admin = client(&handle.url, &handle.ca_pem, Some(&admin_token));
    TestVault { handle, admin, admin_token, dir: None, data_dir: data_dir.to_path_buf() }
}

pub fn err(e: ferry_client::Error) -> (u16, String) {
    match e {
        ferry_client::Error::Api { status, api } => (status, api.code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The (status, code) of a call that must fail.
pub fn expect_err<T: std::fmt::Debug>(r: ferry_client::Result<T>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => err(e),
    }
}

pub async fn create_vault(admin: &Client, name: &str) -> Vault {
    admin
        .post("/api/v1/vaults", &serde_json::json!({"name": name, "description": "test", "region": "lab"}))
        .await
        .expect("create vault")
}

pub async fn issue_key(admin: &Client, vault: &str) -> IssuedKey {
    admin.post(&format!("/api/v1/vaults/{vault}/registrationKeys"), &serde_json::json!({})).await.expect("issue key")
}

/// A key that adds another instance of registered site `site` (FAB-8).
pub async fn issue_key_for(admin: &Client, vault: &str, site: &str) -> IssuedKey {
    admin
        .post(&format!("/api/v1/vaults/{vault}/registrationKeys"), &serde_json::json!({"site": site}))
        .await
        .expect("issue key")
}

/// A site as a test drives it.
#[derive(Clone)]
pub struct FakeSite {
    pub name: String,
    pub vault_name: String,
    pub fabric_id: Uuid,
    pub provider_id: Uuid,
    pub token: String,
    pub client: Client,
    pub inventory: SiteInventory,
}

impl FakeSite {
    pub async fn report(&self) -> SiteReportAck {
        self.report_inv(&self.inventory).await
    }

    pub async fn report_inv(&self, inv: &SiteInventory) -> SiteReportAck {
        // JSON rather than the struct, so fields added later (with defaults) need no change here.
        let rep = serde_json::json!({"provider_id": self.provider_id, "version": SITE_VERSION, "inventory": inv});
        self.client.post("/api/v1/agent/report", &rep).await.expect("site report")
    }

    pub async fn pending(&self, wait: u64) -> Vec<SiteCommandEnvelope> {
        self.client.get(&format!("/api/v1/agent/commands?wait={wait}")).await.expect("fetch commands")
    }

    pub async fn answer(&self, id: Uuid, ok: bool) {
        let res = CommandResult { ok, error: None, output: serde_json::Value::Null };
        let _: serde_json::Value =
            self.client.post(&format!("/api/v1/agent/commands/{id}/result"), &res).await.expect("post result");
    }

    /// A cloud reference of this site.
    pub fn cloud(&self, id: &str) -> serde_json::Value {
        serde_json::json!({"fabric": self.fabric_id, "id": id})
    }

    /// Answer every command OK, forever; returns the ids seen (in order).
    pub fn spawn_loop(&self) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<SiteCommandEnvelope>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let site = self.clone();
        let h = tokio::spawn(async move {
            loop {
                let cmds: Vec<SiteCommandEnvelope> = match site.client.get("/api/v1/agent/commands?wait=1").await {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                for c in cmds {
                    let id = c.id;
                    s2.lock().expect("lock").push(c);
                    let res = CommandResult { ok: true, error: None, output: serde_json::Value::Null };
                    let _ = site
                        .client
                        .post::<_, serde_json::Value>(&format!("/api/v1/agent/commands/{id}/result"), &res)
                        .await;
                }
            }
        });
        (h, seen)
    }
}

/// The register request a site sends.
pub fn register_request(
    key_file: &str,
    vault_name: &str,
    friendly: &str,
    server: &str,
    version: &str,
    sync_all: bool,
    clouds: &[Cloud],
) -> RegisterRequest {
    let (_key, csr) = ferry_pki::generate_key_and_csr(server).expect("csr");
    RegisterRequest {
        key: key_file.to_string(),
        vault_name: vault_name.to_string(),
        friendly_name: friendly.to_string(),
        server_name: server.to_string(),
        version: version.to_string(),
        sync_all_clouds: sync_all,
        proxy_address: None,
        csr_pem: csr,
        clouds: clouds.iter().map(|c| CloudName { id: c.id.clone(), name: c.name.clone() }).collect(),
    }
}

/// POST a register request without credentials (the key authenticates it).
pub async fn register_raw(tv: &TestVault, req: &RegisterRequest) -> ferry_client::Result<RegisterResponse> {
    tv.client(None).post("/api/v1/agent/register", req).await
}

/// Issue a key and register a site named `name` (inventory from [`inventory`]), then report its
/// inventory once.
pub async fn register_site(tv: &TestVault, vault_name: &str, name: &str, sync_all: bool) -> FakeSite {
    let inv = inventory(name);
    let key = issue_key(&tv.admin, vault_name).await;
    let req =
        register_request(&key.file, vault_name, name, &format!("{name}.lab"), SITE_VERSION, sync_all, &inv.clouds);
    let resp = register_raw(tv, &req).await.expect("register");
    let site = FakeSite {
        name: name.to_string(),
        vault_name: vault_name.to_string(),
        fabric_id: resp.fabric_id,
        provider_id: resp.provider_id,
        client: tv.client(Some(&resp.site_token)),
        token: resp.site_token,
        inventory: inv,
    };
    site.report().await;
    site
}

/// Ids of a site's objects: `<site>-<what>`.
pub fn id(site: &str, what: &str) -> String {
    format!("{site}-{what}")
}

/// A small seed-like inventory: clouds `gold` and `silver`, one host group and one host each,
/// one VM per host, a logical network, a VM network with a subnet and a static pool, storage
/// classifications GOLD and SILVER with locations on the hosts.
pub fn inventory(site: &str) -> SiteInventory {
    let i = |w: &str| id(site, w);
    let host = |h: &str, hg: &str, class: &str| Host {
        id: i(h),
        name: format!("{site}-{h}.lab"),
        host_group: i(hg),
        address: format!("127.0.0.1:{}", 9000 + h.len()),
        agent_version: AGENT.into(),
        qemu_version: QEMU.into(),
        logical_networks: vec![i("ln1")],
        storage_locations: vec![StorageLocation {
            path: format!("/var/lib/ferry/{site}/{h}"),
            classification: Some(i(class)),
            free_bytes: 500 << 30,
            total_bytes: 1 << 40,
            default_replica: true,
            shared: false,
        }],
        connected: true,
        replication_address: String::new(),
        replication_addresses: Vec::new(),
    };
    let vm = |v: &str, h: &str, cloud: &str| Vm {
        id: i(v),
        name: format!("{site}-{v}"),
        host: i(h),
        cloud: Some(i(cloud)),
        power_state: PowerState::Running,
        disks: vec![VmDisk {
            target: "vda".into(),
            format: DiskFormat::Qcow2,
            path: format!("/var/lib/ferry/{site}/{h}/{v}.qcow2"),
            virtual_size: 1 << 30,
            classification: None,
            excluded: false,
            encrypted: false,
        }],
        nics: vec![VmNic {
            mac: "52:54:00:00:00:01".into(),
            vm_network: Some(i("vmnet1")),
            subnet: Some("sub1".into()),
            ip: Some("10.1.0.10".into()),
        }],
        guest_agent: true,
    };
    SiteInventory {
        clouds: vec![
            Cloud {
                id: i("gold"),
                name: format!("GoldCloud-{site}"),
                host_groups: vec![i("hg-gold")],
                sync_enabled: false,
            },
            Cloud {
                id: i("silver"),
                name: format!("SilverCloud-{site}"),
                host_groups: vec![i("hg-silver")],
                sync_enabled: false,
            },
        ],
        host_groups: vec![
            HostGroup { id: i("hg-gold"), name: "HG-Gold".into(), storage_classifications: vec![i("GOLD")] },
            HostGroup { id: i("hg-silver"), name: "HG-Silver".into(), storage_classifications: vec![i("SILVER")] },
        ],
        hosts: vec![host("h1", "hg-gold", "GOLD"), host("h2", "hg-silver", "SILVER")],
        logical_networks: vec![LogicalNetwork {
            id: i("ln1"),
            name: "LogicalNetwork1".into(),
            host_groups: vec![i("hg-gold"), i("hg-silver")],
        }],
        vm_networks: vec![VmNetwork {
            id: i("vmnet1"),
            name: format!("VMNetwork1-{site}"),
            logical_network: i("ln1"),
            subnets: vec![Subnet {
                name: "sub1".into(),
                cidr: "10.1.0.0/24".into(),
                gateway: Some("10.1.0.1".into()),
                pools: vec![IpPool { name: "pool1".into(), start: "10.1.0.10".into(), end: "10.1.0.99".into() }],
            }],
        }],
        storage_classifications: vec![
            StorageClassification { id: i("GOLD"), name: "GOLD".into(), kind: "local".into() },
            StorageClassification { id: i("SILVER"), name: "SILVER".into(), kind: "local".into() },
        ],
        vms: vec![vm("vm1", "h1", "gold"), vm("vm2", "h2", "silver")],
    }
}

/// A valid policy spec for the inventory above.
pub fn policy_spec(name: &str) -> PolicySpec {
    PolicySpec {
        name: name.to_string(),
        host_version: "qemu-7.2".into(),
        authentication: Authentication::Certificate,
        port: None,
        copy_frequency_secs: 300,
        recovery_point_retention_hours: 4,
        app_consistent_frequency_hours: Some(2),
        compression: true,
        delete_replica_on_disable: false,
        initial_replication: InitialReplication::OverNetworkNow,
    }
}

pub fn policy_json(name: &str) -> serde_json::Value {
    serde_json::to_value(policy_spec(name)).expect("json")
}

pub async fn get_job(c: &Client, vault: &str, job: Uuid) -> Job {
    c.get(&format!("/api/v1/vaults/{vault}/replicationJobs/{job}")).await.expect("get job")
}

/// Poll a job until `done` holds (panics after `secs`).
pub async fn wait_job(c: &Client, vault: &str, job: Uuid, secs: u64, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let j = get_job(c, vault, job).await;
        if done(&j) {
            return j;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("job {job} did not reach the expected state in {secs} s: {j:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_status(c: &Client, vault: &str, job: Uuid, status: JobStatus, secs: u64) -> Job {
    wait_job(c, vault, job, secs, |j| j.status == status).await
}

/// Every job of a vault (following cursors).
pub async fn all_jobs(c: &Client, vault: &str, query: &str) -> Vec<Job> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("/api/v1/vaults/{vault}/replicationJobs?{query}");
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let page: Page<Job> = c.get(&url).await.expect("list jobs");
        out.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
}

/// Counts of the vault's resources, to assert that a refused request changed nothing.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Snapshot(pub HashMap<&'static str, usize>);

pub async fn snapshot(c: &Client, vault: &str) -> Snapshot {
    let mut m = HashMap::new();
    let vaults: Vec<serde_json::Value> = c.get("/api/v1/vaults").await.expect("vaults");
    m.insert("vaults", vaults.len());
    let f: Vec<serde_json::Value> =
        c.get(&format!("/api/v1/vaults/{vault}/replicationFabrics")).await.expect("fabrics");
    m.insert("fabrics", f.len());
    let p: Vec<serde_json::Value> =
        c.get(&format!("/api/v1/vaults/{vault}/replicationPolicies")).await.expect("policies");
    m.insert("policies", p.len());
    let cm: Vec<serde_json::Value> =
        c.get(&format!("/api/v1/vaults/{vault}/replicationProtectionContainerMappings")).await.expect("pairs");
    m.insert("pairs", cm.len());
    let nm: Vec<serde_json::Value> =
        c.get(&format!("/api/v1/vaults/{vault}/replicationNetworkMappings")).await.expect("net maps");
    m.insert("network_mappings", nm.len());
    m.insert("jobs", all_jobs(c, vault, "limit=1000").await.len());
    let keys: Vec<serde_json::Value> = c.get(&format!("/api/v1/vaults/{vault}/registrationKeys")).await.expect("keys");
    m.insert("keys", keys.len());
    m.insert("keys_used", keys.iter().filter(|k| !k["used_at"].is_null()).count());
    let tokens: Vec<serde_json::Value> = c.get("/api/v1/tokens").await.expect("tokens");
    m.insert("tokens", tokens.len());
    Snapshot(m)
}

/// Create an API token with a role; returns its secret and id.
pub async fn make_token(admin: &Client, name: &str, role: &str) -> (String, Uuid) {
    let t: serde_json::Value =
        admin.post("/api/v1/tokens", &serde_json::json!({"name": name, "role": role})).await.expect("token");
    (
        t["secret"].as_str().expect("secret").to_string(),
        Uuid::parse_str(t["info"]["id"].as_str().expect("id")).expect("uuid"),
    )
}

/// Two registered sites `ny` and `chi` of vault `name`, all clouds synced.
pub async fn two_sites(tv: &TestVault, name: &str) -> (FakeSite, FakeSite) {
    create_vault(&tv.admin, name).await;
    let ny = register_site(tv, name, "ny", true).await;
    let chi = register_site(tv, name, "chi", true).await;
    (ny, chi)
}

/// Create a policy associated with ny gold -> chi gold; returns (policy id, pair job id).
pub async fn policy_with_pair(tv: &TestVault, vault: &str, name: &str, ny: &FakeSite, chi: &FakeSite) -> (Uuid, Uuid) {
    let mut body = policy_json(name);
    body["associate"] = serde_json::json!([{"source": ny.cloud("ny-gold"), "target": chi.cloud("chi-gold")}]);
    let created: serde_json::Value =
        tv.admin.post(&format!("/api/v1/vaults/{vault}/replicationPolicies"), &body).await.expect("policy");
    let pid = Uuid::parse_str(created["policy"]["id"].as_str().expect("id")).expect("uuid");
    let jid = Uuid::parse_str(created["pairs"][0]["job"]["id"].as_str().expect("job")).expect("uuid");
    (pid, jid)
}

/// A raw request with extra headers (If-Match), answering (status, JSON body).
pub async fn raw_request(
    tv: &TestVault,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> (u16, serde_json::Value) {
    let cfg = ferry_pki::client_config(tv.ca(), None).expect("tls config");
    let http = reqwest::Client::builder().use_preconfigured_tls((*cfg).clone()).no_proxy().build().expect("http");
    let mut rb = http.request(method, format!("{}{path}", tv.url()));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some((ct, b)) = body {
        rb = rb.header("content-type", ct).body(b);
    }
    let resp = rb.send().await.expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}
