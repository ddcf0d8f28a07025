//! Which process is at the other end of a unix socket, and how much it has read.
//! (Signatures only; implemented on the qmp branch.)

use std::os::fd::AsRawFd;

/// PID of the peer of a connected unix socket (SO_PEERCRED).
pub fn peer_pid<S: AsRawFd>(sock: &S) -> std::io::Result<u32> {
    let _ = sock.as_raw_fd();
    todo!()
}

/// `rchar` from `/proc/PID/io`: bytes the process has read through read-like syscalls.
pub fn process_rchar(pid: u32) -> std::io::Result<u64> {
    let _ = pid;
    todo!()
}
