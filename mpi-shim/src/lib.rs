//! # ckpt-mpi
//!
//! Rank-wide coordinated checkpoints for MPI applications, on top of `ckpt-engine`.
//!
//! Every rank keeps its own chain in a rank-sharded directory of a *job store* (layout in
//! [`ckpt_engine::job`] and `docs/FORMAT.md`). A collective [`Job::checkpoint`] is a
//! two-phase commit:
//!
//! 1. the ranks agree on the version number (one more than any rank has on disk and than
//!    the newest commit record);
//! 2. each rank writes and fsyncs its version file;
//! 3. a reduction tells whether every rank succeeded;
//! 4. only then rank 0 writes the global commit record atomically;
//! 5. every rank learns the outcome, and the reason of any rank's failure.
//!
//! A version exists only once its commit record does. [`Job::restart`] picks the newest
//! version that has a commit record *and* whose files verify on every rank — never the
//! maximum over ranks, which may name a version some rank never wrote.
//!
//! [`Job::open_storage`] adds storage levels (see [`storage`]): node-local caches, partner
//! copies on another node, and persistent storage flushed in the foreground or background.
//!
//! **No rank waits forever.** Every fallible step before a collective is followed by an
//! agreement (an all-reduce of an ok flag); when any rank failed, the ranks exchange their
//! reasons and every rank returns the same [`Error::Ranks`] (or [`Error::NotCommitted`]),
//! naming each failing rank and why.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ckpt_engine::Config;
//! let universe = mpi::initialize().ok_or("MPI init failed")?;
//! let world = universe.world();
//! let mut job = ckpt::Job::open(&world, "/scratch/job42", "heat", Config::default())?;
//! let grid = job.checkpointer().alloc_region::<f64>(1, 1 << 20)?;
//! if let Some(v) = job.restart()? {
//!     println!("restarted from version {v}");
//! }
//! job.checkpointer().region_mut(&grid)?[0] = 1.0;
//! job.checkpoint()?; // committed on every rank, or on none
//! # Ok(())
//! # }
//! ```

pub mod c;
pub mod config;
pub mod storage;

pub use storage::{FlushMode, FlushStatus, Level, StorageConfig};

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ckpt_engine::job::{CommitRecord, JobStore};
use ckpt_engine::{Checkpointer, Config, Identity};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::topology::Communicator;

/// One rank's reason for a failed collective step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankFailure {
    /// The rank that failed.
    pub rank: u32,
    /// Its error message (cut to about 1 KiB).
    pub message: String,
}

fn list_failures(f: &[RankFailure]) -> String {
    f.iter()
        .map(|r| format!("rank {}: {}", r.rank, r.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn list_tried(t: &[(u64, Vec<RankFailure>)]) -> String {
    t.iter()
        .map(|(v, f)| format!("version {v} ({})", list_failures(f)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Errors of collective operations. Every rank gets the same variant and message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An engine error on this rank, before any collective step.
    #[error(transparent)]
    Engine(#[from] ckpt_engine::Error),
    /// The store was written by a job of another size.
    #[error("{dir}: the job store was written by {stored} ranks, this job has {now}; restart with {stored} ranks or use another directory")]
    WorldSize {
        /// The store directory.
        dir: String,
        /// World size recorded in the store.
        stored: u32,
        /// World size of this job.
        now: u32,
    },
    /// A collective step failed on one or more ranks; nothing was left half done.
    #[error("{op} failed on {} rank(s): {}", failures.len(), list_failures(failures))]
    Ranks {
        /// The step: "open this rank's chain", "list the commit records", ...
        op: &'static str,
        /// Each failing rank and its reason.
        failures: Vec<RankFailure>,
    },
    /// The collective checkpoint did not commit; nothing of it is visible.
    #[error(
        "checkpoint version {version} was not committed: {}",
        list_failures(failures)
    )]
    NotCommitted {
        /// The version that was attempted.
        version: u64,
        /// Each failing rank and its reason.
        failures: Vec<RankFailure>,
    },
    /// Committed versions exist, but none can be restored on every rank. The job must not
    /// start from scratch over them: fix the store (or move it away) and restart.
    #[error(
        "{dir}: committed versions exist but none can be restored on every rank: {}",
        list_tried(tried)
    )]
    NoRestorableVersion {
        /// The job store.
        dir: PathBuf,
        /// Each committed version tried, newest first, and why it could not be restored.
        tried: Vec<(u64, Vec<RankFailure>)>,
    },
    /// A setting that a job cannot honour.
    #[error("{0}")]
    Config(String),
    /// The version asked for was never committed (or its commit record is gone).
    #[error("{dir}: version {version} has no commit record (never committed on every rank, or compacted away)")]
    NoSuchVersion {
        /// The job store.
        dir: PathBuf,
        /// The version asked for.
        version: u64,
    },
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bytes each rank contributes to the exchange of failure reasons.
const MSG_LEN: usize = 1024;

/// Every rank's failure for a step, in rank order: an empty list means every rank succeeded.
/// Collective: every rank must call it, with its own outcome. Costs one all-reduce when all
/// succeed; an all-gather of `MSG_LEN` bytes per rank only when some rank failed.
fn failures<C: Communicator>(comm: &C, mine: Option<&dyn Display>) -> Vec<RankFailure> {
    let ok = i32::from(mine.is_none());
    let mut all_ok = 0i32;
    comm.all_reduce_into(&ok, &mut all_ok, SystemOperation::min());
    if all_ok == 1 {
        return Vec::new();
    }
    let mut buf = [0u8; MSG_LEN];
    if let Some(e) = mine {
        buf[0] = 1;
        let text = e.to_string();
        let mut n = text.len().min(MSG_LEN - 1);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        buf[1..1 + n].copy_from_slice(&text.as_bytes()[..n]);
    }
    let mut all = vec![0u8; MSG_LEN * comm.size() as usize];
    comm.all_gather_into(&buf[..], &mut all[..]);
    all.chunks(MSG_LEN)
        .enumerate()
        .filter(|(_, c)| c[0] == 1)
        .map(|(rank, c)| {
            let end = c[1..]
                .iter()
                .position(|&b| b == 0)
                .map_or(MSG_LEN, |p| p + 1);
            RankFailure {
                rank: rank as u32,
                message: String::from_utf8_lossy(&c[1..end]).into_owned(),
            }
        })
        .collect()
}

/// Agrees on a step's outcome: `Ok` on every rank if it succeeded on every rank, else the
/// same [`Error::Ranks`] on every rank. Collective.
fn agree<C: Communicator, T, E: Display>(
    comm: &C,
    op: &'static str,
    r: std::result::Result<T, E>,
) -> Result<T> {
    let f = failures(comm, r.as_ref().err().map(|e| e as &dyn Display));
    match r {
        Ok(x) if f.is_empty() => Ok(x),
        _ => Err(Error::Ranks { op, failures: f }),
    }
}

/// What a committed collective checkpoint did.
#[derive(Debug, Clone)]
pub struct CommitStats {
    /// The committed version.
    pub version: u64,
    /// This rank's engine statistics.
    pub local: ckpt_engine::CheckpointStats,
    /// Seconds of the whole collective checkpoint on this rank.
    pub total_secs: f64,
    /// Seconds of the slowest rank's local write (the same on every rank).
    pub slowest_local_secs: f64,
    /// Seconds this rank spent on partner copies (sending its file to its partner and
    /// storing its protégé's); 0 without them.
    pub partner_secs: f64,
}

impl CommitStats {
    /// Time spent coordinating: the collective checkpoint minus the slowest rank's write.
    pub fn coordination_secs(&self) -> f64 {
        (self.total_secs - self.slowest_local_secs).max(0.0)
    }
}

/// One rank's handle on a job store.
pub struct Job<'c, C: Communicator> {
    comm: &'c C,
    store: JobStore,
    ck: Checkpointer,
    rank: u32,
    size: u32,
    /// A halt request was honoured at the last checkpoint: the job should stop.
    halted: bool,
    /// The asynchronous checkpoint started by every rank and not yet collected (the same on
    /// every rank: each records it, even where its local start failed).
    pending: Option<Pending>,
    /// Storage levels beside the node-local cache `store` ([`Job::open_storage`]).
    levels: Option<storage::Levels>,
    #[cfg(feature = "fault-injection")]
    inject_failure: Option<u64>,
}

/// An asynchronous collective checkpoint, from this rank's side.
struct Pending {
    version: u64,
    started: Instant,
    /// This rank's flush, or why it could not start.
    local: ckpt_engine::Result<ckpt_engine::AsyncCheckpoint>,
}

/// What [`Job::checkpoint_async`] did.
#[derive(Debug, Clone)]
pub struct AsyncStarted {
    /// The version whose flush started on every rank (committed by a later call).
    pub version: u64,
    /// The previous asynchronous version, committed by this call.
    pub committed: Option<CommitStats>,
}

impl<'c, C: Communicator> Job<'c, C> {
    /// Opens (creating if needed) the job store `dir` for chain `name`, collectively. Fails
    /// on every rank, with every failing rank's reason, if any rank cannot open its part, and
    /// if the store was written by a job of another size.
    ///
    /// Per-rank retention (`Config::keep` with `auto_compact`) is refused: it would compact
    /// each rank's chain without the job's commit records and could remove the newest version
    /// committed on all ranks. Compact a job store with `ckpt-compact DIR --keep K` (safe
    /// beside a running job) instead.
    pub fn open(comm: &'c C, dir: impl AsRef<Path>, name: &str, config: Config) -> Result<Self> {
        let dir = dir.as_ref();
        Self::refuse_per_rank_retention(&config, dir)?;
        let store = Self::open_job_store(comm, dir, name, comm.rank() == 0)?;
        let ck = agree(
            comm,
            "open this rank's chain",
            store
                .checked_rank_dir(comm.rank() as u32)
                .and_then(|d| Checkpointer::open(d, name, config)),
        )?;
        Ok(Self::assemble(comm, store, ck))
    }

    fn refuse_per_rank_retention(config: &Config, dir: &Path) -> Result<()> {
        if config.keep.is_some() && config.auto_compact {
            return Err(Error::Config(format!(
                "{}: per-rank automatic compaction (keep + auto_compact) cannot be used in an MPI \
                 job: it ignores the job's commit records and could remove the newest version \
                 committed on all ranks; run `ckpt-compact {} --keep K` instead, which is safe \
                 beside a running job",
                dir.display(),
                dir.display()
            )));
        }
        Ok(())
    }

    /// Opens job store `dir` collectively: `writer` ranks create its job description if it
    /// has none; every rank then reads it and checks the world size.
    fn open_job_store(comm: &C, dir: &Path, name: &str, writer: bool) -> Result<JobStore> {
        let size = comm.size() as u32;
        let store = agree(comm, "open the job store", JobStore::new(dir, name))?;
        let created = if writer {
            match store.meta() {
                Ok(Some(_)) => Ok(()),
                Ok(None) => match store.write_meta(size) {
                    Err(ckpt_engine::Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Ok(())
                    }
                    other => other,
                },
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        agree(comm, "create the job description", created)?;
        let meta = store.meta().and_then(|m| {
            m.ok_or_else(|| ckpt_engine::Error::NotFound {
                dir: dir.to_path_buf(),
                what: format!(
                    "no {} file after it was created",
                    ckpt_engine::job::META_FILE
                ),
            })
        });
        let meta = agree(comm, "read the job description", meta)?;
        if meta.world_size != size {
            return Err(Error::WorldSize {
                dir: dir.display().to_string(),
                stored: meta.world_size,
                now: size,
            });
        }
        Ok(store)
    }

    fn assemble(comm: &'c C, store: JobStore, ck: Checkpointer) -> Self {
        Job {
            comm,
            store,
            ck,
            rank: comm.rank() as u32,
            size: comm.size() as u32,
            halted: false,
            pending: None,
            levels: None,
            #[cfg(feature = "fault-injection")]
            inject_failure: None,
        }
    }

    /// This rank's engine: register regions through it.
    pub fn checkpointer(&mut self) -> &mut Checkpointer {
        &mut self.ck
    }

    /// This rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// The job store.
    pub fn store(&self) -> &JobStore {
        &self.store
    }

    /// Makes this rank's part of checkpoint `version` fail, as if its disk had failed (for
    /// tests of the two-phase commit; feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub fn inject_failure(&mut self, version: u64) {
        self.inject_failure = Some(version);
    }

    /// Whether a checkpoint was requested on *any* rank since the last call: by a signal
    /// (see [`ckpt_engine::signals`]; Slurm's `--signal=B:USR1@N` reaches only some
    /// processes) or by [`ckpt_engine::signals::request_checkpoint`]. Collective: every rank
    /// calls it at the same point (once per iteration, say), and every rank gets the same
    /// answer, so all checkpoint at the same iteration. Costs one small all-reduce.
    pub fn checkpoint_requested(&self) -> bool {
        let mine = u64::from(ckpt_engine::signals::checkpoint_requested());
        self.all_max_u64(mine) == 1
    }

    /// Whether the job should stop now: a halt request (`ckpt halt DIR`) was found at the
    /// last committed checkpoint. The same on every rank; no communication.
    pub fn should_exit(&self) -> bool {
        self.halted
    }

    /// After a commit: rank 0 looks for a halt request, every rank learns the answer, and a
    /// request that will be honoured is withdrawn so that a resubmitted job runs. The version
    /// is committed whatever happens here: a request that cannot be read is reported and
    /// looked for again at the next checkpoint.
    fn check_halt(&mut self) {
        let local = if self.rank == 0 {
            self.store.halt_requested()
        } else {
            Ok(false)
        };
        let asked = match agree(self.comm, "read the halt request", local) {
            Ok(asked) => asked,
            Err(e) => {
                if self.rank == 0 {
                    tracing::warn!("{e}; the job carries on");
                }
                false
            }
        };
        // Only rank 0 looked: every rank takes its answer.
        self.halted = self.all_max_u64(u64::from(asked)) == 1;
        if self.halted && self.rank == 0 {
            if let Err(e) = self.store.clear_halt() {
                tracing::warn!("halting, but could not withdraw the halt request: {e}");
            }
        }
    }

    fn all_max_u64(&self, x: u64) -> u64 {
        let mut out = 0u64;
        self.comm
            .all_reduce_into(&x, &mut out, SystemOperation::max());
        out
    }

    fn all_max_f64(&self, x: f64) -> f64 {
        let mut out = 0f64;
        self.comm
            .all_reduce_into(&x, &mut out, SystemOperation::max());
        out
    }

    /// Restores, on every rank, the newest version that has a global commit record and whose
    /// files check out on every rank. Returns it, or `None` if no version was ever committed
    /// (a fresh start).
    ///
    /// A committed version that some rank cannot use (a file missing, unreadable, corrupt or
    /// replaced) is skipped for the one before it, with a warning (`tracing`) naming each
    /// rank's file and reason. If committed versions exist but none can be restored, or the
    /// commit records cannot be listed, every rank returns an error: a store that cannot be
    /// read is never mistaken for an empty one.
    pub fn restart(&mut self) -> Result<Option<u64>> {
        self.find_committed(None, true)
    }

    /// The version [`restart`](Self::restart) would restore, without restoring it: the
    /// newest version with a commit record whose files check out on every rank, or `None`
    /// if no version was ever committed. Collective.
    pub fn restart_test(&mut self) -> Result<Option<u64>> {
        self.find_committed(None, false)
    }

    /// Restores committed version `version` on every rank. Fails on every rank if it has no
    /// commit record or cannot be restored on some rank. Collective.
    pub fn restart_version(&mut self, version: u64) -> Result<()> {
        match self.find_committed(Some(version), true)? {
            Some(_) => Ok(()),
            None => Err(Error::NoSuchVersion {
                dir: self.store.dir().to_path_buf(),
                version,
            }),
        }
    }

    /// Tries the committed versions (only `only`, if given), newest first, and returns the
    /// first whose files check out (and, with `restore`, restore) on every rank.
    fn find_committed(&mut self, only: Option<u64>, restore: bool) -> Result<Option<u64>> {
        // An asynchronous checkpoint in flight may be the newest committed version.
        if self.pending.is_some() {
            self.collect()?;
        }
        // `ckpt debug` asks for one version (the same environment on every rank).
        let only = match only {
            Some(v) => Some(v),
            None => agree(
                self.comm,
                "read CKPT_RESTORE_VERSION",
                ckpt_engine::restore_version_override(),
            )?,
        };
        if self.levels.is_some() {
            return self.restart_levels(only, restore);
        }
        // Rank 0 lists the commit records and broadcasts them, so that all ranks try the same
        // candidates in the same order.
        let listed = if self.rank == 0 {
            self.store.commits()
        } else {
            Ok(Vec::new())
        };
        let mut listed = agree(self.comm, "list the commit records", listed)?;
        let mut n = listed.len() as u64;
        self.comm.process_at_rank(0).broadcast_into(&mut n);
        listed.resize(n as usize, 0);
        if n > 0 {
            self.comm.process_at_rank(0).broadcast_into(&mut listed[..]);
        }
        if let Some(want) = only {
            listed.retain(|&v| v == want);
            if listed.is_empty() {
                return Err(Error::NoSuchVersion {
                    dir: self.store.dir().to_path_buf(),
                    version: want,
                });
            }
        }
        let mut tried: Vec<(u64, Vec<RankFailure>)> = Vec::new();
        for &v in listed.iter().rev() {
            let here = self.store.check_rank(v, self.rank, self.size);
            let mut f = failures(self.comm, here.as_ref().err().map(|e| e as &dyn Display));
            if f.is_empty() && restore {
                let restored = self.ck.restore(Some(v));
                f = failures(
                    self.comm,
                    restored.as_ref().err().map(|e| e as &dyn Display),
                );
            }
            if f.is_empty() {
                if !tried.is_empty() && self.rank == 0 {
                    tracing::warn!(
                        "{}: restarted from version {v}, not from newer committed versions: {}",
                        self.store.dir().display(),
                        list_tried(&tried)
                    );
                }
                return Ok(Some(v));
            }
            self.fall_back(v, f, &mut tried);
        }
        self.give_up(tried)
    }

    /// Notes (rank 0 logs) that committed version `v` cannot be restored for reasons `f`.
    fn fall_back(&self, v: u64, f: Vec<RankFailure>, tried: &mut Vec<(u64, Vec<RankFailure>)>) {
        if self.rank == 0 {
            tracing::warn!(
                "{}: committed version {v} cannot be restored ({}); trying the one before",
                self.store.dir().display(),
                list_failures(&f)
            );
        }
        tried.push((v, f));
    }

    /// A restart that found no usable version: a fresh start if none was committed, else
    /// [`Error::NoRestorableVersion`].
    fn give_up(&self, tried: Vec<(u64, Vec<RankFailure>)>) -> Result<Option<u64>> {
        if tried.is_empty() {
            return Ok(None);
        }
        Err(Error::NoRestorableVersion {
            dir: self.store.dir().to_path_buf(),
            tried,
        })
    }

    /// The version number a new collective checkpoint gets: above every version on every
    /// rank's disk and above the newest commit record (a compaction may have removed rank
    /// files, never a newer commit record's number).
    fn next_version(&self) -> Result<u64> {
        let floor = agree(
            self.comm,
            "find the next version number",
            self.local_floor(),
        )?;
        Ok(self.all_max_u64(floor) + 1)
    }

    /// This rank's floor for the next version number: its newest version, and on rank 0 also
    /// the newest commit record.
    fn local_floor(&self) -> ckpt_engine::Result<u64> {
        if let Some(lv) = &self.levels {
            return self.levels_floor(lv);
        }
        let floor = self.ck.version_floor()?;
        if self.rank != 0 {
            return Ok(floor);
        }
        Ok(floor.max(self.store.commits()?.last().copied().unwrap_or(0)))
    }

    /// Gathers every rank's identity of its file of `version` (zeros where it has none) at
    /// rank 0, which writes the commit record if `write` (with storage levels: sends it to
    /// every rank, and each node-local cache's leader writes it). Returns this rank's outcome
    /// (`Ok` on ranks that write nothing) and, with levels, the record. Collective.
    fn gather_commit(
        &self,
        version: u64,
        local: Option<&Identity>,
        write: bool,
    ) -> (ckpt_engine::Result<()>, Option<CommitRecord>) {
        let ident: Vec<u8> = match local {
            Some(id) => [&id.file_id[..], &id.index_checksum[..]].concat(),
            None => vec![0u8; 48],
        };
        let root = self.comm.process_at_rank(0);
        let all = if self.rank != 0 {
            root.gather_into(&ident[..]);
            None
        } else {
            let mut all = vec![0u8; 48 * self.size as usize];
            root.gather_into_root(&ident[..], &mut all[..]);
            Some(all)
        };
        if !write {
            return (Ok(()), None);
        }
        if self.levels.is_some() {
            let (out, rec) = self.levels_commit(all, version);
            return (out, Some(rec));
        }
        match all {
            Some(all) => (self.store.write_commit(&commit_record(version, &all)), None),
            None => (Ok(()), None),
        }
    }

    /// Collective checkpoint (two-phase commit). On success every rank returns the same
    /// version; on failure every rank returns the same error, naming each failing rank and
    /// its reason, and the job may carry on and checkpoint again later.
    pub fn checkpoint(&mut self) -> Result<CommitStats> {
        let t0 = Instant::now();
        // An asynchronous checkpoint in flight is committed (or reported) first.
        if self.pending.is_some() {
            self.collect()?;
        }
        // Phase 0: agree on the number.
        let version = self.next_version()?;
        // Phase 1: every rank writes and fsyncs its file.
        let t1 = Instant::now();
        let local = self.write_local(version);
        let local_secs = t1.elapsed().as_secs_f64();
        let slowest_local_secs = self.all_max_f64(local_secs);
        // With partner copies, each rank's file also goes to its partner on another node.
        let partner = self.protect(version, local.is_ok());
        // Phase 2: did everyone succeed?
        let reason = match (&local, partner) {
            (Err(e), _) => Some(e.to_string()),
            (Ok(_), p) => p,
        };
        let failed = failures(self.comm, reason.as_ref().map(|r| r as &dyn Display));
        let identity = local.as_ref().ok().map(|s| &s.identity);
        let (commit, record) = self.gather_commit(version, identity, failed.is_empty());
        if !failed.is_empty() {
            return Err(Error::NotCommitted {
                version,
                failures: failed,
            });
        }
        // Phase 3: everyone learns the outcome (and rank 0's reason if it could not commit).
        let committed = failures(self.comm, commit.as_ref().err().map(|e| e as &dyn Display));
        match local {
            Ok(local) if committed.is_empty() => {
                self.check_halt();
                let partner_secs = self.partner_secs();
                if let Some(rec) = record {
                    self.after_commit(rec);
                }
                Ok(CommitStats {
                    version,
                    local,
                    total_secs: t0.elapsed().as_secs_f64(),
                    slowest_local_secs,
                    partner_secs,
                })
            }
            _ => Err(Error::NotCommitted {
                version,
                failures: committed,
            }),
        }
    }

    /// Starts a collective checkpoint and returns once this rank's snapshot is taken (see
    /// [`Checkpointer::checkpoint_async`]); every rank then computes while its version is
    /// written. The version is committed (its commit record written) only once every rank's
    /// flush is durable, which the job learns at the next `checkpoint_async`, `checkpoint`,
    /// [`wait`](Self::wait) or restart: no collective is spent on it in between, and this
    /// call costs fewer collectives than a blocking checkpoint.
    ///
    /// This call first collects the previous asynchronous checkpoint (waiting for this
    /// rank's flush, if still running). If it did not commit, every rank returns the same
    /// [`Error::NotCommitted`] naming each failing rank, and no new checkpoint is started.
    /// A rank whose own start fails reports it when the version is collected: the version
    /// then commits nowhere.
    pub fn checkpoint_async(&mut self) -> Result<AsyncStarted> {
        let (committed, floor) = self.collect()?;
        let version = floor + 1;
        let local = self.start_local(version);
        if let Err(e) = &local {
            tracing::warn!("rank {}: version {version} did not start: {e}", self.rank);
        }
        self.pending = Some(Pending {
            version,
            started: Instant::now(),
            local,
        });
        Ok(AsyncStarted { version, committed })
    }

    /// Waits until the asynchronous checkpoint in flight (if any) is durable on every rank
    /// and commits it: `Ok(Some(stats))` with what was committed, `Ok(None)` when none was in
    /// flight. Collective. Call it before the job ends (after the last `checkpoint_async`):
    /// dropping a `Job` finishes this rank's flush but cannot commit the version.
    ///
    /// With storage levels ([`Job::open_storage`]) it also waits for the flushes to
    /// persistent storage in flight, commits them there, and flushes the newest due version
    /// if it is not there yet; a failed flush is an error (the versions stay committed in
    /// the node-local caches).
    pub fn wait(&mut self) -> Result<Option<CommitStats>> {
        let committed = self.collect().map(|(c, _)| c)?;
        self.drain_flushes()?;
        Ok(committed)
    }

    fn partner_secs(&self) -> f64 {
        self.levels.as_ref().map_or(0.0, |l| l.partner_secs)
    }

    fn start_local(&mut self, version: u64) -> ckpt_engine::Result<ckpt_engine::AsyncCheckpoint> {
        self.injected(version)?;
        self.ck.checkpoint_async_numbered(version)
    }

    /// Collects the pending asynchronous checkpoint: waits for this rank's flush, agrees on
    /// every rank's outcome, and commits the version if all succeeded. Returns what was
    /// committed and the floor for the next version number (the maximum over ranks of their
    /// newest version, and over the commit records). Collective: four collectives whether or
    /// not one is pending (a maximum, an agreement, a gather, an agreement).
    fn collect(&mut self) -> Result<(Option<CommitStats>, u64)> {
        let pending = self.pending.take();
        let outcome = pending.map(|p| {
            let local = p.local.and_then(ckpt_engine::AsyncCheckpoint::wait);
            (p.version, p.started, local)
        });
        let floor = self.local_floor();
        // One maximum: the floor, and the slowest rank's flush (the bits of non-negative
        // doubles order as the doubles do).
        let flush_secs = match &outcome {
            Some((_, _, Ok(s))) => {
                s.blocked_secs.max(0.0) + s.scan_secs.max(0.0) + s.write_secs.max(0.0)
            }
            _ => 0.0,
        };
        let mine = [*floor.as_ref().unwrap_or(&0), flush_secs.to_bits()];
        let mut all = [0u64; 2];
        self.comm
            .all_reduce_into(&mine[..], &mut all[..], SystemOperation::max());
        let partner = match &outcome {
            Some((v, _, local)) => self.protect(*v, local.is_ok()),
            None => None,
        };
        let reason: Option<String> = match (&floor, &outcome) {
            (Err(e), _) => Some(format!("find the next version number: {e}")),
            (_, Some((v, _, Err(e)))) => Some(format!("version {v}: {e}")),
            _ => partner,
        };
        let failed = failures(self.comm, reason.as_ref().map(|r| r as &dyn Display));
        let Some((version, started, local)) = outcome else {
            return if failed.is_empty() {
                Ok((None, all[0]))
            } else {
                Err(Error::Ranks {
                    op: "find the next version number",
                    failures: failed,
                })
            };
        };
        if !failed.is_empty() {
            return Err(Error::NotCommitted {
                version,
                failures: failed,
            });
        }
        let (commit, record) =
            self.gather_commit(version, local.as_ref().ok().map(|s| &s.identity), true);
        let committed = failures(self.comm, commit.as_ref().err().map(|e| e as &dyn Display));
        match local {
            Ok(local) if committed.is_empty() => {
                self.check_halt();
                let partner_secs = self.partner_secs();
                if let Some(rec) = record {
                    self.after_commit(rec);
                }
                Ok((
                    Some(CommitStats {
                        version,
                        local,
                        total_secs: started.elapsed().as_secs_f64(),
                        slowest_local_secs: f64::from_bits(all[1]),
                        partner_secs,
                    }),
                    all[0].max(version),
                ))
            }
            _ => Err(Error::NotCommitted {
                version,
                failures: committed,
            }),
        }
    }

    fn write_local(&mut self, version: u64) -> ckpt_engine::Result<ckpt_engine::CheckpointStats> {
        self.injected(version)?;
        self.ck.checkpoint_numbered(version)
    }

    /// The failure injected into this rank's part of `version`, if any (feature
    /// `fault-injection`; `Ok` otherwise).
    fn injected(&self, version: u64) -> ckpt_engine::Result<()> {
        #[cfg(feature = "fault-injection")]
        if self.inject_failure == Some(version) {
            return Err(ckpt_engine::Error::Io {
                path: self.store.rank_dir(self.rank),
                op: "write (injected failure)",
                source: std::io::Error::other("injected"),
            });
        }
        let _ = version;
        Ok(())
    }
}

/// The commit record of `version` from the gathered 48-byte identities of every rank.
fn commit_record(version: u64, all: &[u8]) -> CommitRecord {
    let ranks = all
        .chunks(48)
        .map(|c| {
            let mut id = Identity {
                file_id: [0; 16],
                index_checksum: [0; 32],
            };
            id.file_id.copy_from_slice(&c[..16]);
            id.index_checksum.copy_from_slice(&c[16..]);
            id
        })
        .collect();
    CommitRecord::new(version, ranks)
}
