//! Installing Ferry like real software: `scripts/package` builds the Debian packages (cargo-deb)
//! from this build; their contents, control fields, conffiles and maintainer scripts are
//! checked; the systemd units pass `systemd-analyze verify` and keep a low exposure score; the
//! packaged binary starts the vault from the packaged configuration and tells systemd it is
//! ready (sd_notify, as a `Type=notify` unit needs).
//!
//! Nothing is installed on this machine: the packages are unpacked into a temporary root.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name)).trim().to_string()
}

/// `systemd-analyze security` exposure of a unit (0 = locked down, 10 = unprotected).
fn exposure(root: &Path, unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    line.split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn fab_1_debian_packages_run_each_role_as_a_systemd_service() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("debs");
    // The packages hold the binary under test (the dev profile's, like CARGO_BIN_EXE_ferry).
    run(Command::new(repo().join("scripts/package")).args(["--profile", "dev", "--fast", "--out"]).arg(&out));
    let deb = |name: &str| -> PathBuf {
        std::fs::read_dir(&out)
            .expect("out")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(&format!("{name}_"))))
            .unwrap_or_else(|| panic!("no {name} package in {}", out.display()))
    };

    // Control fields.
    let version = env!("CARGO_PKG_VERSION");
    for name in ["ferry", "ferry-vault", "ferry-site", "ferry-host"] {
        assert_eq!(field(&deb(name), "Package"), name);
        assert!(field(&deb(name), "Version").starts_with(version));
    }
    assert!(field(&deb("ferry"), "Depends").contains("libc6"), "the binary's libraries");
    for role in ["ferry-vault", "ferry-site"] {
        let d = field(&deb(role), "Depends");
        assert!(d.contains("ferry (>=") && d.contains("adduser"), "{role}: {d}");
    }
    let d = field(&deb("ferry-host"), "Depends");
    assert!(d.contains("qemu-system-x86") && d.contains("qemu-utils"), "{d}");

    // Contents.
    let list = |name: &str| run(Command::new("dpkg-deb").arg("-c").arg(deb(name)));
    let ferry = list("ferry");
    for f in [
        "./usr/bin/ferry",
        "./usr/share/bash-completion/completions/ferry",
        "./usr/share/zsh/vendor-completions/_ferry",
        "./usr/share/fish/vendor_completions.d/ferry.fish",
        "./usr/share/ferry/grafana/ferry-dashboard.json",
        "./usr/share/doc/ferry/README.md",
    ] {
        assert!(ferry.contains(f), "ferry lacks {f}:\n{ferry}");
    }
    for role in ["vault", "site", "host"] {
        let name = format!("ferry-{role}");
        let files = list(&name);
        assert!(files.contains(&format!("systemd/system/{name}.service")), "{name}:\n{files}");
        assert!(files.contains(&format!("./etc/ferry/{role}.toml")), "{name}:\n{files}");
        assert!(!files.contains("usr/bin/ferry"), "one package owns the binary: {name}");
        let ctl = tmp.path().join(format!("control-{role}"));
        run(Command::new("dpkg-deb").arg("-e").arg(deb(&name)).arg(&ctl));
        let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap_or_default();
        assert!(conffiles.contains(&format!("/etc/ferry/{role}.toml")), "{name} conffiles: {conffiles}");
        let postinst = std::fs::read_to_string(ctl.join("postinst")).expect("postinst");
        run(Command::new("sh").arg("-n").arg(ctl.join("postinst")));
        assert!(postinst.contains("Next:"), "post-install prints the next step: {postinst}");
        assert!(postinst.contains("daemon-reload"), "units are loaded on install: {postinst}");
        assert!(!postinst.contains("deb-systemd-invoke start"), "not started before it is configured");
        if role != "host" {
            assert!(postinst.contains("adduser --system"), "{name} runs as its own user: {postinst}");
        }
    }

    // Unpack everything into a root with systemd's own units, verify the units there.
    let root = tmp.path().join("root");
    for name in ["ferry", "ferry-vault", "ferry-site", "ferry-host"] {
        run(Command::new("dpkg-deb").arg("-x").arg(deb(name)).arg(&root));
    }
    std::fs::create_dir_all(root.join("usr/lib/systemd")).expect("mkdir");
    run(Command::new("cp").arg("-r").arg("/usr/lib/systemd/system").arg(root.join("usr/lib/systemd/")));
    let unit_dir = ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("ferry-vault.service").exists())
        .expect("units unpacked");
    for role in ["vault", "site", "host"] {
        let unit = unit_dir.join(format!("ferry-{role}.service"));
        run(Command::new("systemd-analyze").arg("verify").arg(format!("--root={}", root.display())).arg(&unit));
        let text = std::fs::read_to_string(&unit).expect("unit");
        assert!(text.contains("Type=notify") && text.contains("Restart=on-failure"), "{text}");
    }
    let host_unit = std::fs::read_to_string(unit_dir.join("ferry-host.service")).expect("unit");
    assert!(host_unit.contains("\nKillMode=process\n"), "HOST-3: the agent's restart leaves its VMs running");
    assert!(exposure(&root, &unit_dir.join("ferry-vault.service")) <= 2.0, "the vault is locked down");
    assert!(exposure(&root, &unit_dir.join("ferry-site.service")) <= 2.5, "the site manager is locked down");
    assert!(exposure(&root, &unit_dir.join("ferry-host.service")) < 9.0, "the host agent is hardened");

    // The packaged site and host configurations are valid as they are shipped.
    let site = ferry_site::SiteConfig::load(&root.join("etc/ferry/site.toml")).expect("packaged site.toml");
    site.fabric().expect("the packaged site definition is consistent");
    ferry_host::HostConfig::load(&root.join("etc/ferry/host.toml")).expect("packaged host.toml");

    // The packaged binary runs the vault from the packaged configuration (its data directory
    // and addresses moved into the test's space) and notifies systemd when it serves.
    let bin = root.join("usr/bin/ferry");
    assert!(run(Command::new(&bin).arg("version").arg("--help")).contains("Usage"));
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let child = Command::new(&bin)
        .arg("vault")
        .arg("--config")
        .arg(root.join("etc/ferry/vault.toml"))
        .arg("--data-dir")
        .arg(tmp.path().join("vault"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("packaged vault starts");
    let _vault = common::ChildGuard(child);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("the vault notified systemd");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains("STATUS=Vault listening on https://127.0.0.1:"), "{msg}");
    // Ready means serving: the endpoint it wrote answers.
    let url = std::fs::read_to_string(tmp.path().join("vault/endpoint")).expect("endpoint");
    let port = url.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("port");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the vault accepts connections once ready");
    // And its metrics listener serves, as the packaged configuration turns it on.
    use std::io::{Read, Write};
    let at = std::fs::read_to_string(tmp.path().join("vault/metrics-endpoint")).expect("metrics endpoint");
    let mut s = std::net::TcpStream::connect(at.trim()).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    assert!(text.contains("ferry_build_info{role=\"vault\""), "{text}");
}
