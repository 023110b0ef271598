//! The DragonFly BSD checkpt(1) scenario: re-checkpointing a restored program never destroys
//! or changes the file it was restored from, and continues the numbering.

use ckpt_engine::read::VersionFile;
mod common;

use ckpt_tests::{committed, restore_hash};
use common::testapp;

fn file_digest(p: &std::path::Path) -> [u8; 32] {
    ckpt_engine::page_hash(&std::fs::read(p).expect("read version file"))
}

#[test]
fn restore_then_checkpoint_continues_the_chain_without_touching_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mib = 4;

    // 1. v1..v5 in one process.
    let first = committed(&testapp(&[d, "job", "4", "1", "5"]));
    assert_eq!(
        first.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let v3_path = dir.path().join("job.ckpt.3");
    let v3_before = file_digest(&v3_path);

    // 2. A new process restores v3, modifies, checkpoints: v6, a delta against v3.
    let out = testapp(&[d, "job", "4", "2", "1", "restore=3"]);
    assert_eq!(
        out[0],
        format!("restored 3 {}", first[2].1),
        "restore of v3 in a new process"
    );
    let six = committed(&out);
    assert_eq!(six.len(), 1);
    assert_eq!(six[0].0, 6, "numbering continues at max(existing)+1");
    let pages_total = (mib << 20) / 4096 + 3;
    assert!(
        six[0].2 < pages_total as u64 / 4,
        "v6 must be a real delta, stored {} of {pages_total} pages",
        six[0].2
    );
    let h6 = VersionFile::open(&dir.path().join("job.ckpt.6"))
        .unwrap()
        .header;
    assert_eq!(h6.parent.map(|p| p.version), Some(3), "v6's parent is v3");
    assert_eq!(h6.depth, 3);
    assert_eq!(
        file_digest(&v3_path),
        v3_before,
        "v3's file is byte-identical"
    );

    // 3. v1..v6 all restore to what was committed.
    for (v, h, _) in first.iter().chain(six.iter()) {
        assert_eq!(
            &restore_hash(dir.path(), "job", mib, *v).unwrap(),
            h,
            "version {v}"
        );
    }

    // 4. Restore v6, modify, checkpoint v7; v7 restores.
    let out = testapp(&[d, "job", "4", "3", "1", "restore=6"]);
    assert_eq!(out[0], format!("restored 6 {}", six[0].1));
    let seven = committed(&out);
    assert_eq!(seven[0].0, 7);
    assert_eq!(restore_hash(dir.path(), "job", mib, 7).unwrap(), seven[0].1);
    let h7 = VersionFile::open(&dir.path().join("job.ckpt.7"))
        .unwrap()
        .header;
    assert_eq!(h7.parent.map(|p| p.version), Some(6));
    // Everything earlier is still intact.
    for (v, h, _) in first.iter().chain(six.iter()) {
        assert_eq!(
            &restore_hash(dir.path(), "job", mib, *v).unwrap(),
            h,
            "version {v} after v7"
        );
    }
    assert_eq!(file_digest(&v3_path), v3_before);
}

#[test]
fn restore_then_write_three_pages_stores_three_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut ck =
        ckpt_engine::Checkpointer::open(dir.path(), "c", ckpt_tests::config(4096, 16)).unwrap();
    let h = ck.alloc_region::<u8>(1, 64 * 4096).unwrap();
    ck.region_mut(&h)
        .unwrap()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    ck.checkpoint().unwrap();
    drop(ck);
    let mut ck =
        ckpt_engine::Checkpointer::open(dir.path(), "c", ckpt_tests::config(4096, 16)).unwrap();
    let h = ck.alloc_region::<u8>(1, 64 * 4096).unwrap();
    ck.restore(None).unwrap();
    let r = ck.region_mut(&h).unwrap();
    r[5] ^= 1;
    r[4096 * 10 + 1] ^= 1;
    r[4096 * 63 + 4095] ^= 1;
    let s = ck.checkpoint().unwrap();
    assert_eq!(s.pages_stored, 3);
    assert_eq!(s.parent, Some(1));
    assert_eq!(s.version, 2);
    // Rewriting a page with identical bytes costs nothing.
    let r = ck.region_mut(&h).unwrap();
    let copy = r[..4096].to_vec();
    r[..4096].copy_from_slice(&copy);
    assert_eq!(ck.checkpoint().unwrap().pages_stored, 0);
}

#[test]
fn engine_bookkeeping_stays_under_two_percent_of_the_state() {
    use ckpt_engine::bench::Rng;
    for tracking in [ckpt_engine::Tracking::Hash, ckpt_engine::Tracking::Auto] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ckpt_tests::config(4096, 16);
        cfg.tracking = tracking;
        let mut ck = ckpt_engine::Checkpointer::open(dir.path(), "m", cfg).unwrap();
        let state = 64usize << 20;
        let h = ck.alloc_region::<u8>(1, state).unwrap();
        let mut rng = Rng::new(1);
        ck.region_mut(&h)
            .unwrap()
            .iter_mut()
            .step_by(512)
            .for_each(|b| *b = rng.next_u64() as u8);
        ck.checkpoint().unwrap();
        for _ in 0..16 {
            let r = ck.region_mut(&h).unwrap();
            for _ in 0..(state / 4096 / 100) {
                r[rng.below(state as u64) as usize] ^= 1;
            }
            ck.checkpoint().unwrap();
        }
        let meta = ck.metadata_bytes();
        assert!(
            (meta as f64) < 0.02 * state as f64,
            "{tracking:?}: {meta} bytes of bookkeeping for {state} bytes of state"
        );
        eprintln!(
            "{tracking:?}: bookkeeping {:.3} % of the state",
            100.0 * meta as f64 / state as f64
        );
    }
}
