//! Memory regions registered by the application.
//!
//! This is one of the few modules with `unsafe`: it turns engine-owned anonymous mappings
//! and caller-provided pointers into byte slices.

use std::marker::PhantomData;
use std::ptr::NonNull;

use memmap2::MmapMut;

use crate::error::{Error, Result};

/// The memory behind a region.
pub(crate) enum Memory {
    /// A page-aligned anonymous mapping owned by the engine.
    Owned(MmapMut),
    /// Caller memory registered with [`crate::Checkpointer::register_raw`].
    Raw { ptr: NonNull<u8>, len: usize },
}

// SAFETY: `Owned` is a plain mapping. For `Raw`, the caller of `register_raw` promised that
// the memory stays valid and is not accessed by anyone else while the engine uses it, which is
// what moving the handle to another thread requires.
unsafe impl Send for Memory {}

impl Memory {
    /// Allocates `len` zeroed, page-aligned bytes.
    pub(crate) fn alloc(id: u64, len: usize) -> Result<Memory> {
        let map = MmapMut::map_anon(len).map_err(|e| Error::Region {
            id,
            why: format!("cannot map {len} bytes: {e}"),
        })?;
        Ok(Memory::Owned(map))
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Memory::Owned(m) => m,
            // SAFETY: `register_raw`'s contract: `ptr` is valid for reads of `len` bytes for as
            // long as the region is registered, and nobody writes it while the engine holds
            // `&self` (checkpoint and restore run with the engine borrowed).
            Memory::Raw { ptr, len } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }

    /// The bytes, mutably.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Memory::Owned(m) => m,
            // SAFETY: as in `bytes`, plus: `register_raw` requires the memory to be writable and
            // not aliased while the engine holds `&mut self`.
            Memory::Raw { ptr, len } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }

    /// Start address, for dirty tracking.
    pub(crate) fn addr(&self) -> usize {
        match self {
            Memory::Owned(m) => m.as_ptr() as usize,
            Memory::Raw { ptr, .. } => ptr.as_ptr() as usize,
        }
    }
}

/// A registered region.
pub(crate) struct Region {
    pub(crate) id: u64,
    pub(crate) mem: Memory,
    /// A forked child would see this memory as it was at the fork (private, copied to the
    /// child): asynchronous checkpoints may snapshot it by forking.
    pub(crate) forkable: bool,
}

impl Region {
    pub(crate) fn len(&self) -> usize {
        self.mem.bytes().len()
    }
}

/// A typed handle to an engine-allocated region, returned by
/// [`crate::Checkpointer::alloc_region`] (or [`crate::Checkpointer::handle`]). It is only a
/// name: the memory stays inside the engine and is borrowed through
/// [`crate::Checkpointer::region_mut`], so that no view can be alive while a checkpoint reads
/// the memory or a restore overwrites it.
///
/// A handle cannot be forged: only its engine issues it, it remembers which engine and
/// which slot, and another engine refuses it. Looking it up is O(1).
#[derive(Debug)]
pub struct RegionHandle<T> {
    /// The issuing engine's identity.
    pub(crate) engine: u64,
    /// The region's slot in the engine (regions are never removed).
    pub(crate) slot: usize,
    pub(crate) id: u64,
    pub(crate) len: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for RegionHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RegionHandle<T> {}

impl<T> RegionHandle<T> {
    pub(crate) fn new(engine: u64, slot: usize, id: u64, len: usize) -> Self {
        RegionHandle {
            engine,
            slot,
            id,
            len,
            _t: PhantomData,
        }
    }

    /// The region id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of `T` elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region holds no elements (never true: empty regions are rejected).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Borrows several distinct regions mutably at once, as typed slices.
pub(crate) fn many_mut<'a, T: bytemuck::Pod, const N: usize>(
    regions: &'a mut [Region],
    engine: u64,
    handles: [RegionHandle<T>; N],
) -> Result<[&'a mut [T]; N]> {
    let mut idx = [0usize; N];
    for (k, h) in handles.iter().enumerate() {
        if handles[..k].iter().any(|o| o.id == h.id) {
            return Err(Error::Region {
                id: h.id,
                why: "requested twice in one regions_mut call".into(),
            });
        }
        idx[k] = find_typed::<T>(regions, engine, h)?;
    }
    let base = regions.as_mut_ptr();
    Ok(idx.map(|i| {
        // SAFETY: the indices are distinct (ids are unique per engine and were checked
        // pairwise above) and in bounds (returned by `find_typed`), so the `&mut Region`s do
        // not alias, and each lives as long as the borrow of `regions`.
        let r: &'a mut Region = unsafe { &mut *base.add(i) };
        bytemuck::cast_slice_mut(r.mem.bytes_mut())
    }))
}

/// The slot of the region a typed handle names, in O(1): the handle must come from this
/// engine (`engine`), and its slot must hold that region with that size.
pub(crate) fn find_typed<T>(regions: &[Region], engine: u64, h: &RegionHandle<T>) -> Result<usize> {
    let r = regions
        .get(h.slot)
        .filter(|r| h.engine == engine && r.id == h.id)
        .ok_or_else(|| Error::Region {
            id: h.id,
            why: "the handle was issued by another engine".into(),
        })?;
    let want = h.len.checked_mul(std::mem::size_of::<T>());
    if want != Some(r.len()) || !matches!(r.mem, Memory::Owned(_)) {
        return Err(Error::Region {
            id: h.id,
            why: "handle does not match the region registered under this id".into(),
        });
    }
    Ok(h.slot)
}

/// A process-unique identity for each engine, so that handles cannot cross engines.
pub(crate) fn new_engine_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
