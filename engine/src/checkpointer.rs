//! The application-facing engine: register regions, checkpoint, restore.

use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::chain::{build_index, Parent, RegionPlan};
use crate::error::{Error, Result};
use crate::format::{self, FileEntry, Header, Identity, TrackingKind, FLAG_FULL};
use crate::hash::{self, RegionHashes};
use crate::read::Version;
use crate::region::{self, Memory, Region, RegionHandle};
use crate::store::{self, Store, WriterLock};
use crate::track::UffdTracker;
use crate::write::{PageIn, VersionWriter};

/// Auto mode: after a checkpoint in which most pages were written, this many checkpoints
/// hash instead of paying a write-protect fault per page.
const AUTO_PAUSE: u32 = 8;

/// Bytes of a region scanned before their dirty pages are handed to the writer.
const SPAN_BYTES: usize = 8 << 20;

/// How the engine finds the pages that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tracking {
    /// userfaultfd write-protection where the kernel supports it, hashing otherwise.
    #[default]
    Auto,
    /// Hash every page at every checkpoint.
    Hash,
    /// userfaultfd write-protection; fails where unavailable.
    Uffd,
}

impl std::str::FromStr for Tracking {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Tracking::Auto),
            "hash" => Ok(Tracking::Hash),
            "uffd" => Ok(Tracking::Uffd),
            _ => Err(Error::Config(format!(
                "unknown tracking mode {s:?} (expected auto, hash or uffd)"
            ))),
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Page size in bytes: a power of two from 4 KiB to 1 MiB. Default 4 KiB.
    pub page_size: u32,
    /// zstd level for stored pages; 0 stores pages uncompressed. Default 1.
    pub compression_level: i32,
    /// A batch of pages is compressed only if a sample of it shrinks by at least this
    /// fraction; otherwise it is stored raw, saving the CPU time of compressing data that
    /// barely compresses (dense floating-point fields often save under 10 %). 0.0 compresses
    /// whenever it saves anything. Default 0.125.
    pub min_compression_saving: f64,
    /// A checkpoint that would make the chain deeper than this is written as a full version.
    /// Default 16.
    pub max_chain_depth: u32,
    /// Dirty-page tracking mode. Default [`Tracking::Auto`].
    pub tracking: Tracking,
    /// In uffd mode, every `audit_every`-th checkpoint hashes every page and counts pages
    /// that changed without being reported (see [`CheckpointStats::audit_misses`]).
    /// 0 (the default) never audits.
    pub audit_every: u32,
    /// Retention for automatic compaction: keep this many newest versions of the lineage.
    pub keep: Option<usize>,
    /// With `keep` set, run a compaction in a background thread after each checkpoint (one
    /// at a time; a checkpoint never waits for it).
    pub auto_compact: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            page_size: 4096,
            compression_level: 1,
            min_compression_saving: 0.125,
            max_chain_depth: 16,
            tracking: Tracking::Auto,
            audit_every: 0,
            keep: None,
            auto_compact: false,
        }
    }
}

impl Config {
    fn check(&self) -> Result<()> {
        format::check_page_size(self.page_size).map_err(Error::Config)?;
        if self.keep == Some(0) {
            return Err(Error::Config("keep must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.min_compression_saving) {
            return Err(Error::Config(format!(
                "minimum compression saving {} is outside 0..1",
                self.min_compression_saving
            )));
        }
        if !(-7..=22).contains(&self.compression_level) {
            return Err(Error::Config(format!(
                "compression level {} is outside -7..=22",
                self.compression_level
            )));
        }
        Ok(())
    }
}

/// What one checkpoint did.
#[derive(Debug, Clone)]
pub struct CheckpointStats {
    /// The version number written.
    pub version: u64,
    /// The version it is a delta against (`None` for a full version).
    pub parent: Option<u64>,
    /// The committed file.
    pub path: PathBuf,
    /// The committed file's identity (what other files, or a global commit record, record).
    pub identity: Identity,
    /// Size of the committed file.
    pub file_bytes: u64,
    /// Pages in all regions.
    pub pages_total: u64,
    /// Pages stored in the new file.
    pub pages_stored: u64,
    /// Bytes hashed to find the dirty pages.
    pub hashed_bytes: u64,
    /// Depth of the new version (0: full).
    pub depth: u32,
    /// How dirty pages were found for this version.
    pub tracking: TrackingKind,
    /// For an audit checkpoint (uffd mode, every `audit_every`-th): pages that changed
    /// without being reported by the tracker. They were stored anyway.
    pub audit_misses: Option<u64>,
    /// Seconds spent finding dirty pages.
    pub scan_secs: f64,
    /// Seconds spent compressing, writing and committing (the rest of the checkpoint).
    pub write_secs: f64,
}

/// What one restore did.
#[derive(Debug, Clone)]
pub struct RestoreStats {
    /// The version restored.
    pub version: u64,
    /// Number of distinct files pages were read from.
    pub files_read: usize,
    /// Bytes restored.
    pub bytes: u64,
}

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
    hashes: Vec<RegionHashes>,
    parent: Option<Parent>,
    last_written: u64,
    tracker: Option<UffdTracker>,
    /// Checkpoints since the last audit (uffd mode).
    since_audit: u32,
    /// Auto mode: checkpoints left to hash before write-protection is tried again.
    paused_for: u32,
    /// The background compaction, if one was started.
    compactor: Option<std::thread::JoinHandle<Result<crate::compact::Report>>>,
    /// Outcome of the last finished background compaction.
    last_compaction: Option<Result<crate::compact::Report>>,
    _lock: WriterLock,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
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

/// Whether a parent picture is current: every file it references is present with the file
/// id recorded, and the parent itself (entry 0) has not been rewritten by a compaction. A
/// rewritten parent would still serve the old references, but then the files it no longer
/// needs could never be removed while this writer keeps referencing them.
fn picture_valid(dir: &Path, parent: &Parent) -> bool {
    parent.files.iter().enumerate().all(|(i, f)| {
        crate::read::read_header_footer(&dir.join(&f.name))
            .map(|(h, ft)| {
                h.file_id == f.identity.file_id
                    && (i > 0 || ft.index_checksum == f.identity.index_checksum)
            })
            .unwrap_or(false)
    })
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Checkpointer {
    /// Opens chain `name` in `dir` for writing, creating the directory if needed, and takes
    /// the chain's writer lock. Existing versions are left alone: the first checkpoint after
    /// `open` is a full version unless [`restore`](Self::restore) is called first.
    pub fn open(dir: impl AsRef<Path>, name: &str, config: Config) -> Result<Checkpointer> {
        config.check()?;
        let tracker = match config.tracking {
            Tracking::Hash => None,
            Tracking::Uffd => match crate::uffd::available()
                .and_then(|()| UffdTracker::new().map_err(|e| format!("userfaultfd: {e}")))
            {
                Ok(t) => Some(t),
                Err(why) => {
                    return Err(Error::Unsupported(format!(
                        "userfaultfd write-protect tracking is not available here ({why}); \
                         use tracking hash or auto"
                    )))
                }
            },
            Tracking::Auto => crate::uffd::available()
                .ok()
                .and_then(|()| UffdTracker::new().ok()),
        };
        let store = Store::new(dir.as_ref(), name)?;
        store.create_dir()?;
        let lock = store.lock_writer()?;
        Ok(Checkpointer {
            store,
            config,
            regions: Vec::new(),
            hashes: Vec::new(),
            parent: None,
            last_written: 0,
            tracker,
            since_audit: 0,
            paused_for: 0,
            compactor: None,
            last_compaction: None,
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
        if self.tracker.is_some() {
            Tracking::Uffd
        } else {
            Tracking::Hash
        }
    }

    /// Declares that bytes `range` of region `id` changed in a way the page tables do not
    /// show (an RDMA NIC writing into it, for example). The pages are hashed at the next
    /// checkpoint. Has no effect in hash mode, which hashes everything anyway.
    pub fn mark_dirty(&mut self, id: u64, range: std::ops::Range<usize>) -> Result<()> {
        let i = self
            .regions
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| Error::Region {
                id,
                why: "not registered".into(),
            })?;
        let len = self.regions[i].len();
        if range.start > range.end || range.end > len {
            return Err(Error::Region {
                id,
                why: format!("range {range:?} is outside the region's {len} bytes"),
            });
        }
        if let (Some(t), false) = (self.tracker.as_mut(), range.is_empty()) {
            let ps = self.config.page_size as usize;
            t.mark(i, (range.start / ps) as u64..=((range.end - 1) / ps) as u64);
        }
        Ok(())
    }

    /// Sets how many output slots one PAGEMAP_SCAN call gets (default 1024). Only useful to
    /// test that scans larger than one output vector are handled.
    #[doc(hidden)]
    pub fn set_scan_vec_len(&mut self, n: usize) {
        if let Some(t) = self.tracker.as_mut() {
            t.set_scan_vec_len(n);
        }
    }

    /// Bytes of bookkeeping the engine keeps between checkpoints: page and group hashes, the
    /// parent's file table and extents, pending tracker pages. (The registered memory itself
    /// is not counted.)
    pub fn metadata_bytes(&self) -> usize {
        let hashes: usize = self
            .hashes
            .iter()
            .map(|h| {
                h.pages.capacity() * 32
                    + h.groups.capacity() * std::mem::size_of::<Option<[u8; 32]>>()
            })
            .sum();
        let parent = self.parent.as_ref().map_or(0, |p| {
            p.files
                .iter()
                .map(|f| 64 + f.name.capacity())
                .sum::<usize>()
                + p.extents.iter().map(|e| e.capacity() * 16).sum::<usize>()
        });
        hashes + parent + self.tracker.as_ref().map_or(0, |t| t.pending_bytes())
    }

    /// The newest committed version in the store, if any.
    pub fn latest_version(&self) -> Result<Option<u64>> {
        self.store.latest()
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
        let len = mem.bytes().len();
        if let Some(t) = self.tracker.as_mut() {
            t.add_region(mem.addr(), len).map_err(|e| Error::Region {
                id,
                why: format!("cannot write-protect for dirty tracking: {e}"),
            })?;
        }
        self.regions.push(Region { id, mem });
        self.hashes
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
        Ok(RegionHandle::new(id, len))
    }

    /// Registers caller memory as region `id`.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes until this engine is dropped,
    /// and nothing else may access that memory while a method of this engine runs (a
    /// checkpoint reads it, a restore overwrites it).
    pub unsafe fn register_raw(&mut self, id: u64, ptr: *mut u8, len: usize) -> Result<()> {
        self.check_new_id(id, len)?;
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::Region {
            id,
            why: "null pointer".into(),
        })?;
        self.push_region(id, Memory::Raw { ptr, len })
    }

    /// Borrows an engine-allocated region.
    pub fn region<T: bytemuck::Pod>(&self, h: &RegionHandle<T>) -> Result<&[T]> {
        let i = region::find_typed(&self.regions, h)?;
        Ok(bytemuck::cast_slice(self.regions[i].mem.bytes()))
    }

    /// Borrows an engine-allocated region mutably.
    pub fn region_mut<T: bytemuck::Pod>(&mut self, h: &RegionHandle<T>) -> Result<&mut [T]> {
        let i = region::find_typed(&self.regions, h)?;
        Ok(bytemuck::cast_slice_mut(self.regions[i].mem.bytes_mut()))
    }

    /// Borrows several distinct engine-allocated regions mutably at once.
    pub fn regions_mut<T: bytemuck::Pod, const N: usize>(
        &mut self,
        handles: [RegionHandle<T>; N],
    ) -> Result<[&mut [T]; N]> {
        region::many_mut(&mut self.regions, handles)
    }

    /// The bytes of region `id` (engine-allocated or raw).
    pub fn region_bytes(&self, id: u64) -> Result<&[u8]> {
        self.regions
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.mem.bytes())
            .ok_or_else(|| Error::Region {
                id,
                why: "not registered".into(),
            })
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
        let floor = self.store.latest()?.unwrap_or(0).max(self.last_written);
        if version <= floor {
            return Err(Error::Config(format!(
                "cannot write version {version} of {:?}: version {floor} exists",
                self.store.name()
            )));
        }
        self.checkpoint_inner(Some(version))
    }

    fn checkpoint_inner(&mut self, want: Option<u64>) -> Result<CheckpointStats> {
        if self.regions.is_empty() {
            return Err(Error::Config("no regions registered".into()));
        }
        for _ in 0..4 {
            if let Some(stats) = self.checkpoint_once(want)? {
                self.maybe_compact();
                return Ok(stats);
            }
            self.refresh_parent();
        }
        Err(Error::io(
            self.store.dir(),
            "checkpoint",
            std::io::Error::other("the files of the chain kept changing under the writer"),
        ))
    }

    /// For each registered region (in engine order), its index in the version's region
    /// table. Every registered region must be in the version with the same size, and every
    /// region of the version must be registered.
    fn region_order(&self, v: &Version) -> Result<Vec<usize>> {
        let path = v.file().path();
        let mismatch = |why: String| Error::RegionMismatch {
            path: path.to_path_buf(),
            why,
        };
        let mut order = Vec::with_capacity(self.regions.len());
        for r in &self.regions {
            let i = v
                .regions()
                .iter()
                .position(|e| e.id == r.id)
                .ok_or_else(|| {
                    mismatch(format!(
                        "region {} is registered but not in the checkpoint",
                        r.id
                    ))
                })?;
            let stored = v.regions()[i].byte_len;
            if stored != r.len() as u64 {
                return Err(mismatch(format!(
                    "region {} is {stored} bytes in the checkpoint but {} bytes registered",
                    r.id,
                    r.len()
                )));
            }
            order.push(i);
        }
        if let Some(e) = v
            .regions()
            .iter()
            .find(|e| !self.regions.iter().any(|r| r.id == e.id))
        {
            return Err(mismatch(format!(
                "region {} is in the checkpoint but not registered",
                e.id
            )));
        }
        Ok(order)
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
            self.last_compaction =
                Some(h.join().unwrap_or_else(|_| {
                    Err(Error::Config("background compaction panicked".into()))
                }));
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
            self.last_compaction =
                Some(h.join().unwrap_or_else(|_| {
                    Err(Error::Config("background compaction panicked".into()))
                }));
        }
        self.last_compaction.as_ref()
    }

    /// Re-reads the parent version from disk after a compaction changed the files it
    /// references. If the parent is gone (or is another file now), the next version is full.
    fn refresh_parent(&mut self) {
        let Some(old) = self.parent.take() else {
            return;
        };
        self.parent = self.reload_parent(&old);
    }

    /// The current picture of `old`'s version on disk: `None` if its file is gone or is
    /// another file now (a compactor's revision keeps the file id).
    fn reload_parent(&self, old: &Parent) -> Option<Parent> {
        let path = self.store.path_of(old.parent.version);
        let v = Version::open(&path).ok()?;
        if v.file().header.file_id != old.parent.identity.file_id {
            return None;
        }
        self.parent_from_version(&v, old.parent.version).ok()
    }

    /// The parent picture of version `version` (already opened), with extents listed in the
    /// engine's region order.
    fn parent_from_version(&self, v: &Version, version: u64) -> Result<Parent> {
        let order = self.region_order(v)?;
        let file = v.file();
        let mut parent =
            Parent::from_index(&file.index, version, file.identity(), file.header.depth);
        parent.extents = order.iter().map(|&i| parent.extents[i].clone()).collect();
        Ok(parent)
    }

    /// One attempt at a checkpoint. `Ok(None)` means the parent picture was stale (a
    /// compaction changed the store); nothing was committed.
    fn checkpoint_once(&mut self, want: Option<u64>) -> Result<Option<CheckpointStats>> {
        let ps = self.config.page_size as usize;
        let t0 = Instant::now();
        // Ask the tracker first: pages written after this instant are re-protected already
        // and will be reported to the next checkpoint.
        let tracker_active = self.paused_for == 0;
        let candidates: Option<Vec<Vec<u64>>> =
            match self.tracker.as_mut().filter(|_| tracker_active) {
                Some(t) => Some(
                    (0..self.regions.len())
                        .map(|i| t.collect(i, ps))
                        .collect::<std::io::Result<_>>()
                        .map_err(|e| Error::io("/proc/self/pagemap", "PAGEMAP_SCAN", e))?,
                ),
                None => None,
            };
        let audit = candidates.is_some()
            && self.config.audit_every > 0
            && self.since_audit + 1 >= self.config.audit_every;
        let parent = self
            .parent
            .as_ref()
            .filter(|p| p.depth < self.config.max_chain_depth);
        // A full version reads and hashes every page it stores: it never records a remembered
        // hash for a page the tracker did not report (a write it could not see would leave a
        // full version whose bytes do not match its hashes).
        let full = parent.is_none();
        let use_candidates =
            candidates.is_some() && !audit && !full && self.hashes.iter().all(|h| h.pages_known);
        let tracking = if use_candidates {
            TrackingKind::Uffd
        } else {
            TrackingKind::Hash
        };
        let latest = self.store.latest()?.unwrap_or(0);
        let version = want.unwrap_or(latest.max(self.last_written) + 1);
        let depth = parent.map_or(0, |p| p.depth + 1);
        let file_id = format::new_file_id()?;
        let file_name = store::version_file_name(self.store.name(), version);
        let header = Header {
            file_id,
            version,
            parent: parent.map(|p| p.parent),
            page_size: self.config.page_size,
            depth,
            flags: if parent.is_none() { FLAG_FULL } else { 0 },
            tracking,
            compression_level: self.config.compression_level,
            created_unix_nanos: now_nanos(),
            name: self.store.name().to_string(),
        };
        let tmp = self.store.temp_path(version)?;
        let dst = self.store.path_of(version);
        let mut writer = VersionWriter::create(tmp.clone(), dst.clone(), header)?;

        // Scan a span of groups, hand its pages to the writer, move on: hashing the next span
        // overlaps with writing the previous one.
        let mut scans: Vec<hash::Scan> = Vec::with_capacity(self.regions.len());
        let mut stored: Vec<Vec<u64>> = Vec::with_capacity(self.regions.len());
        let mut scan_secs = 0.0;
        let mut pages_total = 0u64;
        let span_groups = (SPAN_BYTES / (hash::pages_per_group(ps) * ps)).max(1);
        let regions = &self.regions;
        let known_all = &self.hashes;
        let min_saving = self.config.min_compression_saving;
        let cands = candidates.as_deref();
        // uffd mode never consults group hashes (audits hash every page anyway).
        let want_groups = candidates.is_none();
        let records = writer.write_stream(self.config.compression_level, min_saving, |emit| {
            for (ri, (r, known)) in regions.iter().zip(known_all).enumerate() {
                let bytes = r.mem.bytes();
                pages_total += bytes.len().div_ceil(ps) as u64;
                let ppg = hash::pages_per_group(ps) as u64;
                let mut region_scan = hash::Scan::default();
                let mut region_stored = Vec::new();
                let ngroups = known.groups.len();
                let mut g = 0;
                while g < ngroups {
                    let end = (g + span_groups).min(ngroups);
                    let ts = Instant::now();
                    let mut scan = match cands {
                        Some(c) if use_candidates => {
                            let c = &c[ri];
                            let (lo, hi) = (g as u64 * ppg, end as u64 * ppg);
                            let a = c.partition_point(|&p| p < lo);
                            let b = c.partition_point(|&p| p < hi);
                            hash::scan_candidates(bytes, ps, known, &c[a..b])
                        }
                        _ => hash::scan_groups(bytes, ps, known, g..end, want_groups, full),
                    };
                    scan_secs += ts.elapsed().as_secs_f64();
                    // The stored bytes are the copies the hashes were computed from.
                    let pages: Vec<PageIn<'_>> = scan
                        .dirty
                        .iter()
                        .map(|d| {
                            region_stored.push(d.page);
                            PageIn {
                                bytes: &d.bytes,
                                hash: d.hash,
                                stored: None,
                            }
                        })
                        .collect();
                    if crate::fault::fail("write-pages") {
                        return Err(Error::io(
                            "checkpoint",
                            "write pages",
                            std::io::Error::other("injected failure (CKPT_FAULT_FAIL=write-pages)"),
                        ));
                    }
                    if !pages.is_empty() {
                        emit(&pages)?;
                    }
                    drop(pages);
                    scan.dirty.iter_mut().for_each(|d| d.bytes = Vec::new());
                    region_scan.extend(scan);
                    g = end;
                }
                scans.push(region_scan);
                stored.push(region_stored);
            }
            Ok(())
        })?;
        let pages_stored = records.len() as u64;
        let plans: Vec<RegionPlan<'_>> = self
            .regions
            .iter()
            .zip(&stored)
            .map(|(r, s)| RegionPlan {
                id: r.id,
                byte_len: r.len() as u64,
                stored: s,
            })
            .collect();
        let self_entry = FileEntry {
            identity: Identity {
                file_id,
                index_checksum: [0; 32],
            },
            version,
            name: file_name,
        };
        // Check, under the commit lock, that every file the new version will reference is still
        // the file we think it is. A compactor cannot remove one between this check and the
        // rename below, because it takes the same lock for every unlink.
        writer.sync_data()?;
        let commit_lock = self.store.lock_commit()?;
        let mut reloaded = None;
        if let Some(p) = parent {
            if !picture_valid(self.store.dir(), p) {
                // A compaction rewrote the parent (same pages, new layout) or removed files it
                // referenced. Our dirty pages are still right; only the references change.
                match self.reload_parent(p) {
                    Some(fresh) => reloaded = Some(fresh),
                    None => return Ok(None), // the parent itself is gone: retry as full
                }
            }
        }
        let parent = reloaded.as_ref().or(parent);
        let index = build_index(self_entry, parent, &plans, records, self.config.page_size);
        let identity = writer.commit(&index)?;
        drop(commit_lock);
        let write_secs = t0.elapsed().as_secs_f64() - scan_secs;

        // Committed: the new version is the parent of the next one.
        let mut audit_misses = None;
        if let (true, Some(c)) = (audit, candidates.as_ref()) {
            let misses: u64 = scans
                .iter()
                .zip(c)
                .map(|(s, c)| {
                    s.dirty
                        .iter()
                        .filter(|d| c.binary_search(&d.page).is_err())
                        .count() as u64
                })
                .sum();
            if misses > 0 {
                tracing::warn!(
                    "audit of {}: {misses} page(s) changed without being reported by \
                     userfaultfd (RDMA or other writes the page tables do not see?); they were \
                     stored. Use hash tracking or mark_dirty() for such regions.",
                    dst.display()
                );
            }
            audit_misses = Some(misses);
        }
        if let Some(t) = self.tracker.as_mut() {
            if let Some(c) = candidates.as_ref() {
                t.committed();
                self.since_audit = if audit { 0 } else { self.since_audit + 1 };
                // Auto mode: when most pages were written, faults cost more than hashing.
                // Lift protection and hash for a while, then try write-protection again.
                let written: u64 = c.iter().map(|c| c.len() as u64).sum();
                if self.config.tracking == Tracking::Auto
                    && use_candidates
                    && written * 2 > pages_total
                    && t.unprotect_all().is_ok()
                {
                    self.paused_for = AUTO_PAUSE;
                }
            } else if self.paused_for > 0 {
                self.paused_for -= 1;
                if self.paused_for == 0 && t.rearm_all().is_err() {
                    // Could not re-protect: stay in hash mode.
                    self.paused_for = u32::MAX;
                }
            }
        }
        for (h, s) in self.hashes.iter_mut().zip(&scans) {
            h.apply(s);
        }
        let parent_version = parent.map(|p| p.parent.version);
        self.parent = Some(Parent::from_index(&index, version, identity, depth));
        self.last_written = version;
        let file_bytes = std::fs::metadata(&dst)
            .map_err(|e| Error::io(&dst, "stat", e))?
            .len();
        Ok(Some(CheckpointStats {
            version,
            parent: parent_version,
            identity,
            path: dst,
            file_bytes,
            pages_total,
            pages_stored,
            hashed_bytes: scans.iter().map(|s| s.hashed_bytes).sum(),
            depth,
            tracking,
            audit_misses,
            scan_secs,
            write_secs,
        }))
    }

    /// Restores version `version` (the newest if `None`) into the registered regions. Every
    /// region of the checkpoint must be registered with the same size, and every registered
    /// region must be in the checkpoint. The next checkpoint is a delta against the restored
    /// version and gets a new number; versions above it are left alone.
    ///
    /// On error the contents of the regions are unspecified and the engine forgets its
    /// parent, so the next checkpoint is a full version.
    pub fn restore(&mut self, version: Option<u64>) -> Result<RestoreStats> {
        let version = match version {
            Some(v) => v,
            None => self.store.latest()?.ok_or_else(|| Error::NotFound {
                dir: self.store.dir().to_path_buf(),
                what: format!("no versions of chain {:?} to restore", self.store.name()),
            })?,
        };
        let path = self.store.path_of(version);
        if !path.exists() {
            return Err(Error::NotFound {
                dir: self.store.dir().to_path_buf(),
                what: format!("no version {version} of chain {:?}", self.store.name()),
            });
        }
        let v = Version::open(&path)?;
        let ps = v.page_size();
        let order = self.region_order(&v)?;
        self.parent = None;
        if let Some(t) = self.tracker.as_ref() {
            t.unprotect_all()
                .map_err(|e| Error::io(&path, "remove write-protection before restore", e))?;
        }
        let mut bytes = 0u64;
        let mut new_hashes = Vec::with_capacity(self.regions.len());
        for (r, &i) in self.regions.iter_mut().zip(&order) {
            let out = r.mem.bytes_mut();
            bytes += out.len() as u64;
            let pages = v.restore_region(i, out)?;
            let mut h = RegionHashes::unknown(out.len(), ps);
            h.pages = pages;
            h.pages_known = true;
            new_hashes.push(h);
        }
        // Only now: a failed restore leaves the old page size and hashes (which describe
        // contents, so they stay truthful whatever the restore overwrote).
        self.config.page_size = ps as u32;
        self.hashes = new_hashes;
        self.paused_for = 0;
        if let Some(t) = self.tracker.as_mut() {
            // The regions now hold exactly the restored version: nothing is dirty.
            t.rearm_all()
                .map_err(|e| Error::io(&path, "write-protect after restore", e))?;
        }
        self.parent = Some(self.parent_from_version(&v, version)?);
        Ok(RestoreStats {
            version,
            files_read: v.files().len(),
            bytes,
        })
    }
}
