//! Extent math: byte ranges on a disk, merged and aligned to a bitmap granule.
//!
//! Pure functions on values. An `Extent` is a half-open byte range `[start, start+len)`.
//! Invariants of an `ExtentSet`: extents are sorted, non-empty, and neither overlap nor touch
//! (touching extents are merged). Used to reason about dirty bitmaps: what a write of
//! `(offset, len)` dirties at granularity `g`, and the bound that resync must respect
//! (bytes copied <= dirty bytes rounded out to one granule per dirty extent).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

impl Extent {
    pub fn new(start: u64, len: u64) -> Extent {
        Extent { start, len }
    }
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
    /// The smallest granule-aligned extent covering this one, clipped to `size`.
    pub fn align_out(&self, granule: u64, size: u64) -> Extent {
        assert!(granule > 0, "granule must be positive");
        let s = self.start / granule * granule;
        let e = self.end().div_ceil(granule).saturating_mul(granule).min(size.max(s));
        Extent::new(s, e - s)
    }
}

/// A normalized set of extents (sorted, merged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentSet {
    extents: Vec<Extent>,
}

impl ExtentSet {
    pub fn new() -> ExtentSet {
        ExtentSet::default()
    }
    /// Builds a normalized set from arbitrary (unsorted, overlapping, empty) extents.
    pub fn from_extents<I: IntoIterator<Item = Extent>>(it: I) -> ExtentSet {
        let mut v: Vec<Extent> = it.into_iter().filter(|e| e.len > 0).collect();
        v.sort();
        let mut out: Vec<Extent> = Vec::with_capacity(v.len());
        for e in v {
            match out.last_mut() {
                Some(last) if e.start <= last.end() => {
                    let end = last.end().max(e.end());
                    last.len = end - last.start;
                }
                _ => out.push(e),
            }
        }
        ExtentSet { extents: out }
    }
    pub fn insert(&mut self, e: Extent) {
        let mut v = std::mem::take(&mut self.extents);
        v.push(e);
        *self = ExtentSet::from_extents(v);
    }
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }
    pub fn len(&self) -> usize {
        self.extents.len()
    }
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }
    /// Total bytes covered.
    pub fn bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
    /// Whether `offset` lies in the set.
    pub fn contains(&self, offset: u64) -> bool {
        let i = self.extents.partition_point(|e| e.end() <= offset);
        self.extents.get(i).is_some_and(|e| e.start <= offset)
    }
    /// The set rounded out to `granule` (what a dirty bitmap of that granularity records),
    /// clipped to a disk of `size` bytes.
    pub fn align_out(&self, granule: u64, size: u64) -> ExtentSet {
        ExtentSet::from_extents(self.extents.iter().map(|e| e.align_out(granule, size)))
    }
    /// The upper bound resync must respect: dirty bytes plus one granule per dirty extent.
    pub fn resync_bound(&self, granule: u64) -> u64 {
        self.bytes() + granule * self.extents.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: a byte-per-bit vector over a small disk.
    fn model(extents: &[Extent], size: u64) -> Vec<bool> {
        let mut m = vec![false; size as usize];
        for e in extents {
            for b in e.start..e.end().min(size) {
                m[b as usize] = true;
            }
        }
        m
    }

    proptest! {
        #[test]
        fn normalized_matches_model(raw in proptest::collection::vec((0u64..500, 0u64..80), 0..20)) {
            let exts: Vec<Extent> = raw.iter().map(|&(s, l)| Extent::new(s, l)).collect();
            let set = ExtentSet::from_extents(exts.clone());
            let m = model(&exts, 600);
            prop_assert_eq!(set.bytes(), m.iter().filter(|&&b| b).count() as u64);
            for w in set.extents().windows(2) {
                prop_assert!(w[0].end() < w[1].start, "sorted, disjoint, not touching");
            }
            for (i, &b) in m.iter().enumerate() {
                prop_assert_eq!(set.contains(i as u64), b);
            }
        }

        #[test]
        fn align_out_covers_and_is_bounded(raw in proptest::collection::vec((0u64..500, 1u64..80), 1..20), g in 1u64..64) {
            let size = 600;
            let set = ExtentSet::from_extents(raw.iter().map(|&(s, l)| Extent::new(s, l)));
            let al = set.align_out(g, size);
            for e in set.extents() {
                for b in e.start..e.end() { prop_assert!(al.contains(b)); }
            }
            for e in al.extents() {
                prop_assert!(e.start % g == 0);
                prop_assert!(e.end() % g == 0 || e.end() == size);
            }
            // Rounding out adds less than 2 granules per extent.
            prop_assert!(al.bytes() <= set.bytes() + 2 * g * set.len() as u64);
        }
    }

    #[test]
    fn touching_extents_merge() {
        let s = ExtentSet::from_extents([Extent::new(0, 10), Extent::new(10, 5), Extent::new(20, 0)]);
        assert_eq!(s.extents(), &[Extent::new(0, 15)]);
        assert_eq!(Extent::new(70, 10).align_out(64, 100), Extent::new(64, 36));
    }
}
