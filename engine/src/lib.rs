//! # ckpt-engine
//!
//! Incremental delta checkpoints for HPC applications. An application registers memory
//! regions with a [`Checkpointer`]; each [`Checkpointer::checkpoint`] hashes the regions page
//! by page (blake3, in parallel), writes only the pages that changed (zstd-compressed) into a
//! new immutable file `<name>.ckpt.<N>`, and references older files for everything else.
//! [`Checkpointer::restore`] rebuilds any committed version; every page is resolved in one
//! hop, so restore cost does not grow with the chain's depth.
//!
//! The on-disk format is specified in `docs/FORMAT.md`; the code map is
//! `docs/ARCHITECTURE.md`.
//!
//! Rooms, in the direction data flows: `region` (registered memory) → `track` (which pages
//! may have changed: hash, userfaultfd, auto) → `hash` (which did) → `write` (the new file,
//! committed atomically) → [`store`] (naming, listing, locking). Beside them: `read` and
//! [`catalog`] (opening, checking, resolving versions), [`compact`] (retention, crash-safe),
//! [`job`] (a multi-rank job's layout, no MPI), `format` (the bytes), `iobuf` (I/O buffers
//! mapped outside the allocator) and `sys` (every system call).
//!
//! ```no_run
//! use ckpt_engine::{Checkpointer, Config, Tracking};
//!
//! let mut ck = Checkpointer::open("/scratch/job", "sim", Config::default().with_tracking(Tracking::Auto))?;
//! let grid = ck.alloc_region::<f64>(1, 1 << 20)?;
//! if let Some(v) = ck.latest_version()? {
//!     ck.restore(Some(v))?; // restart: continue from the newest version
//! }
//! for step in 0..100 {
//!     ck.region_mut(&grid)?.iter_mut().for_each(|x| *x += 1.0);
//!     if step % 10 == 9 {
//!         let s = ck.checkpoint()?;
//!         assert!(s.pages_stored <= s.pages_total);
//!     }
//! }
//! # Ok::<(), ckpt_engine::Error>(())
//! ```

#[cfg(feature = "bench")]
pub mod bench;
mod checkpointer;
pub mod compact;
mod config;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(not(feature = "fault-injection"))]
mod fault;
#[cfg(feature = "internals")]
pub mod format;
#[cfg(not(feature = "internals"))]
mod format;
mod hash;
mod iobuf;
pub mod job;
#[cfg(feature = "internals")]
pub mod read;
#[cfg(not(feature = "internals"))]
mod read;
mod region;
pub mod signals;
pub mod store;
mod sys;
mod track;
pub mod vfs;
mod write;

pub use checkpointer::{AsyncCheckpoint, Checkpointer};
pub use config::{CheckpointStats, Config, RestoreStats, Snapshot, Tracking};
pub use error::{Error, Result};
pub use format::{Identity, TrackingKind};
#[cfg(feature = "internals")]
pub use hash::page_hash;
pub use read::catalog;
pub use region::RegionHandle;
pub use store::{Incoming, Store};
pub use sys::ckpt_restored;

/// The environment variable `ckpt debug` sets to make a program restore a given version at
/// its restart instead of the newest.
pub const RESTORE_VERSION_VAR: &str = "CKPT_RESTORE_VERSION";

/// The version `CKPT_RESTORE_VERSION` asks restarts to restore, if it is set: a restart
/// (`Checkpointer::restore(None)`, `Job::restart`, `ckpt_restart_test`) then takes exactly
/// that version rather than the newest, and fails if it cannot. An unparseable value is an
/// error, never ignored.
pub fn restore_version_override() -> Result<Option<u64>> {
    match std::env::var(RESTORE_VERSION_VAR) {
        Ok(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            Error::Config(format!(
                "{RESTORE_VERSION_VAR}={v:?} is not a version number"
            ))
        }),
        Err(_) => Ok(None),
    }
}

/// Lowers the calling thread's scheduling priority (its nice value) by `by`, up to 19: for
/// background threads that copy checkpoints while the application computes.
pub fn lower_thread_priority(by: i32) {
    sys::lower_thread_priority(by);
}

/// Whether userfaultfd write-protect tracking (`Tracking::Uffd`) works on this kernel:
/// `UFFD_FEATURE_WP_ASYNC` and the `PAGEMAP_SCAN` ioctl (Linux ≥ 6.7). `Err` says what is
/// missing; `Tracking::Auto` then hashes.
pub fn uffd_support() -> std::result::Result<(), String> {
    sys::uffd::available()
}

/// Hashing entry points exposed for benchmarks (feature `bench`).
#[cfg(feature = "bench")]
pub mod hashing {
    /// Hashes `data` the way a checkpoint does when nothing is known yet (every page once
    /// with the change-detection hash and once with blake3, from one copy), returning the
    /// number of pages found. For benchmarks.
    ///
    /// As in a full version, `data` is scanned in spans of one staging buffer (8 MiB), each
    /// copied into a buffer the writer gave back: here, the previous span's, and at the end
    /// it goes back to the kept buffers. So the figure is the steady state of a full version,
    /// not the page faults of a fresh copy of all of `data`.
    pub fn hash_fresh(data: &[u8], page_size: usize) -> std::io::Result<usize> {
        let known = crate::hash::RegionHashes::unknown(data.len(), page_size);
        let span = crate::iobuf::STAGING_BYTES / page_size;
        let (mut found, mut spare) = (0, None);
        for first in (0..known.pages.len()).step_by(span.max(1)) {
            let pages = first..(first + span).min(known.pages.len());
            let mut scan = crate::hash::scan_pages(data, page_size, &known, pages, true, spare)?;
            found += scan.dirty.len();
            spare = scan.whole.take();
        }
        if let Some(b) = spare {
            crate::iobuf::give_staging(b);
        }
        Ok(found)
    }

    /// A remembered state for `data`, to benchmark re-scans of unchanged or lightly changed
    /// memory with [`rescan`].
    pub struct Known(crate::hash::RegionHashes);

    /// Scans `data` once and remembers it.
    pub fn remember(data: &[u8], page_size: usize) -> std::io::Result<Known> {
        let mut known = crate::hash::RegionHashes::unknown(data.len(), page_size);
        let s = crate::hash::scan_all(data, page_size, &known)?;
        known.apply(&s);
        Ok(Known(known))
    }

    /// Re-scans `data` against a remembered state; returns the number of dirty pages.
    pub fn rescan(data: &[u8], page_size: usize, known: &Known) -> std::io::Result<usize> {
        Ok(crate::hash::scan_all(data, page_size, &known.0)?
            .dirty
            .len())
    }

    /// The change-detection hash (XXH3-128) of one page.
    pub fn fast_hash(page: &[u8]) -> u128 {
        crate::hash::fast_hash(page)
    }

    /// blake3 of each page of `data` (`page_size` bytes each, the last may be short), several
    /// pages at a time as restores and full versions take them; returns the first byte of
    /// every hash summed. For benchmarks against one `page_hash` call per page.
    pub fn page_hashes(data: &[u8], page_size: usize) -> usize {
        let mut sum = 0usize;
        let mut out = [[0u8; 32]; crate::hash::HASH_LANES];
        let pages: Vec<&[u8]> = data.chunks(page_size).collect();
        for batch in pages.chunks(crate::hash::HASH_LANES) {
            let out = &mut out[..batch.len()];
            crate::hash::page_hashes(batch, out);
            sum += out.iter().map(|h| h[0] as usize).sum::<usize>();
        }
        sum
    }
}
