//! Memory stays bounded whatever the virtual size: `archive write` and `archive restore` of a
//! 1 TiB sparse image (raw and qcow2) must peak under 64 MiB of RSS, measured per process with
//! `wait4`'s resource usage.

mod archive_common;
use archive_common::*;

/// Runs `qsplit --json ARGS`, returning its stdout and its own peak RSS in KiB (wait4).
fn qsplit_rss(args: &[&str]) -> (serde_json::Value, i64) {
    use std::io::Read;
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, to get its own rusage
    let mut c = qsplit().arg("--json").args(args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut out = Vec::new();
    c.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut status = 0;
    // SAFETY: plain-data struct filled by wait4 for our own child.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = c.id() as libc::pid_t;
    // SAFETY: waits for the child we spawned; `status` and `u` are valid for writing.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut u) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "qsplit {args:?}: {}", String::from_utf8_lossy(&out));
    (serde_json::from_slice(&out).unwrap(), u.ru_maxrss)
}

#[test]
fn one_tib_sparse_image_stays_under_64_mib() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("huge.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(1 << 40).unwrap();
    drop(f);
    // 96 MiB of data in 1 MiB pieces spread over the whole terabyte
    for i in 0..96u64 {
        qemu_io(&raw, "raw", &format!("write -P {} {} 1M", i + 1, i * ((1 << 40) / 96) / (1 << 20) * (1 << 20)));
    }
    let qcow = d.path().join("huge.qcow2");
    run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)]);
    for img in [&raw, &qcow] {
        let tap = d.path().join("h.tap");
        let out = d.path().join("h.out");
        let _ = std::fs::remove_file(&tap);
        let _ = std::fs::remove_file(&out);
        let (v, rss) = qsplit_rss(&["archive", "write", s(img), s(&tap)]);
        assert_eq!(v["bytes_data"], 96 << 20, "{v}");
        assert!(rss < 64 * 1024, "archive write of {} peaked at {rss} KiB", img.display());
        let (_, rss) = qsplit_rss(&["archive", "restore", s(&tap), s(&out)]);
        assert!(rss < 64 * 1024, "archive restore of {} peaked at {rss} KiB", img.display());
    }
}
