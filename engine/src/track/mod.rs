//! Tracking: which pages of the registered regions *may* have changed since the last
//! committed checkpoint. A [`Tracker`] only narrows the search; the `hash` room decides
//! which pages really changed.
//!
//! - [`HashAll`]: knows nothing, so every page is hashed (`Tracking::Hash`);
//! - [`uffd::UffdTracker`]: the kernel's userfaultfd write-protection reports written pages
//!   (`Tracking::Uffd`);
//! - [`Auto`]: userfaultfd, but after a checkpoint in which most pages were written it lifts
//!   protection and hashes for a while, since a fault per page then costs more than hashing.
//!
//! Invariant: a tracker forgets reported pages only in [`Tracker::committed`], so a failed
//! checkpoint loses nothing. This room does no file I/O; its system calls live in `sys`.

use std::io;

use crate::config::Tracking;

pub(crate) mod uffd;

/// Auto mode: after a checkpoint in which most pages were written, this many checkpoints
/// hash instead of paying a write-protect fault per page.
pub(crate) const AUTO_PAUSE: u32 = 8;

/// What a checkpoint did with a tracker's report, told once it has committed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// Pages the tracker reported, if it was asked (`None`: it had no report).
    pub(crate) reported: Option<u64>,
    /// Whether the report chose the pages to hash (not a full version or an audit).
    pub(crate) used: bool,
    /// Pages in all regions.
    pub(crate) pages_total: u64,
}

/// A source of candidate dirty pages, one per engine.
pub(crate) trait Tracker: Send + std::fmt::Debug {
    /// The mode in force now: [`Tracking::Uffd`] or [`Tracking::Hash`].
    fn mode(&self) -> Tracking;
    /// Starts tracking a region at address `base` of `len` bytes (regions are numbered in
    /// registration order).
    fn add_region(&mut self, base: usize, len: usize) -> io::Result<()>;
    /// For each region, its candidate pages (ascending) since the last commit, or `None`
    /// when the tracker knows nothing and every page must be hashed.
    fn candidates(&mut self, page_size: usize) -> io::Result<Option<Vec<Vec<u64>>>>;
    /// Adds pages of region `region` to the candidates (writes the tracker cannot see).
    fn mark(&mut self, region: usize, pages: std::ops::RangeInclusive<u64>);
    /// Stops tracking region `i` (the later regions move down by one).
    fn remove_region(&mut self, i: usize) -> io::Result<()>;
    /// The checkpoint that used the last candidates committed.
    fn committed(&mut self, outcome: Outcome);
    /// A restore is about to overwrite every region.
    fn before_restore(&mut self) -> io::Result<()>;
    /// A restore rewrote every region: nothing is dirty now.
    fn after_restore(&mut self) -> io::Result<()>;
    /// Bytes of bookkeeping held.
    fn pending_bytes(&self) -> usize;
    /// Sets how many output slots one scan call gets (tests of long scans).
    #[cfg(feature = "fault-injection")]
    fn set_scan_vec_len(&mut self, _n: usize) {}
}

/// The tracker for a configured mode. `Tracking::Uffd` fails where the kernel lacks the
/// features; `Tracking::Auto` then falls back to hashing.
pub(crate) fn for_mode(mode: Tracking) -> Result<Box<dyn Tracker>, String> {
    match mode {
        Tracking::Hash => Ok(Box::new(HashAll)),
        Tracking::Uffd => {
            crate::sys::uffd::available()?;
            let t = uffd::UffdTracker::new().map_err(|e| format!("userfaultfd: {e}"))?;
            Ok(Box::new(t))
        }
        Tracking::Auto => Ok(
            match crate::sys::uffd::available()
                .ok()
                .and_then(|()| uffd::UffdTracker::new().ok())
            {
                Some(t) => Box::new(Auto {
                    inner: t,
                    paused_for: 0,
                }),
                None => Box::new(HashAll),
            },
        ),
    }
}

/// Hash mode: no report, every page is hashed.
#[derive(Debug)]
pub(crate) struct HashAll;

impl Tracker for HashAll {
    fn mode(&self) -> Tracking {
        Tracking::Hash
    }
    fn add_region(&mut self, _base: usize, _len: usize) -> io::Result<()> {
        Ok(())
    }
    fn candidates(&mut self, _page_size: usize) -> io::Result<Option<Vec<Vec<u64>>>> {
        Ok(None)
    }
    fn mark(&mut self, _region: usize, _pages: std::ops::RangeInclusive<u64>) {}
    fn remove_region(&mut self, _i: usize) -> io::Result<()> {
        Ok(())
    }
    fn committed(&mut self, _outcome: Outcome) {}
    fn before_restore(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn after_restore(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn pending_bytes(&self) -> usize {
        0
    }
}

/// Auto mode: userfaultfd, paused for [`AUTO_PAUSE`] checkpoints after a dense interval.
#[derive(Debug)]
pub(crate) struct Auto {
    inner: uffd::UffdTracker,
    /// Checkpoints left to hash before write-protection is tried again.
    paused_for: u32,
}

impl Tracker for Auto {
    fn mode(&self) -> Tracking {
        Tracking::Uffd
    }
    fn add_region(&mut self, base: usize, len: usize) -> io::Result<()> {
        self.inner.add_region(base, len)
    }
    fn candidates(&mut self, page_size: usize) -> io::Result<Option<Vec<Vec<u64>>>> {
        if self.paused_for > 0 {
            return Ok(None);
        }
        self.inner.candidates(page_size)
    }
    fn mark(&mut self, region: usize, pages: std::ops::RangeInclusive<u64>) {
        self.inner.mark(region, pages);
    }
    fn remove_region(&mut self, i: usize) -> io::Result<()> {
        self.inner.remove_region(i)
    }
    fn committed(&mut self, o: Outcome) {
        match o.reported {
            Some(written) => {
                self.inner.committed(o);
                // When most pages were written, faults cost more than hashing: lift
                // protection and hash for a while, then try write-protection again.
                if o.used && written * 2 > o.pages_total && self.inner.unprotect_all().is_ok() {
                    self.paused_for = AUTO_PAUSE;
                }
            }
            None if self.paused_for > 0 => {
                self.paused_for -= 1;
                if self.paused_for == 0 && self.inner.rearm_all().is_err() {
                    // Could not re-protect: stay in hash mode.
                    self.paused_for = u32::MAX;
                }
            }
            None => {}
        }
    }
    fn before_restore(&mut self) -> io::Result<()> {
        self.inner.before_restore()
    }
    fn after_restore(&mut self) -> io::Result<()> {
        self.paused_for = 0;
        self.inner.after_restore()
    }
    fn pending_bytes(&self) -> usize {
        self.inner.pending_bytes()
    }
    #[cfg(feature = "fault-injection")]
    fn set_scan_vec_len(&mut self, n: usize) {
        self.inner.set_scan_vec_len(n);
    }
}
