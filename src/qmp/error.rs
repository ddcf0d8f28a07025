//! Errors of the QMP and guest-agent clients; callers branch on the variant.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened (missing, refused, or already taken by another client).
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    /// The socket accepted the connection but QEMU never sent its greeting: another client
    /// holds this monitor (QEMU serves one client per monitor socket).
    #[error("QMP socket {path} is in use by another client (no greeting within {waited:?})")]
    InUse { path: String, waited: Duration },
    /// QEMU answered the command with an error.
    #[error("{command}: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    /// No reply within the timeout.
    #[error("{command}: no reply within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    /// The connection is gone (QEMU exited, socket closed).
    #[error("connection to {path} closed{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Disconnected { path: String, reason: String },
    /// The peer did not speak the protocol (bad greeting, undecodable reply to a command).
    #[error("{0}")]
    Protocol(String),
}
