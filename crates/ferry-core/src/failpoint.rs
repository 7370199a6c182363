//! Failpoints: named places at Ferry's durable boundaries where a crash test makes the process
//! die at once, as a power cut would (`abort`, no unwinding, no destructors): the test sets
//! `FERRY_FAILPOINTS=<name>[,<name>...]` on the process it starts and checks afterwards that
//! nothing acknowledged was lost and that the system resumes.
//!
//! Only builds with the `failpoints` feature have them (the test builds: ferry-cli enables it
//! as a dev-dependency); otherwise [`hit`] is an empty inline function.
//!
//! The places:
//! - [`REPLICA_AFTER_CATALOG_WRITE`]: a replica host recorded a cycle's point durably and has
//!   not acknowledged it yet (the source re-sends the cycle; the replica acknowledges it without
//!   applying it twice).
//! - [`SOURCE_AFTER_ACK`]: the source host heard the replica acknowledge a cycle and has not
//!   released the cycle's capture yet (the restarted agent sends what it cannot prove sent
//!   again; nothing is lost, no resync).
//! - [`REPLICA_MID_MERGE`]: retention is removing a point; the next layer was committed into the
//!   point's file but the catalogue still names both (the merge intent in the catalogue makes the
//!   restarted agent finish it).
//! - [`JOB_AFTER_TASK_CHECKPOINT`]: the vault recorded a job task as succeeded, with its output
//!   (the job resumes after it, never running the task again).

/// After the replica's catalogue names a new point, before the source hears of it.
pub const REPLICA_AFTER_CATALOG_WRITE: &str = "replica.after_catalog_write";

/// On the source host, after the replica's acknowledgement of a cycle, before the capture is
/// released.
pub const SOURCE_AFTER_ACK: &str = "source.after_ack";

/// In the middle of a retention merge: one disk's next layer committed, nothing else yet.
pub const REPLICA_MID_MERGE: &str = "replica.mid_merge";

/// After the vault recorded a job task as succeeded, before the next task starts.
pub const JOB_AFTER_TASK_CHECKPOINT: &str = "job.after_task_checkpoint";

/// The environment variable that arms failpoints.
pub const ENV: &str = "FERRY_FAILPOINTS";

/// Die here when the failpoint `name` is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var(ENV)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if armed.iter().any(|a| a == name) {
        eprintln!("failpoint {name}: the process dies here");
        std::process::abort();
    }
}

/// Die here when the failpoint `name` is armed (never: built without failpoints).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
