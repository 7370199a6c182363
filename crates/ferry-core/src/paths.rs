//! Path checks for operator-supplied paths (POL-8 offline export/import, PLAN-3 script paths,
//! SEC-3 path traversal). Paths are checked as text, without touching the filesystem: a path is
//! accepted only in its canonical form, so two spellings of one directory cannot slip past the
//! "not on a replication host" rule.

use crate::error::Error;

/// Checks an absolute path: non-empty, no NUL, starts with `/`, no `.`/`..`/empty components,
/// no trailing `/` (except the root itself).
pub fn validate_absolute_path(field: &str, path: &str) -> Result<(), Error> {
    check_common(field, path)?;
    if !path.starts_with('/') {
        return Err(Error::PathNotAbsolute { field: field.into(), path: path.into() });
    }
    if path == "/" {
        return Ok(());
    }
    check_components(field, path, &path[1..])
}

/// Checks a path relative to a library root (PLAN-3 scripts): non-empty, no NUL, not absolute,
/// no `..`, no `.` or empty components. The same relative path is used on both sites.
pub fn validate_relative_script_path(path: &str) -> Result<(), Error> {
    const FIELD: &str = "script";
    check_common(FIELD, path)?;
    if path.starts_with('/') {
        return Err(Error::PathNotRelative { field: FIELD.into(), path: path.into() });
    }
    check_components(FIELD, path, path)
}

/// Whether `path` is `parent` or lies below it. Both must be canonical absolute paths.
pub fn is_same_or_inside(path: &str, parent: &str) -> bool {
    let parent = parent.trim_end_matches('/');
    if parent.is_empty() {
        return path.starts_with('/');
    }
    path == parent || (path.starts_with(parent) && path[parent.len()..].starts_with('/'))
}

fn check_common(field: &str, path: &str) -> Result<(), Error> {
    if path.is_empty() {
        return Err(Error::PathEmpty { field: field.into() });
    }
    if path.contains('\0') {
        return Err(Error::PathContainsNul { field: field.into() });
    }
    Ok(())
}

fn check_components(field: &str, path: &str, rest: &str) -> Result<(), Error> {
    let comps: Vec<&str> = rest.split('/').collect();
    if comps.contains(&"..") {
        return Err(Error::PathTraversal { field: field.into(), path: path.into() });
    }
    if comps.iter().any(|c| c.is_empty() || *c == ".") {
        return Err(Error::PathNotNormalized { field: field.into(), path: path.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<(), Error>) -> &'static str {
        match r {
            Ok(()) => "Ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn sec_3_absolute_path_rules() {
        assert_eq!(code(validate_absolute_path("export_path", "/mnt/usb/export")), "Ok");
        assert_eq!(code(validate_absolute_path("export_path", "/")), "Ok");
        assert_eq!(code(validate_absolute_path("export_path", "")), "PathEmpty");
        assert_eq!(code(validate_absolute_path("export_path", "mnt/usb")), "PathNotAbsolute");
        assert_eq!(code(validate_absolute_path("export_path", "/mnt/../etc")), "PathTraversal");
        assert_eq!(code(validate_absolute_path("export_path", "/mnt/..")), "PathTraversal");
        assert_eq!(code(validate_absolute_path("export_path", "/mnt/\0x")), "PathContainsNul");
        assert_eq!(code(validate_absolute_path("export_path", "/mnt//usb")), "PathNotNormalized");
        assert_eq!(code(validate_absolute_path("export_path", "/mnt/./usb")), "PathNotNormalized");
        assert_eq!(code(validate_absolute_path("export_path", "/mnt/usb/")), "PathNotNormalized");
        // `..` inside a name is not a traversal.
        assert_eq!(code(validate_absolute_path("export_path", "/mnt/a..b")), "Ok");
    }

    #[test]
    fn sec_3_traversal_error_names_field_and_path() {
        let err = validate_absolute_path("import_path", "/srv/../var").err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("Path import_path (/srv/../var) must not contain a '..' component")
        );
    }

    #[test]
    fn sec_3_relative_script_path_rules() {
        assert_eq!(code(validate_relative_script_path("scripts/pre-failover.sh")), "Ok");
        assert_eq!(code(validate_relative_script_path("start.sh")), "Ok");
        assert_eq!(code(validate_relative_script_path("/etc/passwd")), "PathNotRelative");
        assert_eq!(code(validate_relative_script_path("../outside.sh")), "PathTraversal");
        assert_eq!(code(validate_relative_script_path("a/../../b.sh")), "PathTraversal");
        assert_eq!(code(validate_relative_script_path("a\0.sh")), "PathContainsNul");
        assert_eq!(code(validate_relative_script_path("")), "PathEmpty");
        assert_eq!(code(validate_relative_script_path("./a.sh")), "PathNotNormalized");
    }

    #[test]
    fn sec_3_same_or_inside_respects_component_boundaries() {
        assert!(is_same_or_inside("/var/lib/ferry", "/var/lib/ferry"));
        assert!(is_same_or_inside("/var/lib/ferry/x", "/var/lib/ferry"));
        assert!(is_same_or_inside("/var/lib/ferry/x", "/var/lib/ferry/"));
        assert!(!is_same_or_inside("/var/lib/ferry2", "/var/lib/ferry"));
        assert!(!is_same_or_inside("/var/lib", "/var/lib/ferry"));
        assert!(is_same_or_inside("/anything", "/"));
    }
}
