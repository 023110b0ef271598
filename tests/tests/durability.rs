//! Durability of new directories (issue 8, item 5): every directory the engine creates — a
//! store, a job store, `ranks/NNNN/R`, `commits/` — is created mode 0700 whatever the umask,
//! and its parent is fsynced after the `mkdir`, so that a power loss after the first commit
//! cannot lose the directory that holds it.
//!
//! One test in this binary: it sets the process umask.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ckpt_engine::fault::{start_recording, take_events};
use ckpt_engine::job::{CommitRecord, JobStore};
use ckpt_engine::{Checkpointer, Config};

/// Every `mkdir` of a directory under `root` is followed by an fsync of its parent.
fn check_parents_fsynced(events: &[(&'static str, PathBuf)], root: &Path) -> usize {
    let mut checked = 0;
    for (i, (what, dir)) in events.iter().enumerate() {
        if *what != "mkdir" || !dir.starts_with(root) {
            continue;
        }
        let parent = dir.parent().unwrap();
        assert!(
            events[i + 1..]
                .iter()
                .any(|(w, p)| *w == "fsync-dir" && p == parent),
            "{} was created but {} was never fsynced after it: {events:?}",
            dir.display(),
            parent.display()
        );
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
        checked += 1;
    }
    checked
}

#[test]
fn new_directories_are_0700_and_reach_their_parents() {
    // SAFETY: umask(2) cannot fail; this binary has only this test.
    unsafe { libc::umask(0) };
    start_recording();
    let tmp = tempfile::tempdir().unwrap();

    // A plain store three levels down.
    let store = tmp.path().join("a").join("b").join("store");
    let mut ck = Checkpointer::open(&store, "d", Config::default()).unwrap();
    ck.alloc_region::<u8>(1, 10_000).unwrap();
    let stats = ck.checkpoint().unwrap();
    drop(ck);
    let version_mode = std::fs::metadata(&stats.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(version_mode, 0o600);

    // A job store: ckpt-job, a rank's chain, a commit record.
    let jdir = tmp.path().join("job");
    let job = JobStore::new(&jdir, "heat").unwrap();
    job.write_meta(1).unwrap();
    let mut ck = Checkpointer::open(job.rank_dir(0), "heat", Config::default()).unwrap();
    ck.alloc_region::<u8>(1, 10_000).unwrap();
    let s = ck.checkpoint().unwrap();
    job.write_commit(&CommitRecord {
        version: s.version,
        created_unix_nanos: 1,
        ranks: vec![s.identity],
    })
    .unwrap();

    let events = take_events();
    let checked = check_parents_fsynced(&events, tmp.path());
    // a, b, store, job, ranks, 0000, 0, commits
    assert_eq!(checked, 8, "{events:?}");
}
