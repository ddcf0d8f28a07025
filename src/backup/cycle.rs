//! One backup cycle for a VM. (Lands with issue 4.)

use crate::api::{ApiError, ErrorKind};
use crate::daemon::{Ctx, VmRt};
use std::path::Path;

pub async fn run(_ctx: &Ctx, vm: &VmRt, _archive: &Path, _freeze: Option<bool>) -> Result<serde_json::Value, ApiError> {
    Err(ApiError::new(ErrorKind::Internal, format!("vm {}: `qsplit backup` is not built yet", vm.name)))
}
