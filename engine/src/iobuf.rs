//! I/O buffers: page-aligned anonymous memory mapped for each buffer, outside the allocator.
//!
//! Why not `Vec`: the write path's staging buffers are megabytes, filled on one thread and
//! freed on another. glibc's `malloc` serves them from the filling thread's arena and, once
//! one such block has been freed, raises its own thresholds for the whole process (blocks of
//! up to that size no longer get their own mapping; up to twice that size is kept at the top
//! of every thread's arena, where `malloc_trim` does not reach). The engine then held up to
//! twice a buffer's size per thread, resident, between checkpoints (measured on an 8 MiB
//! state: 2.6 to 9.0 MB beside it, varying with which thread had which buffer), and the
//! application's own large allocations changed behaviour because it linked ckpt. A mapping
//! of its own has neither effect.
//!
//! Staging buffers are also kept between versions ([`take_staging`], [`give_staging`]): a
//! page touched for the first time costs a fault and a zeroed page (1.6 us on this project's
//! 2-core VM, 4 ms for the 11 MB of a 1 % delta of 1 GiB), and a delta is ~10 ms. Of a kept
//! buffer, the part the last write filled is marked free for the kernel (`MADV_FREE`): it
//! takes those pages back, without writing them anywhere, only when memory runs short, and
//! until then the next version writes them without a fault. The rest is given back at once
//! (`MADV_DONTNEED`), so that what stays is the working set of the last write (a sparse
//! delta: about half a megabyte a buffer). Their bytes are unspecified when taken; every
//! user writes the bytes it reads.

use std::sync::Mutex;

use memmap2::MmapMut;

/// Bytes of one staging buffer.
pub(crate) const STAGING_BYTES: usize = 8 << 20;

/// Staging buffers kept between versions: as many as one version's write holds at once (the
/// one being filled, two queued to the writer thread, one being written).
const KEPT: usize = 4;

/// A page-aligned buffer of anonymous memory, mapped for it alone and unmapped when dropped.
#[derive(Debug)]
pub(crate) struct IoBuf {
    map: MmapMut,
    /// How far it was filled since it was last kept ([`IoBuf::filled_to`]).
    used: usize,
}

impl IoBuf {
    /// A zeroed buffer of `len` bytes (at least one page is mapped); the kernel provides each
    /// page when it is first touched.
    pub(crate) fn new(len: usize) -> std::io::Result<IoBuf> {
        Ok(IoBuf {
            map: MmapMut::map_anon(len.max(1))?,
            used: 0,
        })
    }

    /// Records that the buffer's first `n` bytes were filled: when the buffer is kept, those
    /// stay ready for the next version and the rest is given back to the kernel.
    pub(crate) fn filled_to(&mut self, n: usize) {
        self.used = self.used.max(n.min(self.map.len()));
    }

    /// The buffer's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The buffer's bytes, to fill.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// The buffer's length.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Buffers given back, for later writes: at most `max`, each of [`STAGING_BYTES`].
struct Kept {
    bufs: Mutex<Vec<IoBuf>>,
    max: usize,
}

impl Kept {
    /// A buffer kept earlier, else a new one. Its bytes are unspecified.
    fn take(&self) -> std::io::Result<IoBuf> {
        // `try_lock`, never `lock`: in a forked child (an asynchronous flush) the lock may
        // have been held by a parent's thread at the fork, and is then held for ever.
        if let Ok(mut kept) = self.bufs.try_lock() {
            if let Some(b) = kept.pop() {
                return Ok(b);
            }
        }
        IoBuf::new(STAGING_BYTES)
    }

    /// Keeps `b`, the pages it was filled to marked free for the kernel and the others given
    /// back; or unmaps it, if it is not a staging buffer or enough are kept.
    fn give(&self, b: IoBuf) {
        self.give_all(vec![b], false);
    }

    /// Keeps `bufs`, as [`give`](Self::give) does each; with `only`, they replace the buffers
    /// kept before (a write's buffers, given back when it ends: what an earlier, larger write
    /// filled does not stay beside them).
    fn give_all(&self, bufs: Vec<IoBuf>, only: bool) {
        let Ok(mut kept) = self.bufs.try_lock() else {
            return;
        };
        if only {
            kept.clear();
        }
        for b in bufs {
            if b.len() != STAGING_BYTES || kept.len() >= self.max {
                continue;
            }
            keep(&mut kept, b);
        }
    }
}

/// Adds `b` to `kept`, the pages it was filled to marked free for the kernel and the others
/// given back.
fn keep(kept: &mut Vec<IoBuf>, mut b: IoBuf) {
    // What the last write filled stays ready (its working set: a sparse delta fills half a
    // megabyte of each buffer, a full version all of it); what it did not is given back now,
    // so that a full version's buffers do not stay beside the state. Hints: a kernel without
    // MADV_FREE (before 4.5) leaves the pages resident.
    let used = std::mem::take(&mut b.used);
    let (ready, rest) = b.bytes_mut().split_at_mut(used);
    if let Err(e) = crate::sys::lazy_free(ready).and_then(|()| crate::sys::release(rest)) {
        tracing::debug!("MADV_FREE or MADV_DONTNEED on a staging buffer: {e}");
    }
    kept.push(b);
}

/// The process's kept staging buffers.
static KEPT_BUFFERS: Kept = Kept {
    bufs: Mutex::new(Vec::new()),
    max: KEPT,
};

/// A staging buffer of [`STAGING_BYTES`]: one kept from an earlier write, else a new one.
/// Its bytes are unspecified.
pub(crate) fn take_staging() -> std::io::Result<IoBuf> {
    KEPT_BUFFERS.take()
}

/// Keeps staging buffer `b` for a later write, the pages it was filled to
/// ([`IoBuf::filled_to`]) marked free for the kernel, the others given back; or unmaps it if
/// enough are kept.
pub(crate) fn give_staging(b: IoBuf) {
    KEPT_BUFFERS.give(b);
}

/// Keeps the staging buffers of a write that ended, as [`give_staging`] does each, instead
/// of those kept before: unmaps those.
pub(crate) fn give_write_buffers(bufs: Vec<IoBuf>) {
    KEPT_BUFFERS.give_all(bufs, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_kept_ones_are_reused_and_writable() {
        let mut a = IoBuf::new(10_000).unwrap();
        assert_eq!(a.bytes().as_ptr() as usize % crate::vfs::DIRECT_ALIGN, 0);
        assert!(a.len() >= 10_000);
        assert!(a.bytes().iter().all(|&b| b == 0));
        a.bytes_mut()[9_999] = 7;
        assert_eq!(a.bytes()[9_999], 7);

        let kept = Kept {
            bufs: Mutex::new(Vec::new()),
            max: 2,
        };
        let mut s = kept.take().unwrap();
        assert_eq!(s.len(), STAGING_BYTES);
        s.bytes_mut().fill(0x5a);
        s.filled_to(1 << 20);
        let at = s.bytes().as_ptr() as usize;
        kept.give(s);
        let mut s = kept.take().unwrap();
        assert_eq!(
            s.bytes().as_ptr() as usize,
            at,
            "the buffer given back is reused"
        );
        // Its filled part, marked free, holds the old bytes or zeros (if the kernel took the
        // pages); the rest was given back and reads as zeros; what is written now stays.
        assert!(s.bytes()[..1 << 20].iter().all(|&x| x == 0x5a || x == 0));
        assert!(s.bytes()[1 << 20..].iter().all(|&x| x == 0));
        s.bytes_mut()[..4096].fill(1);
        assert!(s.bytes()[..4096].iter().all(|&x| x == 1));
        // At most `max` are kept; a buffer of another size is not.
        kept.give(IoBuf::new(4096).unwrap());
        let three = [s, kept.take().unwrap(), kept.take().unwrap()];
        for b in three {
            kept.give(b);
        }
        assert_eq!(kept.bufs.lock().unwrap().len(), 2);
        // A write's buffers replace those kept before.
        let mut one = kept.take().unwrap();
        one.filled_to(4096);
        let at = one.bytes().as_ptr() as usize;
        kept.give_all(vec![one], true);
        let left = kept.bufs.lock().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].bytes().as_ptr() as usize, at);
        drop(left);
        // The process's own pool hands out staging buffers.
        let b = take_staging().unwrap();
        assert_eq!(b.len(), STAGING_BYTES);
        give_staging(b);
    }
}
