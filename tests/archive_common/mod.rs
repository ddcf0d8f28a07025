//! Helpers for the archive integration tests: running qsplit, qemu-img and a throwaway QEMU
//! (QMP over a Unix socket) that adds persistent bitmaps and writes data into qcow2 images.
//! Every QEMU started here is killed by pid when its guard drops.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn qsplit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qsplit"))
}

/// Runs `qsplit --json ARGS...`, returning (exit code, parsed stdout).
pub fn qsplit_json(args: &[&str]) -> (i32, Value) {
    let out = qsplit().arg("--json").args(args).output().expect("run qsplit");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "qsplit {args:?}: stdout is not one JSON value ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// Runs `qsplit --json ARGS` and insists on success.
pub fn ok(args: &[&str]) -> Value {
    let (code, v) = qsplit_json(args);
    assert_eq!(code, 0, "qsplit {args:?} failed: {v}");
    v
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {args:?} failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

/// `qemu-img compare` says the two images are identical.
pub fn assert_identical(a: &Path, b: &Path) {
    let o = Command::new("qemu-img").arg("compare").arg(a).arg(b).output().expect("qemu-img");
    assert!(
        o.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("Images are identical"));
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A QEMU with no machine, driven over QMP; killed on drop.
pub struct Qemu {
    child: Child,
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qemu {
    pub fn start(dir: &Path) -> Qemu {
        let sock: PathBuf = dir.join(format!("qmp-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("qemu-system-x86_64")
            .args(["-nodefaults", "-machine", "none", "-display", "none", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut guard = Some(child);
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    let mut c = guard.take().unwrap();
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("QMP socket never came up: {e}");
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut q = Qemu { child: guard.take().unwrap(), r: BufReader::new(stream.try_clone().unwrap()), w: stream };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        q.cmd("qmp_capabilities", json!({}));
        q
    }

    pub fn cmd(&mut self, name: &str, args: Value) -> Value {
        let m = json!({"execute": name, "arguments": args});
        writeln!(self.w, "{m}").unwrap();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).expect("QMP read");
            assert!(n > 0, "QMP closed during {name}");
            let v: Value = serde_json::from_str(&line).unwrap();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            if let Some(e) = v.get("error") {
                panic!("QMP {name} failed: {e}");
            }
        }
    }

    pub fn open(&mut self, node: &str, file: &Path) {
        self.cmd("blockdev-add", json!({"driver": "qcow2", "node-name": node, "file": {"driver": "file", "filename": s(file)}}));
    }
    pub fn close(&mut self, node: &str) {
        self.cmd("blockdev-del", json!({"node-name": node}));
    }
    pub fn bitmap_add(&mut self, node: &str, name: &str, disabled: bool) {
        self.cmd("block-dirty-bitmap-add", json!({"node": node, "name": name, "persistent": true, "disabled": disabled}));
    }
    pub fn bitmap_remove(&mut self, node: &str, name: &str) {
        self.cmd("block-dirty-bitmap-remove", json!({"node": node, "name": name}));
    }
    /// Runs a qemu-io command (e.g. `write -P 0x33 1M 64k`) on a node.
    pub fn io(&mut self, node: &str, what: &str) {
        self.cmd("human-monitor-command", json!({"command-line": format!("qemu-io {node} \"{what}\"")}));
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates an image of `size` with `fmt` (raw or qcow2).
pub fn create(path: &Path, fmt: &str, size: &str) {
    run("qemu-img", &["create", "-q", "-f", fmt, s(path), size]);
}

/// Writes with qemu-io directly (no QEMU process): e.g. `write -P 0x11 1M 1M`.
pub fn qemu_io(path: &Path, fmt: &str, what: &str) {
    run("qemu-io", &["-f", fmt, "-c", what, s(path)]);
}
