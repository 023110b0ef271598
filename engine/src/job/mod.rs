//! Job stores: the on-disk layout of a multi-rank (MPI) job, with no MPI in it, so that tools
//! (`ckpt-compact`) can handle job stores without linking MPI.
//!
//! ```text
//! DIR/ckpt-job                          job description: chain name and world size
//! DIR/ranks/<rank / 256>/<rank>/        rank r's chain: <name>.ckpt.<N>
//! DIR/commits/<name>.commit.<N>         global commit record of version N
//! ```
//!
//! Ranks are sharded 256 to a directory so that thousands of ranks do not share one
//! directory on a parallel file system. Version N of the job exists only if its commit record
//! exists: rank files without one are garbage (a failed or interrupted collective
//! checkpoint).

use std::path::{Path, PathBuf};

use crate::compact::{self, CompactOptions};
use crate::error::{Error, Result};
use crate::store::{self, Store};

mod copy;
mod record;

pub use copy::{copy_chain, CopyReport};
pub use record::CommitRecord;

/// File name of the job description.
pub const META_FILE: &str = "ckpt-job";
/// File name of a halt request (`ckpt halt`).
pub const HALT_FILE: &str = "halt";
pub use record::{COMMIT_FORMAT, COMMIT_MAGIC};
/// Ranks per shard directory.
pub const RANKS_PER_SHARD: u32 = 256;

/// What `ckpt-job` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMeta {
    /// Chain name of every rank.
    pub name: String,
    /// Number of ranks the job was written with.
    pub world_size: u32,
}

/// A job store directory.
#[derive(Debug, Clone)]
pub struct JobStore {
    dir: PathBuf,
    name: String,
}

/// What a job-store compaction did.
#[derive(Debug, Clone, Default)]
pub struct JobCompactReport {
    /// Versions kept (their commit records and rank files).
    pub kept: Vec<u64>,
    /// Commit records removed.
    pub commits_removed: Vec<u64>,
    /// Per-rank compaction reports.
    pub ranks: Vec<compact::Report>,
    /// Temporary files of crashed commit-record writes removed from `commits/` (only when no
    /// process of the job runs).
    pub commit_temps_removed: Vec<PathBuf>,
}

impl JobStore {
    /// Names a job store; checks the chain name.
    pub fn new(dir: impl Into<PathBuf>, name: &str) -> Result<JobStore> {
        store::check_chain_name(name)?;
        Ok(JobStore {
            dir: dir.into(),
            name: name.to_string(),
        })
    }

    /// Opens the job store in `dir` if there is one (it has a `ckpt-job` file).
    pub fn detect(dir: &Path) -> Result<Option<(JobStore, JobMeta)>> {
        let meta_path = dir.join(META_FILE);
        if !store::exists(&meta_path)? {
            return Ok(None);
        }
        let meta = read_meta(&meta_path)?;
        Ok(Some((JobStore::new(dir, &meta.name)?, meta)))
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads `ckpt-job`, if present.
    pub fn meta(&self) -> Result<Option<JobMeta>> {
        let p = self.dir.join(META_FILE);
        if !store::exists(&p)? {
            return Ok(None);
        }
        let m = read_meta(&p)?;
        if m.name != self.name {
            return Err(Error::ChainMismatch {
                path: p,
                found: m.name,
                wanted: self.name.clone(),
            });
        }
        Ok(Some(m))
    }

    /// Writes `ckpt-job` (atomically; fails if it exists).
    pub fn write_meta(&self, world_size: u32) -> Result<()> {
        store::create_dir_durable(&self.dir)?;
        let text = format!("ckpt-job 1\nname {}\nworld_size {world_size}\n", self.name);
        store::atomic_write_new(&self.dir, META_FILE, text.as_bytes())
    }

    /// Rank `rank`'s chain directory.
    pub fn rank_dir(&self, rank: u32) -> PathBuf {
        self.dir
            .join("ranks")
            .join(format!("{:04}", rank / RANKS_PER_SHARD))
            .join(rank.to_string())
    }

    /// Asks the running job to stop cleanly after its next checkpoint (SCR's halt): writes
    /// `DIR/halt` atomically. Asking twice is harmless.
    pub fn request_halt(&self) -> Result<()> {
        match store::atomic_write_new(&self.dir, HALT_FILE, b"halt after the next checkpoint\n") {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(())
            }
            other => other,
        }
    }

    /// Whether a halt has been requested (and not yet honoured).
    pub fn halt_requested(&self) -> Result<bool> {
        store::exists(&self.dir.join(HALT_FILE))
    }

    /// Withdraws a halt request (the job honoured it, or the operator changed their mind).
    pub fn clear_halt(&self) -> Result<()> {
        let p = self.dir.join(HALT_FILE);
        match crate::vfs::current().remove_file(&p) {
            Ok(()) => store::sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&p, "remove", e)),
        }
    }

    /// Rank `rank`'s chain directory, checked for writing: `ranks/`, its shard and the rank's
    /// directory, where they exist, are real directories, not symbolic links.
    pub fn checked_rank_dir(&self, rank: u32) -> Result<PathBuf> {
        let dir = self.rank_dir(rank);
        let shard = dir.parent().unwrap_or(&self.dir);
        for p in [&self.dir.join("ranks"), shard, &dir] {
            store::no_symlink(p)?;
        }
        Ok(dir)
    }

    /// Rank `rank`'s chain.
    pub fn rank_store(&self, rank: u32) -> Result<Store> {
        Store::new(self.rank_dir(rank), &self.name)
    }

    pub(crate) fn commits_dir(&self) -> PathBuf {
        self.dir.join("commits")
    }

    /// File name of version `v`'s commit record.
    pub fn commit_name(&self, v: u64) -> String {
        format!("{}.commit.{v}", self.name)
    }

    /// Versions that have a commit record, ascending.
    pub fn commits(&self) -> Result<Vec<u64>> {
        let dir = self.commits_dir();
        if !store::exists(&dir)? {
            return Ok(Vec::new());
        }
        let prefix = format!("{}.commit.", self.name);
        let mut v: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, "read directory", e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                n.strip_prefix(&prefix)?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Reads and checks version `v`'s commit record.
    pub fn read_commit(&self, v: u64) -> Result<CommitRecord> {
        let p = self.commits_dir().join(self.commit_name(v));
        let b = std::fs::read(&p).map_err(|e| Error::io(&p, "read", e))?;
        let r = CommitRecord::decode(&p, &b)?;
        if r.version != v {
            return Err(Error::corrupt(&p, "commit record", "names another version"));
        }
        Ok(r)
    }

    /// Writes a commit record atomically: this is the commit point of a job version.
    pub fn write_commit(&self, rec: &CommitRecord) -> Result<()> {
        let dir = self.commits_dir();
        store::no_symlink(&dir)?;
        store::create_dir_durable(&dir)?;
        if crate::fault::fail("write-commit") {
            return Err(Error::io(
                dir.join(self.commit_name(rec.version)),
                "write commit record",
                std::io::Error::other("injected failure (CKPT_FAULT_FAIL=write-commit)"),
            ));
        }
        store::atomic_write_new(&dir, &self.commit_name(rec.version), &rec.encode())
    }

    /// Writes commit record `rec` unless this store already has it: `Ok` if the record there
    /// is the same, an error naming the file if it differs. For the copies of a record that
    /// several node-local caches (or persistent storage) each keep.
    pub fn ensure_commit(&self, rec: &CommitRecord) -> Result<()> {
        if self.commits()?.contains(&rec.version) {
            if &self.read_commit(rec.version)? == rec {
                return Ok(());
            }
            return Err(Error::corrupt(
                self.commits_dir().join(self.commit_name(rec.version)),
                "commit record",
                "differs from the job's record of the same version: two different jobs?",
            ));
        }
        match self.write_commit(rec) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                if &self.read_commit(rec.version)? == rec {
                    Ok(())
                } else {
                    Err(Error::corrupt(
                        self.commits_dir().join(self.commit_name(rec.version)),
                        "commit record",
                        "differs from the job's record of the same version",
                    ))
                }
            }
            other => other,
        }
    }

    /// Whether rank `rank`'s file for committed version `v` exists, opens with every file it
    /// references, and is the one the commit record names (a job of `world_size` ranks).
    /// This is what a restart asks of each rank before restoring `v`; `Err` names the file
    /// and what is wrong with it.
    pub fn check_rank(&self, v: u64, rank: u32, world_size: u32) -> Result<()> {
        self.check_rank_file(v, rank, world_size).map(drop)
    }

    /// [`check_rank`](Self::check_rank), returning the rank's file.
    pub(crate) fn check_rank_file(&self, v: u64, rank: u32, world_size: u32) -> Result<PathBuf> {
        let rec = self.read_commit(v)?;
        self.check_rank_record(&rec, rank, world_size)
    }

    /// [`check_rank`](Self::check_rank) against commit record `rec`, which may come from
    /// another copy of the job (another node's cache, persistent storage): rank `rank`'s file
    /// of `rec`'s version exists here, opens with every file it references, and is the one
    /// `rec` names. Returns the file.
    pub fn check_rank_record(
        &self,
        rec: &CommitRecord,
        rank: u32,
        world_size: u32,
    ) -> Result<PathBuf> {
        let v = rec.version;
        let record = self.commits_dir().join(self.commit_name(v));
        if rec.ranks.len() != world_size as usize {
            return Err(Error::corrupt(
                &record,
                "commit record",
                format!("names {} ranks, the job has {world_size}", rec.ranks.len()),
            ));
        }
        let path = self.rank_store(rank)?.path_of(v);
        if !store::exists(&path)? {
            return Err(Error::MissingReference {
                path: record,
                missing: path,
            });
        }
        let version = crate::read::Version::open(&path)?;
        let want = &rec.ranks[rank as usize];
        if !version.file().satisfies(want) {
            return Err(Error::ReplacedReference {
                path: record,
                referenced: path,
                expected: crate::format::hex(&want.file_id),
                found: crate::format::hex(&version.file().header.file_id),
            });
        }
        Ok(path)
    }

    /// Fully checks committed version `v` on every rank: the commit record, and each rank's
    /// file (every page, every reference) being the one the record names.
    pub fn verify_commit(&self, v: u64, world_size: u32) -> Result<()> {
        for rank in 0..world_size {
            let file = self.check_rank_file(v, rank, world_size)?;
            crate::catalog::verify_version(&file)?;
        }
        Ok(())
    }

    /// Keeps the newest `keep` committed versions: removes older commit records first (so
    /// no record ever names a version whose files are going), then compacts every rank's
    /// chain keeping exactly those versions.
    ///
    /// The protocol with a live job (docs/FORMAT.md, "Job stores"):
    /// 1. one job compactor at a time (`.<name>.job-compact.lock`);
    /// 2. try to take every rank's writer lock. If all are free, no process of the job is
    ///    running: hold them until the end, so none can start, and treat rank files above the
    ///    newest commit record as garbage of a failed collective checkpoint. If any is held,
    ///    the job is live: release them, and keep every rank file numbered above the newest
    ///    commit record seen (it may be a checkpoint whose commit record is being written);
    /// 3. only then list the commit records (the snapshot);
    /// 4. remove commit records older than the newest `keep`, fsync `commits/`;
    /// 5. compact each rank's chain with those versions pinned; a rank's plan never removes a
    ///    version it did not see, so versions committed meanwhile are never touched.
    pub fn compact(&self, keep: usize, dry_run: bool) -> Result<JobCompactReport> {
        let meta = self.meta()?.ok_or_else(|| Error::NotFound {
            dir: self.dir.clone(),
            what: format!("no {META_FILE} file: not a job store"),
        })?;
        let _one_compactor = store::lock_exclusive_now(
            &self.dir.join(format!(".{}.job-compact.lock", self.name)),
            &self.name,
        )?;
        let mut writers = Vec::new();
        let mut idle = true;
        for rank in 0..meta.world_size {
            let s = self.rank_store(rank)?;
            if !store::exists(s.dir())? {
                continue;
            }
            match s.try_lock_writer_now()? {
                Some(lock) => writers.push(lock),
                None => {
                    idle = false;
                    break;
                }
            }
        }
        if !idle {
            // A live job: never stand in the way of a rank that (re)opens its chain.
            writers.clear();
        }
        let commits = self.commits()?;
        let kept: Vec<u64> = commits
            .iter()
            .rev()
            .take(keep.max(1))
            .rev()
            .copied()
            .collect();
        let newest_commit = commits.last().copied().unwrap_or(0);
        let mut report = JobCompactReport {
            kept: kept.clone(),
            ..JobCompactReport::default()
        };
        for &v in &commits {
            if kept.contains(&v) {
                continue;
            }
            report.commits_removed.push(v);
            if !dry_run {
                let p = self.commits_dir().join(self.commit_name(v));
                match crate::vfs::current().remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&p, "remove", e)),
                }
            }
        }
        if idle && !dry_run && store::exists(&self.commits_dir())? {
            report.commit_temps_removed = self.remove_dead_temporaries(&self.commits_dir())?;
        }
        let changed = !report.commits_removed.is_empty() || !report.commit_temps_removed.is_empty();
        if !dry_run && changed {
            store::sync_dir(&self.commits_dir())?;
        }
        if kept.is_empty() {
            // No committed version at all: nothing tells garbage from a first checkpoint.
            return Ok(report);
        }
        for rank in 0..meta.world_size {
            let s = self.rank_store(rank)?;
            if !store::exists(s.dir())? {
                continue;
            }
            let opts = CompactOptions {
                keep: 0,
                pinned: kept.clone(),
                keep_above: (!idle).then_some(newest_commit),
                dry_run,
                ..CompactOptions::default()
            };
            report
                .ranks
                .push(compact::compact_locked(&s, &opts, idle, &mut |_, _| {})?);
        }
        drop(writers);
        Ok(report)
    }
}

impl JobStore {
    /// Removes the temporary files (`.<file>.tmp.<pid>.<hex>`) in `dir` whose process is
    /// gone; returns them.
    fn remove_dead_temporaries(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let prefix = format!(".{}.commit.", self.name);
        let mut removed = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))? {
            let e = e.map_err(|e| Error::io(dir, "read directory", e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let p = e.path();
            if name.starts_with(&prefix) && name.contains(".tmp.") && !store::temp_owner_alive(&p) {
                crate::vfs::current()
                    .remove_file(&p)
                    .map_err(|e| Error::io(&p, "remove", e))?;
                removed.push(p);
            }
        }
        Ok(removed)
    }
}

fn read_meta(p: &Path) -> Result<JobMeta> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, "read", e))?;
    let bad = |d: String| Error::corrupt(p, "job description", d);
    let mut lines = text.lines();
    match lines.next() {
        Some("ckpt-job 1") => {}
        Some(first) if first.starts_with("ckpt-job ") => {
            return Err(bad(format!(
                "{first:?}: a newer job-store format than this build reads (`ckpt-job 1`)"
            )))
        }
        _ => return Err(bad("first line is not `ckpt-job 1`".into())),
    }
    let mut name = None;
    let mut world = None;
    for l in lines {
        match l.split_once(' ') {
            Some(("name", n)) => name = Some(n.to_string()),
            Some(("world_size", w)) => {
                world = Some(w.parse::<u32>().ok().filter(|&w| w > 0).ok_or_else(|| {
                    bad(format!(
                        "world_size {w:?} is not a positive number of ranks"
                    ))
                })?)
            }
            // Unknown lines are informative (docs/FORMAT.md, "Compatibility").
            _ => {}
        }
    }
    Ok(JobMeta {
        name: name.ok_or_else(|| bad("no name line".into()))?,
        world_size: world.ok_or_else(|| bad("no world_size line".into()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_descriptions_are_checked_line_by_line() {
        let tmp = tempfile::Builder::new()
            .prefix("ckpt-meta-")
            .tempdir()
            .unwrap();
        let d = tmp.path().to_path_buf();
        let p = d.join(META_FILE);
        let cases = [
            (
                "ckpt-job 1\nname heat\nworld_size x2\n",
                "world_size \"x2\"",
            ),
            ("ckpt-job 1\nname heat\nworld_size 0\n", "world_size \"0\""),
            ("ckpt-job 1\nname heat\n", "no world_size"),
            (
                "ckpt-job 2\nname heat\nworld_size 2\n",
                "newer job-store format",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(&p, text).unwrap();
            let e = read_meta(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("ckpt-job"), "{text:?}: {e}");
        }
        std::fs::write(&p, "ckpt-job 1\nname heat\nworld_size 2\nfuture yes\n").unwrap();
        assert_eq!(read_meta(&p).unwrap().world_size, 2);
    }
}
