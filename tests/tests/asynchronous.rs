//! Asynchronous checkpoints: the version written is exactly the state at the instant of the
//! call, whatever the application writes while the flush runs; in every snapshot mechanism
//! and tracking mode, with transparent huge pages, under back-pressure and at drop.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ckpt_engine::bench::Rng;
use ckpt_engine::catalog::verify_version;
use ckpt_engine::{Checkpointer, Config, Snapshot, Store, Tracking};
use memmap2::MmapMut;

/// An engine region, a caller region backed by transparent huge pages, and a small region
/// whose size is no multiple of the page size.
struct State {
    ck: Checkpointer,
    raw: MmapMut,
}

const ENGINE_BYTES: usize = 12 << 20;
const RAW_BYTES: usize = 8 << 20;
const SMALL_BYTES: usize = 10_123;

fn open(dir: &std::path::Path, config: Config) -> State {
    let mut ck = Checkpointer::open(dir, "a", config).unwrap();
    ck.alloc_region::<u8>(1, ENGINE_BYTES).unwrap();
    ck.alloc_region::<u8>(3, SMALL_BYTES).unwrap();
    let mut raw = MmapMut::map_anon(RAW_BYTES).unwrap();
    // THP where the kernel allows it ("madvise" or "always"); the test holds either way.
    let _ = raw.advise(memmap2::Advice::HugePage);
    raw.fill(0);
    // SAFETY: `raw` lives as long as the engine in `State` (dropped after it: fields drop in
    // order) and is only touched between engine calls.
    unsafe { ck.register_raw(2, raw.as_mut_ptr(), RAW_BYTES).unwrap() };
    State { ck, raw }
}

impl State {
    /// Runs `f` on each region's bytes.
    fn each(&mut self, mut f: impl FnMut(&mut [u8])) {
        for id in [1u64, 3] {
            let h = self.ck.handle::<u8>(id).unwrap();
            f(self.ck.region_mut(&h).unwrap());
        }
        f(&mut self.raw[..]);
    }

    /// Rewrites `n` random ranges of every region.
    fn mutate(&mut self, rng: &mut Rng, n: usize) {
        self.each(|b| {
            for _ in 0..n {
                let at = rng.below(b.len() as u64) as usize;
                let len = (rng.below(9000) as usize + 1).min(b.len() - at);
                b[at..at + len].fill(rng.next_u64() as u8);
            }
        });
    }

    /// Overwrites every page of every region `passes` times.
    fn scribble(&mut self, passes: u8) {
        for pass in 0..passes {
            self.each(|b| {
                for page in b.chunks_mut(4096) {
                    page.fill(0xA0 ^ pass);
                }
            });
        }
    }

    /// A copy of every region.
    fn copy(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.each(|b| out.push(b.to_vec()));
        out
    }

    /// Writes back what [`copy`](Self::copy) took.
    fn put_back(&mut self, saved: &[Vec<u8>]) {
        let mut it = saved.iter();
        self.each(|b| b.copy_from_slice(it.next().unwrap()));
    }

    /// blake3 of the regions, in id order.
    fn hash(&mut self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for id in [1u64, 2, 3] {
            h.update(self.ck.region_bytes(id).unwrap());
        }
        *h.finalize().as_bytes()
    }
}

/// Restores version `v` into a fresh engine and returns the hash of its regions.
fn restored(dir: &std::path::Path, v: u64) -> [u8; 32] {
    let mut s = open(dir, Config::default().with_tracking(Tracking::Hash));
    s.ck.restore(Some(v)).unwrap();
    s.hash()
}

fn uffd_available() -> bool {
    let dir = tempfile::tempdir().unwrap();
    Checkpointer::open(
        dir.path(),
        "probe",
        Config::default().with_tracking(Tracking::Uffd),
    )
    .is_ok()
}

/// Versions 1..=6 (a full version, then deltas, an audit, and a full version again by depth
/// limit) taken asynchronously, the regions scribbled over while each flush runs.
fn exactness(tracking: Tracking, snapshot: Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .with_tracking(tracking)
        .with_snapshot(snapshot)
        .with_max_chain_depth(3)
        .with_audit_every(4);
    let mut s = open(dir.path(), config);
    let mut rng = Rng::new(17);
    let mut expected = Vec::new();
    let mut overlapped = 0;
    let mut mechanisms = Vec::new();
    for _ in 0..6 {
        s.mutate(&mut rng, 40);
        let before = s.hash();
        let h = s.ck.checkpoint_async().unwrap();
        mechanisms.push(h.snapshot());
        if !h.is_done() {
            overlapped += 1;
        }
        let saved = s.copy();
        s.scribble(3);
        let v = h.version();
        let stats = h.wait().unwrap();
        assert_eq!(stats.version, v);
        // A delta stores what changed, not everything: the flush (in a thread or a child)
        // compares with the hashes the engine remembers.
        if stats.parent.is_some() {
            assert!(
                stats.pages_stored * 4 < stats.pages_total,
                "{tracking}/{snapshot}: delta {v} stored {} of {} pages",
                stats.pages_stored,
                stats.pages_total
            );
        }
        assert_eq!(stats.snapshot, mechanisms.last().copied().flatten());
        expected.push((v, before));
        // Put the contents back as they were at the call, so that the next delta holds only
        // the next mutation.
        s.put_back(&saved);
    }
    drop(s);
    for (v, want) in &expected {
        verify_version(&dir.path().join(format!("a.ckpt.{v}"))).unwrap();
        assert_eq!(
            &restored(dir.path(), *v),
            want,
            "{tracking}/{snapshot}: version {v} is not the state at the call ({mechanisms:?})"
        );
    }
    // Each flush that was still running when the scribbling began proves exactness under
    // concurrent writes; the versions are large enough (20 MiB) that most are.
    if mechanisms.iter().any(Option::is_some) {
        assert!(
            overlapped >= 1,
            "{tracking}/{snapshot}: no flush overlapped the writes"
        );
    }
    // The mechanism is what was asked for, where it applies.
    match snapshot {
        Snapshot::Fork => assert!(mechanisms.iter().all(|m| *m == Some(Snapshot::Fork))),
        Snapshot::Copy if tracking == Tracking::Uffd => {
            // Deltas chosen by the tracker are copied; full versions and audits block.
            assert_eq!(mechanisms[0], None, "{mechanisms:?}");
            assert_eq!(mechanisms[1], Some(Snapshot::Copy), "{mechanisms:?}");
        }
        Snapshot::Copy => assert!(mechanisms.iter().all(Option::is_none)),
        _ => assert!(mechanisms.iter().all(Option::is_some), "{mechanisms:?}"),
    }
}

#[test]
fn async_versions_hold_the_state_at_the_call_fork_hash() {
    exactness(Tracking::Hash, Snapshot::Fork);
}

#[test]
fn async_versions_hold_the_state_at_the_call_auto_hash() {
    exactness(Tracking::Hash, Snapshot::Auto);
}

#[test]
fn async_versions_hold_the_state_at_the_call_copy_hash() {
    exactness(Tracking::Hash, Snapshot::Copy);
}

#[test]
fn async_versions_hold_the_state_at_the_call_uffd() {
    if !uffd_available() {
        eprintln!("userfaultfd write-protection unavailable here; uffd cases skipped");
        return;
    }
    for snapshot in [Snapshot::Copy, Snapshot::Fork, Snapshot::Auto] {
        exactness(Tracking::Uffd, snapshot);
    }
}

/// Checkpoints asked for faster than flushes complete: each call waits for the one in flight
/// (never two at once, so memory stays bounded), no version is lost, numbers stay in order.
#[test]
fn back_to_back_async_checkpoints_wait_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), Config::default());
    let mut rng = Rng::new(5);
    let mut expected = Vec::new();
    let mut previous: Option<ckpt_engine::AsyncCheckpoint> = None;
    for _ in 0..12 {
        s.mutate(&mut rng, 30);
        let before = s.hash();
        let h = s.ck.checkpoint_async().unwrap();
        if let Some(p) = previous.take() {
            assert!(
                p.is_done(),
                "version {} still in flight beside {}",
                p.version(),
                h.version()
            );
            assert_eq!(p.version() + 1, h.version());
            p.wait().unwrap();
        }
        expected.push((h.version(), before));
        previous = Some(h);
    }
    // The engine collects the last one; its handle then has nothing left to deliver.
    let last = previous.unwrap();
    let stats =
        s.ck.wait_checkpoint()
            .unwrap()
            .expect("outcome of the last checkpoint");
    assert_eq!(stats.version, last.version());
    assert!(last.wait().is_err());
    assert!(s.ck.wait_checkpoint().unwrap().is_none());
    drop(s);
    let versions: Vec<u64> = expected.iter().map(|e| e.0).collect();
    assert_eq!(versions, (1..=12).collect::<Vec<_>>());
    for (v, want) in &expected {
        assert_eq!(&restored(dir.path(), *v), want, "version {v}");
    }
}

/// Dropping the engine (or restoring) waits for the flush: the version is committed.
#[test]
fn drop_and_restore_wait_for_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), Config::default().with_snapshot(Snapshot::Fork));
    let mut rng = Rng::new(9);
    s.mutate(&mut rng, 50);
    let first = s.hash();
    let h1 = s.ck.checkpoint_async().unwrap();
    s.mutate(&mut rng, 50);
    // A restore waits for version 1, then brings its contents back.
    s.ck.restore(Some(h1.version())).unwrap();
    assert_eq!(s.hash(), first);
    s.mutate(&mut rng, 50);
    let second = s.hash();
    let h2 = s.ck.checkpoint_async().unwrap();
    let v2 = h2.version();
    drop(h2);
    drop(s);
    assert_eq!(restored(dir.path(), v2), second);
}

/// What one run of the helper program printed before it ended or was killed.
#[derive(Default)]
struct Run {
    /// `started V HASH`: the state each asynchronous checkpoint was asked to save.
    started: Vec<(u64, String)>,
    /// `committed V`: versions whose flush the program saw complete.
    committed: Vec<u64>,
    /// The state of a call announced (`starting HASH`) whose `started` line never came: the
    /// program was killed inside the call or just after it returned.
    unconfirmed: Option<String>,
    /// From the first `ready` to the end, if not killed.
    took: Option<Duration>,
    /// `restored V`: the newest committed version when the run started.
    restored: Option<u64>,
}

const CRASH_MIB: usize = 2;

/// Runs the helper: restore the newest version, then two asynchronous checkpoints, the first
/// flushed while the second step mutates. Kills it `delay` after its first `ready`, if given.
fn run_async(dir: &str, seed: u64, snapshot: &str, delay: Option<Duration>) -> Run {
    let mut child = Command::new(common::testapp_path())
        .args([
            dir,
            "acrash",
            &CRASH_MIB.to_string(),
            &seed.to_string(),
            "2",
            "restore=latest",
            "writes=400",
            "ready",
            &format!("async={snapshot}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn testapp");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut run = Run::default();
    let mut first_ready = None;
    let mut killed = false;
    while let Some(Ok(line)) = lines.next() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("ready") if first_ready.is_none() => {
                first_ready = Some(Instant::now());
                if let Some(d) = delay {
                    std::thread::sleep(d);
                    let _ = child.kill(); // SIGKILL
                    killed = true;
                }
            }
            Some("starting") => run.unconfirmed = Some(it.next().unwrap().to_string()),
            Some("started") => {
                run.unconfirmed = None;
                run.started.push((
                    it.next().unwrap().parse().unwrap(),
                    it.next().unwrap().to_string(),
                ))
            }
            Some("committed") => run.committed.push(it.next().unwrap().parse().unwrap()),
            Some("restored") => run.restored = Some(it.next().unwrap().parse().unwrap()),
            _ => {}
        }
    }
    let status = child.wait().unwrap();
    if !killed {
        assert!(status.success(), "testapp failed: {status}");
        run.took = first_ready.map(|t| t.elapsed());
    }
    run
}

/// SIGKILL at random instants of asynchronous checkpoints (snapshot, flush, commit, both
/// mechanisms), 100 times: no partial version is ever visible, every version seen committed
/// stays, and every version holds exactly the state of its call.
#[test]
fn sigkill_during_async_flushes_never_leaves_a_partial_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let store = Store::new(dir.path(), "acrash").unwrap();
    let mut started: BTreeMap<u64, String> = BTreeMap::new();
    let mut committed = Vec::new();
    let mut span = Duration::ZERO;
    for (i, m) in ["copy", "fork"].into_iter().enumerate() {
        let run = run_async(d, i as u64, m, None);
        span = span.max(run.took.expect("not killed"));
        started.extend(run.started);
        committed.extend(run.committed);
    }
    let mut unconfirmed: Vec<String> = Vec::new();
    let mut rng = Rng::new(77);
    for i in 0..100u64 {
        let m = ["copy", "fork", "auto"][i as usize % 3];
        let delay = Duration::from_micros(rng.below(span.as_micros() as u64 * 6 / 5 + 1));
        let run = run_async(d, 10 + i, m, Some(delay));
        unconfirmed.extend(run.unconfirmed);
        // A version started by an earlier run but newer than this run's restored one never
        // committed, and this run reuses its number: its state is not that version's. (Kept,
        // it would stand for a version that this run committed without confirming it.)
        if let Some(r) = run.restored {
            started.retain(|&v, _| v <= r);
        }
        started.extend(run.started);
        committed.extend(run.committed);
        let versions = store.versions().unwrap();
        for v in &versions {
            verify_version(&store.path_of(*v))
                .unwrap_or_else(|e| panic!("after kill {i} ({m}): version {v} is broken: {e}"));
        }
        for v in &committed {
            assert!(
                versions.contains(v),
                "after kill {i}: committed version {v} vanished"
            );
        }
    }
    // Every version on disk was asked for by a call whose state we know, and holds it: a
    // confirmed call's (`started V`), or else the state of a call that a kill cut off right
    // after its announcement (each such state accounts for one version at most).
    let versions = store.versions().unwrap();
    assert!(versions.len() >= 4, "{versions:?}");
    for v in &versions {
        let got = ckpt_tests::restore_hash(dir.path(), "acrash", CRASH_MIB, *v).unwrap();
        match started.get(v) {
            Some(want) => assert_eq!(&got, want, "version {v}"),
            None => {
                let at = unconfirmed
                    .iter()
                    .position(|h| *h == got)
                    .unwrap_or_else(|| {
                        panic!("version {v} on disk holds a state no call asked for")
                    });
                unconfirmed.swap_remove(at);
            }
        }
    }
    // Killed flushes leave temporary files, but each writer that opens the chain removes those
    // of dead processes: they do not pile up.
    let temps = store.temp_files().unwrap();
    assert!(temps.len() <= 2, "temporaries piled up: {temps:?}");
}

/// Caller memory excluded from fork: detected at registration (the checkpoint blocks
/// instead of forking), or excluded later (the child dies reading it: the flush fails with
/// a message naming it, nothing is committed, the engine stops forking, and the next
/// checkpoint holds the pages the failed one would have).
#[test]
fn memory_excluded_from_fork_is_never_snapshotted_by_forking() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .with_tracking(Tracking::Hash)
        .with_snapshot(Snapshot::Fork);
    let mut ck = Checkpointer::open(dir.path(), "nofork", config).unwrap();
    let mut early = MmapMut::map_anon(1 << 20).unwrap();
    let mut late = MmapMut::map_anon(1 << 20).unwrap();
    early.fill(1);
    late.fill(2);
    // SAFETY: madvise on mappings this test owns; MADV_DONTFORK changes no contents.
    let rc = unsafe { libc::madvise(early.as_mut_ptr().cast(), early.len(), libc::MADV_DONTFORK) };
    assert_eq!(rc, 0);
    // SAFETY: both maps outlive the engine (dropped at the end of the test, after `ck`) and
    // are only touched between engine calls.
    unsafe {
        ck.register_raw(1, late.as_mut_ptr(), late.len()).unwrap();
    }
    let h = ck.checkpoint_async().unwrap();
    assert_eq!(h.snapshot(), Some(Snapshot::Fork));
    h.wait().unwrap();
    // Excluded after registration: the child cannot read it.
    // SAFETY: as above.
    let rc = unsafe { libc::madvise(late.as_mut_ptr().cast(), late.len(), libc::MADV_DONTFORK) };
    assert_eq!(rc, 0);
    late[4096..8192].fill(3);
    let h = ck.checkpoint_async().unwrap();
    let v = h.version();
    let e = h.wait().unwrap_err().to_string();
    assert!(
        e.contains(&format!("nofork.ckpt.{v}")) && e.contains("SIGSEGV"),
        "{e}"
    );
    assert!(!dir.path().join(format!("nofork.ckpt.{v}")).exists());
    // The engine no longer forks; the next version holds the change.
    let h = ck.checkpoint_async().unwrap();
    assert_eq!(h.snapshot(), None);
    let s = h.wait().unwrap();
    assert_eq!(s.pages_stored, 1);
    // Excluded before registration: never forked.
    let mut ck2 = Checkpointer::open(
        dir.path(),
        "early",
        Config::default().with_snapshot(Snapshot::Fork),
    )
    .unwrap();
    // SAFETY: as above.
    unsafe {
        ck2.register_raw(1, early.as_mut_ptr(), early.len())
            .unwrap();
    }
    assert_eq!(ck2.checkpoint_async().unwrap().snapshot(), None);
    drop(ck2);
    drop(ck);
}
