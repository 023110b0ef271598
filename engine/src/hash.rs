//! Page hashing, in two tiers (docs/TRACKING.md, "Change detection"):
//!
//! - **change detection** compares a fast 128-bit non-cryptographic hash of each page
//!   (XXH3-128 keyed with a per-process random secret; AVX2 chosen at run time) with the one
//!   remembered from the parent version. The in-memory table holds only these: 16 bytes per
//!   page;
//! - **integrity** is blake3, computed only for the pages that are stored (and verified on
//!   every restore): a stored page is copied once, and both hashes are taken from that copy,
//!   so a writer racing with the scan cannot make a record whose bytes differ from its hashes.
//!
//! A full version (or the first, when nothing is remembered) hashes each page once with each
//! hash. Spans of pages are processed in parallel with rayon.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use crate::write::pipeline::Source;
use twox_hash::XxHash3_128;

use crate::format::Hash;

/// A page's change-detection hash (XXH3-128 under this process's secret).
pub(crate) type Fast = u128;

/// Pages handed to one rayon task: enough to amortise the task, few enough to balance.
pub(crate) const PAGES_PER_TASK: usize = 16;

/// Length of the XXH3 secret (the reference implementation's default length).
const SECRET_LEN: usize = 192;

/// This process's XXH3 secret: random, so that contents chosen by someone who cannot read
/// this process's memory cannot be crafted to collide (docs/TRACKING.md). Fast hashes are
/// never stored on disk, so the secret never needs to outlive the process.
fn secret() -> &'static [u8; SECRET_LEN] {
    static SECRET: OnceLock<[u8; SECRET_LEN]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut seed = [0u8; 32];
        if getrandom::fill(&mut seed).is_err() {
            // No entropy source: still unpredictable enough to others (time and pid), and
            // only the collision resistance against crafted contents depends on it.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed[..16].copy_from_slice(&t.to_le_bytes());
            seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        }
        let mut out = [0u8; SECRET_LEN];
        blake3::Hasher::new_keyed(&seed)
            .update(b"ckpt xxh3 secret")
            .finalize_xof()
            .fill(&mut out);
        out
    })
}

/// Draws this process's secret now if it was not drawn yet. Called before a fork: a child
/// that drew its own would compute fast hashes its parent cannot compare with (every page
/// would look changed).
pub(crate) fn init_secret() {
    let _ = secret();
}

/// The change-detection hash of a page.
pub(crate) fn fast_hash(bytes: &[u8]) -> Fast {
    match XxHash3_128::oneshot_with_secret(secret(), bytes) {
        Ok(h) => h,
        // Unreachable (the secret is longer than the minimum); the seeded form is as good.
        Err(_) => XxHash3_128::oneshot_with_seed(0x636b_7074, bytes),
    }
}

/// blake3 of a page: the integrity hash stored in records and checked on restore.
pub fn page_hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// What the engine remembers of one region's last committed contents.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegionHashes {
    /// The fast hash of each page, if known (all-or-nothing).
    pub(crate) pages: Vec<Fast>,
    /// Whether `pages` describes the parent version.
    pub(crate) pages_known: bool,
}

/// A page whose contents differ from the parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirtyPage {
    /// Page index within the region.
    pub(crate) page: u64,
    /// blake3 of the copy (stored in the record).
    pub(crate) hash: Hash,
    /// Fast hash of the copy (remembered once the version commits).
    pub(crate) fast: Fast,
    /// The page as it was read once, for both hashes and the stored bytes (`copy[at..at +
    /// len]`, the copy being shared by the pages of a span read together). Dropped once the
    /// page is written.
    copy: Option<Arc<[u8]>>,
    at: usize,
    len: usize,
}

impl DirtyPage {
    /// The bytes the hashes were computed from (empty once dropped).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.copy
            .as_deref()
            .and_then(|c| c.get(self.at..self.at + self.len))
            .unwrap_or(&[])
    }
}

/// Reads a page once into a private copy; `Some` with both hashes if its fast hash differs
/// from `known` (always, without one).
fn read_page(p: u64, page: &[u8], known: Option<Fast>) -> Option<DirtyPage> {
    let copy: Arc<[u8]> = Arc::from(page);
    let fast = fast_hash(&copy);
    if known == Some(fast) {
        return None;
    }
    Some(DirtyPage {
        page: p,
        hash: page_hash(&copy),
        fast,
        len: copy.len(),
        at: 0,
        copy: Some(copy),
    })
}

/// Result of scanning part of a region.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Changed pages, ascending.
    pub(crate) dirty: Vec<DirtyPage>,
    /// Bytes passed through the change-detection hash.
    pub(crate) hashed_bytes: u64,
    /// Bytes passed through blake3 (the stored pages).
    pub(crate) blake3_bytes: u64,
}

impl RegionHashes {
    /// Fresh state for a region of `len` bytes: nothing known.
    pub(crate) fn unknown(len: usize, page_size: usize) -> Self {
        RegionHashes {
            pages: vec![0; len.div_ceil(page_size)],
            pages_known: false,
        }
    }

    /// The state of a region whose contents are `data`.
    #[cfg(test)]
    pub(crate) fn of(data: &[u8], page_size: usize) -> Self {
        RegionHashes {
            pages: data.par_chunks(page_size).map(fast_hash).collect(),
            pages_known: true,
        }
    }

    /// Records a committed scan (the engine applies the `(page, hash)` pairs a flush sends).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn apply(&mut self, scan: &Scan) {
        for d in &scan.dirty {
            self.pages[d.page as usize] = d.fast;
        }
        self.pages_known = true;
    }
}

/// Scans the pages `pages` of a region (the whole region's bytes are `data`) against what is
/// remembered of its parent. Every page is either proven equal to the parent (same fast hash)
/// or reported dirty with both hashes. With `every_page` (a full version), or when nothing is
/// remembered, every page is read, hashed once with each hash and reported: a full version
/// never records a remembered hash for bytes it did not read.
pub(crate) fn scan_pages(
    data: &[u8],
    page_size: usize,
    known: &RegionHashes,
    pages: Range<usize>,
    every_page: bool,
) -> Scan {
    let lo = pages.start * page_size;
    let hi = (pages.end * page_size).min(data.len());
    if lo >= hi {
        return Scan::default();
    }
    let task = PAGES_PER_TASK * page_size;
    let store_all = every_page || !known.pages_known;
    let parts: Vec<(Vec<DirtyPage>, u64)> = data[lo..hi]
        .par_chunks(task)
        .enumerate()
        .map(|(k, chunk)| {
            let first = pages.start + k * PAGES_PER_TASK;
            let mut dirty = Vec::new();
            let mut blake = 0u64;
            if store_all {
                // Every page is stored: one copy of the span, each page hashed from it.
                let copy: Arc<[u8]> = Arc::from(chunk);
                for (i, page) in copy.chunks(page_size).enumerate() {
                    blake += page.len() as u64;
                    dirty.push(DirtyPage {
                        page: (first + i) as u64,
                        hash: page_hash(page),
                        fast: fast_hash(page),
                        at: i * page_size,
                        len: page.len(),
                        copy: Some(Arc::clone(&copy)),
                    });
                }
                return (dirty, blake);
            }
            for (i, page) in chunk.chunks(page_size).enumerate() {
                let p = first + i;
                if known.pages[p] == fast_hash(page) {
                    continue;
                }
                // Changed: read it once more into a copy, which is hashed and stored.
                if let Some(d) = read_page(p as u64, page, Some(known.pages[p])) {
                    blake += d.len as u64;
                    dirty.push(d);
                }
            }
            (dirty, blake)
        })
        .collect();
    let mut scan = Scan {
        hashed_bytes: (hi - lo) as u64,
        ..Scan::default()
    };
    for (dirty, blake) in parts {
        scan.dirty.extend(dirty);
        scan.blake3_bytes += blake;
    }
    scan
}

/// Scans a whole region (for tests and benchmarks).
#[cfg(any(test, feature = "bench"))]
pub(crate) fn scan_all(data: &[u8], page_size: usize, known: &RegionHashes) -> Scan {
    scan_pages(data, page_size, known, 0..known.pages.len(), false)
}

/// Scans only the candidate pages (ascending, deduplicated) reported by a dirty tracker,
/// read from `data`; `first` is the index of `candidates[0]` in the region's whole candidate
/// list (where a staged source keeps its copy). Pages whose fast hash equals the parent's are
/// not dirty. `None` if `data` does not hold a candidate page (a bug in the caller).
pub(crate) fn scan_candidates(
    data: &Source<'_>,
    first: usize,
    page_size: usize,
    known: &RegionHashes,
    candidates: &[u64],
) -> Option<Scan> {
    let len = data.len();
    let page_len = |p: u64| len.saturating_sub(p as usize * page_size).min(page_size);
    let found: Option<Vec<Option<DirtyPage>>> = candidates
        .par_iter()
        .enumerate()
        .map(|(k, &p)| {
            let n = page_len(p);
            let bytes = match *data {
                Source::Live(b) => b.get(p as usize * page_size..)?.get(..n)?,
                Source::Staged { pages, .. } => pages.get((first + k) * page_size..)?.get(..n)?,
            };
            let k = match known.pages_known {
                true => Some(*known.pages.get(p as usize)?),
                false => None,
            };
            Some(read_page(p, bytes, k))
        })
        .collect();
    let dirty: Vec<DirtyPage> = found?.into_iter().flatten().collect();
    let hashed_bytes = candidates.iter().map(|&p| page_len(p) as u64).sum();
    let blake3_bytes = dirty.iter().map(|d| d.len as u64).sum();
    Some(Scan {
        dirty,
        hashed_bytes,
        blake3_bytes,
    })
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
        // The first scan hashes each page once with each hash.
        assert_eq!(s.hashed_bytes, data.len() as u64);
        assert_eq!(s.blake3_bytes, data.len() as u64);
        known.apply(&s);
        let s = scan_all(&data, ps, &known);
        assert!(s.dirty.is_empty());
        assert_eq!(s.blake3_bytes, 0);
        data[5 * ps + 7] ^= 1;
        data[40 * ps + 99] ^= 1;
        let s = scan_all(&data, ps, &known);
        let pages: Vec<u64> = s.dirty.iter().map(|d| d.page).collect();
        assert_eq!(pages, vec![5, 40]);
        assert_eq!(s.blake3_bytes, ps as u64 + 100);
        for d in &s.dirty {
            assert_eq!(d.hash, page_hash(d.bytes()));
            assert_eq!(d.fast, fast_hash(d.bytes()));
        }
        // The state after a restore equals the state after the scans.
        known.apply(&s);
        assert_eq!(RegionHashes::of(&data, ps).pages, known.pages);
    }

    #[test]
    fn the_fast_hash_separates_pages_that_differ_in_one_bit() {
        let page = vec![7u8; 4096];
        let h = fast_hash(&page);
        for bit in [0usize, 1, 4095 * 8 + 7, 2048 * 8] {
            let mut p = page.clone();
            p[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(fast_hash(&p), h, "bit {bit}");
        }
        assert_eq!(fast_hash(&page), h);
    }
}
