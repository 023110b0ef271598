//! Property tests: random region sizes, page sizes and write patterns over many versions,
//! with restores of earlier versions mixed in. Every version restores to exactly the state
//! recorded when it was taken, and so does every version a compaction keeps.

use std::collections::BTreeMap;

use ckpt_engine::bench::Rng;
use ckpt_engine::{Checkpointer, Config};
use proptest::prelude::*;

mod common;

#[derive(Debug, Clone)]
enum Op {
    /// Write `count` random runs of bytes (seeded), then checkpoint.
    Write {
        seed: u64,
        count: usize,
        same_bytes: bool,
    },
    /// Restore the k-th committed version (modulo the number committed).
    Restore(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u64>(), 0usize..8, any::<bool>())
            .prop_map(|(seed, count, same_bytes)| Op::Write { seed, count, same_bytes }),
        1 => any::<usize>().prop_map(Op::Restore),
    ]
}

fn snapshot(ck: &Checkpointer, ids: &[(u64, usize)]) -> Vec<Vec<u8>> {
    ids.iter()
        .map(|(id, _)| ck.region_bytes(*id).unwrap().to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_version_restores_exactly(
        page_exp in 12u32..=16,
        sizes in prop::collection::vec(1usize..200_000, 1..4),
        ops in prop::collection::vec(op(), 1..14),
        max_depth in 1u32..6,
        level in prop_oneof![Just(0), Just(1), Just(3)],
        keep in 1usize..4,
        flatten in prop::option::of(0u32..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default()
            .with_page_size(1 << page_exp)
            .with_compression_level(level)
            .with_min_compression_saving(0.0)
            .with_max_chain_depth(max_depth);
        let ids: Vec<(u64, usize)> = sizes.iter().enumerate().map(|(i, &n)| (i as u64 * 3 + 1, n)).collect();
        let mut ck = Checkpointer::open(dir.path(), "p", config.clone()).unwrap();
        for &(id, n) in &ids {
            let h = ck.alloc_region::<u8>(id, n).unwrap();
            // Start from non-zero contents.
            let mut rng = Rng::new(id);
            ck.region_mut(&h).unwrap().iter_mut().for_each(|b| *b = (rng.next_u64() % 7) as u8);
        }
        let mut expected: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        let s = ck.checkpoint().unwrap();
        expected.insert(s.version, snapshot(&ck, &ids));
        for op in &ops {
            match op {
                Op::Write { seed, count, same_bytes } => {
                    let mut rng = Rng::new(*seed);
                    for _ in 0..*count {
                        let (id, n) = ids[rng.below(ids.len() as u64) as usize];
                        let data = ck.region_mut(&ck.handle::<u8>(id).unwrap()).unwrap();
                        let at = rng.below(n as u64) as usize;
                        let len = (rng.below(3 * (1 << page_exp)) as usize + 1).min(n - at);
                        for b in &mut data[at..at + len] {
                            *b = if *same_bytes { *b } else { rng.next_u64() as u8 };
                        }
                    }
                    let s = ck.checkpoint().unwrap();
                    prop_assert!(!expected.contains_key(&s.version), "version {} reused", s.version);
                    expected.insert(s.version, snapshot(&ck, &ids));
                }
                Op::Restore(k) => {
                    let versions: Vec<u64> = expected.keys().copied().collect();
                    let v = versions[k % versions.len()];
                    ck.restore(Some(v)).unwrap();
                    prop_assert_eq!(&snapshot(&ck, &ids), &expected[&v], "in-process restore of {}", v);
                }
            }
        }
        drop(ck);
        // Every version, restored into fresh memory, is exactly what was recorded: every
        // other one from a cold cache (read with direct I/O, in requests that start and end
        // off the records' boundaries), the others from cached files (through the mapping).
        for (k, (v, want)) in expected.iter().enumerate() {
            let mut fresh = Checkpointer::open(dir.path(), "p", config.clone()).unwrap();
            for &(id, n) in &ids {
                fresh.alloc_region::<u8>(id, n).unwrap();
            }
            if k % 2 == 0 {
                drop_store_from_cache(dir.path());
            }
            fresh.restore(Some(*v)).unwrap();
            prop_assert_eq!(&snapshot(&fresh, &ids), want, "version {}", v);
            ckpt_engine::catalog::verify_version(&dir.path().join(format!("p.ckpt.{v}"))).unwrap();
        }
        // Compacted from a cold cache (copies gathered from every file of the chain, each
        // read front to back), every kept version still restores exactly.
        drop_store_from_cache(dir.path());
        let store = ckpt_engine::Store::new(dir.path(), "p").unwrap();
        let opts = ckpt_engine::compact::CompactOptions {
            keep,
            max_depth: flatten,
            ..Default::default()
        };
        let report = ckpt_engine::compact::compact(&store, &opts, &mut |_, _| {}).unwrap();
        prop_assert!(!report.kept.is_empty());
        for v in &report.kept {
            let mut fresh = Checkpointer::open(dir.path(), "p", config.clone()).unwrap();
            for &(id, n) in &ids {
                fresh.alloc_region::<u8>(id, n).unwrap();
            }
            fresh.restore(Some(*v)).unwrap();
            prop_assert_eq!(&snapshot(&fresh, &ids), &expected[v], "version {} compacted", v);
            ckpt_engine::catalog::verify_version(&dir.path().join(format!("p.ckpt.{v}"))).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Chains over megabytes of incompressible pages, restored from a cold cache: the full
    /// version's raw pages are read straight into the regions in direct stretches, with holes
    /// where newer versions replaced pages (scattered pages and runs, at window edges too),
    /// and each newer file's pages are written over them afterwards. Every version restores
    /// exactly, whatever the pattern, the region sizes (short last pages included) and the
    /// tracking mode.
    #[test]
    fn chains_of_raw_pages_restore_exactly_from_a_cold_cache(
        sizes in prop::collection::vec((1usize..3 << 20, 0usize..4096), 1..3),
        deltas in prop::collection::vec(
            prop::collection::vec((0usize..800, 1usize..80), 0..12), 1..5),
        hash_mode in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default().with_max_chain_depth(8);
        if hash_mode {
            config.tracking = ckpt_engine::Tracking::Hash;
        }
        let ids: Vec<(u64, usize)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &(n, extra))| (i as u64 + 1, (n + 4096) / 4096 * 4096 + extra % 2 * extra))
            .collect();
        let mut ck = Checkpointer::open(dir.path(), "s", config.clone()).unwrap();
        let mut rng = Rng::new(sizes.len() as u64 * 31 + deltas.len() as u64);
        for &(id, n) in &ids {
            let h = ck.alloc_region::<u8>(id, n).unwrap();
            ck.region_mut(&h).unwrap().iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        }
        let mut expected: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        let s = ck.checkpoint().unwrap();
        expected.insert(s.version, snapshot(&ck, &ids));
        for delta in &deltas {
            for &(page, len) in delta {
                for &(id, n) in &ids {
                    let data = ck.region_mut(&ck.handle::<u8>(id).unwrap()).unwrap();
                    let pages = n.div_ceil(4096);
                    let first = page % pages;
                    for p in first..(first + len).min(pages) {
                        data[p * 4096] ^= rng.next_u64() as u8 | 1;
                    }
                }
            }
            let s = ck.checkpoint().unwrap();
            expected.insert(s.version, snapshot(&ck, &ids));
        }
        drop(ck);
        for (v, want) in &expected {
            let mut fresh = Checkpointer::open(dir.path(), "s", config.clone()).unwrap();
            for &(id, n) in &ids {
                fresh.alloc_region::<u8>(id, n).unwrap();
            }
            drop_store_from_cache(dir.path());
            fresh.restore(Some(*v)).unwrap();
            prop_assert_eq!(&snapshot(&fresh, &ids), want, "version {}", v);
            // The restored hashes are the bytes': nothing changed, nothing stored.
            prop_assert_eq!(fresh.checkpoint().unwrap().pages_stored, 0, "version {}", v);
            drop(fresh);
            // That checkpoint made a new version: forget it.
            let store = ckpt_engine::Store::new(dir.path(), "s").unwrap();
            let newest = store.latest().unwrap().unwrap();
            std::fs::remove_file(store.path_of(newest)).unwrap();
        }
    }
}

/// Drops every file of `dir` from the page cache.
fn drop_store_from_cache(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_file() {
            common::drop_from_cache(&path);
        }
    }
}
