//! The prepare page's replication policy forms (POL-1..9): new and edit forms, their fields,
//! and the form's parsing into a policy request.

use super::*;

pub(super) fn freq_label(secs: u32) -> String {
    match secs {
        30 => "30 seconds".into(),
        300 => "5 minutes".into(),
        900 => "15 minutes".into(),
        s => format!("{s} s"),
    }
}

pub(super) fn initial_label(i: &InitialReplication) -> String {
    match i {
        InitialReplication::OverNetworkNow => "Over the network, now".into(),
        InitialReplication::OverNetworkScheduled { start_at } => format!("Over the network at {}", fmt_time(*start_at)),
        InitialReplication::Offline { export_path, import_path } => {
            format!("Offline: export {export_path}, import {import_path}")
        }
    }
}

pub(super) fn policy_form(
    user: &User,
    base: &str,
    d: &Data,
    clouds: &[(SiteObjectRef, String)],
    prev: Option<&Form>,
) -> Markup {
    let default_version = d
        .fabrics
        .iter()
        .flat_map(|f| f.inventory.hosts.iter())
        .find(|h| !h.qemu_version.is_empty())
        .map(|h| format!("qemu-{}", h.qemu_version.split('.').take(2).collect::<Vec<_>>().join(".")))
        .unwrap_or_else(|| "qemu-7.2".into());
    let defaults = Form(
        [
            ("host_version", default_version.as_str()),
            ("authentication", "Certificate"),
            ("copy_frequency_secs", "300"),
            ("recovery_point_retention_hours", "0"),
            ("initial_method", "now"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let f = prev.unwrap_or(&defaults);
    html! {
        div class="card" {
            h3 { "Create a replication policy" }
            form method="post" action={ (base) "/policies" } class="grid" id="policy-form" {
                (csrf_field(user))
                (policy_fields(f))
                label { "Associate source cloud (POL-9)"
                    select name="source" {
                        option value="" { "— later —" }
                        @for (r, l) in clouds { option value=(obj_value(r)) selected[f.get("source") == Some(obj_value(r).as_str())] { (l) } }
                    }
                }
                label { "with target cloud"
                    select name="target" {
                        option value="" { "— later —" }
                        @for (r, l) in clouds { option value=(obj_value(r)) selected[f.get("target") == Some(obj_value(r).as_str())] { (l) } }
                    }
                }
                button type="submit" id="create-policy" { "Create policy" }
            }
        }
    }
}

/// The fields of a policy (POL-1..POL-8), filled in from `f`; shared by the create and edit forms.
pub(super) fn policy_fields(f: &Form) -> Markup {
    let v = |name: &str| f.get(name).unwrap_or_default().to_string();
    let sel = |name: &str, value: &str| f.get(name) == Some(value);
    html! {
        label { "Name" input name="name" value=(v("name")); }
        label { "Host version (POL-1)" input name="host_version" value=(v("host_version")); }
        label { "Authentication (POL-2)"
            select name="authentication" {
                option value="Certificate" selected[sel("authentication", "Certificate")] { "Certificate (port 8084)" }
                option value="Kerberos" selected[sel("authentication", "Kerberos")] { "Kerberos (port 8083)" }
            }
        }
        label { "Replication port (blank: default)" input name="port" value=(v("port")); }
        label { "Copy frequency (POL-3)"
            select name="copy_frequency_secs" {
                @for (s, l) in [("30", "30 seconds"), ("300", "5 minutes"), ("900", "15 minutes")] {
                    option value=(s) selected[sel("copy_frequency_secs", s)] { (l) }
                }
            }
        }
        label { "Additional recovery points, hours (POL-4)" input name="recovery_point_retention_hours" value=(v("recovery_point_retention_hours")); }
        label { "App-consistent snapshot every … hours (blank: off, POL-5)" input name="app_consistent_frequency_hours" value=(v("app_consistent_frequency_hours")); }
        label class="check" { input type="checkbox" name="compression" checked[f.checked("compression")]; "Compress data transfer (POL-6)" }
        label class="check" { input type="checkbox" name="delete_replica_on_disable" checked[f.checked("delete_replica_on_disable")]; "Delete replica VM when protection is disabled (POL-7)" }
        label { "Initial replication (POL-8)"
            select name="initial_method" {
                option value="now" selected[sel("initial_method", "now")] { "Over the network, now" }
                option value="scheduled" selected[sel("initial_method", "scheduled")] { "Over the network, at a scheduled time" }
                option value="offline" selected[sel("initial_method", "offline")] { "Offline (export / import paths)" }
            }
        }
        label { "Scheduled start (UTC)" input type="datetime-local" name="start_at" value=(v("start_at")); }
        label { "Offline export path (source side)" input name="export_path" value=(v("export_path")); }
        label { "Offline import path (target side)" input name="import_path" value=(v("import_path")); }
    }
}

/// A policy's values as the policy form sends them.
pub(super) fn policy_as_form(p: &PolicySpec) -> Form {
    let mut f: Vec<(String, String)> = vec![
        ("name".into(), p.name.clone()),
        ("host_version".into(), p.host_version.clone()),
        ("authentication".into(), format!("{:?}", p.authentication)),
        ("port".into(), p.port.map(|x| x.to_string()).unwrap_or_default()),
        ("copy_frequency_secs".into(), p.copy_frequency_secs.to_string()),
        ("recovery_point_retention_hours".into(), p.recovery_point_retention_hours.to_string()),
        (
            "app_consistent_frequency_hours".into(),
            p.app_consistent_frequency_hours.map(|h| h.to_string()).unwrap_or_default(),
        ),
    ];
    if p.compression {
        f.push(("compression".into(), "on".into()));
    }
    if p.delete_replica_on_disable {
        f.push(("delete_replica_on_disable".into(), "on".into()));
    }
    match &p.initial_replication {
        InitialReplication::OverNetworkNow => f.push(("initial_method".into(), "now".into())),
        InitialReplication::OverNetworkScheduled { start_at } => {
            f.push(("initial_method".into(), "scheduled".into()));
            f.push(("start_at".into(), start_at.format("%Y-%m-%dT%H:%M").to_string()));
        }
        InitialReplication::Offline { export_path, import_path } => {
            f.push(("initial_method".into(), "offline".into()));
            f.push(("export_path".into(), export_path.clone()));
            f.push(("import_path".into(), import_path.clone()));
        }
    }
    Form(f)
}

/// Edit a policy: its fields filled in (or as last submitted), saved with the version shown so
/// a concurrent change is refused instead of overwritten.
pub(super) fn policy_edit_form(user: &User, base: &str, p: &Policy, prev: Option<&Form>) -> Markup {
    let current = policy_as_form(&p.spec);
    let f = prev.unwrap_or(&current);
    let version = prev.and_then(|f| f.get("version").map(str::to_string)).unwrap_or_else(|| p.version.to_string());
    html! {
        div class="card" id="policy-edit" {
            h3 { "Edit replication policy " (p.spec.name) }
            p class="muted" { "Saving pushes the policy to every site of its cloud pairs; every VM under it follows (POL-9)." }
            form method="post" action={ (base) "/policies/" (p.id) } class="grid" id="policy-edit-form" {
                (csrf_field(user))
                input type="hidden" name="version" value=(version);
                (policy_fields(f))
                button type="submit" id="save-policy" { "Save policy" }
                a href={ (base) "#policy" } { "Cancel" }
            }
        }
    }
}

pub(super) fn num<T: std::str::FromStr>(form: &Form, field: &str, label: &str) -> Result<Option<T>, ApiFailure> {
    form.get(field)
        .map(|s| {
            s.parse::<T>()
                .map_err(|_| ApiFailure::bad_request("InvalidValue", format!("{label}: '{s}' is not a whole number")))
        })
        .transpose()
}

pub(super) fn policy_request(form: &Form) -> Result<CreatePolicy, ApiFailure> {
    let authentication = match form.get("authentication") {
        Some("Kerberos") => Authentication::Kerberos,
        _ => Authentication::Certificate,
    };
    let initial_replication = match form.get("initial_method") {
        Some("scheduled") => {
            let raw = form.get("start_at").ok_or_else(|| {
                ApiFailure::bad_request("InvalidValue", "Give the scheduled start of the initial replication")
            })?;
            let t = NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M")
                .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S"))
                .map_err(|_| ApiFailure::bad_request("InvalidValue", format!("'{raw}' is not a date and time")))?;
            InitialReplication::OverNetworkScheduled { start_at: t.and_utc() }
        }
        Some("offline") => InitialReplication::Offline {
            export_path: form.get("export_path").unwrap_or_default().to_string(),
            import_path: form.get("import_path").unwrap_or_default().to_string(),
        },
        _ => InitialReplication::OverNetworkNow,
    };
    let spec = PolicySpec {
        name: form.get("name").unwrap_or_default().to_string(),
        host_version: form.get("host_version").unwrap_or_default().to_string(),
        authentication,
        port: num(form, "port", "Replication port")?,
        copy_frequency_secs: num(form, "copy_frequency_secs", "Copy frequency")?.unwrap_or(300),
        recovery_point_retention_hours: num(form, "recovery_point_retention_hours", "Recovery point retention")?
            .unwrap_or(0),
        app_consistent_frequency_hours: num(form, "app_consistent_frequency_hours", "App-consistent frequency")?,
        compression: form.checked("compression"),
        delete_replica_on_disable: form.checked("delete_replica_on_disable"),
        initial_replication,
    };
    let associate = match (form.get("source"), form.get("target")) {
        (None, None) => vec![],
        _ => vec![CloudPair {
            source: parse_ref(form, "source", "source cloud")?,
            target: parse_ref(form, "target", "target cloud")?,
        }],
    };
    Ok(CreatePolicy { spec, associate })
}
