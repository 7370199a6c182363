//! Ferry's pure decision logic: no I/O, no async, no clocks (callers pass `now`).
//!
//! The vault, the site manager and the host agent ask this crate every question whose answer
//! follows from data alone, so each rule of the scenario (`SCENARIO.md` IDs) is written once:
//!
//! | module | question | IDs |
//! |---|---|---|
//! | [`policy`] | is this replication policy valid; do these hosts fit it? | POL-1..5, POL-8, SEC-3 |
//! | [`paths`] | is this export/import/script path safe? | POL-8, PLAN-3, SEC-3 |
//! | [`version`] | which QEMU family / agent series is this, is it supported? | POL-1, FAB-5 |
//! | [`fabric_rules`] | may these two clouds be paired under this protection goal? | FAB-5..7, SGL-1 |
//! | [`network`] | which target networks are available; where does a replica NIC connect; which hosts reach its networks; where does a NIC go at failback? | NET-1, NET-2, NET-5, NET-6, NET-7 |
//! | [`addressing`] | which target subnet and IP address does a replica NIC get? | NET-3, NET-4 |
//! | [`storage`] | is this classification mapping valid; on which host and location does each replica disk go? | STO-1..5 |
//! | [`state`] | which operations does a protected item allow; what is its next state? | JOB-3, FO-1, FO-5..7 |
//! | [`health`] | what is an item's replication health and why; is it stalled; cycle statistics | JOB-2, REP-5 |
//! | [`rpo`] | where did the time between recovery points go (explainable RPO)? | REP-5, JOB-2 |
//! | [`plan`] | what may a recovery plan hold; how is it edited; may a plan operation run? | PLAN-1, PLAN-3, PLAN-4 |
//! | [`retention`] | which recovery points to merge; which point a failover uses | RP-2, RP-3, POL-4 |
//! | [`alerts`] | may a vault's alerts go to this webhook URL, these addresses, this SMTP relay? | JOB-4 |
//! | [`capacity`] | is this capacity plan valid; what bandwidth, time and storage do the measured VMs need? | CAP-1 |
//! | [`metrics`] | how is a `/metrics` document written (names, escaping, histograms)? | JOB-2, REP-5 |
//!
//! The model: a *site* (fabric) reports a `SiteInventory` of clouds → host groups → hosts, with
//! logical networks (bridges on hosts), VM networks (subnets, static IP pools) and storage
//! classifications (locations on hosts, local or shared within a host group). Cloud pairs
//! (`ContainerMapping`), network mappings and storage mappings join a source site's objects to a
//! target site's (or, with one site manager, two clouds of one site). Everything here takes those
//! `ferry_types` values and returns a decision or an [`Error`].
//!
//! Errors: one [`Error`] enum; `Error::code()` is a stable code (e.g. `PolicyInvalidCopyFrequency`,
//! `OperationNotAllowed`), `Display` a one-sentence message, and `ApiError::from` adds possible
//! causes and a recommendation where there is something useful to say.

pub mod addressing;
pub mod alerts;
pub mod capacity;
pub mod error;
pub mod fabric_rules;
pub mod failpoint;
pub mod health;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod plan;
pub mod policy;
pub mod retention;
pub mod rpo;
pub mod state;
pub mod storage;
pub mod version;

pub use error::{Error, ObjectKind};
