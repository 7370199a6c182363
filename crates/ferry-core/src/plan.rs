//! Recovery plan rules (PLAN-1, PLAN-3, PLAN-4): what a plan may hold and how it is edited.
//!
//! - at most [`MAX_PLAN_VMS`] protected VMs, all of one cloud pair;
//! - Group 1 always exists; at most [`MAX_PLAN_GROUPS`] groups; group numbers follow positions,
//!   so deleting or moving a group renumbers the others; Group 1 cannot be deleted and only an
//!   empty group can be;
//! - a VM is in one group of a plan (it may be in any number of plans);
//! - a step has a name; a script step has a library-relative path ([`crate::paths`]); a manual
//!   action has instructions.
//!
//! Every edit works on a copy: [`apply_changes`] returns the edited plan or the first error, so
//! a refused edit changes nothing. Plan operations are allowed when every VM allows them
//! ([`check_plan_operation`]).

use ferry_types::plan::{PlanGroup, PlanItem, PlanStep, RecoveryPlan, StepPhase, MAX_PLAN_GROUPS, MAX_PLAN_VMS};
use ferry_types::protection::{Operation, ReplicationState};
use uuid::Uuid;

use crate::error::Error;
use crate::state::{check_operation, OperationContext};

/// Longest plan name.
pub const MAX_NAME_LEN: usize = 64;

/// A protected VM a change refers to, resolved by the caller, with the cloud pair it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub item: PlanItem,
    pub container_mapping: Uuid,
}

/// A plan change with its VM references resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddVms { group: u8, vms: Vec<Candidate> },
    RemoveVms { vms: Vec<Uuid> },
    MoveVms { vms: Vec<Uuid>, group: u8 },
    AddGroup,
    DeleteGroup { group: u8 },
    MoveGroup { group: u8, to: u8 },
    AddStep { group: u8, phase: StepPhase, step: PlanStep },
    RemoveStep { group: u8, phase: StepPhase, index: usize },
    SetDescription { description: String },
}

/// Checks a plan name: 1..=64 characters, letters, digits, `-`, `_`, `.` and spaces, not
/// starting or ending with a space.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let bad = |reason: &str| Err(Error::PlanInvalidName { reason: reason.into() });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.chars().count() > MAX_NAME_LEN {
        return bad("it is longer than 64 characters");
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return bad("it starts or ends with a space");
    }
    if !name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ')) {
        return bad("use letters, digits, '-', '_', '.' and spaces");
    }
    Ok(())
}

/// Checks one step (PLAN-3).
pub fn validate_step(step: &PlanStep) -> Result<(), Error> {
    let invalid = |reason: &str| Err(Error::PlanStepInvalid { step: step.name().to_string(), reason: reason.into() });
    if step.name().trim().is_empty() {
        return invalid("the step has no name");
    }
    if step.name().chars().count() > 128 {
        return invalid("the name is longer than 128 characters");
    }
    let mut seen = Vec::new();
    for t in step.failover_types() {
        if seen.contains(t) {
            return invalid("a failover type is listed twice");
        }
        seen.push(*t);
    }
    match step {
        PlanStep::Script { path, .. } => crate::paths::validate_relative_script_path(path),
        PlanStep::ManualAction { instructions, .. } => {
            if instructions.trim().is_empty() {
                return invalid("a manual action needs instructions");
            }
            if instructions.chars().count() > 4096 {
                return invalid("the instructions are longer than 4096 characters");
            }
            Ok(())
        }
    }
}

/// Checks a whole plan: group count and numbering, VM count, one group per VM, steps.
pub fn validate_plan(plan: &RecoveryPlan) -> Result<(), Error> {
    validate_name(&plan.name)?;
    if plan.groups.is_empty() {
        return Err(Error::PlanGroupNotFound { group: 1 });
    }
    if plan.groups.len() > MAX_PLAN_GROUPS {
        return Err(Error::PlanTooManyGroups { max: MAX_PLAN_GROUPS });
    }
    if plan.vm_count() > MAX_PLAN_VMS {
        return Err(Error::PlanTooManyVms { max: MAX_PLAN_VMS, requested: plan.vm_count() });
    }
    let mut seen: Vec<(Uuid, u8)> = Vec::new();
    for (i, g) in plan.groups.iter().enumerate() {
        for it in &g.items {
            if let Some((_, first)) = seen.iter().find(|(id, _)| *id == it.id) {
                return Err(Error::PlanVmAlreadyInPlan { vm: it.name.clone(), group: *first });
            }
            seen.push((it.id, i as u8 + 1));
        }
        for s in g.pre_steps.iter().chain(g.post_steps.iter()) {
            validate_step(s)?;
        }
    }
    Ok(())
}

/// Sets each group's number from its position.
pub fn renumber(plan: &mut RecoveryPlan) {
    for (i, g) in plan.groups.iter_mut().enumerate() {
        g.number = i as u8 + 1;
    }
}

fn group_index(plan: &RecoveryPlan, group: u8) -> Result<usize, Error> {
    let i = (group as usize).checked_sub(1).ok_or(Error::PlanGroupNotFound { group })?;
    if i >= plan.groups.len() {
        return Err(Error::PlanGroupNotFound { group });
    }
    Ok(i)
}

fn group_of(plan: &RecoveryPlan, id: Uuid) -> Option<usize> {
    plan.groups.iter().position(|g| g.items.iter().any(|x| x.id == id))
}

fn add_vms(plan: &mut RecoveryPlan, group: u8, vms: &[Candidate]) -> Result<(), Error> {
    let gi = group_index(plan, group)?;
    for c in vms {
        if c.container_mapping != plan.container_mapping {
            return Err(Error::PlanVmNotInPair { vm: c.item.name.clone() });
        }
        if let Some(g) = group_of(plan, c.item.id) {
            return Err(Error::PlanVmAlreadyInPlan { vm: c.item.name.clone(), group: g as u8 + 1 });
        }
        plan.groups[gi].items.push(c.item.clone());
    }
    if plan.vm_count() > MAX_PLAN_VMS {
        return Err(Error::PlanTooManyVms { max: MAX_PLAN_VMS, requested: plan.vm_count() });
    }
    Ok(())
}

fn take_vm(plan: &mut RecoveryPlan, id: Uuid) -> Result<PlanItem, Error> {
    let gi = group_of(plan, id).ok_or(Error::PlanVmNotInPlan { vm: id.to_string() })?;
    let pos =
        plan.groups[gi].items.iter().position(|x| x.id == id).ok_or(Error::PlanVmNotInPlan { vm: id.to_string() })?;
    Ok(plan.groups[gi].items.remove(pos))
}

/// Applies one change in place (use [`apply_changes`] for all-or-nothing edits).
pub fn apply_change(plan: &mut RecoveryPlan, change: &Change) -> Result<(), Error> {
    match change {
        Change::AddVms { group, vms } => add_vms(plan, *group, vms)?,
        Change::RemoveVms { vms } => {
            for id in vms {
                take_vm(plan, *id)?;
            }
        }
        Change::MoveVms { vms, group } => {
            let gi = group_index(plan, *group)?;
            for id in vms {
                let it = take_vm(plan, *id)?;
                plan.groups[gi].items.push(it);
            }
        }
        Change::AddGroup => {
            if plan.groups.len() >= MAX_PLAN_GROUPS {
                return Err(Error::PlanTooManyGroups { max: MAX_PLAN_GROUPS });
            }
            plan.groups.push(PlanGroup::new(plan.groups.len() as u8 + 1));
        }
        Change::DeleteGroup { group } => {
            let gi = group_index(plan, *group)?;
            if gi == 0 {
                return Err(Error::PlanGroupOneCannotBeDeleted);
            }
            if !plan.groups[gi].items.is_empty() {
                return Err(Error::PlanGroupNotEmpty { group: *group, vms: plan.groups[gi].items.len() });
            }
            plan.groups.remove(gi);
        }
        Change::MoveGroup { group, to } => {
            let from = group_index(plan, *group)?;
            let to = group_index(plan, *to)?;
            let g = plan.groups.remove(from);
            plan.groups.insert(to, g);
        }
        Change::AddStep { group, phase, step } => {
            let gi = group_index(plan, *group)?;
            validate_step(step)?;
            let g = &mut plan.groups[gi];
            let steps = match phase {
                StepPhase::Pre => &mut g.pre_steps,
                StepPhase::Post => &mut g.post_steps,
            };
            if steps.len() >= MAX_STEPS_PER_PHASE {
                return Err(Error::PlanStepInvalid {
                    step: step.name().to_string(),
                    reason: format!("a group holds at most {MAX_STEPS_PER_PHASE} pre-steps and as many post-steps"),
                });
            }
            steps.push(step.clone());
        }
        Change::RemoveStep { group, phase, index } => {
            let gi = group_index(plan, *group)?;
            let g = &mut plan.groups[gi];
            let steps = match phase {
                StepPhase::Pre => &mut g.pre_steps,
                StepPhase::Post => &mut g.post_steps,
            };
            if *index == 0 || *index > steps.len() {
                return Err(Error::PlanStepNotFound { group: *group, index: *index });
            }
            steps.remove(index - 1);
        }
        Change::SetDescription { description } => {
            if description.chars().count() > 1024 {
                return Err(Error::PlanInvalidDescription);
            }
            plan.description = description.clone();
        }
    }
    renumber(plan);
    Ok(())
}

/// Most pre-steps (or post-steps) of one group.
pub const MAX_STEPS_PER_PHASE: usize = 20;

/// Applies changes in order to a copy of `plan`; the first error refuses them all.
pub fn apply_changes(plan: &RecoveryPlan, changes: &[Change]) -> Result<RecoveryPlan, Error> {
    let mut p = plan.clone();
    for c in changes {
        apply_change(&mut p, c)?;
    }
    validate_plan(&p)?;
    Ok(p)
}

/// A VM of a plan as an operation sees it: its state and the facts of [`OperationContext`].
#[derive(Debug, Clone)]
pub struct VmState {
    pub name: String,
    pub state: ReplicationState,
    pub ctx: OperationContext,
}

/// PLAN-4: a plan operation is allowed when the plan has VMs and every VM allows it; otherwise
/// the error names each VM that does not, with its reason.
pub fn check_plan_operation(vms: &[VmState], op: Operation) -> Result<(), Error> {
    if !matches!(
        op,
        Operation::TestFailover
            | Operation::TestFailoverCleanup
            | Operation::PlannedFailover
            | Operation::UnplannedFailover
            | Operation::FailoverCommit
            | Operation::ReProtect
    ) {
        return Err(Error::PlanOperationUnknown { operation: op.as_str().to_string() });
    }
    if vms.is_empty() {
        return Err(Error::PlanHasNoVms);
    }
    // One job moves the whole plan one way: its VMs must all replicate in the same direction.
    let reverse: Vec<&str> = vms.iter().filter(|v| v.ctx.reverse_direction).map(|v| v.name.as_str()).collect();
    if !reverse.is_empty() && reverse.len() < vms.len() {
        let forward: Vec<&str> = vms.iter().filter(|v| !v.ctx.reverse_direction).map(|v| v.name.as_str()).collect();
        return Err(Error::PlanOperationNotAllowed {
            operation: op,
            refused: vec![format!(
                "the VMs do not all replicate in the same direction ({} from the primary site, {} back to it)",
                forward.join(", "),
                reverse.join(", ")
            )],
        });
    }
    let refused: Vec<String> = vms
        .iter()
        .filter_map(|v| check_operation(v.state, &v.ctx, op).err().map(|e| format!("{}: {e}", v.name)))
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Error::PlanOperationNotAllowed { operation: op, refused })
    }
}

/// The plan operations every VM allows now.
pub fn allowed_plan_operations(vms: &[VmState]) -> Vec<Operation> {
    [
        Operation::TestFailover,
        Operation::TestFailoverCleanup,
        Operation::PlannedFailover,
        Operation::UnplannedFailover,
        Operation::FailoverCommit,
        Operation::ReProtect,
    ]
    .into_iter()
    .filter(|op| check_plan_operation(vms, *op).is_ok())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::plan::PlanFailoverType;

    fn pair() -> Uuid {
        Uuid::from_u128(7)
    }

    fn plan() -> RecoveryPlan {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        RecoveryPlan {
            id: Uuid::from_u128(1),
            vault_id: Uuid::from_u128(2),
            name: "app".into(),
            description: String::new(),
            container_mapping: pair(),
            source_fabric: Uuid::from_u128(3),
            source_cloud: "GoldCloud1".into(),
            target_fabric: Uuid::from_u128(4),
            target_cloud: "GoldCloud2".into(),
            groups: vec![PlanGroup::new(1)],
            created_at: t,
            updated_at: t,
            version: 0,
            last_job: None,
            allowed_operations: vec![],
        }
    }

    fn vm(n: u128) -> Candidate {
        Candidate {
            item: PlanItem { id: Uuid::from_u128(1000 + n), name: format!("vm{n}") },
            container_mapping: pair(),
        }
    }

    fn code<T>(r: Result<T, Error>) -> &'static str {
        match r {
            Ok(_) => "Ok",
            Err(e) => e.code(),
        }
    }

    fn names(p: &RecoveryPlan, group: usize) -> Vec<String> {
        p.groups[group].items.iter().map(|i| i.name.clone()).collect()
    }

    #[test]
    fn plan_1_new_plan_has_group_one_and_takes_100_vms() {
        let vms: Vec<Candidate> = (0..100).map(vm).collect();
        let p = apply_changes(&plan(), &[Change::AddVms { group: 1, vms }]).expect("100 VMs fit");
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].number, 1);
        assert_eq!(p.vm_count(), 100);
    }

    #[test]
    fn plan_1_101st_vm_refused() {
        let p = apply_changes(&plan(), &[Change::AddVms { group: 1, vms: (0..100).map(vm).collect() }]).expect("100");
        let err = apply_changes(&p, &[Change::AddVms { group: 1, vms: vec![vm(100)] }]).err();
        assert_eq!(err.as_ref().map(|e| e.code()), Some("PlanTooManyVms"));
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("A recovery plan holds at most 100 VMs; this change would make it 101")
        );
        // In one request, too.
        assert_eq!(
            code(apply_changes(&plan(), &[Change::AddVms { group: 1, vms: (0..101).map(vm).collect() }])),
            "PlanTooManyVms"
        );
    }

    #[test]
    fn plan_1_eighth_group_refused() {
        let mut p = plan();
        for _ in 0..6 {
            p = apply_changes(&p, &[Change::AddGroup]).expect("group");
        }
        assert_eq!(p.groups.len(), 7);
        assert_eq!(p.groups.iter().map(|g| g.number).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7]);
        let err = apply_changes(&p, &[Change::AddGroup]).err();
        assert_eq!(err.as_ref().map(|e| e.code()), Some("PlanTooManyGroups"));
        assert_eq!(err.map(|e| e.to_string()).as_deref(), Some("A recovery plan has at most 7 groups"));
    }

    #[test]
    fn plan_1_vm_in_one_group_per_plan() {
        let p = apply_changes(&plan(), &[Change::AddGroup, Change::AddVms { group: 1, vms: vec![vm(1)] }]).expect("ok");
        let err = apply_changes(&p, &[Change::AddVms { group: 2, vms: vec![vm(1)] }]).err();
        assert_eq!(err.as_ref().map(|e| e.code()), Some("PlanVmAlreadyInPlan"));
        assert_eq!(err.map(|e| e.to_string()).as_deref(), Some("VM vm1 is already in group 1 of this plan"));
        // Twice in one request.
        assert_eq!(
            code(apply_changes(&plan(), &[Change::AddVms { group: 1, vms: vec![vm(2), vm(2)] }])),
            "PlanVmAlreadyInPlan"
        );
        // The same VM in another plan is fine: plans do not know each other.
        assert_eq!(code(apply_changes(&plan(), &[Change::AddVms { group: 1, vms: vec![vm(1)] }])), "Ok");
    }

    #[test]
    fn plan_1_vm_of_another_pair_refused() {
        let mut other = vm(5);
        other.container_mapping = Uuid::from_u128(99);
        let err = apply_changes(&plan(), &[Change::AddVms { group: 1, vms: vec![vm(1), other] }]).err();
        assert_eq!(err.map(|e| e.code()), Some("PlanVmNotInPair"));
    }

    #[test]
    fn plan_1_refused_edit_changes_nothing() {
        let p = apply_changes(&plan(), &[Change::AddVms { group: 1, vms: vec![vm(1)] }]).expect("ok");
        let before = p.clone();
        // The first two changes are valid; the third is not, so none applies.
        let r = apply_changes(
            &p,
            &[
                Change::AddGroup,
                Change::MoveVms { vms: vec![vm(1).item.id], group: 2 },
                Change::DeleteGroup { group: 1 },
            ],
        );
        assert_eq!(code(r), "PlanGroupOneCannotBeDeleted");
        assert_eq!(p, before);
    }

    #[test]
    fn plan_1_delete_group_renumbers_and_group_one_stays() {
        let p = apply_changes(
            &plan(),
            &[
                Change::AddGroup,
                Change::AddGroup,
                Change::AddVms { group: 1, vms: vec![vm(1)] },
                Change::AddVms { group: 3, vms: vec![vm(3)] },
            ],
        )
        .expect("ok");
        let p2 = apply_changes(&p, &[Change::DeleteGroup { group: 2 }]).expect("delete empty group 2");
        assert_eq!(p2.groups.len(), 2);
        assert_eq!(p2.groups[1].number, 2, "group 3 is now group 2");
        assert_eq!(names(&p2, 1), vec!["vm3"]);
        assert_eq!(code(apply_changes(&p2, &[Change::DeleteGroup { group: 1 }])), "PlanGroupOneCannotBeDeleted");
        assert_eq!(code(apply_changes(&p2, &[Change::DeleteGroup { group: 2 }])), "PlanGroupNotEmpty");
        assert_eq!(code(apply_changes(&p2, &[Change::DeleteGroup { group: 3 }])), "PlanGroupNotFound");
        assert_eq!(code(apply_changes(&p2, &[Change::AddVms { group: 0, vms: vec![vm(9)] }])), "PlanGroupNotFound");
    }

    #[test]
    fn plan_1_move_vms_and_groups() {
        let p = apply_changes(
            &plan(),
            &[
                Change::AddGroup,
                Change::AddGroup,
                Change::AddVms { group: 1, vms: vec![vm(1), vm(2)] },
                Change::AddVms { group: 2, vms: vec![vm(3)] },
                Change::MoveVms { vms: vec![vm(2).item.id], group: 3 },
            ],
        )
        .expect("ok");
        assert_eq!(
            (names(&p, 0), names(&p, 1), names(&p, 2)),
            (vec!["vm1".into()], vec!["vm3".into()], vec!["vm2".to_string()])
        );
        let p = apply_changes(&p, &[Change::MoveGroup { group: 3, to: 1 }]).expect("move");
        assert_eq!(names(&p, 0), vec!["vm2"], "the moved group starts first");
        assert_eq!(p.groups.iter().map(|g| g.number).collect::<Vec<_>>(), vec![1, 2, 3]);
        let p = apply_changes(&p, &[Change::RemoveVms { vms: vec![vm(3).item.id] }]).expect("remove");
        assert_eq!(p.vm_count(), 2);
        assert_eq!(code(apply_changes(&p, &[Change::RemoveVms { vms: vec![vm(3).item.id] }])), "PlanVmNotInPlan");
        assert_eq!(
            code(apply_changes(&p, &[Change::MoveVms { vms: vec![vm(8).item.id], group: 1 }])),
            "PlanVmNotInPlan"
        );
    }

    #[test]
    fn plan_3_steps_are_validated() {
        let script = |path: &str| PlanStep::Script { name: "s".into(), path: path.into(), failover_types: vec![] };
        let add = |step| Change::AddStep { group: 1, phase: StepPhase::Pre, step };
        assert_eq!(code(apply_changes(&plan(), &[add(script("db/start.sh"))])), "Ok");
        assert_eq!(code(apply_changes(&plan(), &[add(script("../x.sh"))])), "PathTraversal");
        assert_eq!(code(apply_changes(&plan(), &[add(script("/etc/x.sh"))])), "PathNotRelative");
        assert_eq!(code(apply_changes(&plan(), &[add(script(""))])), "PathEmpty");
        let manual = |instr: &str| PlanStep::ManualAction {
            name: "Check DNS".into(),
            instructions: instr.into(),
            failover_types: vec![PlanFailoverType::PlannedFailover],
        };
        assert_eq!(code(apply_changes(&plan(), &[add(manual("Point app.example to Chicago"))])), "Ok");
        assert_eq!(code(apply_changes(&plan(), &[add(manual(" "))])), "PlanStepInvalid");
        let unnamed = PlanStep::ManualAction { name: "".into(), instructions: "x".into(), failover_types: vec![] };
        assert_eq!(code(apply_changes(&plan(), &[add(unnamed)])), "PlanStepInvalid");
        let p = apply_changes(&plan(), &[add(script("a.sh")), add(script("b.sh"))]).expect("ok");
        let p = apply_changes(&p, &[Change::RemoveStep { group: 1, phase: StepPhase::Pre, index: 1 }]).expect("ok");
        assert_eq!(p.groups[0].pre_steps, vec![script("b.sh")]);
        assert_eq!(
            code(apply_changes(&p, &[Change::RemoveStep { group: 1, phase: StepPhase::Post, index: 1 }])),
            "PlanStepNotFound"
        );
    }

    #[test]
    fn plan_3_step_failover_types() {
        let m = PlanStep::ManualAction {
            name: "m".into(),
            instructions: "i".into(),
            failover_types: vec![PlanFailoverType::PlannedFailover, PlanFailoverType::UnplannedFailover],
        };
        assert!(m.applies_to(PlanFailoverType::PlannedFailover));
        assert!(!m.applies_to(PlanFailoverType::TestFailover));
        let all = PlanStep::Script { name: "s".into(), path: "s.sh".into(), failover_types: vec![] };
        assert!(PlanFailoverType::ALL.iter().all(|t| all.applies_to(*t)));
    }

    #[test]
    fn plan_1_names() {
        assert_eq!(code(validate_name("SAP tier 1")), "Ok");
        assert_eq!(code(validate_name("")), "PlanInvalidName");
        assert_eq!(code(validate_name("a/b")), "PlanInvalidName");
        assert_eq!(code(validate_name(&"x".repeat(65))), "PlanInvalidName");
    }

    #[test]
    fn plan_4_operation_needs_every_vm_to_allow_it() {
        let ctx = OperationContext { recovery_points: 2, ..Default::default() };
        let vms = vec![
            VmState { name: "web1".into(), state: ReplicationState::Protected, ctx },
            VmState { name: "db1".into(), state: ReplicationState::InitialReplicationInProgress, ctx },
        ];
        let err = check_plan_operation(&vms, Operation::PlannedFailover).err();
        assert_eq!(err.as_ref().map(|e| e.code()), Some("PlanOperationNotAllowed"));
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("db1: Operation plannedFailover is not allowed in state InitialReplicationInProgress"),
            "{msg}"
        );
        assert!(!msg.contains("web1"), "{msg}");
        assert_eq!(check_plan_operation(&vms[..1], Operation::PlannedFailover), Ok(()));
        assert_eq!(code(check_plan_operation(&[], Operation::PlannedFailover)), "PlanHasNoVms");
        // Mixed directions: no plan operation is offered or allowed (found by the soak).
        let mut back = VmState {
            name: "db1".into(),
            state: ReplicationState::Protected,
            ctx: OperationContext { recovery_points: 3, reverse_direction: true, ..Default::default() },
        };
        let fwd = VmState {
            name: "web1".into(),
            ctx: OperationContext { reverse_direction: false, ..back.ctx },
            ..back.clone()
        };
        let mixed = [back.clone(), fwd.clone()];
        assert_eq!(code(check_plan_operation(&mixed, Operation::PlannedFailover)), "PlanOperationNotAllowed");
        assert!(allowed_plan_operations(&mixed).is_empty());
        back.ctx.reverse_direction = false;
        assert!(allowed_plan_operations(&[back, fwd]).contains(&Operation::PlannedFailover));
        assert_eq!(code(check_plan_operation(&vms[..1], Operation::DisableProtection)), "PlanOperationUnknown");
        assert_eq!(
            allowed_plan_operations(&vms[..1]),
            vec![Operation::TestFailover, Operation::PlannedFailover, Operation::UnplannedFailover]
        );
        let committed = vec![VmState { name: "web1".into(), state: ReplicationState::Committed, ctx }];
        assert_eq!(allowed_plan_operations(&committed), vec![Operation::ReProtect]);
    }
}
