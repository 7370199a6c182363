//! Restore from any point (RP-3): the replica host writes every disk of one recovery point as a
//! standalone image (qcow2 or raw, no backing file) into a new folder inside one of its storage
//! locations, to be mounted, copied from or attached to another VM. The recovery point itself is
//! untouched (it is marked in use while it is read).

use std::collections::HashMap;
use std::sync::Arc;

use ferry_types::fabric::DiskFormat;
use ferry_types::site_protocol::{ReplicationAction, SiteCommand};
use ferry_types::ApiError;
use uuid::Uuid;

use super::ctx::JobCtx;
use super::kinds::{check, load_item, JobKind};

pub const OP_POINT_IMAGES: &str = "CreatePointImages";
pub const POINT_IMAGE_TASKS: [&str; 1] = ["Write the point's disks as standalone images on the replica host"];

/// Which point, in which format, where.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PointImageParams {
    pub item: Uuid,
    /// A point id or `latest`.
    pub point: String,
    pub format: DiskFormat,
    /// A new folder inside one of the replica host's storage locations.
    pub path: String,
}

pub fn register(m: &mut HashMap<&'static str, Arc<dyn JobKind>>) {
    m.insert(OP_POINT_IMAGES, Arc::new(PointImageJob));
}

struct PointImageJob;

#[async_trait::async_trait]
impl JobKind for PointImageJob {
    async fn run(&self, ctx: &mut JobCtx) -> Result<(), ApiError> {
        let p: PointImageParams = ctx.params()?;
        let vault = ctx.job().vault_id;
        let item = load_item(&ctx.state, vault, p.item).await?;
        ctx.task_with_output(POINT_IMAGE_TASKS[0], |state, job| async move {
            let cmd = SiteCommand::Replication {
                host: item.target.host.clone(),
                action: ReplicationAction::PointImages {
                    item: p.item,
                    point: p.point.clone(),
                    format: p.format,
                    path: p.path.clone(),
                },
            };
            let r = JobCtx::site_command(&state, &job, item.target.fabric, "image", cmd).await?;
            let output = r.output.clone();
            check(r, "Writing the point's images")?;
            Ok(output)
        })
        .await
    }
}
