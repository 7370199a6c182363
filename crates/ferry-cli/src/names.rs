//! Names instead of ids in the CLI's tables: sites, clouds, networks, storage classifications,
//! policies and cloud pairs (`GoldCloud1 → GoldCloud2`), looked up once per command.

use anyhow::Result;
use serde_json::{json, Value};

use crate::api_cmds::Ctx;
use crate::output::{print, Output};

/// The rows of a listing (a page's `items`, or the array itself), to add printable fields.
pub(crate) fn rows_mut(list: &mut Value) -> Vec<&mut Value> {
    if list.get("items").is_some() {
        return rows_mut(&mut list["items"]);
    }
    match list {
        Value::Array(a) => a.iter_mut().collect(),
        _ => vec![],
    }
}

/// Names of the sites, their clouds, networks and storage classifications, and the vault's
/// policies, by id: tables show names, not UUIDs.
pub(crate) struct Names {
    by_id: std::collections::HashMap<String, String>,
    sites: std::collections::HashMap<String, String>,
}

impl Names {
    pub(crate) async fn load(ctx: &Ctx) -> Result<Names> {
        let mut by_id = std::collections::HashMap::new();
        let mut sites = std::collections::HashMap::new();
        let mut fabrics: Value = ctx.c.get(&ctx.v("/replicationFabrics")).await?;
        for site in rows_mut(&mut fabrics) {
            let site_name = site["name"].as_str().unwrap_or_default().to_string();
            if let Some(id) = site["id"].as_str() {
                sites.insert(id.to_string(), site_name.clone());
            }
            for kind in ["clouds", "vm_networks", "storage_classifications", "logical_networks"] {
                for o in site["inventory"][kind].as_array().into_iter().flatten() {
                    if let (Some(id), Some(name)) = (o["id"].as_str(), o["name"].as_str()) {
                        by_id.insert(id.to_string(), name.to_string());
                    }
                }
            }
        }
        let mut policies: Value = ctx.c.get(&ctx.v("/replicationPolicies")).await?;
        for p in rows_mut(&mut policies) {
            if let (Some(id), Some(name)) = (p["id"].as_str(), p["name"].as_str()) {
                by_id.insert(id.to_string(), name.to_string());
            }
        }
        // Cloud pairs are named after their clouds: `GoldCloud1 → GoldCloud2`.
        let mut pairs: Value = ctx.c.get(&ctx.v("/replicationProtectionContainerMappings")).await?;
        let mut named = Names { by_id, sites };
        for m in rows_mut(&mut pairs) {
            if let Some(id) = m["id"].as_str() {
                let pair = format!("{} → {}", named.of(&m["source"]["id"]), named.of(&m["target"]["id"]));
                named.by_id.insert(id.to_string(), pair);
            }
        }
        Ok(named)
    }

    /// The name of the object with id `id`, else the id itself.
    pub(crate) fn of(&self, id: &Value) -> String {
        let id = id.as_str().unwrap_or_default();
        self.by_id.get(id).cloned().unwrap_or_else(|| id.to_string())
    }

    /// `Site/Name` of a reference `{fabric, id}`.
    pub(crate) fn qualified(&self, r: &Value) -> String {
        let site = r["fabric"].as_str().and_then(|f| self.sites.get(f)).cloned().unwrap_or_default();
        format!("{site}/{}", self.of(&r["id"]))
    }
}

/// A network or storage mapping just made, by the names of its two ends.
pub(crate) fn print_mapping(out: Output, names: &Names, mut m: Value) {
    m["source_name"] = json!(names.qualified(&m["source"]));
    m["target_name"] = json!(names.qualified(&m["target"]));
    print(out, &m, &[("ID", "/id"), ("SOURCE", "/source_name"), ("TARGET", "/target_name")]);
}
