//! `qemu-img` helpers: create, info, map, rebase, commit, compare, check, convert.
//!
//! Every call runs `qemu-img` as a child process and turns a non-zero exit into
//! [`ErrorKind::Tool`] carrying its stderr. JSON output is parsed tolerantly (unknown fields are
//! ignored) because newer QEMU versions add fields. Use `force_share` (`-U`) for images a running
//! QEMU holds; never trust `-U` reads of an *active* qcow2 (its metadata is cached in QEMU).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::process::Command;

use crate::error::{Error, ErrorKind, Result};
use crate::spec::DiskFormat;

/// Options of [`create`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Virtual size in bytes; may be omitted only with a backing file (then it is inherited).
    pub size: Option<u64>,
    /// Backing file and its format (`-b ... -F ...`).
    pub backing: Option<(PathBuf, DiskFormat)>,
    /// `-u`: do not open the backing file (requires `size`).
    pub unsafe_backing: bool,
}

/// A persistent bitmap stored in a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBitmap {
    pub name: String,
    pub granularity: u64,
    /// e.g. `auto`, `in-use` (after an unclean exit).
    pub flags: Vec<String>,
}

/// Parsed `qemu-img info --output=json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: Option<u64>,
    pub backing_filename: Option<String>,
    pub backing_format: Option<String>,
    pub dirty: bool,
    pub bitmaps: Vec<ImageBitmap>,
    pub raw: Value,
}

/// One extent of `qemu-img map --output=json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MapExtent {
    pub start: u64,
    pub length: u64,
    #[serde(default)]
    pub depth: u64,
    #[serde(default = "yes")]
    pub present: bool,
    #[serde(default)]
    pub zero: bool,
    #[serde(default)]
    pub data: bool,
    /// Host file offset of the data (uncompressed, unencrypted images only).
    #[serde(default)]
    pub offset: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Parsed `qemu-img check --output=json`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub raw: Value,
}

impl CheckReport {
    /// No corruptions, leaks or check errors.
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| Error::new(ErrorKind::InvalidSpec, format!("Path is not UTF-8: {}", p.display())))
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(args: &[&str]) -> Result<Output> {
    let out = Command::new("qemu-img")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::io("Cannot run qemu-img", e))?;
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

async fn run_ok(args: &[&str]) -> Result<String> {
    let out = run(args).await?;
    if out.code != 0 {
        return Err(Error::new(
            ErrorKind::Tool,
            format!(
                "qemu-img {} failed (status {}): {}",
                args.first().copied().unwrap_or(""),
                out.code,
                out.stderr.trim()
            ),
        ));
    }
    Ok(out.stdout)
}

fn parse_json<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::with_source(ErrorKind::Parse, format!("Cannot parse qemu-img {what} output"), e))
}

/// `qemu-img create -f <format> [-u] [-b backing -F fmt] path [size]`.
pub async fn create(path: &Path, format: DiskFormat, opts: &CreateOptions) -> Result<()> {
    let size = opts.size.map(|s| s.to_string());
    let mut args = vec!["create", "-q", "-f", format.as_str()];
    if let Some((b, bf)) = &opts.backing {
        args.extend(["-b", path_str(b)?, "-F", bf.as_str()]);
        if opts.unsafe_backing {
            if size.is_none() {
                return Err(Error::new(ErrorKind::InvalidSpec, "qemu-img create -u needs an explicit size"));
            }
            args.push("-u");
        }
    } else if size.is_none() {
        return Err(Error::new(ErrorKind::InvalidSpec, "qemu-img create needs a size without a backing file"));
    }
    args.push(path_str(path)?);
    if let Some(s) = &size {
        args.push(s);
    }
    run_ok(&args).await.map(|_| ())
}

/// Parse `qemu-img info --output=json` text.
pub fn parse_info(text: &str) -> Result<ImageInfo> {
    let v: Value = parse_json("info", text)?;
    let format = v
        .get("format")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new(ErrorKind::Parse, "qemu-img info output has no format"))?
        .to_string();
    let virtual_size = v
        .get("virtual-size")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::new(ErrorKind::Parse, "qemu-img info output has no virtual-size"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let bitmaps = v
        .pointer("/format-specific/data/bitmaps")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|b| {
                    Some(ImageBitmap {
                        name: b.get("name")?.as_str()?.to_string(),
                        granularity: b.get("granularity").and_then(Value::as_u64).unwrap_or(0),
                        flags: b
                            .get("flags")
                            .and_then(Value::as_array)
                            .map(|f| f.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                            .unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ImageInfo {
        format,
        virtual_size,
        actual_size: v.get("actual-size").and_then(Value::as_u64),
        backing_filename: s("backing-filename"),
        backing_format: s("backing-filename-format"),
        dirty: v.get("dirty-flag").and_then(Value::as_bool).unwrap_or(false),
        bitmaps,
        raw: v,
    })
}

/// `qemu-img info --output=json [-U]`.
pub async fn info(path: &Path, force_share: bool) -> Result<ImageInfo> {
    let mut args = vec!["info", "--output=json"];
    if force_share {
        args.push("-U");
    }
    args.push(path_str(path)?);
    parse_info(&run_ok(&args).await?)
}

/// Parse `qemu-img map --output=json` text.
pub fn parse_map(text: &str) -> Result<Vec<MapExtent>> {
    parse_json("map", text)
}

/// `qemu-img map` of the whole chain of `path`.
pub async fn map(path: &Path, force_share: bool) -> Result<Vec<MapExtent>> {
    let mut args = vec!["map", "--output=json"];
    if force_share {
        args.push("-U");
    }
    args.push(path_str(path)?);
    parse_map(&run_ok(&args).await?)
}

/// `qemu-img map` of ONE qcow2 layer, ignoring its backing chain
/// (`json:{"driver":"qcow2","backing":null,...}`). Returns only extents of that layer
/// (`depth == 0 && present`): data extents carry the host `offset`, zero extents are zero clusters.
pub async fn map_layer(path: &Path, force_share: bool) -> Result<Vec<MapExtent>> {
    let spec = json!({"driver": "qcow2", "backing": null,
                      "file": {"driver": "file", "filename": path_str(path)?}});
    let spec = format!("json:{spec}");
    let mut args = vec!["map", "--output=json"];
    if force_share {
        args.push("-U");
    }
    args.push(&spec);
    let all = parse_map(&run_ok(&args).await?)?;
    Ok(all.into_iter().filter(|e| e.depth == 0 && e.present && (e.data || e.zero)).collect())
}

/// `qemu-img rebase -u -f qcow2 -b backing -F fmt path` (metadata only).
pub async fn rebase_unsafe(path: &Path, backing: &Path, backing_format: DiskFormat) -> Result<()> {
    run_ok(&["rebase", "-u", "-f", "qcow2", "-b", path_str(backing)?, "-F", backing_format.as_str(), path_str(path)?])
        .await
        .map(|_| ())
}

/// `qemu-img commit -q -d [-b base] top`: merge `top` (and the layers between) into `base`
/// (default: its direct backing file) without emptying `top`.
pub async fn commit(top: &Path, base: Option<&Path>) -> Result<()> {
    let mut args = vec!["commit", "-q", "-d"];
    if let Some(b) = base {
        args.extend(["-b", path_str(b)?]);
    }
    args.push(path_str(top)?);
    run_ok(&args).await.map(|_| ())
}

/// `qemu-img compare [-U] a b`: `Ok(true)` identical, `Ok(false)` different.
pub async fn compare(a: &Path, b: &Path, force_share: bool) -> Result<bool> {
    let mut args = vec!["compare", "-q"];
    if force_share {
        args.push("-U");
    }
    args.extend([path_str(a)?, path_str(b)?]);
    let out = run(&args).await?;
    match out.code {
        0 => Ok(true),
        1 => Ok(false),
        c => Err(Error::new(ErrorKind::Tool, format!("qemu-img compare failed (status {c}): {}", out.stderr.trim()))),
    }
}

/// `qemu-img check --output=json`. Corruptions and leaks are reported, not errors.
pub async fn check(path: &Path) -> Result<CheckReport> {
    let out = run(&["check", "--output=json", path_str(path)?]).await?;
    // Status 0 clean, 2 corruptions, 3 leaks: JSON on stdout in all three cases.
    if !matches!(out.code, 0 | 2 | 3) || out.stdout.trim().is_empty() {
        return Err(Error::new(
            ErrorKind::Tool,
            format!("qemu-img check failed (status {}): {}", out.code, out.stderr.trim()),
        ));
    }
    let v: Value = parse_json("check", &out.stdout)?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(CheckReport { corruptions: n("corruptions"), leaks: n("leaks"), check_errors: n("check-errors"), raw: v })
}

/// `qemu-img convert [-U] -O <format> src dst`.
pub async fn convert(src: &Path, dst: &Path, format: DiskFormat, force_share: bool) -> Result<()> {
    let mut args = vec!["convert", "-q"];
    if force_share {
        args.push("-U");
    }
    args.extend(["-O", format.as_str(), path_str(src)?, path_str(dst)?]);
    run_ok(&args).await.map(|_| ())
}

/// `qemu-img convert` from an image of a known format (no format probing).
pub async fn convert_from(src: &Path, src_format: DiskFormat, dst: &Path, format: DiskFormat) -> Result<()> {
    let args = ["convert", "-q", "-f", src_format.as_str(), "-O", format.as_str(), path_str(src)?, path_str(dst)?];
    run_ok(&args).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_1_info_and_map_parsing_tolerates_new_fields() {
        let info = parse_info(
            r#"{"virtual-size":1048576,"filename":"d.qcow2","format":"qcow2","actual-size":200704,
                "dirty-flag":false,"new-field":{"x":1},
                "format-specific":{"type":"qcow2","data":{"compat":"1.1","bitmaps":[
                  {"flags":["in-use","auto"],"name":"bm0","granularity":65536}]}},
                "backing-filename":"base.qcow2","backing-filename-format":"qcow2"}"#,
        )
        .expect("info");
        assert_eq!(info.virtual_size, 1 << 20);
        assert_eq!(info.bitmaps[0].flags, vec!["in-use", "auto"]);
        assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
        let map = parse_map(
            r#"[{"start":0,"length":65536,"depth":0,"present":true,"zero":false,"data":true,
                 "compressed":false,"offset":327680},
                {"start":65536,"length":983040,"depth":0,"present":false,"zero":false,"data":false}]"#,
        )
        .expect("map");
        assert_eq!(map[0].offset, Some(327680));
        assert!(!map[1].present);
        assert!(parse_info("{}").is_err());
        assert!(parse_map("not json").is_err());
    }
}
