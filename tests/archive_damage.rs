//! Damage is found, never passed on: single-byte flips anywhere, truncation anywhere and two
//! swapped records make `verify` fail and name where; `restore` refuses and leaves no OUTPUT.
//! An interrupted writer's tail is cut by the next append; damage elsewhere blocks appending.

mod archive_common;
use archive_common::*;
use std::path::{Path, PathBuf};

/// (byte offset, length, kind, set) of every SIMH record of a volume file.
fn records(b: &[u8]) -> Vec<(usize, usize, u16, u64)> {
    let mut v = vec![];
    let mut p = 0;
    while p + 4 <= b.len() {
        let len = u32::from_le_bytes(b[p..p + 4].try_into().unwrap()) as usize;
        if len == 0 {
            p += 4;
            continue;
        }
        let kind = u16::from_le_bytes(b[p + 12..p + 14].try_into().unwrap());
        let set = u64::from_le_bytes(b[p + 20..p + 28].try_into().unwrap());
        v.push((p, len, kind, set));
        p += 8 + len + (len & 1);
    }
    v
}

struct Fixture {
    _d: tempfile::TempDir,
    dir: PathBuf,
    img: PathBuf,
    tap: PathBuf,
}

fn fixture() -> Fixture {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let img = dir.join("d.raw");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(6 << 20).unwrap();
    drop(f);
    run("sh", &["-c", &format!("head -c 1536K /dev/urandom | dd of={} bs=64K seek=8 conv=notrunc status=none", img.display())]);
    qemu_io(&img, "raw", "write -P 0x5a 5M 100k");
    let tap = dir.join("t.tap");
    ok(&["archive", "write", s(&img), s(&tap), "--block-size", "16K"]);
    qemu_io(&img, "raw", "write -P 0x6b 3M 64k");
    ok(&["archive", "write", s(&img), s(&tap)]);
    Fixture { _d: d, dir, img, tap }
}

fn damaged_copy(f: &Fixture, name: &str, bytes: &[u8]) -> PathBuf {
    let p = f.dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// verify fails; returns the damage reports (empty if the archive could not even be opened).
fn verify_fails(p: &Path, what: &str) -> Vec<serde_json::Value> {
    let (code, v) = qsplit_json(&["archive", "verify", s(p)]);
    assert_ne!(code, 0, "{what}: verify passed: {v}");
    if let Some(e) = v.get("error") {
        assert!(e.as_str().unwrap().contains("volume 1"), "{what}: {e}");
        return vec![];
    }
    assert_eq!(v["ok"], false);
    let d = v["damage"].as_array().unwrap().clone();
    assert!(!d.is_empty(), "{what}: not ok but no damage named: {v}");
    for x in &d {
        let m = x["message"].as_str().unwrap();
        assert!(m.contains("at byte") && m.contains("(volume 1 "), "{what}: {m}");
    }
    d
}

fn restore_refused(f: &Fixture, p: &Path, set: u64, what: &str) {
    let out = f.dir.join("restored.raw");
    let (code, v) = qsplit_json(&["archive", "restore", s(p), s(&out), "--set", &set.to_string()]);
    assert_ne!(code, 0, "{what}: restore of set {set} succeeded: {v}");
    assert!(!out.exists(), "{what}: a refused restore left OUTPUT behind");
    let stray: Vec<_> = std::fs::read_dir(&f.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("qsplit-"))
        .collect();
    assert!(stray.is_empty(), "{what}: temporary files left: {stray:?}");
}

#[test]
fn every_flipped_byte_is_found_and_restore_refuses() {
    let f = fixture();
    let good = std::fs::read(&f.tap).unwrap();
    let recs = records(&good);
    assert_eq!(ok(&["archive", "verify", s(&f.tap)])["ok"], true);
    // positions: evenly spread, plus every field of the first records and the final marks
    let mut at: Vec<usize> = (0..good.len()).step_by(good.len() / 37).collect();
    for &(p, len, _, _) in recs.iter().take(4).chain(recs.iter().rev().take(3)) {
        at.extend([p, p + 3, p + 4, p + 11, p + 12, p + 20, p + 36, p + 44, p + 60, p + 4 + len - 1, p + 4 + len, p + 7 + len]);
    }
    at.extend([good.len() - 1, good.len() - 5]);
    at.sort();
    at.dedup();
    for pos in at {
        let mut b = good.clone();
        b[pos] ^= 0x40;
        let p = damaged_copy(&f, "flip.tap", &b);
        let what = format!("flip at byte {pos}");
        let dmg = verify_fails(&p, &what);
        if let Some(first) = dmg.first() {
            assert!(first["pos"].as_u64().unwrap() <= pos as u64, "{what}: reported after the damage: {first}");
            // the set whose record holds the flipped byte (none for labels and tape marks)
            let set = recs.iter().find(|r| r.0 <= pos && pos < r.0 + 8 + r.1).map(|r| r.3).filter(|&s| s > 0);
            if let Some(set) = set {
                restore_refused(&f, &p, set, &what);
            }
        }
    }
}

#[test]
fn truncation_anywhere_is_found() {
    let f = fixture();
    let good = std::fs::read(&f.tap).unwrap();
    let mut at: Vec<usize> = (1..good.len()).step_by(good.len() / 23).collect();
    at.extend([good.len() - 1, good.len() - 4, good.len() - 8, 3]);
    for cut in at {
        let p = damaged_copy(&f, "cut.tap", &good[..cut]);
        let what = format!("truncated to {cut} bytes");
        verify_fails(&p, &what);
        if cut <= good.len() - 8 {
            // set 2's own tape mark is gone: it is unfinished (past that, only the end-of-data
            // mark is missing and set 2 is still whole)
            restore_refused(&f, &p, 2, &what);
        }
    }
}

#[test]
fn swapped_records_are_named() {
    let f = fixture();
    let good = std::fs::read(&f.tap).unwrap();
    let recs = records(&good);
    // two full data records of set 1
    let data: Vec<_> = recs.iter().filter(|r| r.2 == 3 && r.3 == 1 && r.1 == recs[2].1.max(r.1)).take(6).collect();
    let (a, b) = (data[1], data[4]);
    assert_eq!(a.1, b.1);
    let n = 8 + a.1;
    let mut bytes = good.clone();
    let ra = good[a.0..a.0 + n].to_vec();
    let rb = good[b.0..b.0 + n].to_vec();
    bytes[a.0..a.0 + n].copy_from_slice(&rb);
    bytes[b.0..b.0 + n].copy_from_slice(&ra);
    let p = damaged_copy(&f, "swap.tap", &bytes);
    let d = verify_fails(&p, "swapped records");
    assert_eq!(d[0]["set"], 1);
    assert_eq!(d[0]["pos"], a.0);
    assert!(
        d[0]["message"].as_str().unwrap().contains("out of place") || d[0]["message"].as_str().unwrap().contains("out of order"),
        "{}",
        d[0]
    );
    restore_refused(&f, &p, 1, "swapped records");
}

#[test]
fn an_interrupted_write_is_cut_by_the_next_append() {
    let f = fixture();
    let good = std::fs::read(&f.tap).unwrap();
    let recs = records(&good);
    let set2 = recs.iter().find(|r| r.3 == 2).unwrap().0;
    for (i, garbage) in [0usize, 10_000].into_iter().enumerate() {
        // crash in the middle of set 2 (possibly leaving zeroed blocks after the last write)
        let mut b = good[..set2 + (good.len() - set2) / 2].to_vec();
        b.resize(b.len() + garbage, 0);
        let p = damaged_copy(&f, &format!("crash{i}.tap"), &b);
        verify_fails(&p, "unfinished set");
        let l = ok(&["archive", "list", s(&p)]);
        assert_eq!(l.as_array().unwrap().len(), 1, "earlier sets stay readable: {l}");
        let out = f.dir.join(format!("one{i}.raw"));
        ok(&["archive", "restore", s(&p), s(&out), "--set", "1"]);
        let w = ok(&["archive", "write", s(&f.img), s(&p)]);
        assert_eq!(w["set"], 2);
        assert!(w["cut"].as_str().unwrap().contains("unfinished"), "{w}");
        assert_eq!(ok(&["archive", "verify", s(&p)])["ok"], true);
        let out2 = f.dir.join(format!("two{i}.raw"));
        ok(&["archive", "restore", s(&p), s(&out2)]);
        assert_identical(&f.img, &out2);
    }
}

#[test]
fn damage_in_the_middle_blocks_appending() {
    let f = fixture();
    let mut b = std::fs::read(&f.tap).unwrap();
    let recs = records(&b);
    let victim = recs.iter().find(|r| r.3 == 1 && r.2 == 3).unwrap();
    b[victim.0 + 1] ^= 0x01; // a leading length: the framing of set 1 breaks
    let p = damaged_copy(&f, "mid.tap", &b);
    let (code, e) = qsplit_json(&["archive", "write", s(&f.img), s(&p)]);
    assert_ne!(code, 0, "appended to a damaged archive: {e}");
    assert!(e["error"].as_str().unwrap().contains("refusing to append"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), b, "a refused append changed the archive");
}
