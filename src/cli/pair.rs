//! `qsplit daemon | vm | pair | events | backup`: arguments, and the client side of the
//! control socket for every verb that talks to the daemon.

use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Where pairs and VMs are recorded (written atomically, reconciled with QEMU on start).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// TOML config: VMs, pairs, archives and schedules.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Connect to a running QEMU over its QMP socket (and optionally its guest agent socket).
    Attach {
        name: String,
        #[arg(long)]
        qmp: PathBuf,
        #[arg(long)]
        qga: Option<PathBuf>,
    },
    /// Forget a VM (refused while it has pairs).
    Detach { name: String },
    /// List attached VMs.
    List,
}

#[derive(Subcommand, Debug)]
pub enum PairCmd {
    /// Create a secondary image and start a synchronous mirror of DRIVE into it.
    Create {
        name: String,
        drive: String,
        #[arg(long)]
        target: PathBuf,
    },
    /// Show pairs (all, or those of one VM).
    Status { name: Option<String> },
    /// Block until the pair(s) reach STATE.
    Wait {
        name: String,
        drive: Option<String>,
        #[arg(long)]
        state: String,
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Split the named disks (default: all pairs of the VM) at one instant.
    Split {
        name: String,
        drives: Vec<String>,
        #[arg(long, overrides_with = "no_freeze")]
        freeze: bool,
        #[arg(long)]
        no_freeze: bool,
    },
    /// Copy back what changed since the split and return to duplex.
    Resync {
        name: String,
        drives: Vec<String>,
        #[arg(long)]
        max_pause_ms: Option<u64>,
    },
    /// Stop mirroring, remove qsplit's bitmaps; the secondary image stays on disk.
    Delete { name: String, drives: Vec<String> },
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events as they happen.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    pub name: String,
    #[arg(long)]
    pub archive: PathBuf,
    #[arg(long, overrides_with = "no_freeze")]
    pub freeze: bool,
    #[arg(long)]
    pub no_freeze: bool,
}

pub fn run_daemon(_a: DaemonArgs, _socket: &Path) -> anyhow::Result<i32> {
    anyhow::bail!("qsplit daemon: not built yet (issue 2)")
}
pub fn run_vm(_c: VmCmd, _socket: &Path, _json: bool) -> anyhow::Result<i32> {
    anyhow::bail!("qsplit vm: not built yet (issue 2)")
}
pub fn run_pair(_c: PairCmd, _socket: &Path, _json: bool) -> anyhow::Result<i32> {
    anyhow::bail!("qsplit pair: not built yet (issue 2)")
}
pub fn run_events(_a: EventsArgs, _socket: &Path, _json: bool) -> anyhow::Result<i32> {
    anyhow::bail!("qsplit events: not built yet (issue 2)")
}
pub fn run_backup(_a: BackupArgs, _socket: &Path, _json: bool) -> anyhow::Result<i32> {
    anyhow::bail!("qsplit backup: not built yet (issue 4)")
}
