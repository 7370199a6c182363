//! VM definitions ([`VmSpec`]), their validation and their translation into a QEMU command line.
//!
//! Validation runs before anything is created or started and checks everything that can be
//! checked without QEMU: names, unique targets/MACs, disk files that exist and look like their
//! format, kernel files, socket path lengths.
//!
//! Command line choices:
//! * `-nodefaults -no-user-config -display none -machine q35 -no-shutdown`: a guest poweroff
//!   leaves QEMU alive (status `shutdown`) so a final replication cycle can run.
//! * Disk `vda` = file node `vda-file` (`cache.direct=on`: the host page cache is bypassed, as in
//!   `cache=none`, the usual production setting; replication reads the disk once, without copying
//!   it through the page cache) + format node `vda` (`discard=unmap`) +
//!   `virtio-blk-pci,drive=vda,id=vda-dev,share-rw=on` (`share-rw` lets HMP `qemu-io vda` write).
//! * NIC with a tap: `-netdev tap,id=netN,ifname=<tap>,script=no,downscript=no` +
//!   `virtio-net-pci,netdev=netN,mac=..,id=nicN`.
//!   NIC without a tap ("not connected"): the `virtio-net-pci` device without any netdev. The guest
//!   sees the NIC, frames go nowhere, and there is no user-mode networking. QEMU 7.2 prints
//!   "nic nicN has no peer" to its log once; that is expected.
//! * Guest agent: `-chardev socket,server=on,wait=off` + `virtio-serial-pci` +
//!   `virtserialport,name=org.qemu.guest_agent.0`.
//! * Commas in paths are doubled (QEMU option escaping).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::error::{Error, ErrorKind, Result};

/// Disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    /// The QEMU driver / `qemu-img -f` name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// One virtual disk. Its block node names are derived from the target: `<target>` (format node)
/// and `<target>-file` (protocol node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// libvirt-style target, e.g. `vda`.
    pub target: String,
    pub path: PathBuf,
    pub format: DiskFormat,
}

impl DiskSpec {
    /// The format node name QMP commands use for this disk.
    pub fn node_name(&self) -> &str {
        &self.target
    }

    /// The file (protocol) node name.
    pub fn file_node_name(&self) -> String {
        format!("{}-file", self.target)
    }
}

/// One NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// `52:54:00:xx:xx:xx` style MAC.
    pub mac: String,
    /// Host tap device; `None` = not connected.
    pub tap: Option<String>,
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Boot {
    /// Firmware boots the first disk.
    Disk,
    /// Direct kernel boot.
    Kernel { kernel: PathBuf, initrd: Option<PathBuf>, append: String },
}

/// A VM definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub uuid: uuid::Uuid,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    pub guest_agent: bool,
    pub boot: Boot,
    pub accel: Accel,
    /// Where the serial console goes; default `<run_dir>/serial.log`.
    pub extra_serial_log: Option<PathBuf>,
}

/// Files of one running VM inside its run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    pub dir: PathBuf,
    pub qmp: PathBuf,
    pub qga: PathBuf,
    pub pidfile: PathBuf,
    /// QEMU's stdout and stderr.
    pub log: PathBuf,
    pub serial: PathBuf,
    pub spec: PathBuf,
    /// Written before Ferry asks QEMU to quit, so an exit can be told from a crash.
    pub stop_marker: PathBuf,
}

impl RunPaths {
    /// Paths for `dir`, with the serial log taken from the spec when it overrides it.
    pub fn new(dir: &Path, spec: Option<&VmSpec>) -> Self {
        let serial = spec.and_then(|s| s.extra_serial_log.clone()).unwrap_or_else(|| dir.join("serial.log"));
        RunPaths {
            dir: dir.to_path_buf(),
            qmp: dir.join("qmp.sock"),
            qga: dir.join("qga.sock"),
            pidfile: dir.join("qemu.pid"),
            log: dir.join("qemu.log"),
            serial,
            spec: dir.join("spec.json"),
            stop_marker: dir.join("stop-requested"),
        }
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidSpec, msg)
}

fn valid_ident(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

fn utf8(p: &Path, what: &str) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| invalid(format!("{what} path is not UTF-8: {}", p.display())))
}

/// QEMU option value escaping: commas are doubled.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

fn check_file(p: &Path, what: &str) -> Result<std::fs::Metadata> {
    utf8(p, what)?;
    if !p.is_absolute() {
        return Err(invalid(format!("{what} path must be absolute: {}", p.display())));
    }
    let md = std::fs::metadata(p).map_err(|e| {
        Error::with_source(ErrorKind::InvalidSpec, format!("{what} {} is not accessible", p.display()), e)
    })?;
    if !md.is_file() {
        return Err(invalid(format!("{what} {} is not a regular file", p.display())));
    }
    Ok(md)
}

impl VmSpec {
    /// Check the definition; nothing is created or started.
    pub fn validate(&self, run_dir: &Path) -> Result<()> {
        if !valid_ident(&self.name, 64, &['-', '_', '.']) {
            return Err(invalid(format!(
                "VM name {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(invalid(format!("vCPU count {} is outside 1..=64", self.vcpus)));
        }
        if !(16..=1 << 20).contains(&self.memory_mib) {
            return Err(invalid(format!("Memory of {} MiB is outside 16 MiB..1 TiB", self.memory_mib)));
        }
        let mut targets = HashSet::new();
        let mut paths = HashSet::new();
        for d in &self.disks {
            if !valid_ident(&d.target, 16, &[]) || !d.target.starts_with(|c: char| c.is_ascii_lowercase()) {
                return Err(invalid(format!("Disk target {:?} must be a lowercase name like vda", d.target)));
            }
            if !targets.insert(d.target.clone()) {
                return Err(invalid(format!("Disk target {} is used twice", d.target)));
            }
            if !paths.insert(d.path.clone()) {
                return Err(invalid(format!("Disk file {} is attached twice", d.path.display())));
            }
            let md = check_file(&d.path, &format!("Disk {}", d.target))?;
            match d.format {
                DiskFormat::Raw => {
                    if md.len() == 0 || md.len() % 512 != 0 {
                        return Err(invalid(format!(
                            "Raw disk {} has size {} bytes; it must be a non-zero multiple of 512",
                            d.path.display(),
                            md.len()
                        )));
                    }
                }
                DiskFormat::Qcow2 => {
                    let mut magic = [0u8; 4];
                    std::fs::File::open(&d.path).and_then(|mut f| f.read_exact(&mut magic)).map_err(|e| {
                        Error::with_source(ErrorKind::InvalidSpec, format!("Cannot read disk {}", d.path.display()), e)
                    })?;
                    if &magic != b"QFI\xfb" {
                        return Err(invalid(format!("Disk {} is not a qcow2 image", d.path.display())));
                    }
                }
            }
        }
        let mut macs = HashSet::new();
        for n in &self.nics {
            if !valid_mac(&n.mac) {
                return Err(invalid(format!("MAC address {:?} is not a unicast MAC", n.mac)));
            }
            if !macs.insert(n.mac.to_ascii_lowercase()) {
                return Err(invalid(format!("MAC address {} is used twice", n.mac)));
            }
            if let Some(tap) = &n.tap {
                if !valid_ident(tap, 15, &['-', '_', '.']) {
                    return Err(invalid(format!(
                        "Tap name {tap:?} must be 1-15 characters of letters, digits, '-', '_' or '.'"
                    )));
                }
            }
        }
        match &self.boot {
            Boot::Disk => {
                if self.disks.is_empty() {
                    return Err(invalid("Boot from disk needs at least one disk"));
                }
            }
            Boot::Kernel { kernel, initrd, append } => {
                check_file(kernel, "Kernel")?;
                if let Some(i) = initrd {
                    check_file(i, "Initrd")?;
                }
                if append.contains('\n') {
                    return Err(invalid("Kernel command line contains a newline"));
                }
            }
        }
        if let Some(p) = &self.extra_serial_log {
            utf8(p, "Serial log")?;
        }
        utf8(run_dir, "Run directory")?;
        let paths = RunPaths::new(run_dir, Some(self));
        for sock in [&paths.qmp, &paths.qga] {
            if sock.as_os_str().len() >= 100 {
                return Err(invalid(format!("Socket path {} is too long for a unix socket", sock.display())));
            }
        }
        Ok(())
    }

    /// The QEMU arguments (without the program name) for running in `paths`.
    pub fn to_args(&self, paths: &RunPaths) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        push(&["-machine", "q35", "-no-shutdown"]);
        push(&["-name", &format!("guest={}", self.name.replace(',', ",,"))]);
        push(&["-uuid", &self.uuid.to_string()]);
        push(&["-smp", &self.vcpus.to_string()]);
        push(&["-m", &self.memory_mib.to_string()]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "qemu64"]),
            Accel::Tcg => push(&["-accel", "tcg"]),
        }
        push(&["-pidfile", &paths.pidfile.to_string_lossy()]);
        push(&[
            "-chardev",
            &format!("socket,id=qmp,path={},server=on,wait=off", esc(&paths.qmp)),
            "-mon",
            "chardev=qmp,mode=control",
        ]);
        push(&["-chardev", &format!("file,id=serial0,path={}", esc(&paths.serial)), "-serial", "chardev:serial0"]);
        for (i, d) in self.disks.iter().enumerate() {
            push(&[
                "-blockdev",
                &format!("driver=file,filename={},node-name={},cache.direct=on", esc(&d.path), d.file_node_name()),
                "-blockdev",
                &format!(
                    "driver={},file={},node-name={},discard=unmap",
                    d.format.as_str(),
                    d.file_node_name(),
                    d.node_name()
                ),
            ]);
            let boot = if i == 0 && self.boot == Boot::Disk { ",bootindex=0" } else { "" };
            push(&[
                "-device",
                &format!("virtio-blk-pci,drive={},id={}-dev,share-rw=on{boot}", d.node_name(), d.target),
            ]);
        }
        for (i, n) in self.nics.iter().enumerate() {
            match &n.tap {
                Some(tap) => push(&[
                    "-netdev",
                    &format!("tap,id=net{i},ifname={tap},script=no,downscript=no"),
                    "-device",
                    &format!("virtio-net-pci,netdev=net{i},mac={},id=nic{i}", n.mac),
                ]),
                None => push(&["-device", &format!("virtio-net-pci,mac={},id=nic{i}", n.mac)]),
            }
        }
        if self.guest_agent {
            push(&[
                "-chardev",
                &format!("socket,id=qga0,path={},server=on,wait=off", esc(&paths.qga)),
                "-device",
                "virtio-serial-pci,id=vser0",
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ]);
        }
        if let Boot::Kernel { kernel, initrd, append } = &self.boot {
            push(&["-kernel", &kernel.to_string_lossy()]);
            if let Some(i) = initrd {
                push(&["-initrd", &i.to_string_lossy()]);
            }
            push(&["-append", append]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> VmSpec {
        let disk = dir.join("a,b.raw");
        std::fs::write(&disk, vec![0u8; 4096]).expect("write disk");
        VmSpec {
            name: "vm1".into(),
            uuid: uuid::Uuid::nil(),
            vcpus: 1,
            memory_mib: 256,
            disks: vec![DiskSpec { target: "vda".into(), path: disk, format: DiskFormat::Raw }],
            nics: vec![
                NicSpec { mac: "52:54:00:00:00:01".into(), tap: Some("tap0".into()) },
                NicSpec { mac: "52:54:00:00:00:02".into(), tap: None },
            ],
            guest_agent: true,
            boot: Boot::Disk,
            accel: Accel::Tcg,
            extra_serial_log: None,
        }
    }

    #[test]
    fn host_1_argv_names_nodes_after_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spec(dir.path());
        s.validate(dir.path()).expect("valid");
        let args = s.to_args(&RunPaths::new(dir.path(), Some(&s))).join(" ");
        assert!(args.contains("node-name=vda-file,cache.direct=on"));
        assert!(args.contains("a,,b.raw"), "commas escaped: {args}");
        assert!(args.contains("driver=raw,file=vda-file,node-name=vda,discard=unmap"));
        assert!(args.contains("virtio-blk-pci,drive=vda,id=vda-dev,share-rw=on,bootindex=0"));
        assert!(args.contains("-netdev tap,id=net0,ifname=tap0,script=no,downscript=no"));
        assert!(args.contains("virtio-net-pci,mac=52:54:00:00:00:02,id=nic1"));
        assert!(args.contains("name=org.qemu.guest_agent.0"));
        assert!(args.contains("-no-shutdown"));
    }

    #[test]
    fn host_1_invalid_specs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = spec(dir.path());
        let mut dup = base.clone();
        dup.disks.push(DiskSpec { target: "vda".into(), path: dir.path().join("other"), format: DiskFormat::Raw });
        let mut missing = base.clone();
        missing.disks[0].path = dir.path().join("nope.qcow2");
        let mut badmac = base.clone();
        badmac.nics[0].mac = "01:00:00:00:00:01".into();
        let mut notqcow = base.clone();
        notqcow.disks[0].format = DiskFormat::Qcow2;
        for (s, what) in
            [(dup, "used twice"), (missing, "not accessible"), (badmac, "unicast"), (notqcow, "not a qcow2")]
        {
            let e = s.validate(dir.path()).expect_err(what);
            assert_eq!(*e.kind(), ErrorKind::InvalidSpec);
            assert!(e.to_string().contains(what), "{e}");
        }
    }
}
