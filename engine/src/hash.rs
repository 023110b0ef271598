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
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::write::pipeline::Source;
use twox_hash::XxHash3_128;

use crate::format::Hash;
use crate::iobuf::{take_staging, IoBuf, STAGING_BYTES};

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

/// Pages that [`page_hashes`] hashes together: the widest SIMD degree of blake3 (AVX-512).
pub(crate) const HASH_LANES: usize = 16;

/// blake3 of each of `pages` into `out` (the same length): exactly what [`page_hash`] gives
/// for each, computed several pages at a time where the pages are alike (see [`lanes`]).
///
/// Lanes pay only when there are enough pages to fill them: on a Xeon with AVX-512, 4 KiB
/// pages cost 0.92 us each sixteen at a time, 0.94 eight at a time, 1.54 four at a time, but
/// 4.43 one at a time and 2.42-3.19 two or three at a time, against 1.82-1.90 for
/// [`page_hash`] (which puts one page's four chunks side by side). So the pages go sixteen,
/// eight or four at a time, and what is left over one by one.
pub(crate) fn page_hashes(pages: &[&[u8]], out: &mut [Hash]) {
    debug_assert_eq!(pages.len(), out.len());
    let (mut pages, mut out) = (pages, out);
    while !pages.is_empty() {
        let n = match pages.len() {
            l if l >= HASH_LANES => HASH_LANES,
            l if l >= 8 => 8,
            l if l >= 4 => 4,
            _ => 1,
        };
        let (now, later) = pages.split_at(n);
        let (now_out, later_out) = std::mem::take(&mut out).split_at_mut(n);
        if n == 1 || !lanes::hash_pages(now, now_out) {
            for (p, o) in now.iter().zip(now_out.iter_mut()) {
                *o = page_hash(p);
            }
        }
        (pages, out) = (later, later_out);
    }
}

/// blake3 of several small pages at once.
///
/// blake3 hashes a 4 KiB page as a tree of four 1 KiB chunks, and its SIMD code compresses
/// chunks side by side: hashing one page fills 4 of AVX-512's 16 lanes (AVX2's 8). Here the
/// chunks of up to 16 pages share the lanes, then their parent nodes: the same tree, the
/// same hash, about twice the throughput (1 GiB of 4 KiB pages on one core of a Xeon with
/// AVX-512: 4.8 GB/s against 2.4 GB/s).
///
/// This uses `blake3::platform::Platform::hash_many`, the crate's chunk-parallel compression,
/// which it exports for benchmarks but does not document. The workspace pins blake3 to one
/// release for that reason, and the tests compare every result with `blake3::hash`. The tree
/// (flags, counters, the IV) is the BLAKE3 specification's, section 2.
mod lanes {
    use super::{Hash, HASH_LANES};
    use blake3::platform::Platform;
    use blake3::IncrementCounter;
    use std::sync::OnceLock;

    /// BLAKE3's IV (SHA-256's), its key in the hash mode.
    const IV: [u32; 8] = [
        0x6A09_E667,
        0xBB67_AE85,
        0x3C6E_F372,
        0xA54F_F53A,
        0x510E_527F,
        0x9B05_688C,
        0x1F83_D9AB,
        0x5BE0_CD19,
    ];
    const CHUNK_START: u8 = 1;
    const CHUNK_END: u8 = 2;
    const PARENT: u8 = 4;
    const ROOT: u8 = 8;
    const CHUNK: usize = blake3::CHUNK_LEN;
    /// Chunks per page handled here: at 16 and more, one page fills the lanes by itself.
    const MAX_CHUNKS: usize = 8;
    /// The bytes of a chunk position no page uses (the lanes' array must be filled).
    static NO_CHUNK: [u8; CHUNK] = [0; CHUNK];

    fn platform() -> Platform {
        static P: OnceLock<Platform> = OnceLock::new();
        *P.get_or_init(Platform::detect)
    }

    /// Hashes `pages` (at most [`HASH_LANES`]) into `out` if they all have one length of
    /// 2, 4 or 8 whole chunks; `false` (nothing done) otherwise.
    pub(super) fn hash_pages(pages: &[&[u8]], out: &mut [Hash]) -> bool {
        let n = pages.len();
        let Some(len) = pages.first().map(|p| p.len()) else {
            return true;
        };
        let chunks = len / CHUNK;
        if n > HASH_LANES
            || out.len() != n
            || len % CHUNK != 0
            || !chunks.is_power_of_two()
            || !(2..=MAX_CHUNKS).contains(&chunks)
            || pages.iter().any(|p| p.len() != len)
        {
            return false;
        }
        let p = platform();
        // Each page's chaining values, level by level: first its chunks', then its parents'.
        let mut cvs = [[0u8; 32 * MAX_CHUNKS]; HASH_LANES];
        let mut outs = [0u8; 32 * HASH_LANES * MAX_CHUNKS / 2];
        // The leaves: chunk j of every page at once. A chunk's counter is its index in the
        // page, the same for all of them.
        for j in 0..chunks {
            let mut inputs: [&[u8; CHUNK]; HASH_LANES] = [&NO_CHUNK; HASH_LANES];
            for (input, page) in inputs.iter_mut().zip(pages) {
                if let Ok(c) = page[j * CHUNK..(j + 1) * CHUNK].try_into() {
                    *input = c;
                }
            }
            p.hash_many(
                &inputs[..n],
                &IV,
                j as u64,
                IncrementCounter::No,
                0,
                CHUNK_START,
                CHUNK_END,
                &mut outs[..32 * n],
            );
            for (i, cv) in outs[..32 * n].chunks_exact(32).enumerate() {
                cvs[i][32 * j..32 * (j + 1)].copy_from_slice(cv);
            }
        }
        // The parents, a level at a time for every page at once; the last level is the root.
        let mut count = chunks;
        while count > 1 {
            let half = count / 2;
            let flags = if half == 1 { PARENT | ROOT } else { PARENT };
            {
                let mut blocks: [&[u8; 64]; HASH_LANES * MAX_CHUNKS / 2] =
                    [&[0; 64]; HASH_LANES * MAX_CHUNKS / 2];
                for (i, cv) in cvs[..n].iter().enumerate() {
                    for (k, pair) in cv[..64 * half].chunks_exact(64).enumerate() {
                        if let Ok(b) = pair.try_into() {
                            blocks[i * half + k] = b;
                        }
                    }
                }
                p.hash_many(
                    &blocks[..n * half],
                    &IV,
                    0,
                    IncrementCounter::No,
                    flags,
                    0,
                    0,
                    &mut outs[..32 * n * half],
                );
            }
            for (i, cv) in cvs[..n].iter_mut().enumerate() {
                cv[..32 * half].copy_from_slice(&outs[32 * half * i..32 * half * (i + 1)]);
            }
            count = half;
        }
        for (o, cv) in out.iter_mut().zip(&cvs[..n]) {
            o.copy_from_slice(&cv[..32]);
        }
        true
    }
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
    /// Where the page's copy is in the scan's [`Scan::whole`] (the bytes both hashes were
    /// computed from, and that are stored), and its length.
    at: usize,
    len: usize,
}

impl DirtyPage {
    /// Bytes of the page.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The page's bytes in `copy`, its scan's copy ([`Scan::whole`]): what both hashes were
    /// computed from, and what is stored. `None` if `copy` is too short to hold them.
    pub(crate) fn copy_in<'a>(&self, copy: &'a [u8]) -> Option<&'a [u8]> {
        copy.get(self.at..self.at + self.len)
    }
}

/// A page to read into a copy: its number, its bytes, its remembered fast hash if any.
type ToRead<'a> = (u64, &'a [u8], Option<Fast>);

/// Reads each of `found` (page number, bytes, remembered fast hash if any) once, into one
/// copy, back to back from byte 0, `page_size` bytes apart (only the last page may be
/// short): `spare` if it is large enough, else a staging buffer when they fit one. Returns
/// those whose copy's fast hash differs from the one given (all, without one), with both
/// hashes computed from the copy, the blake3 ones together ([`HASH_LANES`] at a time:
/// scattered writes leave one or two changed pages in most 64 KiB tasks, too few to fill
/// blake3's lanes; 1 % of 64 MiB dirty on one core: 4.47 ms a scan hashing them in their
/// tasks, against 3.0 ms for unchanged memory).
fn copy_changed(
    found: &[ToRead<'_>],
    page_size: usize,
    spare: Option<IoBuf>,
) -> std::io::Result<Scan> {
    let Some(last) = found.last() else {
        return Ok(Scan::default());
    };
    let len = (found.len() - 1) * page_size + last.1.len();
    let mut copy = buffer_for(len, spare)?;
    copy.filled_to(len);
    let mut dirty: Vec<DirtyPage> = copy.bytes_mut()[..len]
        .par_chunks_mut(page_size)
        .zip(found.par_iter())
        .enumerate()
        .filter_map(|(k, (copy, &(page, bytes, known)))| {
            let copy = copy.get_mut(..bytes.len())?;
            copy.copy_from_slice(bytes);
            let fast = fast_hash(copy);
            (known != Some(fast)).then_some(DirtyPage {
                page,
                hash: [0; 32],
                fast,
                at: k * page_size,
                len: bytes.len(),
            })
        })
        .collect();
    let bytes = copy.bytes();
    dirty.par_chunks_mut(HASH_LANES).for_each(|d| {
        // The pages and hashes on the stack: no allocation per 16 pages.
        let mut pages: [&[u8]; HASH_LANES] = [&[]; HASH_LANES];
        for (p, d) in pages.iter_mut().zip(d.iter()) {
            *p = &bytes[d.at..d.at + d.len];
        }
        let mut hashes = [[0u8; 32]; HASH_LANES];
        page_hashes(&pages[..d.len()], &mut hashes[..d.len()]);
        for (d, h) in d.iter_mut().zip(hashes) {
            d.hash = h;
        }
    });
    Ok(Scan {
        blake3_bytes: dirty.iter().map(|d| d.len as u64).sum(),
        dirty,
        hashed_bytes: 0,
        whole: Some(copy),
    })
}

/// A buffer for a copy of `len` bytes: `spare` if it is large enough, else a staging buffer
/// when `len` fits one, else one of its own.
fn buffer_for(len: usize, spare: Option<IoBuf>) -> std::io::Result<IoBuf> {
    match spare {
        Some(b) if b.len() >= len => Ok(b),
        _ if len <= STAGING_BYTES => take_staging(),
        _ => IoBuf::new(len),
    }
}

/// Result of scanning part of a region.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Changed pages, ascending.
    pub(crate) dirty: Vec<DirtyPage>,
    /// Bytes passed through the change-detection hash.
    pub(crate) hashed_bytes: u64,
    /// Bytes passed through blake3 (the stored pages). Read by the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) blake3_bytes: u64,
    /// The copy of the pages read, back to back from byte 0 (`page_size` bytes apart), which
    /// the dirty pages' hashes were computed from. Page-aligned, it can go to the disk as it
    /// is when every page read is dirty ([`Scan::dense`]): no second copy into a staging
    /// buffer.
    pub(crate) whole: Option<IoBuf>,
}

impl Scan {
    /// The bytes page `d` of this scan was hashed from, and that are stored (`None` if `d`
    /// is not one of this scan's pages).
    #[cfg(test)]
    pub(crate) fn bytes<'a>(&'a self, d: &DirtyPage) -> Option<&'a [u8]> {
        d.copy_in(self.whole.as_ref()?.bytes())
    }

    /// Whether the dirty pages fill [`Scan::whole`] back to back from byte 0, `page_size`
    /// bytes apart (no page read was found unchanged in between).
    pub(crate) fn dense(&self, page_size: usize) -> bool {
        self.dirty
            .iter()
            .enumerate()
            .all(|(k, d)| d.at == k * page_size)
    }
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
    spare: Option<IoBuf>,
) -> std::io::Result<Scan> {
    let lo = pages.start * page_size;
    let hi = (pages.end * page_size).min(data.len());
    if lo >= hi {
        return Ok(Scan::default());
    }
    let task = PAGES_PER_TASK * page_size;
    if every_page || !known.pages_known {
        return scan_every_page(&data[lo..hi], page_size, pages.start, spare);
    }
    // The pages whose fast hash differs from the remembered one, then each read once more
    // into the copy that is hashed and stored.
    let changed: Vec<ToRead<'_>> = data[lo..hi]
        .par_chunks(task)
        .enumerate()
        .flat_map_iter(|(k, chunk)| {
            let first = pages.start + k * PAGES_PER_TASK;
            let remembered = known.pages.get(first..).unwrap_or(&[]);
            changed_in(chunk, page_size, remembered)
                .map(move |(i, page)| ((first + i) as u64, page, remembered.get(i).copied()))
        })
        .collect();
    let mut scan = copy_changed(&changed, page_size, spare)?;
    scan.hashed_bytes = (hi - lo) as u64;
    Ok(scan)
}

/// The pages of `chunk` (`page_size` bytes each, the last may be short) whose fast hash
/// differs from `known` (page `i` of the chunk against `known[i]`; a page past the end of
/// `known` has no remembered hash and counts as changed), with their indices in the chunk:
/// change detection, one task's worth.
///
/// Each page's lines are prefetched while the one before it is hashed, so that memory not in
/// the cache (most of a large state) streams in behind the hashing instead of stalling it.
/// A 1 GiB pass on a 2-core VM (Intel Xeon, state in memory, not in the cache) took 75-79 ms
/// without, 62-65 ms with, and a plain read of the same bytes 56-61 ms.
pub(crate) fn changed_in<'a>(
    chunk: &'a [u8],
    page_size: usize,
    known: &'a [Fast],
) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
    let mut ahead = chunk.chunks(page_size).skip(1);
    chunk
        .chunks(page_size)
        .enumerate()
        .filter_map(move |(i, page)| {
            if let Some(next) = ahead.next() {
                crate::sys::prefetch(next);
            }
            (known.get(i) != Some(&fast_hash(page))).then_some((i, page))
        })
}

/// Every page of `span` (whose first page is page `first` of its region), read once into one
/// copy ([`Scan::whole`]: `spare` if it is large enough, else a staging buffer when the span
/// fits one) and hashed from it with each hash, task by task while the task's pages are in
/// the cache.
fn scan_every_page(
    span: &[u8],
    page_size: usize,
    first: usize,
    spare: Option<IoBuf>,
) -> std::io::Result<Scan> {
    let task = PAGES_PER_TASK * page_size;
    let mut copy = buffer_for(span.len(), spare)?;
    copy.filled_to(span.len());
    let parts: Vec<Vec<DirtyPage>> = copy.bytes_mut()[..span.len()]
        .par_chunks_mut(task)
        .zip(span.par_chunks(task))
        .enumerate()
        .map(|(k, (copy, chunk))| {
            copy.copy_from_slice(chunk);
            // A task's pages and hashes on the stack: no allocation per task.
            let mut pages: [&[u8]; PAGES_PER_TASK] = [&[]; PAGES_PER_TASK];
            let n = copy
                .chunks(page_size)
                .zip(&mut pages)
                .map(|(c, p)| *p = c)
                .count();
            let mut hashes = [[0u8; 32]; PAGES_PER_TASK];
            page_hashes(&pages[..n], &mut hashes[..n]);
            pages[..n]
                .iter()
                .zip(hashes)
                .enumerate()
                .map(|(i, (page, hash))| DirtyPage {
                    page: (first + k * PAGES_PER_TASK + i) as u64,
                    hash,
                    fast: fast_hash(page),
                    at: k * task + i * page_size,
                    len: page.len(),
                })
                .collect()
        })
        .collect();
    Ok(Scan {
        dirty: parts.into_iter().flatten().collect(),
        hashed_bytes: span.len() as u64,
        blake3_bytes: span.len() as u64,
        whole: Some(copy),
    })
}

/// Scans a whole region (for tests and benchmarks).
#[cfg(any(test, feature = "bench"))]
pub(crate) fn scan_all(
    data: &[u8],
    page_size: usize,
    known: &RegionHashes,
) -> std::io::Result<Scan> {
    scan_pages(data, page_size, known, 0..known.pages.len(), false, None)
}

/// Scans only the candidate pages (ascending, deduplicated) reported by a dirty tracker,
/// read from `data`; `first` is the index of `candidates[0]` in the region's whole candidate
/// list (where a staged source keeps its copy). Pages whose fast hash equals the parent's are
/// not dirty. The copies go into `spare` if it is large enough (see `copy_changed`). An
/// `InvalidInput` error if `data` does not hold a candidate page (a bug in the caller).
pub(crate) fn scan_candidates(
    data: &Source<'_>,
    first: usize,
    page_size: usize,
    known: &RegionHashes,
    candidates: &[u64],
    spare: Option<IoBuf>,
) -> std::io::Result<Scan> {
    let len = data.len();
    let page_len = |p: u64| len.saturating_sub(p as usize * page_size).min(page_size);
    let found: Option<Vec<ToRead<'_>>> = candidates
        .iter()
        .enumerate()
        .map(|(k, &p)| {
            let n = page_len(p);
            let bytes = match *data {
                Source::Live(b) => b.get(p as usize * page_size..)?.get(..n)?,
                Source::Staged { pages, .. } => pages.get((first + k) * page_size..)?.get(..n)?,
            };
            let known = match known.pages_known {
                true => Some(*known.pages.get(p as usize)?),
                false => None,
            };
            Some((p, bytes, known))
        })
        .collect();
    let found = found.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a candidate page is outside its source",
        )
    })?;
    let mut scan = copy_changed(&found, page_size, spare)?;
    scan.hashed_bytes = candidates.iter().map(|&p| page_len(p) as u64).sum();
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Change detection reports exactly the pages whose fast hash differs from the remembered
    /// one, a short last page included, and counts a page with no remembered hash as changed.
    #[test]
    fn changed_in_reports_the_pages_that_differ() {
        let ps = 4096;
        let mut data: Vec<u8> = (0..ps * 6 + 100).map(|i| (i * 7 % 251) as u8).collect();
        let known: Vec<Fast> = data.chunks(ps).map(fast_hash).collect();
        assert_eq!(changed_in(&data, ps, &known).count(), 0);
        data[ps * 2 + 5] ^= 1;
        data[ps * 6 + 99] ^= 1; // the short last page
        let got: Vec<usize> = changed_in(&data, ps, &known).map(|(i, _)| i).collect();
        assert_eq!(got, [2, 6]);
        let (i, page) = changed_in(&data, ps, &known).nth(1).unwrap();
        assert_eq!((i, page), (6, &data[ps * 6..]));
        // Only four pages remembered: the last three count as changed.
        let got: Vec<usize> = changed_in(&data, ps, &known[..4]).map(|(i, _)| i).collect();
        assert_eq!(got, [2, 4, 5, 6]);
    }

    /// Candidates that were not changed are left out, their place in the copy left as a
    /// hole (the scan is then not dense); the others' bytes and hashes are their copies'; the
    /// same from staged copies of the candidates; a candidate outside the source is an error;
    /// a buffer handed in is used when large enough.
    #[test]
    fn candidates_scan_copies_the_changed_ones() {
        let ps = 4096;
        let mut data: Vec<u8> = (0..ps * 10 + 300).map(|i| (i * 7 % 253) as u8).collect();
        let known = RegionHashes::of(&data, ps);
        data[2 * ps] ^= 1;
        data[10 * ps + 299] ^= 1;
        let check = |s: &Scan, want: &[u64], dense: bool| {
            let pages: Vec<u64> = s.dirty.iter().map(|d| d.page).collect();
            assert_eq!(pages, want);
            assert_eq!(s.dense(ps), dense);
            for d in &s.dirty {
                let at = d.page as usize * ps;
                assert_eq!(s.bytes(d).unwrap(), &data[at..(at + ps).min(data.len())]);
                assert_eq!(d.hash, page_hash(s.bytes(d).unwrap()));
                assert_eq!(d.fast, fast_hash(s.bytes(d).unwrap()));
            }
        };
        let live = Source::Live(&data);
        let s = scan_candidates(&live, 0, ps, &known, &[2, 3, 10], None).unwrap();
        check(&s, &[2, 10], false);
        assert_eq!(s.hashed_bytes, 2 * ps as u64 + 300);
        let s = scan_candidates(&live, 0, ps, &known, &[2, 10], None).unwrap();
        check(&s, &[2, 10], true);
        // Staged copies: candidate k of the region's list at k * ps (here from the second).
        let staged: Vec<u8> = [1usize, 2, 3, 10]
            .iter()
            .flat_map(|&p| {
                let mut page = data[p * ps..(p * ps + ps).min(data.len())].to_vec();
                page.resize(ps, 0);
                page
            })
            .collect();
        let src = Source::Staged {
            len: data.len(),
            pages: &staged,
        };
        let s = scan_candidates(&src, 1, ps, &known, &[2, 3, 10], None).unwrap();
        check(&s, &[2, 10], false);
        let err = scan_candidates(&live, 0, ps, &known, &[11], None).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let spare = IoBuf::new(3 * ps).unwrap();
        let at = spare.bytes().as_ptr();
        let s = scan_candidates(&live, 0, ps, &known, &[2, 10], Some(spare)).unwrap();
        assert_eq!(s.whole.as_ref().map(|w| w.bytes().as_ptr()), Some(at));
        check(&s, &[2, 10], true);
    }

    #[test]
    fn scan_finds_exactly_the_changed_pages() {
        let ps = 4096;
        let mut data = vec![0u8; ps * 40 + 100];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let mut known = RegionHashes::unknown(data.len(), ps);
        let s = scan_all(&data, ps, &known).unwrap();
        assert_eq!(s.dirty.len(), 41);
        // Each page's bytes are its copy in the scan's whole copy, hashed with each hash.
        for d in &s.dirty {
            let at = d.page as usize * ps;
            assert_eq!(s.bytes(d).unwrap(), &data[at..(at + ps).min(data.len())]);
            assert_eq!(d.hash, page_hash(s.bytes(d).unwrap()));
            assert_eq!(d.fast, fast_hash(s.bytes(d).unwrap()));
        }
        // The first scan hashes each page once with each hash.
        assert_eq!(s.hashed_bytes, data.len() as u64);
        assert_eq!(s.blake3_bytes, data.len() as u64);
        known.apply(&s);
        let s = scan_all(&data, ps, &known).unwrap();
        assert!(s.dirty.is_empty());
        assert_eq!(s.blake3_bytes, 0);
        data[5 * ps + 7] ^= 1;
        data[40 * ps + 99] ^= 1;
        let s = scan_all(&data, ps, &known).unwrap();
        let pages: Vec<u64> = s.dirty.iter().map(|d| d.page).collect();
        assert_eq!(pages, vec![5, 40]);
        assert_eq!(s.blake3_bytes, ps as u64 + 100);
        for d in &s.dirty {
            assert_eq!(d.hash, page_hash(s.bytes(d).unwrap()));
            assert_eq!(d.fast, fast_hash(s.bytes(d).unwrap()));
        }
        // The state after a restore equals the state after the scans.
        known.apply(&s);
        assert_eq!(RegionHashes::of(&data, ps).pages, known.pages);
        // Enough changed pages, spread over several tasks, to go through the lanes sixteen,
        // eight and four at a time and one by one (31 = 16 + 8 + 4 + 3), the short last
        // page among them.
        let changed: Vec<u64> = (0..41)
            .filter(|p| p % 4 != 1)
            .take(30)
            .chain([40])
            .collect();
        for &p in &changed {
            data[p as usize * ps] ^= 0x80;
        }
        let s = scan_all(&data, ps, &known).unwrap();
        let pages: Vec<u64> = s.dirty.iter().map(|d| d.page).collect();
        assert_eq!(pages, changed);
        for d in &s.dirty {
            assert_eq!(d.hash, page_hash(s.bytes(d).unwrap()), "page {}", d.page);
            assert_eq!(d.fast, fast_hash(s.bytes(d).unwrap()));
        }
    }

    #[test]
    fn page_hashes_are_blake3_of_each_page() {
        let mut state = 11u64;
        let mut byte = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        // Sizes the lanes take (several chunks, 2 to 8) and sizes they leave to blake3 alone
        // (one chunk, 16, not whole chunks, mixed), each in batches of 0 to 40 pages.
        for len in [2048usize, 4096, 8192, 1024, 16384, 4000, 100, 0] {
            for n in [0usize, 1, 3, 12, 15, 16, 17, 40] {
                let data: Vec<u8> = (0..len * n).map(|_| byte()).collect();
                let mut pages: Vec<&[u8]> = if len == 0 {
                    vec![&[][..]; n]
                } else {
                    data.chunks(len).collect()
                };
                if len == 4000 && n > 2 {
                    pages[1] = &pages[1][..17]; // a short last page among full ones
                }
                let mut out = vec![[0u8; 32]; n];
                page_hashes(&pages, &mut out);
                for (k, (p, h)) in pages.iter().zip(&out).enumerate() {
                    assert_eq!(
                        *h,
                        *blake3::hash(p).as_bytes(),
                        "{len} bytes, page {k} of {n}"
                    );
                }
            }
        }
        // One bit anywhere in one page changes that page's hash only.
        let data: Vec<u8> = (0..4096 * 16).map(|_| byte()).collect();
        let pages: Vec<&[u8]> = data.chunks(4096).collect();
        let mut base = vec![[0u8; 32]; 16];
        // (These go through the lanes, not the fallback.)
        assert!(lanes::hash_pages(&pages, &mut base));
        assert!(!lanes::hash_pages(
            &pages[..4].concat().chunks(16384).collect::<Vec<_>>(),
            &mut base[..1]
        ));
        for bit in [0usize, 8 * 1024 - 1, 8 * 1024, 8 * 3000 + 5, 8 * 4096 - 1] {
            let mut changed = data.clone();
            changed[9 * 4096 + bit / 8] ^= 1 << (bit % 8);
            let pages: Vec<&[u8]> = changed.chunks(4096).collect();
            let mut out = vec![[0u8; 32]; 16];
            page_hashes(&pages, &mut out);
            for (k, (a, b)) in out.iter().zip(&base).enumerate() {
                assert_eq!(a == b, k != 9, "bit {bit}, page {k}");
            }
        }
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
