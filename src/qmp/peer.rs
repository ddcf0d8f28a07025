//! Which process is at the other end of a unix socket, and how much it has read.
//!
//! `peer_pid` asks the kernel (SO_PEERCRED): the PID is the process that created the listening
//! socket (for QMP, the QEMU process), recorded at connect time. `process_rchar` reads
//! `/proc/PID/io`, which needs the same user as the target (or CAP_SYS_PTRACE).
//! Linux only.

use std::os::fd::AsRawFd;

/// PID of the peer of a connected unix socket (SO_PEERCRED).
pub fn peer_pid<S: AsRawFd>(sock: &S) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`; the
    // kernel writes at most `len` bytes. An invalid fd only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if cred.pid <= 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "the kernel gave no peer pid for this socket"));
    }
    Ok(cred.pid as u32)
}

/// `rchar` from `/proc/PID/io`: bytes the process has read through read-like syscalls.
pub fn process_rchar(pid: u32) -> std::io::Result<u64> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    parse_io_field(&text, "rchar").ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{path}: no rchar line")))
}

/// `rchar` of one thread of a process (`/proc/PID/task/TID/io`).
pub fn thread_rchar(pid: u32, tid: u32) -> std::io::Result<u64> {
    let path = format!("/proc/{pid}/task/{tid}/io");
    let text = std::fs::read_to_string(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    parse_io_field(&text, "rchar").ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{path}: no rchar line")))
}

/// The value of `name: N` in the text of a `/proc/PID/io` file.
fn parse_io_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_io() {
        let t = "rchar: 12345\nwchar: 7\nsyscr: 3\nread_bytes: 4096\n";
        assert_eq!(parse_io_field(t, "rchar"), Some(12345));
        assert_eq!(parse_io_field(t, "read_bytes"), Some(4096));
        assert_eq!(parse_io_field(t, "cancelled_write_bytes"), None);
        assert_eq!(parse_io_field("rchar: x\n", "rchar"), None);
    }

    #[test]
    fn own_process_counters() {
        let a = process_rchar(std::process::id()).unwrap();
        let _ = std::fs::read("/proc/self/status").unwrap();
        assert!(process_rchar(std::process::id()).unwrap() > a);
        assert!(process_rchar(u32::MAX).is_err());
    }

    #[test]
    fn peer_pid_of_a_socketpair_is_us() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(peer_pid(&a).unwrap(), std::process::id());
    }
}
