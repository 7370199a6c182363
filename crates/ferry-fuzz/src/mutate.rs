//! Inputs as mutations of valid seeds.

use std::path::PathBuf;

/// One fuzz input: which seed, bytes overwritten (position modulo the length), where to cut,
/// and bytes appended.
pub type Mutation = (u8, Vec<(u16, u8)>, Option<u16>, Vec<u8>);

/// Apply `m` to one of `seeds` (an empty list fuzzes the appended bytes alone).
pub fn apply(seeds: &[Vec<u8>], m: &Mutation) -> Vec<u8> {
    let (pick, edits, cut, tail) = m;
    let mut b = if seeds.is_empty() { Vec::new() } else { seeds[*pick as usize % seeds.len()].clone() };
    if !b.is_empty() {
        let n = b.len();
        for (at, v) in edits.iter().take(16) {
            b[*at as usize % n] = *v;
        }
    }
    if let Some(c) = cut {
        let keep = (*c as usize).min(b.len());
        if *c % 4 == 0 {
            b.truncate(keep);
        }
    }
    b.extend_from_slice(&tail[..tail.len().min(256)]);
    b
}

/// The checked-in corpus of `target` (`corpus/<target>/*`), regression inputs included.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// How long each target runs.
pub fn budget() -> std::time::Duration {
    let secs = std::env::var("FERRY_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_3_mutations_edit_cut_and_extend_a_seed() {
        let seeds = vec![b"abcdef".to_vec()];
        assert_eq!(apply(&seeds, &(0, vec![(1, b'X')], None, vec![])), b"aXcdef");
        assert_eq!(apply(&seeds, &(0, vec![], Some(4), vec![b'!'])), b"abcd!");
        assert_eq!(apply(&seeds, &(0, vec![], Some(3), vec![])), b"abcdef", "only some cuts apply");
        assert_eq!(apply(&[], &(3, vec![(0, 1)], None, vec![7])), vec![7]);
    }
}
