//! qcow2 metadata: header, header extensions, L1/L2 entries (docs/interop/qcow2.txt in QEMU).
//!
//! Pure parsing of big-endian structures from byte slices; [`super::Image`] does the mapping.
//! What is refused, with a message naming the file: encryption, external data files, backing
//! files, extended L2 entries (subclusters), unknown incompatible features, images marked dirty
//! (not closed cleanly: possibly still open in QEMU) or corrupt, and (when met) compressed
//! clusters. Internal snapshots are ignored: the active L1 table is what is archived.

pub const MAGIC: [u8; 4] = *b"QFI\xfb";
pub const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO: u32 = 0x0537_be77;
/// Bits 9..=55: host offsets in L1/L2 entries and bitmap tables.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_offset: u64,
    pub autoclear: u64,
    /// (offset, length) of the bitmaps extension's data, if present.
    pub bitmaps_ext: Option<(usize, usize)>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// L2 entries per table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }
}

pub fn be32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(o..o.checked_add(4)?)?.try_into().ok()?))
}
pub fn be64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(o..o.checked_add(8)?)?.try_into().ok()?))
}

/// Parses and checks the header of a qcow2 file whose bytes are `f` (the whole file).
/// Errors are sentences without the file name (the caller adds it).
pub fn parse_header(f: &[u8]) -> Result<Header, String> {
    let short = || "qcow2 header is cut short".to_string();
    if f.get(0..4) != Some(&MAGIC[..]) {
        return Err("not a qcow2 image".into());
    }
    let version = be32(f, 4).ok_or_else(short)?;
    if version != 2 && version != 3 {
        return Err(format!("qcow2 version {version} is not supported (2 and 3 are)"));
    }
    if be64(f, 8).ok_or_else(short)? != 0 {
        return Err("it has a backing file; archive a flattened copy (qemu-img convert -O qcow2) instead".into());
    }
    let cluster_bits = be32(f, 20).ok_or_else(short)?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("cluster_bits {cluster_bits} is out of range 9..21"));
    }
    let size = be64(f, 24).ok_or_else(short)?;
    if be32(f, 32).ok_or_else(short)? != 0 {
        return Err("it is encrypted; decrypt it first (qemu-img convert with --object secret)".into());
    }
    let l1_size = be32(f, 36).ok_or_else(short)?;
    let l1_offset = be64(f, 40).ok_or_else(short)?;
    let (mut incompat, mut autoclear, mut hdr_len) = (0u64, 0u64, 72usize);
    if version == 3 {
        incompat = be64(f, 72).ok_or_else(short)?;
        autoclear = be64(f, 88).ok_or_else(short)?;
        hdr_len = be32(f, 100).ok_or_else(short)? as usize;
        if hdr_len < 104 || hdr_len % 8 != 0 {
            return Err(format!("header_length {hdr_len} is invalid"));
        }
    }
    if incompat & 1 != 0 {
        return Err(
            "it was not closed cleanly (dirty bit set): it may still be open in QEMU; close it, or run `qemu-img check -r all`".into()
        );
    }
    if incompat & 2 != 0 {
        return Err("it is marked corrupt; run `qemu-img check -r all` first".into());
    }
    if incompat & 4 != 0 {
        return Err("it uses an external data file, which qsplit does not archive".into());
    }
    if incompat & 16 != 0 {
        return Err("it uses extended L2 entries (subclusters), which qsplit does not read".into());
    }
    if incompat & !(1 | 2 | 4 | 8 | 16) != 0 {
        return Err(format!("it has unknown incompatible features {incompat:#x}"));
    }
    let cs = 1u64 << cluster_bits;
    let l2_cover = cs * (cs / 8);
    let need = size.div_ceil(l2_cover);
    if (l1_size as u64) < need {
        return Err(format!("L1 table has {l1_size} entries, {need} needed for the virtual size"));
    }
    if l1_offset % cs != 0 || l1_offset.checked_add(l1_size as u64 * 8).is_none_or(|e| e > f.len() as u64) {
        return Err("L1 table lies outside the file".into());
    }
    // header extensions
    let mut bitmaps_ext = None;
    let mut o = hdr_len;
    for _ in 0..1024 {
        let (Some(t), Some(l)) = (be32(f, o), be32(f, o + 4)) else { return Err(short()) };
        let l = l as usize;
        if t == EXT_END {
            break;
        }
        let data = o + 8;
        if data.checked_add(l).is_none_or(|e| e > f.len() || e > cs as usize) {
            return Err("a header extension runs past the first cluster".into());
        }
        match t {
            EXT_BITMAPS => bitmaps_ext = Some((data, l)),
            EXT_DATA_FILE => return Err("it uses an external data file, which qsplit does not archive".into()),
            EXT_CRYPTO => return Err("it is encrypted; decrypt it first".into()),
            _ => {}
        }
        o = data + l.div_ceil(8) * 8;
    }
    Ok(Header { version, cluster_bits, size, l1_size, l1_offset, autoclear, bitmaps_ext })
}

/// What one guest cluster reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Not allocated (no backing file: reads as zeros, nothing to read).
    Unallocated,
    /// Zero cluster (flag set).
    Zero,
    /// Data at this host offset.
    Data(u64),
}

/// Decodes an L2 entry. `file_len` bounds host offsets.
pub fn decode_l2(entry: u64, cluster_size: u64, file_len: u64) -> Result<Cluster, String> {
    if entry & L2_COMPRESSED != 0 {
        return Err("it has compressed clusters, which qsplit does not read; decompress with `qemu-img convert -O qcow2`".into());
    }
    if entry & L2_ZERO != 0 {
        return Ok(Cluster::Zero);
    }
    let host = entry & OFFSET_MASK;
    if host == 0 {
        return Ok(Cluster::Unallocated);
    }
    if host % cluster_size != 0 {
        return Err(format!("an L2 entry points to unaligned host offset {host}"));
    }
    if host.checked_add(cluster_size).is_none_or(|e| e > file_len.next_multiple_of(cluster_size)) {
        return Err(format!("an L2 entry points past the end of the file (host offset {host})"));
    }
    Ok(Cluster::Data(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(size: u64, incompat: u64) -> Vec<u8> {
        let mut f = vec![0u8; 3 * 65536];
        f[0..4].copy_from_slice(&MAGIC);
        f[4..8].copy_from_slice(&3u32.to_be_bytes());
        f[20..24].copy_from_slice(&16u32.to_be_bytes());
        f[24..32].copy_from_slice(&size.to_be_bytes());
        f[36..40].copy_from_slice(&1u32.to_be_bytes());
        f[40..48].copy_from_slice(&65536u64.to_be_bytes());
        f[72..80].copy_from_slice(&incompat.to_be_bytes());
        f[100..104].copy_from_slice(&112u32.to_be_bytes());
        f
    }

    #[test]
    fn parses_minimal_v3_and_refuses_features() {
        let h = parse_header(&hdr(1 << 29, 0)).unwrap();
        assert_eq!((h.cluster_size(), h.size, h.l1_size), (65536, 1 << 29, 1));
        assert!(parse_header(&hdr(1 << 29, 1)).unwrap_err().contains("dirty"));
        assert!(parse_header(&hdr(1 << 29, 4)).unwrap_err().contains("external data file"));
        assert!(parse_header(&hdr(1 << 29, 1 << 40)).unwrap_err().contains("unknown incompatible"));
        assert!(parse_header(&hdr(1 << 40, 0)).unwrap_err().contains("L1 table"));
        let mut enc = hdr(1 << 29, 0);
        enc[32..36].copy_from_slice(&2u32.to_be_bytes());
        assert!(parse_header(&enc).unwrap_err().contains("encrypted"));
        let mut back = hdr(1 << 29, 0);
        back[8..16].copy_from_slice(&512u64.to_be_bytes());
        assert!(parse_header(&back).unwrap_err().contains("backing file"));
    }

    #[test]
    fn l2_entries() {
        let cs = 65536;
        assert_eq!(decode_l2(0, cs, 1 << 20), Ok(Cluster::Unallocated));
        assert_eq!(decode_l2(1, cs, 1 << 20), Ok(Cluster::Zero));
        assert_eq!(decode_l2((1 << 63) | 0x20000, cs, 1 << 20), Ok(Cluster::Data(0x20000)));
        assert!(decode_l2(1 << 62, cs, 1 << 20).unwrap_err().contains("compressed"));
        assert!(decode_l2(0x20200, cs, 1 << 20).unwrap_err().contains("unaligned"));
        assert!(decode_l2(1 << 30, cs, 1 << 20).unwrap_err().contains("past the end"));
    }

    #[test]
    fn hostile_headers_do_not_panic() {
        for n in 0..200 {
            let _ = parse_header(&hdr(1 << 30, 0)[..n]);
        }
        let mut f = hdr(1 << 20, 0);
        f[112..116].copy_from_slice(&0x1234u32.to_be_bytes());
        f[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_header(&f).is_err());
    }
}
