//! A record of the writes a test made to a disk, and the content they imply.
//!
//! Disks start as zeros (fresh `qemu-img create`). Each write fills `len` bytes at `offset`
//! with one pattern byte, so the expected content of a disk after the first `n` writes is a
//! pure function of the log: tests take `log.len()` as a mark at an instant (say, a split) and
//! later compare an image against `expected(size, mark)`.
//! [`RandomWrites`] draws reproducible extents from a seed (print it; `QSPLIT_TEST_SEED` sets it).

/// One write: `len` bytes of `byte` at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    pub offset: u64,
    pub len: u64,
    pub byte: u8,
}

/// Writes in the order QEMU completed them.
#[derive(Clone, Debug, Default)]
pub struct WriteLog {
    writes: Vec<Write>,
}

impl WriteLog {
    pub fn push(&mut self, w: Write) {
        self.writes.push(w);
    }

    /// Number of writes so far: a mark for [`WriteLog::expected`].
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Content of a `size`-byte disk after the first `upto` writes.
    pub fn expected(&self, size: u64, upto: usize) -> Vec<u8> {
        let mut buf = vec![0u8; size as usize];
        for w in &self.writes[..upto.min(self.writes.len())] {
            let s = (w.offset as usize).min(buf.len());
            let e = ((w.offset + w.len) as usize).min(buf.len());
            buf[s..e].fill(w.byte);
        }
        buf
    }

    /// Bytes covered by writes after the mark `from` (overlaps counted once): what changed.
    pub fn bytes_written_since(&self, from: usize) -> u64 {
        let mut ext: Vec<(u64, u64)> = self.writes[from.min(self.writes.len())..].iter().map(|w| (w.offset, w.offset + w.len)).collect();
        ext.sort_unstable();
        let (mut total, mut end) = (0u64, 0u64);
        for (s, e) in ext {
            let s = s.max(end);
            if e > s {
                total += e - s;
                end = e;
            }
        }
        total
    }
}

/// Describes the first difference between two contents, or `None` when they are equal.
pub fn first_mismatch(actual: &[u8], expected: &[u8]) -> Option<String> {
    if actual.len() != expected.len() {
        return Some(format!("size {} instead of {}", actual.len(), expected.len()));
    }
    let i = actual.iter().zip(expected).position(|(a, e)| a != e)?;
    let run = actual[i..].iter().zip(&expected[i..]).take_while(|(a, e)| a != e).count();
    Some(format!("at offset {i} (0x{i:x}): 0x{:02x} instead of 0x{:02x}, {run} differing bytes in a row", actual[i], expected[i]))
}

/// Reproducible random extents inside a disk (xorshift64*; no external crate).
#[derive(Clone, Debug)]
pub struct RandomWrites {
    state: u64,
    size: u64,
    align: u64,
    max_len: u64,
}

impl RandomWrites {
    /// Extents aligned to 4 KiB, up to 256 KiB long, inside a `size`-byte disk.
    pub fn new(seed: u64, size: u64) -> RandomWrites {
        RandomWrites::with_limits(seed, size, 4096, 256 << 10)
    }

    pub fn with_limits(seed: u64, size: u64, align: u64, max_len: u64) -> RandomWrites {
        assert!(align > 0 && size >= align && max_len >= align, "bad limits for random writes");
        RandomWrites { state: (seed ^ 0x9E37_79B9_7F4A_7C15) | 1, size, align, max_len }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next write: aligned offset and length, a non-zero pattern byte.
    pub fn next_write(&mut self) -> Write {
        let blocks = self.size / self.align;
        let start = self.next_u64() % blocks;
        let max_blocks = (self.max_len / self.align).min(blocks - start).max(1);
        let n = 1 + self.next_u64() % max_blocks;
        let byte = 1 + (self.next_u64() % 255) as u8;
        Write { offset: start * self.align, len: n * self.align, byte }
    }
}

/// The seed from `QSPLIT_TEST_SEED`, else one from the clock; printed so a failure can be replayed.
pub fn test_seed() -> u64 {
    let seed = std::env::var("QSPLIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1));
    eprintln!("QSPLIT_TEST_SEED={seed}");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_applies_writes_in_order_up_to_a_mark() {
        let mut log = WriteLog::default();
        log.push(Write { offset: 2, len: 4, byte: 1 });
        log.push(Write { offset: 4, len: 4, byte: 2 });
        assert_eq!(log.expected(10, 1), [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!(log.expected(10, 2), [0, 0, 1, 1, 2, 2, 2, 2, 0, 0]);
        assert_eq!(log.bytes_written_since(0), 6);
        assert_eq!(log.bytes_written_since(1), 4);
        assert_eq!(
            first_mismatch(&[0, 1, 1, 0], &[0, 2, 2, 0]).unwrap(),
            "at offset 1 (0x1): 0x01 instead of 0x02, 2 differing bytes in a row"
        );
        assert!(first_mismatch(&[1], &[1]).is_none());
    }

    #[test]
    fn random_writes_stay_inside_and_repeat_with_the_seed() {
        let mut a = RandomWrites::new(7, 1 << 20);
        let mut b = RandomWrites::new(7, 1 << 20);
        for _ in 0..1000 {
            let w = a.next_write();
            assert_eq!(w, b.next_write());
            assert!(w.offset % 4096 == 0 && w.len % 4096 == 0 && w.len > 0 && w.offset + w.len <= 1 << 20 && w.byte != 0);
        }
    }
}
