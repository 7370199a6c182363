//! Ferry's replication data plane: change capture on the primary, a framed replication protocol
//! over mutually authenticated TLS, the replica store of recovery points, and resync.
//!
//! # Model
//! ```text
//!  primary host                                             replica host
//!  ┌──────────────────────────────────────┐   mTLS :8084   ┌─────────────────────────────────┐
//!  │ QEMU ── dirty bitmap ferry-N per disk │               │ Receiver (allowlist by cert CN)  │
//!  │   │ ONE transaction per VM per cycle  │  Hello        │   │                              │
//!  │   ▼                                   │  BeginCycle   │   ▼                              │
//!  │ fleecing node per disk, NBD export    │  Extent × n ─▶│ new overlay per disk (direct     │
//!  │   │ NBD block status + reads (1 pass) │  EndCycle     │ qcow2 writer, O_DIRECT), catalog │
//!  │   ▼                                   │ ◀─ Ack durable│ base ← rp1 ← … ← rpN per disk    │
//!  │ Primary: ship, then drop ferry-N      │               │ retention: commit + rebase -u    │
//!  │ (on failure: merge ferry-N → N+1)     │               │ test failover: overlay on rpK     │
//!  └──────────────────────────────────────┘               └─────────────────────────────────┘
//! ```
//! * [`capture`]: bitmaps + `blockdev-backup sync=none` into fleecing nodes in one QMP transaction
//!   covering all disks, so every point is crash-consistent across the VM's disks; optional guest
//!   fsfreeze (app-consistent). The point is read over QEMU's NBD export of those nodes.
//! * [`data_sink`]: the replica's direct (`O_DIRECT`), batched writer of received clusters.
//! * [`protocol`]: frames, messages, checksums, compression; sequence diagram in its docs.
//! * [`transport`]: TLS configs, CN allowlist, bandwidth limiter with time-of-day schedule.
//! * [`send`] / [`receiver`]: the two ends of a cycle, with resume from the last acknowledged
//!   extent.
//! * [`replica`]: recovery points on disk, retention, test overlays; its docs hold the locking
//!   table of capture / apply / retention / test failover / failover.
//! * [`offline`]: offline initial replication (POL-8): export to files, import from files.
//! * [`resync`]: block-hash comparison with pause/resume; keeps existing points.
//! * [`engine`]: [`Primary`] (per VM) tying it together; [`bench`] measures it.
//! * [`churn`]: a VM's churn per window from bitmaps of its own, for capacity planning (CAP-1).
//!
//! Invariant: a bitmap is removed only after the replica acknowledged the cycle as durably
//! applied; a replica lists a point only after its overlays and catalog are durable. So a failure
//! anywhere loses nothing: the next cycle ships the union of unacknowledged changes.

pub mod bench;
pub mod bench_failover;
pub mod capture;
pub mod churn;
pub mod data_sink;
pub mod engine;
pub mod error;
pub mod image;
pub mod manifest;
pub mod offline;
pub mod protocol;
pub mod qcow2;
pub mod receiver;
pub mod replica;
pub mod resync;
pub mod send;
pub mod transport;

pub use capture::{Capture, CaptureDisk, TrackingState};
pub use engine::{CycleReport, Primary, PrimaryConfig, QmpHandle, ReplicationCounters};
pub use error::{Error, ErrorKind, Result};
pub use receiver::{Receiver, ReceiverConfig};
pub use replica::{RecoveryPoint, ReplicaStore, RetentionOutcome, TestOverlay, VmReplica};
pub use resync::{ResyncLimits, ResyncOutcome};
pub use transport::{Allowlist, Limiter, RateSchedule, RateWindow, TlsIdentity};
