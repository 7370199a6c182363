//! A recovery plan's edit forms read into plan changes (PLAN-1, PLAN-3), and the message that
//! says what a change did.

use super::*;

pub(super) fn number<T: std::str::FromStr>(form: &Form, field: &str, what: &str) -> Result<T, ApiFailure> {
    let raw = form.get(field).ok_or_else(|| ApiFailure::bad_request("InvalidValue", format!("Give the {what}")))?;
    raw.parse().map_err(|_| ApiFailure::bad_request("InvalidValue", format!("'{raw}' is not a valid {what}")))
}

pub(super) fn phase_of(form: &Form) -> Result<StepPhase, ApiFailure> {
    match form.get("phase") {
        Some("Pre") => Ok(StepPhase::Pre),
        Some("Post") => Ok(StepPhase::Post),
        other => Err(ApiFailure::bad_request(
            "InvalidValue",
            format!("'{}' is not a step phase; use Pre or Post", other.unwrap_or_default()),
        )),
    }
}

pub(super) fn step_of(form: &Form) -> Result<PlanStep, ApiFailure> {
    let name = form.get("name").unwrap_or_default().to_string();
    let failover_types = form
        .all("failover_type")
        .iter()
        .map(|t| {
            PlanFailoverType::ALL
                .into_iter()
                .find(|x| x.as_str() == t)
                .ok_or_else(|| ApiFailure::bad_request("InvalidValue", format!("'{t}' is not a failover type")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match form.get("kind") {
        Some("Script") => {
            Ok(PlanStep::Script { name, path: form.get("path").unwrap_or_default().to_string(), failover_types })
        }
        Some("ManualAction") => Ok(PlanStep::ManualAction {
            name,
            instructions: form.get("instructions").unwrap_or_default().to_string(),
            failover_types,
        }),
        _ => Err(ApiFailure::bad_request("InvalidValue", "Choose a script or a manual action")),
    }
}

pub(super) fn vm_of(form: &Form) -> Result<String, ApiFailure> {
    form.get("vm").map(str::to_string).ok_or_else(|| ApiFailure::bad_request("InvalidValue", "Choose a VM"))
}

/// The plan change a submitted edit form asks for.
pub(super) fn change_of(form: &Form) -> Result<PlanChange, ApiFailure> {
    let group = || number::<u8>(form, "group", "group number");
    Ok(match form.get("change").unwrap_or_default() {
        "addGroup" => PlanChange::AddGroup,
        "deleteGroup" => PlanChange::DeleteGroup { group: group()? },
        "moveGroup" => PlanChange::MoveGroup { group: group()?, to: number(form, "to", "group position")? },
        "addVms" => {
            let vms = form.all("vm");
            if vms.is_empty() {
                return Err(ApiFailure::bad_request("InvalidValue", "Choose at least one VM to add"));
            }
            PlanChange::AddVms { group: group()?, vms }
        }
        "removeVm" => PlanChange::RemoveVms { vms: vec![vm_of(form)?] },
        "moveVm" => PlanChange::MoveVms { vms: vec![vm_of(form)?], group: group()? },
        "addStep" => PlanChange::AddStep { group: group()?, phase: phase_of(form)?, step: step_of(form)? },
        "removeStep" => PlanChange::RemoveStep {
            group: group()?,
            phase: phase_of(form)?,
            index: number(form, "index", "step number")?,
        },
        "setDescription" => {
            PlanChange::SetDescription { description: form.get("description").unwrap_or_default().to_string() }
        }
        other => return Err(ApiFailure::bad_request("InvalidValue", format!("'{other}' is not a plan change"))),
    })
}

/// What an accepted change did, in words (`before` and `after` name the VMs).
pub(super) fn done_message(c: &PlanChange, before: &RecoveryPlan, after: &RecoveryPlan) -> String {
    let names = |refs: &[String]| {
        refs.iter()
            .map(|r| {
                before
                    .items()
                    .chain(after.items())
                    .find(|i| i.id.to_string() == *r || i.name == *r)
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| r.clone())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match c {
        PlanChange::AddGroup => format!("Group {} added", after.groups.len()),
        PlanChange::DeleteGroup { group } if (*group as usize) <= after.groups.len() => {
            format!("Group {group} deleted; the groups after it were renumbered")
        }
        PlanChange::DeleteGroup { group } => format!("Group {group} deleted"),
        PlanChange::MoveGroup { group, to } => {
            format!("Group {group} is now Group {to}; the groups between were renumbered")
        }
        PlanChange::AddVms { group, vms } => format!("Added to Group {group}: {}", names(vms)),
        PlanChange::RemoveVms { vms } => format!("{} removed from the plan", names(vms)),
        PlanChange::MoveVms { vms, group } => format!("{} moved to Group {group}", names(vms)),
        PlanChange::AddStep { group, phase, step } => {
            format!("{}-step '{}' added to Group {group}", phase_name(*phase), step.name())
        }
        PlanChange::RemoveStep { group, phase, index } => {
            format!("{}-step {index} of Group {group} removed", phase_name(*phase))
        }
        PlanChange::SetDescription { .. } => "Description saved".into(),
    }
}
