//! Asynchronous checkpoints: the version written is exactly the state at the instant of the
//! call, whatever the application writes while the flush runs; in every snapshot mechanism
//! and tracking mode, with transparent huge pages, under back-pressure and at drop.

use ckpt_engine::bench::Rng;
use ckpt_engine::catalog::verify_version;
use ckpt_engine::{Checkpointer, Config, Snapshot, Tracking};
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
        s.scribble(3);
        let v = h.version();
        let stats = h.wait().unwrap();
        assert_eq!(stats.version, v);
        assert_eq!(stats.snapshot, mechanisms.last().copied().flatten());
        expected.push((v, before));
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
