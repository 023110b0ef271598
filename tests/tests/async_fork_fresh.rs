//! A fork snapshot in a process that has hashed nothing yet (its own test binary, so that no
//! other test warms the process first): the child's change-detection hashes must be
//! comparable with the parent's, or every delta would store every page; and the first fork
//! must not catch rayon's global pool starting up (a child then waited for ever on a lock
//! one of the parent's starting threads held at the fork).

use ckpt_engine::{Checkpointer, Config, Snapshot, Tracking};

#[test]
fn fork_deltas_in_a_fresh_process_store_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .with_tracking(Tracking::Hash)
        .with_snapshot(Snapshot::Fork);
    let mut ck = Checkpointer::open(dir.path(), "fresh", config).unwrap();
    let h = ck.alloc_region::<u8>(1, 4 << 20).unwrap();
    ck.region_mut(&h).unwrap().fill(7);
    let full = ck.checkpoint_async().unwrap();
    assert_eq!(full.snapshot(), Some(Snapshot::Fork));
    let full = full.wait().unwrap();
    assert_eq!(full.pages_stored, full.pages_total);
    for round in 1..=3u8 {
        ck.region_mut(&h).unwrap()[round as usize * 100_000] = round;
        let d = ck.checkpoint_async().unwrap().wait().unwrap();
        assert!(d.parent.is_some());
        assert_eq!(
            d.pages_stored, 1,
            "delta {} stored {} pages",
            d.version, d.pages_stored
        );
    }
}

/// Set in the processes [`a_first_fork_never_hangs_its_child`] starts: be one of them.
const ONE_FORK: &str = "CKPT_TEST_ONE_FRESH_FORK";

/// One process, one asynchronous fork checkpoint, as the first thing it does with rayon.
#[test]
fn a_first_fork_never_hangs_its_child() {
    if let Some(dir) = std::env::var_os(ONE_FORK) {
        let config = Config::default()
            .with_tracking(Tracking::Hash)
            .with_snapshot(Snapshot::Fork);
        let mut ck = Checkpointer::open(&dir, "fresh", config).unwrap();
        let h = ck.alloc_region::<u8>(1, 1 << 20).unwrap();
        ck.region_mut(&h).unwrap().fill(1);
        let s = ck.checkpoint_async().unwrap().wait().unwrap();
        assert_eq!(s.pages_stored, s.pages_total);
        return;
    }
    // Fresh processes, each doing its first fork (here, one in a few hung before the fix).
    let exe = std::env::current_exe().unwrap();
    for run in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "a_first_fork_never_hangs_its_child",
                "--test-threads",
                "1",
            ])
            .env(ONE_FORK, dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > std::time::Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("run {run}: the first fork checkpoint did not finish in 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(status.success(), "run {run}: {status}");
    }
}
