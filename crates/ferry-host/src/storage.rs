//! Storage locations (HOST-5): directories with a classification and their free space.

use std::path::Path;

use ferry_types::fabric::StorageLocation;

use crate::config::StorageDef;

/// Free and total bytes of the filesystem holding `path`.
pub fn space(path: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = st.fragment_size() as u64;
    Ok((st.blocks_available() as u64 * frsize, st.blocks() as u64 * frsize))
}

/// The locations as reported; a missing directory is created.
pub fn locations(defs: &[StorageDef]) -> Vec<StorageLocation> {
    defs.iter()
        .map(|d| {
            let _ = std::fs::create_dir_all(&d.path);
            let (free, total) = space(&d.path).unwrap_or((0, 0));
            StorageLocation {
                path: d.path.display().to_string(),
                classification: d.classification.clone(),
                free_bytes: free,
                total_bytes: total,
                default_replica: d.default_replica,
                shared: d.shared,
            }
        })
        .collect()
}

/// Whether `file` lies inside one of the storage locations.
pub fn inside_locations(defs: &[StorageDef], file: &Path) -> bool {
    defs.iter().any(|d| file.starts_with(&d.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_5_locations_report_classification_and_free_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let defs = vec![
            StorageDef {
                path: dir.path().join("gold"),
                classification: Some("GOLD".into()),
                default_replica: false,
                shared: false,
            },
            StorageDef { path: dir.path().join("replica"), classification: None, default_replica: true, shared: false },
        ];
        let locs = locations(&defs);
        assert_eq!(locs.len(), 2);
        assert_eq!(locs[0].classification.as_deref(), Some("GOLD"));
        assert!(locs[0].free_bytes > 0 && locs[0].free_bytes <= locs[0].total_bytes);
        assert!(locs[1].default_replica && !locs[0].default_replica);
        assert!(inside_locations(&defs, &dir.path().join("gold/vm1/vda.qcow2")));
        assert!(!inside_locations(&defs, Path::new("/etc/passwd")));
    }
}
