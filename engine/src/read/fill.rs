//! Restoring a version into memory file by file.
//!
//! A restore needs, from each file of the version, the records that the version's extents
//! use. They are read in sequential requests ([`Chunk`]s of whole records, up to 1 MiB), with
//! direct I/O (`O_DIRECT`) where the file system takes it and the bytes are not already in
//! the page cache; reader threads keep many requests in flight, in file order, while the
//! workers decode and verify the chunks already read, straight into the regions. Every page
//! is checked against its stored blake3 hash before the restore returns success.
//!
//! Why direct I/O: a cold restore through the page cache pays for memory it does not keep,
//! to fill the cache and to fault in the file's mapping (on a 2-core VM, 0.45 s more CPU
//! time per GiB restored than the same restore from a warm cache), and it evicts the
//! application's own cached files for a checkpoint that is read once. Bytes already cached
//! (a restore right after the checkpoint that wrote them through the cache) are decoded from
//! the mapping instead: a direct read would fetch them from the disk again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use zerocopy::{FromZeros, IntoBytes};

use super::{Version, VersionFile};
use crate::error::{Error, Result};
use crate::format::{Record, RegionEntry};
use crate::vfs::DIRECT_ALIGN;
use crate::write::staging::Block;

/// Bytes one read request covers at most.
const MAX_CHUNK: u64 = 1 << 20;
/// Read requests in flight at most: reader threads. Many small requests in flight kept the
/// workers busy where a few large ones did not: 1 GiB cold restores on a 2-core VM (ext4 on
/// virtio), three each, alternated: 16 × 1 MiB 0.85-0.98 s (the workers waited 0.03-0.18 s
/// for reads), 8 × 1 MiB 0.93-1.08 s, 4 × 4 MiB 0.95-1.24 s, 2 × 8 MiB 1.17-1.26 s (the
/// workers waited 0.34-0.46 s, the readers were reading 97 % of the time).
const READERS: usize = 16;
/// A gap between two needed byte ranges of a file that one request reads through instead of
/// starting another (an old file of a deep chain is needed in many small pieces).
const GAP: u64 = 256 << 10;
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

impl Chunk<'_> {
    /// The request for this chunk, aligned for direct I/O: offset and length.
    fn aligned(&self) -> (u64, usize) {
        let a = self.start / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
        let b = self.end.next_multiple_of(DIRECT_ALIGN as u64);
        (a, (b - a) as usize)
    }
}

/// Restores `targets` from `v`: reads what they need from each file, decodes every page into
/// its place and checks it against its blake3 hash, and fills the change-detection hashes
/// asked for. On error, the targets hold an unspecified mix of old and restored bytes.
pub(super) fn restore(v: &Version, targets: Vec<Target<'_>>) -> Result<()> {
    let chunks = plan(v, targets)?;
    if chunks.is_empty() {
        return Ok(());
    }
    let files = v.files();
    let direct: Vec<Option<File>> = files
        .iter()
        .map(|f| match crate::sys::reopen_direct(f.file(), f.path()) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::debug!(
                    "{}: no direct I/O ({e}); reading through the page cache",
                    f.path().display()
                );
                None
            }
        })
        .collect();
    let direct_refused: Vec<AtomicBool> = files.iter().map(|_| AtomicBool::new(false)).collect();
    let largest = chunks.iter().map(|c| c.aligned().1).max().unwrap_or(0);
    let workers = rayon::current_num_threads().max(1);
    let readers = READERS.min(chunks.len());
    // Every buffer is in a reader's hands, queued, or with a worker: readers wait for one
    // when all are out, so at most this many chunks are read ahead of the workers.
    let max_buffers = readers + workers;
    let allocated = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = first_error.lock() {
            slot.get_or_insert(e);
        }
    };
    let queue = Mutex::new(chunks.into_iter());
    let (free_tx, free_rx) = mpsc::channel::<Vec<Block>>();
    let free_rx = Mutex::new(free_rx);
    // Unbounded: a reader never waits to hand over a chunk (the buffers bound what is queued),
    // so readers cannot be left waiting on workers that stopped after an error.
    let (full_tx, full_rx) = mpsc::channel::<(Chunk<'_>, Option<Vec<Block>>)>();
    let full_rx = Mutex::new(full_rx);

    std::thread::scope(|s| {
        for _ in 0..readers {
            let full_tx = full_tx.clone();
            let (queue, free_rx, allocated, failed) = (&queue, &free_rx, &allocated, &failed);
            let (direct, direct_refused, fail) = (&direct, &direct_refused, &fail);
            s.spawn(move || {
                while !failed.load(Ordering::Relaxed) {
                    let next = match queue.lock() {
                        Ok(mut q) => q.next(),
                        Err(poisoned) => poisoned.into_inner().next(),
                    };
                    let Some(chunk) = next else {
                        return;
                    };
                    let f = &files[chunk.file];
                    let (at, len) = chunk.aligned();
                    if crate::sys::mapping::resident(f.map(), at, len).unwrap_or(false) {
                        // Cached already: decoded from the mapping, no read.
                        if full_tx.send((chunk, None)).is_err() {
                            return;
                        }
                        continue;
                    }
                    let Some(mut buf) = take_buffer(free_rx, allocated, max_buffers, largest)
                    else {
                        // No memory for a buffer, or every worker has gone (after an error:
                        // then this one is already recorded).
                        fail(Error::io(
                            f.path(),
                            "read",
                            std::io::Error::from(std::io::ErrorKind::OutOfMemory),
                        ));
                        return;
                    };
                    let dio = direct[chunk.file]
                        .as_ref()
                        .filter(|_| !direct_refused[chunk.file].load(Ordering::Relaxed));
                    let bytes = &mut buf.as_mut_bytes()[..len];
                    if let Err(e) = read_chunk(f, dio, &direct_refused[chunk.file], at, bytes) {
                        fail(e);
                        return;
                    }
                    if full_tx.send((chunk, Some(buf))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(full_tx);
        for _ in 0..workers {
            let free_tx = free_tx.clone();
            let (full_rx, failed, fail) = (&full_rx, &failed, &fail);
            s.spawn(move || {
                while !failed.load(Ordering::Relaxed) {
                    let next = match full_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    let Ok((chunk, buf)) = next else {
                        return;
                    };
                    let f = &files[chunk.file];
                    let done = match &buf {
                        Some(b) => {
                            let (at, _) = chunk.aligned();
                            decode_chunk(f, chunk, |rec| {
                                let from = usize::try_from(rec.offset.checked_sub(at)?).ok()?;
                                b.as_bytes().get(from..from + rec.stored_len as usize)
                            })
                        }
                        None => decode_chunk(f, chunk, |rec| Some(f.stored_bytes(rec))),
                    };
                    if let Some(b) = buf {
                        // The readers may all have finished: then nobody needs it back.
                        let _ = free_tx.send(b);
                    }
                    if let Err(e) = done {
                        fail(e);
                        return;
                    }
                }
            });
        }
        // Readers waiting for a buffer must learn when every worker has gone.
        drop(free_tx);
    });
    let first = match first_error.into_inner() {
        Ok(e) => e,
        Err(poisoned) => poisoned.into_inner(),
    };
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A buffer for a read: a free one, a new one while fewer than `max` exist, else the next one
/// a worker gives back. `None` if a new one cannot be allocated, or once no worker is left to
/// give one back.
fn take_buffer(
    free: &Mutex<mpsc::Receiver<Vec<Block>>>,
    allocated: &AtomicUsize,
    max: usize,
    bytes: usize,
) -> Option<Vec<Block>> {
    let rx = match free.lock() {
        Ok(rx) => rx,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Ok(b) = rx.try_recv() {
        return Some(b);
    }
    if allocated.fetch_add(1, Ordering::Relaxed) < max {
        drop(rx);
        return Block::new_vec_zeroed(bytes.div_ceil(DIRECT_ALIGN)).ok();
    }
    rx.recv().ok()
}

/// Reads `buf.len()` bytes of `f` at `at` (aligned), with direct I/O through `dio` if given.
/// A file system that refuses a direct read (`EINVAL`) gets this and later reads through the
/// page cache (`refused` remembers). Bytes past the end of the file are left as they were.
fn read_chunk(
    f: &VersionFile,
    dio: Option<&File>,
    refused: &AtomicBool,
    at: u64,
    buf: &mut [u8],
) -> Result<()> {
    let size = f.size();
    let want = buf.len().min(size.saturating_sub(at) as usize);
    if let Some(d) = dio {
        let whole = want.next_multiple_of(DIRECT_ALIGN).min(buf.len());
        match read_full(d, at, &mut buf[..whole]) {
            Ok(n) if n >= want => return Ok(()),
            Ok(n) => {
                return Err(Error::io(
                    f.path(),
                    "read",
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{n} bytes at offset {at}, expected {want}"),
                    ),
                ))
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(
                    "{}: direct read refused ({e}); reading through the page cache",
                    f.path().display()
                );
                refused.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(Error::io(f.path(), "read", e)),
        }
    }
    f.file()
        .read_exact_at(&mut buf[..want], at)
        .map_err(|e| Error::io(f.path(), "read", e))
}

/// Reads into `buf` at `at` until it is full or the file ends; the bytes read.
fn read_full(f: &File, at: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Decodes every page of `chunk` into its place, checking it, with `src` giving each
/// record's stored bytes.
fn decode_chunk<'b>(
    f: &'b VersionFile,
    chunk: Chunk<'_>,
    src: impl Fn(&Record) -> Option<&'b [u8]>,
) -> Result<()> {
    let ps = f.header.page_size as usize;
    for run in chunk.runs {
        let Run {
            first_record,
            region_id,
            first_page,
            out,
            mut fast,
        } = run;
        for (k, page) in out.chunks_mut(ps).enumerate() {
            let p = first_page + k as u64;
            let what = || format!("page {p} of region {region_id}");
            let rec = f.index.records.get(first_record + k).ok_or_else(|| {
                Error::corrupt(f.path(), what(), "refers to a record past the file's table")
            })?;
            let bytes = src(rec).ok_or_else(|| {
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
    // At most one request's worth, whatever the page size.
    let run_pages = (MAX_CHUNK as usize / ps).clamp(1, RUN_PAGES);
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
