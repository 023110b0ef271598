//! Restoring a version into memory file by file.
//!
//! A restore needs, from each file of the version, the records that the version's extents
//! use. They are read in sequential requests ([`Chunk`]s of whole records, up to
//! [`MAX_CHUNK`]), many at once and around the page cache ([`Reader`]), while the workers
//! decode and verify the chunks already read, straight into the regions. Every page is
//! checked against its stored blake3 hash before the restore returns success.

use super::parallel::{Filled, Reader, Request, GAP, MAX_CHUNK};
use super::Version;
use crate::error::{Error, Result};
use crate::format::{RegionEntry, RECORD_ALIGN};

/// Pages one run holds at most (fewer where pages are larger than 4 KiB): the unit a chunk
/// is cut at.
const RUN_PAGES: usize = 256;

/// One region to restore.
pub struct Target<'a> {
    /// The region's index in the version's region table.
    pub region: usize,
    /// Where its bytes go: exactly the region's length.
    pub out: &'a mut [u8],
    /// Where each page's change-detection hash goes, one per page; `None` for no hashes.
    pub fast: Option<&'a mut [u128]>,
}

/// Consecutive pages of a region stored as consecutive records of one file.
struct Run<'a> {
    /// The first page's record in that file's record table.
    first_record: usize,
    /// The region's id, and the run's first page in it (for error messages).
    region_id: u64,
    first_page: u64,
    /// The pages' bytes (the last page may be short).
    out: &'a mut [u8],
    /// Their change-detection hashes, if wanted.
    fast: Option<&'a mut [u128]>,
}

/// Whole records of one file read by one request, and where their pages go.
struct Chunk<'a> {
    file: usize,
    /// The records' bytes: `start..end` of the file.
    start: u64,
    end: u64,
    runs: Vec<Run<'a>>,
}

impl Request for Chunk<'_> {
    fn file(&self) -> usize {
        self.file
    }
    fn span(&self) -> (u64, u64) {
        (self.start, self.end)
    }
}

/// Restores `targets` from `v`: reads what they need from each file, decodes every page into
/// its place and checks it against its blake3 hash, and fills the change-detection hashes
/// asked for. On error, the targets hold an unspecified mix of old and restored bytes.
pub(super) fn restore(v: &Version, targets: Vec<Target<'_>>) -> Result<()> {
    let chunks = plan(v, targets)?;
    // Twice as many workers as cores: a worker stalls in faulting its run's fresh pages in
    // (`populate_write`) and in waiting for reads, and another uses the core meanwhile. Cold
    // 1 GiB restores (2-core VM, ext4 on virtio, three bench runs each, alternated): the
    // reading and decoding took 0.78-0.97 s with 4 workers against 0.90-1.11 s with 2, for
    // the same CPU time (user 0.45-0.60 s, system 0.41-0.63 s).
    let workers = 2 * rayon::current_num_threads().max(1);
    let reader = Reader::new(v.files(), workers, true);
    reader.run(chunks, workers, decode_chunk)
}

/// Decodes every page of a chunk read into its place, checking it.
fn decode_chunk(mut chunk: Filled<'_, Chunk<'_>>) -> Result<()> {
    let f = chunk.file();
    let ps = f.header.page_size as usize;
    let runs = std::mem::take(&mut chunk.req.runs);
    for run in runs {
        let Run {
            first_record,
            region_id,
            first_page,
            out,
            mut fast,
        } = run;
        // A restarted process's regions are fresh memory: fault the run's pages in with one
        // call rather than one trap per page. Cold 1 GiB restores into fresh regions (2-core
        // VM, six alternated runs each): system time 0.80-1.02 s -> 0.61-0.70 s, wall time
        // the same (0.88-1.20 s against 0.84-1.25 s, the disk's pace that day). A hint: where
        // it fails, the writes below fault the pages in.
        let _ = crate::sys::populate_write(out);
        for (k, page) in out.chunks_mut(ps).enumerate() {
            let p = first_page + k as u64;
            let what = || format!("page {p} of region {region_id}");
            let rec = f.index.records.get(first_record + k).ok_or_else(|| {
                Error::corrupt(f.path(), what(), "refers to a record past the file's table")
            })?;
            let bytes = chunk.stored(rec).ok_or_else(|| {
                Error::corrupt(f.path(), what(), "record lies outside the bytes read")
            })?;
            f.decode(rec, bytes, page, &what)?;
            if let Some(h) = fast.as_deref_mut().and_then(|h| h.get_mut(k)) {
                *h = crate::hash::fast_hash(page);
            }
        }
    }
    Ok(())
}

/// Cuts `targets` into runs of consecutive records and groups each file's runs, in file
/// order, into chunks.
fn plan<'a>(v: &Version, targets: Vec<Target<'a>>) -> Result<Vec<Chunk<'a>>> {
    let ps = v.page_size();
    // At most one request's worth, whatever the page size: a record is at most a page, and
    // fewer than RECORD_ALIGN bytes of padding may precede each (format version 2).
    let run_pages = (MAX_CHUNK as usize / (ps + RECORD_ALIGN as usize)).clamp(1, RUN_PAGES);
    let main = v.file();
    let mut runs: Vec<Vec<Run<'a>>> = (0..v.files().len()).map(|_| Vec::new()).collect();
    for t in targets {
        let region: RegionEntry =
            *v.regions()
                .get(t.region)
                .ok_or_else(|| Error::RegionMismatch {
                    path: main.path().to_path_buf(),
                    why: format!(
                        "asked for region number {}, the checkpoint has {}",
                        t.region,
                        v.regions().len()
                    ),
                })?;
        if t.out.len() as u64 != region.byte_len {
            return Err(Error::RegionMismatch {
                path: main.path().to_path_buf(),
                why: format!(
                    "region {} is {} bytes in the checkpoint, {} in memory",
                    region.id,
                    region.byte_len,
                    t.out.len()
                ),
            });
        }
        let pages = t.out.len().div_ceil(ps);
        let (mut out, mut fast) = (t.out, t.fast);
        if fast.as_ref().is_some_and(|h| h.len() != pages) {
            return Err(Error::Config(format!(
                "restore of region {}: {pages} pages but room for {} hashes",
                region.id,
                fast.as_ref().map_or(0, |h| h.len())
            )));
        }
        let mut page = 0u64;
        for ext in main.index.extents_of(&region) {
            let file = ext.file as usize;
            let mut left = ext.page_count as usize;
            let mut record = ext.first_record as usize;
            while left > 0 {
                if out.is_empty() {
                    return Err(Error::corrupt(
                        main.path(),
                        format!("region {}", region.id),
                        format!("its extents hold more pages than its {pages}"),
                    ));
                }
                let bytes = (left.min(run_pages) * ps).min(out.len());
                let (head, rest) = std::mem::take(&mut out).split_at_mut(bytes);
                out = rest;
                let n = head.len().div_ceil(ps);
                let hashes = match fast.take() {
                    Some(h) => {
                        let (a, b) = h.split_at_mut(n.min(h.len()));
                        fast = Some(b);
                        Some(a)
                    }
                    None => None,
                };
                runs[file].push(Run {
                    first_record: record,
                    region_id: region.id,
                    first_page: page,
                    out: head,
                    fast: hashes,
                });
                page += n as u64;
                record += n;
                left -= n;
            }
        }
        if !out.is_empty() {
            return Err(Error::corrupt(
                main.path(),
                format!("page {page} of region {}", region.id),
                "is in none of the region's extents",
            ));
        }
    }
    let mut per_file: Vec<std::collections::VecDeque<Chunk<'a>>> = Vec::new();
    for (file, mut runs) in runs.into_iter().enumerate() {
        let mut chunks = std::collections::VecDeque::new();
        runs.sort_unstable_by_key(|r| r.first_record);
        let recs = &v.files()[file].index.records;
        let mut cur: Option<Chunk<'a>> = None;
        for run in runs {
            let n = run.out.len().div_ceil(ps);
            let span = recs
                .get(run.first_record..run.first_record + n)
                .unwrap_or_default()
                .iter()
                .map(|r| (r.offset, r.offset + r.stored_len as u64))
                .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)));
            let Some((a, b)) = span else {
                return Err(Error::corrupt(
                    main.path(),
                    format!("page {} of region {}", run.first_page, run.region_id),
                    format!(
                        "refers to record {} of {}, which has only {}",
                        run.first_record,
                        v.files()[file].path().display(),
                        recs.len()
                    ),
                ));
            };
            match cur.as_mut() {
                Some(c)
                    if a >= c.start && a <= c.end + GAP && b.max(c.end) - c.start <= MAX_CHUNK =>
                {
                    c.end = c.end.max(b);
                    c.runs.push(run);
                }
                _ => {
                    chunks.extend(cur.take());
                    cur = Some(Chunk {
                        file,
                        start: a,
                        end: b,
                        runs: vec![run],
                    });
                }
            }
        }
        chunks.extend(cur);
        per_file.push(chunks);
    }
    // Each file in its own order, the files taken in turn: several files are read at once.
    let mut chunks = Vec::with_capacity(per_file.iter().map(|c| c.len()).sum());
    while per_file.iter().any(|c| !c.is_empty()) {
        for c in &mut per_file {
            chunks.extend(c.pop_front());
        }
    }
    Ok(chunks)
}
