//! Hook commands around the split (for example to put a database into backup mode): a
//! pre-split hook whose failure aborts the cycle cleanly, and a post-thaw hook. Each runs
//! through `sh -c` with `QSPLIT_VM` and `QSPLIT_PHASE` set, and is killed at its timeout.

use crate::api::{ApiError, ErrorKind};
use crate::daemon::{Ctx, VmRt};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub pre_split: Option<String>,
    pub post_thaw: Option<String>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub enum Phase {
    PreSplit,
    PostThaw,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::PreSplit => "pre-split",
            Phase::PostThaw => "post-thaw",
        }
    }
}

pub async fn run(ctx: &Ctx, vm: &VmRt, hooks: &Hooks, phase: Phase) -> Result<(), ApiError> {
    let cmd = match phase {
        Phase::PreSplit => &hooks.pre_split,
        Phase::PostThaw => &hooks.post_thaw,
    };
    let Some(cmd) = cmd else { return Ok(()) };
    let timeout = hooks.timeout.unwrap_or(Duration::from_secs(60));
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("QSPLIT_VM", &vm.name)
        .env("QSPLIT_PHASE", phase.name())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("vm {}: cannot run {} hook `{cmd}`: {e}", vm.name, phase.name())))?;
    let out = tokio::time::timeout(timeout, async {
        let mut buf = String::new();
        if let Some(mut e) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut buf).await;
        }
        (child.wait().await, buf)
    })
    .await;
    let msg = match out {
        Err(_) => {
            let _ = child.kill().await;
            format!("vm {}: {} hook `{cmd}` did not finish within {timeout:?}; it was killed", vm.name, phase.name())
        }
        Ok((Ok(st), _)) if st.success() => {
            ctx.events.note("backup", &vm.name, None, format!("vm {}: {} hook ok", vm.name, phase.name()), serde_json::Value::Null);
            return Ok(());
        }
        Ok((Ok(st), err)) => format!("vm {}: {} hook `{cmd}` failed ({st}): {}", vm.name, phase.name(), err.trim()),
        Ok((Err(e), _)) => format!("vm {}: {} hook `{cmd}`: {e}", vm.name, phase.name()),
    };
    let extra = match phase {
        Phase::PreSplit => "; the cycle was not started, nothing changed",
        Phase::PostThaw => "",
    };
    Err(ApiError::new(ErrorKind::BadRequest, format!("{msg}{extra}")))
}
