//! Compaction: keep the newest versions, rewrite the kept files so that none references a
//! file about to be removed, then remove everything else — without a crash at any instant
//! leaving a kept version unable to restore.
//!
//! The protocol (see docs/FORMAT.md, "Compaction"):
//! 1. **Plan.** Walk the lineage back from the newest version (header `parent_version`);
//!    keep the first K versions of it plus any pinned ones. Everything else — older
//!    versions, abandoned branches, leftover temporary files — is garbage.
//! 2. **Rewrite**, oldest kept first, every kept file that references garbage (or is deeper
//!    than `max_depth`). The new revision keeps the file's id and all its records at the same
//!    indices, and appends copies of the pages it used to find in garbage (or, if an earlier
//!    rewritten kept file already holds the same page, references that). It lists the old
//!    revision's index checksum as *superseded*, so files that reference the old revision
//!    accept the new one. It replaces the old revision by an atomic rename of a fully written
//!    and fsynced file. At every instant both revisions restore correctly.
//! 3. **Remove** garbage, newest first (files only reference older files, so whatever
//!    survives a crash still restores), one unlink at a time under the chain's commit lock,
//!    after checking that no version committed since the plan still references the file.
//!
//! The files replaced and removed are closed for the last time once the commit lock is no
//! longer needed (`Retired`), before the compaction returns: the space it reports freed is
//! then free.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::read::{read_header_footer, Version, VersionFile};
use crate::store::{self, Store};

mod rewrite;
use rewrite::{rewrite_one, Pool, Rewritten};

/// What to keep.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Keep the newest `keep` versions of the newest version's lineage. 0 keeps only the
    /// pinned versions (which must then not be empty).
    pub keep: usize,
    /// Rewrite as full any kept version deeper than this.
    pub max_depth: Option<u32>,
    /// Versions to keep whatever `keep` says (for example those named by global commit
    /// records of an MPI job).
    pub pinned: Vec<u64>,
    /// Keep every version numbered above this, whatever `keep` says. The job-store compactor
    /// sets it to the newest global commit it saw: a rank file above that may belong to a
    /// collective checkpoint whose commit record is still being written, and a version that
    /// appears after the snapshot was never seen by the plan, so it is never garbage.
    pub keep_above: Option<u64>,
    /// Walk the lineage back from this version instead of the newest (a coordinator whose
    /// application chose to continue from an older version: newer versions of another branch
    /// must then be kept with `keep_above`, and the current branch is the one retained).
    pub head: Option<u64>,
    /// Only compute the plan.
    pub dry_run: bool,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            keep: 2,
            max_depth: None,
            pinned: Vec::new(),
            keep_above: None,
            head: None,
            dry_run: false,
        }
    }
}

/// What a compaction will do (or did).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Versions kept, ascending.
    pub kept: Vec<u64>,
    /// Kept versions whose file is rewritten, ascending.
    pub rewrite: Vec<u64>,
    /// Versions removed, ascending.
    pub remove: Vec<u64>,
    /// Leftover temporary files to remove (only when no writer holds the chain).
    pub temps: Vec<PathBuf>,
}

/// The outcome of [`compact`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The plan of the first round (what a dry run shows).
    pub plan: Plan,
    /// Versions kept at the end, ascending.
    pub kept: Vec<u64>,
    /// Versions whose file was rewritten, ascending.
    pub rewritten: Vec<u64>,
    /// Versions removed, ascending.
    pub removed: Vec<u64>,
    /// Versions that should have gone but were kept because a version committed during the
    /// compaction still references them (the next compaction removes them).
    pub spared: Vec<u64>,
    /// Temporary files removed.
    pub temps_removed: Vec<PathBuf>,
    /// Bytes written (new revisions).
    pub bytes_written: u64,
    /// Of those, the stored page bytes copied as they are from the old files (with direct
    /// I/O, or on the server of a network file system). Compaction never decodes and
    /// re-encodes a page to store it, so nothing is recompressed.
    pub bytes_copied: u64,
    /// Of `bytes_copied`, the bytes whose disk blocks the new revision shares with the file
    /// they came from (a reflink, on XFS and btrfs): read and checked, but not written.
    pub bytes_shared: u64,
    /// Bytes freed (removed files and replaced revisions, counted whole: blocks a new
    /// revision shares stay in use).
    pub bytes_freed: u64,
    /// Wall-clock seconds.
    pub secs: f64,
}

/// A writer committing during a round may reference files the round meant to remove; they
/// are spared, and another round (which rewrites that writer's newest version) follows.
const MAX_ROUNDS: usize = 4;

/// Computes what [`compact`] would do.
pub fn plan(store: &Store, opts: &CompactOptions) -> Result<Plan> {
    if opts.keep == 0 && opts.pinned.is_empty() && opts.keep_above.is_none() {
        return Err(Error::Config(
            "compaction must keep at least one version".into(),
        ));
    }
    let versions = store.versions()?;
    let Some(&newest) = versions.last() else {
        return Ok(Plan {
            temps: store.temp_files()?,
            ..Plan::default()
        });
    };
    // Lineage of the newest version (or of the head asked for).
    let head = match opts.head {
        None => newest,
        Some(h) if versions.contains(&h) => h,
        Some(h) => {
            return Err(Error::NotFound {
                dir: store.dir().to_path_buf(),
                what: format!("no version {h} of chain {:?} to compact from", store.name()),
            })
        }
    };
    let mut lineage = Vec::new();
    let mut cur = Some(head);
    let mut want_id: Option<[u8; 16]> = None;
    while let Some(v) = cur {
        let path = store.path_of(v);
        if !store::exists(&path)? {
            break;
        }
        let (h, _) = read_header_footer(&path)?;
        if want_id.is_some_and(|id| id != h.file_id) {
            break; // a different file took that number: the lineage ends here
        }
        lineage.push(v);
        want_id = h.parent.map(|p| p.identity.file_id);
        cur = h.parent.map(|p| p.version).filter(|p| *p < v);
    }
    let mut kept: BTreeSet<u64> = lineage.iter().take(opts.keep).copied().collect();
    kept.extend(opts.pinned.iter().filter(|v| versions.contains(v)));
    if let Some(floor) = opts.keep_above {
        kept.extend(versions.iter().filter(|&&v| v > floor));
    }
    let kept_names: HashSet<String> = kept.iter().map(|&v| store.file_name(v)).collect();
    let mut rewrite = Vec::new();
    for &v in &kept {
        let f = VersionFile::open(&store.path_of(v))?;
        let deep = opts
            .max_depth
            .is_some_and(|d| f.header.depth > d && f.index.files.len() > 1);
        let refs_garbage = f
            .index
            .files
            .iter()
            .skip(1)
            .any(|e| !kept_names.contains(&e.name));
        if deep || refs_garbage {
            rewrite.push(v);
        }
    }
    Ok(Plan {
        kept: kept.iter().copied().collect(),
        rewrite,
        remove: versions.into_iter().filter(|v| !kept.contains(v)).collect(),
        temps: store.temp_files()?,
    })
}

/// Carries out a compaction. `progress(done, total)` counts rewrites and removals.
pub fn compact(
    store: &Store,
    opts: &CompactOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report> {
    compact_locked(store, opts, false, progress)
}

/// [`compact`], for a caller that may already hold the chain's writer lock
/// (`writer_held`): then no writer can be active, and leftover temporaries are garbage.
pub(crate) fn compact_locked(
    store: &Store,
    opts: &CompactOptions,
    writer_held: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report> {
    let t0 = Instant::now();
    let _one_compactor = store.lock_compact()?;
    let mut report = Report::default();
    let mut rewritten = BTreeSet::new();
    let mut retired = Retired::default();
    for round in 0..MAX_ROUNDS {
        let plan = plan(store, opts)?;
        if round == 0 {
            report.plan = plan.clone();
            if opts.dry_run {
                report.kept = plan.kept.clone();
                report.rewritten = plan.rewrite.clone();
                report.removed = plan.remove.clone();
                report.secs = t0.elapsed().as_secs_f64();
                return Ok(report);
            }
        }
        let spared = run_round(store, opts, &plan, &mut report, &mut retired, progress)?;
        rewritten.extend(plan.rewrite.iter().copied());
        report.kept = plan.kept.clone();
        report.spared = spared;
        if report.spared.is_empty() {
            break;
        }
    }
    report.rewritten = rewritten.into_iter().collect();
    report.removed.sort_unstable();

    // Leftover temporary files are garbage only if no writer is active.
    let temps = store.temp_files()?;
    if !temps.is_empty() {
        let own = if writer_held {
            None
        } else {
            store.try_lock_writer_now()?
        };
        if writer_held || own.is_some() {
            for t in temps {
                let size = std::fs::metadata(&t).map(|m| m.len()).unwrap_or(0);
                if crate::vfs::current().remove_file(&t).is_ok() {
                    report.bytes_freed += size;
                    report.temps_removed.push(t);
                }
            }
            store::sync_dir(store.dir())?;
        }
    }
    // The old files' last close frees their blocks and cached pages, so that what the report
    // counts as freed is free when this returns (the next write on a full disk needs it:
    // seen as an export failing with ENOSPC right after a compaction freed room for it).
    drop(retired);
    report.secs = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The replaced revisions and removed files of a compaction, still open. Their names are
/// gone (and that is durable) while they are held; what is left is the kernel's work of
/// freeing their blocks and cached pages at the last close, which for a GiB of cached pages
/// takes a few hundred milliseconds. Holding them open until the compaction's end makes each
/// unlink under the commit lock a directory update only, so the writers waiting on that lock
/// do not wait for the freeing. Dropping this closes them.
#[derive(Default)]
struct Retired {
    versions: Vec<Version>,
    files: Vec<std::fs::File>,
}

/// One round: rewrite, then remove. Returns the versions spared.
fn run_round(
    store: &Store,
    opts: &CompactOptions,
    plan: &Plan,
    report: &mut Report,
    retired: &mut Retired,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u64>> {
    let total = (plan.rewrite.len() + plan.remove.len()) as u64;
    let mut done = 0u64;
    let kept: HashSet<String> = plan.kept.iter().map(|&v| store.file_name(v)).collect();

    // 2. Rewrite, oldest first. `pool` maps page contents to a record of an already rewritten
    // kept file, so that later rewrites reference it instead of copying the page again.
    let mut pool = Pool::new();
    for (i, &v) in plan.rewrite.iter().enumerate() {
        let last = i + 1 == plan.rewrite.len();
        let Rewritten {
            written,
            freed,
            copied,
            shared,
            old,
        } = rewrite_one(store, v, &kept, opts.max_depth, &mut pool, !last)?;
        report.bytes_written += written;
        report.bytes_copied += copied;
        report.bytes_shared += shared;
        report.bytes_freed += freed;
        retired.versions.push(old);
        done += 1;
        progress(done, total);
    }

    // 3. Remove, newest first.
    let planned: HashSet<u64> = plan.kept.iter().chain(&plan.remove).copied().collect();
    let mut refs_cache: HashMap<(u64, [u8; 16]), Vec<String>> = HashMap::new();
    let mut spared: Vec<u64> = Vec::new();
    for &r in plan.remove.iter().rev() {
        let path = store.path_of(r);
        let name = store.file_name(r);
        let lock = store.lock_commit()?;
        // Versions committed since the plan (and versions we had to spare) may reference
        // garbage: what they reference stays.
        let mut protected = HashSet::new();
        for v in store.versions()? {
            if planned.contains(&v) && !spared.contains(&v) {
                continue;
            }
            let p = store.path_of(v);
            let (h, _) = read_header_footer(&p)?;
            let names = match refs_cache.get(&(v, h.file_id)) {
                Some(n) => n.clone(),
                None => {
                    let f = VersionFile::open(&p)?;
                    let n: Vec<String> = f
                        .index
                        .files
                        .iter()
                        .skip(1)
                        .map(|e| e.name.clone())
                        .collect();
                    refs_cache.insert((v, h.file_id), n.clone());
                    n
                }
            };
            protected.extend(names);
        }
        if protected.contains(&name) {
            spared.push(r);
            drop(lock);
            continue;
        }
        crate::fault::point("compact-step");
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // Held open only to move the freeing of its blocks out of the commit lock (`Retired`).
        let handle = std::fs::File::open(&path).ok();
        match crate::vfs::current().remove_file(&path) {
            Ok(()) => {
                report.bytes_freed += size;
                report.removed.push(r);
                retired.files.extend(handle);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, "remove", e)),
        }
        store::sync_dir(store.dir())?;
        drop(lock);
        crate::fault::point("compact-step");
        done += 1;
        progress(done, total);
    }
    spared.sort_unstable();
    Ok(spared)
}
