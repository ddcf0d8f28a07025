//! The control socket: a unix stream socket created with mode 0600, JSON lines.
//!
//! `bind` refuses to replace a socket a live daemon is answering on, and removes a stale one.
//! `call` is the blocking client used by the CLI (one request, one reply); `stream` reads a
//! sequence of reply lines (events).

use super::{ApiError, ErrorKind, Request, Response};
use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Binds the control socket with mode 0600 (umask set around bind so it is never wider).
pub fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!("control socket {} is in use by a running daemon; stop it or use another --socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale control socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // SAFETY: umask(2) takes and returns a plain mode, no memory is involved. It is
    // process-wide: the daemon binds once at start-up, before any other thread creates files,
    // so the socket is never visible with wider permissions than 0600.
    let old = unsafe { libc::umask(0o177) };
    let res = tokio::net::UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let l = res.with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the qsplit daemon at {}: {e} (start it with `qsplit daemon --state-dir DIR --socket {}`, or pass --socket / set QSPLIT_SOCKET)",
            socket.display(),
            socket.display()
        )
    })
}

fn send(stream: &mut UnixStream, req: &Request) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending request to the daemon")
}

fn decode(line: &str) -> anyhow::Result<Result<serde_json::Value, ApiError>> {
    let resp: Response = serde_json::from_str(line).with_context(|| format!("undecodable reply from the daemon: {line}"))?;
    Ok(match resp {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => Err(e),
    })
}

/// Sends one request and returns the daemon's answer.
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<Result<serde_json::Value, ApiError>> {
    let mut s = connect(socket)?;
    send(&mut s, req)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).context("reading the daemon's reply")?;
    if line.is_empty() {
        return Ok(Err(ApiError::new(
            ErrorKind::Internal,
            "the daemon closed the connection without answering (did it exit? see its log)",
        )));
    }
    decode(&line)
}

/// Sends one request and calls `each` for every reply line until the daemon hangs up or
/// `each` returns false.
pub fn stream(socket: &Path, req: &Request, mut each: impl FnMut(Result<serde_json::Value, ApiError>) -> bool) -> anyhow::Result<()> {
    let mut s = connect(socket)?;
    send(&mut s, req)?;
    let r = BufReader::new(s);
    for line in r.lines() {
        let line = line.context("reading from the daemon")?;
        if !each(decode(&line)?) {
            break;
        }
    }
    Ok(())
}
