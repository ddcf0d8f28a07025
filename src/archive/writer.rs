//! `archive write`: appends one backup set (full or incremental) to an archive.
//!
//! Steps: open the image; walk the archive's headers (creating it if absent); cut an unfinished
//! tail left by an interrupted writer (refusing if damage is anywhere else); choose full or
//! incremental ([`plan`], pure); stream the image through the copier into records; write the
//! trailer, the set's tape mark and the end-of-data mark; fsync. An interrupted write leaves
//! every earlier set intact and is cut by the next append.

use super::copy::{self, Out, Ranges};
use super::format::{self, chunk_size_for, Counts, Kind, Label, RecHdr, SetHeader, SetType, FLAG_LAST};
use super::scan::{self, Headers, SetInfo};
use super::volume::{self, FileChanger, FileSource, VolumeWriter};
use crate::image::{bitmap::Bitmap, identity, Image};
use anyhow::{bail, Context};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub image: PathBuf,
    pub archive: PathBuf,
    /// Write a full set even when an incremental is possible.
    pub full: bool,
    /// Build an incremental from this persistent bitmap (refused if it does not chain).
    pub bitmap: Option<String>,
    /// Disk id (default: `<VM>/<DRIVE>` from the split marker, else the image's file name).
    pub disk: Option<String>,
    pub label: Option<String>,
    /// Cartridge capacity in bytes (None: unlimited). Fixed when the archive is created.
    pub capacity: Option<u64>,
    /// Record size (16 KiB..1 MiB, default 64 KiB). Fixed when the archive is created.
    pub block_size: Option<u32>,
    /// Show a progress bar (only if stderr is a terminal).
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteReport {
    pub archive: PathBuf,
    pub set: u64,
    #[serde(rename = "type")]
    pub set_type: SetType,
    pub disk: String,
    pub vm: Option<String>,
    pub drive: Option<String>,
    pub split_seq: Option<u64>,
    pub base_set: Option<u64>,
    pub bitmap: Option<String>,
    /// Why the set is full (when it is).
    pub reason: Option<String>,
    pub virtual_size: u64,
    pub bytes_data: u64,
    pub bytes_zero: u64,
    pub bytes_read: u64,
    pub records: u64,
    pub volumes: Vec<u32>,
    /// What was cut from an unfinished tail before writing, if anything.
    pub cut: Option<String>,
    pub elapsed_ms: u64,
}

/// The decision between full and incremental.
#[derive(Debug)]
pub enum Plan<'a> {
    Full { reason: String },
    Incremental { bitmap: &'a Bitmap, base: &'a SetInfo },
}

/// Chooses full or incremental. `Err` refuses an explicitly requested incremental.
pub fn plan<'a>(
    full: bool,
    want: Option<&str>,
    bitmaps: &'a [Bitmap],
    split: Option<&identity::SplitId>,
    disk: &str,
    size: u64,
    latest: Option<&'a SetInfo>,
) -> Result<Plan<'a>, String> {
    let full_because = |r: String| Ok(Plan::Full { reason: r });
    if full {
        return full_because("--full was given".into());
    }
    if let Some(name) = want {
        let Some(b) = bitmaps.iter().find(|b| b.name == name) else {
            let have: Vec<&str> = bitmaps.iter().map(|b| b.name.as_str()).collect();
            return Err(format!(
                "the image has no persistent bitmap '{name}' (it has: {})",
                if have.is_empty() { "none".into() } else { have.join(", ") }
            ));
        };
        if let Some(p) = &b.problem {
            return Err(format!("bitmap '{name}' cannot be used: {p}; write a full set with --full"));
        }
        let Some(base) = latest else {
            return Err(format!("the archive has no earlier set for disk '{disk}' to build on; write a full set with --full"));
        };
        if base.virtual_size != size {
            return Err(format!(
                "set {} of disk '{disk}' has virtual size {}, the image {}; write a full set with --full",
                base.set, base.virtual_size, size
            ));
        }
        if let Some(m) = identity::parse_since(name) {
            if base.split_seq != Some(m) {
                return Err(format!("bitmap '{name}' holds changes since split {m}, but the latest set for disk '{disk}' (set {}) is split {}; write a full set with --full", base.set, seq_text(base.split_seq)));
            }
        }
        if let (Some(id), Some(bs)) = (split, base.split_seq) {
            if bs >= id.seq {
                return Err(format!(
                    "the latest set for disk '{disk}' (set {}) is split {bs}, not older than this image's split {}",
                    base.set, id.seq
                ));
            }
        }
        return Ok(Plan::Incremental { bitmap: b, base });
    }
    let since: Vec<(u64, &Bitmap)> = bitmaps.iter().filter_map(|b| identity::parse_since(&b.name).map(|m| (m, b))).collect();
    if since.is_empty() {
        return full_because("the image has no qsplit.since bitmap".into());
    }
    let matching = since.iter().find(|(m, _)| latest.is_some_and(|l| l.split_seq == Some(*m)));
    let Some(&(m, b)) = matching.or(since.iter().max_by_key(|(m, _)| *m)) else {
        return full_because("no usable bitmap".into());
    };
    if m == 0 {
        return full_because("bitmap qsplit.since:0 covers everything since the pair was created".into());
    }
    let Some(base) = latest else {
        return full_because(format!("the archive has no earlier set for disk '{disk}'"));
    };
    if let Some(p) = &b.problem {
        return full_because(format!("bitmap {} cannot be trusted: {p}", b.name));
    }
    if base.virtual_size != size {
        return full_because(format!("the virtual size changed from {} (set {}) to {size}", base.virtual_size, base.set));
    }
    if base.split_seq != Some(m) {
        return full_because(format!(
            "bitmap {} builds on split {m}, but the latest set for disk '{disk}' (set {}) is split {}",
            b.name,
            base.set,
            seq_text(base.split_seq)
        ));
    }
    Ok(Plan::Incremental { bitmap: b, base })
}

fn seq_text(s: Option<u64>) -> String {
    s.map_or("none (not from a split)".into(), |x| x.to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        id = blake3::hash(format!("{:?}{}", t, std::process::id()).as_bytes()).as_bytes()[..16].try_into().unwrap();
    }
    id
}

/// An archive opened for appending: where to write and what is already there.
struct Opened {
    vw: VolumeWriter<FileChanger>,
    /// The archive's record size (fixed at creation).
    block: u32,
    sets: Vec<SetInfo>,
    cut: Option<String>,
    /// Volume 1, locked (flock) for the whole append so two writers cannot interleave.
    _lock: std::fs::File,
}

/// Takes the archive's writer lock (an exclusive `flock` on volume 1), or says who holds it.
fn lock(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another qsplit is writing to this archive (it is locked); try again when it is done");
    }
    Ok(f)
}

fn open_for_append(o: &WriteOptions, block: u32) -> anyhow::Result<Opened> {
    let path = &o.archive;
    let exists = std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
    if !exists {
        if o.capacity.is_some_and(|c| c < volume::min_capacity(block)) {
            bail!("capacity {} is too small for {block}-byte records (at least {})", o.capacity.unwrap_or(0), volume::min_capacity(block));
        }
        let _ = std::fs::remove_file(path); // an empty file left by an earlier attempt
        let label = Label {
            archive_id: random_id(),
            volume: 1,
            block_size: block,
            capacity: o.capacity.unwrap_or(0),
            continues_set: 0,
            continues_seq: 0,
            created: now(),
        };
        let vw =
            VolumeWriter::create(FileChanger { base: path.clone() }, label).with_context(|| format!("cannot create {}", path.display()))?;
        let _lock = lock(path)?;
        return Ok(Opened { vw, block, sets: vec![], cut: None, _lock });
    }
    let _lock = lock(path)?;
    let s = scan::scan(FileSource { base: path.clone() }, &mut Headers, true).map_err(|d| anyhow::anyhow!("{d}"))?;
    if o.block_size.is_some_and(|b| b != s.label.block_size) {
        bail!("the archive was created with {}-byte records; --block-size cannot change it", s.label.block_size);
    }
    if o.capacity.is_some_and(|c| c != s.label.capacity) {
        bail!(
            "the archive was created with capacity {}; --capacity cannot change it",
            if s.label.capacity == 0 { "unlimited".into() } else { s.label.capacity.to_string() }
        );
    }
    let mut cut = None;
    if let Some(d) = &s.stopped {
        if !s.tail_only {
            bail!("damaged: {d}; refusing to append (run `qsplit archive verify`)");
        }
        let last = (s.end.volume..).take_while(|&n| volume::volume_path(path, n).exists()).last().unwrap_or(s.end.volume);
        let len = std::fs::metadata(&s.end.path)?.len();
        cut = Some(format!(
            "cut an unfinished tail ({d}): {} bytes of volume {}{}",
            len.saturating_sub(s.end.pos),
            s.end.volume,
            if last > s.end.volume { format!(" and volumes {}..{last}", s.end.volume + 1) } else { String::new() }
        ));
        for n in (s.end.volume + 1..=last).rev() {
            std::fs::remove_file(volume::volume_path(path, n))?;
        }
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.end.path)
        .with_context(|| format!("cannot open {} for writing", s.end.path.display()))?;
    f.set_len(s.end.pos)?;
    f.sync_all()?;
    let mut f = f;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(s.end.pos))?;
    let label = Label { volume: s.end.volume, ..s.label.clone() };
    let vw = VolumeWriter::append(FileChanger { base: path.clone() }, volume::SyncFile::new(f), s.end.pos, label);
    Ok(Opened { vw, block: s.label.block_size, sets: s.sets, cut, _lock })
}

/// Appends one set made from `o.image` to `o.archive`.
pub fn write_image(o: &WriteOptions) -> anyhow::Result<WriteReport> {
    let t0 = std::time::Instant::now();
    let block = o.block_size.unwrap_or(format::DEFAULT_BLOCK);
    if !(format::MIN_BLOCK..=format::MAX_BLOCK).contains(&block) {
        bail!("block size {block} is outside 16K..1M");
    }
    let img = Image::open(&o.image)?;
    let ctx = || format!("archive {}", o.archive.display());
    let mut op = open_for_append(o, block).with_context(ctx)?;
    let block = op.block;
    if img.virtual_size() > format::MAX_IMAGE {
        bail!("image {}: virtual size {} is over the archive format's limit of 256 TiB", o.image.display(), img.virtual_size());
    }
    // the marker's name is its content: readable even when the bitmap itself is not trusted
    let split = img.bitmaps().iter().filter_map(|b| identity::parse_id(&b.name)).max_by_key(|id| id.seq);
    let file_name = o.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let disk = o.disk.clone().or_else(|| split.as_ref().map(|s| s.disk())).unwrap_or(file_name.clone());
    let size = img.virtual_size();
    let latest = op.sets.iter().rev().find(|s| s.disk == disk);
    let p = plan(o.full, o.bitmap.as_deref(), img.bitmaps(), split.as_ref(), &disk, size, latest)
        .map_err(|m| anyhow::anyhow!("image {}: {m}", o.image.display()))?;
    let set_no = op.sets.last().map_or(1, |s| s.set + 1);
    let (set_type, base, bitmap, reason) = match &p {
        Plan::Full { reason } => (SetType::Full, None, None, Some(reason.clone())),
        Plan::Incremental { bitmap, base } => (SetType::Incremental, Some(*base), Some(*bitmap), None),
    };
    let chunk = base.map_or_else(|| chunk_size_for(size), |b| b.header.chunk_size);
    let base_digests = base.and_then(|b| b.digests.clone());
    if base.is_some() && base_digests.is_none() {
        bail!("internal: digests of the base set were not kept");
    }
    let note = format!(
        "qsplit backup set {set_no} ({}{}) of disk {disk}, {size} bytes. Restore: qsplit archive restore ARCHIVE OUTPUT --set {set_no}. \
         Format: SIMH .tap records of 64-byte little-endian headers (magic QSPTAP01, CRC32C) + data; see qsplit docs/archive-format.md.",
        if set_type == SetType::Full { "full" } else { "incremental on set " },
        base.map_or(String::new(), |b| b.set.to_string())
    );
    let header = SetHeader {
        set_type,
        base_set: base.map_or(0, |b| b.set),
        virtual_size: size,
        chunk_size: chunk,
        cluster_size: img.cluster_size() as u32,
        block_size: block,
        split_seq: split.as_ref().map(|s| s.seq),
        split_time: split.as_ref().map(|s| s.time),
        written: now(),
        base_root: base.map_or([0; 32], |b| b.root_bytes),
        archive_id: [0; 16],
        disk: disk.clone(),
        vm: split.as_ref().map_or(String::new(), |s| s.vm.clone()),
        drive: split.as_ref().map_or(String::new(), |s| s.drive.clone()),
        label: o.label.clone().unwrap_or_default(),
        source: file_name,
        bitmap: bitmap.map_or(String::new(), |b| b.name.clone()),
        note,
    };
    let header = SetHeader { archive_id: op.vw_archive_id(), ..header };
    let vw = &mut op.vw;
    let io = |e: super::tape::TapeError| anyhow::anyhow!("archive {}: {e}", o.archive.display());
    vw.begin_set(set_no).map_err(io)?;
    vw.write(RecHdr::new(Kind::SetHeader, 0, 0, 0, 0), &[&header.encode()]).map_err(io)?;
    let mut counts = Counts::default();
    let mut records = 1u64;
    let bar = (o.progress && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {wide_bar}").unwrap());
        b
    });
    let piece = format::data_per_record(block);
    let ranges = bitmap.map_or(Ranges::All, Ranges::Dirty);
    // Three threads: the copier (extents, zero detection, CRC32C of each record's payload), its
    // digest thread, and this writer thread (record framing and the write syscalls), joined by
    // a bounded channel; the writer releases mapped pages once it has written them.
    let (digests, stats) = std::thread::scope(|s| -> anyhow::Result<_> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Out<'_>>(64);
        let img = &img;
        let (counts, records) = (&mut counts, &mut records);
        let writer = s.spawn(move || -> anyhow::Result<()> {
            for out in rx {
                match out {
                    Out::Data { off, bytes, crc } => {
                        let h = RecHdr::new(Kind::Data, 0, 0, off, bytes.len() as u64);
                        vw.write_crc(h, &[bytes], crc).map_err(io)?;
                        counts.data_records += 1;
                        counts.bytes_data += bytes.len() as u64;
                        *records += 1;
                    }
                    Out::Zero { off, len } => {
                        vw.write(RecHdr::new(Kind::Zero, 0, 0, off, len), &[]).map_err(io)?;
                        counts.zero_records += 1;
                        counts.bytes_zero += len;
                        *records += 1;
                    }
                    Out::Release { host, len } => img.release(host, len),
                }
            }
            Ok(())
        });
        let r = copy::copy(
            img,
            ranges,
            chunk,
            base_digests.as_deref().map(|v| v.as_slice()),
            piece,
            &mut |out| tx.send(out).map_err(|_| anyhow::anyhow!("the archive writer thread stopped")),
            &|done| {
                if let Some(b) = &bar {
                    b.set_position(done)
                }
            },
        );
        drop(tx);
        let w = writer.join().map_err(|_| anyhow::anyhow!("archive writer thread panicked"))?;
        // the writer's own error explains a failed send better than the send does
        w?;
        r
    })
    .with_context(ctx)?;
    let vw = &mut op.vw;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let per = format::digests_per_record(block);
    let n_chunks = digests.len() as u64;
    let groups: Vec<&[[u8; 32]]> = if digests.is_empty() { vec![&[]] } else { digests.chunks(per).collect() };
    for (i, g) in groups.iter().enumerate() {
        let mut h = RecHdr::new(Kind::Trailer, 0, 0, (i * per) as u64, g.len() as u64);
        if i + 1 == groups.len() {
            h.flags = FLAG_LAST;
        }
        vw.write(h, &[&format::encode_trailer(&counts, n_chunks, (i * per) as u64, g)]).map_err(io)?;
        records += 1;
    }
    vw.end_set().map_err(io)?;
    let volumes = vw.touched.clone();
    let eov = volumes.len() as u64 - 1;
    op.vw.finish().map_err(io)?;
    Ok(WriteReport {
        archive: o.archive.clone(),
        set: set_no,
        set_type,
        disk,
        vm: split.as_ref().map(|s| s.vm.clone()),
        drive: split.as_ref().map(|s| s.drive.clone()),
        split_seq: split.as_ref().map(|s| s.seq),
        base_set: base.map(|b| b.set),
        bitmap: bitmap.map(|b| b.name.clone()),
        reason,
        virtual_size: size,
        bytes_data: counts.bytes_data,
        bytes_zero: counts.bytes_zero,
        bytes_read: stats.bytes_read,
        records: records + eov,
        volumes,
        cut: op.cut,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    })
}

impl Opened {
    fn vw_archive_id(&self) -> [u8; 16] {
        self.vw.archive_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::volume::Loc;

    fn set(n: u64, split: Option<u64>, size: u64) -> SetInfo {
        let h = SetHeader {
            set_type: SetType::Full,
            base_set: 0,
            virtual_size: size,
            chunk_size: 1 << 20,
            cluster_size: 65536,
            block_size: 65536,
            split_seq: split,
            split_time: None,
            written: 0,
            base_root: [0; 32],
            archive_id: [0; 16],
            disk: "vm/vd".into(),
            vm: String::new(),
            drive: String::new(),
            label: String::new(),
            source: String::new(),
            bitmap: String::new(),
            note: String::new(),
        };
        SetInfo {
            set: n,
            disk: "vm/vd".into(),
            vm: None,
            drive: None,
            split_seq: split,
            time: None,
            set_type: SetType::Full,
            base_set: None,
            virtual_size: size,
            bytes_data: 0,
            bytes_zero: 0,
            records: 0,
            volumes: vec![1],
            written: 0,
            label: None,
            source: String::new(),
            bitmap: None,
            root: String::new(),
            header: h,
            root_bytes: [0; 32],
            digests: None,
            start: Loc { volume: 1, path: "x".into(), pos: 0 },
        }
    }

    fn reason(p: Result<Plan<'_>, String>) -> String {
        match p {
            Ok(Plan::Full { reason }) => reason,
            Ok(Plan::Incremental { bitmap, base }) => format!("incremental from {} on set {}", bitmap.name, base.set),
            Err(e) => format!("refused: {e}"),
        }
    }

    #[test]
    fn automatic_plan_chains_only_onto_the_matching_split() {
        let bms = [Bitmap::named("qsplit.since:4", None), Bitmap::named("other", None)];
        let base = set(7, Some(4), 1 << 30);
        let p = |l: Option<&SetInfo>, size| reason(plan(false, None, &bms, None, "vm/vd", size, l));
        assert_eq!(p(Some(&base), 1 << 30), "incremental from qsplit.since:4 on set 7");
        assert!(p(None, 1 << 30).contains("no earlier set"));
        assert!(p(Some(&base), 2 << 30).contains("virtual size changed"));
        assert!(p(Some(&set(7, Some(3), 1 << 30)), 1 << 30).contains("builds on split 4"));
        assert!(p(Some(&set(7, None, 1 << 30)), 1 << 30).contains("not from a split"));
        assert_eq!(reason(plan(true, None, &bms, None, "vm/vd", 1 << 30, Some(&base))), "--full was given");
        let none: [Bitmap; 0] = [];
        assert!(reason(plan(false, None, &none, None, "vm/vd", 1 << 30, Some(&base))).contains("no qsplit.since"));
        let zero = [Bitmap::named("qsplit.since:0", None)];
        assert!(reason(plan(false, None, &zero, None, "vm/vd", 1 << 30, Some(&base))).contains("since:0"));
        let bad = [Bitmap::named("qsplit.since:4", Some("it is flagged in-use"))];
        assert!(reason(plan(false, None, &bad, None, "vm/vd", 1 << 30, Some(&base))).contains("in-use"));
    }

    #[test]
    fn explicit_bitmap_is_refused_unless_it_chains() {
        let bms = [Bitmap::named("qsplit.since:4", None), Bitmap::named("mine", None)];
        let base = set(7, Some(4), 1 << 30);
        let p = |name, l: Option<&SetInfo>| reason(plan(false, Some(name), &bms, None, "vm/vd", 1 << 30, l));
        assert_eq!(p("mine", Some(&base)), "incremental from mine on set 7");
        assert!(p("nope", Some(&base)).starts_with("refused: the image has no persistent bitmap 'nope'"));
        assert!(p("mine", None).contains("refused") && p("mine", None).contains("--full"));
        assert!(p("qsplit.since:4", Some(&set(7, Some(2), 1 << 30))).contains("refused"));
        let id = identity::SplitId { vm: "vm".into(), drive: "vd".into(), seq: 4, time: 0 };
        let r = reason(plan(false, Some("mine"), &bms, Some(&id), "vm/vd", 1 << 30, Some(&base)));
        assert!(r.contains("not older than"), "{r}");
    }
}
