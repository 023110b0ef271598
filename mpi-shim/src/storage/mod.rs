//! Multi-level storage for a job: a node-local cache (L1), partner copies on another node
//! (L2), and persistent storage (L4) flushed in the foreground or in the background.
//!
//! Each node's cache is a job store (see [`ckpt_engine::job`]) at the `[storage] local`
//! template's path. It holds the chains of the node's ranks, the partner copies of the ranks
//! it protects (in those ranks' own directories: the same layout as theirs), and a copy of
//! every commit record, written by the lowest rank sharing the cache. A collective
//! checkpoint ([`Job::checkpoint`]) writes each rank's delta into its cache, sends it over
//! MPI to its partner, which stores it in its own cache, and only when both copies of every
//! rank are durable writes the commit records. Persistent storage is a job store of the same
//! layout: each rank's flush copies its committed version there, parents first, and rank 0
//! writes the persistent commit record only when every rank's flush is done, so the
//! persistent side never lists a version with missing files.
//!
//! A restart ([`Job::restart`]) tries the committed versions newest first and, for each,
//! the levels in order: every rank's cache; else the missing ranks' chains rebuilt from
//! their partners' copies; else persistent storage, copied back into the caches. The level
//! used is logged and kept ([`Job::restart_level`]).

pub mod config;
mod exchange;
mod flush;
pub mod topology;

use std::fmt::Display;
use std::path::Path;
use std::time::Instant;

use ckpt_engine::job::{copy_chain, CommitRecord, CopyReport, JobStore};
use ckpt_engine::{Checkpointer, Config};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::topology::Communicator;

pub use config::{job_id, FlushMode, StorageConfig};
pub use topology::{Topology, SIMULATE_NODES_VAR};

use crate::{agree, failures, Error, Job, RankFailure, Result};
use exchange::{exchange, exchange_files, Outgoing};
use flush::{Flusher, Task};

/// The storage level a restart used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Every rank's node-local cache.
    Local,
    /// Some ranks' chains rebuilt from their partners' copies.
    Partner,
    /// Persistent storage.
    Persistent,
}

impl Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Local => "local",
            Level::Partner => "partner",
            Level::Persistent => "persistent",
        })
    }
}

/// The state of the flushes to persistent storage, as this rank sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushStatus {
    /// The version this rank's flush thread is copying now, if any.
    pub in_flight: Option<u64>,
    /// The newest version committed on persistent storage (0: none).
    pub persisted: u64,
    /// Bytes this rank's last finished flush copied.
    pub last_bytes: u64,
    /// Seconds it took.
    pub last_secs: f64,
}

/// A job's levels beside its node-local cache (`Job::store`).
pub(crate) struct Levels {
    cfg: StorageConfig,
    topo: Topology,
    /// This rank writes its cache's commit records (the lowest rank sharing the cache).
    leader: bool,
    persistent: Option<JobStore>,
    flusher: Option<Flusher>,
    /// The version every rank's flush thread was handed, with its commit record.
    flushing: Option<CommitRecord>,
    /// The version whose persistent commit record rank 0's thread was handed.
    committing: Option<CommitRecord>,
    /// The newest version committed on persistent storage.
    persisted: u64,
    /// The newest committed version due for persistent storage.
    candidate: Option<CommitRecord>,
    /// A version whose flush failed: not tried again (a later one is).
    failed: Option<u64>,
    /// Why the last flush failed, on which ranks.
    last_failure: Option<Vec<RankFailure>>,
    last_done: flush::Done,
    restarted_from: Option<(u64, Level)>,
    /// Seconds of this rank's last partner copy.
    pub(crate) partner_secs: f64,
}

/// What a restart attempt of one version found.
enum Attempt {
    Restored(Level),
    Failed(Vec<RankFailure>),
}

impl<'c, C: Communicator> Job<'c, C> {
    /// Opens a job with the storage levels of `storage` (see the module documentation),
    /// collectively. Fails on every rank, naming each failing rank and why, if any rank
    /// cannot open its cache or persistent storage, and with [`Error::Config`] when the
    /// settings cannot be honoured (partner copies on a single node, say).
    pub fn open_storage(
        comm: &'c C,
        storage: &StorageConfig,
        name: &str,
        config: Config,
    ) -> Result<Self> {
        storage.check().map_err(Error::Config)?;
        Self::refuse_per_rank_retention(&config, Path::new(&storage.local))?;
        let rank = comm.rank() as u32;
        let size = comm.size() as u32;
        let simulated = agree(
            comm,
            "read CKPT_SIMULATE_NODES",
            Topology::simulated_nodes(size),
        )?;
        let topo = Topology::find(comm, simulated);
        if storage.partner {
            topo.check_partners().map_err(Error::Config)?;
            if topo.simulated
                && !storage.local.contains("{node}")
                && !storage.local.contains("{rank}")
            {
                return Err(Error::Config(format!(
                    "[storage] local {:?}: with {SIMULATE_NODES_VAR} and partner copies, put {{node}} in the path so that each simulated node has its own cache",
                    storage.local
                )));
            }
        }
        let local = storage.local_dir(topo.node_of[rank as usize], rank, &job_id());
        // Ranks sharing a cache (same node, same path): the lowest writes its records.
        let key = path_key(&local, topo.node_of[rank as usize]);
        let mut keys = vec![0u64; size as usize];
        comm.all_gather_into(&key, &mut keys[..]);
        let leader = !keys[..rank as usize].contains(&key);
        let store = Self::open_job_store(comm, &local, name, leader)?;
        let persistent = match &storage.persistent {
            Some(p) => Some(Self::open_job_store(comm, p, name, rank == 0)?),
            None => None,
        };
        let ck = agree(
            comm,
            "open this rank's chain",
            store
                .checked_rank_dir(rank)
                .and_then(|d| Checkpointer::open(d, name, config)),
        )?;
        let flusher = match &persistent {
            Some(_) => Some(agree(comm, "start the flush thread", Flusher::start())?),
            None => None,
        };
        let newest = match (&persistent, rank) {
            (Some(p), 0) => p.commits().map(|c| c.last().copied().unwrap_or(0)),
            _ => Ok(0),
        };
        let mut persisted = agree(comm, "list the persistent commit records", newest)?;
        comm.process_at_rank(0).broadcast_into(&mut persisted);
        if rank == 0 {
            tracing::info!(
                "{}: {} node(s){}, cache {}, partner copies {}, persistent {}",
                name,
                topo.nodes,
                if topo.simulated { " (simulated)" } else { "" },
                local.display(),
                if storage.partner { "on" } else { "off" },
                storage
                    .persistent
                    .as_ref()
                    .map_or("none".into(), |p| format!(
                        "{} ({:?}, every {} version(s))",
                        p.display(),
                        storage.mode,
                        storage.persistent_interval
                    )),
            );
        }
        let mut job = Job::assemble(comm, store, ck);
        job.levels = Some(Levels {
            cfg: storage.clone(),
            topo,
            leader,
            persistent,
            flusher,
            flushing: None,
            committing: None,
            persisted,
            candidate: None,
            failed: None,
            last_failure: None,
            last_done: flush::Done::default(),
            restarted_from: None,
            partner_secs: 0.0,
        });
        Ok(job)
    }

    /// The level and version the last restart used (`None` before a restart, after a fresh
    /// start, or without storage levels).
    pub fn restart_level(&self) -> Option<(u64, Level)> {
        self.levels.as_ref().and_then(|l| l.restarted_from)
    }

    /// The flushes to persistent storage as this rank sees them (`None` without persistent
    /// storage). No communication.
    pub fn flush_status(&self) -> Option<FlushStatus> {
        let lv = self.levels.as_ref()?;
        let fl = lv.flusher.as_ref()?;
        Some(FlushStatus {
            in_flight: lv
                .flushing
                .as_ref()
                .filter(|_| !fl.idle())
                .map(|r| r.version),
            persisted: lv.persisted,
            last_bytes: lv.last_done.bytes,
            last_secs: lv.last_done.secs,
        })
    }

    /// This rank's floor for the next version number with levels: its chain, its cache's
    /// records (leaders) and the newest version on persistent storage (known since the open,
    /// so no listing of the parallel file system per checkpoint).
    pub(crate) fn levels_floor(&self, lv: &Levels) -> ckpt_engine::Result<u64> {
        let mut floor = self.ck.version_floor()?.max(lv.persisted);
        if lv.leader {
            floor = floor.max(self.store.commits()?.last().copied().unwrap_or(0));
        }
        Ok(floor)
    }

    /// With levels: rank 0 builds the commit record from the gathered identities and sends
    /// it to every rank; each cache's leader writes it. Returns this rank's outcome and the
    /// record. Collective.
    pub(crate) fn levels_commit(
        &self,
        all: Option<Vec<u8>>,
        version: u64,
    ) -> (ckpt_engine::Result<()>, CommitRecord) {
        let mut bytes = match all {
            Some(ids) => crate::commit_record(version, &ids).encode(),
            None => Vec::new(),
        };
        let root = self.comm.process_at_rank(0);
        let mut n = bytes.len() as u64;
        root.broadcast_into(&mut n);
        bytes.resize(n as usize, 0);
        root.broadcast_into(&mut bytes[..]);
        let here = Path::new("(commit record from rank 0)");
        let rec = match CommitRecord::decode(here, &bytes) {
            Ok(r) => r,
            Err(e) => return (Err(e), CommitRecord::new(version, Vec::new())),
        };
        let leader = self.levels.as_ref().is_some_and(|l| l.leader);
        let out = if leader {
            self.store.ensure_commit(&rec)
        } else {
            Ok(())
        };
        (out, rec)
    }

    /// Sends this rank's new file of `version` (if `local_ok`) to its partner and stores the
    /// file its own protégé sends; when a stored copy's chain is incomplete (a partner that
    /// lost its cache), the whole chain follows. Returns why this rank could not hold its
    /// protégé's copy, if it could not. Collective; no-op without partner copies.
    pub(crate) fn protect(&mut self, version: u64, local_ok: bool) -> Option<String> {
        let lv = self.levels.as_ref().filter(|l| l.cfg.partner)?;
        let t0 = Instant::now();
        let (succ, pred) = (
            lv.topo.holder[self.rank as usize],
            lv.topo.held_by(self.rank),
        );
        let mut reason = None;
        let mut out = Outgoing::default();
        if local_ok {
            let own = self.store.rank_store(self.rank).map(|s| s.path_of(version));
            if let Err(e) = own.and_then(|p| out.add(&file_name(&p), &p)) {
                reason = Some(format!(
                    "send version {version} to partner rank {succ}: {e}"
                ));
                out = Outgoing::default();
            }
        }
        let held = self.held_store(pred);
        let (got, unsent) = exchange_files(self.comm, succ, pred, &out, held.as_ref().ok());
        if let Some(e) = unsent {
            reason.get_or_insert(format!(
                "send version {version} to partner rank {succ}: {e}"
            ));
        }
        let mut need = false;
        match (got, held) {
            (Ok(files), Ok(_)) => {
                if let Some(file) = files.last() {
                    need = ckpt_engine::catalog::check_complete(file).is_err();
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                reason.get_or_insert(format!("partner copy of rank {pred}: {e}"));
            }
        }
        if let Some(e) = self.send_chains_if_needed(version, need) {
            reason.get_or_insert(e);
        }
        if let Some(lv) = self.levels.as_mut() {
            lv.partner_secs = t0.elapsed().as_secs_f64();
        }
        reason
    }

    /// The chain in this rank's cache that holds rank `pred`'s partner copies.
    fn held_store(&self, pred: u32) -> std::result::Result<ckpt_engine::Store, String> {
        self.store
            .checked_rank_dir(pred)
            .and_then(|d| ckpt_engine::Store::new(d, self.store.name()))
            .map_err(|e| e.to_string())
    }

    /// Every rank whose copy of its protégé's chain of `version` is incomplete (`need`) gets
    /// the whole chain from it. Returns why this rank could not send or store it. Collective
    /// (one all-reduce when nobody needs anything).
    fn send_chains_if_needed(&mut self, version: u64, need: bool) -> Option<String> {
        let lv = self.levels.as_ref()?;
        let (succ, pred) = (
            lv.topo.holder[self.rank as usize],
            lv.topo.held_by(self.rank),
        );
        let mut any = 0u8;
        self.comm
            .all_reduce_into(&u8::from(need), &mut any, SystemOperation::max());
        if any == 0 {
            return None;
        }
        // Tell the protégé; learn whether my partner needs my chain.
        let asks = exchange(self.comm, pred, succ, &[u8::from(need)]);
        let mut reason = None;
        let mut out = Outgoing::default();
        if asks.first() == Some(&1) {
            let own = self.store.rank_store(self.rank).map(|s| s.path_of(version));
            match own.and_then(|p| Outgoing::chain(&p)) {
                Ok(o) => out = o,
                Err(e) => {
                    reason = Some(format!(
                        "send the chain of version {version} to partner rank {succ}: {e}"
                    ))
                }
            }
        }
        let held = if need {
            self.held_store(pred).ok()
        } else {
            None
        };
        let (got, unsent) = exchange_files(self.comm, succ, pred, &out, held.as_ref());
        if let Some(e) = unsent {
            reason.get_or_insert(format!(
                "send the chain of version {version} to rank {succ}: {e}"
            ));
        }
        if need {
            match got {
                Ok(files) => match files.last() {
                    Some(file) => {
                        if let Err(e) = ckpt_engine::catalog::check_complete(file) {
                            reason.get_or_insert(format!("partner copy of rank {pred}: {e}"));
                        }
                    }
                    None => {
                        reason.get_or_insert(format!(
                            "partner copy of rank {pred}: incomplete, and rank {pred} sent no chain"
                        ));
                    }
                },
                Err(e) => {
                    reason.get_or_insert(format!("partner copy of rank {pred}: {e}"));
                }
            }
        }
        reason
    }

    /// After version `rec` committed in the caches: hands it to the flush (when due) and
    /// applies the caches' retention. Collective; never fails the committed version
    /// (problems are logged, and reported by [`wait`](Self::wait)).
    pub(crate) fn after_commit(&mut self, rec: CommitRecord) {
        let Some(lv) = self.levels.as_mut() else {
            return;
        };
        if rec.version % lv.cfg.persistent_interval == 0 {
            lv.candidate = Some(rec);
        }
        let sync = lv.cfg.mode == FlushMode::Sync;
        if lv.persistent.is_some() {
            self.flush_gate(sync);
        } else {
            self.retain_local();
        }
    }

    /// Waits for the flushes in flight, commits them on persistent storage, and flushes the
    /// newest due version if it is not there yet. `Err` if a flush failed. Collective.
    pub(crate) fn drain_flushes(&mut self) -> Result<()> {
        let Some(lv) = self.levels.as_mut() else {
            return Ok(());
        };
        lv.last_failure = None;
        self.flush_gate(true);
        match self.levels.as_mut().and_then(|l| l.last_failure.take()) {
            Some(failures) => Err(Error::Ranks {
                op: "flush to persistent storage",
                failures,
            }),
            None => Ok(()),
        }
    }

    /// The flush protocol, at a point every rank reaches (a commit, a wait). Only when every
    /// rank's flush thread is idle, one step: a flushed version (if every rank succeeded)
    /// goes to rank 0's thread, which writes its persistent commit record and compacts
    /// persistent storage when due; or that record's outcome is taken; and then the next
    /// due version is handed to the threads. No file-system call on persistent storage is
    /// made by the application's thread. With `wait`, waits for the threads
    /// and goes on until nothing is due. Collective.
    fn flush_gate(&mut self, wait: bool) {
        loop {
            let Some(lv) = self.levels.as_mut() else {
                return;
            };
            let (Some(fl), Some(ps)) = (lv.flusher.as_mut(), lv.persistent.clone()) else {
                return;
            };
            if wait {
                fl.wait_idle();
            }
            let idle = u8::from(fl.idle());
            let mut all_idle = 0u8;
            self.comm
                .all_reduce_into(&idle, &mut all_idle, SystemOperation::min());
            if all_idle == 0 {
                return;
            }
            let lv = self.levels.as_mut().expect("levels");
            if let Some(rec) = lv.committing.take() {
                // Rank 0's thread wrote the persistent commit record (and compacted).
                let out = match (self.rank, lv.flusher.as_ref().and_then(|f| f.take_last())) {
                    (0, Some(out)) => out,
                    (0, None) => Err("the flush thread gave no outcome".into()),
                    _ => Ok(flush::Done::default()),
                };
                if let Ok(d) = &out {
                    if let Some(w) = &d.warning {
                        tracing::warn!("{w}");
                    }
                }
                match agree(self.comm, "write the persistent commit record", out) {
                    Ok(_) => {
                        let lv = self.levels.as_mut().expect("levels");
                        lv.persisted = lv.persisted.max(rec.version);
                        if self.rank == 0 {
                            tracing::info!(
                                "version {} is on persistent storage {}",
                                rec.version,
                                ps.dir().display()
                            );
                        }
                    }
                    Err(e) => self.flush_failed(rec.version, e),
                }
            } else if let Some(rec) = lv.flushing.take() {
                let out = lv
                    .flusher
                    .as_ref()
                    .and_then(|f| f.take_last())
                    .unwrap_or_else(|| Err("the flush thread gave no outcome".into()));
                if let Ok(d) = &out {
                    lv.last_done = d.clone();
                }
                match agree(self.comm, "flush to persistent storage", out) {
                    Ok(_) => {
                        // Every rank's files are there: rank 0's thread writes the record.
                        let lv = self.levels.as_mut().expect("levels");
                        if self.rank == 0 {
                            let task = Task::Commit {
                                store: ps.clone(),
                                rec: rec.clone(),
                                keep: lv.cfg.keep_persistent,
                            };
                            if let Some(Err(e)) = lv.flusher.as_mut().map(|f| f.send(task)) {
                                tracing::warn!("{e}");
                            }
                        }
                        lv.committing = Some(rec);
                        if wait {
                            continue;
                        }
                        return;
                    }
                    Err(e) => self.flush_failed(rec.version, e),
                }
            }
            // Every flush thread is idle: the caches' retention cannot pull a file from under
            // a flush (and spares a due version not yet flushed).
            let lv = self.levels.as_ref().expect("levels");
            if lv
                .candidate
                .as_ref()
                .is_none_or(|c| c.version <= lv.persisted)
            {
                self.retain_local();
            }
            let lv = self.levels.as_mut().expect("levels");
            let due = lv
                .candidate
                .clone()
                .filter(|c| c.version > lv.persisted && lv.failed != Some(c.version));
            let Some(rec) = due else {
                return;
            };
            let task = self.store.rank_store(self.rank).and_then(|s| {
                Ok(Task::Flush {
                    version: rec.version,
                    src: s.path_of(rec.version),
                    dst: ckpt_engine::Store::new(ps.checked_rank_dir(self.rank)?, ps.name())?,
                    want: rec.ranks[self.rank as usize],
                })
            });
            let lv = self.levels.as_mut().expect("levels");
            let fl = lv.flusher.as_mut().expect("flusher");
            match task {
                Ok(t) => {
                    if let Err(e) = fl.send(t) {
                        tracing::warn!("rank {}: {e}", self.rank);
                    }
                }
                Err(e) => tracing::warn!("rank {}: {e}", self.rank),
            }
            lv.flushing = Some(rec);
            if !wait {
                return;
            }
        }
    }

    /// A flush (or its persistent commit record) failed on some ranks: logged, kept for
    /// [`wait`](Self::wait), and that version is not tried again (a later one is).
    fn flush_failed(&mut self, version: u64, e: Error) {
        let Some(lv) = self.levels.as_mut() else {
            return;
        };
        lv.failed = Some(version);
        if let Error::Ranks { failures, .. } = &e {
            lv.last_failure = Some(failures.clone());
        }
        if self.rank == 0 {
            tracing::warn!("version {version} is not on persistent storage: {e}; a later version will be flushed");
        }
    }

    /// The caches' retention (`keep_local`): each cache's leader keeps the newest committed
    /// versions, once twice as many are there. Called only while no flush reads the caches.
    fn retain_local(&mut self) {
        let Some(lv) = self.levels.as_ref() else {
            return;
        };
        let Some(keep) = lv.cfg.keep_local else {
            return;
        };
        if !lv.leader {
            return;
        }
        let due = self.store.commits().map(|c| c.len() >= 2 * keep);
        match due.and_then(|due| {
            if due {
                self.store.compact(keep, false).map(drop)
            } else {
                Ok(())
            }
        }) {
            Ok(()) => {}
            Err(e) => tracing::warn!(
                "rank {}: retention of {}: {e}",
                self.rank,
                self.store.dir().display()
            ),
        }
    }

    /// Restart with levels: the committed versions of every cache and of persistent storage,
    /// newest first, each tried at every level in turn. See [`Job::restart`].
    pub(crate) fn restart_levels(
        &mut self,
        only: Option<u64>,
        restore: bool,
    ) -> Result<Option<u64>> {
        let lv = self.levels.as_ref().expect("levels");
        let leader = lv.leader;
        let persistent = lv.persistent.clone();
        let local: ckpt_engine::Result<Vec<u64>> = if leader {
            self.store.commits()
        } else {
            Ok(Vec::new())
        };
        let local = agree(self.comm, "list the cache's commit records", local)?;
        let remote: ckpt_engine::Result<Vec<u64>> = match (&persistent, self.rank) {
            (Some(p), 0) => p.commits(),
            _ => Ok(Vec::new()),
        };
        let remote = agree(self.comm, "list the persistent commit records", remote)?;
        let mut all = self.union(&[&local[..], &remote[..]].concat());
        if let Some(want) = only {
            all.retain(|&v| v == want);
            if all.is_empty() {
                return Err(Error::NoSuchVersion {
                    dir: self.store.dir().to_path_buf(),
                    version: want,
                });
            }
        }
        let mut tried = Vec::new();
        for &v in all.iter().rev() {
            match self.try_version(v, local.contains(&v), remote.contains(&v), restore) {
                Attempt::Restored(level) => {
                    if self.rank == 0 {
                        tracing::info!(
                            "{}: restarted from version {v} ({level} level){}",
                            self.store.name(),
                            if tried.is_empty() {
                                String::new()
                            } else {
                                format!(", not from newer versions: {}", crate::list_tried(&tried))
                            }
                        );
                    }
                    if let Some(lv) = self.levels.as_mut() {
                        lv.restarted_from = Some((v, level));
                    }
                    return Ok(Some(v));
                }
                Attempt::Failed(f) => self.fall_back(v, f, &mut tried),
            }
        }
        self.give_up(tried)
    }

    /// The sorted union of every rank's `mine`. Collective.
    fn union(&self, mine: &[u64]) -> Vec<u64> {
        let size = self.comm.size() as usize;
        let n = mine.len() as u64;
        let mut counts = vec![0u64; size];
        self.comm.all_gather_into(&n, &mut counts[..]);
        let longest = counts.iter().copied().max().unwrap_or(0) as usize;
        let mut padded = mine.to_vec();
        padded.resize(longest, 0);
        let mut all = vec![0u64; longest * size];
        if longest > 0 {
            self.comm.all_gather_into(&padded[..], &mut all[..]);
        }
        let mut out: Vec<u64> = all
            .chunks(longest.max(1))
            .zip(&counts)
            .flat_map(|(c, &n)| c[..n as usize].to_vec())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The commit record of `v`, read by the lowest rank whose cache has it (else rank 0
    /// from persistent storage) and sent to every rank. Collective.
    fn shared_record(
        &self,
        v: u64,
        in_cache: bool,
        on_persistent: bool,
    ) -> std::result::Result<CommitRecord, String> {
        let me = if in_cache { self.rank } else { u32::MAX };
        let mut src = 0u32;
        self.comm
            .all_reduce_into(&me, &mut src, SystemOperation::min());
        let from_persistent = src == u32::MAX;
        let src = if from_persistent { 0 } else { src };
        let mut bytes = Vec::new();
        if self.rank == src {
            let read = if from_persistent {
                match (
                    &self.levels.as_ref().and_then(|l| l.persistent.clone()),
                    on_persistent,
                ) {
                    (Some(p), true) => p.read_commit(v).map(|r| r.encode()),
                    _ => Err(ckpt_engine::Error::Config(format!(
                        "no commit record of version {v}"
                    ))),
                }
            } else {
                self.store.read_commit(v).map(|r| r.encode())
            };
            bytes = read.unwrap_or_default();
        }
        let root = self.comm.process_at_rank(src as i32);
        let mut n = bytes.len() as u64;
        root.broadcast_into(&mut n);
        bytes.resize(n as usize, 0);
        if n > 0 {
            root.broadcast_into(&mut bytes[..]);
        } else {
            return Err(format!(
                "rank {src} could not read the commit record of version {v}"
            ));
        }
        CommitRecord::decode(Path::new("(commit record)"), &bytes).map_err(|e| e.to_string())
    }

    /// Tries to restart from version `v` at each level in turn. Collective.
    fn try_version(
        &mut self,
        v: u64,
        in_cache: bool,
        on_persistent: bool,
        restore: bool,
    ) -> Attempt {
        let rec = match self.shared_record(v, in_cache, on_persistent) {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Failed(vec![RankFailure {
                    rank: 0,
                    message: e,
                }])
            }
        };
        let size = self.size;
        let lv = self.levels.as_ref().expect("levels");
        let partner = lv.cfg.partner;
        let persistent = lv.persistent.clone();
        let (succ, pred) = (
            lv.topo.holder[self.rank as usize],
            lv.topo.held_by(self.rank),
        );
        let mut why: Vec<RankFailure> = Vec::new();
        let mut note = |level: &str, f: Vec<RankFailure>| {
            why.extend(f.into_iter().map(|r| RankFailure {
                rank: r.rank,
                message: format!("{level}: {}", r.message),
            }));
        };
        // L1: every rank's cache.
        let here = self.store.check_rank_record(&rec, self.rank, size);
        let f = failures(self.comm, here.as_ref().err().map(|e| e as &dyn Display));
        let mut level = f.is_empty().then_some(Level::Local);
        let missing: Vec<u32> = f.iter().map(|r| r.rank).collect();
        note("local", f);
        // L2: the missing ranks' chains from their partners.
        if level.is_none() && partner {
            let mut out = Outgoing::default();
            let mut reason: Option<String> = None;
            if missing.contains(&pred) {
                let held = self
                    .store
                    .check_rank_record(&rec, pred, size)
                    .and_then(|file| Outgoing::chain(&file));
                match held {
                    Ok(o) => out = o,
                    Err(e) => {
                        reason = Some(format!(
                            "the partner copy of rank {pred} is not usable: {e}"
                        ))
                    }
                }
            }
            if restore {
                let mine = missing.contains(&self.rank);
                let own = if mine {
                    self.store.rank_store(self.rank).ok()
                } else {
                    None
                };
                let (got, unsent) = exchange_files(self.comm, pred, succ, &out, own.as_ref());
                if let Some(e) = unsent {
                    reason.get_or_insert(format!("send rank {pred} its chain: {e}"));
                }
                if mine {
                    let rebuilt = match got {
                        Ok(files) if files.is_empty() => Err("no partner copy came".to_string()),
                        Ok(_) => self
                            .store
                            .check_rank_record(&rec, self.rank, size)
                            .map(drop)
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = rebuilt {
                        reason.get_or_insert(format!("rebuilt from rank {succ}'s copy: {e}"));
                    }
                }
            }
            let f = failures(self.comm, reason.as_ref().map(|e| e as &dyn Display));
            if f.is_empty() {
                level = Some(Level::Partner);
            }
            note("partner", f);
        }
        // L4: persistent storage, copied back into the caches.
        let mut on = u8::from(on_persistent);
        self.comm.process_at_rank(0).broadcast_into(&mut on);
        if let (None, Some(ps), 1) = (level, persistent, on) {
            let got = ps
                .check_rank_record(&rec, self.rank, size)
                .and_then(|file| {
                    if restore {
                        let own = self.store.rank_store(self.rank)?;
                        copy_chain(&file, &own, None, &mut CopyReport::default())?;
                        self.store.check_rank_record(&rec, self.rank, size)?;
                    }
                    Ok(())
                });
            let f = failures(self.comm, got.as_ref().err().map(|e| e as &dyn Display));
            if f.is_empty() {
                level = Some(Level::Persistent);
            }
            note("persistent", f);
        }
        let Some(level) = level else {
            return Attempt::Failed(why);
        };
        if !restore {
            return Attempt::Restored(level);
        }
        let restored = self.ck.restore(Some(v));
        let f = failures(
            self.comm,
            restored.as_ref().err().map(|e| e as &dyn Display),
        );
        if !f.is_empty() {
            note("restore", f);
            return Attempt::Failed(why);
        }
        // Repair: every cache lists the version, every partner holds its protégé's chain.
        let lv = self.levels.as_ref().expect("levels");
        if lv.leader {
            if let Err(e) = self.store.ensure_commit(&rec) {
                tracing::warn!("rank {}: {e}", self.rank);
            }
        }
        if partner {
            let need = self.store.check_rank_record(&rec, pred, size).is_err();
            if let Some(e) = self.send_chains_if_needed(v, need) {
                tracing::warn!("rank {}: partner copies not restored: {e}", self.rank);
            }
        }
        if let Some(lv) = self.levels.as_mut() {
            if v % lv.cfg.persistent_interval == 0 || level == Level::Persistent {
                lv.candidate = Some(rec);
            }
        }
        Attempt::Restored(level)
    }
}

/// A key for "the same cache": the node and the path.
fn path_key(p: &Path, node: u32) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    node.hash(&mut h);
    h.finish()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
