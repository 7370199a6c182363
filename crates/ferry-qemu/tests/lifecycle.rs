//! HOST-2 and HOST-3: accelerator probe, crash detection, re-attach after an agent restart.

mod common;

use std::time::{Duration, Instant};

use common::{diskless_os_spec, qcow2, test_guest, VmGuard};
use ferry_qemu::{process, Accel, ErrorKind, ExitKind, Qemu, RunningVm, VmState};
use nix::sys::signal::Signal;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_3_sigkill_reported_as_crash_with_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = qcow2(dir.path(), "d.qcow2", 8 * MIB).await;
    let run = dir.path().join("run");
    let vm = Qemu::start(&diskless_os_spec("crash1", &[("vda", &disk)]), &run).await.expect("start");
    let _guard = VmGuard(vm.pid());
    assert!(vm.exit_report().is_none());
    process::send_signal(vm.pid(), Signal::SIGKILL).expect("kill");
    assert!(process::wait_gone(vm.pid(), Duration::from_secs(10)).await);
    let VmState::Exited(r) = vm.status().await.expect("status") else {
        panic!("QEMU still reported running");
    };
    assert_eq!(r.kind, ExitKind::Crashed, "{r:?}");
    assert_eq!(r.exit.and_then(|e| e.signal), Some(9), "{r:?}");
    assert!(r.reason.contains("SIGKILL"), "{}", r.reason);
    eprintln!("crash reason: {}", r.reason);
    // Seen from a restarted agent: the run directory tells the same story.
    let last = Qemu::last_exit(&run).expect("last exit").expect("exited");
    assert_eq!(last.kind, ExitKind::Crashed);
    let e = RunningVm::attach(&run).await.expect_err("dead VM");
    assert_eq!(*e.kind(), ErrorKind::Process);
    // A stopped VM can be deleted, with its disks.
    Qemu::delete(&run, true).expect("delete");
    assert!(!run.exists() && !disk.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_3_reattach_after_dropping_handle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = qcow2(dir.path(), "d.qcow2", 8 * MIB).await;
    let run = dir.path().join("run");
    let vm = Qemu::start(&diskless_os_spec("attach1", &[("vda", &disk)]), &run).await.expect("start");
    let pid = vm.pid();
    let _guard = VmGuard(pid);
    vm.qmp().block_dirty_bitmap_add("vda", "bm-before", false).await.expect("bitmap");
    drop(vm); // the "agent" goes away; QEMU keeps running
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(process::pid_alive(pid));
    let t = Instant::now();
    let vm = RunningVm::attach(&run).await.expect("attach");
    eprintln!("re-attach: {:?}", t.elapsed());
    assert_eq!(vm.pid(), pid);
    assert_eq!(vm.spec().name, "attach1");
    let bms = vm.qmp().dirty_bitmaps("vda").await.expect("bitmaps");
    assert!(bms.iter().any(|b| b.name == "bm-before"), "same QEMU, same state");
    assert!(matches!(vm.status().await.expect("status"), VmState::Running(_)));
    // Starting a second QEMU in the same run directory is refused.
    let e = Qemu::start(vm.spec(), &run).await.expect_err("already running");
    assert_eq!(*e.kind(), ErrorKind::Process);
    let e = Qemu::delete(&run, false).expect_err("running");
    assert_eq!(*e.kind(), ErrorKind::Process);
    vm.hard_stop().await.expect("stop");
    let VmState::Exited(r) = vm.status().await.expect("status") else { panic!("still running") };
    assert_eq!(r.kind, ExitKind::Stopped, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_2_kvm_probe_boots_the_guest_or_falls_back_to_tcg() {
    if std::env::var_os("FERRY_ACCEL").is_some() {
        eprintln!("SKIP: FERRY_ACCEL is set, the probe would be bypassed");
        return;
    }
    let Some(g) = test_guest() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("accel");
    let t = Instant::now();
    let a = ferry_qemu::accel::probe_kvm_with_timeout(&g.kernel, &g.initrd, Some(&cache), Duration::from_secs(15))
        .await
        .expect("probe");
    eprintln!("KVM probe: {a:?} in {:?}", t.elapsed());
    // Either answer is right, depending on the machine: KVM where it boots the test guest (it
    // needs /dev/kvm), TCG where it does not (a nested PVM cannot boot a stock kernel). The
    // probe's answer is what it cached.
    match a {
        Accel::Kvm => assert!(std::path::Path::new("/dev/kvm").exists(), "KVM without /dev/kvm"),
        Accel::Tcg => {}
    }
    let expected = match a {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    assert_eq!(std::fs::read_to_string(&cache).expect("cache"), expected);
    // The cached answer is used without booting again.
    let t = Instant::now();
    let again = ferry_qemu::probe_kvm(&g.kernel, &g.initrd, Some(&cache)).await.expect("cached");
    assert_eq!(again, a);
    assert!(t.elapsed() < Duration::from_secs(1));
    // Whatever the probe said, a VM boots the test guest with it.
    let run = dir.path().join("vm");
    let mut spec = diskless_os_spec("probe-vm", &[]);
    spec.memory_mib = 128;
    spec.accel = a;
    spec.boot = ferry_qemu::Boot::Kernel {
        kernel: g.kernel.clone(),
        initrd: Some(g.initrd.clone()),
        append: "console=ttyS0 quiet panic=-1".into(),
    };
    let vm = Qemu::start(&spec, &run).await.expect("the guest starts with the probed accelerator");
    let _guard = VmGuard(vm.pid());
    let serial = run.join("serial.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&serial).unwrap_or_default().contains("FERRY-BOOT-OK") {
        assert!(Instant::now() < deadline, "the guest did not boot with {a:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    vm.hard_stop().await.expect("stop");
}

/// SEC-3: a VM's QEMU runs under its seccomp sandbox (the kernel reports a filter on the
/// process) and the guest runs as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_a_vms_qemu_runs_under_its_seccomp_sandbox() {
    assert!(ferry_qemu::sandbox::supported(), "Debian's QEMU is built with seccomp");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = qcow2(dir.path(), "d.qcow2", 8 * MIB).await;
    let run = dir.path().join("run");
    let vm = Qemu::start(&diskless_os_spec("sandbox1", &[("vda", &disk)]), &run).await.expect("start");
    let _guard = VmGuard(vm.pid());
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.pid())).expect("cmdline");
    assert!(String::from_utf8_lossy(&cmdline).contains("spawn=deny"), "started with the sandbox");
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).expect("status");
    let seccomp = status.lines().find(|l| l.starts_with("Seccomp:")).expect("Seccomp line");
    assert_eq!(seccomp.split_whitespace().nth(1), Some("2"), "a seccomp filter is installed: {seccomp}");
    assert!(matches!(vm.status().await.expect("status"), VmState::Running(_)));
    vm.qmp().block_dirty_bitmap_add("vda", "bm", false).await.expect("QMP works inside the sandbox");
}
