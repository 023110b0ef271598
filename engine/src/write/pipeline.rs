//! The scan-and-emit step of a checkpoint: hash a span of a region, hand its dirty pages to
//! the writer, move on, so that hashing the next span overlaps with compressing and writing
//! the previous one.
//!
//! Inputs are the regions, what is remembered of their last committed contents, and the
//! tracker's candidates; the output is the records written and the scans to remember once the
//! version commits. Nothing here decides numbering or commits.

use std::time::Instant;

use super::file::{Batch, PageIn, Sampling, VersionWriter};
use crate::error::{Error, Result};
use crate::format::{Hash, Record};
use crate::hash::{self, Fast, RegionHashes, Scan};
use crate::iobuf::IoBuf;

/// Bytes of a region scanned (or of candidate pages hashed) before their dirty pages are
/// handed to the writer.
const SPAN_BYTES: usize = 8 << 20;

/// Candidate pages hashed before their dirty pages are handed to the writer, when the tracker
/// chose them: a sparse delta is then a few dozen batches (not one per 8 MiB of region, each
/// with its fork-join and its write), small enough that hashing the next batch still overlaps
/// with writing the last. 1 GiB, 1 % uffd deltas, median of 60, five runs each: 20.0-20.6 ms
/// with 128, 24.0-27.1 ms with one batch per 8 MiB of region (64 to 512 tried).
const CANDIDATES_PER_SPAN: usize = 128;

/// Versions expected to store at least this many bytes are written with direct I/O (where
/// the file system allows it); smaller ones through the page cache, whose single fsync at the
/// end costs less than many synchronous direct requests.
const DIRECT_MIN_BYTES: usize = 64 << 20;

/// Where a region's pages are read from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// The region's memory itself (or a forked child's copy-on-write view of it).
    Live(&'a [u8]),
    /// Copies of the region's candidate pages only, taken when an asynchronous checkpoint
    /// was asked for: the k-th candidate at `pages[k * page_size..]` (the region's last page
    /// may be short). Only a scan that the candidates choose can read it.
    Staged {
        /// The region's length in bytes.
        len: usize,
        /// The copies.
        pages: &'a [u8],
    },
}

impl Source<'_> {
    /// The region's length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Source::Live(b) => b.len(),
            Source::Staged { len, .. } => *len,
        }
    }
}

/// What to scan and how.
pub(crate) struct ScanJob<'a> {
    /// Each registered region's pages, in engine order.
    pub(crate) sources: &'a [Source<'a>],
    /// What is remembered of each region's parent contents.
    pub(crate) known: &'a [RegionHashes],
    /// The tracker's candidate pages per region, when they choose what to hash.
    pub(crate) candidates: Option<&'a [Vec<u64>]>,
    /// A full version: every page is read, hashed and stored.
    pub(crate) full: bool,
    /// The engine's page size.
    pub(crate) page_size: usize,
    /// zstd level (0: none).
    pub(crate) level: i32,
    /// See `Config::min_compression_saving`.
    pub(crate) min_saving: f64,
    /// What the last version's compression samples said.
    pub(crate) sampling: Sampling,
}

/// What [`scan_and_emit`] produced.
pub(crate) struct Scanned {
    /// The new file's records, in the order the pages were emitted.
    pub(crate) records: Vec<Record>,
    /// Per region: each stored page and its fast hash, ascending by page, to remember once
    /// the version commits (16 bytes of hash and 8 of page number: a full version of 1 GiB
    /// keeps 6 MiB here, not the pages' copies or their blake3 hashes, which are in `records`).
    pub(crate) updates: Vec<Vec<(u64, Fast)>>,
    /// Bytes passed through the change-detection hash.
    pub(crate) hashed_bytes: u64,
    /// Per region: the pages stored in the new file, ascending.
    pub(crate) stored: Vec<Vec<u64>>,
    /// Seconds spent hashing.
    pub(crate) scan_secs: f64,
    /// Pages in all regions.
    pub(crate) pages_total: u64,
    /// What the samples said, for the next version.
    pub(crate) sampling: Sampling,
}

/// Scans every region and streams its dirty pages into `writer`.
pub(crate) fn scan_and_emit(writer: &mut VersionWriter, job: &ScanJob<'_>) -> Result<Scanned> {
    let ps = job.page_size;
    let mut out = Scanned {
        records: Vec::new(),
        updates: Vec::with_capacity(job.sources.len()),
        hashed_bytes: 0,
        stored: Vec::with_capacity(job.sources.len()),
        scan_secs: 0.0,
        pages_total: 0,
        sampling: job.sampling,
    };
    let span_pages = (SPAN_BYTES / ps).max(1);
    let tmp = writer.tmp_path().to_path_buf();
    // Direct I/O for versions expected to be large (full ones, or dense candidates): no
    // copy into the page cache, and no checkpoint evicting the application's cached files.
    let expected: usize = match (job.full, job.candidates) {
        (false, Some(c)) => c.iter().map(|c| c.len() * ps).sum(),
        (false, None) => job
            .sources
            .iter()
            .zip(job.known)
            .filter(|(_, k)| !k.pages_known)
            .map(|(s, _)| s.len())
            .sum(),
        (true, _) => job.sources.iter().map(|s| s.len()).sum(),
    };
    let direct = expected >= DIRECT_MIN_BYTES;
    // The spans, in order: `span_pages` consecutive pages of a region, or, when the tracker
    // chose the candidates, `CANDIDATES_PER_SPAN` of them however far apart.
    let mut spans = Vec::new();
    for (ri, known) in job.known.iter().enumerate() {
        let npages = known.pages.len();
        let mut g = 0;
        while g < npages {
            let end = match job.candidates {
                Some(c) => {
                    let c = &c[ri];
                    let a = c.partition_point(|&p| p < g as u64);
                    c.get(a + CANDIDATES_PER_SPAN)
                        .map_or(npages, |&p| (p as usize).clamp(g + 1, npages))
                }
                None => (g + span_pages).min(npages),
            };
            spans.push((ri, g, end));
            g = end;
        }
    }
    for (src, known) in job.sources.iter().zip(job.known) {
        out.pages_total += src.len().div_ceil(ps) as u64;
        debug_assert_eq!(known.pages.len(), src.len().div_ceil(ps));
        out.updates.push(Vec::new());
        out.stored.push(Vec::new());
    }
    // `spare`: a buffer for the scan's copies (one the writer is done with).
    let scan_span = |(ri, g, end): (usize, usize, usize),
                     spare: Option<IoBuf>|
     -> Result<(usize, Scan, f64)> {
        let (src, known) = (&job.sources[ri], &job.known[ri]);
        let ts = Instant::now();
        let scan = match (job.candidates, src) {
            (Some(c), _) => {
                let c = &c[ri];
                let a = c.partition_point(|&p| p < g as u64);
                let b = c.partition_point(|&p| p < end as u64);
                hash::scan_candidates(src, a, ps, known, &c[a..b], spare).map_err(|e| {
                    Error::io(
                        &tmp,
                        "scan pages",
                        std::io::Error::new(e.kind(), format!("region {ri}: {e}")),
                    )
                })?
            }
            (None, Source::Live(bytes)) => {
                hash::scan_pages(bytes, ps, known, g..end, job.full, spare)
                    .map_err(|e| Error::io(&tmp, "map a copy of the pages", e))?
            }
            (None, Source::Staged { .. }) => {
                return Err(Error::io(
                    &tmp,
                    "scan pages",
                    std::io::Error::other("staged page copies cannot serve a scan of every page"),
                ))
            }
        };
        Ok((ri, scan, ts.elapsed().as_secs_f64()))
    };
    let (updates, stored) = (&mut out.updates, &mut out.stored);
    let mut hashed_bytes = 0;
    let mut scan_secs = 0.0;
    let mut sampling = job.sampling;
    let records =
        writer.write_stream(job.level, job.min_saving, &mut sampling, direct, |emit| {
            // Hands a scanned span's dirty pages to the writer: the stored bytes are the copies
            // the hashes were computed from. Returns a buffer the writer is done with.
            let mut emit_scan = |(ri, mut scan): (usize, Scan)| -> Result<Option<IoBuf>> {
                if crate::fault::fail("write-pages") {
                    return Err(Error::io(
                        &tmp,
                        "write pages",
                        std::io::Error::other("injected failure (CKPT_FAULT_FAIL=write-pages)"),
                    ));
                }
                let spare = match scan.whole.take() {
                    // Every page read is stored: their copy goes to the disk as it is.
                    Some(buf) if !scan.dirty.is_empty() && scan.dense(ps) => {
                        let hashes: Vec<Hash> = scan.dirty.iter().map(|d| d.hash).collect();
                        let len = scan.dirty.iter().map(|d| d.len()).sum();
                        emit(Batch::Whole {
                            buf,
                            len,
                            page_size: ps,
                            hashes: &hashes,
                        })?
                    }
                    // Some pages read were found unchanged (their places in the copy are
                    // holes): the stored ones are taken from the copy page by page, and the
                    // copy's buffer is given back (as it is when the span changed nothing).
                    whole => {
                        let copy = whole.as_ref().map_or(&[][..], IoBuf::bytes);
                        let pages = scan
                            .dirty
                            .iter()
                            .map(|d| {
                                let bytes = d.copy_in(copy).ok_or_else(|| {
                                    Error::io(
                                        &tmp,
                                        "write pages",
                                        std::io::Error::other(format!(
                                            "region {ri}: page {} is not in its scan's copy",
                                            d.page
                                        )),
                                    )
                                })?;
                                Ok(PageIn {
                                    bytes,
                                    hash: d.hash,
                                    stored: None,
                                })
                            })
                            .collect::<Result<Vec<PageIn<'_>>>>()?;
                        if !pages.is_empty() {
                            emit(Batch::Pages(&pages))?;
                        }
                        drop(pages);
                        whole
                    }
                };
                stored[ri].extend(scan.dirty.iter().map(|d| d.page));
                updates[ri].extend(scan.dirty.iter().map(|d| (d.page, d.fast)));
                Ok(spare)
            };
            // Software pipelining: span k is encoded and handed to the writer while span k + 1
            // is scanned, so that the encoder's serial steps (its copy into the write buffers)
            // do not leave the hashing workers idle. The loop runs on a worker of rayon's pool
            // (`rayon::scope`): called from the application's thread, each `join` would
            // otherwise be handed to the pool and waited for, two thread wake-ups per span.
            // The copies' buffers the writer gives back are scanned into again.
            rayon::scope(|_| {
                let mut pending: Option<(usize, Scan)> = None;
                let mut spares: Vec<IoBuf> = Vec::new();
                for span in spans.iter().copied().map(Some).chain([None]) {
                    let spare = span.and_then(|_| spares.pop());
                    let (emitted, scanned) = rayon::join(
                        || pending.take().map_or(Ok(None), &mut emit_scan),
                        || span.map(|s| scan_span(s, spare)).transpose(),
                    );
                    spares.extend(emitted?);
                    if let Some((ri, scan, secs)) = scanned? {
                        scan_secs += secs;
                        hashed_bytes += scan.hashed_bytes;
                        pending = Some((ri, scan));
                    }
                }
                // The leftovers are unmapped: when the write ends, its stager keeps the
                // buffers it holds in place of every kept one (`give_write_buffers`).
                drop(spares);
                Ok(())
            })
        })?;
    out.hashed_bytes = hashed_bytes;
    out.scan_secs = scan_secs;
    out.records = records;
    out.sampling = sampling;
    Ok(out)
}
