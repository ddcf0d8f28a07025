//! Image files seen from outside QEMU, through `qemu-img` and `qemu-io` (read-only, `-U`).
//!
//! `-U` (force share) lets these read an image that a running QEMU holds; what they see of an
//! image that is being written is only as consistent as the moment allows, so use them on
//! images QEMU has closed (split images) or after the writes of interest have completed.
//! Reading a whole image converts it to raw in a temporary file: fine for the small disks tests
//! use (tens of MiB), not for big ones.

use anyhow::{bail, Context};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Image formats the harness creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// Runs a tool and returns its stdout; a non-zero exit becomes an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}: {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `qemu-img create -f FMT PATH SIZE`.
pub fn create(path: &Path, format: Format, size: u64) -> anyhow::Result<()> {
    run("qemu-img", &["create", "-q", "-f", format.as_str(), path_str(path)?, &size.to_string()])?;
    Ok(())
}

/// `qemu-img info --output=json` of the image.
pub fn info(path: &Path) -> anyhow::Result<Value> {
    let out = run("qemu-img", &["info", "-U", "--output=json", path_str(path)?])?;
    serde_json::from_str(&out).with_context(|| format!("qemu-img info {}: not JSON", path.display()))
}

/// `qemu-img check` (qcow2): Ok when the image has no errors and no leaks.
pub fn check(path: &Path) -> anyhow::Result<()> {
    run("qemu-img", &["check", "-q", path_str(path)?]).map(|_| ())
}

/// `qemu-img compare` (not strict: allocation may differ): true when both images have the same guest-visible content.
pub fn identical(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let out = Command::new("qemu-img").args(["compare", "-U", path_str(a)?, path_str(b)?]).output().context("cannot run qemu-img")?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("qemu-img compare {} {}: {}", a.display(), b.display(), String::from_utf8_lossy(&out.stderr).trim()),
    }
}

/// The whole guest-visible content of an image (any format), as raw bytes.
pub fn read_all(path: &Path) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("content.raw");
    run("qemu-img", &["convert", "-U", "-O", "raw", path_str(path)?, path_str(&raw)?])?;
    std::fs::read(&raw).with_context(|| format!("reading converted {}", path.display()))
}

/// `len` bytes of guest-visible content from `offset` (reads the whole image; see module doc).
pub fn read_range(path: &Path, offset: u64, len: u64) -> anyhow::Result<Vec<u8>> {
    let all = read_all(path)?;
    let (s, e) = (offset as usize, (offset + len) as usize);
    if e > all.len() {
        bail!("{}: range {offset}+{len} is beyond its size {}", path.display(), all.len());
    }
    Ok(all[s..e].to_vec())
}

/// Whether every byte of `offset..offset+len` in the image equals `byte` (`qemu-io read -P`).
pub fn has_pattern(path: &Path, offset: u64, len: u64, byte: u8) -> anyhow::Result<bool> {
    let cmd = format!("read -P 0x{byte:02x} {offset} {len}");
    let out = Command::new("qemu-io").args(["-r", "-U", "-c", &cmd, path_str(path)?]).output().context("cannot run qemu-io")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // qemu-io exits 1 when the pattern differs, so judge by what it printed.
    if stdout.contains("Pattern verification failed") {
        return Ok(false);
    }
    if !out.status.success() || !stdout.contains("read ") {
        bail!("qemu-io {cmd} {}: {}: {}{}", path.display(), out.status, stdout.trim(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(true)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| format!("path {} is not UTF-8", p.display()))
}
