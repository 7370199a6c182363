//! HOST-6: the tiny test guest boots under TCG, writes fsync'ed records, answers the guest agent
//! and shuts down on ACPI power-off; the verifier finds exactly the records the serial log shows.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{qcow2, test_guest, VmGuard};
use ferry_qemu::guest_build::TestGuest;
use ferry_qemu::guest_records::{last_serial_record, verify_image};
use ferry_qemu::qga::FreezeStatus;
use ferry_qemu::{Accel, Boot, DiskFormat, DiskSpec, NicSpec, Qemu, VmSpec};

const MIB: u64 = 1 << 20;

async fn wait_serial(vm: &ferry_qemu::RunningVm, needle: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    // The serial console ends lines with "\r\n"; match whole lines or their first words.
    let seen = |log: &str| log.lines().map(str::trim_end).any(|l| l == needle || l.starts_with(&format!("{needle} ")));
    while !seen(&vm.serial_log()) {
        assert!(t.elapsed() < timeout, "no {needle:?} on the serial console:\n{}", vm.serial_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_6_guest_writes_records_and_verifier_reports_clean_prefix() {
    let Some(g) = test_guest() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = qcow2(dir.path(), "data.qcow2", 16 * MIB).await;
    let fs = qcow2(dir.path(), "fs.qcow2", 16 * MIB).await;
    let spec = VmSpec {
        name: "guest1".into(),
        uuid: uuid::Uuid::new_v4(),
        vcpus: 1,
        memory_mib: 256,
        disks: vec![
            DiskSpec { target: "vda".into(), path: data.clone(), format: DiskFormat::Qcow2 },
            DiskSpec { target: "vdb".into(), path: fs, format: DiskFormat::Qcow2 },
        ],
        nics: vec![NicSpec { mac: "52:54:00:aa:00:01".into(), tap: None }],
        guest_agent: true,
        boot: Boot::Kernel {
            kernel: g.kernel.clone(),
            initrd: Some(g.initrd.clone()),
            append: format!("{} ferry.fs=/dev/vdb", TestGuest::records_cmdline("/dev/vda", 100, 0)),
        },
        accel: Accel::Tcg,
        extra_serial_log: None,
    };
    let t0 = Instant::now();
    let vm = Qemu::start(&spec, &dir.path().join("run")).await.expect("start");
    let _guard = VmGuard(vm.pid());
    wait_serial(&vm, "FERRY-BOOT-OK", Duration::from_secs(90)).await;
    let boot = t0.elapsed();
    wait_serial(&vm, "FERRY READY", Duration::from_secs(90)).await;
    let ready = t0.elapsed();
    wait_serial(&vm, "REC 5", Duration::from_secs(90)).await;
    eprintln!("TCG boot: /init after {boot:?}, workload ready after {ready:?}, REC 5 after {:?}", t0.elapsed());
    assert!(vm.serial_log().contains("FERRY FS /dev/vdb"), "{}", vm.serial_log());

    // Guest agent while the workload runs.
    let qga = Arc::new(vm.connect_qga().await.expect("qga connect"));
    let t = Instant::now();
    qga.wait_ready(Duration::from_secs(30)).await.expect("qga ready");
    qga.ping().await.expect("ping");
    eprintln!("qga sync+ping: {:?}", t.elapsed());
    let out = qga.exec_wait("/bin/cat", &["/proc/cmdline"], Duration::from_secs(20)).await.expect("exec");
    assert_eq!(out.exit_code, Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ferry.workload=records"));
    let out = qga.exec_wait("/bin/sh", &["-c", "exit 3"], Duration::from_secs(20)).await.expect("exec");
    assert_eq!(out.exit_code, Some(3));
    let ifs = qga.network_get_interfaces().await.expect("interfaces");
    assert!(ifs.iter().any(|i| i.hardware_address.as_deref() == Some("52:54:00:aa:00:01")), "{ifs:?}");
    let t = Instant::now();
    let guard = qga.freeze(Duration::from_secs(10)).await.expect("freeze");
    assert_eq!(guard.frozen(), 1, "one ext2 filesystem on vdb");
    assert_eq!(qga.fsfreeze_status().await.expect("status"), FreezeStatus::Frozen);
    assert_eq!(guard.thaw().await.expect("thaw"), 1);
    eprintln!("freeze+status+thaw of one filesystem: {:?}", t.elapsed());
    assert_eq!(qga.fsfreeze_status().await.expect("status"), FreezeStatus::Thawed);
    // Dropping a guard thaws in the background.
    drop(qga.freeze(Duration::from_secs(10)).await.expect("freeze"));
    let t = Instant::now();
    while qga.fsfreeze_status().await.expect("status") != FreezeStatus::Thawed {
        assert!(t.elapsed() < Duration::from_secs(10), "background thaw did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(qga);

    wait_serial(&vm, "REC 20", Duration::from_secs(90)).await;
    let out = vm.shutdown_graceful(Duration::from_secs(60)).await.expect("shutdown");
    eprintln!("graceful shutdown: {out:?}; total run {:?}", t0.elapsed());
    assert!(out.graceful, "guest ignored the ACPI power button:\n{}", vm.serial_log());
    let serial = vm.serial_log();
    assert!(serial.contains("FERRY POWEROFF"), "{serial}");
    let last = last_serial_record(&serial).expect("records on the console");

    let t = Instant::now();
    let r = verify_image(&data).await.expect("verify");
    eprintln!("verify 16 MiB qcow2: {:?}; {r:?}", t.elapsed());
    assert_eq!(r.clean_prefix_len, last, "serial log says {last}: {r:?}");
    assert_eq!(r.last_record, Some(last));
    assert_eq!(r.first_gap, None);
    assert!(r.corrupted.is_empty());
    assert!(r.other_run.is_empty());
}

/// A tmpfs mounted for one test; unmounted on drop, also when the test fails.
struct SmallFs(std::path::PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
}

/// Fill the file system of `dir` to the last byte with one file.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    for size in [1usize << 20, 4096, 512] {
        let chunk = vec![0u8; size];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
    }
    path
}

async fn run_state(vm: &ferry_qemu::RunningVm) -> String {
    match vm.status().await.expect("status") {
        ferry_qemu::VmState::Running(r) => r.status,
        other => format!("{other:?}"),
    }
}

/// HOST-3: a guest whose image's file system runs full is paused by QEMU (`io-error`), not
/// failed; once there is space again, resuming it loses none of the records it was writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_3_a_guest_paused_by_a_full_disk_goes_on_without_loss_when_space_is_back() {
    let Some(g) = test_guest() else { return };
    if !is_root() {
        eprintln!("SKIP: mounting a small file system needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).expect("dir");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "ferry-test"])
        .arg(&small)
        .status()
        .expect("mount");
    assert!(st.success(), "mount tmpfs");
    let _fs = SmallFs(small.clone());
    // Small clusters: the records soon need a new one.
    let data = small.join("data.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096"])
        .arg(&data)
        .arg("16M")
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spec = VmSpec {
        name: "full1".into(),
        uuid: uuid::Uuid::new_v4(),
        vcpus: 1,
        memory_mib: 256,
        disks: vec![DiskSpec { target: "vda".into(), path: data.clone(), format: DiskFormat::Qcow2 }],
        nics: vec![],
        guest_agent: false,
        boot: Boot::Kernel {
            kernel: g.kernel.clone(),
            initrd: Some(g.initrd.clone()),
            append: TestGuest::records_cmdline("/dev/vda", 50, 0),
        },
        accel: Accel::Tcg,
        extra_serial_log: None,
    };
    let vm = Qemu::start(&spec, &dir.path().join("run")).await.expect("start");
    let _guard = VmGuard(vm.pid());
    wait_serial(&vm, "REC 5", Duration::from_secs(120)).await;
    assert!(!vm.resume_after_io_error().await.expect("resume"), "a running guest is left alone");

    let filler = fill(&small);
    let t = Instant::now();
    while run_state(&vm).await != "io-error" {
        assert!(t.elapsed() < Duration::from_secs(90), "the guest never hit the full disk: {}", run_state(&vm).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stuck = last_serial_record(&vm.serial_log()).unwrap_or(0);
    eprintln!("paused on io-error {:?} after the disk filled, at record {stuck}", t.elapsed());
    // Still full: resuming retries the write, which fails again.
    assert!(vm.resume_after_io_error().await.expect("resume"));
    let t = Instant::now();
    while run_state(&vm).await != "io-error" {
        assert!(t.elapsed() < Duration::from_secs(30), "the guest should pause again while the disk is full");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last_serial_record(&vm.serial_log()).unwrap_or(0) <= stuck + 1, "no record passes a full disk");

    std::fs::remove_file(&filler).expect("free the space");
    assert!(vm.resume_after_io_error().await.expect("resume"));
    wait_serial(&vm, &format!("REC {}", stuck + 20), Duration::from_secs(120)).await;
    assert_eq!(run_state(&vm).await, "running");
    let out = vm.shutdown_graceful(Duration::from_secs(60)).await.expect("shutdown");
    assert!(out.graceful, "{}", vm.serial_log());
    let last = last_serial_record(&vm.serial_log()).expect("records");
    let r = verify_image(&data).await.expect("verify");
    assert_eq!(r.clean_prefix_len, last, "every record written reached the image: {r:?}");
    assert!(r.corrupted.is_empty() && r.first_gap.is_none(), "{r:?}");
}
