//! Asynchronous checkpoints: the application is stopped only while the snapshot is taken;
//! hashing, compressing, writing and committing go on in the background.
//!
//! At most one checkpoint is in flight. Whatever would observe or change what it works from
//! (another checkpoint, a restore, registering or unregistering a region, `mark_dirty`, drop)
//! first waits for it and applies its outcome ([`Checkpointer::settle`]): the tracker forgets
//! the pages it reported only then, so a failed flush loses nothing.
//!
//! Two snapshot mechanisms ([`Snapshot`]):
//! - **copy**: the candidate pages are copied into a reused staging buffer and a thread
//!   writes the version from the copies;
//! - **fork**: a child process, whose memory is the parent's at the instant of the fork
//!   (copy-on-write), writes and commits the version and sends back what the parent must
//!   remember (the statistics and the new fast hashes) through a pipe; a thread of the
//!   parent reads it and reads the new parent picture from the committed file.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::checkpoint::{Landed, Writing};
use super::Checkpointer;
use crate::config::{CheckpointStats, Snapshot};
use crate::error::{Error, Result};
use crate::format::TrackingKind;
use crate::read::Version;
use crate::track::Outcome;
use crate::write::pipeline::Source;

/// A checkpoint in flight, returned by [`Checkpointer::checkpoint_async`].
///
/// The snapshot was taken when it was returned: the application may write its regions at
/// once. Dropping the handle does not cancel the checkpoint; the engine still commits it, and
/// the next checkpoint, restore or drop of the engine waits for it.
#[derive(Debug)]
pub struct AsyncCheckpoint {
    shared: Arc<Shared>,
    version: u64,
    snapshot: Option<Snapshot>,
}

impl AsyncCheckpoint {
    /// The version number being written.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How the snapshot was taken: `None` if the checkpoint could not be taken
    /// asynchronously and was written before `checkpoint_async` returned.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot
    }

    /// Whether the version is committed (or the flush failed): [`wait`](Self::wait) would
    /// not block.
    pub fn is_done(&self) -> bool {
        self.shared.lock().finished
    }

    /// Blocks until the version is committed and durable, and returns what was done; or the
    /// error that stopped the flush, in which case nothing was committed and the pages go
    /// into the next checkpoint. The outcome is delivered once: if
    /// [`Checkpointer::wait_checkpoint`] took it first, this returns [`Error::Flush`].
    pub fn wait(self) -> Result<CheckpointStats> {
        let mut slot = self.shared.lock();
        while !slot.finished {
            slot = self
                .shared
                .done
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
        }
        slot.result.take().unwrap_or_else(|| {
            Err(Error::Flush {
                path: slot.path.clone(),
                why: "its outcome was already taken by Checkpointer::wait_checkpoint".into(),
            })
        })
    }
}

/// What the handle and the engine share: the outcome, once the flush ends.
#[derive(Debug)]
struct Shared {
    slot: Mutex<Slot>,
    done: Condvar,
}

#[derive(Debug)]
struct Slot {
    finished: bool,
    result: Option<Result<CheckpointStats>>,
    path: std::path::PathBuf,
}

impl Shared {
    fn new(path: std::path::PathBuf) -> Arc<Shared> {
        Arc::new(Shared {
            slot: Mutex::new(Slot {
                finished: false,
                result: None,
                path,
            }),
            done: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn post(&self, result: Result<CheckpointStats>) {
        let mut slot = self.lock();
        slot.result = Some(result);
        slot.finished = true;
        self.done.notify_all();
    }
}

/// The engine's side of a checkpoint in flight.
#[derive(Debug)]
pub(super) struct InFlight {
    /// `None` only if the collecting thread could not be started (the outcome, an error,
    /// was posted already).
    thread: Option<std::thread::JoinHandle<FlightEnd>>,
    shared: Arc<Shared>,
}

/// What a flush thread hands back to the engine.
#[derive(Debug, Default)]
struct FlightEnd {
    /// The staging buffer, for reuse.
    staging: Vec<u8>,
    /// The committed version, if it was.
    landed: Option<Landed>,
    /// The parent was removed meanwhile: the engine must re-read it.
    stale: bool,
    /// A forked child could not read the regions (memory excluded from fork after it was
    /// registered, as an RDMA library may do): the engine stops forking.
    fork_unusable: bool,
}

/// How much lower than the application's the flush's scheduling priority is.
const FLUSH_NICENESS: i32 = 10;

/// How this checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Copy,
    Fork,
    Block,
}

impl Checkpointer {
    /// Starts a checkpoint and returns as soon as its snapshot is taken; the version is
    /// hashed, compressed, written and committed in the background. The version written is
    /// exactly the regions' contents at the instant of the call.
    ///
    /// At most one checkpoint is in flight: this call first waits for the previous one. A
    /// version is committed (renamed into place) only once complete and durable, so a crash
    /// during the flush leaves the previous version as the newest. How the snapshot is taken
    /// is [`Config::snapshot`](crate::Config::snapshot); when no mechanism applies the
    /// checkpoint is written before this returns (see [`AsyncCheckpoint::snapshot`]).
    ///
    /// The outcome reaches [`AsyncCheckpoint::wait`] or [`wait_checkpoint`](Self::wait_checkpoint);
    /// a failure nobody collects is logged (`tracing`) when the engine next waits for it, and
    /// the pages it held go into the next checkpoint.
    ///
    /// ```no_run
    /// use ckpt_engine::{Checkpointer, Config};
    /// let mut ck = Checkpointer::open("/scratch/job", "sim", Config::default())?;
    /// let grid = ck.alloc_region::<f64>(1, 1 << 20)?;
    /// for step in 0..100 {
    ///     ck.region_mut(&grid)?.iter_mut().for_each(|x| *x += 1.0); // runs during the flush
    ///     if step % 10 == 9 {
    ///         let h = ck.checkpoint_async()?; // waits for the previous one, then snapshots
    ///         println!("writing version {} in the background", h.version());
    ///     }
    /// }
    /// if let Some(stats) = ck.wait_checkpoint()? {
    ///     println!("version {} is durable", stats.version);
    /// }
    /// # Ok::<(), ckpt_engine::Error>(())
    /// ```
    pub fn checkpoint_async(&mut self) -> Result<AsyncCheckpoint> {
        self.checkpoint_async_inner(None)
    }

    /// Like [`checkpoint_async`](Self::checkpoint_async), but writes version number
    /// `version`, which must be larger than every version in the store (as
    /// [`checkpoint_numbered`](Self::checkpoint_numbered)).
    pub fn checkpoint_async_numbered(&mut self, version: u64) -> Result<AsyncCheckpoint> {
        self.check_above_floor(version)?;
        self.checkpoint_async_inner(Some(version))
    }

    /// Like [`checkpoint_async`](Self::checkpoint_async), but writes version number
    /// `version`, which only has to be free (as [`checkpoint_at`](Self::checkpoint_at)).
    pub fn checkpoint_async_at(&mut self, version: u64) -> Result<AsyncCheckpoint> {
        self.check_free(version)?;
        self.checkpoint_async_inner(Some(version))
    }

    /// Waits for the checkpoint in flight, if any, and returns its outcome (which its handle
    /// then no longer delivers): `Ok(None)` when none was in flight. A checkpoint the engine
    /// already waited for (because of a later call) delivers its outcome through its handle.
    pub fn wait_checkpoint(&mut self) -> Result<Option<CheckpointStats>> {
        let Some(shared) = self.settle() else {
            return Ok(None);
        };
        let taken = shared.lock().result.take();
        taken.transpose()
    }

    /// Whether an asynchronous checkpoint is in flight (not yet collected by the engine).
    pub fn checkpoint_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    fn checkpoint_async_inner(&mut self, want: Option<u64>) -> Result<AsyncCheckpoint> {
        let started = Instant::now();
        self.settle_logged();
        if self.regions.is_empty() {
            return Err(Error::NoRegions {
                dir: self.store.dir().to_path_buf(),
            });
        }
        let w = self.take(want, started)?;
        let version = w.version;
        let path = self.store.path_of(version);
        let shared = Shared::new(path.clone());
        let mechanism = self.mechanism(&w);
        let thread = match mechanism {
            Mechanism::Copy => Some(self.start_copy(w, &shared)?),
            Mechanism::Fork => match self.start_fork(w, &shared) {
                Ok(t) => t,
                Err((w, e)) => {
                    tracing::warn!(
                        "{}: cannot fork to write the checkpoint asynchronously ({e}); \
                         writing it now",
                        path.display()
                    );
                    return self.blocking(*w, shared, want);
                }
            },
            Mechanism::Block => return self.blocking(w, shared, want),
        };
        self.in_flight = Some(InFlight {
            thread,
            shared: Arc::clone(&shared),
        });
        Ok(AsyncCheckpoint {
            shared,
            version,
            snapshot: Some(match mechanism {
                Mechanism::Copy => Snapshot::Copy,
                _ => Snapshot::Fork,
            }),
        })
    }

    /// Which mechanism takes this checkpoint's snapshot.
    fn mechanism(&self, w: &Writing) -> Mechanism {
        let ps = self.config.page_size as u64;
        // Copies can serve only a scan the tracker's report chooses (a delta, not an audit).
        let copyable = match (&w.candidates, &w.parent) {
            (Some(c), Some(_)) if !w.audit && w.hashes.iter().all(|h| h.pages_known) => {
                c.iter().map(|c| c.len() as u64).sum::<u64>() * ps <= self.config.async_copy_limit
            }
            _ => false,
        };
        let forkable = self.regions.iter().all(|r| r.forkable);
        match self.config.snapshot {
            Snapshot::Copy if copyable => Mechanism::Copy,
            Snapshot::Fork if forkable => Mechanism::Fork,
            Snapshot::Auto if copyable => Mechanism::Copy,
            Snapshot::Auto if forkable => Mechanism::Fork,
            _ => Mechanism::Block,
        }
    }

    /// No mechanism applies: write the version now, and return a finished handle.
    fn blocking(
        &mut self,
        w: Writing,
        shared: Arc<Shared>,
        want: Option<u64>,
    ) -> Result<AsyncCheckpoint> {
        let version = w.version;
        let started = w.started;
        let landed = w.run(&self.live_sources())?;
        drop(w);
        let mut stats = match landed {
            Some(l) => {
                let stats = l.stats.clone();
                self.apply(l);
                self.maybe_compact();
                stats
            }
            None => {
                self.refresh_parent();
                self.checkpoint_inner(Some(want.unwrap_or(version)))?
            }
        };
        stats.blocked_secs = started.elapsed().as_secs_f64();
        shared.post(Ok(stats));
        Ok(AsyncCheckpoint {
            shared,
            version,
            snapshot: None,
        })
    }

    /// Copies the candidate pages into the staging buffer and starts the thread that writes
    /// the version from them.
    fn start_copy(
        &mut self,
        w: Writing,
        shared: &Arc<Shared>,
    ) -> Result<std::thread::JoinHandle<FlightEnd>> {
        let ps = self.config.page_size as usize;
        let mut staging = std::mem::take(&mut self.staging);
        staging.clear();
        let candidates = w.candidates.as_deref().unwrap_or(&[]);
        let mut spans = Vec::with_capacity(self.regions.len());
        for (r, c) in self.regions.iter().zip(candidates) {
            let bytes = r.mem.bytes();
            let at = staging.len();
            staging.reserve(c.len() * ps);
            for &p in c {
                let lo = (p as usize * ps).min(bytes.len());
                let page = &bytes[lo..(lo + ps).min(bytes.len())];
                staging.extend_from_slice(page);
                // Every copy takes a whole slot, so that the k-th is at k * page size.
                staging.resize(staging.len() + ps - page.len(), 0);
            }
            spans.push((bytes.len(), at..staging.len()));
        }
        let blocked = w.started.elapsed().as_secs_f64();
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("ckpt-flush".into())
            .spawn(move || {
                let sources: Vec<Source<'_>> = spans
                    .iter()
                    .map(|(len, span)| Source::Staged {
                        len: *len,
                        pages: &staging[span.clone()],
                    })
                    .collect();
                let result = w.run(&sources);
                drop(sources);
                let path = w.store.path_of(w.version);
                let mut end = finish(result, &path, &shared, blocked, Snapshot::Copy);
                end.staging = staging;
                end
            })
            .map_err(|e| Error::io(self.store.dir(), "start the flush thread", e))
    }

    /// Forks a child that writes the version from its copy-on-write view of the memory, and
    /// starts the thread that collects its answer. On failure to fork, gives `w` back.
    fn start_fork(
        &mut self,
        w: Writing,
        shared: &Arc<Shared>,
    ) -> std::result::Result<
        Option<std::thread::JoinHandle<FlightEnd>>,
        (Box<Writing>, std::io::Error),
    > {
        // Rayon's global pool is started and every one of its threads has run a job before
        // the fork: a thread still starting at the instant of the fork may hold a lock that
        // the child's own threads then wait on for ever (crossbeam-epoch's global collector,
        // initialised once, by the first thread that steals work; seen as a child hung in its
        // first flush, and its rank waiting for it). `current_num_threads` alone starts the
        // pool without waiting for it.
        rayon::broadcast(|_| ());
        let threads = rayon::current_num_threads();
        // What the parent's collecting thread needs (the child gets its copy of everything).
        let regions = w.regions.clone();
        let store = w.store.clone();
        let version = w.version;
        let started = w.started;
        let stall = w.config.flush_stall_limit;
        // The child's fast hashes must be the parent's: the same secret.
        crate::hash::init_secret();
        let this: &mut Checkpointer = self;
        let child = match crate::sys::fork_with_pipe(|| {
            // In the child: no thread but this one, so a fresh pool for rayon's work; no
            // logging (another thread of the parent may have held the subscriber's lock).
            let _quiet = tracing::dispatcher::set_default(&tracing::Dispatch::none());
            // The application's threads come first: the flush takes the CPU they leave.
            crate::sys::lower_thread_priority(FLUSH_NICENESS);
            crate::fault::hang("flush-child");
            let result = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
                Ok(pool) => pool.install(|| this.flush_in_child(w)),
                Err(e) => Err(Error::Flush {
                    path: this.store.path_of(version),
                    why: format!("cannot start threads in the flushing child: {e}"),
                }),
            };
            encode(&result)
        }) {
            Ok(c) => c,
            Err(e) => {
                // The closure (and the `Writing` it owned) was dropped uncalled; take again
                // without asking the tracker: its report is still pending there.
                return Err((Box::new(self.writing(version, None, false, started)), e));
            }
        };
        let blocked = started.elapsed().as_secs_f64();
        let collector = Arc::clone(shared);
        let path = store.path_of(version);
        Ok(std::thread::Builder::new()
            .name("ckpt-flush".into())
            .spawn(move || {
                let (result, memory_fault) = match collect(child, &path, &store, &regions, stall) {
                    Ok(l) => (Ok(Some(l)), false),
                    Err((e, memory_fault)) => (Err(e), memory_fault),
                };
                let mut end = finish(result, &path, &collector, blocked, Snapshot::Fork);
                end.fork_unusable = memory_fault;
                end
            })
            .map_err(|e| {
                // The child runs on, uncollected; the engine keeps the pages pending, so a
                // later version covers them whether or not this one commits.
                shared.post(Err(Error::io(
                    self.store.path_of(version),
                    "start the flush thread",
                    e,
                )))
            })
            .ok())
    }

    /// In the forked child: write and commit the version from this process's memory, which
    /// is the parent's at the instant of the fork. Retries as the blocking path does when a
    /// compaction removed the parent meanwhile (without the tracker's report, which stays the
    /// parent's).
    fn flush_in_child(&mut self, mut w: Writing) -> Result<Landed> {
        for _ in 0..4 {
            if let Some(l) = w.run(&self.live_sources())? {
                return Ok(l);
            }
            self.parent = w.parent.clone();
            self.refresh_parent();
            w = w.without_candidates(self.usable_parent().cloned());
        }
        Err(Error::Contended {
            dir: self.store.dir().to_path_buf(),
        })
    }

    /// Waits for the checkpoint in flight, if any, and applies its outcome; returns what it
    /// shares with its handle.
    fn settle(&mut self) -> Option<Arc<Shared>> {
        let f = self.in_flight.take()?;
        let end = match f.thread.map(|t| t.join()) {
            Some(Ok(end)) => end,
            Some(Err(_)) => {
                f.shared.post(Err(Error::Panicked {
                    what: "the asynchronous checkpoint's flush",
                }));
                FlightEnd::default()
            }
            None => FlightEnd::default(),
        };
        if end.staging.capacity() > 0 {
            self.staging = end.staging;
        }
        if let Some(l) = end.landed {
            self.apply(l);
            self.maybe_compact();
        }
        if end.stale {
            self.refresh_parent();
        }
        if end.fork_unusable {
            tracing::warn!(
                "{}: a forked child could not read the registered memory (excluded from fork \
                 since it was registered?); asynchronous checkpoints no longer fork",
                self.store.dir().display()
            );
            self.regions.iter_mut().for_each(|r| r.forkable = false);
        }
        Some(f.shared)
    }

    /// [`settle`](Self::settle) for callers that do not report the outcome: it stays for
    /// the handle; if the handle is gone, a failure is logged, since nobody else can see it.
    pub(super) fn settle_logged(&mut self) {
        let Some(shared) = self.settle() else {
            return;
        };
        if Arc::strong_count(&shared) == 1 {
            let unclaimed = shared.lock().result.take();
            if let Some(Err(e)) = unclaimed {
                tracing::error!("asynchronous checkpoint failed (nothing was committed): {e}");
            }
        }
    }
}

/// Posts a flush's outcome to its handle and turns it into what the engine applies.
fn finish(
    result: Result<Option<Landed>>,
    path: &std::path::Path,
    shared: &Shared,
    blocked: f64,
    snapshot: Snapshot,
) -> FlightEnd {
    let mut end = FlightEnd::default();
    match result {
        Ok(Some(mut l)) => {
            l.stats.blocked_secs = blocked;
            l.stats.snapshot = Some(snapshot);
            shared.post(Ok(l.stats.clone()));
            end.landed = Some(l);
        }
        Ok(None) => {
            end.stale = true;
            shared.post(Err(Error::Flush {
                path: path.to_path_buf(),
                why: "a compaction removed its parent meanwhile; the next checkpoint is a \
                      full version"
                    .into(),
            }));
        }
        Err(e) => shared.post(Err(e)),
    }
    end
}

/// In the parent: reads the forked child's answer, waits for it, and reads the new parent
/// picture from the committed file. On failure, also whether the child died of a memory
/// fault.
fn collect(
    mut child: crate::sys::Child,
    path: &std::path::Path,
    store: &crate::store::Store,
    regions: &[(u64, usize)],
    stall: Option<std::time::Duration>,
) -> std::result::Result<Landed, (Error, bool)> {
    let flush_err = |why: String| Error::Flush {
        path: path.to_path_buf(),
        why,
    };
    let read = crate::sys::read_answer(&mut child, stall);
    let status = crate::sys::wait_child(child.pid).map_err(|e| {
        (
            flush_err(format!("cannot wait for the flushing child: {e}")),
            false,
        )
    })?;
    // A child killed as hung says so, rather than "killed by SIGKILL".
    let answer = match read {
        Ok(crate::sys::Answer::Stalled(d)) => {
            return Err((
                flush_err(format!(
                    "the flushing child made no progress for {} s (all its threads waiting \
                     for locks, no CPU time used, no I/O done): taken as hung and killed; \
                     nothing was committed, and the next checkpoint stores its pages",
                    d.as_secs()
                )),
                false,
            ))
        }
        Ok(crate::sys::Answer::Complete(a)) => Ok(a),
        Err(e) => Err(e),
    };
    if let Some(end) = status {
        return Err((
            flush_err(format!("the flushing child {}", end.how)),
            end.memory_fault,
        ));
    }
    let answer = answer.map_err(|e| {
        (
            flush_err(format!("cannot read the flushing child's answer: {e}")),
            false,
        )
    })?;
    let mut landed = decode(&answer, store)
        .ok_or_else(|| flush_err("the flushing child's answer is malformed".into()))
        .and_then(|r| r.map_err(flush_err))
        .map_err(|e| (e, false))?;
    // The new parent picture, from the committed file (if it cannot be read, the next
    // version is full: correct, only larger).
    landed.parent = Version::open(&landed.stats.path)
        .and_then(|v| super::restore::parent_from_version(&v, landed.stats.version, regions))
        .map_err(|e| tracing::warn!("{e}; the next checkpoint is a full version"))
        .ok();
    Ok(landed)
}

// The child's answer: a tag byte (0: committed, 1: error), then little-endian fields.

fn put(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    out.push(v.is_some() as u8);
    put(out, v.unwrap_or(0));
}

/// Encodes a flush's outcome for the parent.
fn encode(result: &Result<Landed>) -> Vec<u8> {
    let mut out = Vec::new();
    match result {
        Err(e) => {
            out.push(1);
            out.extend_from_slice(e.to_string().as_bytes());
        }
        Ok(l) => {
            let s = &l.stats;
            out.push(0);
            put(&mut out, s.version);
            put_opt(&mut out, s.parent);
            out.extend_from_slice(&s.identity.file_id);
            out.extend_from_slice(&s.identity.index_checksum);
            for v in [s.file_bytes, s.pages_total, s.pages_stored, s.hashed_bytes] {
                put(&mut out, v);
            }
            put(&mut out, s.depth as u64);
            out.push(s.tracking as u8);
            put_opt(&mut out, s.audit_misses);
            put(&mut out, s.scan_secs.to_bits());
            put(&mut out, s.write_secs.to_bits());
            put_opt(&mut out, l.outcome.reported);
            out.push(l.outcome.used as u8);
            put(&mut out, l.outcome.pages_total);
            out.push(l.audit as u8);
            put(&mut out, u64::from(l.sampling.raw_streak));
            put(&mut out, l.sampling.batches);
            put(&mut out, l.updates.len() as u64);
            for u in &l.updates {
                put(&mut out, u.len() as u64);
                for &(p, f) in u {
                    put(&mut out, p);
                    out.extend_from_slice(&f.to_le_bytes());
                }
            }
        }
    }
    out
}

/// Reads what [`encode`] wrote.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
    fn u64(&mut self) -> Option<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes::<1>().map(|b| b[0])
    }
    fn opt(&mut self) -> Option<Option<u64>> {
        let some = self.u8()? != 0;
        let v = self.u64()?;
        Some(some.then_some(v))
    }
}

/// Decodes the child's answer: `None` if malformed, `Some(Err(message))` for a failure.
fn decode(
    bytes: &[u8],
    store: &crate::store::Store,
) -> Option<std::result::Result<Landed, String>> {
    let (&tag, rest) = bytes.split_first()?;
    if tag == 1 {
        return Some(Err(String::from_utf8_lossy(rest).into_owned()));
    }
    let mut r = Reader(rest);
    let version = r.u64()?;
    let parent = r.opt()?;
    let identity = crate::format::Identity {
        file_id: r.bytes()?,
        index_checksum: r.bytes()?,
    };
    let [file_bytes, pages_total, pages_stored, hashed_bytes] =
        [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    let depth = u32::try_from(r.u64()?).ok()?;
    let tracking = TrackingKind::from_u8(r.u8()?)?;
    let audit_misses = r.opt()?;
    let scan_secs = f64::from_bits(r.u64()?);
    let write_secs = f64::from_bits(r.u64()?);
    let outcome = Outcome {
        reported: r.opt()?,
        used: r.u8()? != 0,
        pages_total: r.u64()?,
    };
    let audit = r.u8()? != 0;
    let sampling = crate::write::file::Sampling {
        raw_streak: u32::try_from(r.u64()?).ok()?,
        batches: r.u64()?,
    };
    let nregions = r.u64()?;
    let mut updates = Vec::new();
    for _ in 0..nregions {
        let n = r.u64()?;
        let mut u = Vec::with_capacity(n.min(r.0.len() as u64 / 24) as usize);
        for _ in 0..n {
            u.push((r.u64()?, u128::from_le_bytes(r.bytes()?)));
        }
        updates.push(u);
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Ok(Landed {
        stats: CheckpointStats {
            version,
            parent,
            path: store.path_of(version),
            identity,
            file_bytes,
            pages_total,
            pages_stored,
            hashed_bytes,
            depth,
            tracking,
            audit_misses,
            scan_secs,
            write_secs,
            blocked_secs: 0.0,
            snapshot: None,
        },
        outcome,
        audit,
        updates,
        parent: None,
        sampling,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckpointStats;

    /// What a forked child sends back is what the parent reads: the statistics, the tracker's
    /// outcome, the new hashes and the compression samples' state.
    #[test]
    fn a_flush_outcome_survives_the_pipe() {
        let dir = std::env::temp_dir().join(format!("ckpt-flight-{}", std::process::id()));
        let store = crate::store::Store::new(&dir, "t").expect("store");
        let landed = Landed {
            stats: CheckpointStats {
                version: 7,
                parent: Some(6),
                path: store.path_of(7),
                identity: crate::format::Identity {
                    file_id: [3; 16],
                    index_checksum: [4; 32],
                },
                file_bytes: 12345,
                pages_total: 100,
                pages_stored: 9,
                hashed_bytes: 4096 * 9,
                depth: 2,
                tracking: TrackingKind::Uffd,
                audit_misses: None,
                scan_secs: 0.25,
                write_secs: 0.5,
                blocked_secs: 0.0,
                snapshot: None,
            },
            outcome: Outcome {
                reported: Some(9),
                used: true,
                pages_total: 100,
            },
            audit: false,
            updates: vec![vec![(1, 11), (5, u128::MAX)], vec![]],
            parent: None,
            sampling: crate::write::file::Sampling {
                raw_streak: 5,
                batches: 77,
            },
        };
        let bytes = encode(&Ok(landed));
        let back = decode(&bytes, &store)
            .expect("well formed")
            .expect("a success");
        assert_eq!(back.stats.version, 7);
        assert_eq!(back.stats.parent, Some(6));
        assert_eq!(back.stats.identity.index_checksum, [4; 32]);
        assert_eq!(back.stats.file_bytes, 12345);
        assert_eq!(back.stats.write_secs, 0.5);
        assert_eq!(back.outcome.reported, Some(9));
        assert_eq!(back.updates, vec![vec![(1, 11), (5, u128::MAX)], vec![]]);
        assert_eq!(back.sampling.raw_streak, 5);
        assert_eq!(back.sampling.batches, 77);
        // A truncated answer is refused, not read as something else.
        assert!(decode(&bytes[..bytes.len() - 1], &store).is_none());
    }
}
