//! "Replicate applications" (REP-1): pick the source site manager and cloud, see the target the
//! cloud is paired with, select VMs and enable protection; then watch the Enable protection and
//! Finalize protection jobs.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use ferry_types::auth::Role;
use ferry_types::fabric::{Fabric, Vm};
use ferry_types::job::{Job, JobFilter};
use ferry_types::mapping::ContainerMapping;
use ferry_types::protection::{EnableProtection, ProtectedItem};
use maud::html;
use uuid::Uuid;

use super::overview::job_rows;
use super::{csrf_field, error_page, page, query, redirect_with, Form, Frame, Nav, Notice, User};
use crate::error::ApiFailure;
use crate::extract::{ApiJson, ApiQuery, PageParams};
use crate::state::AppState;

#[derive(Debug, Default, serde::Deserialize)]
pub struct Selection {
    /// `fabric-id|cloud-id`.
    cloud: Option<String>,
}

fn split(sel: &str) -> Option<(Uuid, String)> {
    let (f, c) = sel.split_once('|')?;
    Some((Uuid::parse_str(f).ok()?, c.to_string()))
}

/// Every protectable item (VM) of a site, through the paged API.
async fn protectable(st: &AppState, user: &User, vault: &str, fabric: Uuid) -> Result<Vec<Vm>, ApiFailure> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let Json(page) = crate::api::fabrics::list_protectable_items(
            State(st.clone()),
            user.auth.clone(),
            Path((vault.to_string(), fabric.to_string())),
            ApiQuery(PageParams { limit: Some(1000), cursor }),
        )
        .await?;
        out.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(out),
        }
    }
}

/// Every protected item of a vault, through the paged API.
pub async fn all_items(st: &AppState, user: &User, vault: &str) -> Result<Vec<ProtectedItem>, ApiFailure> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let Json(page) = crate::api::items::list_items(
            State(st.clone()),
            user.auth.clone(),
            Path(vault.to_string()),
            ApiQuery(PageParams { limit: Some(1000), cursor }),
        )
        .await?;
        out.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(out),
        }
    }
}

pub async fn show(
    State(st): State<AppState>,
    user: User,
    Path(vault): Path<String>,
    Query(sel): Query<Selection>,
) -> Response {
    render(&st, &user, &vault, sel.cloud.as_deref(), None, StatusCode::OK).await
}

async fn render(
    st: &AppState,
    user: &User,
    vault: &str,
    selected: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let res = async {
        let Json(v) =
            crate::api::vaults::get_vault(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
        let Json(fabrics) =
            crate::api::fabrics::list_fabrics(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
        let Json(pairs) = crate::api::mappings::list_container_mappings(
            State(st.clone()),
            user.auth.clone(),
            Path(vault.to_string()),
        )
        .await?;
        let Json(policies) =
            crate::api::policies::list_policies(State(st.clone()), user.auth.clone(), Path(vault.to_string())).await?;
        let sel = selected.and_then(split);
        let vms = match &sel {
            Some((f, _)) => protectable(st, user, vault, *f).await?,
            None => vec![],
        };
        let items = all_items(st, user, vault).await?;
        let jobs = match &sel {
            Some((f, _)) => {
                let mut jobs = Vec::new();
                for op in [crate::jobs::OP_ENABLE_PROTECTION, crate::jobs::OP_FINALIZE_PROTECTION] {
                    let filter = JobFilter { fabric: Some(*f), operation: Some(op.to_string()), ..Default::default() };
                    let (page, _) = st.store.list_jobs(v.id, &filter, None, 20).await?;
                    jobs.extend(page);
                }
                jobs.sort_by_key(|j: &Job| std::cmp::Reverse(j.created_at));
                jobs.truncate(20);
                jobs
            }
            None => vec![],
        };
        Ok::<_, ApiFailure>((v, fabrics, pairs, policies, sel, vms, items, jobs))
    }
    .await;
    let (v, fabrics, pairs, policies, sel, vms, items, jobs) = match res {
        Ok(x) => x,
        Err(e) => return error_page(user, None, e),
    };
    let base = format!("/portal/vaults/{}", v.id);
    let site_of = |id: Uuid| fabrics.iter().find(|f| f.id == id);
    let cloud_label = |f: Option<&Fabric>, cloud: &str| -> String {
        match f {
            Some(f) => format!(
                "{} / {}",
                f.name,
                f.inventory.cloud(cloud).map(|c| c.name.clone()).unwrap_or_else(|| cloud.to_string())
            ),
            None => cloud.to_string(),
        }
    };
    let pair: Option<&ContainerMapping> =
        sel.as_ref().and_then(|(f, c)| pairs.iter().find(|m| m.source.fabric == *f && &m.source.id == c));
    let in_cloud: Vec<&Vm> =
        vms.iter().filter(|vm| sel.as_ref().is_some_and(|(_, c)| vm.cloud.as_deref() == Some(c))).collect();
    let refresh = jobs.iter().any(|j| !j.status.is_terminal()).then_some(3);
    let contributor = user.can(Role::Contributor);
    let selected_value = selected.unwrap_or_default();
    let content = html! {
        section id="source" {
            h2 { "1. Source" }
            form method="get" action={ (base) "/replicate" } class="grid" id="source-form" {
                label { "Source site manager and cloud"
                    select name="cloud" id="source-cloud" {
                        @for f in &fabrics { optgroup label=(f.name) {
                            @for c in f.inventory.clouds.iter().filter(|c| c.sync_enabled) {
                                @let value = format!("{}|{}", f.id, c.id);
                                option value=(value) selected[value == selected_value] { (f.name) " / " (c.name) }
                            }
                        } }
                    }
                }
                button type="submit" id="show-vms" { "Show virtual machines" }
            }
        }
        @if let Some((f, c)) = &sel {
            section id="target" {
                h2 { "2. Target" }
                @match pair {
                    Some(m) => p id="target-cloud" {
                        "Replicates to " strong { (cloud_label(site_of(m.target.fabric), &m.target.id)) }
                        " under policy " strong { (policies.iter().find(|p| p.id == m.policy).map(|p| p.spec.name.clone()).unwrap_or_default()) }
                    },
                    None => div class="notice error" id="target-cloud" {
                        "The cloud " (cloud_label(site_of(*f), c)) " is not paired with a target cloud. Associate a replication policy with it under "
                        a href={ (base) "/prepare#policy" } { "Prepare infrastructure" } "."
                    },
                }
            }
            section id="vms" {
                h2 { "3. Virtual machines" }
                @if in_cloud.is_empty() { p class="muted" { "No VM in this cloud." } }
                @else {
                    form method="post" action={ (base) "/replicate" } id="enable-form" {
                        (csrf_field(user))
                        input type="hidden" name="cloud" value=(selected_value);
                        table id="vm-list" {
                            thead { tr { @if contributor { th {} } th { "VM" } th { "Host" } th { "Power" } th { "Disks" } th { "Networks" } th { "Protection" } } }
                            tbody {
                                @for vm in &in_cloud {
                                    @let item = items.iter().find(|i| i.vm_id == vm.id && i.source.fabric == *f);
                                    @let site = site_of(*f);
                                    tr id={ "vm-" (vm.name) } {
                                        @if contributor { td { @if item.is_none() { input type="checkbox" name="vm" value=(vm.name) id={ "select-" (vm.name) }; } } }
                                        td { (vm.name) }
                                        td { (site.and_then(|s| s.inventory.host(&vm.host)).map(|h| h.name.clone()).unwrap_or_else(|| vm.host.clone())) }
                                        td { (format!("{:?}", vm.power_state)) }
                                        td { (vm.disks.iter().map(|d| format!("{}{}", d.target, if d.excluded { " (excluded)" } else { "" })).collect::<Vec<_>>().join(", ")) }
                                        td { (vm.nics.iter().map(|n| n.vm_network.as_deref().and_then(|id| site.and_then(|s| s.inventory.vm_network(id))).map(|n| n.name.clone()).unwrap_or_else(|| "disconnected".into())).collect::<Vec<_>>().join(", ")) }
                                        td { @match item {
                                            Some(i) => a href={ (base) "/items/" (i.id) } { (super::humanize(&format!("{:?}", i.state))) },
                                            None => span class="muted" { "Not protected" },
                                        } }
                                    }
                                }
                            }
                        }
                        @if contributor && pair.is_some() { button type="submit" id="enable" { "Enable replication" } }
                    }
                }
            }
            section id="protection-jobs" {
                h2 { "Protection jobs" a class="more" href={ (base) "/jobs?" (query(&[("fabric", &f.to_string())])) } { "All jobs of this site" } }
                @if jobs.is_empty() { p class="muted" { "None yet." } }
                @else {
                    table id="enable-jobs" {
                        thead { tr { th { "Job" } th { "Object" } th { "Status" } th { "Progress" } th { "Created" } } }
                        tbody { (job_rows(&base, &jobs)) }
                    }
                }
            }
        }
    };
    page(
        Frame { user, vault: Some(&v), nav: Nav::Replicate, title: "Replicate applications", refresh, notice },
        content,
        status,
    )
}

pub async fn enable(State(st): State<AppState>, user: User, Path(vault): Path<String>, form: Form) -> Response {
    let selected = form.get("cloud").map(str::to_string);
    let res = async {
        form.check_csrf(&user)?;
        let (fabric, _) = selected
            .as_deref()
            .and_then(split)
            .ok_or_else(|| ApiFailure::bad_request("InvalidValue", "Choose the source cloud first"))?;
        let req = EnableProtection { source_site: fabric.to_string(), vms: form.all("vm"), existing_disks: vec![] };
        crate::api::items::enable_protection(State(st.clone()), user.auth.clone(), Path(vault.clone()), ApiJson(req))
            .await
    }
    .await;
    match res {
        Ok((_, Json(enabled))) => {
            let names: Vec<String> = enabled.iter().map(|e| e.item.name.clone()).collect();
            let vid = enabled.first().map(|e| e.item.vault_id.to_string()).unwrap_or(vault);
            redirect_with(
                &format!("/portal/vaults/{vid}/replicate?{}", query(&[("cloud", selected.as_deref().unwrap_or(""))])),
                &format!("Protection enabled for {}; the Enable protection jobs are below", names.join(", ")),
            )
        }
        Err(e) => {
            let status = e.status;
            render(&st, &user, &vault, selected.as_deref(), Some(e.into()), status).await
        }
    }
}
