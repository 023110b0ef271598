//! The scan-and-emit step of a checkpoint: hash a span of a region, hand its dirty pages to
//! the writer, move on, so that hashing the next span overlaps with compressing and writing
//! the previous one.
//!
//! Inputs are the regions, what is remembered of their last committed contents, and the
//! tracker's candidates; the output is the records written and the scans to remember once the
//! version commits. Nothing here decides numbering or commits.

use std::time::Instant;

use super::file::{PageIn, VersionWriter};
use crate::error::{Error, Result};
use crate::format::Record;
use crate::hash::{self, RegionHashes, Scan};
use crate::region::Region;

/// Bytes of a region scanned before their dirty pages are handed to the writer.
const SPAN_BYTES: usize = 8 << 20;

/// What to scan and how.
pub(crate) struct ScanJob<'a> {
    /// The registered regions, in engine order.
    pub(crate) regions: &'a [Region],
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
}

/// What [`scan_and_emit`] produced.
pub(crate) struct Scanned {
    /// The new file's records, in the order the pages were emitted.
    pub(crate) records: Vec<Record>,
    /// Per region: the scan, to remember once the version commits (page bytes dropped).
    pub(crate) scans: Vec<Scan>,
    /// Per region: the pages stored in the new file, ascending.
    pub(crate) stored: Vec<Vec<u64>>,
    /// Seconds spent hashing.
    pub(crate) scan_secs: f64,
    /// Pages in all regions.
    pub(crate) pages_total: u64,
}

/// Scans every region and streams its dirty pages into `writer`.
pub(crate) fn scan_and_emit(writer: &mut VersionWriter, job: &ScanJob<'_>) -> Result<Scanned> {
    let ps = job.page_size;
    let mut out = Scanned {
        records: Vec::new(),
        scans: Vec::with_capacity(job.regions.len()),
        stored: Vec::with_capacity(job.regions.len()),
        scan_secs: 0.0,
        pages_total: 0,
    };
    let span_pages = (SPAN_BYTES / ps).max(1);
    let tmp = writer.tmp_path().to_path_buf();
    let records = writer.write_stream(job.level, job.min_saving, |emit| {
        for (ri, (r, known)) in job.regions.iter().zip(job.known).enumerate() {
            let bytes = r.mem.bytes();
            out.pages_total += bytes.len().div_ceil(ps) as u64;
            let mut region_scan = Scan::default();
            let mut region_stored = Vec::new();
            let npages = known.pages.len();
            let mut g = 0;
            while g < npages {
                let end = (g + span_pages).min(npages);
                let ts = Instant::now();
                let mut scan = match job.candidates {
                    Some(c) => {
                        let c = &c[ri];
                        let a = c.partition_point(|&p| p < g as u64);
                        let b = c.partition_point(|&p| p < end as u64);
                        hash::scan_candidates(bytes, ps, known, &c[a..b])
                    }
                    None => hash::scan_pages(bytes, ps, known, g..end, job.full),
                };
                out.scan_secs += ts.elapsed().as_secs_f64();
                // The stored bytes are the copies the hashes were computed from.
                let pages: Vec<PageIn<'_>> = scan
                    .dirty
                    .iter()
                    .map(|d| {
                        region_stored.push(d.page);
                        PageIn {
                            bytes: d.bytes(),
                            hash: d.hash,
                            stored: None,
                        }
                    })
                    .collect();
                if crate::fault::fail("write-pages") {
                    return Err(Error::io(
                        &tmp,
                        "write pages",
                        std::io::Error::other("injected failure (CKPT_FAULT_FAIL=write-pages)"),
                    ));
                }
                if !pages.is_empty() {
                    emit(&pages)?;
                }
                drop(pages);
                scan.dirty.iter_mut().for_each(|d| d.drop_copy());
                region_scan.extend(scan);
                g = end;
            }
            out.scans.push(region_scan);
            out.stored.push(region_stored);
        }
        Ok(())
    })?;
    out.records = records;
    Ok(out)
}
