//! Which pages are compressed: the engine samples batches of pages and stops compressing
//! state whose samples do not shrink, and it remembers that from one version to the next.

use ckpt_engine::format::Codec;
use ckpt_engine::read::VersionFile;
use ckpt_engine::{Checkpointer, Config, Tracking};

const PAGE: usize = 4096;

/// The codecs of the records `path` stores, in record order.
fn codecs(path: &std::path::Path) -> Vec<Codec> {
    let f = VersionFile::open(path).unwrap();
    f.index.records.iter().map(|r| r.codec).collect()
}

/// After a version whose batches were all incompressible, the next delta does not sample its
/// first batch again: it is stored raw, though its page is zeros. The samples resume every
/// eighth batch, counted across versions, so the zeros are compressed again two versions on.
#[test]
fn compression_samples_carry_from_one_version_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default().with_compression_level(1);
    // Hash tracking: one batch per region whose pages changed (each region is one span).
    config.tracking = Tracking::Hash;
    let mut ck = Checkpointer::open(dir.path(), "s", config).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut handles = Vec::new();
    for id in 1..=6u64 {
        let h = ck.alloc_region::<u8>(id, 4 * PAGE).unwrap();
        for b in ck.region_mut(&h).unwrap().iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *b = rng as u8;
        }
        handles.push(h);
    }
    // Version 1: six incompressible batches. The first four are sampled and found not worth
    // compressing; the next two are not sampled.
    ck.checkpoint().unwrap();
    assert!(codecs(&dir.path().join("s.ckpt.1"))
        .iter()
        .all(|&c| c == Codec::Raw));
    // Version 2: one page of zeros, the seventh batch: not sampled, stored raw.
    ck.region_mut(&handles[0]).unwrap()[..PAGE].fill(0);
    ck.checkpoint().unwrap();
    assert_eq!(codecs(&dir.path().join("s.ckpt.2")), vec![Codec::Raw]);
    // Version 3: the eighth batch is sampled, the zeros are worth compressing.
    ck.region_mut(&handles[0]).unwrap()[PAGE..2 * PAGE].fill(0);
    ck.checkpoint().unwrap();
    assert_eq!(codecs(&dir.path().join("s.ckpt.3")), vec![Codec::Zstd]);
    // And every page restores.
    drop(ck);
    let mut ck = Checkpointer::open(dir.path(), "s", Config::default()).unwrap();
    for id in 1..=6u64 {
        ck.alloc_region::<u8>(id, 4 * PAGE).unwrap();
    }
    ck.restore(None).unwrap();
    let h = ck.handle::<u8>(1).unwrap();
    assert!(ck.region(&h).unwrap()[..2 * PAGE].iter().all(|&b| b == 0));
}
