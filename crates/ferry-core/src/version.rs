//! Host software versions (POL-1, FAB-5): a QEMU *version family* is its `major.minor`, written
//! `7.2`, `7.2.9` or `qemu-7.2`; Ferry supports family 7.2 and newer.

/// Oldest supported QEMU family.
pub const MIN_QEMU_FAMILY: (u32, u32) = (7, 2);

/// Parses `7.2`, `7.2.9`, `qemu-7.2` or `QEMU 8.0.1` into `(major, minor)`.
pub fn qemu_family(version: &str) -> Option<(u32, u32)> {
    let v = version.trim();
    let v =
        v.strip_prefix("qemu-").or_else(|| v.strip_prefix("QEMU ")).or_else(|| v.strip_prefix("qemu ")).unwrap_or(v);
    let mut parts = v.split('.');
    let major = parts.next()?.trim().parse().ok()?;
    let minor = parts.next()?.trim().parse().ok()?;
    Some((major, minor))
}

/// Whether a QEMU version is of a supported family (7.2 or newer).
pub fn qemu_supported(version: &str) -> bool {
    qemu_family(version).is_some_and(|f| f >= MIN_QEMU_FAMILY)
}

/// `major.minor` of a semantic version like `0.1.3`, used to compare agent versions: agents of
/// one `major.minor` speak the same protocol.
pub fn agent_series(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().trim_start_matches('v').split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pol_1_qemu_family_parses_common_spellings() {
        assert_eq!(qemu_family("7.2"), Some((7, 2)));
        assert_eq!(qemu_family("7.2.9"), Some((7, 2)));
        assert_eq!(qemu_family("qemu-7.2"), Some((7, 2)));
        assert_eq!(qemu_family("QEMU 8.0.1"), Some((8, 0)));
        assert_eq!(qemu_family("seven"), None);
        assert_eq!(qemu_family("7"), None);
    }

    #[test]
    fn fab_5_supported_qemu_is_7_2_and_newer() {
        assert!(qemu_supported("7.2.9"));
        assert!(qemu_supported("8.0"));
        assert!(qemu_supported("9.1.2"));
        assert!(!qemu_supported("7.1"));
        assert!(!qemu_supported("6.2.0"));
        assert!(!qemu_supported(""));
    }

    #[test]
    fn fab_5_agent_series_ignores_patch() {
        assert_eq!(agent_series("0.1.3"), Some((0, 1)));
        assert_eq!(agent_series("v1.4.0-rc1"), Some((1, 4)));
        assert_eq!(agent_series(""), None);
    }
}
