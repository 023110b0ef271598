//! userfaultfd dirty tracking: agreement with hash mode, writes that do not come from the
//! application's own stores (kernel, other processes, fork, madvise, huge pages), scans
//! larger than one output vector, restore-then-track, audit and mark_dirty.
//!
//! These tests need a kernel with UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN (Linux ≥ 6.7), which
//! this project's machines have. On a kernel without them (Debian 12's stock 6.1, say) each
//! test skips itself with a message, using the engine's own probe.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use ckpt_engine::bench::Rng;
use ckpt_engine::format::TrackingKind;
use ckpt_engine::read::VersionFile;
use ckpt_engine::{Checkpointer, Config, RegionHandle, Tracking};
use proptest::prelude::*;

fn skip() -> bool {
    match ckpt_engine::uffd_support() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("skipping: userfaultfd write-protect tracking is not available here: {why}");
            true
        }
    }
}

fn cfg(tracking: Tracking) -> Config {
    Config::default().with_tracking(tracking)
}

/// (region id, page) of every page stored in a version file.
fn stored_pages(path: &Path) -> BTreeSet<(u64, u64)> {
    let f = VersionFile::open(path).unwrap();
    let mut out = BTreeSet::new();
    for r in &f.index.regions {
        let mut page = 0u64;
        for e in f.index.extents_of(r) {
            if e.file == 0 {
                out.extend((page..page + e.page_count as u64).map(|p| (r.id, p)));
            }
            page += e.page_count as u64;
        }
    }
    out
}

fn engine(dir: &Path, tracking: Tracking, sizes: &[usize]) -> Checkpointer {
    let mut ck = Checkpointer::open(dir, "t", cfg(tracking)).unwrap();
    for (i, &n) in sizes.iter().enumerate() {
        ck.alloc_region::<u8>(i as u64 + 1, n).unwrap();
    }
    assert_eq!(ck.tracking(), tracking);
    ck
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The same random write sequences in uffd mode and in hash mode give identical restored
    /// states and the same set of stored pages at every version; with audits on, the audit
    /// never finds a page the tracker missed.
    #[test]
    fn uffd_and_hash_modes_agree(
        sizes in prop::collection::vec(1usize..400_000, 1..4),
        steps in prop::collection::vec((any::<u64>(), 0usize..12, any::<bool>()), 1..10),
        audit_every in 0u32..4,
    ) {
        if skip() { return Ok(()); }
        let (du, dh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut u = engine(du.path(), Tracking::Uffd, &sizes);
        let mut h = engine(dh.path(), Tracking::Hash, &sizes);
        let mut c = u.config().clone();
        c.audit_every = audit_every;
        drop(u);
        u = Checkpointer::open(du.path(), "t", c).unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            u.alloc_region::<u8>(i as u64 + 1, n).unwrap();
        }
        u.checkpoint().unwrap();
        h.checkpoint().unwrap();
        let mut uffd_versions = 0;
        // Checkpoints after the first are audits (hash mode) at every audit_every-th one.
        let expect_uffd = match audit_every { 1 => false, 2 => steps.len() >= 2, _ => true };
        for (seed, count, same) in steps {
            let mut rng = Rng::new(seed);
            for _ in 0..count {
                let i = rng.below(sizes.len() as u64) as usize;
                let n = sizes[i];
                let at = rng.below(n as u64) as usize;
                let len = (rng.below(9000) as usize + 1).min(n - at);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                for ck in [&mut u, &mut h] {
                    let r = ck.region_mut(&ck.handle::<u8>(i as u64 + 1).unwrap()).unwrap();
                    if same {
                        let copy = r[at..at + len].to_vec();
                        r[at..at + len].copy_from_slice(&copy);
                    } else {
                        r[at..at + len].copy_from_slice(&bytes);
                    }
                }
            }
            let su = u.checkpoint().unwrap();
            let sh = h.checkpoint().unwrap();
            prop_assert_eq!(su.version, sh.version);
            prop_assert_eq!(su.pages_stored, sh.pages_stored);
            prop_assert_eq!(stored_pages(&su.path), stored_pages(&sh.path));
            if let Some(m) = su.audit_misses {
                prop_assert_eq!(m, 0, "audit found pages the tracker missed");
            }
            if su.tracking == TrackingKind::Uffd {
                uffd_versions += 1;
                prop_assert!(su.hashed_bytes <= sh.hashed_bytes);
            }
        }
        prop_assert_eq!(uffd_versions > 0, expect_uffd);
        let versions = u.store().versions().unwrap();
        drop(u);
        drop(h);
        for v in versions {
            let a = ckpt_engine::catalog::export(&ckpt_engine::Store::new(du.path(), "t").unwrap(), Some(v), &du.path().join("out")).unwrap();
            let b = ckpt_engine::catalog::export(&ckpt_engine::Store::new(dh.path(), "t").unwrap(), Some(v), &dh.path().join("out")).unwrap();
            for (fa, fb) in a.1.iter().zip(&b.1) {
                prop_assert_eq!(std::fs::read(fa).unwrap(), std::fs::read(fb).unwrap());
            }
        }
    }
}

/// Region 1 of `pages` pages, filled, checkpointed once in uffd mode.
fn setup(dir: &Path, pages: usize) -> (Checkpointer, RegionHandle<u8>) {
    let mut ck = Checkpointer::open(dir, "k", cfg(Tracking::Uffd)).unwrap();
    let h = ck.alloc_region::<u8>(1, pages * 4096).unwrap();
    ck.region_mut(&h)
        .unwrap()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i / 4096) as u8);
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.pages_stored, pages as u64);
    (ck, h)
}

fn check_restores(dir: &Path, ck: &Checkpointer, h: &RegionHandle<u8>) {
    let want = ck.region(h).unwrap().to_vec();
    let v = ck.store().latest().unwrap().unwrap();
    let (_, files) = ckpt_engine::catalog::export(ck.store(), Some(v), &dir.join("out")).unwrap();
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        want,
        "restored state differs"
    );
}

#[test]
fn kernel_writes_from_read_are_captured() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut ck, h) = setup(dir.path(), 64);
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&vec![0xAB; 3 * 4096]).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    // read(2) copies into pages 10..13 from kernel mode.
    f.read_exact(&mut ck.region_mut(&h).unwrap()[10 * 4096..13 * 4096])
        .unwrap();
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.tracking, TrackingKind::Uffd);
    assert_eq!(s.pages_stored, 3);
    check_restores(dir.path(), &ck, &h);
}

#[test]
fn process_vm_writev_from_another_process_is_captured() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut ck, h) = setup(dir.path(), 64);
    let addr = ck.region(&h).unwrap().as_ptr() as usize + 20 * 4096 + 100;
    let parent = std::process::id();
    // A child process writes into our memory, as MPI shared-memory transports (CMA) do.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ckpt-testapp"))
        .args(["pvw", &parent.to_string(), &addr.to_string(), "5000"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        ck.region(&h).unwrap()[20 * 4096 + 100],
        0x5A,
        "the child wrote"
    );
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.pages_stored, 2, "pages 20 and 21");
    check_restores(dir.path(), &ck, &h);
}

#[test]
fn writes_after_fork_are_captured() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut ck, h) = setup(dir.path(), 64);
    // SAFETY: the child only calls _exit, which is async-signal-safe.
    match unsafe { nix::unistd::fork() }.unwrap() {
        // SAFETY: _exit is async-signal-safe and ends the child at once.
        nix::unistd::ForkResult::Child => unsafe { libc::_exit(0) },
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).unwrap();
        }
    }
    let r = ck.region_mut(&h).unwrap();
    r[3 * 4096] = 1;
    r[40 * 4096 + 7] = 2;
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.pages_stored, 2);
    check_restores(dir.path(), &ck, &h);
}

#[test]
fn madvise_dontneed_is_captured() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut ck, h) = setup(dir.path(), 64);
    let p = ck.region_mut(&h).unwrap().as_mut_ptr();
    // SAFETY: pages 8..12 lie inside the engine's mapping; after DONTNEED they read as zero.
    let rc = unsafe {
        libc::madvise(
            p.add(8 * 4096) as *mut libc::c_void,
            4 * 4096,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0);
    assert!(ck.region(&h).unwrap()[8 * 4096..12 * 4096]
        .iter()
        .all(|&b| b == 0));
    let s = ck.checkpoint().unwrap();
    assert_eq!(
        s.pages_stored, 4,
        "the zapped pages changed (to zeros) and must be stored"
    );
    check_restores(dir.path(), &ck, &h);
    // And they are tracked again afterwards.
    ck.region_mut(&h).unwrap()[9 * 4096] = 9;
    assert_eq!(ck.checkpoint().unwrap().pages_stored, 1);
}

#[test]
fn transparent_huge_pages_are_captured() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ck = Checkpointer::open(dir.path(), "k", cfg(Tracking::Uffd)).unwrap();
    let h = ck.alloc_region::<u8>(1, 16 << 20).unwrap();
    let p = ck.region_mut(&h).unwrap().as_mut_ptr();
    // SAFETY: advice on the engine's own mapping.
    unsafe { libc::madvise(p as *mut libc::c_void, 16 << 20, libc::MADV_HUGEPAGE) };
    ck.region_mut(&h)
        .unwrap()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i >> 12) as u8);
    ck.checkpoint().unwrap();
    let mut rng = Rng::new(77);
    let mut want = BTreeSet::new();
    for _ in 0..30 {
        let at = rng.below(16 << 20) as usize;
        ck.region_mut(&h).unwrap()[at] ^= 0xFF;
        want.insert(at / 4096);
    }
    let s = ck.checkpoint().unwrap();
    assert_eq!(
        s.pages_stored,
        want.len() as u64,
        "exactly the written 4 KiB pages"
    );
    check_restores(dir.path(), &ck, &h);
}

#[test]
fn scans_larger_than_the_output_vector_loop() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut ck, h) = setup(dir.path(), 1024);
    ck.set_scan_vec_len(2);
    let r = ck.region_mut(&h).unwrap();
    for p in (0..1024).step_by(7) {
        r[p * 4096 + 1] ^= 1;
    }
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.pages_stored, (0..1024).step_by(7).count() as u64);
    check_restores(dir.path(), &ck, &h);
}

#[test]
fn restore_then_write_three_pages_stores_three() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ck, _) = setup(dir.path(), 256);
    drop(ck);
    let mut ck = Checkpointer::open(dir.path(), "k", cfg(Tracking::Uffd)).unwrap();
    let h = ck.alloc_region::<u8>(1, 256 * 4096).unwrap();
    ck.restore(None).unwrap();
    let r = ck.region_mut(&h).unwrap();
    r[0] = 9;
    r[100 * 4096] = 9;
    r[255 * 4096 + 4095] = 9;
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.tracking, TrackingKind::Uffd);
    assert_eq!(
        s.hashed_bytes,
        3 * 4096,
        "only the three written pages were hashed"
    );
    assert_eq!(s.pages_stored, 3);
    assert_eq!(s.parent, Some(1));
}

#[test]
fn caller_memory_edges_are_always_hashed() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A buffer whose start and end are not page-aligned.
    let mut buf = vec![1u8; 20 * 4096];
    let start = 1000usize;
    let len = 10 * 4096 + 500;
    let mut ck = Checkpointer::open(dir.path(), "raw", cfg(Tracking::Uffd)).unwrap();
    // SAFETY: `buf` outlives `ck` (dropped at the end of the test, after `ck`), and is only
    // touched through `ck` or between checkpoints below.
    unsafe {
        ck.register_raw(5, buf.as_mut_ptr().add(start), len)
            .unwrap()
    };
    ck.checkpoint().unwrap();
    // Write the first and last byte of the region: both lie in untracked edge OS pages.
    buf[start] = 7;
    buf[start + len - 1] = 7;
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.pages_stored, 2);
    drop(ck);
}

/// Two mappings of one memfd of `len` bytes: writes through the second do not touch the
/// first's page tables, like a NIC writing by DMA.
fn two_maps(len: usize) -> (memmap2::MmapMut, memmap2::MmapMut) {
    let fd =
        nix::sys::memfd::memfd_create(c"ckpt-test", nix::sys::memfd::MFdFlags::empty()).unwrap();
    nix::unistd::ftruncate(&fd, len as i64).unwrap();
    let file = std::fs::File::from(fd);
    // SAFETY: both maps cover the memfd we own; the tests write through the second only
    // between checkpoints.
    let a = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    // SAFETY: as above: a second map of the same memfd.
    let b = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    (a, b)
}

#[test]
fn writes_behind_the_page_tables_back_need_audit_or_mark_dirty() {
    if skip() {
        return;
    }
    // Two mappings of one memfd: writes through the second do not touch the first's page
    // tables, like a NIC writing by DMA.
    let dir = tempfile::tempdir().unwrap();
    let len = 32 * 4096;
    let (mut a, mut b) = two_maps(len);
    a.iter_mut().for_each(|x| *x = 3);
    let mut c = cfg(Tracking::Uffd);
    c.audit_every = 4;
    let mut ck = Checkpointer::open(dir.path(), "dma", c).unwrap();
    // SAFETY: `a` outlives `ck`.
    unsafe { ck.register_raw(1, a.as_mut_ptr(), len).unwrap() };
    ck.checkpoint().unwrap(); // full
    b[5 * 4096] = 42; // invisible to the tracker
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.tracking, TrackingKind::Uffd);
    assert_eq!(s.pages_stored, 0, "the tracker cannot see this write");
    // mark_dirty makes it visible.
    b[6 * 4096] = 43;
    ck.mark_dirty(1, 6 * 4096..6 * 4096 + 1).unwrap();
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.pages_stored, 1);
    // The audit (every 4th checkpoint) finds and stores the unreported page 5.
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.audit_misses, Some(1));
    assert_eq!(s.pages_stored, 1);
    assert_eq!(s.tracking, TrackingKind::Hash);
    drop(ck);
    let (_, files) = ckpt_engine::catalog::export(
        &ckpt_engine::Store::new(dir.path(), "dma").unwrap(),
        None,
        &dir.path().join("o"),
    )
    .unwrap();
    assert_eq!(std::fs::read(&files[0]).unwrap(), a.to_vec());
}

/// Issue 8, item 3: a full version written in uffd mode reads and hashes every page, so a
/// write the tracker could not see is stored with its true hash and the version restores.
#[test]
fn a_full_version_in_uffd_mode_hashes_every_page() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let len = 32 * 4096;
    let (mut a, mut b) = two_maps(len);
    a.iter_mut().for_each(|x| *x = 3);
    let mut c = cfg(Tracking::Uffd);
    c.max_chain_depth = 1;
    let mut ck = Checkpointer::open(dir.path(), "full", c).unwrap();
    // SAFETY: `a` outlives `ck`.
    unsafe { ck.register_raw(1, a.as_mut_ptr(), len).unwrap() };
    assert_eq!(ck.checkpoint().unwrap().depth, 0);
    b[5 * 4096 + 9] = 42; // invisible to the tracker
    let s = ck.checkpoint().unwrap();
    assert_eq!((s.depth, s.pages_stored), (1, 0));
    b[7 * 4096] = 43; // invisible too
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.depth, 0, "the depth limit forces a full version");
    assert_eq!(s.pages_stored, 32);
    let v = s.version;
    drop(ck);
    ckpt_engine::catalog::verify_version(&dir.path().join(format!("full.ckpt.{v}"))).unwrap();
    let (_, files) = ckpt_engine::catalog::export(
        &ckpt_engine::Store::new(dir.path(), "full").unwrap(),
        Some(v),
        &dir.path().join("o"),
    )
    .expect("the full version restores");
    assert_eq!(std::fs::read(&files[0]).unwrap(), a.to_vec());
}

#[test]
fn uffd_mode_reports_clearly_and_auto_picks_it() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ck = Checkpointer::open(dir.path(), "a", cfg(Tracking::Auto)).unwrap();
    assert_eq!(ck.tracking(), Tracking::Uffd);
}

#[test]
fn auto_mode_hashes_for_a_while_when_most_pages_are_written() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ck = Checkpointer::open(dir.path(), "auto", cfg(Tracking::Auto)).unwrap();
    let h = ck.alloc_region::<u8>(1, 64 * 4096).unwrap();
    ck.checkpoint().unwrap();
    let mut kinds = Vec::new();
    let mut states = Vec::new();
    for step in 0..14u8 {
        let r = ck.region_mut(&h).unwrap();
        if step < 2 {
            // Dense: every page.
            r.iter_mut()
                .step_by(4096)
                .for_each(|b| *b = b.wrapping_add(step + 1));
        } else {
            r[(step as usize) * 4096] ^= 0xFF;
        }
        let s = ck.checkpoint().unwrap();
        kinds.push(s.tracking);
        states.push((s.version, ck.region(&h).unwrap().to_vec()));
    }
    use TrackingKind::{Hash, Uffd};
    // The first dense delta is seen by uffd, then 8 checkpoints hash, then uffd again.
    assert_eq!(kinds[0], Uffd);
    assert!(kinds[1..9].iter().all(|k| *k == Hash), "{kinds:?}");
    assert!(kinds[9..].iter().all(|k| *k == Uffd), "{kinds:?}");
    drop(ck);
    for (v, want) in states {
        let (_, files) = ckpt_engine::catalog::export(
            &ckpt_engine::Store::new(dir.path(), "auto").unwrap(),
            Some(v),
            &dir.path().join("o"),
        )
        .unwrap();
        assert_eq!(std::fs::read(&files[0]).unwrap(), want, "version {v}");
    }
}

/// Candidates rewritten with the bytes they held, between pages that really changed: the
/// unchanged ones are not stored, and the changed ones' bytes (taken page by page out of a
/// copy with holes) restore exactly.
#[test]
fn unchanged_candidates_between_changed_pages_restore_exactly() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ps = 4096;
    let mut ck = engine(dir.path(), Tracking::Uffd, &[40 * ps + 100]);
    let h = ck.handle::<u8>(1).unwrap();
    let mut rng = Rng::new(7);
    for b in ck.region_mut(&h).unwrap().iter_mut() {
        *b = rng.next_u64() as u8;
    }
    ck.checkpoint().unwrap();
    let r = ck.region_mut(&h).unwrap();
    for page in [0, 3, 4, 9, 39, 40] {
        let at = page * ps;
        if page % 3 == 0 {
            // Rewritten as it was: reported, not changed.
            let same = r[at..(at + ps).min(r.len())].to_vec();
            r[at..at + same.len()].copy_from_slice(&same);
        } else {
            r[at] ^= 0x5a;
        }
    }
    let want = ck.region(&h).unwrap().to_vec();
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.tracking, TrackingKind::Uffd);
    assert_eq!(stored_pages(&s.path), BTreeSet::from([(1, 4), (1, 40)]));
    drop(ck);
    let mut back = engine(dir.path(), Tracking::Uffd, &[40 * ps + 100]);
    back.restore(Some(s.version)).unwrap();
    assert!(back.region(&back.handle::<u8>(1).unwrap()).unwrap() == want.as_slice());
}
