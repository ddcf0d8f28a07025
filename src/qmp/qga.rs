//! QEMU guest agent client. (Signatures only; implemented on the qmp branch.)

use super::QmpError;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeStatus {
    Thawed,
    Frozen,
}

/// A guest-agent endpoint. Each call opens the socket, synchronises with `guest-sync`
/// (discarding stale replies), runs one command and closes; every call has a deadline.
#[derive(Clone, Debug)]
pub struct Qga {}

impl Qga {
    pub fn new(path: &Path) -> Qga {
        let _ = path;
        todo!()
    }
    pub async fn ping(&self, timeout: Duration) -> Result<(), QmpError> {
        let _ = timeout;
        todo!()
    }
    /// Freezes all guest filesystems; returns how many were frozen.
    pub async fn fsfreeze_freeze(&self, timeout: Duration) -> Result<u64, QmpError> {
        let _ = timeout;
        todo!()
    }
    /// Thaws all guest filesystems; returns how many were thawed.
    pub async fn fsfreeze_thaw(&self, timeout: Duration) -> Result<u64, QmpError> {
        let _ = timeout;
        todo!()
    }
    pub async fn fsfreeze_status(&self, timeout: Duration) -> Result<FreezeStatus, QmpError> {
        let _ = timeout;
        todo!()
    }
}
