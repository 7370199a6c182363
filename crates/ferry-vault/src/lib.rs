//! The Ferry vault: the control-plane server.
//!
//! A vault server holds one or more vaults (FAB-1). Each vault holds configuration and metadata
//! only — sites, clouds, policies, mappings, protected items, jobs and events — never VM disk
//! data. It serves:
//!
//! - the REST API under `/api/v1` (Azure Site Recovery resource names, OpenAPI at
//!   `/api/v1/openapi.json`), authenticated with bearer tokens carrying a role (SEC-2);
//! - the web portal under `/portal` (server-rendered pages, nothing loaded from elsewhere; see
//!   [`portal`]) on the same HTTPS listener, with the overview figures of [`dashboard`];
//! - the agent endpoints under `/api/v1/agent`, used by site managers over their outbound-only
//!   TLS connection: registration with a registration key (FAB-2), periodic reports with the
//!   site's inventory (FAB-4), the command outbox, host certificate signing (SEC-1).
//!
//! Alerts ([`alerts`]) go out by webhook or e-mail when an item's health becomes Critical, a
//! site's heartbeat is lost or a failover fails; they are queued in the transaction of their
//! event and delivered with retries by a background task.
//!
//! State lives in SQLite under the data directory (`ferry-store`). The private CA that signs
//! every agent certificate and the vault's own HTTPS certificate live in `<data>/pki`.
//!
//! Long operations are durable jobs ([`jobs`]): a job's tasks are checkpointed in the store, and
//! jobs that were running when the vault stopped are resumed at start; a task already done is not
//! run again, and commands sent to sites carry ids derived from the job and task, so a resumed
//! job never sends a command twice.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod auth_limit;
pub mod bench;
pub mod bench_year;
pub mod capacity;
pub mod certificates;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod inventory;
pub mod jobs;
pub mod metrics;
pub mod nic_plan;
pub mod peers;
pub mod portal;
pub mod replication;
pub mod retention;
pub mod server;
pub mod state;
pub mod test_expiry;

pub use config::VaultConfig;
pub use server::{start, VaultHandle};
