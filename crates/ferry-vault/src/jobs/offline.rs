//! Offline initial replication (POL-8), the vault's part: once the source host exported the
//! initial copy and the operator carried it to the target side, the import job has the target
//! host import it as the replica's first recovery point, then tells the source host to start
//! delta cycles (which carry everything written since the export). Both steps are idempotent, so
//! a failed job is resumed or restarted safely.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_types::site_protocol::{ReplicationAction, SiteCommand};
use ferry_types::ApiError;
use uuid::Uuid;

use super::ctx::JobCtx;
use super::kinds::{check, load_item, JobKind};

pub const OP_IMPORT_INITIAL: &str = "ImportInitialReplica";
pub const IMPORT_TASKS: [&str; 2] =
    ["Verify and import the initial copy on the target host", "Start delta replication on the source host"];

/// An import reads the whole initial copy from the media: allow it time.
const IMPORT_LIMIT: Duration = Duration::from_secs(6 * 3600);

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_IMPORT_INITIAL, Arc::new(ImportJob));
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct ImportParams {
    pub item: Uuid,
    pub import_path: String,
}

struct ImportJob;

#[async_trait::async_trait]
impl JobKind for ImportJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: ImportParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        let target = item.target.clone();
        ctx.task_with_output(IMPORT_TASKS[0], |state, job| async move {
            let key = offline_key(&state, vault, p.item).await?;
            let cmd = SiteCommand::Replication {
                host: target.host.clone(),
                action: ReplicationAction::ImportInitial { item: p.item, path: p.import_path.clone(), key: Some(key) },
            };
            let r = JobCtx::site_command_within(&state, &job, target.fabric, "import", cmd, IMPORT_LIMIT).await?;
            let output = r.output.clone();
            check(r, "Importing the initial copy")?;
            Ok(output)
        })
        .await?;
        let cycle = ctx.output(IMPORT_TASKS[0])["cycle"]
            .as_u64()
            .ok_or_else(|| ApiError::new("ImportFailed", "The target host did not report the imported point"))?;
        let source = item.source.clone();
        let name = item.name.clone();
        ctx.task(IMPORT_TASKS[1], |state, job| async move {
            let cmd = SiteCommand::Replication {
                host: source.host.clone(),
                action: ReplicationAction::ConfirmImport { item: p.item, cycle },
            };
            check(
                JobCtx::site_command(&state, &job, source.fabric, "confirm-import", cmd).await?,
                "Starting delta replication",
            )?;
            crate::replication::update_item(&state, vault, p.item, |i| i.stats.awaiting_import = false).await?;
            state
                .event(
                    vault,
                    ferry_types::event::Severity::Info,
                    "InitialReplicaImported",
                    &format!("The offline initial copy of {name} was imported; delta replication starts"),
                    Some(source.fabric),
                    Some(&p.item.to_string()),
                )
                .await;
            Ok(())
        })
        .await
    }
}

/// POL-8, SEC-3: the key an item's offline export is sealed with, derived from the vault's own
/// secret and the item (never stored, never on the media): the source host seals the manifest
/// with it, the replica host imports only media it verifies.
pub(crate) async fn offline_key(state: &crate::state::AppState, vault: Uuid, item: Uuid) -> Result<String, ApiError> {
    let (_, secret) = state.vault(&vault.to_string()).await.map_err(|f| f.body)?;
    let key = blake3::derive_key("ferry 2026 offline export manifest key", format!("{secret}/{item}").as_bytes());
    Ok(blake3::Hash::from(key).to_hex().to_string())
}
