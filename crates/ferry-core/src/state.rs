//! The protected item state machine (JOB-3) and the operations each state allows.
//!
//! ```text
//! NotEnabled ─enable→ WaitingForInitialReplication ─IR started→ InitialReplicationInProgress
//!   (offline, POL-8: ─export done→ WaitingForInitialReplication ─importInitialReplica, first
//!   delta→ Protected)
//!   ─replicating→ Protected ⇄ Paused (pause / resume)
//! Protected ─resync needed→ ResyncRequired ─repair or resync started→ Resynchronizing
//!   ─replicating→ Protected
//! Protected ─repairReplication (operator: compare with the replica now)→ Resynchronizing
//! Protected ─plannedFailover→ PreparedForPlannedFailover ─failover started→ FailoverInProgress
//! Protected/Paused/ResyncRequired/Resynchronizing/PreparedForPlannedFailover
//!   ─unplannedFailover→ FailoverInProgress
//! FailoverInProgress ─failover completed→ FailedOverCommitPending (applyRecoveryPoint: stays)
//!   ─failover rolled back / failoverCancel after its job ended (FO-7)→ Protected
//! FailedOverCommitPending ─failoverCancel→ Protected   (FO-7: replication goes on)
//!   ─failoverCommit→ Committed ─reProtect→ ReverseReplicating ─replicating→ Protected (other
//!   direction)
//! any state but NotEnabled/FailoverInProgress ─disableProtection→ NotEnabled
//! ```
//! Test failover and its cleanup do not change the state; they depend on the context (a test
//! running, recovery points present). All failover types work in both directions (FO-6).
//!
//! [`transition`] is the only way the vault changes an item's state: operators' operations,
//! its jobs' steps and the phases the hosts report ([`Event::reported`]) are all events here.

use ferry_types::protection::{Operation, ReplicationState};
use ferry_types::site_protocol::ReplicationPhase;

use crate::error::Error;

use ReplicationState as S;

/// What moves a protected item from one state to the next: an operator's operation or an event
/// reported by the replication engine / job engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Operation(Operation),
    EnableProtection,
    /// The source host copies the initial replica (reported).
    InitialReplicationStarted,
    /// POL-8: the source host's offline export is complete (reported).
    InitialExportCompleted,
    /// The source host lost change tracking (reported).
    ResyncNeeded,
    /// The source host compares its disks with the replica (reported).
    ResyncStarted,
    /// The source host runs delta cycles: an initial replication, a resync or a reverse
    /// replication is complete (reported).
    Replicating,
    /// The source VM is off and its last cycle sent: the planned failover proper begins.
    FailoverStarted,
    /// The recovered VM runs on the target.
    FailoverCompleted,
    FailoverRolledBack,
}

impl Event {
    /// The event a phase reported by a source host stands for, if any.
    pub fn reported(phase: ReplicationPhase) -> Option<Event> {
        match phase {
            ReplicationPhase::InitialInProgress => Some(Event::InitialReplicationStarted),
            ReplicationPhase::WaitingForImport => Some(Event::InitialExportCompleted),
            ReplicationPhase::ResyncRequired => Some(Event::ResyncNeeded),
            ReplicationPhase::Resynchronizing => Some(Event::ResyncStarted),
            ReplicationPhase::Replicating => Some(Event::Replicating),
            ReplicationPhase::Waiting | ReplicationPhase::Paused | ReplicationPhase::Retrying => None,
        }
    }
}

/// Every state, for checks over all of them.
pub const ALL_STATES: [ReplicationState; 12] = [
    S::NotEnabled,
    S::WaitingForInitialReplication,
    S::InitialReplicationInProgress,
    S::Protected,
    S::PreparedForPlannedFailover,
    S::FailoverInProgress,
    S::FailedOverCommitPending,
    S::Committed,
    S::Paused,
    S::ResyncRequired,
    S::Resynchronizing,
    S::ReverseReplicating,
];

/// Facts beyond the state that decide whether an operation is allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationContext {
    /// A test failover VM exists for this item.
    pub test_failover_running: bool,
    /// Number of recovery points on the replica side.
    pub recovery_points: usize,
    /// Replication currently runs from the recovery site back to the original one.
    pub reverse_direction: bool,
    /// A failover job of this item is still running (an interrupted one is rolled back by a
    /// cancel only once its job has ended, FO-7).
    pub failover_job_running: bool,
    /// Offline initial replication: the source's export is complete and waits for its import.
    pub awaiting_import: bool,
}

/// The state an operation leads to, judged on the state alone.
fn operation_target(state: ReplicationState, op: Operation) -> Option<ReplicationState> {
    match (op, state) {
        (Operation::TestFailover, S::Protected | S::Paused | S::ResyncRequired | S::Resynchronizing) => Some(state),
        (Operation::TestFailoverCleanup, s) if s != S::NotEnabled => Some(state),
        (Operation::PlannedFailover, S::Protected) => Some(S::PreparedForPlannedFailover),
        (
            Operation::UnplannedFailover,
            S::Protected | S::Paused | S::ResyncRequired | S::Resynchronizing | S::PreparedForPlannedFailover,
        ) => Some(S::FailoverInProgress),
        (Operation::ApplyRecoveryPoint, S::FailedOverCommitPending) => Some(state),
        (Operation::FailoverCommit, S::FailedOverCommitPending) => Some(S::Committed),
        (
            Operation::FailoverCancel,
            S::FailedOverCommitPending | S::PreparedForPlannedFailover | S::FailoverInProgress,
        ) => Some(S::Protected),
        (Operation::ReProtect, S::Committed) => Some(S::ReverseReplicating),
        (Operation::RepairReplication, S::ResyncRequired | S::Protected) => Some(S::Resynchronizing),
        // Pausing a resynchronization keeps its comparison cursor; resuming continues it.
        (Operation::PauseReplication, S::Protected | S::Resynchronizing | S::ResyncRequired) => Some(S::Paused),
        (Operation::ResumeReplication, S::Paused) => Some(S::Protected),
        (Operation::ImportInitialReplica, S::WaitingForInitialReplication) => Some(state),
        (Operation::DisableProtection, s) if !matches!(s, S::NotEnabled | S::FailoverInProgress) => Some(S::NotEnabled),
        _ => None,
    }
}

/// Why the context forbids an operation the state would allow.
fn context_veto(op: Operation, ctx: &OperationContext) -> Option<&'static str> {
    match op {
        Operation::TestFailover if ctx.test_failover_running => Some("a test failover is already running"),
        Operation::TestFailover | Operation::UnplannedFailover if ctx.recovery_points == 0 => {
            Some("there is no recovery point")
        }
        Operation::TestFailoverCleanup if !ctx.test_failover_running => Some("no test failover is running"),
        Operation::FailoverCancel if ctx.failover_job_running => {
            Some("a failover job is still running; wait for it to end or cancel the job")
        }
        Operation::ImportInitialReplica if !ctx.awaiting_import => {
            Some("no offline export is waiting for its import (the policy's initial replication is not offline, or the export is not complete yet)")
        }
        Operation::DisableProtection if ctx.test_failover_running => {
            Some("a test failover is running; clean it up first")
        }
        _ => None,
    }
}

/// Checks one operation against the state and the context.
pub fn check_operation(state: ReplicationState, ctx: &OperationContext, op: Operation) -> Result<(), Error> {
    if operation_target(state, op).is_none() {
        return Err(Error::OperationNotAllowed { state, operation: op, reason: None });
    }
    match context_veto(op, ctx) {
        Some(reason) => Err(Error::OperationNotAllowed { state, operation: op, reason: Some(reason.into()) }),
        None => Ok(()),
    }
}

/// The operations allowed now, in `Operation::ALL` order.
pub fn allowed_operations(state: ReplicationState, ctx: &OperationContext) -> Vec<Operation> {
    Operation::ALL.into_iter().filter(|op| check_operation(state, ctx, *op).is_ok()).collect()
}

/// The next state after an event. Operations are judged on the state only (use
/// `check_operation` first for the context); a refused operation is `OperationNotAllowed`, a
/// system event that does not fit the state is `InvalidStateTransition`.
pub fn transition(state: ReplicationState, event: Event) -> Result<ReplicationState, Error> {
    let next = match (event, state) {
        (Event::Operation(op), _) => {
            return operation_target(state, op).ok_or(Error::OperationNotAllowed { state, operation: op, reason: None })
        }
        (Event::EnableProtection, S::NotEnabled) => S::WaitingForInitialReplication,
        (Event::InitialReplicationStarted, S::WaitingForInitialReplication) => S::InitialReplicationInProgress,
        (Event::InitialExportCompleted, S::InitialReplicationInProgress) => S::WaitingForInitialReplication,
        // A resync needed during a reverse replication or while paused shows in the host's
        // report and health; the state stays until replication runs again.
        (Event::ResyncNeeded, S::Protected) => S::ResyncRequired,
        (Event::ResyncStarted, S::Protected | S::ResyncRequired) => S::Resynchronizing,
        (
            Event::Replicating,
            S::WaitingForInitialReplication
            | S::InitialReplicationInProgress
            | S::ResyncRequired
            | S::Resynchronizing
            | S::ReverseReplicating,
        ) => S::Protected,
        (Event::FailoverStarted, S::PreparedForPlannedFailover) => S::FailoverInProgress,
        (Event::FailoverCompleted, S::FailoverInProgress) => S::FailedOverCommitPending,
        (Event::FailoverRolledBack, S::FailoverInProgress | S::PreparedForPlannedFailover) => S::Protected,
        _ => return Err(Error::InvalidStateTransition { state, event: format!("{event:?}") }),
    };
    Ok(next)
}

/// Whether `state` is where `event` leads (from some state): the event took effect before, as
/// when a job's step runs again after a vault restart. Such an event changes nothing.
pub fn already_applied(state: ReplicationState, event: Event) -> bool {
    ALL_STATES.iter().any(|s| transition(*s, event) == Ok(state))
}

/// Whether the event turns the replication direction around (FO-5: re-protect).
pub fn flips_direction(event: Event) -> bool {
    event == Event::Operation(Operation::ReProtect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: ReplicationState, events: &[Event]) -> Result<ReplicationState, Error> {
        events.iter().try_fold(start, |s, e| transition(s, *e))
    }

    fn op(o: Operation) -> Event {
        Event::Operation(o)
    }

    fn ctx(points: usize) -> OperationContext {
        OperationContext { recovery_points: points, ..Default::default() }
    }

    #[test]
    fn job_3_enable_to_protected() {
        let events = [Event::EnableProtection, Event::InitialReplicationStarted];
        assert_eq!(run(S::NotEnabled, &events), Ok(S::InitialReplicationInProgress));
        let events = [Event::EnableProtection, Event::InitialReplicationStarted, Event::Replicating];
        assert_eq!(run(S::NotEnabled, &events), Ok(S::Protected));
        assert_eq!(
            transition(S::InitialReplicationInProgress, Event::InitialExportCompleted),
            Ok(S::WaitingForInitialReplication)
        );
    }

    #[test]
    fn pol_8_import_only_while_an_export_waits() {
        let waiting = OperationContext { awaiting_import: true, ..Default::default() };
        assert!(check_operation(S::WaitingForInitialReplication, &waiting, Operation::ImportInitialReplica).is_ok());
        assert!(
            allowed_operations(S::WaitingForInitialReplication, &waiting).contains(&Operation::ImportInitialReplica)
        );
        let e = check_operation(S::WaitingForInitialReplication, &ctx(0), Operation::ImportInitialReplica)
            .expect_err("no export waits");
        assert!(e.to_string().contains("no offline export"), "{e}");
        assert!(check_operation(S::Protected, &waiting, Operation::ImportInitialReplica).is_err());
        assert!(!Operation::ImportInitialReplica.is_failover_type(), "a Contributor completes enabling protection");
    }

    #[test]
    fn job_3_pause_and_resume() {
        assert_eq!(transition(S::Protected, op(Operation::PauseReplication)), Ok(S::Paused));
        assert_eq!(transition(S::Paused, op(Operation::ResumeReplication)), Ok(S::Protected));
        assert_eq!(
            transition(S::Paused, op(Operation::PauseReplication)).map_err(|e| e.code()),
            Err("OperationNotAllowed")
        );
    }

    #[test]
    fn job_3_resync_path() {
        assert_eq!(transition(S::Protected, Event::ResyncNeeded), Ok(S::ResyncRequired));
        assert_eq!(run(S::ResyncRequired, &[op(Operation::RepairReplication), Event::Replicating]), Ok(S::Protected));
        assert_eq!(run(S::ResyncRequired, &[Event::ResyncStarted, Event::Replicating]), Ok(S::Protected));
    }

    #[test]
    fn job_3_planned_failover_path() {
        let events = [op(Operation::PlannedFailover), Event::FailoverStarted, Event::FailoverCompleted];
        assert_eq!(run(S::Protected, &events[..1]), Ok(S::PreparedForPlannedFailover));
        assert_eq!(run(S::Protected, &events[..2]), Ok(S::FailoverInProgress));
        assert_eq!(run(S::Protected, &events), Ok(S::FailedOverCommitPending));
        assert_eq!(
            transition(S::Paused, op(Operation::PlannedFailover)).map_err(|e| e.code()),
            Err("OperationNotAllowed")
        );
    }

    #[test]
    fn job_3_unplanned_failover_from_protected_resync_required_paused() {
        for s in [S::Protected, S::ResyncRequired, S::Paused] {
            let events = [op(Operation::UnplannedFailover), Event::FailoverCompleted];
            assert_eq!(run(s, &events), Ok(S::FailedOverCommitPending), "{s:?}");
        }
        for s in [S::NotEnabled, S::InitialReplicationInProgress, S::Committed, S::ReverseReplicating] {
            assert_eq!(
                transition(s, op(Operation::UnplannedFailover)).map_err(|e| e.code()),
                Err("OperationNotAllowed")
            );
        }
    }

    #[test]
    fn job_3_apply_recovery_point_stays_commit_pending() {
        assert_eq!(
            transition(S::FailedOverCommitPending, op(Operation::ApplyRecoveryPoint)),
            Ok(S::FailedOverCommitPending)
        );
        assert_eq!(
            transition(S::Protected, op(Operation::ApplyRecoveryPoint)).map_err(|e| e.code()),
            Err("OperationNotAllowed")
        );
    }

    #[test]
    fn fo_7_cancelled_failover_keeps_replication() {
        assert_eq!(transition(S::FailedOverCommitPending, op(Operation::FailoverCancel)), Ok(S::Protected));
        assert_eq!(transition(S::PreparedForPlannedFailover, op(Operation::FailoverCancel)), Ok(S::Protected));
        assert_eq!(transition(S::FailoverInProgress, Event::FailoverRolledBack), Ok(S::Protected));
        // Replication goes on after the cancel: the item can be paused and failed over again.
        let after = run(S::FailedOverCommitPending, &[op(Operation::FailoverCancel), op(Operation::PlannedFailover)]);
        assert_eq!(after, Ok(S::PreparedForPlannedFailover));
    }

    #[test]
    fn fo_5_commit_then_reprotect_flips_direction() {
        let events = [op(Operation::FailoverCommit), op(Operation::ReProtect), Event::Replicating];
        assert_eq!(run(S::FailedOverCommitPending, &events[..1]), Ok(S::Committed));
        assert_eq!(run(S::FailedOverCommitPending, &events[..2]), Ok(S::ReverseReplicating));
        assert_eq!(run(S::FailedOverCommitPending, &events), Ok(S::Protected));
        assert!(flips_direction(op(Operation::ReProtect)));
        assert!(!flips_direction(op(Operation::FailoverCommit)));
        assert!(!flips_direction(Event::Replicating));
    }

    #[test]
    fn fo_1_test_failover_needs_point_and_one_at_a_time() {
        assert_eq!(check_operation(S::Protected, &ctx(3), Operation::TestFailover), Ok(()));
        assert_eq!(check_operation(S::Paused, &ctx(3), Operation::TestFailover), Ok(()));
        assert_eq!(
            check_operation(S::Protected, &ctx(0), Operation::TestFailover).map_err(|e| e.to_string()),
            Err("Operation testFailover is not allowed in state Protected: there is no recovery point".to_string())
        );
        let running = OperationContext {
            test_failover_running: true,
            recovery_points: 3,
            reverse_direction: false,
            ..Default::default()
        };
        assert_eq!(
            check_operation(S::Protected, &running, Operation::TestFailover).map_err(|e| e.to_string()),
            Err("Operation testFailover is not allowed in state Protected: a test failover is already running"
                .to_string())
        );
        assert_eq!(check_operation(S::Protected, &running, Operation::TestFailoverCleanup), Ok(()));
        assert_eq!(
            check_operation(S::Protected, &ctx(3), Operation::TestFailoverCleanup).map_err(|e| e.code()),
            Err("OperationNotAllowed")
        );
        assert_eq!(
            check_operation(S::WaitingForInitialReplication, &ctx(0), Operation::TestFailover).map_err(|e| e.code()),
            Err("OperationNotAllowed")
        );
    }

    #[test]
    fn job_3_disable_from_most_states() {
        for s in ALL_STATES.into_iter().filter(|s| !matches!(s, S::NotEnabled | S::FailoverInProgress)) {
            assert_eq!(transition(s, op(Operation::DisableProtection)), Ok(S::NotEnabled), "{s:?}");
        }
        for s in [S::NotEnabled, S::FailoverInProgress] {
            assert_eq!(
                transition(s, op(Operation::DisableProtection)).map_err(|e| e.code()),
                Err("OperationNotAllowed")
            );
        }
        let running = OperationContext { test_failover_running: true, ..ctx(1) };
        assert_eq!(
            check_operation(S::Protected, &running, Operation::DisableProtection).map_err(|e| e.code()),
            Err("OperationNotAllowed")
        );
    }

    #[test]
    fn job_3_not_allowed_error_names_state_and_operation() {
        let err = transition(S::Committed, op(Operation::PlannedFailover)).err();
        assert_eq!(
            err,
            Some(Error::OperationNotAllowed {
                state: S::Committed,
                operation: Operation::PlannedFailover,
                reason: None
            })
        );
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("Operation plannedFailover is not allowed in state Committed")
        );
    }

    #[test]
    fn job_3_invalid_system_event() {
        assert_eq!(
            transition(S::Protected, Event::Replicating),
            Err(Error::InvalidStateTransition { state: S::Protected, event: "Replicating".into() })
        );
        assert_eq!(transition(S::NotEnabled, Event::EnableProtection), Ok(S::WaitingForInitialReplication));
        assert_eq!(
            transition(S::Protected, Event::EnableProtection).map_err(|e| e.code()),
            Err("InvalidStateTransition")
        );
    }

    #[test]
    fn job_3_allowed_operations_per_state() {
        use Operation::*;
        assert_eq!(
            allowed_operations(S::Protected, &ctx(2)),
            vec![
                TestFailover,
                PlannedFailover,
                UnplannedFailover,
                RepairReplication,
                PauseReplication,
                DisableProtection
            ]
        );
        assert_eq!(
            allowed_operations(S::FailedOverCommitPending, &ctx(2)),
            vec![ApplyRecoveryPoint, FailoverCommit, FailoverCancel, DisableProtection]
        );
        assert_eq!(allowed_operations(S::Committed, &ctx(2)), vec![ReProtect, DisableProtection]);
        assert_eq!(
            allowed_operations(S::ResyncRequired, &ctx(2)),
            vec![TestFailover, UnplannedFailover, RepairReplication, PauseReplication, DisableProtection]
        );
        // An interrupted failover can be rolled back (FO-7), once its job has ended.
        assert_eq!(allowed_operations(S::FailoverInProgress, &ctx(2)), vec![FailoverCancel]);
        let running = OperationContext { failover_job_running: true, ..ctx(2) };
        assert_eq!(allowed_operations(S::FailoverInProgress, &running), Vec::<Operation>::new());
        assert_eq!(allowed_operations(S::NotEnabled, &ctx(0)), Vec::<Operation>::new());
        assert_eq!(allowed_operations(S::Paused, &ctx(0)), vec![ResumeReplication, DisableProtection]);
    }

    #[test]
    fn fo_6_failover_allowed_in_both_directions() {
        let forward = ctx(2);
        let reverse = OperationContext { reverse_direction: true, ..forward };
        for s in [S::Protected, S::Paused, S::FailedOverCommitPending, S::Committed] {
            assert_eq!(allowed_operations(s, &forward), allowed_operations(s, &reverse), "{s:?}");
        }
        assert!(allowed_operations(S::Protected, &reverse).contains(&Operation::PlannedFailover));
    }

    #[test]
    fn job_3_reported_phases_are_events_of_the_one_state_machine() {
        use ReplicationPhase as P;
        let reported = |state, phase| Event::reported(phase).map(|e| transition(state, e));
        assert_eq!(
            reported(S::WaitingForInitialReplication, P::InitialInProgress),
            Some(Ok(S::InitialReplicationInProgress))
        );
        assert_eq!(reported(S::InitialReplicationInProgress, P::Replicating), Some(Ok(S::Protected)));
        assert_eq!(reported(S::WaitingForInitialReplication, P::Replicating), Some(Ok(S::Protected)), "POL-8 import");
        assert_eq!(
            reported(S::InitialReplicationInProgress, P::WaitingForImport),
            Some(Ok(S::WaitingForInitialReplication))
        );
        assert_eq!(reported(S::ReverseReplicating, P::Replicating), Some(Ok(S::Protected)), "FO-5 done");
        assert_eq!(reported(S::Protected, P::ResyncRequired), Some(Ok(S::ResyncRequired)));
        assert_eq!(reported(S::Protected, P::Resynchronizing), Some(Ok(S::Resynchronizing)));
        assert_eq!(reported(S::ResyncRequired, P::Replicating), Some(Ok(S::Protected)));
        // A reverse replication that needs a resync stays ReverseReplicating (its completion
        // ends the failover); a failed-over item ignores a stale report.
        assert!(matches!(reported(S::ReverseReplicating, P::ResyncRequired), Some(Err(_))));
        assert!(matches!(reported(S::FailedOverCommitPending, P::Replicating), Some(Err(_))));
        assert_eq!(reported(S::Protected, P::Retrying), None);
    }

    #[test]
    fn job_1_an_event_that_took_effect_before_is_recognized() {
        // A job's step run again after a vault restart finds its state already there.
        assert!(already_applied(S::FailoverInProgress, Event::FailoverStarted));
        assert!(already_applied(S::Paused, op(Operation::PauseReplication)));
        assert!(already_applied(S::Committed, op(Operation::FailoverCommit)));
        assert!(!already_applied(S::Protected, Event::FailoverStarted));
        assert!(!already_applied(S::NotEnabled, op(Operation::PauseReplication)));
    }
}
