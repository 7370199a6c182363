//! Ferry vault persistence.
//!
//! The vault keeps all of its state in one relational database (embedded SQLite by default).
//! The model is deliberately small:
//!
//! - `vaults`: one row per vault, with the secret that signs its registration keys;
//! - `docs`: every configuration resource of a vault (fabrics, policies, mappings, protected
//!   items, recovery plans) as a JSON document of a `ferry-types` type, keyed by
//!   `(kind, vault, id)`, with an optional parent, an optional unique name and a version that
//!   increments on every write (optimistic concurrency: a stale version is refused);
//! - `tokens`, `registration_keys`: credentials, stored as SHA-256 hashes only;
//! - `jobs` and `events`: append-mostly tables with indexed filter columns and keyset
//!   pagination (a cursor is the last row's sequence number), so listing stays fast at millions
//!   of rows and no list is capped;
//! - `site_commands`: the outbox of commands a site fetches over its outbound connection;
//! - `alert_outbox`: alerts to deliver (JOB-4), written in the transaction of the event that
//!   raised them and kept as a record once delivered or dropped.
//!
//! Events, ended jobs, answered site commands and finished alert rows are pruned by age
//! ([`Retention`], [`Store::prune`]); configuration documents and credentials are not.
//!
//! Writes that must go together run in one transaction ([`Store::tx`]). SQLite runs in WAL mode
//! with `synchronous=FULL`: a write the vault acknowledged survives a crash of the process or the
//! machine.

mod alerts;
mod commands;
mod db;
mod docs;
mod error;
mod events;
mod jobs;
mod keys;
mod retention;
mod tokens;

pub use alerts::AlertRow;
pub use commands::{CommandRecord, SiteCommandRow};
pub use db::{Store, Tx};
pub use docs::{Doc, DocKind, ALERT_SETTINGS_ID};
pub use error::{Error, ErrorKind};
pub use events::NewEvent;
pub use keys::{KeyRow, KeyUse};
pub use retention::{Pruned, Retention};
pub use tokens::TokenRow;

/// Milliseconds since the epoch for a time.
pub fn to_ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// Time from milliseconds since the epoch (out-of-range values clamp to the epoch).
pub fn from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
