//! Ferry's API and wire types, shared by the vault, the site manager, the host agent and the CLI.
//!
//! This crate does no I/O. Every type that crosses a process boundary lives here, so the wire
//! model is written once. Names follow Azure Site Recovery's resource model (see
//! `ARCHITECTURE.md` §4): a *fabric* is a site (its site manager registers it), a *protection
//! container* is a cloud, a *container mapping* pairs two clouds under a policy, a *protectable
//! item* is a VM that can be protected, a *protected item* is a replicated VM.
//!
//! Identifiers:
//! - vault-owned resources (vaults, policies, mappings, jobs, events, keys) use random UUIDs;
//! - inventory objects reported by a site (clouds, host groups, hosts, networks, classifications,
//!   VMs) carry a stable string id chosen by the site (a UUID v5 of the object's kind and name
//!   unless the site's fabric file pins one, so a rename keeps the identity).

pub mod alert;
pub mod auth;
pub mod capacity;
pub mod error;
pub mod event;
pub mod fabric;
pub mod job;
pub mod mapping;
pub mod plan;
pub mod policy;
pub mod protection;
pub mod site_protocol;
pub mod vault;

pub use error::ApiError;

/// Version of the wire protocol between vault, site managers and host agents.
pub const PROTOCOL_VERSION: u32 = 1;

/// A page of a list: `next` is an opaque cursor for the following page, absent on the last page.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
