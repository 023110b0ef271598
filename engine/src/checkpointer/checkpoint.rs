//! The steps of one checkpoint: take (the tracker's report, the version number), plan, scan
//! and emit, commit, apply (after-commit bookkeeping).
//!
//! Taking and applying need the engine; the steps between need only a [`Writing`], which owns
//! what they read, so that they run the same way inline (a blocking checkpoint), on a
//! background thread over staged page copies, or in a forked child (asynchronous checkpoints,
//! `flight.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::Checkpointer;
use crate::config::{CheckpointStats, Config};
use crate::error::{Error, Result};
use crate::format::{self, FileEntry, Header, Identity, Index, TrackingKind, FLAG_FULL};
use crate::hash::{Fast, RegionHashes};
use crate::read::Version;
use crate::store::Store;
use crate::track::Outcome;
use crate::write::file::{Sampling, VersionWriter};
use crate::write::index::{build_index, Parent, RegionPlan};
use crate::write::pipeline::{self, ScanJob, Scanned, Source};

/// Versions with at least this much data flush it before taking the commit lock.
const EARLY_SYNC_BYTES: u64 = 32 << 20;

/// Everything the writing half of a checkpoint (plan, scan, commit) reads, owned.
pub(super) struct Writing {
    pub(super) store: Store,
    pub(super) config: Config,
    /// Registered regions' ids and byte lengths, in engine order.
    pub(super) regions: Vec<(u64, usize)>,
    /// What is remembered of the parent's pages.
    pub(super) hashes: Arc<Vec<RegionHashes>>,
    /// The parent picture in force (`None`: the version is full).
    pub(super) parent: Option<Arc<Parent>>,
    /// The number to write.
    pub(super) version: u64,
    /// The tracker's candidates, if it reported (even when they do not choose the pages).
    pub(super) candidates: Option<Vec<Vec<u64>>>,
    /// Every page is hashed to count pages the tracker missed.
    pub(super) audit: bool,
    /// When the checkpoint was asked for.
    pub(super) started: Instant,
    /// What the last version's compression samples said.
    pub(super) sampling: Sampling,
}

/// What the plan step decided.
struct Plan {
    /// Whether the candidates choose the pages to hash.
    use_candidates: bool,
    /// No parent: every page is read, hashed and stored.
    full: bool,
    depth: u32,
    file_id: format::FileId,
    dst: PathBuf,
}

/// A committed version, as the commit step leaves it.
struct Committed {
    index: Index,
    identity: Identity,
    /// The version its references came from.
    parent_version: Option<u64>,
}

/// A committed version and what the engine must remember of it.
#[derive(Debug)]
pub(super) struct Landed {
    pub(super) stats: CheckpointStats,
    /// What to tell the tracker.
    pub(super) outcome: Outcome,
    /// The checkpoint was an audit.
    pub(super) audit: bool,
    /// Per region: the new fast hashes of the pages stored.
    pub(super) updates: Vec<Vec<(u64, Fast)>>,
    /// The new parent picture (`None`: read it from the committed file).
    pub(super) parent: Option<Parent>,
    /// What this version's compression samples said, for the next one.
    pub(super) sampling: Sampling,
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

/// The current picture of `old`'s version on disk: `None` if its file is gone or is another
/// file now (a compactor's revision keeps the file id).
fn reload_parent(store: &Store, regions: &[(u64, usize)], old: &Parent) -> Option<Parent> {
    let path = store.path_of(old.parent.version);
    let v = Version::open(&path).ok()?;
    if v.file().header.file_id != old.parent.identity.file_id {
        return None;
    }
    super::restore::parent_from_version(&v, old.parent.version, regions).ok()
}

impl Writing {
    /// The same checkpoint with no report from the tracker (a retry in a forked child, which
    /// has no tracker), against `parent`.
    pub(super) fn without_candidates(self, parent: Option<Arc<Parent>>) -> Writing {
        Writing {
            candidates: None,
            audit: false,
            parent,
            ..self
        }
    }

    /// Step 1: choose the kind of version and how pages are found, and create the temporary
    /// file with its header.
    fn plan(&self) -> Result<(Plan, VersionWriter)> {
        let parent = self.parent.as_deref();
        // A full version reads and hashes every page it stores: it never records a
        // remembered hash for a page the tracker did not report.
        let full = parent.is_none();
        let use_candidates = self.candidates.is_some()
            && !self.audit
            && !full
            && self.hashes.iter().all(|h| h.pages_known);
        let depth = parent.map_or(0, |p| p.depth + 1);
        let file_id =
            format::new_file_id().map_err(|e| Error::io(self.store.dir(), "draw a file id", e))?;
        let header = Header {
            format_version: format::FORMAT_VERSION,
            file_id,
            version: self.version,
            parent: parent.map(|p| p.parent),
            page_size: self.config.page_size,
            depth,
            flags: if full { FLAG_FULL } else { 0 },
            tracking: if use_candidates {
                TrackingKind::Uffd
            } else {
                TrackingKind::Hash
            },
            compression_level: self.config.compression_level,
            created_unix_nanos: format::unix_nanos(),
            name: self.store.name().to_string(),
        };
        let dst = self.store.path_of(self.version);
        let writer =
            VersionWriter::create(self.store.temp_path(self.version)?, dst.clone(), header)?;
        let plan = Plan {
            use_candidates,
            full,
            depth,
            file_id,
            dst,
        };
        Ok((plan, writer))
    }

    /// Step 2: scan the regions and stream the dirty pages into the file.
    fn scan(
        &self,
        plan: &Plan,
        writer: &mut VersionWriter,
        sources: &[Source<'_>],
    ) -> Result<Scanned> {
        let job = ScanJob {
            sources,
            known: &self.hashes,
            candidates: self.candidates.as_deref().filter(|_| plan.use_candidates),
            full: plan.full,
            page_size: self.config.page_size as usize,
            level: self.config.compression_level,
            min_saving: self.config.min_compression_saving,
            sampling: self.sampling,
        };
        pipeline::scan_and_emit(writer, &job)
    }

    /// Step 3: under the commit lock, check that every file the new version will reference
    /// is still the file we think it is, build the index and commit. A compactor cannot
    /// remove a file between the check and the rename: it takes the same lock for every
    /// unlink. `Ok(None)`: the parent itself is gone; nothing was committed.
    fn commit(
        &self,
        plan: &Plan,
        writer: VersionWriter,
        scanned: &mut Scanned,
    ) -> Result<Option<Committed>> {
        let plans: Vec<RegionPlan<'_>> = self
            .regions
            .iter()
            .zip(&scanned.stored)
            .map(|(&(id, len), s)| RegionPlan {
                id,
                byte_len: len as u64,
                stored: s,
            })
            .collect();
        let self_entry = FileEntry {
            identity: Identity {
                file_id: plan.file_id,
                index_checksum: [0; 32],
            },
            version: self.version,
            name: self.store.file_name(self.version),
        };
        let mut writer = writer;
        // A large version's data is flushed before the commit lock, so that the fsync under
        // the lock (which a compactor may be waiting for) has only the index left. A small
        // delta's is not: one flush of data and index together costs one disk round-trip
        // instead of two, and the lock is held for about the same time.
        if writer.data_bytes() >= EARLY_SYNC_BYTES {
            writer.sync_data()?;
        }
        let _commit_lock = self.store.lock_commit()?;
        let mut reloaded = None;
        if let Some(p) = self.parent.as_deref() {
            if !picture_valid(self.store.dir(), p) {
                // A compaction rewrote the parent (same pages, new layout) or removed files
                // it referenced. Our dirty pages are still right; only the references change.
                match reload_parent(&self.store, &self.regions, p) {
                    Some(fresh) => reloaded = Some(fresh),
                    None => return Ok(None), // the parent itself is gone: retry as full
                }
            }
        }
        let parent = reloaded.as_ref().or(self.parent.as_deref());
        let records = std::mem::take(&mut scanned.records);
        let index = build_index(self_entry, parent, &plans, records, self.config.page_size);
        if plan.full {
            // A full version starts a lineage: record it as this store's before it exists.
            self.store.record_roots(&[plan.file_id])?;
        }
        let identity = writer.commit(&index)?;
        Ok(Some(Committed {
            index,
            identity,
            parent_version: parent.map(|p| p.parent.version),
        }))
    }

    /// Steps 1 to 3 over `sources` (the regions' memory, or copies of their candidate
    /// pages), then what the engine must remember. `Ok(None)`: the parent was removed by a
    /// compaction meanwhile; nothing was committed.
    pub(super) fn run(&self, sources: &[Source<'_>]) -> Result<Option<Landed>> {
        let (plan, mut writer) = self.plan()?;
        let mut scanned = self.scan(&plan, &mut writer, sources)?;
        let Some(committed) = self.commit(&plan, writer, &mut scanned)? else {
            return Ok(None);
        };
        self.landed(plan, scanned, committed).map(Some)
    }

    /// Step 4, the part that needs no engine: audit findings, the new parent picture and
    /// the statistics.
    fn landed(&self, plan: Plan, scanned: Scanned, committed: Committed) -> Result<Landed> {
        let Committed {
            index,
            identity,
            parent_version,
        } = committed;
        let write_secs = self.started.elapsed().as_secs_f64() - scanned.scan_secs;
        let reported: Option<u64> = self
            .candidates
            .as_ref()
            .map(|c| c.iter().map(|c| c.len() as u64).sum());
        let mut audit_misses = None;
        if let (true, Some(c)) = (self.audit, self.candidates.as_ref()) {
            let misses: u64 = scanned
                .stored
                .iter()
                .zip(c)
                .map(|(s, c)| s.iter().filter(|p| c.binary_search(p).is_err()).count() as u64)
                .sum();
            if misses > 0 {
                tracing::warn!(
                    "audit of {}: {misses} page(s) changed without being reported by \
                     userfaultfd (RDMA or other writes the page tables do not see?); they were \
                     stored. Use hash tracking or mark_dirty() for such regions.",
                    plan.dst.display()
                );
            }
            audit_misses = Some(misses);
        }
        let file_bytes = std::fs::metadata(&plan.dst)
            .map_err(|e| Error::io(&plan.dst, "stat", e))?
            .len();
        let pages_stored = scanned.stored.iter().map(|s| s.len() as u64).sum();
        let updates = scanned.updates;
        let elapsed = self.started.elapsed().as_secs_f64();
        Ok(Landed {
            stats: CheckpointStats {
                version: self.version,
                parent: parent_version,
                identity,
                path: plan.dst,
                file_bytes,
                pages_total: scanned.pages_total,
                pages_stored,
                hashed_bytes: scanned.hashed_bytes,
                depth: plan.depth,
                tracking: if plan.use_candidates {
                    TrackingKind::Uffd
                } else {
                    TrackingKind::Hash
                },
                audit_misses,
                scan_secs: scanned.scan_secs,
                write_secs,
                blocked_secs: elapsed,
                snapshot: None,
            },
            outcome: Outcome {
                reported,
                used: plan.use_candidates,
                pages_total: scanned.pages_total,
            },
            audit: self.audit,
            updates,
            sampling: scanned.sampling,
            parent: Some(Parent::from_index(
                &index,
                self.version,
                identity,
                plan.depth,
            )),
        })
    }
}

impl Checkpointer {
    /// The parent picture in force: `None` when the next version must be full.
    pub(super) fn usable_parent(&self) -> Option<&Arc<Parent>> {
        self.parent
            .as_ref()
            .filter(|p| p.depth < self.config.max_chain_depth)
    }

    /// The number the next version gets: `want`, or one more than any version in the store
    /// or written by this engine.
    pub(super) fn next_version(&self, want: Option<u64>) -> Result<u64> {
        match want {
            Some(v) => Ok(v),
            None => Ok(self.version_floor()? + 1),
        }
    }

    /// The part of step 1 that needs the engine: ask the tracker (pages written after this
    /// instant are re-protected already and will be reported to the next checkpoint), decide
    /// whether this is an audit, and number the version.
    pub(super) fn take(&mut self, want: Option<u64>, started: Instant) -> Result<Writing> {
        let candidates = self
            .tracker
            .candidates(self.config.page_size as usize)
            .map_err(|e| Error::io("/proc/self/pagemap", "PAGEMAP_SCAN", e))?;
        let audit = candidates.is_some()
            && self.config.audit_every > 0
            && self.since_audit + 1 >= self.config.audit_every;
        let version = self.next_version(want)?;
        Ok(self.writing(version, candidates, audit, started))
    }

    /// A `Writing` of `version` from the engine's current state.
    pub(super) fn writing(
        &self,
        version: u64,
        candidates: Option<Vec<Vec<u64>>>,
        audit: bool,
        started: Instant,
    ) -> Writing {
        Writing {
            store: self.store.clone(),
            config: self.config.clone(),
            regions: self.regions(),
            hashes: Arc::clone(&self.hashes),
            parent: self.usable_parent().cloned(),
            version,
            candidates,
            audit,
            started,
            sampling: self.sampling,
        }
    }

    /// The registered regions' memory, as scan sources.
    pub(super) fn live_sources(&self) -> Vec<Source<'_>> {
        self.regions
            .iter()
            .map(|r| Source::Live(r.mem.bytes()))
            .collect()
    }

    /// Step 4, the engine's part: tell the tracker, remember the new hashes and parent.
    pub(super) fn apply(&mut self, landed: Landed) {
        if landed.outcome.reported.is_some() {
            self.since_audit = if landed.audit {
                0
            } else {
                self.since_audit + 1
            };
        }
        self.tracker.committed(landed.outcome);
        let hashes = Arc::make_mut(&mut self.hashes);
        for (h, u) in hashes.iter_mut().zip(&landed.updates) {
            for &(p, f) in u {
                if let Some(slot) = h.pages.get_mut(p as usize) {
                    *slot = f;
                }
            }
            h.pages_known = true;
        }
        self.parent = landed.parent.map(Arc::new);
        self.last_written = self.last_written.max(landed.stats.version);
        self.sampling = landed.sampling;
    }

    /// One blocking attempt at a checkpoint. `Ok(None)` means the parent picture was stale
    /// (a compaction changed the store); nothing was committed.
    pub(super) fn checkpoint_once(&mut self, want: Option<u64>) -> Result<Option<CheckpointStats>> {
        let w = self.take(want, Instant::now())?;
        let landed = w.run(&self.live_sources())?;
        drop(w);
        Ok(landed.map(|l| {
            let stats = l.stats.clone();
            self.apply(l);
            stats
        }))
    }

    /// Re-reads the parent version from disk after a compaction changed the files it
    /// references. If the parent is gone (or is another file now), the next version is full.
    pub(super) fn refresh_parent(&mut self) {
        let Some(old) = self.parent.take() else {
            return;
        };
        self.parent = reload_parent(&self.store, &self.regions(), &old).map(Arc::new);
    }
}
