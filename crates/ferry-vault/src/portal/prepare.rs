//! "Prepare infrastructure", in the scenario's order: 1 protection goal (FAB-6), 2 source: add a
//! site manager with a registration key and see the registered sites and clouds (FAB-2..4),
//! 3 target: the clouds a source can pair with and the pairs (FAB-7), 4 replication policy:
//! create with every POL field and associate (POL-1..9), 5 network mapping with the per-pair
//! availability view (NET-1), 6 storage mapping (STO-1); then where alerts go (JOB-4).
//!
//! Every change calls the REST API's handler, so the portal validates exactly as the API does;
//! a refused change re-renders the page with the API's error (code, message, causes,
//! recommendation) and, for the policy form, the values entered.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use base64::Engine;
use chrono::NaiveDateTime;
use ferry_types::alert::{AlertSettings, AlertSettingsSpec, AlertTriggers, EmailSpec, WebhookSpec};
use ferry_types::auth::Role;
use ferry_types::fabric::Fabric;
use ferry_types::mapping::{
    CloudPair, ContainerMapping, CreateContainerMapping, CreateNetworkMapping, CreateStorageMapping,
    NetworkAvailability, NetworkMapping, SiteObjectRef, StorageMapping,
};
use ferry_types::policy::{Authentication, CreatePolicy, InitialReplication, Policy, PolicySpec};
use ferry_types::vault::{Hypervisor, ProtectionGoal, ReplicateTo, Vault};
use maud::{html, Markup};
use uuid::Uuid;

use super::{
    csrf_field, error_page, fmt_age, fmt_time, load_vault, page, redirect_with, Form, Frame, Nav, Notice, User,
};
use crate::api::vaults::{IssuedKey, RegistrationKeyInfo};
use crate::error::ApiFailure;
use crate::extract::ApiJson;
use crate::state::AppState;

mod alerts_form;
mod policy_form;
use alerts_form::*;
use policy_form::*;

/// What the page shows besides the stored configuration.
#[derive(Default)]
struct Extra {
    notice: Option<Notice>,
    status: Option<StatusCode>,
    /// A registration key issued by this request (its file is shown only now).
    issued: Option<IssuedKey>,
    /// The policy form as submitted, to fill it again after an error.
    policy_form: Option<Form>,
    /// The policy whose edit form is shown (POL-1..POL-9 edits).
    edit_policy: Option<Uuid>,
}

struct Data {
    vault: Vault,
    keys: Vec<RegistrationKeyInfo>,
    fabrics: Vec<Fabric>,
    policies: Vec<Policy>,
    pairs: Vec<ContainerMapping>,
    net_maps: Vec<NetworkMapping>,
    availability: Vec<NetworkAvailability>,
    sto_maps: Vec<StorageMapping>,
    alerts: AlertSettings,
}

async fn load(st: &AppState, user: &User, vault: &str) -> Result<Data, ApiFailure> {
    let s = || State(st.clone());
    let a = || user.auth.clone();
    let p = || Path(vault.to_string());
    let Json(vault) = crate::api::vaults::get_vault(s(), a(), p()).await?;
    let Json(keys) = crate::api::vaults::list_keys(s(), a(), p()).await?;
    let Json(fabrics) = crate::api::fabrics::list_fabrics(s(), a(), p()).await?;
    let Json(policies) = crate::api::policies::list_policies(s(), a(), p()).await?;
    let Json(pairs) = crate::api::mappings::list_container_mappings(s(), a(), p()).await?;
    let Json(net_maps) = crate::api::mappings::list_network_mappings(s(), a(), p()).await?;
    let Json(availability) = crate::api::mappings::network_availability(s(), a(), p()).await?;
    let Json(sto_maps) = crate::api::mappings::list_storage_mappings(s(), a(), p()).await?;
    let Json(alerts) = crate::api::alerts::get_alert_settings(s(), a(), p()).await?;
    Ok(Data { vault, keys, fabrics, policies, pairs, net_maps, availability, sto_maps, alerts })
}

/// Names of inventory objects for display.
struct Names<'a> {
    fabrics: HashMap<Uuid, &'a Fabric>,
}

impl<'a> Names<'a> {
    fn new(fabrics: &'a [Fabric]) -> Self {
        Self { fabrics: fabrics.iter().map(|f| (f.id, f)).collect() }
    }
    fn site(&self, id: Uuid) -> String {
        self.fabrics.get(&id).map(|f| f.name.clone()).unwrap_or_else(|| id.to_string())
    }
    fn cloud(&self, r: &SiteObjectRef) -> String {
        let f = self.fabrics.get(&r.fabric);
        let name = f.and_then(|f| f.inventory.cloud(&r.id)).map(|c| c.name.clone()).unwrap_or_else(|| r.id.clone());
        format!("{} / {name}", self.site(r.fabric))
    }
    fn network(&self, r: &SiteObjectRef) -> String {
        let f = self.fabrics.get(&r.fabric);
        let name =
            f.and_then(|f| f.inventory.vm_network(&r.id)).map(|n| n.name.clone()).unwrap_or_else(|| r.id.clone());
        format!("{} / {name}", self.site(r.fabric))
    }
    fn classification(&self, r: &SiteObjectRef) -> String {
        let f = self.fabrics.get(&r.fabric);
        let name = f
            .and_then(|f| f.inventory.storage_classifications.iter().find(|c| c.id == r.id))
            .map(|c| c.name.clone())
            .unwrap_or_else(|| r.id.clone());
        format!("{} / {name}", self.site(r.fabric))
    }
}

fn obj_value(r: &SiteObjectRef) -> String {
    format!("{}|{}", r.fabric, r.id)
}

fn parse_ref(form: &Form, field: &str, what: &str) -> Result<SiteObjectRef, ApiFailure> {
    let raw = form.get(field).ok_or_else(|| ApiFailure::bad_request("InvalidValue", format!("Choose the {what}")))?;
    let (f, id) = raw
        .split_once('|')
        .and_then(|(f, id)| Some((Uuid::parse_str(f).ok()?, id)))
        .ok_or_else(|| ApiFailure::bad_request("InvalidValue", format!("'{raw}' is not a valid {what}")))?;
    Ok(SiteObjectRef { fabric: f, id: id.to_string() })
}

pub async fn show(
    State(st): State<AppState>,
    user: User,
    Path(vault): Path<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let edit_policy = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "edit_policy")
        .and_then(|(_, v)| Uuid::parse_str(&v).ok());
    render(&st, &user, &vault, Extra { edit_policy, ..Default::default() }).await
}

async fn render(st: &AppState, user: &User, vault: &str, extra: Extra) -> Response {
    let d = match load(st, user, vault).await {
        Ok(d) => d,
        Err(e) => return error_page(user, None, e),
    };
    let content = content(st, user, &d, &extra);
    let status = extra.status.unwrap_or(StatusCode::OK);
    page(
        Frame {
            user,
            vault: Some(&d.vault),
            nav: Nav::Prepare,
            title: "Prepare infrastructure",
            refresh: None,
            notice: extra.notice,
        },
        content,
        status,
    )
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn content(st: &AppState, user: &User, d: &Data, extra: &Extra) -> Markup {
    let base = format!("/portal/vaults/{}/prepare", d.vault.id);
    let names = Names::new(&d.fabrics);
    let contributor = user.can(Role::Contributor);
    let now = st.clock.now();
    let synced_clouds: Vec<(SiteObjectRef, String)> = d
        .fabrics
        .iter()
        .flat_map(|f| {
            f.inventory.clouds.iter().filter(|c| c.sync_enabled).map(|c| {
                let r = SiteObjectRef { fabric: f.id, id: c.id.clone() };
                let label = names.cloud(&r);
                (r, label)
            })
        })
        .collect();
    let goal = d.vault.protection_goal.as_ref();
    html! {
        ol class="steps" {
            li { a href="#goal" { "Protection goal" } }
            li { a href="#source" { "Source" } }
            li { a href="#target" { "Target" } }
            li { a href="#policy" { "Replication policy" } }
            li { a href="#network" { "Network mapping" } }
            li { a href="#storage" { "Storage mapping" } }
            li { a href="#alerts" { "Alerts" } }
        }

        section id="goal" {
            h2 { "1. Protection goal" }
            @match goal {
                Some(g) => p id="goal-current" {
                    "Replicate to a recovery site · KVM · managed by a Ferry site manager: " (yes_no(g.managed_by_site_manager))
                    " · second site manager: " (yes_no(g.second_site_manager))
                    @if !g.second_site_manager { " (source and target clouds on one site manager)" }
                },
                None => p id="goal-current" class="muted" { "Not set." },
            }
            @if contributor {
                form method="post" action={ (base) "/goal" } class="grid" id="goal-form" {
                    (csrf_field(user))
                    label { "Where do you want to replicate to?" select name="replicate_to" { option value="RecoverySite" { "To a recovery site" } } }
                    label { "Hypervisor" select name="hypervisor" { option value="Kvm" { "KVM / QEMU" } } }
                    label { "Are the VMs managed by a Ferry site manager?"
                        select name="managed_by_site_manager" {
                            option value="yes" selected[goal.is_none_or(|g| g.managed_by_site_manager)] { "Yes" }
                            option value="no" selected[goal.is_some_and(|g| !g.managed_by_site_manager)] { "No" }
                        }
                    }
                    label { "Do you have a second site manager?"
                        select name="second_site_manager" {
                            option value="yes" selected[goal.is_none_or(|g| g.second_site_manager)] { "Yes" }
                            option value="no" selected[goal.is_some_and(|g| !g.second_site_manager)] { "No (one site manager, two clouds)" }
                        }
                    }
                    button type="submit" { "Save protection goal" }
                }
            }
        }

        section id="source" {
            h2 { "2. Source: site managers" }
            @if contributor {
                div class="card" {
                    h3 { "Add a site manager" }
                    p { "Issue a registration key (valid for 5 days, usable once), download it and register the site manager with it:" }
                    pre { "ferry site register --config site.toml --data-dir DIR --key ferry-registration.key" }
                    form method="post" action={ (base) "/keys" } id="issue-key-form" {
                        (csrf_field(user))
                        button type="submit" id="issue-key" { "Issue registration key" }
                    }
                    @if let Some(k) = &extra.issued {
                        div class="issued" id="issued-key" {
                            p { "Registration key " code { (k.info.id) } " expires " (fmt_time(k.info.expires_at)) ". It is shown only now." }
                            a class="button" id="download-key" download={ "ferry-registration-" (d.vault.name) ".key" }
                                href={ "data:application/octet-stream;base64," (base64::engine::general_purpose::STANDARD.encode(k.file.as_bytes())) } { "Download key file" }
                            textarea readonly rows="6" id="key-file" { (k.file) }
                        }
                    }
                }
            }
            h3 { "Registration keys" }
            @if d.keys.is_empty() { p class="muted" { "None issued." } }
            @else {
                table id="keys" {
                    thead { tr { th { "Key" } th { "Issued" } th { "Expires" } th { "Status" } @if contributor { th {} } } }
                    tbody {
                        @for k in &d.keys {
                            @let status = if k.revoked_at.is_some() { "Revoked".to_string() }
                                else if let Some(f) = k.used_by_fabric { format!("Used by {}", names.site(f)) }
                                else if k.expires_at < now { "Expired".to_string() }
                                else { "Unused".to_string() };
                            tr {
                                td { code { (k.id) } }
                                td { (fmt_time(k.issued_at)) }
                                td { (fmt_time(k.expires_at)) }
                                td { (status) }
                                @if contributor {
                                    td { @if k.revoked_at.is_none() && k.used_at.is_none() {
                                        form method="post" action={ (base) "/keys/" (k.id) "/revoke" } class="inline" {
                                            (csrf_field(user)) button type="submit" class="small" { "Revoke" }
                                        }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
            h3 { "Registered site managers" }
            @if d.fabrics.is_empty() { p class="muted" { "No site manager registered yet." } }
            @for f in &d.fabrics {
                div class="card site" id={ "site-" (f.name) } {
                    h4 { (f.name) }
                    p class="muted" {
                        @for (i, p) in f.providers.iter().enumerate() {
                            @if i > 0 { ", " }
                            (p.server_name) " (" (p.version) @if p.active { ", active" } ")"
                        }
                        " · last report: "
                        @match f.last_heartbeat { Some(t) => { (fmt_age((now - t).num_seconds())) " ago" }, None => "never" }
                        " · hosts connected: " (f.inventory.hosts.iter().filter(|h| h.connected).count()) "/" (f.inventory.hosts.len())
                        " · VMs: " (f.inventory.vms.len())
                    }
                    table class="clouds" {
                        thead { tr { th { "Cloud" } th { "Host groups" } th { "Metadata sync" } @if contributor { th {} } } }
                        tbody {
                            @for c in &f.inventory.clouds {
                                tr {
                                    td { (c.name) }
                                    td { (c.host_groups.iter().map(|g| f.inventory.host_groups.iter().find(|h| &h.id == g).map(|h| h.name.clone()).unwrap_or_else(|| g.clone())).collect::<Vec<_>>().join(", ")) }
                                    td { @if c.sync_enabled { "On" } @else { "Off" } }
                                    @if contributor {
                                        td {
                                            form method="post" action={ (base) "/sync" } class="inline" {
                                                (csrf_field(user))
                                                input type="hidden" name="cloud" value=(obj_value(&SiteObjectRef { fabric: f.id, id: c.id.clone() }));
                                                input type="hidden" name="sync" value=(if c.sync_enabled { "off" } else { "on" });
                                                button type="submit" class="small" { @if c.sync_enabled { "Turn sync off" } @else { "Turn sync on" } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        section id="target" {
            h2 { "3. Target" }
            p { "A source cloud is paired with a target cloud when a replication policy is associated with it. Only clouds whose metadata is synced can be paired." }
            table id="target-clouds" {
                thead { tr { th { "Site manager" } th { "Synced clouds" } th { "Hosts" } } }
                tbody {
                    @for f in &d.fabrics {
                        tr {
                            td { (f.name) }
                            td { (f.inventory.clouds.iter().filter(|c| c.sync_enabled).map(|c| c.name.clone()).collect::<Vec<_>>().join(", ")) }
                            td { (f.inventory.hosts.iter().map(|h| format!("{}{}", h.name, if h.connected { "" } else { " (disconnected)" })).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                }
            }
            h3 { "Cloud pairs" }
            @if d.pairs.is_empty() { p class="muted" id="pairs-none" { "No cloud is paired yet." } }
            @else {
                table id="pairs" {
                    thead { tr { th { "Source cloud" } th { "Target cloud" } th { "Policy" } th { "Since" } @if contributor { th {} } } }
                    tbody {
                        @for m in &d.pairs {
                            tr {
                                td { (names.cloud(&m.source)) }
                                td { (names.cloud(&m.target)) }
                                td { (d.policies.iter().find(|p| p.id == m.policy).map(|p| p.spec.name.clone()).unwrap_or_default()) }
                                td { (fmt_time(m.created_at)) }
                                @if contributor {
                                    td { form method="post" action={ (base) "/pairs/" (m.id) "/delete" } class="inline" {
                                        (csrf_field(user)) button type="submit" class="small" { "Remove pair" }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }

        section id="policy" {
            h2 { "4. Replication policy" }
            @if d.policies.is_empty() { p class="muted" { "No policy yet." } }
            @else {
                table id="policies" {
                    thead { tr { th { "Name" } th { "Host version" } th { "Authentication" } th { "Copy frequency" } th { "Retention" } th { "App-consistent" } th { "Compression" } th { "Delete replica on disable" } th { "Initial replication" } th { "Associated clouds" } @if contributor { th {} } } }
                    tbody {
                        @for p in &d.policies {
                            tr {
                                td { (p.spec.name) }
                                td { (p.spec.host_version) }
                                td { (format!("{:?}", p.spec.authentication)) " :" (p.spec.effective_port()) }
                                td { (freq_label(p.spec.copy_frequency_secs)) }
                                td { (p.spec.recovery_point_retention_hours) " h" }
                                td { @match p.spec.app_consistent_frequency_hours { Some(h) => { "every " (h) " h" }, None => "Off" } }
                                td { (yes_no(p.spec.compression)) }
                                td { (yes_no(p.spec.delete_replica_on_disable)) }
                                td { (initial_label(&p.spec.initial_replication)) }
                                td { (p.associated_clouds.iter().map(|c| d.pairs.iter().find(|m| m.policy == p.id && &m.source.id == c).map(|m| names.cloud(&m.source)).unwrap_or_else(|| c.clone())).collect::<Vec<_>>().join(", ")) }
                                @if contributor { td { a id={ "edit-policy-" (p.spec.name) } href={ (base) "?edit_policy=" (p.id) "#policy" } { "Edit" } } }
                            }
                        }
                    }
                }
            }
            @if contributor {
                @if let Some(p) = extra.edit_policy.and_then(|id| d.policies.iter().find(|p| p.id == id)) {
                    (policy_edit_form(user, &base, p, extra.policy_form.as_ref()))
                }
                (policy_form(user, &base, d, &synced_clouds, if extra.edit_policy.is_some() { None } else { extra.policy_form.as_ref() }))
                @if !d.policies.is_empty() {
                    div class="card" {
                        h3 { "Associate a policy with more clouds" }
                        form method="post" action={ (base) "/pairs" } class="grid" id="associate-form" {
                            (csrf_field(user))
                            label { "Policy" select name="policy" { @for p in &d.policies { option value=(p.id) { (p.spec.name) } } } }
                            label { "Source cloud" select name="source" { @for (r, l) in &synced_clouds { option value=(obj_value(r)) { (l) } } } }
                            label { "Target cloud" select name="target" { @for (r, l) in &synced_clouds { option value=(obj_value(r)) { (l) } } } }
                            button type="submit" { "Associate" }
                        }
                    }
                }
            }
        }

        section id="network" {
            h2 { "5. Network mapping" }
            h3 { "Target networks available per cloud pair" }
            @if d.availability.is_empty() { p class="muted" { "Pair clouds first: the target networks are those the target cloud's hosts reach." } }
            @else {
                table id="availability" {
                    thead { tr { th { "Source cloud" } th { "Target cloud" } th { "Available target VM networks" } } }
                    tbody {
                        @for a in &d.availability {
                            tr {
                                td { (a.source_cloud) }
                                td { (a.target_cloud) }
                                td { (a.target_networks.iter().map(|n| names.network(n)).collect::<Vec<_>>().join(", ")) }
                            }
                        }
                    }
                }
            }
            @if !d.net_maps.is_empty() {
                h3 { "Mappings" }
                table id="network-mappings" {
                    thead { tr { th { "Source VM network" } th { "Target VM network" } th { "Since" } @if contributor { th {} } } }
                    tbody {
                        @for m in &d.net_maps {
                            tr {
                                td { (names.network(&m.source)) }
                                td { (names.network(&m.target)) }
                                td { (fmt_time(m.created_at)) }
                                @if contributor {
                                    td { form method="post" action={ (base) "/networks/" (m.id) "/delete" } class="inline" {
                                        (csrf_field(user)) button type="submit" class="small" { "Remove" }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
            @if contributor {
                form method="post" action={ (base) "/networks" } class="grid" id="network-form" {
                    (csrf_field(user))
                    label { "Source VM network"
                        select name="source" {
                            @for f in &d.fabrics { optgroup label=(f.name) {
                                @for n in &f.inventory.vm_networks { option value=(obj_value(&SiteObjectRef { fabric: f.id, id: n.id.clone() })) { (f.name) " / " (n.name) } }
                            } }
                        }
                    }
                    label { "Target VM network"
                        select name="target" {
                            @for a in &d.availability { optgroup label={ (a.source_cloud) " → " (a.target_cloud) } {
                                @for n in &a.target_networks { option value=(obj_value(n)) { (names.network(n)) } }
                            } }
                        }
                    }
                    button type="submit" { "Map networks" }
                }
            }
        }

        section id="storage" {
            h2 { "6. Storage mapping" }
            @if !d.sto_maps.is_empty() {
                table id="storage-mappings" {
                    thead { tr { th { "Source classification" } th { "Target classification" } th { "Since" } @if contributor { th {} } } }
                    tbody {
                        @for m in &d.sto_maps {
                            tr {
                                td { (names.classification(&m.source)) }
                                td { (names.classification(&m.target)) }
                                td { (fmt_time(m.created_at)) }
                                @if contributor {
                                    td { form method="post" action={ (base) "/storage/" (m.id) "/delete" } class="inline" {
                                        (csrf_field(user)) button type="submit" class="small" { "Remove" }
                                    } }
                                }
                            }
                        }
                    }
                }
            } @else { p class="muted" { "No storage mapping: replica disks go to each target host's default replica location." } }
            @if contributor {
                form method="post" action={ (base) "/storage" } class="grid" id="storage-form" {
                    (csrf_field(user))
                    @for (field, label) in [("source", "Source classification"), ("target", "Target classification")] {
                        label { (label)
                            select name=(field) {
                                @for f in &d.fabrics { optgroup label=(f.name) {
                                    @for c in &f.inventory.storage_classifications { option value=(obj_value(&SiteObjectRef { fabric: f.id, id: c.id.clone() })) { (f.name) " / " (c.name) } }
                                } }
                            }
                        }
                    }
                    button type="submit" { "Map storage" }
                }
            }
        }

        (alerts_section(user, &base, &d.alerts))
    }
}

/// Run a change; on success go back to the section with a notice, else show the page with the
/// API's error.
async fn change<F, Fut>(st: &AppState, user: &User, vault: &str, form: Form, anchor: &str, f: F) -> Response
where
    F: FnOnce(Form) -> Fut,
    Fut: std::future::Future<Output = Result<String, (ApiFailure, Option<Form>)>>,
{
    if let Err(e) = form.check_csrf(user) {
        return render(st, user, vault, Extra { status: Some(e.status), notice: Some(e.into()), ..Default::default() })
            .await;
    }
    match f(form).await {
        Ok(msg) => match load_vault(st, vault).await {
            Ok(v) => redirect_with(&format!("/portal/vaults/{}/prepare#{anchor}", v.id), &msg),
            Err(e) => error_page(user, None, e),
        },
        Err((e, prev)) => {
            render(
                st,
                user,
                vault,
                Extra { status: Some(e.status), notice: Some(e.into()), policy_form: prev, ..Default::default() },
            )
            .await
        }
    }
}

/// Save an edited policy through the API (the version the form showed goes as `If-Match`).
pub async fn update_policy(
    State(st): State<AppState>,
    user: User,
    Path((vault, policy)): Path<(String, String)>,
    form: Form,
) -> Response {
    let edit_policy = Uuid::parse_str(&policy).ok();
    let res = async {
        form.check_csrf(&user)?;
        let spec = policy_request(&form)?.spec;
        let mut headers = axum::http::HeaderMap::new();
        if let Some(v) = form.get("version").and_then(|v| axum::http::HeaderValue::from_str(v).ok()) {
            headers.insert("if-match", v);
        }
        let (_, Json(updated)) = crate::api::policies::update_policy(
            State(st.clone()),
            user.auth.clone(),
            Path((vault.clone(), policy.clone())),
            headers,
            ApiJson(spec),
        )
        .await?;
        Ok::<_, ApiFailure>(updated)
    }
    .await;
    match res {
        Ok(updated) => match load_vault(&st, &vault).await {
            Ok(v) => redirect_with(
                &format!("/portal/vaults/{}/prepare#policy", v.id),
                &format!(
                    "Replication policy {} saved (version {}); pushed to its sites",
                    updated.policy.spec.name, updated.policy.version
                ),
            ),
            Err(e) => error_page(&user, None, e),
        },
        Err(e) => {
            let extra = Extra {
                status: Some(e.status),
                notice: Some(e.into()),
                policy_form: Some(form),
                edit_policy,
                ..Default::default()
            };
            render(&st, &user, &vault, extra).await
        }
    }
}

pub async fn set_goal(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path(vault.clone()));
    change(&st, &user, &vault, form, "goal", |form| async move {
        let goal = ProtectionGoal {
            replicate_to: ReplicateTo::RecoverySite,
            hypervisor: Hypervisor::Kvm,
            managed_by_site_manager: form.get("managed_by_site_manager") != Some("no"),
            second_site_manager: form.get("second_site_manager") != Some("no"),
        };
        let _ = crate::api::vaults::set_protection_goal(s, a, p, ApiJson(goal)).await.map_err(|e| (e, None))?;
        Ok("Protection goal saved".to_string())
    })
    .await
}

pub async fn issue_key(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    if let Err(e) = form.check_csrf(&user) {
        return render(
            &st,
            &user,
            &vault,
            Extra { status: Some(e.status), notice: Some(e.into()), ..Default::default() },
        )
        .await;
    }
    match crate::api::vaults::issue_key(State(st.clone()), user.auth.clone(), Path(vault.clone()), ApiJson(None)).await
    {
        Ok((_, Json(k))) => {
            let notice = Some(Notice::Ok(format!("Registration key {} issued", k.info.id)));
            // Shown once, on this response only: the file holds the key's secret.
            render(&st, &user, &vault, Extra { notice, issued: Some(k), ..Default::default() }).await
        }
        Err(e) => {
            render(&st, &user, &vault, Extra { status: Some(e.status), notice: Some(e.into()), ..Default::default() })
                .await
        }
    }
}

pub async fn revoke_key(
    State(st): State<AppState>,
    user: User,
    Path((vault, key)): Path<(String, String)>,
    form: Form,
) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path((vault.clone(), key)));
    change(&st, &user, &vault, form, "source", |_| async move {
        crate::api::vaults::revoke_key(s, a, p).await.map_err(|e| (e, None))?;
        Ok("Registration key revoked".to_string())
    })
    .await
}

pub async fn cloud_sync(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let (s, a) = (State(st.clone()), user.auth.clone());
    let v = vault.clone();
    change(&st, &user, &vault, form, "source", |form| async move {
        let r = parse_ref(&form, "cloud", "cloud").map_err(|e| (e, None))?;
        let on = form.get("sync") == Some("on");
        let Json(c) = crate::api::fabrics::set_cloud_sync(
            s,
            a,
            Path((v, r.fabric.to_string(), r.id)),
            ApiJson(ferry_types::fabric::CloudSyncUpdate { sync_enabled: on }),
        )
        .await
        .map_err(|e| (e, None))?;
        Ok(format!("Metadata sync of cloud {} turned {}", c.name, if on { "on" } else { "off" }))
    })
    .await
}

pub async fn create_policy(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path(vault.clone()));
    change(&st, &user, &vault, form, "policy", |form| async move {
        let req = match policy_request(&form) {
            Ok(r) => r,
            Err(e) => return Err((e, Some(form))),
        };
        match crate::api::policies::create_policy(s, a, p, ApiJson(req)).await {
            Ok((_, Json(created))) => {
                let pairs = created.pairs.len();
                Ok(format!(
                    "Replication policy {} created{}",
                    created.policy.spec.name,
                    if pairs > 0 { format!(" and associated with {pairs} cloud pair(s)") } else { String::new() }
                ))
            }
            Err(e) => Err((e, Some(form))),
        }
    })
    .await
}

pub async fn associate(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path(vault.clone()));
    change(&st, &user, &vault, form, "target", |form| async move {
        let req = (|| {
            let policy = form
                .get("policy")
                .and_then(|p| Uuid::parse_str(p).ok())
                .ok_or_else(|| ApiFailure::bad_request("InvalidValue", "Choose a policy"))?;
            Ok::<_, ApiFailure>(CreateContainerMapping {
                source: parse_ref(&form, "source", "source cloud")?,
                target: parse_ref(&form, "target", "target cloud")?,
                policy,
            })
        })()
        .map_err(|e| (e, None))?;
        let (_, Json(pair)) =
            crate::api::mappings::create_container_mapping(s, a, p, ApiJson(req)).await.map_err(|e| (e, None))?;
        Ok(format!("Clouds paired: {}", pair.job.object_name))
    })
    .await
}

pub async fn remove_pair(
    State(st): State<AppState>,
    user: User,
    Path((vault, pair)): Path<(String, String)>,
    form: Form,
) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path((vault.clone(), pair)));
    change(&st, &user, &vault, form, "target", |_| async move {
        let (_, Json(job)) = crate::api::mappings::delete_container_mapping(s, a, p).await.map_err(|e| (e, None))?;
        Ok(format!("Removing cloud pair {} (job {})", job.object_name, job.id))
    })
    .await
}

pub async fn map_network(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path(vault.clone()));
    change(&st, &user, &vault, form, "network", |form| async move {
        let req = (|| {
            Ok::<_, ApiFailure>(CreateNetworkMapping {
                source: parse_ref(&form, "source", "source VM network")?,
                target: parse_ref(&form, "target", "target VM network")?,
            })
        })()
        .map_err(|e| (e, None))?;
        let _ = crate::api::mappings::create_network_mapping(s, a, p, ApiJson(req)).await.map_err(|e| (e, None))?;
        Ok("Networks mapped".to_string())
    })
    .await
}

pub async fn unmap_network(
    State(st): State<AppState>,
    user: User,
    Path((vault, mapping)): Path<(String, String)>,
    form: Form,
) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path((vault.clone(), mapping)));
    change(&st, &user, &vault, form, "network", |_| async move {
        crate::api::mappings::delete_network_mapping(s, a, p).await.map_err(|e| (e, None))?;
        Ok("Network mapping removed".to_string())
    })
    .await
}

pub async fn map_storage(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path(vault.clone()));
    change(&st, &user, &vault, form, "storage", |form| async move {
        let req = (|| {
            Ok::<_, ApiFailure>(CreateStorageMapping {
                source: parse_ref(&form, "source", "source classification")?,
                target: parse_ref(&form, "target", "target classification")?,
            })
        })()
        .map_err(|e| (e, None))?;
        let _ = crate::api::mappings::create_storage_mapping(s, a, p, ApiJson(req)).await.map_err(|e| (e, None))?;
        Ok("Storage classifications mapped".to_string())
    })
    .await
}

pub async fn unmap_storage(
    State(st): State<AppState>,
    user: User,
    Path((vault, mapping)): Path<(String, String)>,
    form: Form,
) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path((vault.clone(), mapping)));
    change(&st, &user, &vault, form, "storage", |_| async move {
        crate::api::mappings::delete_storage_mapping(s, a, p).await.map_err(|e| (e, None))?;
        Ok("Storage mapping removed".to_string())
    })
    .await
}

pub async fn set_alerts(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path(vault.clone()));
    change(&st, &user, &vault, form, "alerts", |form| async move {
        let spec = alerts_request(&form).map_err(|e| (e, None))?;
        let mut headers = axum::http::HeaderMap::new();
        if let Some(v) = form.get("version").and_then(|v| axum::http::HeaderValue::from_str(v).ok()) {
            headers.insert("if-match", v);
        }
        let Json(saved) =
            crate::api::alerts::put_alert_settings(s, a, p, headers, ApiJson(spec)).await.map_err(|e| (e, None))?;
        Ok(format!("Alert settings saved (version {})", saved.version))
    })
    .await
}

pub async fn test_alerts(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let (s, a, p) = (State(st.clone()), user.auth.clone(), Path(vault.clone()));
    change(&st, &user, &vault, form, "alerts", |_| async move {
        let Json(r) = crate::api::alerts::test_alert(s, a, p).await.map_err(|e| (e, None))?;
        let each: Vec<String> = r
            .channels
            .iter()
            .map(|c| match &c.error {
                None => format!("{}: sent", c.channel),
                Some(e) => format!("{}: failed ({e})", c.channel),
            })
            .collect();
        if r.channels.iter().all(|c| c.ok) {
            Ok(format!("Test alert sent · {}", each.join(" · ")))
        } else {
            Err((
                ApiFailure::conflict(
                    "AlertTestFailed",
                    format!("Test alert not delivered everywhere · {}", each.join(" · ")),
                ),
                None,
            ))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn pol_portal_form_maps_every_policy_field() {
        let f = Uuid::from_u128(1);
        let g = Uuid::from_u128(2);
        let src = format!("{f}|cloud-1");
        let tgt = format!("{g}|cloud|2");
        let req = policy_request(&form(&[
            ("name", "gold"),
            ("host_version", "qemu-7.2"),
            ("authentication", "Kerberos"),
            ("port", "9000"),
            ("copy_frequency_secs", "900"),
            ("recovery_point_retention_hours", "4"),
            ("app_consistent_frequency_hours", "2"),
            ("compression", "on"),
            ("delete_replica_on_disable", "on"),
            ("initial_method", "scheduled"),
            ("start_at", "2025-06-16T02:30"),
            ("source", &src),
            ("target", &tgt),
        ]))
        .expect("valid form");
        let s = &req.spec;
        assert_eq!((s.name.as_str(), s.host_version.as_str()), ("gold", "qemu-7.2"));
        assert_eq!(s.authentication, Authentication::Kerberos);
        assert_eq!(s.port, Some(9000));
        assert_eq!(s.copy_frequency_secs, 900);
        assert_eq!(s.recovery_point_retention_hours, 4);
        assert_eq!(s.app_consistent_frequency_hours, Some(2));
        assert!(s.compression && s.delete_replica_on_disable);
        assert_eq!(
            s.initial_replication,
            InitialReplication::OverNetworkScheduled {
                start_at: chrono::DateTime::parse_from_rfc3339("2025-06-16T02:30:00Z")
                    .expect("t")
                    .with_timezone(&chrono::Utc)
            }
        );
        assert_eq!(req.associate[0].source, SiteObjectRef { fabric: f, id: "cloud-1".into() });
        assert_eq!(req.associate[0].target, SiteObjectRef { fabric: g, id: "cloud|2".into() }, "ids may hold '|'");

        let off = policy_request(&form(&[("name", "x"), ("initial_method", "offline"), ("export_path", "/e")]))
            .expect("form");
        assert_eq!(off.spec.app_consistent_frequency_hours, None, "blank is off");
        assert!(!off.spec.compression);
        assert!(off.associate.is_empty());
        assert_eq!(
            off.spec.initial_replication,
            InitialReplication::Offline { export_path: "/e".into(), import_path: String::new() }
        );
        let bad = policy_request(&form(&[("name", "x"), ("recovery_point_retention_hours", "many")]));
        assert_eq!(bad.err().map(|e| e.body.code), Some("InvalidValue".to_string()));
        let half = policy_request(&form(&[("name", "x"), ("source", &src)]));
        assert!(half.is_err(), "a source without a target is refused");
    }
}
