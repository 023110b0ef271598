//! Restoring a version into memory file by file.
//!
//! A restore needs, from each file of the version, the records that the version's extents
//! use. They are read in sequential requests ([`Chunk`]s of whole records, up to
//! [`MAX_CHUNK`]), many at once and around the page cache ([`Reader`]), while the workers
//! decode and verify the chunks already read, straight into the regions. Every page is
//! checked against its stored blake3 hash before the restore returns success.
//!
//! Where one file holds most of a megabyte of a region as raw pages stored back to back
//! (a full version's file, format version 2), that stretch is read with direct I/O straight
//! into the region: no buffer, no copy ([`How::Direct`]). The read also lays down the file's
//! stale copies of the pages that newer files replace (the stretch's holes); those are
//! written over in a second pass ([`How::Late`]), once every direct read has landed.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use super::parallel::{Filled, Reader, Request, GAP, MAX_CHUNK};
use super::Version;
use crate::error::{Error, Result};
use crate::format::{Record, RegionEntry, RECORD_ALIGN};
use crate::hash::HASH_LANES;
use crate::vfs::DIRECT_ALIGN;

/// Pages one run holds at most (fewer where pages are larger than 4 KiB): the unit a chunk
/// is cut at.
const RUN_PAGES: usize = 256;
/// Pages of its own file that a direct stretch holds at least: shorter stretches are read
/// with their neighbours in the file, into a buffer.
const DIRECT_MIN_PAGES: usize = 32;

/// One region to restore.
pub struct Target<'a> {
    /// The region's index in the version's region table.
    pub region: usize,
    /// Where its bytes go: exactly the region's length.
    pub out: &'a mut [u8],
    /// Where each page's change-detection hash goes, one per page; `None` for no hashes.
    pub fast: Option<&'a mut [u128]>,
}

/// How a piece of a region is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Straight into the region, around the page cache, in the first pass. The stretch may
    /// have holes: pages that come from other files, read late.
    Direct,
    /// Into a buffer, and decoded into the region, in the first pass.
    Buffered,
    /// Into a buffer, in the second pass: the rest of a window that holds a direct stretch,
    /// including the stretch's holes, which the direct read filled with stale pages.
    Late,
}

/// Pages of a region stored as consecutive records of one file.
#[derive(Debug, Clone)]
struct Piece {
    file: usize,
    /// The first page's record in that file's record table.
    first_record: usize,
    /// The first page, in the region, and how many.
    first_page: usize,
    pages: usize,
    how: How,
    /// For a direct piece, its holes: pages (counted from its first) that late pieces fill.
    holes: Vec<Range<usize>>,
}

impl Piece {
    /// Its file, and the offset of that file's record numbers from the region's page
    /// numbers: pieces with the same key are parts of one mapping from pages to records.
    fn key(&self) -> (usize, i64) {
        (self.file, self.first_record as i64 - self.first_page as i64)
    }

    /// Pages `pages` of it (a subrange), read late.
    fn late_part(&self, pages: Range<usize>) -> Piece {
        Piece {
            file: self.file,
            first_record: self.first_record + (pages.start - self.first_page),
            first_page: pages.start,
            pages: pages.len(),
            how: How::Late,
            holes: Vec::new(),
        }
    }
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
    /// Pages (counted from the first) left to a later pass: neither checked nor hashed here.
    holes: Vec<Range<usize>>,
    /// Whether the run is a direct stretch, read into `out` in a chunk of its own.
    direct: bool,
}

/// Whole records of one file read by one request, and where their pages go.
struct Chunk<'a> {
    file: usize,
    /// The records' bytes: `start..end` of the file.
    start: u64,
    end: u64,
    /// The runs; a direct run alone, read straight into its pages if the reader can.
    runs: Vec<Run<'a>>,
}

impl Request for Chunk<'_> {
    fn file(&self) -> usize {
        self.file
    }
    fn span(&self) -> (u64, u64) {
        (self.start, self.end)
    }
    fn target(&mut self) -> Option<&mut [u8]> {
        match self.runs.as_mut_slice() {
            [run] if run.direct => Some(&mut *run.out),
            _ => None,
        }
    }
}

/// Restores `targets` from `v`: reads what they need from each file, decodes every page into
/// its place and checks it against its blake3 hash, and fills the change-detection hashes
/// asked for. Returns the bytes read straight into the regions (direct stretches). On error,
/// the targets hold an unspecified mix of old and restored bytes.
pub(super) fn restore(v: &Version, mut targets: Vec<Target<'_>>) -> Result<u64> {
    let layouts = targets
        .iter()
        .map(|t| layout(v, t))
        .collect::<Result<Vec<_>>>()?;
    // Twice as many workers as cores: a worker stalls in faulting its run's fresh pages in
    // (`populate_write`) and in waiting for reads, and another uses the core meanwhile. Cold
    // 1 GiB restores (2-core VM, ext4 on virtio, three bench runs each, alternated): the
    // reading and decoding took 0.78-0.97 s with 4 workers against 0.90-1.11 s with 2, for
    // the same CPU time (user 0.45-0.60 s, system 0.41-0.63 s).
    let workers = 2 * rayon::current_num_threads().max(1);
    let reader = Reader::new(v.files(), workers, true);
    // The second pass writes over the stale pages that the first one's direct reads left in
    // the holes: it starts once they have all landed.
    let in_place = AtomicU64::new(0);
    for late in [false, true] {
        let chunks = chunks(v, &mut targets, &layouts, late)?;
        reader.run(chunks, workers, |c| decode_chunk(c, &in_place))?;
    }
    Ok(in_place.into_inner())
}

/// Decodes every page of a chunk read into its place, checking it (or, read straight into
/// its place, checks it there, counting its bytes in `in_place`).
fn decode_chunk(mut chunk: Filled<'_, Chunk<'_>>, in_place: &AtomicU64) -> Result<()> {
    let f = chunk.file();
    let ps = f.header.page_size as usize;
    let runs = std::mem::take(&mut chunk.req.runs);
    let in_target = chunk.in_target();
    let mut placed = 0u64;
    for run in runs {
        let Run {
            first_record,
            region_id,
            first_page,
            out,
            mut fast,
            holes,
            ..
        } = run;
        // A restarted process's regions are fresh memory: fault the run's pages in with one
        // call rather than one trap per page. Cold 1 GiB restores into fresh regions (2-core
        // VM, six alternated runs each): system time 0.80-1.02 s -> 0.61-0.70 s, wall time
        // the same (0.88-1.20 s against 0.84-1.25 s, the disk's pace that day). A hint: where
        // it fails, the writes below fault the pages in. (A direct read faulted them in.)
        if !in_target {
            let _ = crate::sys::populate_write(out);
        }
        // Pages are checked against their blake3 hashes a batch at a time (several pages
        // hashed at once), once decoded into their place or read there.
        let mut settle = |batch: &mut Vec<(usize, &Record, &mut [u8])>| -> Result<()> {
            let recs: Vec<&Record> = batch.iter().map(|b| b.1).collect();
            let pages: Vec<&[u8]> = batch.iter().map(|b| &*b.2).collect();
            f.check_hashes(&recs, &pages, &|i| {
                format!(
                    "page {} of region {region_id}",
                    first_page + batch[i].0 as u64
                )
            })?;
            if let Some(h) = fast.as_deref_mut() {
                for (k, page) in batch.iter().map(|b| (b.0, &*b.2)) {
                    if let Some(slot) = h.get_mut(k) {
                        *slot = crate::hash::fast_hash(page);
                    }
                }
            }
            batch.clear();
            Ok(())
        };
        let mut batch = Vec::with_capacity(HASH_LANES);
        let mut holes = holes.iter().peekable();
        for (k, page) in out.chunks_mut(ps).enumerate() {
            while holes.next_if(|h| h.end <= k).is_some() {}
            if holes.peek().is_some_and(|h| h.contains(&k)) {
                continue;
            }
            let p = first_page + k as u64;
            let what = || format!("page {p} of region {region_id}");
            let rec = f.index.records.get(first_record + k).ok_or_else(|| {
                Error::corrupt(f.path(), what(), "refers to a record past the file's table")
            })?;
            if in_target {
                f.check_raw(rec, page.len(), &what)?;
                placed += page.len() as u64;
            } else {
                let bytes = chunk.stored(rec).ok_or_else(|| {
                    Error::corrupt(f.path(), what(), "record lies outside the bytes read")
                })?;
                f.decode_unchecked(rec, bytes, page, &what)?;
            }
            batch.push((k, rec, page));
            if batch.len() == HASH_LANES {
                settle(&mut batch)?;
            }
        }
        settle(&mut batch)?;
    }
    in_place.fetch_add(placed, Ordering::Relaxed);
    Ok(())
}

/// Where each page of target `t` comes from, in page order, and how it is read: its extents
/// cut into pieces, with a direct stretch wherever one file's raw pages fill most of a
/// request's worth of the region.
fn layout(v: &Version, t: &Target<'_>) -> Result<Vec<Piece>> {
    let ps = v.page_size();
    let main = v.file();
    let region: RegionEntry = *v
        .regions()
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
    if t.fast.as_ref().is_some_and(|h| h.len() != pages) {
        return Err(Error::Config(format!(
            "restore of region {}: {pages} pages but room for {} hashes",
            region.id,
            t.fast.as_ref().map_or(0, |h| h.len())
        )));
    }
    // The extents, as pieces of at most one window each.
    let window = (MAX_CHUNK as usize / ps).max(1);
    let mut cut = Vec::new();
    let mut page = 0usize;
    for ext in main.index.extents_of(&region) {
        let file = ext.file as usize;
        if file >= v.files().len() {
            return Err(Error::corrupt(
                main.path(),
                format!("page {page} of region {}", region.id),
                format!("refers to file {file} of a table of {}", v.files().len()),
            ));
        }
        let (mut left, mut record) = (ext.page_count as usize, ext.first_record as usize);
        if pages - page < left {
            return Err(Error::corrupt(
                main.path(),
                format!("region {}", region.id),
                format!("its extents hold more pages than its {pages}"),
            ));
        }
        while left > 0 {
            let n = left.min(window - page % window);
            cut.push(Piece {
                file,
                first_record: record,
                first_page: page,
                pages: n,
                how: How::Buffered,
                holes: Vec::new(),
            });
            (page, record, left) = (page + n, record + n, left - n);
        }
    }
    if page < pages {
        return Err(Error::corrupt(
            main.path(),
            format!("page {page} of region {}", region.id),
            "is in none of the region's extents",
        ));
    }
    // Window by window: the file, and the offset of its record numbers from the page
    // numbers, that supply the most pages (the window's main file); direct stretches where
    // that file's records are raw pages back to back.
    let mut pieces = Vec::with_capacity(cut.len());
    let mut rest = &cut[..];
    while let Some(first) = rest.first() {
        let w = first.first_page / window;
        let n = rest
            .iter()
            .take_while(|p| p.first_page / window == w)
            .count();
        let (win, next) = rest.split_at(n);
        rest = next;
        let mut totals: Vec<((usize, i64), usize)> = Vec::new();
        for p in win {
            match totals.iter_mut().find(|(k, _)| *k == p.key()) {
                Some((_, t)) => *t += p.pages,
                None => totals.push((p.key(), p.pages)),
            }
        }
        let Some(&(main, _)) = totals.iter().max_by_key(|&&(_, t)| t) else {
            pieces.extend_from_slice(win);
            continue;
        };
        let stretches = stretches(v, t, win, main);
        if stretches.is_empty() {
            pieces.extend_from_slice(win);
            continue;
        }
        let (main_file, offset) = main;
        // The window's other pages are all read late, with the other files' late pieces: a
        // file that supplies a few pages to each window is then read in long requests.
        let mut direct: Vec<Piece> = stretches
            .iter()
            .map(|st| Piece {
                file: main_file,
                first_record: (offset + st.start as i64) as usize,
                first_page: st.start,
                pages: st.len(),
                how: How::Direct,
                holes: Vec::new(),
            })
            .collect();
        let mut late = Vec::new();
        for p in win {
            let end = p.first_page + p.pages;
            if p.key() != main {
                // Inside a stretch (which starts and ends on main pages), it is a hole.
                if let Some(d) = direct
                    .iter_mut()
                    .find(|d| (d.first_page..d.first_page + d.pages).contains(&p.first_page))
                {
                    d.holes
                        .push(p.first_page - d.first_page..end - d.first_page);
                }
                late.push(Piece {
                    how: How::Late,
                    ..p.clone()
                });
                continue;
            }
            // The main file's pages outside the stretches are read late.
            let mut at = p.first_page;
            for d in &direct {
                let (a, b) = (d.first_page, d.first_page + d.pages);
                if b <= at || a >= end {
                    continue;
                }
                if a > at {
                    late.push(p.late_part(at..a));
                }
                at = b.min(end).max(at);
            }
            if at < end {
                late.push(p.late_part(at..end));
            }
        }
        pieces.append(&mut direct);
        pieces.append(&mut late);
    }
    Ok(pieces)
}

/// The first pass's chunks (direct and buffered pieces), or the second's (late pieces):
/// the targets' pieces cut into runs of consecutive records, and each file's runs grouped,
/// in file order, into chunks.
fn chunks<'a>(
    v: &Version,
    targets: &'a mut [Target<'_>],
    layouts: &[Vec<Piece>],
    late: bool,
) -> Result<Vec<Chunk<'a>>> {
    let ps = v.page_size();
    let main = v.file();
    // At most one request's worth, whatever the page size: a record is at most a page, and
    // fewer than RECORD_ALIGN bytes of padding may precede each (format version 2).
    let run_pages = (MAX_CHUNK as usize / (ps + RECORD_ALIGN as usize)).clamp(1, RUN_PAGES);
    let mut runs: Vec<Vec<Run<'a>>> = (0..v.files().len()).map(|_| Vec::new()).collect();
    for (t, pieces) in targets.iter_mut().zip(layouts) {
        let region_id = v.regions().get(t.region).map_or(0, |r| r.id);
        let mut out: &'a mut [u8] = &mut *t.out;
        let mut fast: Option<&'a mut [u128]> = t.fast.as_deref_mut();
        // The page that `out` (and `fast`) start at.
        let mut at = 0usize;
        for piece in pieces.iter().filter(|p| (p.how == How::Late) == late) {
            // Pieces of one pass are in page order and do not overlap.
            let skip = piece.first_page.saturating_sub(at);
            let _ = split_pages(&mut out, &mut fast, skip, ps);
            at += skip;
            let (direct, most) = match piece.how {
                How::Direct => (true, piece.pages),
                _ => (false, run_pages),
            };
            let (mut left, mut record) = (piece.pages, piece.first_record);
            while left > 0 {
                let n = left.min(most);
                let (head, hashes) = split_pages(&mut out, &mut fast, n, ps);
                runs[piece.file].push(Run {
                    first_record: record,
                    region_id,
                    first_page: at as u64,
                    out: head,
                    fast: hashes,
                    holes: piece.holes.clone(),
                    direct,
                });
                (at, record, left) = (at + n, record + n, left - n);
            }
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
                _ if run.direct => {
                    chunks.extend(cur.take());
                    chunks.push_back(Chunk {
                        file,
                        start: a,
                        end: b,
                        runs: vec![run],
                    });
                }
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

/// Splits the first `pages` pages off `out` and their hashes off `fast` (fewer where they
/// end first; the last page may be short).
fn split_pages<'a>(
    out: &mut &'a mut [u8],
    fast: &mut Option<&'a mut [u128]>,
    pages: usize,
    ps: usize,
) -> (&'a mut [u8], Option<&'a mut [u128]>) {
    let bytes = pages.saturating_mul(ps).min(out.len());
    let (head, rest) = std::mem::take(out).split_at_mut(bytes);
    *out = rest;
    let hashes = fast.take().map(|h| {
        let (a, b) = h.split_at_mut(pages.min(h.len()));
        *fast = Some(b);
        a
    });
    (head, hashes)
}

/// The direct stretches of one window of target `t`, whose pieces are `win`, for the file and
/// record offset `main` (see [`Piece::key`]): page ranges that start and end on pages of
/// `main`, over which that file's records are raw pages stored back to back from a block
/// boundary (a compressed page, or padding, ends one), of which `main` supplies at least
/// half, and at least [`DIRECT_MIN_PAGES`].
fn stretches(v: &Version, t: &Target<'_>, win: &[Piece], main: (usize, i64)) -> Vec<Range<usize>> {
    let ps = v.page_size();
    let Some(records) = v.files().get(main.0).map(|f| &f.index.records[..]) else {
        return Vec::new();
    };
    let own: Vec<Range<usize>> = win
        .iter()
        .filter(|p| p.key() == main)
        .map(|p| p.first_page..p.first_page + p.pages)
        .collect();
    let Some(hi) = own.last().map(|r| r.end) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let (mut i, mut from) = (0, 0);
    while i < own.len() {
        let s = from.max(own[i].start);
        if s >= own[i].end {
            i += 1;
            continue;
        }
        let readable = match (usize::try_from(main.1 + s as i64), t.out.get(s * ps..)) {
            (Ok(record), Some(out)) => direct_pages(records, record, out, ps, hi - s),
            _ => 0,
        };
        if readable == 0 {
            from = s + 1;
            continue;
        }
        let e = s + readable;
        // Ends on the last page of `main` before `e`.
        let (mut owned, mut end) = (0, s);
        for r in own[i..].iter().take_while(|r| r.start < e) {
            let (a, b) = (r.start.max(s), r.end.min(e));
            if a < b {
                owned += b - a;
                end = b;
            }
        }
        if owned >= DIRECT_MIN_PAGES && 2 * owned >= end - s {
            found.push(s..end);
        }
        from = e;
    }
    found
}

/// How many pages, from record `record` of a file's `records` on and at most `max`, can be
/// read with direct I/O straight into `out` (their place in the region): raw whole pages
/// stored back to back from a block boundary of the file (format version 2 aligns them), into
/// memory that starts on a block boundary.
fn direct_pages(records: &[Record], record: usize, out: &[u8], ps: usize, max: usize) -> usize {
    let Some(first) = records.get(record) else {
        return 0;
    };
    if ps % DIRECT_ALIGN != 0
        || (out.as_ptr() as usize) % DIRECT_ALIGN != 0
        || first.offset % DIRECT_ALIGN as u64 != 0
    {
        return 0;
    }
    records[record..]
        .iter()
        .take((out.len() / ps).min(max))
        .zip((first.offset..).step_by(ps))
        .take_while(|(r, at)| r.is_raw_page(ps) && r.offset == *at)
        .count()
}
