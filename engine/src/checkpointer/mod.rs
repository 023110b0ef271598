//! The application-facing engine: register regions, checkpoint, restore.
//!
//! [`Checkpointer`] owns the regions, the tracker, what is remembered of the parent version
//! and the chain's writer lock. The steps of one checkpoint are in `checkpoint.rs` (plan,
//! scan and emit, commit, after-commit bookkeeping); restore is in `restore.rs`.

use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::config::{CheckpointStats, Config, Tracking};
use crate::error::{Error, Result};
use crate::hash::RegionHashes;
use crate::region::{self, Memory, Region, RegionHandle};
use crate::store::{self, Store, WriterLock};
use crate::track::Tracker;
use crate::write::index::Parent;

mod checkpoint;
mod flight;
mod restore;

pub use flight::AsyncCheckpoint;

/// An application's checkpoint engine for one chain (`<dir>/<name>.ckpt.<N>`).
///
/// ```no_run
/// use ckpt_engine::{Checkpointer, Config};
/// let mut ck = Checkpointer::open("/scratch/job", "sim", Config::default())?;
/// let grid = ck.alloc_region::<f64>(1, 1 << 20)?;
/// if ck.latest_version()?.is_some() {
///     ck.restore(None)?; // continue from the newest version
/// }
/// for step in 0..100 {
///     ck.region_mut(&grid)?.iter_mut().for_each(|x| *x += 1.0);
///     if step % 10 == 9 {
///         ck.checkpoint()?;
///     }
/// }
/// # Ok::<(), ckpt_engine::Error>(())
/// ```
pub struct Checkpointer {
    store: Store,
    config: Config,
    regions: Vec<Region>,
    /// What is remembered of each region's parent contents (shared with a flush in flight).
    hashes: Arc<Vec<RegionHashes>>,
    parent: Option<Arc<Parent>>,
    last_written: u64,
    tracker: Box<dyn Tracker>,
    /// Checkpoints since the last audit (uffd mode).
    since_audit: u32,
    /// The background compaction, if one was started.
    compactor: Option<std::thread::JoinHandle<Result<crate::compact::Report>>>,
    /// Outcome of the last finished background compaction.
    last_compaction: Option<Result<crate::compact::Report>>,
    /// This engine's identity, stamped on the region handles it issues.
    engine_id: u64,
    /// The asynchronous checkpoint in flight, if any.
    in_flight: Option<flight::InFlight>,
    /// The staging buffer of copy snapshots, kept for reuse.
    staging: Vec<u8>,
    /// What the last version's compression samples said.
    sampling: crate::write::file::Sampling,
    _lock: WriterLock,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // An asynchronous checkpoint in flight commits (or fails) first.
        self.settle_logged();
        // Let a running compaction finish (it is crash-safe, but finishing is tidier).
        if let Some(h) = self.compactor.take() {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("store", &self.store)
            .field("config", &self.config)
            .field("regions", &self.regions.len())
            .finish()
    }
}

impl Checkpointer {
    /// Opens chain `name` in `dir` for writing, creating the directory if needed, and takes
    /// the chain's writer lock. Existing versions are left alone: the first checkpoint after
    /// `open` is a full version unless [`restore`](Self::restore) is called first.
    pub fn open(dir: impl AsRef<Path>, name: &str, config: Config) -> Result<Checkpointer> {
        config.check()?;
        let tracker = crate::track::for_mode(config.tracking).map_err(|why| {
            Error::Unsupported(format!(
                "userfaultfd write-protect tracking is not available here ({why}); \
                 use tracking hash or auto"
            ))
        })?;
        let store = Store::with_naming(dir.as_ref(), name, config.naming)?;
        store.create_dir()?;
        store.warn_if_shared()?;
        let lock = store.lock_writer()?;
        // Holding the writer lock, a temporary file of this chain whose process is gone is a
        // crashed checkpoint's: remove it, so that crashes do not pile them up. (A live
        // process's may be a compactor's revision in progress.)
        for t in store
            .temp_files()?
            .into_iter()
            .filter(|t| !store::temp_owner_alive(t))
        {
            match crate::vfs::current().remove_file(&t) {
                Ok(()) => tracing::info!("removed {}, left by a crashed checkpoint", t.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&t, "remove a stale temporary file", e)),
            }
        }
        // Adopt the versions already here into the membership record (once per store).
        store.adopt_members()?;
        Ok(Checkpointer {
            store,
            config,
            regions: Vec::new(),
            hashes: Arc::new(Vec::new()),
            parent: None,
            last_written: 0,
            tracker,
            since_audit: 0,
            compactor: None,
            last_compaction: None,
            engine_id: region::new_engine_id(),
            in_flight: None,
            staging: Vec::new(),
            sampling: Default::default(),
            _lock: lock,
        })
    }

    /// The store this engine writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration in force (the page size follows a restored checkpoint's).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tracking mode in force: [`Tracking::Uffd`] or [`Tracking::Hash`] (never `Auto`).
    pub fn tracking(&self) -> Tracking {
        self.tracker.mode()
    }

    /// Declares that bytes `range` of region `id` changed in a way the page tables do not
    /// show (an RDMA NIC writing into it, for example). The pages are hashed at the next
    /// checkpoint. Has no effect in hash mode, which hashes everything anyway.
    pub fn mark_dirty(&mut self, id: u64, range: std::ops::Range<usize>) -> Result<()> {
        self.settle_logged();
        let i = self.slot_of(id)?;
        let len = self.regions[i].len();
        if range.start > range.end || range.end > len {
            return Err(Error::Region {
                id,
                why: format!("range {range:?} is outside the region's {len} bytes"),
            });
        }
        if !range.is_empty() {
            let ps = self.config.page_size as usize;
            self.tracker
                .mark(i, (range.start / ps) as u64..=((range.end - 1) / ps) as u64);
        }
        Ok(())
    }

    /// Sets how many output slots one PAGEMAP_SCAN call gets (default 1024). Only useful to
    /// test that scans larger than one output vector are handled.
    /// (Feature `fault-injection`.)
    #[cfg(feature = "fault-injection")]
    pub fn set_scan_vec_len(&mut self, n: usize) {
        self.tracker.set_scan_vec_len(n);
    }

    /// Bytes of bookkeeping the engine keeps between checkpoints: page hashes (16 bytes a page), the
    /// parent's file table and extents, pending tracker pages. (The registered memory itself
    /// is not counted.)
    pub fn metadata_bytes(&self) -> usize {
        let hashes: usize = self
            .hashes
            .iter()
            .map(|h| h.pages.capacity() * std::mem::size_of::<crate::hash::Fast>())
            .sum();
        let parent = self.parent.as_ref().map_or(0, |p| {
            p.files
                .iter()
                .map(|f| 64 + f.name.capacity())
                .sum::<usize>()
                + p.extents.iter().map(|e| e.heap_bytes()).sum::<usize>()
        });
        hashes + parent + self.tracker.pending_bytes()
    }

    /// The newest committed version in the store, if any.
    pub fn latest_version(&self) -> Result<Option<u64>> {
        self.store.latest()
    }

    /// The number every new version must exceed: the newest in the store, or the newest this
    /// engine wrote if a compaction has removed it since (numbers are never reused).
    pub fn version_floor(&self) -> Result<u64> {
        Ok(self.store.latest()?.unwrap_or(0).max(self.last_written))
    }

    fn check_new_id(&self, id: u64, len: usize) -> Result<()> {
        if self.regions.iter().any(|r| r.id == id) {
            return Err(Error::Region {
                id,
                why: "already registered".into(),
            });
        }
        if len == 0 {
            return Err(Error::Region {
                id,
                why: "empty regions cannot be registered".into(),
            });
        }
        Ok(())
    }

    fn push_region(&mut self, id: u64, mem: Memory) -> Result<()> {
        self.settle_logged();
        let len = mem.bytes().len();
        let forkable = match mem {
            Memory::Owned(_) => true,
            Memory::Raw { .. } => crate::sys::fork_snapshots(mem.addr(), len).unwrap_or(false),
        };
        self.tracker
            .add_region(mem.addr(), len)
            .map_err(|e| Error::Region {
                id,
                why: format!("cannot write-protect for dirty tracking: {e}"),
            })?;
        self.regions.push(Region { id, mem, forkable });
        Arc::make_mut(&mut self.hashes)
            .push(RegionHashes::unknown(len, self.config.page_size as usize));
        // A new region has no parent data: the next checkpoint is a full version.
        self.parent = None;
        Ok(())
    }

    /// Allocates a zeroed, page-aligned region of `len` elements of `T` under `id`.
    pub fn alloc_region<T: bytemuck::Pod>(
        &mut self,
        id: u64,
        len: usize,
    ) -> Result<RegionHandle<T>> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::Region {
                id,
                why: "size overflows".into(),
            })?;
        self.check_new_id(id, bytes)?;
        let mem = Memory::alloc(id, bytes)?;
        self.push_region(id, mem)?;
        Ok(RegionHandle::new(
            self.engine_id,
            self.regions.len() - 1,
            id,
            len,
        ))
    }

    /// Registers caller memory as region `id` (the C and Fortran APIs' `protect`).
    ///
    /// # Safety
    /// - `ptr` must be valid for reads and writes of `len` bytes from this call until this
    ///   engine is dropped: not freed, unmapped or remapped meanwhile.
    /// - While any method of this engine runs, nothing else may access those bytes: a
    ///   checkpoint reads them and a restore overwrites them. In particular no Rust reference
    ///   (`&[u8]`, `&mut [u8]`, …) into the memory may be alive across such a call, since the
    ///   engine's reads and writes would then alias it; take references between calls only.
    ///   Other threads, and devices, must not write it during a call either (if one does,
    ///   the version holds each page as it was at one instant, never a torn record).
    /// - With userfaultfd tracking the engine write-protects the page-aligned interior of the
    ///   range in asynchronous mode: writes never block or fault visibly, but the range must
    ///   not be registered with another userfaultfd.
    pub unsafe fn register_raw(&mut self, id: u64, ptr: *mut u8, len: usize) -> Result<()> {
        self.check_new_id(id, len)?;
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::Region {
            id,
            why: "null pointer".into(),
        })?;
        self.push_region(id, Memory::Raw { ptr, len })
    }

    /// Stops checkpointing region `id` (the C API's `unprotect`): the engine forgets it and,
    /// for caller memory, no longer touches it, so the caller may free it afterwards. The
    /// next checkpoint is a full version.
    pub fn unregister(&mut self, id: u64) -> Result<()> {
        self.settle_logged();
        let slot = self.slot_of(id)?;
        self.tracker
            .remove_region(slot)
            .map_err(|e| Error::Region {
                id,
                why: format!("cannot stop dirty tracking: {e}"),
            })?;
        self.regions.remove(slot);
        Arc::make_mut(&mut self.hashes).remove(slot);
        // (Handles of later regions now name the wrong slot; `find_typed` refuses them.)
        self.parent = None;
        Ok(())
    }

    /// The slot of region `id`.
    fn slot_of(&self, id: u64) -> Result<usize> {
        self.regions
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| Error::Region {
                id,
                why: "not registered".into(),
            })
    }

    /// A handle for the engine-allocated region `id` (for code that did not keep the one
    /// [`alloc_region`](Self::alloc_region) returned). Fails if no such region is registered,
    /// if it is caller memory, or if its length is not a whole number of `T`s.
    pub fn handle<T: bytemuck::Pod>(&self, id: u64) -> Result<RegionHandle<T>> {
        let slot = self.slot_of(id)?;
        let bytes = self.regions[slot].len();
        let size = std::mem::size_of::<T>().max(1);
        let h = RegionHandle::new(self.engine_id, slot, id, bytes / size);
        if bytes % size != 0 {
            return Err(Error::Region {
                id,
                why: format!("{bytes} bytes is not a whole number of {size}-byte elements"),
            });
        }
        region::find_typed(&self.regions, self.engine_id, &h)?;
        Ok(h)
    }

    /// Borrows an engine-allocated region.
    pub fn region<T: bytemuck::Pod>(&self, h: &RegionHandle<T>) -> Result<&[T]> {
        let i = region::find_typed(&self.regions, self.engine_id, h)?;
        Ok(bytemuck::cast_slice(self.regions[i].mem.bytes()))
    }

    /// Borrows an engine-allocated region mutably.
    pub fn region_mut<T: bytemuck::Pod>(&mut self, h: &RegionHandle<T>) -> Result<&mut [T]> {
        let i = region::find_typed(&self.regions, self.engine_id, h)?;
        Ok(bytemuck::cast_slice_mut(self.regions[i].mem.bytes_mut()))
    }

    /// Borrows several distinct engine-allocated regions mutably at once.
    pub fn regions_mut<T: bytemuck::Pod, const N: usize>(
        &mut self,
        handles: [RegionHandle<T>; N],
    ) -> Result<[&mut [T]; N]> {
        region::many_mut(&mut self.regions, self.engine_id, handles)
    }

    /// The bytes of region `id` (engine-allocated or raw).
    pub fn region_bytes(&self, id: u64) -> Result<&[u8]> {
        Ok(self.regions[self.slot_of(id)?].mem.bytes())
    }

    /// The ids and byte lengths of the registered regions, in registration order.
    pub fn regions(&self) -> Vec<(u64, usize)> {
        self.regions.iter().map(|r| (r.id, r.len())).collect()
    }

    /// Writes the next version: `<name>.ckpt.<N>` with N one more than any version in the
    /// store. It is a delta against the last version this engine wrote or restored, unless the
    /// chain would get deeper than `max_chain_depth`, in which case it is a full version.
    ///
    /// If a compaction running at the same time removed or rewrote files the new version
    /// would reference, the engine notices before committing (under the chain's commit lock),
    /// re-reads its parent from disk (or falls back to a full version if the parent itself
    /// was removed) and writes the version again.
    pub fn checkpoint(&mut self) -> Result<CheckpointStats> {
        self.checkpoint_inner(None)
    }

    /// Like [`checkpoint`](Self::checkpoint), but writes version number `version`, which
    /// must be larger than every version in the store. A coordinator (the MPI shim) uses it so
    /// that all ranks write the same number.
    pub fn checkpoint_numbered(&mut self, version: u64) -> Result<CheckpointStats> {
        self.check_above_floor(version)?;
        self.checkpoint_inner(Some(version))
    }

    /// After waiting for a checkpoint in flight: `version` must exceed every version in the
    /// store or written by this engine.
    fn check_above_floor(&mut self, version: u64) -> Result<()> {
        self.settle_logged();
        let floor = self.version_floor()?;
        if version <= floor {
            return Err(Error::VersionExists {
                path: self.store.path_of(version),
                newest: floor,
            });
        }
        Ok(())
    }

    /// After waiting for a checkpoint in flight: no file of `version` may exist.
    fn check_free(&mut self, version: u64) -> Result<()> {
        self.settle_logged();
        let path = self.store.path_of(version);
        if version == 0 || store::exists(&path)? {
            return Err(Error::VersionExists {
                path,
                newest: self.version_floor()?,
            });
        }
        Ok(())
    }

    /// Like [`checkpoint_numbered`](Self::checkpoint_numbered), but `version` only has to be
    /// free: no file of that number may exist, while newer versions may. For coordinators
    /// whose applications choose version numbers themselves (the VeloC interface). Numbers of
    /// versions a compaction removed must not be reused: that is the caller's duty here.
    pub fn checkpoint_at(&mut self, version: u64) -> Result<CheckpointStats> {
        self.check_free(version)?;
        self.checkpoint_inner(Some(version))
    }

    fn checkpoint_inner(&mut self, want: Option<u64>) -> Result<CheckpointStats> {
        self.settle_logged();
        if self.regions.is_empty() {
            return Err(Error::NoRegions {
                dir: self.store.dir().to_path_buf(),
            });
        }
        for _ in 0..4 {
            if let Some(stats) = self.checkpoint_once(want)? {
                self.maybe_compact();
                return Ok(stats);
            }
            self.refresh_parent();
        }
        Err(Error::Contended {
            dir: self.store.dir().to_path_buf(),
        })
    }

    /// Starts a background compaction if `auto_compact` is on and none is running.
    fn maybe_compact(&mut self) {
        let (Some(keep), true) = (self.config.keep, self.config.auto_compact) else {
            return;
        };
        if let Some(h) = self.compactor.take() {
            if !h.is_finished() {
                self.compactor = Some(h);
                return;
            }
            self.last_compaction = Some(join_compaction(h));
        }
        let store = self.store.clone();
        let opts = crate::compact::CompactOptions {
            keep,
            ..crate::compact::CompactOptions::default()
        };
        self.compactor = Some(std::thread::spawn(move || {
            crate::compact::compact(&store, &opts, &mut |_, _| {})
        }));
    }

    /// Waits for a running background compaction and returns the outcome of the last one.
    pub fn wait_compaction(&mut self) -> Option<&Result<crate::compact::Report>> {
        if let Some(h) = self.compactor.take() {
            self.last_compaction = Some(join_compaction(h));
        }
        self.last_compaction.as_ref()
    }
}

/// The outcome of a finished background compaction.
fn join_compaction(
    h: std::thread::JoinHandle<Result<crate::compact::Report>>,
) -> Result<crate::compact::Report> {
    h.join().unwrap_or(Err(Error::Panicked {
        what: "background compaction",
    }))
}
