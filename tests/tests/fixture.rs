//! A store written by an earlier build, committed under `tests/fixtures/format-v1/`, must
//! keep decoding and restoring byte for byte: the on-disk format does not drift when the
//! code that encodes it changes.
//!
//! The fixture is a chain `fx` of three versions over two regions (the second 10 000 bytes,
//! not a multiple of the page size): v1 full, v2 and v3 deltas. `CKPT_WRITE_FIXTURE=1 cargo test -p ckpt-tests --test fixture` rewrites
//! it (only when the format changes on purpose, with a `format_version` bump).

use std::path::{Path, PathBuf};

use ckpt_engine::catalog::{export, verify_version};
use ckpt_engine::read::VersionFile;
use ckpt_engine::{Checkpointer, Config, Store};

const REGIONS: [(u64, usize); 2] = [(1, 64 * 1024), (7, 10_000)];

/// Region `id`'s bytes at version `v` (1-based): a smooth part and a varying part.
fn contents(id: u64, len: usize, v: u64) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let changed = v >= 2 && i % 4096 < 64 && (i / 4096) % 3 == (v as usize % 3);
            let base = ((i as u64 * 31 + id * 7) % 251) as u8;
            if changed {
                base ^ (v as u8 * 17)
            } else if v >= 3 && id == 7 && i < 100 {
                0xEE
            } else {
                base
            }
        })
        .collect()
}

/// The expected contents at `v`, as the writer saw them: each version's changes build on the
/// previous one's.
fn expected(v: u64) -> Vec<Vec<u8>> {
    let mut state: Vec<Vec<u8>> = REGIONS.iter().map(|&(id, n)| contents(id, n, 1)).collect();
    for w in 2..=v {
        for (k, &(id, n)) in REGIONS.iter().enumerate() {
            let base = contents(id, n, 1);
            let next = contents(id, n, w);
            for (i, b) in next.iter().enumerate() {
                if *b != base[i] {
                    state[k][i] = *b;
                }
            }
        }
    }
    state
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format-v1")
}

fn write_fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let config = Config::default().with_tracking(ckpt_engine::Tracking::Hash);
    let mut ck = Checkpointer::open(dir, "fx", config).unwrap();
    for &(id, n) in &REGIONS {
        ck.alloc_region::<u8>(id, n).unwrap();
    }
    for v in 1..=3u64 {
        let want = expected(v);
        for (k, &(id, _)) in REGIONS.iter().enumerate() {
            let h = ck.handle::<u8>(id).unwrap();
            ck.region_mut(&h).unwrap().copy_from_slice(&want[k]);
        }
        ck.checkpoint().unwrap();
    }
    drop(ck);
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().starts_with('.') {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
}

#[test]
fn a_store_written_by_an_earlier_build_decodes_and_restores() {
    let dir = fixture_dir();
    if std::env::var_os("CKPT_WRITE_FIXTURE").is_some() {
        write_fixture(&dir);
    }
    let store = Store::new(&dir, "fx").unwrap();
    assert_eq!(store.versions().unwrap(), vec![1, 2, 3]);
    let v1 = VersionFile::open(&dir.join("fx.ckpt.1")).unwrap();
    assert_eq!(v1.header.version, 1);
    assert_eq!(v1.header.name, "fx");
    assert!(v1.header.parent.is_none());
    let v3 = VersionFile::open(&dir.join("fx.ckpt.3")).unwrap();
    assert_eq!(v3.header.parent.map(|p| p.version), Some(2));
    assert_eq!(v3.index.regions.len(), 2);
    let out = tempfile::tempdir().unwrap();
    for v in 1..=3u64 {
        verify_version(&store.path_of(v)).unwrap();
        let (_, files) = export(&store, Some(v), &out.path().join(v.to_string())).unwrap();
        let got: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        assert_eq!(got, expected(v), "version {v}");
    }
}
