//! REP-7 on the target host: a replica being prepared starts from what this host already holds
//! of the VM, so that only the differences travel.
//!
//! - **A kept replica.** Every replica folder carries `origin.json`: the protected VM's identity
//!   across protections (`<source site id>/<VM id>`). When protection of the same VM is enabled
//!   again (after it was disabled with "delete replica: no", or after the folder was restored
//!   from a backup into a storage location), the newest such folder whose disks match (same
//!   targets and sizes), with no failover pending and not used by another replica, becomes the
//!   new item's folder: it is renamed in place (same file system, one `rename`), recovery points
//!   and all. Folders that match the VM but not its disks are named in the answer, not used.
//! - **Existing images.** Disk images the operator names (a restored backup, one per replicated
//!   disk, inside one of the host's storage locations) are converted into the new replica as its
//!   base point; the images themselves are left untouched.
//!
//! Either way the source host then compares block hashes with the replica's newest point and
//! sends only the differing blocks as a new point (`InitialReplication::CompareHashes`).
//!
//! Crash safety: the folder is renamed before the item's link is made, and a retried prepare
//! finds the renamed folder by its origin again (its name is then already the item's).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::replication::ReplicationError;

/// The identity file in every replica folder.
pub const ORIGIN_FILE: &str = "origin.json";
/// Sub-folder of a storage location holding replica folders.
pub const REPLICAS_DIR: &str = "ferry-replicas";

/// What `origin.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRecord {
    /// `<source site id>/<VM id>`.
    pub origin: String,
    /// The item the folder belongs to now.
    pub item: Uuid,
    pub vm_name: String,
}

/// Record who a replica folder belongs to (atomic, durable).
pub fn write_origin(dir: &Path, rec: &OriginRecord) -> Result<(), ReplicationError> {
    let bytes = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    crate::write_atomic(&dir.join(ORIGIN_FILE), &bytes)?;
    Ok(())
}

fn read_origin(dir: &Path) -> Option<OriginRecord> {
    serde_json::from_slice(&std::fs::read(dir.join(ORIGIN_FILE)).ok()?).ok()
}

/// Folders that may hold a replica: `<location>/ferry-replicas/*` of every storage location,
/// `<data>/replica-store/*` and the real folders in `<data>/replicas/*` (replicas without a
/// location).
pub fn candidate_dirs(storage_roots: &[PathBuf], data: &Path) -> Vec<PathBuf> {
    let mut parents: Vec<PathBuf> = storage_roots.iter().map(|r| r.join(REPLICAS_DIR)).collect();
    parents.push(data.join("replica-store"));
    parents.push(data.join("replicas"));
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for parent in parents {
        let Ok(rd) = std::fs::read_dir(&parent) else { continue };
        for e in rd.flatten() {
            // Links in `<data>/replicas` point at folders listed from their locations.
            if e.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
                continue;
            }
            let p = e.path();
            if p.is_dir() && seen.insert(std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone())) {
                out.push(p);
            }
        }
    }
    out
}

/// A kept replica that can be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptReplica {
    pub dir: PathBuf,
    pub points: u32,
    pub latest: Option<DateTime<Utc>>,
}

/// The newest reusable replica of `origin` among `dirs` (see the module doc), and why the
/// others of the same VM were not used.
pub async fn find_kept(
    dirs: &[PathBuf],
    origin: &str,
    disks: &[(String, u64)],
    active: &HashSet<String>,
    item: Uuid,
) -> (Option<KeptReplica>, Vec<String>) {
    let mut best: Option<KeptReplica> = None;
    let mut refused = Vec::new();
    for dir in dirs {
        let Some(rec) = read_origin(dir) else { continue };
        if rec.origin != origin {
            continue;
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if active.contains(&name) && name != item.to_string() {
            continue; // the replica of a protection still in place
        }
        match inspect(dir, &name, disks).await {
            Ok(Some(k)) => {
                if best.as_ref().is_none_or(|b| k.latest > b.latest) {
                    best = Some(k);
                }
            }
            Ok(None) => {} // prepared once, never received a point: nothing to reuse
            Err(why) => refused.push(format!("{}: {why}", dir.display())),
        }
    }
    (best, refused)
}

async fn inspect(dir: &Path, name: &str, disks: &[(String, u64)]) -> Result<Option<KeptReplica>, String> {
    let parent = dir.parent().ok_or("no parent folder")?;
    let store = ferry_repl::ReplicaStore::open(parent).map_err(|e| e.chain())?;
    let vm = store.vm(name).await.map_err(|e| e.chain())?;
    if vm.failover_point().map_err(|e| e.chain())?.is_some() {
        return Err("a failover is pending on it".into());
    }
    let points = vm.recovery_points().map_err(|e| e.chain())?;
    let Some(latest) = points.last() else { return Ok(None) };
    let have: Vec<(String, u64)> = vm.disks().map_err(|e| e.chain())?.into_iter().map(|d| (d.target, d.size)).collect();
    let mut want = disks.to_vec();
    want.sort();
    let mut got = have.clone();
    got.sort();
    if want != got {
        return Err(format!("its disks {} differ from the VM's {}", fmt_disks(&got), fmt_disks(&want)));
    }
    Ok(Some(KeptReplica { dir: dir.to_path_buf(), points: points.len() as u32, latest: Some(latest.time) }))
}

fn fmt_disks(d: &[(String, u64)]) -> String {
    d.iter().map(|(t, s)| format!("{t} ({} MiB)", s >> 20)).collect::<Vec<_>>().join(", ")
}

/// Make `kept` the folder of `item`: renamed in its parent to the item's id, linked from
/// `root/<item>` unless it already lies in `root`; links left pointing at its old name go.
pub fn take_over(kept: &Path, root: &Path, item: Uuid) -> Result<PathBuf, ReplicationError> {
    let parent = kept.parent().ok_or_else(|| ReplicationError::Invalid(format!("{} has no parent", kept.display())))?;
    let dir = parent.join(item.to_string());
    if kept != dir {
        std::fs::rename(kept, &dir)?;
        std::fs::File::open(parent)?.sync_all()?;
    }
    // Only links to the old name: a link whose location is merely unmounted now stays.
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|to| to == kept) {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    let link = root.join(item.to_string());
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&dir, &link)?;
    }
    Ok(dir)
}

/// The storage location holding replica folder `dir` (`<location>/ferry-replicas/<item>`), or
/// an empty string for a folder in the host's own data directory.
pub fn location_of(dir: &Path) -> String {
    match dir.parent() {
        Some(p) if p.file_name().is_some_and(|n| n == REPLICAS_DIR) => {
            p.parent().map(|l| l.display().to_string()).unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// Check the operator's images for a new replica (one per disk of `disks`, inside a storage
/// location, self-contained, not encrypted, of the disk's size); returns (target, path).
pub async fn check_existing_images(
    given: &[(String, String)],
    disks: &[(String, u64)],
    storage_roots: &[PathBuf],
) -> Result<Vec<(String, PathBuf)>, ReplicationError> {
    let bad = |m: String| ReplicationError::Invalid(m);
    for (t, _) in given {
        if !disks.iter().any(|(d, _)| d == t) {
            return Err(bad(format!("Existing image given for {t}, which is not a replicated disk")));
        }
    }
    let roots: Vec<PathBuf> = storage_roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
    let mut out = Vec::new();
    for (target, size) in disks {
        let (_, path) = given
            .iter()
            .find(|(t, _)| t == target)
            .ok_or_else(|| bad(format!("No existing image given for disk {target}; give one for every disk")))?;
        let canon = std::fs::canonicalize(path).map_err(|e| bad(format!("Existing image {path}: {e}")))?;
        if !roots.iter().any(|r| canon.starts_with(r)) {
            return Err(bad(format!("Existing image {path} is not inside a storage location of this host")));
        }
        if !canon.is_file() {
            return Err(bad(format!("Existing image {path} is not a file")));
        }
        let info = ferry_qemu::img::info(&canon, true)
            .await
            .map_err(|e| bad(format!("Existing image {path} cannot be read: {e}")))?;
        if info.raw["encrypted"].as_bool() == Some(true) {
            return Err(bad(format!("Existing image {path} is encrypted; encrypted images are not supported")));
        }
        if let Some(b) = &info.backing_filename {
            return Err(bad(format!(
                "Existing image {path} has a backing file ({b}); give a self-contained image (qemu-img convert)"
            )));
        }
        if info.virtual_size != *size {
            return Err(bad(format!(
                "Existing image {path} is {} bytes; disk {target} is {size} bytes",
                info.virtual_size
            )));
        }
        out.push((target.clone(), canon));
    }
    Ok(out)
}

/// The time the images stand for: the newest modification time among them (a restored backup
/// keeps its own), else now.
pub fn images_time(images: &[(String, PathBuf)]) -> DateTime<Utc> {
    images
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rep_7_candidates_skip_links_and_list_each_folder_once() {
        let t = tempfile::tempdir().expect("tempdir");
        let loc = t.path().join("gold");
        let data = t.path().join("data");
        std::fs::create_dir_all(loc.join(REPLICAS_DIR).join("a")).expect("a");
        std::fs::create_dir_all(data.join("replicas").join("b")).expect("b");
        std::os::unix::fs::symlink(loc.join(REPLICAS_DIR).join("a"), data.join("replicas").join("a")).expect("link");
        let mut got = candidate_dirs(std::slice::from_ref(&loc), &data);
        got.sort();
        assert_eq!(got, vec![data.join("replicas").join("b"), loc.join(REPLICAS_DIR).join("a")]);
    }

    #[tokio::test]
    async fn rep_7_take_over_renames_in_place_and_relinks() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("replicas");
        let old = Uuid::new_v4();
        let new = Uuid::new_v4();
        let kept = t.path().join("loc").join(REPLICAS_DIR).join(old.to_string());
        std::fs::create_dir_all(&kept).expect("kept");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(kept.join("vda-000001.qcow2"), b"x").expect("file");
        std::os::unix::fs::symlink(&kept, root.join(old.to_string())).expect("old link");
        let dir = take_over(&kept, &root, new).expect("take over");
        assert_eq!(dir, t.path().join("loc").join(REPLICAS_DIR).join(new.to_string()));
        assert_eq!(location_of(&dir), t.path().join("loc").display().to_string());
        assert_eq!(location_of(&root.join("x")), "");
        assert!(dir.join("vda-000001.qcow2").exists());
        assert!(std::fs::symlink_metadata(root.join(old.to_string())).is_err(), "the old link is gone");
        assert_eq!(std::fs::read_link(root.join(new.to_string())).expect("new link"), dir);
        // A retry after a crash finds the folder under its new name: nothing changes.
        assert_eq!(take_over(&dir, &root, new).expect("again"), dir);
    }

    fn mib1() -> ferry_qemu::img::CreateOptions {
        ferry_qemu::img::CreateOptions { size: Some(1 << 20), backing: None, unsafe_backing: false }
    }

    #[tokio::test]
    async fn rep_7_existing_images_are_checked_before_use() {
        let t = tempfile::tempdir().expect("tempdir");
        let loc = t.path().join("gold");
        std::fs::create_dir_all(&loc).expect("loc");
        let img = loc.join("vda.qcow2");
        ferry_qemu::img::create(&img, ferry_qemu::DiskFormat::Qcow2, &mib1()).await.expect("create");
        let outside = t.path().join("elsewhere.qcow2");
        ferry_qemu::img::create(&outside, ferry_qemu::DiskFormat::Qcow2, &mib1()).await.expect("create");
        let disks = vec![("vda".to_string(), 1u64 << 20)];
        let roots = vec![loc.clone()];
        let path = |p: &Path| p.display().to_string();
        let ok = check_existing_images(&[("vda".into(), path(&img))], &disks, &roots).await.expect("valid");
        assert_eq!(ok, vec![("vda".to_string(), std::fs::canonicalize(&img).expect("canon"))]);
        let err = |r: Result<Vec<(String, PathBuf)>, ReplicationError>| r.expect_err("refused").to_string();
        assert!(err(check_existing_images(&[], &disks, &roots).await).contains("No existing image given for disk vda"));
        assert!(err(check_existing_images(&[("vda".into(), path(&outside))], &disks, &roots).await)
            .contains("not inside a storage location"));
        assert!(err(check_existing_images(&[("vda".into(), path(&loc.join("none")))], &disks, &roots).await)
            .contains("none"));
        let wrong = vec![("vda".to_string(), 2u64 << 20)];
        assert!(err(check_existing_images(&[("vda".into(), path(&img))], &wrong, &roots).await).contains("bytes"));
        assert!(err(
            check_existing_images(&[("vda".into(), path(&img)), ("vdz".into(), path(&img))], &disks, &roots).await
        )
        .contains("vdz"));
        // An escape through `..` is judged by where the path really leads.
        let sneaky = format!("{}/../elsewhere.qcow2", loc.display());
        assert!(err(check_existing_images(&[("vda".into(), sneaky)], &disks, &roots).await)
            .contains("not inside a storage location"));
    }
}
