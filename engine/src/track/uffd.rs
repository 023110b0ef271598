//! Dirty-page tracking with userfaultfd write-protection: which logical pages of each region
//! may have changed since the last committed checkpoint.
//!
//! The kernel reports written OS pages inside each region's page-aligned interior; logical
//! pages (the engine's page size, relative to the region's start) overlapping a written OS
//! page are candidates. Bytes outside the interior (the partial OS pages at the edges of
//! caller memory) cannot be protected, so the logical pages covering them are always
//! candidates. Candidates stay pending until a checkpoint commits, so a failed checkpoint
//! loses nothing: the kernel has already re-protected those pages.

use std::io;

use super::{Outcome, Tracker};
use crate::config::Tracking;
use crate::sys::uffd::{os_page_size, Uffd};

#[derive(Debug)]
struct Tracked {
    /// Region start address and length.
    base: usize,
    len: usize,
    /// Protected interior `[lo, hi)`, page-aligned; empty if the region spans no whole page.
    lo: usize,
    hi: usize,
    /// Logical pages to hash at the next checkpoint whatever the kernel says.
    pending: Vec<u64>,
}

/// A userfaultfd tracker over the registered regions, in registration order.
#[derive(Debug)]
pub(crate) struct UffdTracker {
    uffd: Uffd,
    regions: Vec<Tracked>,
}

impl UffdTracker {
    /// Opens the userfaultfd.
    pub(crate) fn new() -> io::Result<UffdTracker> {
        Ok(UffdTracker {
            uffd: Uffd::open()?,
            regions: Vec::new(),
        })
    }

    /// Asks the kernel which pages of region `i` were written (re-protecting them), adds them
    /// and the untracked edge pages to the pending set, and returns that set, ascending.
    fn collect(&mut self, i: usize, page_size: usize) -> io::Result<Vec<u64>> {
        let t = &mut self.regions[i];
        let npages = t.len.div_ceil(page_size) as u64;
        let to_page = |addr: usize| ((addr - t.base) / page_size) as u64;
        let mut runs = Vec::new();
        if t.hi > t.lo {
            self.uffd.scan_written(t.lo, t.hi - t.lo, &mut runs)?;
        }
        for (s, e) in runs {
            let (s, e) = (s.max(t.base), e.min(t.base + t.len));
            if e > s {
                t.pending.extend(to_page(s)..=to_page(e - 1));
            }
        }
        if t.hi <= t.lo {
            t.pending.extend(0..npages);
        } else {
            if t.lo > t.base {
                t.pending.extend(0..=to_page(t.lo - 1));
            }
            if t.hi < t.base + t.len {
                t.pending.extend(to_page(t.hi)..npages);
            }
        }
        t.pending.sort_unstable();
        t.pending.dedup();
        Ok(t.pending.clone())
    }

    /// Removes protection from all regions (before a restore overwrites them, so that it does
    /// not pay a fault per page; and when auto mode pauses).
    pub(crate) fn unprotect_all(&self) -> io::Result<()> {
        for t in &self.regions {
            if t.hi > t.lo {
                self.uffd.protect(t.lo, t.hi - t.lo, false)?;
            }
        }
        Ok(())
    }

    /// Protects all regions again and forgets pending pages (after a restore: the restored
    /// contents are exactly the restored version's, so nothing is dirty).
    pub(crate) fn rearm_all(&mut self) -> io::Result<()> {
        for t in &mut self.regions {
            if t.hi > t.lo {
                self.uffd.protect(t.lo, t.hi - t.lo, true)?;
            }
            t.pending.clear();
        }
        Ok(())
    }
}

impl Tracker for UffdTracker {
    fn mode(&self) -> Tracking {
        Tracking::Uffd
    }

    fn add_region(&mut self, base: usize, len: usize) -> io::Result<()> {
        let os = os_page_size();
        let lo = base.div_ceil(os) * os;
        let hi = ((base + len) / os * os).max(lo);
        if hi > lo {
            self.uffd.register(lo, hi - lo)?;
        }
        self.regions.push(Tracked {
            base,
            len,
            lo,
            hi,
            pending: Vec::new(),
        });
        Ok(())
    }

    fn candidates(&mut self, page_size: usize) -> io::Result<Option<Vec<Vec<u64>>>> {
        (0..self.regions.len())
            .map(|i| self.collect(i, page_size))
            .collect::<io::Result<Vec<_>>>()
            .map(Some)
    }

    fn mark(&mut self, region: usize, pages: std::ops::RangeInclusive<u64>) {
        self.regions[region].pending.extend(pages);
    }

    fn remove_region(&mut self, i: usize) -> io::Result<()> {
        let t = self.regions.remove(i);
        if t.hi > t.lo {
            self.uffd.unregister(t.lo, t.hi - t.lo)?;
        }
        Ok(())
    }

    /// Forgets all pending pages: the checkpoint that covered them has committed.
    fn committed(&mut self, _outcome: Outcome) {
        for t in &mut self.regions {
            t.pending.clear();
        }
    }

    fn before_restore(&mut self) -> io::Result<()> {
        self.unprotect_all()
    }

    fn after_restore(&mut self) -> io::Result<()> {
        self.rearm_all()
    }

    fn pending_bytes(&self) -> usize {
        self.regions.iter().map(|t| t.pending.capacity() * 8).sum()
    }

    #[cfg(feature = "fault-injection")]
    fn set_scan_vec_len(&mut self, n: usize) {
        self.uffd.vec_len = n.max(1);
    }
}
