//! `qsplit archive ...`: write, list, verify and restore tape-emulating archives.
//! (Arguments are the contract of issue 3; the implementation lands with it.)

use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ArchiveCmd {
    /// Stream an image (raw or qcow2) into a new backup set at the end of ARCHIVE.
    Write(WriteArgs),
    /// List every set in the archive.
    List { archive: PathBuf },
    /// Check every record's CRC and every set's chunk digests.
    Verify {
        archive: PathBuf,
        #[arg(long)]
        set: Option<u64>,
    },
    /// Rebuild the image as of a set (its full base plus incrementals) and verify it.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct WriteArgs {
    pub image: PathBuf,
    pub archive: PathBuf,
    /// Write a full set even when an incremental is possible.
    #[arg(long, conflicts_with = "bitmap")]
    pub full: bool,
    /// Write an incremental from this persistent qcow2 bitmap of IMAGE.
    #[arg(long)]
    pub bitmap: Option<String>,
    /// The disk this set belongs to (default: the identity qsplit recorded in the split image,
    /// else the image's file name).
    #[arg(long)]
    pub disk: Option<String>,
    #[arg(long)]
    pub label: Option<String>,
    /// Cartridge capacity (e.g. 1.5T); default unlimited. Fixed when the archive is created.
    #[arg(long)]
    pub capacity: Option<String>,
    /// Record size, 16K..1M (default 64K). Fixed when the archive is created.
    #[arg(long)]
    pub block_size: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    pub archive: PathBuf,
    pub output: PathBuf,
    #[arg(long)]
    pub set: Option<u64>,
    #[arg(long, value_parser = ["raw", "qcow2"], default_value = "raw")]
    pub format: String,
    /// Overwrite an existing OUTPUT.
    #[arg(long)]
    pub force: bool,
}

pub fn run(_cmd: ArchiveCmd, _json: bool) -> anyhow::Result<i32> {
    anyhow::bail!("qsplit archive: not built yet (issue 3)")
}
