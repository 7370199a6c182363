//! QEMU data plane for Ferry: QMP and guest-agent clients, the QEMU process launcher, qemu-img
//! helpers and the tiny test guest's record verifier.
//!
//! # Model
//! * A VM is a [`spec::VmSpec`]. [`launcher::Qemu::start`] validates it (nothing is created for
//!   an invalid spec), writes it to a *run directory* and starts `qemu-system-x86_64` detached
//!   (own session) with a QMP socket, a pidfile, a log of QEMU's own output and the serial console
//!   in that directory. The host agent can die and come back: [`launcher::RunningVm::attach`]
//!   finds the process again from the pidfile and verifies its `/proc/<pid>/cmdline`. A QEMU that
//!   vanishes without a stop request is reported as [`launcher::ExitKind::Crashed`] with its
//!   signal/exit status (when this agent spawned it) and the tail of its log.
//! * Block node names are Ferry's: disk target `vda` = format node `vda` over file node
//!   `vda-file`. Dirty bitmaps, backups and `qemu-io` address these nodes ([`block`]).
//! * [`qmp::Qmp`] is one connection with a background reader: commands have per-command timeouts,
//!   events are broadcast to subscribers with their own timeouts, and finished block jobs are
//!   remembered so a late waiter still sees the outcome.
//! * [`qga::Qga`] speaks to qemu-guest-agent (sync, ping, fsfreeze with a thaw guarantee, exec).
//! * [`accel`] decides KVM vs TCG by really booting the test guest under KVM.
//! * [`img`] wraps `qemu-img`; [`iohelp`] writes guest-like data through HMP `qemu-io`.
//! * [`guest_records`] verifies the test guest's numbered, checksummed records on any image;
//!   [`guest_build`] builds that guest with `scripts/build-test-guest.sh`.
//!
//! Everything was validated against QEMU 7.2 (see `shared/design/qemu-dataplane-notes.md`).

pub mod accel;
pub mod block;
pub mod error;
pub mod guest_build;
pub mod guest_records;
pub mod img;
pub mod iohelp;
pub mod launcher;
pub mod nbd;
pub mod process;
pub mod qga;
pub mod qmp;
pub mod sandbox;
pub mod spec;

pub use accel::{probe_kvm, Accel};
pub use error::{Error, ErrorKind, Result};
pub use launcher::{ExitKind, ExitReport, Qemu, RunningVm, ShutdownOutcome, VmState};
pub use qga::{FreezeGuard, Qga};
pub use qmp::{EventStream, Qmp, QmpEvent};
pub use spec::{Boot, DiskFormat, DiskSpec, NicSpec, RunPaths, VmSpec};
