//! QMP transport over a unix socket. (Signatures only; implemented on the qmp branch.)

use super::QmpError;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// One event as QEMU sent it; `data` is `{}` when QEMU sent none.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
    /// Seconds since the epoch, from QEMU's timestamp.
    pub timestamp: f64,
}

/// A QMP connection. Cheap to clone; all clones share the socket.
#[derive(Clone)]
pub struct Qmp {}

impl Qmp {
    /// Connects, reads the greeting, negotiates capabilities. Fails within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let _ = (path, timeout);
        todo!()
    }
    /// Runs a command with arguments given as a JSON object (or `Value::Null` for none) and
    /// returns its `return` value. Uses the default timeout (30 s).
    pub async fn execute_value(&self, command: &str, args: Value) -> Result<Value, QmpError> {
        self.execute_value_timeout(command, args, Duration::from_secs(30)).await
    }
    pub async fn execute_value_timeout(&self, command: &str, args: Value, timeout: Duration) -> Result<Value, QmpError> {
        let _ = (command, args, timeout);
        todo!()
    }
    /// Runs a typed command from the `qapi` crate and decodes its reply.
    pub async fn execute<C: qapi::Command>(&self, cmd: C) -> Result<C::Ok, QmpError> {
        let _ = cmd;
        todo!()
    }
    /// A receiver of every event that arrives after this call.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<QmpEvent> {
        todo!()
    }
    /// Resolves when the connection is gone (QEMU exited or closed the socket).
    pub async fn closed(&self) {
        todo!()
    }
    pub fn is_closed(&self) -> bool {
        todo!()
    }
    /// PID of the QEMU process at the other end (SO_PEERCRED), if the kernel told.
    pub fn peer_pid(&self) -> Option<u32> {
        todo!()
    }
    pub fn path(&self) -> &Path {
        todo!()
    }
}
