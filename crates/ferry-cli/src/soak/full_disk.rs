//! Replica locations that can fill up: before the lab starts, the soak mounts a small tmpfs on
//! each Chicago host's GOLD_TARGET location (where the lab's replicas live), so that a fault can
//! fill one with a file and free it again, as when a replica volume runs out of space. Unmounted
//! when the guard drops. It needs root; without it the soak runs without this fault.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The hosts and location the soak mounts.
pub const HOSTS: [&str; 2] = ["chi1", "chi2"];
const LOCATION: &str = "gold_target";
const FILLER: &str = ".soak-filler";

/// The mounted locations; unmounted on drop.
pub struct SmallLocations {
    mounts: Vec<(String, PathBuf)>,
}

/// The path of `host`'s replica location in the lab in `dir`.
pub fn location(dir: &Path, host: &str) -> PathBuf {
    dir.join("storage").join(host).join(LOCATION)
}

/// Whether item `it` (as the API shows it) keeps a replica disk in location `path`.
pub fn holds_replica_of(path: &Path, it: &serde_json::Value) -> bool {
    let Ok(path) = std::fs::canonicalize(path) else { return false };
    it["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["location"].as_str())
        .any(|l| std::fs::canonicalize(l).is_ok_and(|l| l == path))
}

impl SmallLocations {
    /// Mount a tmpfs of `size_mib` on every host's location under the lab directory `dir`.
    pub fn mount(dir: &Path, size_mib: u64) -> Result<SmallLocations> {
        let mut out = SmallLocations { mounts: Vec::new() };
        for host in HOSTS {
            let path = location(dir, host);
            std::fs::create_dir_all(&path)?;
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "ferry-soak"])
                .arg(&path)
                .status()
                .context("cannot run mount")?;
            if !st.success() {
                bail!("mounting a tmpfs on {} failed ({st}); the soak needs root for it", path.display());
            }
            out.mounts.push((host.to_string(), path));
        }
        Ok(out)
    }

    /// Fill `host`'s location to the last byte; the space comes back when the filler drops.
    pub fn fill(&self, host: &str) -> Result<Filler> {
        let Some((_, path)) = self.mounts.iter().find(|(h, _)| h == host) else {
            bail!("{host} has no small replica location");
        };
        let filler = Filler { path: path.join(FILLER) };
        let mut f = std::fs::File::create(&filler.path)?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => return Err(e).context("filling the replica location"),
            }
        }
        // The last partial pages too.
        let small = [0u8; 512];
        while f.write(&small).is_ok_and(|n| n > 0) {
            written += 512;
        }
        let _ = written;
        Ok(filler)
    }

    /// Whether anything is still mounted under `dir` (a leftover).
    pub fn mounted_under(dir: &Path) -> Vec<String> {
        let dir = dir.to_string_lossy().to_string();
        std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for SmallLocations {
    fn drop(&mut self) {
        for (_, path) in self.mounts.drain(..) {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
    }
}

/// The file that fills a location; removed on drop.
pub struct Filler {
    path: PathBuf,
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_holds_a_replica_in_the_location_its_disks_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (gold, silver) = (location(dir.path(), "chi1"), dir.path().join("storage/chi1/silver_target"));
        std::fs::create_dir_all(&gold).expect("gold");
        std::fs::create_dir_all(&silver).expect("silver");
        let on = |p: &Path| serde_json::json!({"disks": [{"location": p.display().to_string()}]});
        assert!(holds_replica_of(&gold, &on(&gold)));
        assert!(!holds_replica_of(&gold, &on(&silver)), "another classification's location");
        assert!(!holds_replica_of(&gold, &serde_json::json!({})));
    }

    #[test]
    fn a_small_location_fills_up_frees_again_and_is_unmounted() {
        let root = std::fs::read_to_string("/proc/self/status")
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
        if !root {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().to_path_buf();
        {
            let locs = SmallLocations::mount(&dir, 8).expect("mount");
            assert_eq!(SmallLocations::mounted_under(&dir).len(), HOSTS.len());
            let probe = location(&dir, "chi1").join("replica.bin");
            {
                let _full = locs.fill("chi1").expect("fill");
                let e = std::fs::write(&probe, vec![1u8; 64 << 10]).expect_err("the location is full");
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                std::fs::write(location(&dir, "chi2").join("replica.bin"), b"x").expect("the other has room");
            }
            std::fs::write(&probe, vec![1u8; 64 << 10]).expect("room again once the filler is gone");
            assert!(locs.fill("ny1").is_err(), "only the mounted hosts");
        }
        assert!(SmallLocations::mounted_under(&dir).is_empty(), "unmounted");
    }
}
