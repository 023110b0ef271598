//! The public API's guarantees that are not about bytes on disk: region handles cannot be
//! forged or carried to another engine, and lookups that could panic return errors.

use ckpt_engine::read::Version;
use ckpt_engine::{Checkpointer, Config, Error};

#[test]
fn a_region_handle_only_works_with_the_engine_that_issued_it() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut a = Checkpointer::open(a_dir.path(), "a", Config::default()).unwrap();
    let mut b = Checkpointer::open(b_dir.path(), "b", Config::default()).unwrap();
    let ha = a.alloc_region::<u64>(1, 1000).unwrap();
    let hb = b.alloc_region::<u64>(1, 1000).unwrap();
    a.region_mut(&ha).unwrap()[0] = 7;
    // Same id, same size, other engine: refused, never someone else's memory.
    let e = b.region_mut(&ha).unwrap_err();
    assert!(matches!(e, Error::Region { id: 1, .. }), "{e}");
    assert!(a.region(&hb).is_err());
    // The engine issues a handle for a region it holds, and checks the element size.
    let h = a.handle::<u64>(1).unwrap();
    assert_eq!(a.region(&h).unwrap()[0], 7);
    assert!(a.handle::<u64>(2).is_err());
    let h3 = a.alloc_region::<u8>(3, 1001).unwrap();
    assert_eq!(h3.len(), 1001);
    assert!(a.handle::<u64>(3).is_err(), "1001 bytes are not whole u64s");
}

#[test]
fn restoring_a_region_number_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut ck = Checkpointer::open(dir.path(), "r", Config::default()).unwrap();
    ck.alloc_region::<u8>(1, 5000).unwrap();
    let s = ck.checkpoint().unwrap();
    let v = Version::open(&s.path).unwrap();
    let mut buf = vec![0u8; 5000];
    v.restore_region(0, &mut buf, false).unwrap();
    let e = v.restore_region(1, &mut buf, false).unwrap_err();
    assert!(e.to_string().contains("region number 1"), "{e}");
}

/// Issue 12: temporary files of crashed writers do not pile up. Opening a chain (which takes
/// its writer lock) removes those whose process is gone, and leaves a live process's.
#[test]
fn opening_a_chain_removes_dead_writers_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join(".t.ckpt.5.tmp.999999999.0a0b0c0d0e0f");
    let live = dir
        .path()
        .join(format!(".t.ckpt.6.tmp.{}.0a0b0c0d0e0f", std::process::id()));
    std::fs::write(&dead, b"half a version").unwrap();
    std::fs::write(&live, b"a compaction in progress").unwrap();
    let ck = Checkpointer::open(dir.path(), "t", Config::default()).unwrap();
    assert!(!dead.exists(), "a dead writer's temporary must go");
    assert!(live.exists(), "a live process's temporary must stay");
    drop(ck);
}

/// Issue 12: a restore writes temporary files and renames them into place only when every
/// page verified, so a failed restore leaves an earlier good output intact; a symlink planted
/// at an output name is replaced, never followed.
#[test]
fn a_failed_restore_keeps_the_previous_output_and_symlinks_are_not_followed() {
    use ckpt_engine::catalog::export;
    use ckpt_engine::Store;
    let dir = tempfile::tempdir().unwrap();
    let mut ck =
        Checkpointer::open(dir.path(), "r", Config::default().with_compression_level(0)).unwrap();
    let h = ck.alloc_region::<u8>(1, 64 * 1024).unwrap();
    ck.region_mut(&h)
        .unwrap()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let good = ck.region(&h).unwrap().to_vec();
    let s = ck.checkpoint().unwrap();
    drop(ck);
    let store = Store::new(dir.path(), "r").unwrap();
    let out = dir.path().join("out");
    let (_, files) = export(&store, None, &out).unwrap();
    assert_eq!(std::fs::read(&files[0]).unwrap(), good);

    // Corrupt a stored page (raw: compression is off), then restore over the good output.
    let mut bytes = std::fs::read(&s.path).unwrap();
    bytes[256 + 5000] ^= 0xFF;
    std::fs::write(&s.path, &bytes).unwrap();
    let e = export(&store, None, &out).unwrap_err();
    assert!(e.to_string().contains("r.ckpt.1"), "{e}");
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        good,
        "the good output survives"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary is left behind");
    bytes[256 + 5000] ^= 0xFF;
    std::fs::write(&s.path, &bytes).unwrap();

    // A symlink at the output name pointing at another file.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"do not touch").unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    std::os::unix::fs::symlink(&victim, &files[0]).unwrap();
    export(&store, None, &out).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch");
    let meta = std::fs::symlink_metadata(&files[0]).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(std::fs::read(&files[0]).unwrap(), good);
}

/// Issue 12: a planted `ranks -> elsewhere` (or `commits -> elsewhere`) in a job store is
/// refused, not followed.
#[test]
fn symlinked_job_store_directories_are_refused() {
    use ckpt_engine::job::{CommitRecord, JobStore};
    let d = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let job = JobStore::new(d.path(), "heat").unwrap();
    job.write_meta(1).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), d.path().join("ranks")).unwrap();
    let e = job.checked_rank_dir(0).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    std::fs::remove_file(d.path().join("ranks")).unwrap();
    let dir = job.checked_rank_dir(0).unwrap();
    let mut ck = Checkpointer::open(&dir, "heat", Config::default()).unwrap();
    ck.alloc_region::<u8>(1, 4096).unwrap();
    let s = ck.checkpoint().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), d.path().join("commits")).unwrap();
    let e = job
        .write_commit(&CommitRecord::new(s.version, vec![s.identity]))
        .unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

/// The hooks of the C and VeloC APIs: caller memory registered and unregistered (with uffd
/// tracking where available), versions numbered by the caller, restores from a copy in
/// another directory and of chosen regions, and VeloC's file names.
#[test]
fn c_api_hooks_unregister_number_and_restore_from_elsewhere() {
    use ckpt_engine::store::Naming;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default().with_naming(Naming::Dat);
    let mut a = vec![1u64; 3000];
    let mut b = vec![2u64; 700];
    let mut ck = Checkpointer::open(dir.path(), "app-0", config.clone()).unwrap();
    // SAFETY: `a` and `b` outlive `ck` (dropped below before them) and are only touched
    // between engine calls.
    unsafe {
        ck.register_raw(0, a.as_mut_ptr().cast(), a.len() * 8)
            .unwrap();
        ck.register_raw(1, b.as_mut_ptr().cast(), b.len() * 8)
            .unwrap();
    }
    // Version numbers chosen by the caller, out of order, but never a taken one.
    ck.checkpoint_at(5).unwrap();
    a[10] = 10;
    ck.checkpoint_at(3).unwrap();
    assert!(matches!(
        ck.checkpoint_at(5),
        Err(Error::VersionExists { .. })
    ));
    assert!(ck.checkpoint_at(0).is_err());
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names, ["app-0-2.dat", "app-0-4.dat"]);
    assert_eq!(ck.store().versions().unwrap(), [3, 5]);
    // Unregistering: the engine forgets the region; the next version lacks it.
    ck.unregister(1).unwrap();
    assert!(ck.unregister(1).is_err());
    b[0] = 99; // no longer the engine's business
    a[11] = 11;
    let s = ck.checkpoint_at(7).unwrap();
    assert_eq!(Checkpointer::regions_in(&s.path).unwrap(), [(0, 24_000)]);
    // Restore only region 0 from version 3 (which holds both): b is left alone.
    a.fill(0);
    ck.restore_regions(&dir.path().join("app-0-2.dat"), &[0])
        .unwrap();
    assert_eq!((a[10], a[11], b[0]), (10, 1, 99));
    assert!(ck
        .restore_regions(&dir.path().join("app-0-2.dat"), &[1])
        .is_err());
    // A copy of the chain in another directory restores; the next version is full, since
    // its parent lives only there.
    let copy = tempfile::tempdir().unwrap();
    for n in ["app-0-2.dat", "app-0-4.dat", "app-0-6.dat"] {
        std::fs::copy(dir.path().join(n), copy.path().join(n)).unwrap();
    }
    a.fill(0);
    ck.restore_path(&copy.path().join("app-0-6.dat")).unwrap();
    assert_eq!((a[10], a[11]), (10, 11));
    let s = ck.checkpoint_at(9).unwrap();
    assert_eq!(ckpt_engine::catalog::parent_of(&s.path).unwrap(), None);
    // A file renamed to another number, or of another chain, is refused.
    std::fs::copy(
        dir.path().join("app-0-2.dat"),
        copy.path().join("app-0-3.dat"),
    )
    .unwrap();
    assert!(ck.restore_path(&copy.path().join("app-0-3.dat")).is_err());
    std::fs::copy(
        dir.path().join("app-0-2.dat"),
        copy.path().join("app-1-2.dat"),
    )
    .unwrap();
    assert!(ck.restore_path(&copy.path().join("app-1-2.dat")).is_err());
    drop(ck);
    // The catalog and the CLI's discovery understand VeloC's names.
    let store = ckpt_engine::Store::discover(dir.path(), None).unwrap();
    assert_eq!(store.naming(), Naming::Dat);
    assert_eq!(store.versions().unwrap(), [3, 5, 7, 9]);
    drop((a, b));
}

/// Two writers of one chain: the second is refused with an error naming the lock file and
/// the pid holding it; once the first is gone (its lock dies with it), a writer opens again.
#[test]
fn a_second_writer_is_told_who_holds_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let first = Checkpointer::open(dir.path(), "w", Config::default()).unwrap();
    let e = Checkpointer::open(dir.path(), "w", Config::default()).unwrap_err();
    match &e {
        Error::Locked { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
        other => panic!("not a lock error: {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())) && msg.contains(".w.writer.lock"),
        "{msg}"
    );
    drop(first);
    Checkpointer::open(dir.path(), "w", Config::default()).expect("reopen after the writer left");
}

/// Compacts `store` down to its newest version.
fn keep_newest(store: &ckpt_engine::Store) -> ckpt_engine::compact::Report {
    let opts = ckpt_engine::compact::CompactOptions {
        keep: 1,
        ..Default::default()
    };
    ckpt_engine::compact::compact(store, &opts, &mut |_, _| {}).unwrap()
}

/// Issue 12: a full version copied in from *another store* of the same chain name (under a
/// free number, so the name check passes) is refused by restore and by `ckpt verify`'s
/// check, while the store's own versions, compacted or not, are accepted.
#[test]
fn a_full_version_from_another_store_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let config = Config::default().with_max_chain_depth(2);
    let write = |dir: &std::path::Path, n: u64, fill: u8| {
        let mut ck = Checkpointer::open(dir, "sim", config.clone()).unwrap();
        let h = ck.alloc_region::<u8>(1, 3 * 4096).unwrap();
        for i in 0..n {
            ck.region_mut(&h).unwrap()[(i as usize % 3) * 4096] = fill + i as u8;
            ck.checkpoint().unwrap();
        }
    };
    write(ours.path(), 3, 10); // 1 full, 2 and 3 deltas
    write(theirs.path(), 4, 50); // 4 is full again (depth 2 reached)
    let foreign = theirs.path().join("sim.ckpt.4");
    assert!(
        ckpt_engine::catalog::parent_of(&foreign).unwrap().is_none(),
        "want a full file"
    );
    std::fs::copy(&foreign, ours.path().join("sim.ckpt.4")).unwrap();
    let store = ckpt_engine::Store::new(ours.path(), "sim").unwrap();
    let e = store
        .check_member(&ours.path().join("sim.ckpt.4"))
        .unwrap_err();
    assert!(e.to_string().contains("another store"), "{e}");
    let mut ck = Checkpointer::open(ours.path(), "sim", config.clone()).unwrap();
    ck.alloc_region::<u8>(1, 3 * 4096).unwrap();
    let e = ck.restore(Some(4)).unwrap_err();
    assert!(e.to_string().contains("sim.ckpt.4"), "{e}");
    ck.restore(Some(3)).expect("our own version");
    drop(ck);
    std::fs::remove_file(ours.path().join("sim.ckpt.4")).unwrap();
    // Compaction keeps only version 3, cutting its history: still ours.
    keep_newest(&store);
    store
        .check_member(&store.path_of(3))
        .expect("compacted history is still ours");
    // A store written before membership records existed adopts its versions at open.
    let old = tempfile::tempdir().unwrap();
    write(old.path(), 2, 1);
    std::fs::remove_file(old.path().join(".sim.roots")).unwrap();
    drop(Checkpointer::open(old.path(), "sim", config.clone()).unwrap());
    let s = ckpt_engine::Store::new(old.path(), "sim").unwrap();
    s.check_member(&s.path_of(2)).expect("adopted");
}

/// Compaction holds the files it replaces and removes open until it has returned, and then
/// closes them on a thread of its own (the kernel frees their blocks and cached pages at that
/// close): every handle must be let go, promptly, or their space would never come back.
#[test]
fn compaction_lets_go_of_the_files_it_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut ck = Checkpointer::open(dir.path(), "sim", Config::default()).unwrap();
    let h = ck.alloc_region::<u8>(1, 64 * 4096).unwrap();
    for i in 0..6u8 {
        ck.region_mut(&h).unwrap()[(i as usize % 64) * 4096] = i + 1;
        ck.checkpoint().unwrap();
    }
    drop(ck);
    let store = ckpt_engine::Store::new(dir.path(), "sim").unwrap();
    let r = keep_newest(&store);
    assert_eq!(r.removed, vec![1, 2, 3, 4, 5]);
    assert_eq!(r.rewritten, vec![6]);
    // Open descriptors of this process that name a deleted file of the chain's directory.
    let held = || -> Vec<String> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|t| t.to_string_lossy().into_owned())
            .filter(|t| t.starts_with(&*dir.path().to_string_lossy()) && t.ends_with("(deleted)"))
            .collect()
    };
    let t = std::time::Instant::now();
    let mut left = held();
    while !left.is_empty() && t.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = held();
    }
    assert!(left.is_empty(), "still open after 20 s: {left:?}");
    let mut ck = Checkpointer::open(dir.path(), "sim", Config::default()).unwrap();
    let h = ck.alloc_region::<u8>(1, 64 * 4096).unwrap();
    ck.restore(None).unwrap();
    assert_eq!(ck.region(&h).unwrap()[5 * 4096], 6);
}
