//! VM lifecycle through vault → site → host with real QEMU (HOST-1, HOST-3, HOST-4).

mod common;

use std::time::Duration;

use common::{kill9, Lab, LabOptions};
use serde_json::{json, Value};

fn vm_action_error(lab: &Lab, def: &Value, name: &str) -> String {
    let path = lab.vm_def(name, def);
    let (code, out, err) =
        lab.cli(&["vm-create", "--site", "VMM-NewYork", "--host", "ny1", "--file", &path.display().to_string()]);
    assert_ne!(code, 0, "definition {name} must be refused: {out}");
    assert_eq!(code, 6, "a refused definition fails its job: {err}");
    err
}

fn vms(lab: &Lab) -> Value {
    lab.json(&["vm-list", "--site", "VMM-NewYork", "--host", "ny1"])
}

#[test]
fn host_1_sec_3_invalid_definitions_are_refused_and_create_nothing() {
    let lab = Lab::start(LabOptions::default());
    let gold = lab.storage("ny1", "gold");
    let ok_disk = gold.join("ok-vda.qcow2");
    let good = json!({"name": "dup", "disks": [{"target": "vda", "path": ok_disk, "format": "qcow2", "create_size": 8u64 << 20}]});
    lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def("dup", &good).display().to_string(),
    ]);

    let err = vm_action_error(
        &lab,
        &json!({"name": "m1", "disks": [{"target": "vda", "path": gold.join("missing.qcow2"), "format": "qcow2"}]}),
        "m1",
    );
    assert!(err.contains("does not exist"), "{err}");
    let err = vm_action_error(
        &lab,
        &json!({"name": "m2", "disks": [{"target": "vda", "path": gold.join("m2.qcow2"), "format": "qcow2", "create_size": 1048576}], "nics": [{"vm_network": "NoSuchNetwork"}]}),
        "m2",
    );
    assert!(err.contains("UnknownNetwork"), "{err}");
    let err = vm_action_error(&lab, &good, "dup-again");
    assert!(err.contains("VmAlreadyExists"), "{err}");
    let outside = lab.tmp.path().join("outside.qcow2");
    let err = vm_action_error(
        &lab,
        &json!({"name": "m3", "disks": [{"target": "vda", "path": outside, "format": "qcow2", "create_size": 1048576}]}),
        "m3",
    );
    assert!(err.contains("outside this host's storage locations"), "{err}");
    let err = vm_action_error(
        &lab,
        &json!({"name": "m4", "disks": [
            {"target": "vda", "path": gold.join("m4a.qcow2"), "format": "qcow2", "create_size": 1048576},
            {"target": "vda", "path": gold.join("m4b.qcow2"), "format": "qcow2", "create_size": 1048576}]}),
        "m4",
    );
    assert!(err.contains("used twice"), "{err}");
    // SEC-3: a kernel from anywhere on the host, or a NIC on any host interface, is refused.
    let err = vm_action_error(
        &lab,
        &json!({"name": "m5", "disks": [{"target": "vda", "path": gold.join("m5.qcow2"), "format": "qcow2", "create_size": 1048576}],
                "kernel_boot": {"kernel": "/etc/hostname", "append": "console=ttyS0"}}),
        "m5",
    );
    assert!(err.contains("kernel /etc/hostname is outside"), "{err}");
    let escape = gold.join("escape-kernel");
    std::os::unix::fs::symlink("/etc/hostname", &escape).expect("symlink");
    let err = vm_action_error(
        &lab,
        &json!({"name": "m6", "disks": [{"target": "vda", "path": gold.join("m6.qcow2"), "format": "qcow2", "create_size": 1048576}],
                "kernel_boot": {"kernel": escape, "append": "console=ttyS0"}}),
        "m6",
    );
    assert!(err.contains("is outside"), "a link out of the storage location is followed: {err}");
    let err = vm_action_error(
        &lab,
        &json!({"name": "m7", "disks": [{"target": "vda", "path": gold.join("m7.qcow2"), "format": "qcow2", "create_size": 1048576}],
                "nics": [{"bridge": "lo"}]}),
        "m7",
    );
    assert!(err.contains("bridge lo is not one of this host's bridges"), "{err}");

    // Nothing was created by the refused definitions.
    let listed: Vec<String> =
        vms(&lab).as_array().into_iter().flatten().filter_map(|v| v["name"].as_str().map(str::to_string)).collect();
    assert_eq!(listed, vec!["dup".to_string()]);
    for f in ["m2.qcow2", "m4a.qcow2", "m4b.qcow2", "m5.qcow2", "m6.qcow2", "m7.qcow2"] {
        assert!(!gold.join(f).exists(), "{f} must not be created");
    }
    assert!(!outside.exists());
    for vm in ["m1", "m2", "m3", "m4", "m5", "m6", "m7"] {
        assert!(!lab.host_data("ny1").join("vms").join(vm).exists());
    }
}

#[test]
fn host_1_vm_lifecycle_with_nic_on_bridge_and_host_3_reattach_and_crash_report() {
    let lab = Lab::start(LabOptions::default());
    let disk = lab.storage("ny1", "gold").join("life-vda.qcow2");
    let data = lab.storage("ny1", "silver").join("life-vdb.raw");
    let def = json!({
        "name": "life", "vcpus": 1, "memory_mib": 128,
        "disks": [
            {"target": "vda", "path": disk, "format": "qcow2", "create_size": 32u64 << 20},
            {"target": "vdb", "path": data, "format": "raw", "create_size": 8u64 << 20}
        ],
        "nics": [{"vm_network": "VMNetwork1-NewYork", "subnet": "Subnet1", "ip": "10.11.0.20"}, {}]
    });
    let created = lab.json(&[
        "vm-create",
        "--site",
        "VMM-NewYork",
        "--host",
        "ny1",
        "--file",
        &lab.vm_def("life", &def).display().to_string(),
    ]);
    assert_eq!(created["power_state"], "Stopped");
    assert!(disk.exists() && data.exists());
    let started = lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "life"]);
    assert_eq!(started["power_state"], "Running", "{started}");
    let pid = started["pid"].as_u64().expect("pid") as u32;
    // HOST-4: the connected NIC is a tap on the logical network's bridge; the second NIC has none.
    let bridge = format!("{}ny-ln1", lab.bridge_prefix);
    let out = std::process::Command::new("ip").args(["-o", "link", "show", "master", &bridge]).output().expect("ip");
    let taps = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(taps.lines().count(), 1, "one tap on {bridge}: {taps}");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("qemu runs").replace('\0', " ");
    assert!(cmdline.contains("node-name=vda") && cmdline.contains("discard=unmap"), "{cmdline}");
    assert!(cmdline.contains("driver=raw"), "raw disks are supported: {cmdline}");

    // HOST-3: the agent is killed and restarted; the VM keeps running and is re-attached.
    kill9(lab.pid("host-ny1"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "QEMU survives the agent");
    let _agent = lab.restart_host("ny1");
    let st = lab.wait_for("the restarted agent to report the VM", Duration::from_secs(30), || {
        let (code, out, _) = lab.cli(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "life", "-o", "json"]);
        (code == 0).then(|| serde_json::from_str::<Value>(&out).ok()).flatten()
    });
    assert_eq!(st["power_state"], "Running");
    assert_eq!(st["pid"].as_u64(), Some(pid as u64), "same QEMU process, re-attached");

    // HOST-3: a QEMU killed behind the agent's back is reported as crashed, with the reason.
    kill9(pid);
    let st = lab.wait_for("the crash to be reported", Duration::from_secs(20), || {
        let v = lab.json(&["vm-show", "--site", "VMM-NewYork", "--host", "ny1", "life"]);
        (v["power_state"] == "Crashed").then_some(v)
    });
    assert!(
        st["reason"]
            .as_str()
            .is_some_and(|r| r.contains("SIGKILL") || r.contains("killed") || r.contains("disappeared")),
        "{st}"
    );

    // Start again, graceful shutdown (no guest OS: ACPI is ignored, so it is stopped after the
    // timeout), delete with disks.
    let again = lab.json(&["vm-start", "--site", "VMM-NewYork", "--host", "ny1", "life"]);
    assert_eq!(again["power_state"], "Running");
    let st = lab.json(&["vm-shutdown", "--site", "VMM-NewYork", "--host", "ny1", "life", "--timeout", "2"]);
    assert_ne!(st["power_state"], "Running", "{st}");
    let out = std::process::Command::new("ip").args(["-o", "link", "show", "master", &bridge]).output().expect("ip");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 0, "taps removed when the VM stops");
    lab.json(&["vm-delete", "--site", "VMM-NewYork", "--host", "ny1", "life", "--delete-disks"]);
    assert!(!disk.exists() && !data.exists());
    assert_eq!(vms(&lab), json!([]));
}

/// POST a host join to site New York's host endpoint; the HTTP status and the answer.
fn join_newyork(lab: &Lab, host_name: &str, token: &str, csr_pem: &str) -> (u16, Value) {
    let site = lab.dir.join("sites/newyork/data");
    let endpoint = std::fs::read_to_string(site.join("host-endpoint")).expect("site endpoint");
    let ca = std::fs::read_to_string(lab.dir.join("vault/ca-cert.pem")).expect("vault CA");
    let req = json!({"host_name": host_name, "join_token": token, "csr_pem": csr_pem, "address": "127.0.0.1:9"});
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = ferry_client::Client::builder(format!("https://{}", endpoint.trim()))
            .ca(ca)
            .peer_name(ferry_pki::PeerName::Prefix("site-".into()))
            .build()
            .expect("client");
        match client.post::<_, Value>("/v1/join", &req).await {
            Ok(v) => (200, v),
            Err(ferry_client::Error::Api { api, status }) => (status, serde_json::to_value(api).expect("error json")),
            Err(e) => panic!("join request failed: {e}"),
        }
    })
}

/// Open a replication session to chi1's receiver with the identity in `tls` (a host's
/// certificate and key); the receiver's refusal, if any.
fn replicate_to_chi1_with(lab: &Lab, tls: &std::path::Path) -> Option<String> {
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("identity file");
    let chi1_cert = std::fs::read_to_string(lab.host_data("chi1").join("tls/cert.pem")).expect("chi1 certificate");
    let chi1_cn = ferry_pki::cert_common_name(&chi1_cert).expect("chi1's name");
    let config =
        ferry_pki::named_peer_client_config(&read("ca-cert.pem"), &read("cert.pem"), &read("key.pem"), &chi1_cn)
            .expect("client config");
    let peer = ferry_repl::send::Peer {
        addr: lab.replication_address("chi1").parse().expect("chi1 address"),
        server_name: "localhost".into(),
        tls: config,
        vm_id: "any-vm".into(),
        pair_id: "any-pair".into(),
        direction: ferry_repl::protocol::Direction::Forward,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(ferry_repl::send::Session::open(&peer, Duration::from_secs(10))).err().map(|e| e.to_string())
}

fn newyork_host(lab: &Lab, name: &str) -> Value {
    let state: Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("sites/newyork/data/state.json")).expect("site state"))
            .expect("state json");
    state["hosts"].as_array().expect("hosts").iter().find(|h| h["name"] == name).cloned().expect("host entry")
}

/// SEC-1 (review finding): a host joins with a token issued for that host only, once; a used
/// token, a token of another host or no token cannot take over a joined host's name, address,
/// token or certificate; the operator issues a new token for a host that must join again, and
/// the host's name is bound to the key it joined with.
#[test]
fn sec_1_a_host_joins_once_with_its_own_token_and_cannot_take_over_another() {
    // With SGL-1's second New York host, ny2.
    let lab = Lab::start(LabOptions { sgl: true, ..Default::default() });
    let tokens = lab.dir.join("sites/newyork/data/join-tokens");
    for h in ["ny1", "ny2"] {
        assert!(!tokens.join(h).exists(), "{h}'s join token is used up by its join");
    }
    let used = std::fs::read_to_string(lab.host_data("ny1").parent().expect("host dir").join("join-token"))
        .expect("ny1's copy of its token");
    let before = newyork_host(&lab, "ny1");
    let (_, csr) = ferry_pki::generate_key_and_csr("host-ny1").expect("csr");
    // ny1's certificate is valid; chi1 refuses it only because ny1 replicates nothing to it.
    let old_identity = lab.tmp.path().join("ny1-old-tls");
    std::fs::create_dir_all(&old_identity).expect("dir");
    for f in ["ca-cert.pem", "cert.pem", "key.pem"] {
        std::fs::copy(lab.host_data("ny1").join("tls").join(f), old_identity.join(f)).expect("copy identity");
    }
    let refused = replicate_to_chi1_with(&lab, &old_identity).expect("nothing granted to ny1");
    assert!(refused.contains("not authorised") && !refused.contains("revoked"), "{refused}");

    // The token ny1 joined with opens nothing any more.
    let (status, err) = join_newyork(&lab, "ny1", &used, &csr);
    assert_eq!((status, err["code"].as_str()), (401, Some("InvalidJoinToken")), "{err}");
    assert!(err["message"].as_str().unwrap_or("").contains("ferry site join-token --host ny1"), "{err}");

    // The operator issues a new token for ny1 (a reinstalled server).
    let site_args = |host: &str| {
        std::process::Command::new(common::ferry_bin())
            .args(["site", "join-token", "--config"])
            .arg(lab.dir.join("sites/newyork/site.toml"))
            .arg("--data-dir")
            .arg(lab.dir.join("sites/newyork/data"))
            .args(["--host", host])
            .output()
            .expect("ferry site join-token")
    };
    let out = site_args("ny9");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in this site's definition"), "{out:?}");
    let out = site_args("ny1");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&tokens.join("ny1").display().to_string()), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(tokens.join("ny1")).expect("issued token");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let fresh = std::fs::read_to_string(tokens.join("ny1")).expect("token");

    // It opens ny1 only, and a request that proves no key uses nothing up.
    let (status, err) = join_newyork(&lab, "ny2", &fresh, &csr);
    assert_eq!((status, err["code"].as_str()), (401, Some("InvalidJoinToken")), "another host's token: {err}");
    let (status, err) = join_newyork(&lab, "ny9", &fresh, &csr);
    assert_eq!((status, err["code"].as_str()), (404, Some("UnknownHost")), "{err}");
    let (status, err) = join_newyork(
        &lab,
        "ny1",
        &fresh,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    );
    assert_eq!((status, err["code"].as_str()), (400, Some("InvalidCertificateRequest")), "{err}");
    assert!(tokens.join("ny1").exists(), "a refused join leaves the token open");
    assert_eq!(newyork_host(&lab, "ny1"), before, "refused joins changed nothing of ny1");

    // The right host with its token joins once, bound to its key.
    let (status, ok) = join_newyork(&lab, "ny1", &fresh, &csr);
    assert_eq!(status, 200, "{ok}");
    assert!(ok["certificate_pem"].as_str().unwrap_or("").contains("BEGIN CERTIFICATE"), "{ok}");
    assert!(!tokens.join("ny1").exists(), "used up");
    let after = newyork_host(&lab, "ny1");
    assert_eq!(after["key_sha256"].as_str(), Some(ferry_pki::csr_key_fingerprint(&csr).expect("fp").as_str()));
    assert_eq!(after["address"], "127.0.0.1:9");
    let (status, err) = join_newyork(&lab, "ny1", &fresh, &csr);
    assert_eq!((status, err["code"].as_str()), (401, Some("InvalidJoinToken")), "a token opens once: {err}");
    // The certificate ny1 had before is revoked: the vault hands it to every site, and the
    // hosts of the other site refuse it from their next report on.
    lab.wait_for("chi1 refusing ny1's old certificate as revoked", Duration::from_secs(30), || {
        replicate_to_chi1_with(&lab, &old_identity).filter(|e| e.contains("revoked"))
    });
    assert_ne!(newyork_host(&lab, "ny2")["address"], "127.0.0.1:9", "ny2 untouched");
}

/// The `host certificate renewed` lines in host `host`'s log since its restart.
fn renewals(lab: &Lab, host: &str) -> usize {
    std::fs::read_to_string(lab.dir.join("logs").join(format!("host-{host}-restarted.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("host certificate renewed"))
        .count()
}

/// SEC-3: host certificates are renewed by the running agents (a new key, signed through the
/// site, stored and presented from the next handshake) without a restart and without a lost
/// cycle, at both ends of a replication; the certificate before is revoked, so a replica host
/// refuses it from then on.
#[test]
fn sec_3_host_certificates_renew_in_running_agents_without_a_lost_cycle() {
    let lab = Lab::start(LabOptions { test_copy_interval_ms: Some(1500), ..Default::default() });
    let serial = common::guest_vm(&lab, "rn1", 16, None);
    common::pair_gold(&lab, &["--name", "gold", "--copy-frequency", "30"]);
    let id = common::protect(&lab, "rn1");
    common::wait_records_and_points(&lab, &id, &serial, 4, 2);
    let first_identity = lab.tmp.path().join("ny1-first-tls");
    std::fs::create_dir_all(&first_identity).expect("dir");
    for f in ["ca-cert.pem", "cert.pem", "key.pem"] {
        std::fs::copy(lab.host_data("ny1").join("tls").join(f), first_identity.join(f)).expect("copy identity");
    }

    // With 400 days' notice a one-year certificate is always due: both agents renew every few
    // seconds once restarted with that setting (before any table of the file).
    let mut agents = Vec::new();
    for h in ["chi1", "ny1"] {
        let cfg = lab.dir.join("hosts").join(h).join("host.toml");
        let toml = std::fs::read_to_string(&cfg).expect("host.toml");
        std::fs::write(&cfg, format!("renew_days_before_expiry = 400\nrenew_check_secs = 4\n{toml}")).expect("write");
        lab.pin_replication_address(h);
        kill9(lab.pid(&format!("host-{h}")));
        agents.push(lab.restart_host(h));
    }
    let pids: Vec<u32> = agents.iter().map(|a| a.0.id()).collect();
    let points = |lab: &Lab| lab.json(&["item-show", &id])["recovery_points"].as_array().map_or(0, Vec::len);
    lab.wait_for("a first renewal on both hosts and a point after it", Duration::from_secs(120), || {
        (renewals(&lab, "ny1") >= 1 && renewals(&lab, "chi1") >= 1).then_some(())
    });
    let after_first = points(&lab);
    lab.wait_for("a point after the first renewals", Duration::from_secs(60), || {
        (points(&lab) > after_first).then_some(())
    });
    let before = lab.json(&["item-show", &id]);
    let (missed, ok, n0) = (
        before["stats"]["cycles_missed"].as_u64().unwrap_or(0),
        before["stats"]["cycles_ok"].as_u64().unwrap_or(0),
        (renewals(&lab, "ny1"), renewals(&lab, "chi1")),
    );
    lab.wait_for("three more renewals on each host", Duration::from_secs(120), || {
        (renewals(&lab, "ny1") >= n0.0 + 3 && renewals(&lab, "chi1") >= n0.1 + 3).then_some(())
    });
    let after = lab.json(&["item-show", &id]);
    assert!(after["stats"]["cycles_ok"].as_u64().unwrap_or(0) >= ok + 3, "cycles went on: {after}");
    assert_eq!(after["stats"]["cycles_missed"].as_u64().unwrap_or(0), missed, "no cycle failed: {after}");
    assert!(after["stats"]["last_error"].is_null(), "{after}");
    for (agent, pid) in agents.iter_mut().zip(&pids) {
        assert!(agent.0.try_wait().expect("wait").is_none(), "agent {pid} renewed without a restart");
    }
    let log = std::fs::read_to_string(lab.dir.join("logs/host-ny1-restarted.log")).expect("log");
    assert_eq!(log.matches("host agent running").count(), 1, "one start of the agent");
    // The first certificate of ny1 is revoked: the replica host refuses it.
    lab.wait_for("chi1 refusing ny1's first certificate", Duration::from_secs(30), || {
        replicate_to_chi1_with(&lab, &first_identity).filter(|e| e.contains("revoked"))
    });
    common::wait_records_and_points(&lab, &id, &serial, common::last_record(&serial) + 2, points(&lab) + 1);
}

/// SEC-3: an operator rotates a host's certificate now (`ferry host-renew-certificate`): the
/// vault revokes it at once, the running agent renews it with a new key through its site
/// without a restart (its own certificate listed as revoked), and the replica hosts refuse the
/// old one. An unknown host is refused and nothing changes.
#[test]
fn sec_3_an_operator_rotates_a_host_certificate_now_and_the_old_one_is_refused() {
    let lab = Lab::start(LabOptions::default());
    let old_identity = lab.tmp.path().join("ny1-old-tls");
    std::fs::create_dir_all(&old_identity).expect("dir");
    for f in ["ca-cert.pem", "cert.pem", "key.pem"] {
        std::fs::copy(lab.host_data("ny1").join("tls").join(f), old_identity.join(f)).expect("copy identity");
    }
    let fingerprint = |dir: &std::path::Path| {
        ferry_pki::fingerprint_of_pem(&std::fs::read_to_string(dir.join("cert.pem")).expect("cert")).expect("fp")
    };
    let old = fingerprint(&old_identity);
    let agent = lab.pid("host-ny1");

    let (code, out, err) = lab.cli(&["host-renew-certificate", "--site", "VMM-NewYork", "no-such-host"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("NotFound"), "{err}");
    assert!(replicate_to_chi1_with(&lab, &old_identity).is_none_or(|e| !e.contains("revoked")), "nothing revoked");

    let r = lab.json(&["host-renew-certificate", "--site", "VMM-NewYork", "ny1"]);
    assert_eq!(r["revoked_sha256"].as_str(), Some(old.as_str()), "{r}");
    lab.wait_for("ny1 to renew its revoked certificate", Duration::from_secs(90), || {
        (fingerprint(&lab.host_data("ny1").join("tls")) != old).then_some(())
    });
    assert_eq!(lab.pid("host-ny1"), agent, "renewed in the running agent");
    lab.wait_for("chi1 refusing ny1's old certificate as revoked", Duration::from_secs(30), || {
        replicate_to_chi1_with(&lab, &old_identity).filter(|e| e.contains("revoked"))
    });
    lab.wait_for("ny1 connected with its new certificate", Duration::from_secs(60), || {
        let hosts = lab.json(&["host-list", "--site", "VMM-NewYork"]);
        hosts.as_array()?.iter().any(|h| h["name"] == "ny1" && h["connected"] == true).then_some(())
    });
    let ev = lab.json(&["event-list", "--kind", "HostCertificateRevoked"]);
    assert!(ev["items"].as_array().is_some_and(|a| a.len() == 1), "one revocation, recorded: {ev}");
}
