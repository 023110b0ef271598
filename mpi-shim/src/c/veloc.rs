//! The VeloC-compatible runtime behind `VELOC_*` (the `extern "C"` shims are in
//! `veloc_api.rs`).
//!
//! Each rank's version `V` of checkpoint `name` is the file `<name>-<rank>-<V>.dat`, in
//! `scratch` and again in `persistent`: a ckpt version file of chain `<name>-<rank>` in the
//! [`Naming::Dat`] naming (ckpt version `V + 1`), a delta against the rank's previous version.
//! A version is *complete* on a rank when its file, and every file it references, opens and
//! checks out in one of the two directories; it is restorable when it is complete on every
//! rank. Deleting every rank's files of `V` makes `V` unavailable, and versions that
//! reference it too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use ckpt_engine::catalog;
use ckpt_engine::compact::{self, CompactOptions};
use ckpt_engine::store::{Naming, Store};
use ckpt_engine::Checkpointer;

use super::group::Group;
use crate::config::{Mode, VelocConfig};

/// `VELOC_CKPT_ALL` / `VELOC_RECOVER_ALL`.
pub(crate) const MODE_ALL: i32 = 0;
/// `VELOC_CKPT_SOME` / `VELOC_RECOVER_SOME`.
pub(crate) const MODE_SOME: i32 = 1;
/// `VELOC_CKPT_REST` / `VELOC_RECOVER_REST`.
pub(crate) const MODE_REST: i32 = 2;

/// Why a VeloC call failed: a message naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VelocError {
    /// Bad arguments or a call out of order.
    #[error("{0}")]
    Usage(String),
    /// A collective step failed on some rank.
    #[error(transparent)]
    Ranks(#[from] crate::Error),
    /// An engine error on this rank.
    #[error(transparent)]
    Engine(#[from] ckpt_engine::Error),
}

type Result<T, E = VelocError> = std::result::Result<T, E>;

fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(VelocError::Usage(msg.into()))
}

/// Where the session is in VeloC's begin/…/end protocol.
enum State {
    Idle,
    Checkpoint {
        name: String,
        version: u32,
        /// Regions to save: `None` for all protected ones.
        ids: Option<Vec<i32>>,
        /// Files routed with [`Veloc::route_file`] during this checkpoint.
        routed: Vec<PathBuf>,
    },
    Restart {
        name: String,
        version: u32,
        /// This rank's file of the version (in scratch or persistent).
        path: PathBuf,
    },
}

/// A protected memory region: address and length, as the application gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Protected {
    ptr: usize,
    len: usize,
}

/// Copies to persistent storage, done by a background thread in `mode = async`.
struct Flusher {
    tx: Option<mpsc::Sender<FlushJob>>,
    done: mpsc::Receiver<Result<(), String>>,
    pending: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One version to copy to persistent storage.
/// One version's background work after it committed: its copy to persistent storage (if
/// due), then retention there and in scratch.
struct FlushJob {
    /// The version's file in scratch.
    src: PathBuf,
    /// Persistent storage, if the version is copied there now.
    dst_dir: Option<PathBuf>,
    routed: Vec<PathBuf>,
    chain: String,
    /// The version (ckpt numbering): retention keeps its lineage, and every newer version.
    head: u64,
    /// `max_versions`.
    persistent_keep: Option<usize>,
    /// `scratch_versions`.
    scratch_keep: Option<usize>,
    /// In `mode = async`, the version's own flush to scratch, which must be durable first.
    local: Option<ckpt_engine::AsyncCheckpoint>,
}

/// One VeloC session (between `VELOC_Init` and `VELOC_Finalize`).
pub(crate) struct Veloc {
    group: Group,
    cfg: VelocConfig,
    rank: u32,
    protected: BTreeMap<i32, Protected>,
    /// The engine of the checkpoint name in use, and that name.
    engine: Option<(String, Checkpointer)>,
    state: State,
    flusher: Option<Flusher>,
    last_flush: Option<Instant>,
}

impl Veloc {
    /// Starts a session: reads the configuration and creates the directories (0700).
    /// Collective: fails on every rank if it fails on any.
    pub(crate) fn init(group: Group, cfg_file: &Path) -> Result<Veloc> {
        let cfg = VelocConfig::load(cfg_file).map_err(|e| e.to_string());
        let cfg = group.agree("read the VeloC configuration", cfg)?;
        let dirs = (|| {
            ckpt_engine::store::create_dir(&cfg.scratch)?;
            if let Some(p) = &cfg.persistent {
                ckpt_engine::store::create_dir(p)?;
            }
            Ok::<_, ckpt_engine::Error>(())
        })();
        group.agree("create the scratch and persistent directories", dirs)?;
        let rank = group.rank();
        Ok(Veloc {
            group,
            cfg,
            rank,
            protected: BTreeMap::new(),
            engine: None,
            state: State::Idle,
            flusher: None,
            last_flush: None,
        })
    }

    fn chain(&self, name: &str) -> String {
        format!("{name}-{}", self.rank)
    }

    fn file_name(&self, name: &str, version: u32) -> String {
        Naming::Dat.file_name(&self.chain(name), u64::from(version) + 1)
    }

    /// `VELOC_Mem_protect`: protects (or, for a protected id, moves and resizes) a region.
    pub(crate) fn protect(&mut self, id: i32, ptr: usize, len: usize) -> Result<()> {
        if id < 0 {
            return usage(format!("region id {id} is negative"));
        }
        if ptr == 0 {
            return usage(format!("region {id}: null pointer"));
        }
        if len == 0 {
            return usage(format!("region {id}: zero bytes"));
        }
        self.protected.insert(id, Protected { ptr, len });
        Ok(())
    }

    /// `VELOC_Mem_unprotect`.
    pub(crate) fn unprotect(&mut self, id: i32) -> Result<()> {
        if self.protected.remove(&id).is_none() {
            return usage(format!("region {id} is not protected"));
        }
        if let Some((_, ck)) = &mut self.engine {
            if ck.regions().iter().any(|(r, _)| *r == id as u64) {
                ck.unregister(id as u64)?;
            }
        }
        Ok(())
    }

    /// Opens the engine of checkpoint `name` if another (or none) is open.
    fn engine_for(&mut self, name: &str) -> Result<&mut Checkpointer> {
        if self.engine.as_ref().is_none_or(|(n, _)| n != name) {
            self.engine = None; // releases the previous chain's writer lock first
                                // (Retention is the flusher's: see `FlushJob`.)
            let config = self.cfg.engine.clone().with_naming(Naming::Dat);
            let ck = Checkpointer::open(&self.cfg.scratch, &self.chain(name), config)?;
            self.engine = Some((name.to_string(), ck));
        }
        Ok(&mut self.engine.as_mut().expect("opened above").1)
    }

    /// Makes the engine's regions exactly the protected regions in `ids` (all if `None`).
    fn sync_regions(&mut self, name: &str, ids: Option<&[i32]>) -> Result<()> {
        let want: BTreeMap<i32, Protected> = self
            .protected
            .iter()
            .filter(|(id, _)| ids.is_none_or(|ids| ids.contains(id)))
            .map(|(id, p)| (*id, *p))
            .collect();
        let ck = self.engine_for(name)?;
        let have: Vec<(u64, usize)> = ck.regions();
        for (id, len) in &have {
            let keep = i32::try_from(*id)
                .ok()
                .and_then(|i| want.get(&i))
                .is_some_and(|p| {
                    p.len == *len
                        && ck.region_bytes(*id).map(|b| b.as_ptr() as usize).ok() == Some(p.ptr)
                });
            if !keep {
                ck.unregister(*id)?;
            }
        }
        let have: Vec<u64> = ck.regions().iter().map(|(id, _)| *id).collect();
        for (id, p) in want {
            if !have.contains(&(id as u64)) {
                // SAFETY: `VELOC_Mem_protect`'s contract (documented in veloc.h): the
                // application keeps the memory valid, and does not touch it during VeloC
                // calls, until it unprotects it or finalizes.
                unsafe { ck.register_raw(id as u64, p.ptr as *mut u8, p.len)? };
            }
        }
        Ok(())
    }

    /// `VELOC_Checkpoint_begin`.
    pub(crate) fn checkpoint_begin(&mut self, name: &str, version: i32) -> Result<()> {
        if !matches!(self.state, State::Idle) {
            return usage("VELOC_Checkpoint_begin called while a checkpoint or restart is open");
        }
        let version = check_version(version)?;
        ckpt_engine::store::check_chain_name(&self.chain(name))?;
        self.state = State::Checkpoint {
            name: name.to_string(),
            version,
            ids: None,
            routed: Vec::new(),
        };
        Ok(())
    }

    /// `VELOC_Checkpoint_mem` and `VELOC_Checkpoint_selective`: choose the regions saved.
    pub(crate) fn checkpoint_select(&mut self, mode: i32, ids: &[i32]) -> Result<()> {
        let chosen = self.select(mode, ids)?;
        match &mut self.state {
            State::Checkpoint { ids, .. } => {
                *ids = Some(chosen);
                Ok(())
            }
            _ => usage("VELOC_Checkpoint_mem called without VELOC_Checkpoint_begin"),
        }
    }

    /// The protected ids that `mode` and `ids` select.
    fn select(&self, mode: i32, ids: &[i32]) -> Result<Vec<i32>> {
        if let Some(id) = ids.iter().find(|id| !self.protected.contains_key(id)) {
            return usage(format!("region {id} is not protected"));
        }
        let all = self.protected.keys().copied();
        Ok(match mode {
            MODE_ALL => all.collect(),
            MODE_SOME => ids.to_vec(),
            MODE_REST => all.filter(|id| !ids.contains(id)).collect(),
            m => return usage(format!("unknown mode {m} (expected 0, 1 or 2)")),
        })
    }

    /// `VELOC_Checkpoint_end`: writes this rank's file, copies it to persistent storage (now
    /// in sync mode), and agrees with every rank. Collective whatever the local state, so
    /// that a rank whose `begin` failed does not leave the others waiting.
    pub(crate) fn checkpoint_end(&mut self, success: bool) -> Result<()> {
        // An open restart stays open: only an open checkpoint is ended here.
        let local = if matches!(self.state, State::Checkpoint { .. }) {
            match std::mem::replace(&mut self.state, State::Idle) {
                State::Checkpoint {
                    name,
                    version,
                    ids,
                    routed,
                } if success => Ok((name, version, ids, routed)),
                _ => Err("the application ended the checkpoint as failed".to_string()),
            }
        } else {
            Err("VELOC_Checkpoint_end called without VELOC_Checkpoint_begin".to_string())
        };
        let (name, version, ids, routed) = self.group.agree("begin the checkpoint", local)?;
        // A version complete on every rank is committed: never replace it.
        let complete = self.complete_path(&name, version).is_ok();
        if self.group.all(complete) {
            return usage(format!(
                "version {version} of {name:?} is already committed on every rank; a committed \
                 checkpoint is never replaced (use a new version number)"
            ));
        }
        let written = self.write_local(&name, version, ids.as_deref(), &routed);
        self.group.agree("write the checkpoint", written)?;
        if self.cfg.mode == Mode::Sync {
            let flushed = self.wait_flushes();
            self.group
                .agree("copy the checkpoint to persistent storage", flushed)?;
        }
        Ok(())
    }

    /// This rank's part of a checkpoint: the version file in scratch, and its copy to
    /// persistent storage queued (or done, in sync mode).
    fn write_local(
        &mut self,
        name: &str,
        version: u32,
        ids: Option<&[i32]>,
        routed: &[PathBuf],
    ) -> Result<()> {
        if self.protected.is_empty() && ids.is_none() {
            return usage("no memory region is protected (VELOC_Mem_protect)");
        }
        // Files of this number left by an attempt that did not complete on every rank.
        let file = self.file_name(name, version);
        let mut dirs = vec![self.cfg.scratch.clone()];
        dirs.extend(self.cfg.persistent.clone());
        for d in &dirs {
            let p = d.join(&file);
            match ckpt_engine::vfs::current().remove_file(&p) {
                Ok(()) => {
                    tracing::warn!(
                        "{}: replaced, since version {version} was not complete on every rank",
                        p.display()
                    );
                    sync_dir(d)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ckpt_engine::Error::io(&p, "remove", e).into()),
            }
        }
        self.sync_regions(name, ids)?;
        let nonblocking = self.cfg.nonblocking;
        let ck = self.engine_for(name)?;
        // Nonblocking (async mode only): the application goes on once the snapshot is taken;
        // the version is written to scratch, then copied, in the background
        // (VELOC_Checkpoint_wait waits for both).
        let local = if nonblocking {
            Some(ck.checkpoint_async_at(u64::from(version) + 1)?)
        } else {
            ck.checkpoint_at(u64::from(version) + 1)?;
            None
        };
        let due = match (self.cfg.persistent_interval, self.last_flush) {
            (Some(every), Some(last)) => every == 0 || last.elapsed().as_secs() >= every,
            _ => true,
        };
        let dst_dir = self.cfg.persistent.clone().filter(|_| due);
        // Scratch retention runs only after a copy (or with no persistent level at all), so
        // that scratch never drops a version persistent storage still lacks.
        let scratch_keep = self
            .cfg
            .scratch_versions
            .filter(|_| dst_dir.is_some() || self.cfg.persistent.is_none());
        if dst_dir.is_none() && scratch_keep.is_none() && local.is_none() {
            return Ok(());
        }
        if dst_dir.is_some() {
            self.last_flush = Some(Instant::now());
        }
        let job = FlushJob {
            src: self.cfg.scratch.join(&file),
            dst_dir,
            routed: routed.to_vec(),
            chain: self.chain(name),
            head: u64::from(version) + 1,
            persistent_keep: self.cfg.max_versions,
            scratch_keep,
            local,
        };
        let f = self.flusher.get_or_insert_with(Flusher::start);
        f.send(job)
    }

    /// Waits for every queued copy to persistent storage: the first failure, if any.
    pub(crate) fn wait_flushes(&mut self) -> std::result::Result<(), String> {
        match &mut self.flusher {
            Some(f) => f.wait(),
            None => Ok(()),
        }
    }

    /// This rank's complete copy of `version`: in scratch if complete there, else in
    /// persistent storage; otherwise why neither will do.
    fn complete_path(&self, name: &str, version: u32) -> std::result::Result<PathBuf, String> {
        let chain = self.chain(name);
        let mut why = Vec::new();
        let mut dirs = vec![&self.cfg.scratch];
        dirs.extend(self.cfg.persistent.as_ref());
        for d in dirs {
            match complete_in(d, &chain, u64::from(version) + 1) {
                Ok(p) => return Ok(p),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    }

    /// This rank's versions of `name` (scratch and persistent), newest first.
    fn local_versions(&self, name: &str) -> Result<Vec<u32>> {
        let chain = self.chain(name);
        let mut all = Vec::new();
        let mut dirs = vec![&self.cfg.scratch];
        dirs.extend(self.cfg.persistent.as_ref());
        for d in dirs {
            if !d.exists() {
                continue; // deleted between runs: nothing there (created again at the next write)
            }
            let store = Store::with_naming(d, &chain, Naming::Dat)?;
            all.extend(
                store
                    .versions()?
                    .into_iter()
                    .filter_map(|v| u32::try_from(v - 1).ok()),
            );
        }
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.dedup();
        Ok(all)
    }

    /// `VELOC_Restart_test`: the newest version below `needed` (no bound if 0) complete on
    /// every rank, or `None`. Collective.
    pub(crate) fn restart_test(&mut self, name: &str, needed: i32) -> Result<Option<u32>> {
        let listed = (|| {
            if needed < 0 {
                return usage(format!("version bound {needed} is negative"));
            }
            ckpt_engine::store::check_chain_name(&self.chain(name))?;
            self.local_versions(name)
        })();
        let listed = self.group.agree("list the checkpoints", listed)?;
        let mut bound = if needed > 0 {
            i64::from(needed)
        } else {
            i64::MAX
        };
        let mut known: BTreeMap<u32, bool> = BTreeMap::new();
        loop {
            // The newest version below `bound` complete here.
            let mut mine = -1i64;
            for &v in listed.iter().filter(|&&v| i64::from(v) < bound) {
                let ok = *known
                    .entry(v)
                    .or_insert_with(|| self.complete_path(name, v).is_ok());
                if ok {
                    mine = i64::from(v);
                    break;
                }
            }
            let candidate = self.group.min_i64(mine);
            if candidate < 0 {
                return Ok(None);
            }
            let v = candidate as u32;
            let here = *known
                .entry(v)
                .or_insert_with(|| self.complete_path(name, v).is_ok());
            if self.group.all(here) {
                return Ok(Some(v));
            }
            bound = candidate;
        }
    }

    /// `VELOC_Restart_begin`: every rank finds its complete copy of `version` (scratch
    /// first, then persistent). Collective: fails on every rank if any lacks one.
    pub(crate) fn restart_begin(&mut self, name: &str, version: i32) -> Result<()> {
        let local = (|| {
            if !matches!(self.state, State::Idle) {
                return usage("VELOC_Restart_begin called while a checkpoint or restart is open");
            }
            let version = check_version(version)?;
            ckpt_engine::store::check_chain_name(&self.chain(name))?;
            let path = self.complete_path(name, version).map_err(|why| {
                VelocError::Usage(format!(
                    "version {version} of {name:?} is not available on rank {}: {why}",
                    self.rank
                ))
            })?;
            self.engine_for(name)?;
            Ok((version, path))
        })();
        let (version, path) = self.group.agree("begin the restart", local)?;
        self.state = State::Restart {
            name: name.to_string(),
            version,
            path,
        };
        Ok(())
    }

    /// `VELOC_Recover_size`: the stored size of region `id`, in bytes.
    pub(crate) fn recover_size(&self, id: i32) -> Result<usize> {
        let State::Restart { path, .. } = &self.state else {
            return usage("VELOC_Recover_size called without VELOC_Restart_begin");
        };
        let regions = Checkpointer::regions_in(path)?;
        match regions.iter().find(|(r, _)| i32::try_from(*r) == Ok(id)) {
            Some((_, len)) => Ok(*len as usize),
            None => usage(format!("region {id} is not in {}", path.display())),
        }
    }

    /// `VELOC_Recover_mem` and `VELOC_Recover_selective`.
    pub(crate) fn recover(&mut self, mode: i32, ids: &[i32]) -> Result<()> {
        let State::Restart { name, path, .. } = &self.state else {
            return usage("VELOC_Recover_mem called without VELOC_Restart_begin");
        };
        let (name, path) = (name.clone(), path.clone());
        let chosen = self.select(mode, ids)?;
        if chosen.is_empty() {
            return usage("no protected region to recover (VELOC_Mem_protect)");
        }
        self.sync_regions(&name, None)?;
        let stored: Vec<u64> = Checkpointer::regions_in(&path)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let ck = self.engine_for(&name)?;
        let registered: Vec<u64> = ck.regions().iter().map(|(id, _)| *id).collect();
        let mut same = registered.clone();
        let mut st = stored.clone();
        same.sort_unstable();
        st.sort_unstable();
        if chosen.len() == registered.len() && same == st {
            ck.restore_path(&path)?; // the next checkpoint can be a delta against it
        } else {
            let ids: Vec<u64> = chosen.iter().map(|&i| i as u64).collect();
            ck.restore_regions(&path, &ids)?;
        }
        Ok(())
    }

    /// `VELOC_Restart_end`. Collective.
    pub(crate) fn restart_end(&mut self, success: bool) -> Result<()> {
        let state = std::mem::replace(&mut self.state, State::Idle);
        let local = match state {
            State::Restart { .. } if success => Ok(()),
            State::Restart { .. } => Err("the application ended the restart as failed"),
            _ => Err("VELOC_Restart_end called without VELOC_Restart_begin"),
        };
        self.group.agree("end the restart", local)?;
        Ok(())
    }

    /// `VELOC_Route_file`: where to write (during a checkpoint) or read (during a restart) a
    /// file that travels with the checkpoint: `<dir>/<name>-<rank>-<version>.<file name>`.
    pub(crate) fn route_file(&mut self, original: &str) -> Result<PathBuf> {
        let base = Path::new(original)
            .file_name()
            .and_then(|b| b.to_str())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| VelocError::Usage(format!("{original:?} names no file")))?
            .to_string();
        let routed_name =
            |me: &Self, name: &str, version: u32| format!("{}-{version}.{base}", me.chain(name));
        match &self.state {
            State::Checkpoint { name, version, .. } => {
                let p = self.cfg.scratch.join(routed_name(self, name, *version));
                if let State::Checkpoint { routed, .. } = &mut self.state {
                    routed.push(p.clone());
                }
                Ok(p)
            }
            State::Restart { name, version, .. } => {
                let file = routed_name(self, name, *version);
                let scratch = self.cfg.scratch.join(&file);
                if scratch.exists() {
                    return Ok(scratch);
                }
                Ok(self
                    .cfg
                    .persistent
                    .as_ref()
                    .map(|p| p.join(&file))
                    .filter(|p| p.exists())
                    .unwrap_or(scratch))
            }
            State::Idle => usage("VELOC_Route_file called outside a checkpoint or restart"),
        }
    }

    /// `VELOC_Finalize`: waits for copies in flight. Never deletes a checkpoint.
    pub(crate) fn finalize(mut self) -> std::result::Result<(), String> {
        let r = self.wait_flushes();
        if let Some(mut f) = self.flusher.take() {
            f.stop();
        }
        r
    }
}

/// The path of ckpt version `v` of `chain` in `dir` if it is complete there: its file and
/// every file it references open and check out, and its parent is there and complete too,
/// unless the parent is older than every version in `dir` (retired by retention, which
/// rewrites what still needed it). So deleting a version's files makes the deltas against it
/// unavailable, as an operator expects; otherwise why not.
fn complete_in(dir: &Path, chain: &str, v: u64) -> std::result::Result<PathBuf, String> {
    let store = Store::with_naming(dir, chain, Naming::Dat).map_err(|e| e.to_string())?;
    if !dir.exists() {
        return Err(format!("{}: no such directory", dir.display()));
    }
    let oldest = store
        .versions()
        .map_err(|e| e.to_string())?
        .first()
        .copied()
        .unwrap_or(u64::MAX);
    let mut cur = v;
    // A chain is at most max_chain_depth deep; the bound only guards against a loop.
    for _ in 0..100_000 {
        let path = store.path_of(cur);
        catalog::check_complete(&path).map_err(|e| e.to_string())?;
        let Some((p, identity)) = catalog::parent_of(&path).map_err(|e| e.to_string())? else {
            break;
        };
        if p < oldest || p >= cur {
            break;
        }
        let parent = store.path_of(p);
        match catalog::satisfies(&parent, &identity) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "{}: its parent {} was replaced by another file",
                    path.display(),
                    parent.display()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "{}: its parent is not available: {e}",
                    path.display()
                ))
            }
        }
        cur = p;
    }
    Ok(store.path_of(v))
}

/// A VeloC version number: non-negative.
fn check_version(version: i32) -> Result<u32> {
    u32::try_from(version).or_else(|_| usage(format!("version {version} is negative")))
}

impl Flusher {
    fn start() -> Flusher {
        let (tx, rx) = mpsc::channel::<FlushJob>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for mut job in rx {
                let _ = done_tx.send(flush(&mut job).map_err(|e| e.to_string()));
            }
        });
        Flusher {
            tx: Some(tx),
            done,
            pending: 0,
            thread: Some(thread),
        }
    }

    fn send(&mut self, job: FlushJob) -> Result<()> {
        let sent = self.tx.as_ref().map(|tx| tx.send(job).is_ok());
        if sent != Some(true) {
            return usage("the copy to persistent storage has stopped");
        }
        self.pending += 1;
        Ok(())
    }

    fn wait(&mut self) -> std::result::Result<(), String> {
        let mut first = Ok(());
        while self.pending > 0 {
            self.pending -= 1;
            let r = self
                .done
                .recv()
                .unwrap_or_else(|_| Err("the copy to persistent storage stopped".into()));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A version's background work: in `mode = async` its own flush to scratch first; then its
/// copy to persistent storage (every file it
/// needs that the destination lacks or holds another file under that name, and its
/// ancestors back to one persistent storage already has, ancestors first, each atomically;
/// then the routed files), then retention there and in scratch.
fn flush(job: &mut FlushJob) -> ckpt_engine::Result<()> {
    if let Some(h) = job.local.take() {
        h.wait()?;
    }
    let src_dir = job.src.parent().unwrap_or(Path::new("."));
    if let Some(dst_dir) = &job.dst_dir {
        copy_version(job, src_dir, dst_dir)?;
        retain(dst_dir, &job.chain, job.head, job.persistent_keep)?;
    }
    retain(src_dir, &job.chain, job.head, job.scratch_keep)
}

fn copy_version(job: &FlushJob, src_dir: &Path, dst_dir: &Path) -> ckpt_engine::Result<()> {
    let store = Store::with_naming(src_dir, &job.chain, Naming::Dat)?;
    // The files it references, and its ancestors back to one persistent storage already has
    // (a version counts as complete only with its parent; see `complete_in`).
    let mut needed = catalog::check_complete(&job.src)?;
    let mut parent = catalog::parent_of(&job.src)?;
    while let Some((p, identity)) = parent {
        let name = store.file_name(p);
        let dst = dst_dir.join(&name);
        if dst.exists() && catalog::satisfies(&dst, &identity).unwrap_or(false) {
            break;
        }
        let src = src_dir.join(&name);
        if !src.exists() {
            break; // retired by retention in scratch (after an earlier copy)
        }
        if !needed.iter().any(|(n, _)| *n == name) {
            needed.push((name, identity));
        }
        parent = catalog::parent_of(&src)?;
    }
    needed.reverse(); // the file itself is first: copy its ancestors before it
    for (name, identity) in &needed {
        let dst = dst_dir.join(name);
        let present = dst.exists() && catalog::satisfies(&dst, identity).unwrap_or(false);
        if !present {
            ckpt_engine::store::copy_file_atomic(&src_dir.join(name), &dst)?;
        }
    }
    for r in &job.routed {
        if r.exists() {
            let name = r.file_name().unwrap_or_default();
            ckpt_engine::store::copy_file_atomic(r, &dst_dir.join(name))?;
        }
    }
    Ok(())
}

/// VeloC's retention: keeps the newest `keep` versions (by number) up to `head`, the
/// version just written, and every version above it (left by an interrupted attempt; the
/// application replaces them when it writes those numbers again). The compactor rewrites
/// kept versions that referenced removed ones, so every kept version stays restorable.
fn retain(dir: &Path, chain: &str, head: u64, keep: Option<usize>) -> ckpt_engine::Result<()> {
    let Some(keep) = keep else {
        return Ok(());
    };
    let store = Store::with_naming(dir, chain, Naming::Dat)?;
    let pinned: Vec<u64> = store
        .versions()?
        .into_iter()
        .filter(|&v| v <= head)
        .rev()
        .take(keep)
        .collect();
    let opts = CompactOptions {
        keep: 1,
        head: Some(head),
        pinned,
        keep_above: Some(head),
        ..CompactOptions::default()
    };
    compact::compact(&store, &opts, &mut |_, _| {}).map(drop)
}

fn sync_dir(dir: &Path) -> ckpt_engine::Result<()> {
    ckpt_engine::vfs::current()
        .sync_dir(dir)
        .map_err(|e| ckpt_engine::Error::io(dir, "fsync directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        cfg: PathBuf,
    }

    fn fixture(extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("v.cfg");
        std::fs::write(
            &cfg,
            format!(
                "scratch = {}\npersistent = {}\n{extra}\n",
                dir.path().join("s").display(),
                dir.path().join("p").display()
            ),
        )
        .unwrap();
        Fixture { dir, cfg }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| !f.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// Checkpoints `data` as region 0 at each version, changing it each time.
    fn run(v: &mut Veloc, data: &mut [u64], versions: &[i32]) {
        for &ver in versions {
            data.iter_mut().for_each(|x| *x = ver as u64 * 1000);
            data[0] = ver as u64;
            v.checkpoint_begin("app", ver).unwrap();
            v.checkpoint_select(MODE_ALL, &[]).unwrap();
            v.checkpoint_end(true).unwrap();
        }
    }

    #[test]
    fn sync_checkpoint_restart_and_persistent_fallback() {
        let f = fixture("mode = sync");
        let mut data = vec![0u64; 4096];
        let mut v = Veloc::init(Group::Solo, &f.cfg).unwrap();
        v.protect(0, data.as_mut_ptr() as usize, data.len() * 8)
            .unwrap();
        run(&mut v, &mut data, &[0, 1, 2]);
        assert_eq!(
            files(&f.dir.path().join("s")),
            ["app-0-0.dat", "app-0-1.dat", "app-0-2.dat"]
        );
        assert_eq!(
            files(&f.dir.path().join("p")),
            files(&f.dir.path().join("s"))
        );
        // Version 0 is a real version, and a committed one is never replaced.
        assert!(v.checkpoint_begin("app", 1).is_ok());
        assert!(v.checkpoint_end(true).is_err());
        assert_eq!(v.restart_test("app", 0).unwrap(), Some(2));
        assert_eq!(v.restart_test("app", 2).unwrap(), Some(1));
        assert_eq!(v.restart_test("app", 1).unwrap(), Some(0));
        assert_eq!(v.restart_test("other", 0).unwrap(), None);
        // Scratch loses version 1: the restore reads persistent storage.
        std::fs::remove_file(f.dir.path().join("s/app-0-1.dat")).unwrap();
        data.iter_mut().for_each(|x| *x = 7);
        v.restart_begin("app", 1).unwrap();
        assert_eq!(v.recover_size(0).unwrap(), data.len() * 8);
        assert!(v.recover_size(5).is_err());
        v.recover(MODE_ALL, &[]).unwrap();
        v.restart_end(true).unwrap();
        assert_eq!(data[0], 1);
        assert_eq!(data[9], 1000);
        // Version 2 references version 1, which only persistent storage still has: scratch's
        // copy of 2 is incomplete, persistent's is complete.
        assert_eq!(v.restart_test("app", 0).unwrap(), Some(2));
        // Remove version 1 everywhere: 2 (a delta against it) is no longer complete.
        std::fs::remove_file(f.dir.path().join("p/app-0-1.dat")).unwrap();
        assert_eq!(v.restart_test("app", 0).unwrap(), Some(0));
        assert!(v.restart_begin("app", 2).is_err());
        v.finalize().unwrap();
    }

    #[test]
    fn async_mode_flushes_in_the_background_and_retention_applies() {
        let f = fixture("mode = async\nmax_versions = 2\nscratch_versions = 1");
        let mut data = vec![0u64; 2048];
        let mut v = Veloc::init(Group::Solo, &f.cfg).unwrap();
        v.protect(3, data.as_mut_ptr() as usize, data.len() * 8)
            .unwrap();
        run(&mut v, &mut data, &[10, 20, 30, 40]);
        v.wait_flushes().unwrap();
        if let Some((_, ck)) = &mut v.engine {
            ck.wait_compaction();
        }
        assert_eq!(
            files(&f.dir.path().join("p")),
            ["app-0-30.dat", "app-0-40.dat"]
        );
        assert_eq!(files(&f.dir.path().join("s")), ["app-0-40.dat"]);
        assert_eq!(v.restart_test("app", 0).unwrap(), Some(40));
        assert_eq!(v.restart_test("app", 40).unwrap(), Some(30));
        v.restart_begin("app", 30).unwrap();
        v.recover(MODE_ALL, &[]).unwrap();
        v.restart_end(true).unwrap();
        assert_eq!(data[0], 30);
        v.finalize().unwrap();
    }

    #[test]
    fn selective_recover_route_file_and_moved_regions() {
        let f = fixture("mode = sync");
        let mut a = vec![1u64; 1024];
        let mut b = vec![2u64; 512];
        let mut v = Veloc::init(Group::Solo, &f.cfg).unwrap();
        v.protect(0, a.as_mut_ptr() as usize, a.len() * 8).unwrap();
        v.protect(1, b.as_mut_ptr() as usize, b.len() * 8).unwrap();
        v.checkpoint_begin("app", 0).unwrap();
        let routed = v.route_file("/some/where/notes.txt").unwrap();
        std::fs::write(&routed, "routed").unwrap();
        v.checkpoint_select(MODE_ALL, &[]).unwrap();
        v.checkpoint_end(true).unwrap();
        assert!(f
            .dir
            .path()
            .join("p")
            .join(routed.file_name().unwrap())
            .exists());
        a.fill(9);
        b.fill(9);
        v.restart_begin("app", 0).unwrap();
        assert_eq!(
            std::fs::read_to_string(v.route_file("notes.txt").unwrap()).unwrap(),
            "routed"
        );
        v.recover(MODE_REST, &[0]).unwrap(); // everything but region 0
        v.restart_end(true).unwrap();
        assert_eq!((a[0], b[0]), (9, 2));
        // Protecting an id again moves it: the next checkpoint saves the new memory.
        let mut c = vec![5u64; 256];
        v.protect(0, c.as_mut_ptr() as usize, c.len() * 8).unwrap();
        v.checkpoint_begin("app", 1).unwrap();
        v.checkpoint_select(MODE_ALL, &[]).unwrap();
        v.checkpoint_end(true).unwrap();
        c.fill(0);
        v.restart_begin("app", 1).unwrap();
        assert_eq!(v.recover_size(0).unwrap(), 256 * 8);
        v.recover(MODE_SOME, &[0]).unwrap();
        v.restart_end(true).unwrap();
        assert_eq!(c[0], 5);
        v.finalize().unwrap();
    }

    #[test]
    fn scratch_deleted_between_runs_is_created_again() {
        let f = fixture("mode = sync");
        let mut data = vec![0u64; 512];
        {
            let mut v = Veloc::init(Group::Solo, &f.cfg).unwrap();
            v.protect(0, data.as_mut_ptr() as usize, data.len() * 8)
                .unwrap();
            run(&mut v, &mut data, &[0, 1]);
            v.finalize().unwrap();
        }
        std::fs::remove_dir_all(f.dir.path().join("s")).unwrap();
        let mut v = Veloc::init(Group::Solo, &f.cfg).unwrap();
        assert!(f.dir.path().join("s").is_dir());
        v.protect(0, data.as_mut_ptr() as usize, data.len() * 8)
            .unwrap();
        assert_eq!(v.restart_test("app", 0).unwrap(), Some(1));
        data.fill(0);
        v.restart_begin("app", 1).unwrap();
        v.recover(MODE_ALL, &[]).unwrap();
        v.restart_end(true).unwrap();
        assert_eq!(data[0], 1);
        // The next checkpoint is written in scratch as a full version (its parent is only in
        // persistent storage), so scratch alone can restore it.
        run(&mut v, &mut data, &[2]);
        let s = f.dir.path().join("s/app-0-2.dat");
        assert_eq!(catalog::check_complete(&s).unwrap().len(), 1);
        v.finalize().unwrap();
    }

    #[test]
    fn a_deleted_version_takes_its_deltas_with_it() {
        let f = fixture("mode = sync");
        let mut data = vec![0u64; 1024];
        let mut v = Veloc::init(Group::Solo, &f.cfg).unwrap();
        v.protect(0, data.as_mut_ptr() as usize, data.len() * 8)
            .unwrap();
        run(&mut v, &mut data, &[1, 2, 3, 4]);
        for level in ["s", "p"] {
            std::fs::remove_file(f.dir.path().join(level).join("app-0-2.dat")).unwrap();
        }
        // 3 and 4 are deltas against 2 (and 3): unavailable; 1 is the newest complete.
        assert_eq!(v.restart_test("app", 0).unwrap(), Some(1));
        let e = v.restart_begin("app", 4).unwrap_err().to_string();
        assert!(e.contains("app-0-2.dat"), "{e}");
        v.finalize().unwrap();
    }

    #[test]
    fn persistent_interval_batches_copies_and_keeps_chains_whole() {
        let f = fixture("mode = sync\npersistent_interval = 3600");
        let mut data = vec![0u64; 1024];
        let mut v = Veloc::init(Group::Solo, &f.cfg).unwrap();
        v.protect(0, data.as_mut_ptr() as usize, data.len() * 8)
            .unwrap();
        run(&mut v, &mut data, &[1, 2, 3]);
        // Only the first checkpoint reached persistent storage within the interval.
        assert_eq!(files(&f.dir.path().join("p")), ["app-0-1.dat"]);
        v.last_flush = None; // the interval has passed
        run(&mut v, &mut data, &[4]);
        // Version 4 went with its ancestors, so persistent storage alone can restore it.
        assert_eq!(
            files(&f.dir.path().join("p")),
            ["app-0-1.dat", "app-0-2.dat", "app-0-3.dat", "app-0-4.dat"]
        );
        assert!(complete_in(&f.dir.path().join("p"), "app-0", 5).is_ok());
        v.finalize().unwrap();
    }

    #[test]
    fn retention_keeps_the_newest_versions_and_never_the_wrong_branch() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("v.cfg");
        std::fs::write(
            &cfg,
            format!(
                "scratch = {}\nmode = sync\nscratch_versions = 2\n",
                dir.path().join("s").display()
            ),
        )
        .unwrap();
        let mut data = vec![0u64; 1024];
        let mut v = Veloc::init(Group::Solo, &cfg).unwrap();
        v.protect(0, data.as_mut_ptr() as usize, data.len() * 8)
            .unwrap();
        run(&mut v, &mut data, &[1, 2, 3, 4]);
        v.wait_flushes().unwrap();
        assert_eq!(files(&dir.path().join("s")), ["app-0-3.dat", "app-0-4.dat"]);
        // The application goes back to version 3 and continues with 5, 6: retention keeps
        // the newest two, and each kept version still restores on its own.
        v.restart_begin("app", 3).unwrap();
        v.recover(MODE_ALL, &[]).unwrap();
        v.restart_end(true).unwrap();
        run(&mut v, &mut data, &[5, 6]);
        v.wait_flushes().unwrap();
        assert_eq!(files(&dir.path().join("s")), ["app-0-5.dat", "app-0-6.dat"]);
        for ver in [5, 6] {
            data.fill(0);
            v.restart_begin("app", ver).unwrap();
            v.recover(MODE_ALL, &[]).unwrap();
            v.restart_end(true).unwrap();
            assert_eq!(data[0], ver as u64);
            assert_eq!(data[100], ver as u64 * 1000);
        }
        // A version above the one written (left by an interrupted attempt) is not retention's.
        v.checkpoint_begin("app", 9).unwrap();
        v.checkpoint_select(MODE_ALL, &[]).unwrap();
        v.checkpoint_end(true).unwrap();
        run(&mut v, &mut data, &[7]);
        v.wait_flushes().unwrap();
        assert_eq!(
            files(&dir.path().join("s")),
            ["app-0-6.dat", "app-0-7.dat", "app-0-9.dat"]
        );
        // An open restart survives a misplaced VELOC_Checkpoint_end.
        v.restart_begin("app", 7).unwrap();
        assert!(v.checkpoint_end(true).is_err());
        v.recover(MODE_ALL, &[]).unwrap();
        v.restart_end(true).unwrap();
        v.finalize().unwrap();
    }

    #[test]
    fn config_errors_name_the_file() {
        let f = fixture("mode = sync");
        std::fs::write(&f.cfg, "mode = sync\n").unwrap();
        let e = Veloc::init(Group::Solo, &f.cfg).err().unwrap().to_string();
        assert!(e.contains("v.cfg") && e.contains("scratch"), "{e}");
        std::fs::write(
            &f.cfg,
            format!("scratch = {}\n", f.dir.path().join("s").display()),
        )
        .unwrap();
        let e = Veloc::init(Group::Solo, &f.cfg).err().unwrap().to_string();
        assert!(e.contains("mode"), "{e}");
    }
}
