//! The steps of one checkpoint: plan, scan and emit, commit, after-commit bookkeeping.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::Checkpointer;
use crate::config::CheckpointStats;
use crate::error::{Error, Result};
use crate::format::{self, FileEntry, Header, Identity, Index, TrackingKind, FLAG_FULL};
use crate::read::Version;
use crate::track::Outcome;
use crate::write::file::VersionWriter;
use crate::write::index::{build_index, Parent, RegionPlan};
use crate::write::pipeline::{self, ScanJob, Scanned};

/// Versions with at least this much data flush it before taking the commit lock.
const EARLY_SYNC_BYTES: u64 = 32 << 20;

/// What the plan step decided.
struct Plan {
    version: u64,
    /// The tracker's candidates, if it reported (even when they do not choose the pages).
    candidates: Option<Vec<Vec<u64>>>,
    /// Whether the candidates choose the pages to hash.
    use_candidates: bool,
    /// Every page is hashed to count pages the tracker missed.
    audit: bool,
    /// No parent: every page is read, hashed and stored.
    full: bool,
    depth: u32,
    file_id: format::FileId,
    dst: PathBuf,
    started: Instant,
}

/// A committed version, as the commit step leaves it.
struct Committed {
    index: Index,
    identity: Identity,
    /// The version its references came from.
    parent_version: Option<u64>,
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

impl Checkpointer {
    /// The parent picture in force: `None` when the next version must be full.
    fn usable_parent(&self) -> Option<&Parent> {
        self.parent
            .as_ref()
            .filter(|p| p.depth < self.config.max_chain_depth)
    }

    /// Step 1: ask the tracker, choose the number, the kind of version and how pages are
    /// found, and create the temporary file with its header.
    fn plan(&mut self, want: Option<u64>) -> Result<(Plan, VersionWriter)> {
        let started = Instant::now();
        // Ask the tracker first: pages written after this instant are re-protected already
        // and will be reported to the next checkpoint.
        let candidates = self
            .tracker
            .candidates(self.config.page_size as usize)
            .map_err(|e| Error::io("/proc/self/pagemap", "PAGEMAP_SCAN", e))?;
        let audit = candidates.is_some()
            && self.config.audit_every > 0
            && self.since_audit + 1 >= self.config.audit_every;
        let parent = self.usable_parent();
        // A full version reads and hashes every page it stores: it never records a
        // remembered hash for a page the tracker did not report.
        let full = parent.is_none();
        let use_candidates =
            candidates.is_some() && !audit && !full && self.hashes.iter().all(|h| h.pages_known);
        let latest = self.store.latest()?.unwrap_or(0);
        let version = want.unwrap_or(latest.max(self.last_written) + 1);
        let depth = parent.map_or(0, |p| p.depth + 1);
        let file_id =
            format::new_file_id().map_err(|e| Error::io(self.store.dir(), "draw a file id", e))?;
        let header = Header {
            file_id,
            version,
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
        let dst = self.store.path_of(version);
        let writer = VersionWriter::create(self.store.temp_path(version)?, dst.clone(), header)?;
        let plan = Plan {
            version,
            candidates,
            use_candidates,
            audit,
            full,
            depth,
            file_id,
            dst,
            started,
        };
        Ok((plan, writer))
    }

    /// Step 2: scan the regions and stream the dirty pages into the file.
    fn scan(&self, plan: &Plan, writer: &mut VersionWriter) -> Result<Scanned> {
        let job = ScanJob {
            regions: &self.regions,
            known: &self.hashes,
            candidates: plan.candidates.as_deref().filter(|_| plan.use_candidates),
            full: plan.full,
            page_size: self.config.page_size as usize,
            level: self.config.compression_level,
            min_saving: self.config.min_compression_saving,
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
            .map(|(r, s)| RegionPlan {
                id: r.id,
                byte_len: r.len() as u64,
                stored: s,
            })
            .collect();
        let self_entry = FileEntry {
            identity: Identity {
                file_id: plan.file_id,
                index_checksum: [0; 32],
            },
            version: plan.version,
            name: self.store.file_name(plan.version),
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
        if let Some(p) = self.usable_parent() {
            if !picture_valid(self.store.dir(), p) {
                // A compaction rewrote the parent (same pages, new layout) or removed files
                // it referenced. Our dirty pages are still right; only the references change.
                match self.reload_parent(p) {
                    Some(fresh) => reloaded = Some(fresh),
                    None => return Ok(None), // the parent itself is gone: retry as full
                }
            }
        }
        let parent = reloaded.as_ref().or(self.usable_parent());
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

    /// Step 4: the version is committed; remember it as the next parent, tell the tracker,
    /// report an audit's findings, and describe what was done.
    fn after_commit(
        &mut self,
        plan: Plan,
        scanned: Scanned,
        committed: Committed,
    ) -> Result<CheckpointStats> {
        let Committed {
            index,
            identity,
            parent_version,
        } = committed;
        let write_secs = plan.started.elapsed().as_secs_f64() - scanned.scan_secs;
        let reported: Option<u64> = plan
            .candidates
            .as_ref()
            .map(|c| c.iter().map(|c| c.len() as u64).sum());
        let mut audit_misses = None;
        if let (true, Some(c)) = (plan.audit, plan.candidates.as_ref()) {
            let misses: u64 = scanned
                .scans
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
                    plan.dst.display()
                );
            }
            audit_misses = Some(misses);
        }
        if reported.is_some() {
            self.since_audit = if plan.audit { 0 } else { self.since_audit + 1 };
        }
        self.tracker.committed(Outcome {
            reported,
            used: plan.use_candidates,
            pages_total: scanned.pages_total,
        });
        for (h, s) in self.hashes.iter_mut().zip(&scanned.scans) {
            h.apply(s);
        }
        self.parent = Some(Parent::from_index(
            &index,
            plan.version,
            identity,
            plan.depth,
        ));
        self.last_written = plan.version;
        let file_bytes = std::fs::metadata(&plan.dst)
            .map_err(|e| Error::io(&plan.dst, "stat", e))?
            .len();
        Ok(CheckpointStats {
            version: plan.version,
            parent: parent_version,
            identity,
            path: plan.dst,
            file_bytes,
            pages_total: scanned.pages_total,
            pages_stored: scanned.stored.iter().map(|s| s.len() as u64).sum(),
            hashed_bytes: scanned.scans.iter().map(|s| s.hashed_bytes).sum(),
            depth: plan.depth,
            tracking: if plan.use_candidates {
                TrackingKind::Uffd
            } else {
                TrackingKind::Hash
            },
            audit_misses,
            scan_secs: scanned.scan_secs,
            write_secs,
        })
    }

    /// One attempt at a checkpoint. `Ok(None)` means the parent picture was stale (a
    /// compaction changed the store); nothing was committed.
    pub(super) fn checkpoint_once(&mut self, want: Option<u64>) -> Result<Option<CheckpointStats>> {
        let (plan, mut writer) = self.plan(want)?;
        let mut scanned = self.scan(&plan, &mut writer)?;
        match self.commit(&plan, writer, &mut scanned)? {
            Some(committed) => self.after_commit(plan, scanned, committed).map(Some),
            None => Ok(None),
        }
    }

    /// Re-reads the parent version from disk after a compaction changed the files it
    /// references. If the parent is gone (or is another file now), the next version is full.
    pub(super) fn refresh_parent(&mut self) {
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
}
