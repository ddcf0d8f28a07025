//! QMP and guest-agent clients: the only code that talks to QEMU's sockets.
//!
//! (API fixed here first; the implementation lands with the qmp branch.)
//! - `Qmp`: one connection to a QMP unix socket. Commands are matched to replies by `id`, so
//!   several may be in flight; events are fanned out on a broadcast channel. Messages and
//!   fields it does not know are kept as JSON values, never an error that ends the connection.
//!   Every command and reply is traced at debug level; a command without a reply within its
//!   timeout fails with `QmpError::Timeout`.
//! - `Qga`: the QEMU guest agent over its chardev socket (guest-sync handshake, ping, fsfreeze).
//! - `peer`: the PID of the process at the other end of a unix socket (SO_PEERCRED) and its
//!   `/proc/PID/io` counters.

pub mod error;
pub mod peer;
pub mod qga;
pub mod transport;
mod wire;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod qga_tests;

pub use error::QmpError;
pub use qga::{FreezeStatus, Qga};
pub use transport::{Qmp, QmpEvent};
