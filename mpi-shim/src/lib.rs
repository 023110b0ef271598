//! # ckpt-mpi
//!
//! Rank-wide coordinated checkpoints for MPI applications, on top of `ckpt-engine`.
//!
//! Every rank keeps its own chain in a rank-sharded directory of a *job store* (layout in
//! [`ckpt_engine::job`] and `docs/FORMAT.md`). A collective [`Job::checkpoint`] is a
//! two-phase commit:
//!
//! 1. the ranks agree on the version number (one more than any rank has on disk);
//! 2. each rank writes and fsyncs its version file;
//! 3. a reduction tells whether every rank succeeded;
//! 4. only then rank 0 writes the global commit record atomically;
//! 5. a broadcast gives every rank the same outcome.
//!
//! A version exists only once its commit record does. [`Job::restart`] picks the newest
//! version that has a commit record *and* whose files verify on every rank — never the
//! maximum over ranks, which may name a version some rank never wrote.

use std::path::Path;
use std::time::Instant;

use ckpt_engine::job::{CommitRecord, JobStore};
use ckpt_engine::read::Version;
use ckpt_engine::{Checkpointer, Config, Identity};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::topology::Communicator;

/// Errors of collective operations. Every rank gets the same variant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An engine error on this rank.
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
    /// The collective checkpoint did not commit; nothing of it is visible.
    #[error("checkpoint version {version} was not committed: {why}")]
    NotCommitted {
        /// The version that was attempted.
        version: u64,
        /// This rank's error, or which ranks failed.
        why: String,
    },
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    inject_failure: Option<u64>,
}

impl<'c, C: Communicator> Job<'c, C> {
    /// Opens (creating if needed) the job store `dir` for chain `name`, collectively. Fails on
    /// every rank if the store was written by a job of another size.
    pub fn open(comm: &'c C, dir: impl AsRef<Path>, name: &str, config: Config) -> Result<Self> {
        let rank = comm.rank() as u32;
        let size = comm.size() as u32;
        let store = JobStore::new(dir.as_ref(), name)?;
        // Rank 0 creates the job description; everyone then reads it.
        let mut created_ok: i32 = 1;
        if rank == 0 && store.meta()?.is_none() {
            created_ok = match store.write_meta(size) {
                Ok(()) => 1,
                Err(ckpt_engine::Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    1
                }
                Err(_) => 0,
            };
        }
        comm.process_at_rank(0).broadcast_into(&mut created_ok);
        let meta = store.meta()?.ok_or_else(|| ckpt_engine::Error::NotFound {
            dir: dir.as_ref().to_path_buf(),
            what: "rank 0 could not create the job description".into(),
        })?;
        if meta.world_size != size {
            return Err(Error::WorldSize {
                dir: dir.as_ref().display().to_string(),
                stored: meta.world_size,
                now: size,
            });
        }
        let ck = Checkpointer::open(store.rank_dir(rank), name, config)?;
        Ok(Job {
            comm,
            store,
            ck,
            rank,
            size,
            inject_failure: None,
        })
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
    /// tests of the two-phase commit).
    #[doc(hidden)]
    pub fn inject_failure(&mut self, version: u64) {
        self.inject_failure = Some(version);
    }

    fn all_min(&self, x: i32) -> i32 {
        let mut out = 0i32;
        self.comm
            .all_reduce_into(&x, &mut out, SystemOperation::min());
        out
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
    /// files check out on every rank. Returns it, or `None` if there is none (a fresh start).
    pub fn restart(&mut self) -> Result<Option<u64>> {
        // Rank 0 lists the commit records and broadcasts them, so that all ranks try the same
        // candidates in the same order.
        let mut listed: Vec<u64> = if self.rank == 0 {
            self.store.commits().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut n = listed.len() as u64;
        self.comm.process_at_rank(0).broadcast_into(&mut n);
        listed.resize(n as usize, 0);
        if n > 0 {
            self.comm.process_at_rank(0).broadcast_into(&mut listed[..]);
        }
        for &v in listed.iter().rev() {
            let ok = self.valid_here(v) as i32;
            if self.all_min(ok) == 0 {
                continue;
            }
            let restored = self.ck.restore(Some(v));
            let ok = restored.is_ok() as i32;
            if self.all_min(ok) == 1 {
                return Ok(Some(v));
            }
            restored?;
            return Err(Error::NotCommitted {
                version: v,
                why: "restore failed on another rank".into(),
            });
        }
        Ok(None)
    }

    /// Whether this rank's file for version `v` exists, checks out, and is the one the commit
    /// record names.
    fn valid_here(&self, v: u64) -> bool {
        let Ok(rec) = self.store.read_commit(v) else {
            return false;
        };
        if rec.ranks.len() != self.size as usize {
            return false;
        }
        let Ok(store) = self.store.rank_store(self.rank) else {
            return false;
        };
        match Version::open(&store.path_of(v)) {
            Ok(version) => version.file().satisfies(&rec.ranks[self.rank as usize]),
            Err(_) => false,
        }
    }

    /// Collective checkpoint (two-phase commit). On success every rank returns the same
    /// version; on failure every rank returns [`Error::NotCommitted`] and the job may carry
    /// on and checkpoint again later.
    pub fn checkpoint(&mut self) -> Result<CommitStats> {
        let t0 = Instant::now();
        // Phase 0: agree on the number, above anything any rank has on disk.
        let local_latest = self.ck.latest_version()?.unwrap_or(0);
        let version = self.all_max_u64(local_latest) + 1;
        // Phase 1: every rank writes and fsyncs its file.
        let t1 = Instant::now();
        let local = if self.inject_failure == Some(version) {
            Err(ckpt_engine::Error::Io {
                path: self.store.rank_dir(self.rank),
                op: "write (injected failure)",
                source: std::io::Error::other("injected"),
            })
        } else {
            self.ck.checkpoint_numbered(version)
        };
        let local_secs = t1.elapsed().as_secs_f64();
        let slowest_local_secs = self.all_max_f64(local_secs);
        // Phase 2: did everyone succeed?
        let all_ok = self.all_min(local.is_ok() as i32) == 1;
        let ident: Vec<u8> = match &local {
            Ok(s) => [&s.identity.file_id[..], &s.identity.index_checksum[..]].concat(),
            Err(_) => vec![0u8; 48],
        };
        let root = self.comm.process_at_rank(0);
        let mut committed: i32 = 0;
        if self.rank == 0 {
            let mut all = vec![0u8; 48 * self.size as usize];
            root.gather_into_root(&ident[..], &mut all[..]);
            if all_ok {
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
                let rec = CommitRecord {
                    version,
                    created_unix_nanos: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0),
                    ranks,
                };
                committed = self.store.write_commit(&rec).is_ok() as i32;
            }
        } else {
            root.gather_into(&ident[..]);
        }
        // Phase 3: everyone learns the outcome.
        root.broadcast_into(&mut committed);
        match (committed == 1, local) {
            (true, Ok(local)) => Ok(CommitStats {
                version,
                local,
                total_secs: t0.elapsed().as_secs_f64(),
                slowest_local_secs,
            }),
            (_, Err(e)) => Err(Error::NotCommitted {
                version,
                why: format!("this rank failed: {e}"),
            }),
            (false, Ok(_)) => Err(Error::NotCommitted {
                version,
                why: if all_ok {
                    "rank 0 could not write the commit record".into()
                } else {
                    "another rank failed".into()
                },
            }),
        }
    }
}
