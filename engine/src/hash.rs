//! Page hashing: finds which pages changed since the parent version.
//!
//! Calling blake3 once per 4 KiB page leaves most of its SIMD lanes idle. The scan therefore
//! hashes *groups* of pages (64 KiB by default) in one call, compares each group's hash with
//! the one remembered from the parent, and hashes the pages of a group one by one only when
//! the group changed. Groups are processed in parallel with rayon.

use std::sync::Arc;

use rayon::prelude::*;

use crate::format::Hash;

/// Bytes covered by one group hash (unless the page size is larger).
pub const GROUP_BYTES: usize = 64 * 1024;

/// What the engine remembers of one region's last committed contents.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegionHashes {
    /// blake3 of each page, if known (all-or-nothing).
    pub(crate) pages: Vec<Hash>,
    /// Whether `pages` describes the parent version.
    pub(crate) pages_known: bool,
    /// blake3 of each group, `None` where unknown.
    pub(crate) groups: Vec<Option<Hash>>,
}

/// A page whose contents differ from the parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirtyPage {
    /// Page index within the region.
    pub(crate) page: u64,
    /// blake3 of the copy.
    pub(crate) hash: Hash,
    /// The page as it was read once, for both the hash and the stored bytes (`copy[at..at +
    /// len]`, the copy being shared by the pages of a group read together): a writer that
    /// changes the page meanwhile (another thread, RDMA) cannot make a record whose bytes
    /// differ from its hash. Dropped once the page is written.
    copy: Option<Arc<[u8]>>,
    at: usize,
    len: usize,
}

impl DirtyPage {
    /// The bytes the hash was computed from (empty once dropped).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.copy
            .as_deref()
            .and_then(|c| c.get(self.at..self.at + self.len))
            .unwrap_or(&[])
    }

    /// Frees the copy once the page has been written.
    pub(crate) fn drop_copy(&mut self) {
        self.copy = None;
    }
}

/// Reads a page once: a private copy and its hash.
fn read_page(p: u64, page: &[u8]) -> DirtyPage {
    let copy: Arc<[u8]> = Arc::from(page);
    DirtyPage {
        page: p,
        hash: page_hash(&copy),
        len: copy.len(),
        at: 0,
        copy: Some(copy),
    }
}

/// Result of scanning one region.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Changed pages, ascending.
    pub(crate) dirty: Vec<DirtyPage>,
    /// New group hashes to remember once the version commits.
    pub(crate) groups: Vec<(usize, Hash)>,
    /// Groups whose remembered hash must be forgotten (pages changed without a group rehash).
    pub(crate) stale: Vec<usize>,
    /// Bytes that were hashed.
    pub(crate) hashed_bytes: u64,
}

/// Pages per group for a page size.
pub(crate) fn pages_per_group(page_size: usize) -> usize {
    (GROUP_BYTES / page_size).max(1)
}

/// Hashes one page.
pub fn page_hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

impl RegionHashes {
    /// Fresh state for a region of `len` bytes: nothing known.
    pub(crate) fn unknown(len: usize, page_size: usize) -> Self {
        let pages = len.div_ceil(page_size);
        RegionHashes {
            pages: vec![[0u8; 32]; pages],
            pages_known: false,
            groups: vec![None; pages.div_ceil(pages_per_group(page_size))],
        }
    }

    /// Records a committed scan.
    pub(crate) fn apply(&mut self, scan: &Scan) {
        for d in &scan.dirty {
            self.pages[d.page as usize] = d.hash;
        }
        for g in &scan.stale {
            self.groups[*g] = None;
        }
        for (g, h) in &scan.groups {
            self.groups[*g] = Some(*h);
        }
        self.pages_known = true;
    }
}

/// Scans a region against what is known of its parent. Every page is either proven equal to
/// the parent (group hash or page hash match) or reported dirty with its new hash.
#[cfg(any(test, feature = "bench"))]
pub(crate) fn scan_all(data: &[u8], page_size: usize, known: &RegionHashes) -> Scan {
    let ngroups = known.groups.len();
    scan_groups(data, page_size, known, 0..ngroups, true, false)
}

/// Scans the groups `groups` of a region (the whole region's bytes are `data`). Without
/// `want_groups` (uffd mode, which never uses group hashes), groups whose hash is unknown are
/// not hashed as a whole: only their pages are. With `every_page` (a full version), every
/// page is read, hashed and reported, whatever is remembered: a full version never records
/// a remembered hash for bytes it did not read.
pub(crate) fn scan_groups(
    data: &[u8],
    page_size: usize,
    known: &RegionHashes,
    groups: std::ops::Range<usize>,
    want_groups: bool,
    every_page: bool,
) -> Scan {
    let ppg = pages_per_group(page_size);
    let group_bytes = ppg * page_size;
    let lo = groups.start * group_bytes;
    let hi = (groups.end * group_bytes).min(data.len());
    let per_group: Vec<(usize, Option<Hash>, Vec<DirtyPage>, u64)> = data[lo..hi]
        .par_chunks(group_bytes)
        .enumerate()
        .map(|(k, chunk)| {
            let g = groups.start + k;
            let skip_group = !want_groups && known.groups[g].is_none();
            let mut hashed = if skip_group { 0 } else { chunk.len() as u64 };
            let mut dirty = Vec::new();
            if every_page || !known.pages_known {
                // Every page is stored: read the group once, and take the group hash and
                // every page hash from that one copy.
                let copy: Arc<[u8]> = Arc::from(chunk);
                let gh = (!skip_group).then(|| page_hash(&copy));
                hashed += chunk.len() as u64;
                for (k, page) in copy.chunks(page_size).enumerate() {
                    dirty.push(DirtyPage {
                        page: (g * ppg + k) as u64,
                        hash: page_hash(page),
                        at: k * page_size,
                        len: page.len(),
                        copy: Some(Arc::clone(&copy)),
                    });
                }
                return (g, gh, dirty, hashed);
            }
            // The group hash is read before the pages, so a write racing with the scan can
            // only make the remembered group hash older than the pages (a later rescan), never
            // newer.
            let gh = (!skip_group).then(|| page_hash(chunk));
            if known.groups[g] != gh || gh.is_none() {
                hashed += chunk.len() as u64;
                for (k, page) in chunk.chunks(page_size).enumerate() {
                    let p = g * ppg + k;
                    if known.pages[p] == page_hash(page) {
                        continue;
                    }
                    // Changed: read it once more into a copy, which is hashed and stored.
                    let d = read_page(p as u64, page);
                    if known.pages[p] != d.hash {
                        hashed += d.len as u64;
                        dirty.push(d);
                    }
                }
            }
            (g, gh, dirty, hashed)
        })
        .collect();
    let mut scan = Scan::default();
    for (g, gh, dirty, hashed) in per_group {
        if let Some(gh) = gh.filter(|&h| known.groups[g] != Some(h)) {
            scan.groups.push((g, gh));
        }
        scan.dirty.extend(dirty);
        scan.hashed_bytes += hashed;
    }
    scan
}

impl Scan {
    /// Appends the scan of later groups.
    pub(crate) fn extend(&mut self, other: Scan) {
        self.dirty.extend(other.dirty);
        self.groups.extend(other.groups);
        self.stale.extend(other.stale);
        self.hashed_bytes += other.hashed_bytes;
    }
}

/// Scans only the candidate pages (ascending, deduplicated) reported by a dirty tracker.
/// Pages whose hash equals the parent's are not dirty. The groups the candidates fall in are
/// marked stale, since they were not rehashed as a whole.
pub(crate) fn scan_candidates(
    data: &[u8],
    page_size: usize,
    known: &RegionHashes,
    candidates: &[u64],
) -> Scan {
    let dirty: Vec<DirtyPage> = candidates
        .par_iter()
        .filter_map(|&p| {
            let start = p as usize * page_size;
            let end = (start + page_size).min(data.len());
            let d = read_page(p, &data[start..end]);
            (!known.pages_known || known.pages[p as usize] != d.hash).then_some(d)
        })
        .collect();
    let ppg = pages_per_group(page_size);
    let mut stale: Vec<usize> = candidates.iter().map(|&p| p as usize / ppg).collect();
    stale.dedup();
    let hashed_bytes = candidates
        .iter()
        .map(|&p| (data.len() - p as usize * page_size).min(page_size) as u64)
        .sum();
    Scan {
        dirty,
        groups: Vec::new(),
        stale,
        hashed_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_exactly_the_changed_pages() {
        let ps = 4096;
        let mut data = vec![0u8; ps * 40 + 100];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let mut known = RegionHashes::unknown(data.len(), ps);
        let s = scan_all(&data, ps, &known);
        assert_eq!(s.dirty.len(), 41);
        assert_eq!(s.hashed_bytes, 2 * data.len() as u64);
        known.apply(&s);
        let s = scan_all(&data, ps, &known);
        assert!(s.dirty.is_empty());
        data[5 * ps + 7] ^= 1;
        data[40 * ps + 99] ^= 1;
        let s = scan_all(&data, ps, &known);
        let pages: Vec<u64> = s.dirty.iter().map(|d| d.page).collect();
        assert_eq!(pages, vec![5, 40]);
    }
}
