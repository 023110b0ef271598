//! Stores written by earlier builds, committed under `tests/fixtures/format-v<N>/` (one per
//! format version), must keep decoding and restoring byte for byte: the on-disk format does
//! not drift when the code that encodes it changes.
//!
//! The fixture is a chain `fx` of three versions over two regions (the second 10 000 bytes,
//! //! not a multiple of the page size): v1 full, v2 and v3 deltas. `CKPT_WRITE_FIXTURE=1 cargo
//! test -p ckpt-tests --test fixture` writes the current format version's fixture (only
//! when the format changes on purpose, with a `format_version` bump; older ones stay).

use std::path::{Path, PathBuf};

use ckpt_engine::catalog::{export, verify_version};
use ckpt_engine::format::FORMAT_VERSION;
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

fn fixture_dir(format: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/format-v{format}"))
}

fn write_fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    // Uncompressed, so that raw records are padded onto block boundaries (format version 2);
    // the version-1 fixture holds compressed ones.
    let config = Config::default()
        .with_tracking(ckpt_engine::Tracking::Hash)
        .with_compression_level(0);
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
fn stores_written_by_earlier_builds_decode_and_restore() {
    if std::env::var_os("CKPT_WRITE_FIXTURE").is_some() {
        write_fixture(&fixture_dir(FORMAT_VERSION));
    }
    for format in 1..=FORMAT_VERSION {
        check_fixture(&fixture_dir(format), format);
    }
}

/// A version-1 store compacts: the revision (in this build's format) restores every page.
#[test]
fn a_store_of_format_version_1_compacts() {
    let dir = tempfile::tempdir().unwrap();
    for v in 1..=3 {
        let name = format!("fx.ckpt.{v}");
        std::fs::copy(fixture_dir(1).join(&name), dir.path().join(&name)).unwrap();
    }
    let store = Store::new(dir.path(), "fx").unwrap();
    let opts = ckpt_engine::compact::CompactOptions {
        keep: 1,
        ..Default::default()
    };
    let report = ckpt_engine::compact::compact(&store, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(report.removed, vec![1, 2]);
    let v3 = store.path_of(3);
    assert_eq!(
        VersionFile::open(&v3).unwrap().header.format_version,
        FORMAT_VERSION
    );
    verify_version(&v3).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, files) = export(&store, Some(3), out.path()).unwrap();
    let got: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(got, expected(3));
}

fn check_fixture(dir: &Path, format: u32) {
    let store = Store::new(dir, "fx").unwrap();
    assert_eq!(store.versions().unwrap(), vec![1, 2, 3]);
    let v1 = VersionFile::open(&dir.join("fx.ckpt.1")).unwrap();
    assert_eq!(v1.header.format_version, format);
    // From version 2, the first raw record is padded onto a block boundary.
    let first = v1.index.records[0].offset;
    assert_eq!(first % 4096 == 0, format >= 2, "first record at {first}");
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
        assert_eq!(got, expected(v), "format {format}, version {v}");
    }
}
