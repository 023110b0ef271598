//! A fork snapshot in a process that has hashed nothing yet (its own test binary, so that no
//! other test warms the process first): the child's change-detection hashes must be
//! comparable with the parent's, or every delta would store every page.

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
