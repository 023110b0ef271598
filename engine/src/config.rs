//! Engine settings ([`Config`], [`Tracking`]) and what a checkpoint or restore reports
//! ([`CheckpointStats`], [`RestoreStats`]). No I/O here.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::format::{self, Identity, TrackingKind};

/// How the engine finds the pages that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Tracking {
    /// userfaultfd write-protection where the kernel supports it, hashing otherwise.
    #[default]
    Auto,
    /// Hash every page at every checkpoint.
    Hash,
    /// userfaultfd write-protection; fails where unavailable.
    Uffd,
}

impl Tracking {
    /// The name used on command lines and in reports: `auto`, `hash` or `uffd`.
    pub fn name(self) -> &'static str {
        match self {
            Tracking::Auto => "auto",
            Tracking::Hash => "hash",
            Tracking::Uffd => "uffd",
        }
    }
}

impl std::fmt::Display for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

/// How an asynchronous checkpoint ([`Checkpointer::checkpoint_async`]) takes its snapshot,
/// so that the application may write its regions while the version is written.
///
/// [`Checkpointer::checkpoint_async`]: crate::Checkpointer::checkpoint_async
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Snapshot {
    /// [`Copy`](Snapshot::Copy) when the pages to hash fit in
    /// [`Config::async_copy_limit`] (a sparse userfaultfd delta), else
    /// [`Fork`](Snapshot::Fork) (a full version, hash mode, a dense interval), else a
    /// blocking checkpoint. The default.
    #[default]
    Auto,
    /// Copy the candidate pages into a reused staging buffer, then hash, compress and write
    /// them in a background thread. The application is stopped for one copy of those pages.
    /// Needs a report from userfaultfd; a checkpoint whose pages exceed
    /// [`Config::async_copy_limit`] blocks instead.
    Copy,
    /// `fork()`: a child process, which shares the memory copy-on-write, writes and commits
    /// the version; a page costs a copy only when the application writes it during the
    /// flush. The child never calls MPI or returns into the application. Regions mapped
    /// shared or excluded from fork (`MADV_DONTFORK`, `MADV_WIPEONFORK`) cannot be taken this
    /// way; such a checkpoint blocks instead.
    Fork,
}

impl Snapshot {
    /// The name used on command lines and in reports: `auto`, `copy` or `fork`.
    pub fn name(self) -> &'static str {
        match self {
            Snapshot::Auto => "auto",
            Snapshot::Copy => "copy",
            Snapshot::Fork => "fork",
        }
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Snapshot {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Snapshot::Auto),
            "copy" => Ok(Snapshot::Copy),
            "fork" => Ok(Snapshot::Fork),
            _ => Err(Error::Config(format!(
                "unknown snapshot mechanism {s:?} (expected auto, copy or fork)"
            ))),
        }
    }
}

/// Engine settings: start from [`Config::default`] and change what you need, with the
/// `with_*` methods or by assigning the public fields.
///
/// ```
/// use ckpt_engine::{Config, Tracking};
/// let c = Config::default().with_tracking(Tracking::Hash).with_max_chain_depth(8);
/// assert_eq!(c.max_chain_depth, 8);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// How version files are named: `<name>.ckpt.<N>` (the default) or VeloC's
    /// `<name>-<V>.dat` (the VeloC interface names its chains `<name>-<rank>`).
    pub naming: crate::store::Naming,
    /// How asynchronous checkpoints take their snapshot. Default [`Snapshot::Auto`].
    pub snapshot: Snapshot,
    /// The most bytes of pages an asynchronous checkpoint copies into its staging buffer
    /// ([`Snapshot::Copy`]); the buffer is kept and reused. Default 64 MiB.
    pub async_copy_limit: u64,
    /// A forked flush ([`Snapshot::Fork`]) whose threads have all been waiting for locks
    /// (asleep in `futex`) this long, using no CPU time and doing no I/O, is taken as hung (a
    /// lock another thread held at the fork, say): it is killed and its checkpoint fails.
    /// Nothing is committed, and the pages stay pending for the next checkpoint, so a rank
    /// never waits for ever on its own flush. A flush that runs, waits for a CPU, or waits in
    /// any other system call (a disk, a network file system's server) is never killed,
    /// however slow. `None` never kills. At least one second. Default 120 s.
    pub flush_stall_limit: Option<std::time::Duration>,
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
            naming: crate::store::Naming::Ckpt,
            snapshot: Snapshot::Auto,
            async_copy_limit: 64 << 20,
            flush_stall_limit: Some(std::time::Duration::from_secs(120)),
        }
    }
}

impl Config {
    /// Sets [`page_size`](Self::page_size).
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }
    /// Sets [`compression_level`](Self::compression_level).
    pub fn with_compression_level(mut self, level: i32) -> Self {
        self.compression_level = level;
        self
    }
    /// Sets [`min_compression_saving`](Self::min_compression_saving).
    pub fn with_min_compression_saving(mut self, fraction: f64) -> Self {
        self.min_compression_saving = fraction;
        self
    }
    /// Sets [`max_chain_depth`](Self::max_chain_depth).
    pub fn with_max_chain_depth(mut self, depth: u32) -> Self {
        self.max_chain_depth = depth;
        self
    }
    /// Sets [`tracking`](Self::tracking).
    pub fn with_tracking(mut self, tracking: Tracking) -> Self {
        self.tracking = tracking;
        self
    }
    /// Sets [`audit_every`](Self::audit_every).
    pub fn with_audit_every(mut self, n: u32) -> Self {
        self.audit_every = n;
        self
    }
    /// Keeps the newest `keep` versions, compacting in the background after each
    /// checkpoint (sets [`keep`](Self::keep) and [`auto_compact`](Self::auto_compact)).
    pub fn with_retention(mut self, keep: usize) -> Self {
        self.keep = Some(keep);
        self.auto_compact = true;
        self
    }

    /// Names version files the `naming` way (sets [`naming`](Self::naming)).
    pub fn with_naming(mut self, naming: crate::store::Naming) -> Self {
        self.naming = naming;
        self
    }

    /// Sets [`snapshot`](Self::snapshot).
    pub fn with_snapshot(mut self, snapshot: Snapshot) -> Self {
        self.snapshot = snapshot;
        self
    }

    /// Sets [`async_copy_limit`](Self::async_copy_limit).
    pub fn with_async_copy_limit(mut self, bytes: u64) -> Self {
        self.async_copy_limit = bytes;
        self
    }

    /// Sets [`flush_stall_limit`](Self::flush_stall_limit).
    pub fn with_flush_stall_limit(mut self, limit: Option<std::time::Duration>) -> Self {
        self.flush_stall_limit = limit;
        self
    }

    /// Checks every value.
    pub(crate) fn check(&self) -> Result<()> {
        format::check_page_size(self.page_size).map_err(Error::Config)?;
        if self
            .flush_stall_limit
            .is_some_and(|l| l < std::time::Duration::from_secs(1))
        {
            return Err(Error::Config(format!(
                "flush stall limit {:?} is under one second: a working flush could be taken \
                 as hung between two ticks of its CPU time",
                self.flush_stall_limit.unwrap_or_default()
            )));
        }
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
#[non_exhaustive]
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
    /// Seconds the caller was stopped: the whole checkpoint for a blocking one; taking the
    /// snapshot for an asynchronous one.
    pub blocked_secs: f64,
    /// How an asynchronous checkpoint took its snapshot (`None`: it blocked).
    pub snapshot: Option<Snapshot>,
}

/// What one restore did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestoreStats {
    /// The version restored.
    pub version: u64,
    /// Number of distinct files pages were read from.
    pub files_read: usize,
    /// Bytes restored.
    pub bytes: u64,
    /// Of those, bytes read with direct I/O straight into the regions: raw pages stored back
    /// to back (format version 2), read without a buffer or a copy.
    pub bytes_in_place: u64,
}
