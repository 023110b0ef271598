//! Corruption matrix: for each section of a delta and of its parent, and at random offsets,
//! flip a byte; truncate; delete the parent; replace the parent with another valid file of the
//! same name. Each must give an error that names the damaged file, never wrong data and never
//! a panic.

use std::path::{Path, PathBuf};

use ckpt_engine::bench::Rng;
use ckpt_engine::catalog::verify_version;
use ckpt_engine::format::FOOTER_LEN;
use ckpt_engine::read::VersionFile;
use ckpt_engine::{Checkpointer, Config, Error};

mod common;

const IDS: [(u64, usize); 2] = [(1, 300_000), (2, 5_000)];

/// Builds a chain v1 (full), v2, v3 (deltas) in `dir` with chain name `name`; returns each
/// version's state.
fn build(dir: &Path, name: &str, seed: u64) -> Vec<Vec<Vec<u8>>> {
    let mut ck = Checkpointer::open(dir, name, Config::default()).unwrap();
    let mut rng = Rng::new(seed);
    for (id, n) in IDS {
        let h = ck.alloc_region::<u8>(id, n).unwrap();
        // Half compressible, half random.
        ck.region_mut(&h)
            .unwrap()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| {
                *b = if i % 8192 < 4096 {
                    (i / 64) as u8
                } else {
                    rng.next_u64() as u8
                }
            });
    }
    let mut states = Vec::new();
    for v in 0..3 {
        if v > 0 {
            for _ in 0..10 {
                let data = ck.region_mut(&ck.handle::<u8>(1).unwrap()).unwrap();
                let at = rng.below(IDS[0].1 as u64 - 100) as usize;
                data[at..at + 100]
                    .iter_mut()
                    .for_each(|b| *b = rng.next_u64() as u8);
            }
        }
        ck.checkpoint().unwrap();
        states.push(
            IDS.iter()
                .map(|(id, _)| ck.region_bytes(*id).unwrap().to_vec())
                .collect(),
        );
    }
    states
}

/// Restores `v` into fresh regions: Ok(state) or the error.
fn restore(dir: &Path, name: &str, v: u64) -> Result<Vec<Vec<u8>>, Error> {
    let mut ck = Checkpointer::open(dir, name, Config::default())?;
    for (id, n) in IDS {
        ck.alloc_region::<u8>(id, n)?;
    }
    ck.restore(Some(v))?;
    Ok(IDS
        .iter()
        .map(|(id, _)| ck.region_bytes(*id).unwrap().to_vec())
        .collect())
}

fn sections(path: &Path) -> Vec<(&'static str, u64, u64)> {
    let f = VersionFile::open(path).unwrap();
    let len = f.size();
    vec![
        ("header", 0, 256),
        ("data", 256, f.footer.index_offset),
        (
            "index",
            f.footer.index_offset,
            f.footer.index_offset + f.footer.index_len,
        ),
        ("footer", len - FOOTER_LEN as u64, len),
    ]
}

fn mentions(e: &Error, file: &Path) -> bool {
    let name = file.file_name().unwrap().to_str().unwrap();
    e.to_string().contains(name)
}

#[test]
fn flipped_bytes_in_every_section_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let states = build(dir.path(), "c", 1);
    let v3 = dir.path().join("c.ckpt.3");
    let v2 = dir.path().join("c.ckpt.2");
    let mut rng = Rng::new(99);
    let mut restore_errors = 0;
    let mut cases = 0;
    // Damage the newest delta itself, and a file it references.
    for target in [&v3, &v2] {
        let pristine = std::fs::read(target).unwrap();
        for (section, lo, hi) in sections(target) {
            assert!(hi > lo, "{section} is empty");
            for _ in 0..25 {
                let at = (lo + rng.below(hi - lo)) as usize;
                let mut bad = pristine.clone();
                bad[at] ^= 1 << rng.below(8);
                std::fs::write(target, &bad).unwrap();
                cases += 1;
                // verify always notices, and names the damaged file.
                let e = verify_version(&v3).expect_err(&format!(
                    "verify missed a flip at {at} ({section}) of {}",
                    target.display()
                ));
                assert!(
                    mentions(&e, target),
                    "verify error does not name {}: {e}",
                    target.display()
                );
                // restore never returns wrong data.
                match restore(dir.path(), "c", 3) {
                    Ok(state) => assert_eq!(
                        state, states[2],
                        "wrong data after a flip at {at} ({section})"
                    ),
                    Err(e) => {
                        restore_errors += 1;
                        assert!(
                            mentions(&e, target),
                            "restore error does not name {}: {e}",
                            target.display()
                        );
                    }
                }
            }
        }
        std::fs::write(target, &pristine).unwrap();
    }
    // Flips in the parent's pages that v3 does not use may restore correctly; flips in v3's
    // own sections, or in the parent's metadata, never can.
    assert!(
        restore_errors * 10 >= cases * 7,
        "only {restore_errors} of {cases} flips stopped a restore"
    );
    assert_eq!(restore(dir.path(), "c", 3).unwrap(), states[2]);
}

#[test]
fn truncation_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), "c", 2);
    let mut rng = Rng::new(5);
    for target in ["c.ckpt.3", "c.ckpt.1"] {
        let p = dir.path().join(target);
        let pristine = std::fs::read(&p).unwrap();
        let mut cuts: Vec<usize> = (0..20)
            .map(|_| rng.below(pristine.len() as u64) as usize)
            .collect();
        cuts.extend([0, 1, 255, 256, pristine.len() - 1]);
        for cut in cuts {
            std::fs::write(&p, &pristine[..cut]).unwrap();
            let e = restore(dir.path(), "c", 3)
                .expect_err(&format!("restore after truncating {target} to {cut}"));
            assert!(mentions(&e, &p), "{e}");
            let e = verify_version(&dir.path().join("c.ckpt.3")).unwrap_err();
            assert!(mentions(&e, &p), "{e}");
        }
        std::fs::write(&p, &pristine).unwrap();
    }
}

#[test]
fn missing_parent_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), "c", 3);
    let parent: PathBuf = dir.path().join("c.ckpt.2");
    std::fs::remove_file(&parent).unwrap();
    let e = restore(dir.path(), "c", 3).unwrap_err();
    assert!(matches!(e, Error::MissingReference { .. }), "{e}");
    assert!(
        mentions(&e, &parent) && mentions(&e, &dir.path().join("c.ckpt.3")),
        "{e}"
    );
    let e = verify_version(&dir.path().join("c.ckpt.3")).unwrap_err();
    assert!(mentions(&e, &parent), "{e}");
}

/// With every referenced file gone, the error names the first one of the file table: what a
/// user is told does not depend on the order the files happen to be opened in.
#[test]
fn missing_references_are_reported_in_file_table_order() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), "c", 6);
    let newest = dir.path().join("c.ckpt.3");
    let table: Vec<String> = VersionFile::open(&newest).unwrap().index.files[1..]
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(table.len(), 2, "{table:?}");
    for name in &table {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    for _ in 0..10 {
        match restore(dir.path(), "c", 3).unwrap_err() {
            Error::MissingReference { missing, .. } => {
                assert_eq!(missing, dir.path().join(&table[0]))
            }
            e => panic!("{e}"),
        }
    }
}

#[test]
fn replaced_parent_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    build(dir.path(), "c", 4);
    // The same workload in another directory: valid files, same names, same contents, other
    // identities.
    build(other.path(), "c", 4);
    for parent in ["c.ckpt.2", "c.ckpt.1"] {
        let pristine = std::fs::read(dir.path().join(parent)).unwrap();
        std::fs::copy(other.path().join(parent), dir.path().join(parent)).unwrap();
        let e = restore(dir.path(), "c", 3).unwrap_err();
        assert!(matches!(e, Error::ReplacedReference { .. }), "{e}");
        assert!(mentions(&e, &dir.path().join(parent)), "{e}");
        let e = verify_version(&dir.path().join("c.ckpt.3")).unwrap_err();
        assert!(matches!(e, Error::ReplacedReference { .. }), "{e}");
        std::fs::write(dir.path().join(parent), &pristine).unwrap();
    }
    verify_version(&dir.path().join("c.ckpt.3")).unwrap();
}

#[test]
fn garbage_files_are_rejected_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(11);
    for len in [0usize, 10, 300, 416, 5000] {
        let p = dir.path().join("g.ckpt.1");
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        std::fs::write(&p, bytes).unwrap();
        let e = VersionFile::open(&p).unwrap_err();
        assert!(mentions(&e, &p), "{e}");
        assert!(e.path() == Some(p.as_path()), "{e:?}");
    }
}

#[test]
fn an_engine_whose_restore_failed_still_writes_correct_versions() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), "c", 6);
    // Damage the last page v3 takes from another file, then restore v3 into a live engine:
    // it fails part-way through, leaving the regions partly overwritten.
    let v3 = VersionFile::open(&dir.path().join("c.ckpt.3")).unwrap();
    let e = v3.index.extents.iter().rev().find(|e| e.file != 0).unwrap();
    let src = dir.path().join(&v3.index.files[e.file as usize].name);
    let rec = VersionFile::open(&src).unwrap().index.records
        [(e.first_record + e.page_count as u64 - 1) as usize];
    let mut bytes = std::fs::read(&src).unwrap();
    bytes[rec.offset as usize + rec.stored_len as usize / 2] ^= 0x40;
    std::fs::write(&src, &bytes).unwrap();
    for tracking in [ckpt_engine::Tracking::Hash, ckpt_engine::Tracking::Auto] {
        let mut ck =
            Checkpointer::open(dir.path(), "c", Config::default().with_tracking(tracking)).unwrap();
        for (id, n) in IDS {
            let h = ck.alloc_region::<u8>(id, n).unwrap();
            ck.region_mut(&h)
                .unwrap()
                .iter_mut()
                .for_each(|b| *b = 0xEE);
        }
        let e = ck.restore(Some(3)).unwrap_err();
        assert!(mentions(&e, &src), "{e}");
        // Whatever the failed restore left in memory, the next version records exactly it.
        let s = ck.checkpoint().unwrap();
        let want: Vec<Vec<u8>> = IDS
            .iter()
            .map(|(id, _)| ck.region_bytes(*id).unwrap().to_vec())
            .collect();
        drop(ck);
        assert_eq!(
            restore(dir.path(), "c", s.version).unwrap(),
            want,
            "{tracking:?}"
        );
    }
}

/// Rewrites bytes of a header and fixes its checksum, as a newer writer would have.
fn patch_header(path: &Path, patch: impl Fn(&mut [u8])) {
    let mut b = std::fs::read(path).unwrap();
    patch(&mut b[..256]);
    let sum = blake3::hash(&b[..224]);
    b[224..256].copy_from_slice(sum.as_bytes());
    std::fs::write(path, &b).unwrap();
}

/// Issue 8, item 7: the compatibility policy of docs/FORMAT.md. A newer format version, an
/// unknown incompatible flag and a non-zero reserved byte are each refused with an error that
/// names the file; an unknown *compatible* flag is ignored.
#[test]
fn newer_formats_unknown_incompatible_flags_and_reserved_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let states = build(dir.path(), "f", 7);
    let v1 = dir.path().join("f.ckpt.1");
    let pristine = std::fs::read(&v1).unwrap();
    type Patch<'a> = &'a dyn Fn(&mut [u8]);
    let cases: [(&str, Patch, &str); 4] = [
        (
            "format version 3",
            &|h: &mut [u8]| h[8..12].copy_from_slice(&3u32.to_le_bytes()),
            "format version 3, this build reads versions 1 to 2 (written by a newer ckpt",
        ),
        (
            "format version 0",
            &|h: &mut [u8]| h[8..12].copy_from_slice(&0u32.to_le_bytes()),
            "format version 0, this build reads versions 1 to 2",
        ),
        (
            "incompatible flag",
            &|h: &mut [u8]| h[106] |= 0x01, // bit 16
            "incompatible feature flags 0x00010000",
        ),
        (
            "reserved byte",
            &|h: &mut [u8]| h[200] = 7,
            "non-zero reserved byte at offset 200",
        ),
    ];
    for (what, patch, want) in cases {
        std::fs::write(&v1, &pristine).unwrap();
        patch_header(&v1, patch);
        let e = VersionFile::open(&v1).expect_err(what);
        assert!(
            mentions(&e, &v1) && e.to_string().contains(want),
            "{what}: {e}"
        );
        let e = verify_version(&v1).expect_err(what);
        assert!(mentions(&e, &v1), "{what}: {e}");
        let e = restore(dir.path(), "f", 3).expect_err(what);
        assert!(mentions(&e, &v1), "{what}: {e}");
    }
    // An unknown compatible flag (bit 15) changes nothing about how the file reads.
    std::fs::write(&v1, &pristine).unwrap();
    patch_header(&v1, |h| h[105] |= 0x80);
    verify_version(&dir.path().join("f.ckpt.3")).unwrap();
    assert_eq!(restore(dir.path(), "f", 3).unwrap(), states[2]);
}

/// Issue 12's sweep, exhaustive on a small chain: every single byte of every file is covered
/// by a checksum. Flipping any one bit anywhere makes `verify_version` of that file fail
/// (naming it), and a restore of the newest version either fails naming the file or returns
/// exactly the original bytes.
#[test]
fn every_byte_of_every_file_is_covered() {
    let dir = tempfile::tempdir().unwrap();
    let mut ck = Checkpointer::open(dir.path(), "s", Config::default()).unwrap();
    let h = ck.alloc_region::<u8>(1, 3 * 4096 + 100).unwrap();
    let mut rng = Rng::new(7);
    let mut states = Vec::new();
    for v in 0..3u8 {
        let data = ck.region_mut(&h).unwrap();
        // Version 1 everything; then one page each (half compressible, half random).
        let page = if v == 0 {
            0..data.len()
        } else {
            (v as usize) * 4096..(v as usize) * 4096 + 4096
        };
        for (i, b) in data[page].iter_mut().enumerate() {
            *b = if i % 2 == 0 { v } else { rng.next_u64() as u8 };
        }
        ck.checkpoint().unwrap();
        states.push(ck.region(&h).unwrap().to_vec());
    }
    drop(ck);
    let restore3 = || -> Result<Vec<u8>, Error> {
        let mut ck = Checkpointer::open(dir.path(), "s", Config::default())?;
        let h = ck.alloc_region::<u8>(1, 3 * 4096 + 100)?;
        ck.restore(Some(3))?;
        Ok(ck.region(&h)?.to_vec())
    };
    let mut flips = 0;
    for v in 1..=3u64 {
        let p = dir.path().join(format!("s.ckpt.{v}"));
        let pristine = std::fs::read(&p).unwrap();
        for at in 0..pristine.len() {
            let mut bad = pristine.clone();
            bad[at] ^= 1 << (at % 8);
            std::fs::write(&p, &bad).unwrap();
            flips += 1;
            let e = verify_version(&p).expect_err(&format!(
                "a flip at byte {at} of {} went unnoticed",
                p.display()
            ));
            assert!(mentions(&e, &p), "{e}");
            // (A full restore per flip costs most of the time: every 5th byte, all sections.)
            if at % 5 == 0 {
                match restore3() {
                    Ok(s) => assert_eq!(s, states[2], "wrong data after a flip at {at} of v{v}"),
                    Err(e) => assert!(mentions(&e, &p), "{e}"),
                }
            }
        }
        std::fs::write(&p, &pristine).unwrap();
    }
    eprintln!("every_byte_of_every_file_is_covered: {flips} single-bit flips, all caught");
    assert_eq!(restore3().unwrap(), states[2]);
}

/// The high-water mark of this process's resident memory, in bytes.
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A decompression bomb: a compressed page replaced by a valid zstd frame that expands to
/// 1 GiB (padded to the record's length with a skippable frame). Restore and export must
/// refuse it, naming the file, without ever holding more than a page of its output.
#[test]
fn a_decompression_bomb_is_refused_without_allocating_it() {
    const PAGE: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut ck = Checkpointer::open(
        dir.path(),
        "b",
        Config::default().with_page_size(PAGE as u32),
    )
    .unwrap();
    let h = ck.alloc_region::<u8>(1, 2 * PAGE).unwrap();
    // Half random, half zeros: compresses to about half a page, room for the bomb.
    let mut rng = Rng::new(5);
    for (i, b) in ck.region_mut(&h).unwrap().iter_mut().enumerate() {
        *b = if i % PAGE < PAGE / 2 {
            rng.next_u64() as u8
        } else {
            0
        };
    }
    ck.checkpoint().unwrap();
    drop(ck);
    let path = dir.path().join("b.ckpt.1");
    let f = VersionFile::open(&path).unwrap();
    let rec = *f
        .index
        .records
        .iter()
        .find(|r| r.codec == ckpt_engine::format::Codec::Zstd)
        .expect("a compressed page");
    drop(f);
    // 1 GiB of zeros, streamed into the encoder (never held in memory).
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let mut bomb = enc.finish().unwrap();
    let room = rec.stored_len as usize;
    assert!(
        bomb.len() + 8 <= room,
        "bomb {} B, record {room} B",
        bomb.len()
    );
    // A skippable frame (magic 0x184D2A50, little-endian length) fills the rest.
    let pad = room - bomb.len() - 8;
    bomb.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    bomb.extend_from_slice(&(pad as u32).to_le_bytes());
    bomb.resize(room, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[rec.offset as usize..rec.offset as usize + room].copy_from_slice(&bomb);
    std::fs::write(&path, &bytes).unwrap();
    drop(bytes);

    let before = peak_rss();
    let mut ck = Checkpointer::open(
        dir.path(),
        "b",
        Config::default().with_page_size(PAGE as u32),
    )
    .unwrap();
    ck.alloc_region::<u8>(1, 2 * PAGE).unwrap();
    let e = ck.restore(Some(1)).expect_err("the bomb restored");
    assert!(mentions(&e, &path), "{e}");
    drop(ck);
    let out = tempfile::tempdir().unwrap();
    let store = ckpt_engine::Store::new(dir.path(), "b").unwrap();
    let e = ckpt_engine::catalog::export(&store, Some(1), &out.path().join("o"))
        .expect_err("the bomb exported");
    assert!(mentions(&e, &path), "{e}");
    let e = verify_version(&path).expect_err("the bomb verified");
    assert!(mentions(&e, &path), "{e}");
    let grew = peak_rss().saturating_sub(before);
    assert!(grew < 256 << 20, "resident memory grew by {grew} bytes");
}

/// Rewrites `path`'s index with `patch` applied, fixing the index checksum and length in the
/// footer, so that only the engine's consistency checks (not a checksum) can catch it.
fn patch_index(path: &Path, patch: impl Fn(&mut ckpt_engine::format::Index)) {
    let f = VersionFile::open(path).unwrap();
    let mut index = f.index.clone();
    let mut footer = f.footer.clone();
    drop(f);
    patch(&mut index);
    let encoded = index.encode();
    let bytes = std::fs::read(path).unwrap();
    let mut out = bytes[..footer.index_offset as usize].to_vec();
    out.extend_from_slice(&encoded);
    footer.index_len = encoded.len() as u64;
    footer.index_checksum = *blake3::hash(&encoded).as_bytes();
    out.extend_from_slice(&footer.encode());
    std::fs::write(path, out).unwrap();
}

/// An index claiming huge sizes, with its checksum fixed: a region of 8 TiB whose extents
/// cover it; an extent whose records lie far past the file's; an extent in a file the table
/// does not have. Restore, export
/// and verify refuse each, naming the file, before allocating or writing anything (no 8 TiB
/// sparse output, no huge allocation).
#[test]
fn an_index_claiming_huge_sizes_is_refused_before_any_allocation() {
    type Patch = fn(&mut ckpt_engine::format::Index);
    let patches: [(&str, Patch); 3] = [
        ("an 8 TiB region", |ix| {
            // Consistent in itself: the extents cover the 8 TiB exactly (4 KiB pages), so
            // only checking them against the records they name can catch it.
            let r = ix.regions[0];
            let first = r.first_extent as usize;
            let covered: u64 = ix.extents[first..first + r.extent_count as usize]
                .iter()
                .map(|e| e.page_count as u64)
                .sum();
            ix.regions[0].byte_len = 8 << 40;
            ix.extents[first].page_count += ((8u64 << 40) / 4096 - covered) as u32;
        }),
        ("an extent past the records", |ix| {
            let first = ix.regions[0].first_extent as usize;
            ix.extents[first].first_record = u64::MAX / 2;
        }),
        ("an extent in a file not in the table", |ix| {
            let first = ix.regions[0].first_extent as usize;
            ix.extents[first].file = 1000;
        }),
    ];
    for (what, patch) in patches {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), "h", 9);
        let path = dir.path().join("h.ckpt.3");
        patch_index(&path, patch);
        let before = peak_rss();
        let e = restore(dir.path(), "h", 3).expect_err(what);
        assert!(mentions(&e, &path), "{what}: {e}");
        let out = dir.path().join("out");
        let store = ckpt_engine::Store::new(dir.path(), "h").unwrap();
        let e = ckpt_engine::catalog::export(&store, Some(3), &out).expect_err(what);
        assert!(mentions(&e, &path), "{what}: {e}");
        let written: u64 = std::fs::read_dir(&out)
            .map(|rd| rd.map(|e| e.unwrap().metadata().unwrap().len()).sum())
            .unwrap_or(0);
        assert_eq!(written, 0, "{what}: export left output behind");
        let e = verify_version(&path).expect_err(what);
        assert!(mentions(&e, &path), "{what}: {e}");
        let grew = peak_rss().saturating_sub(before);
        assert!(
            grew < 256 << 20,
            "{what}: resident memory grew by {grew} bytes"
        );
    }
}

/// The byte offsets of a raw and of a compressed record of `c.ckpt.1` that version 3 uses
/// (so that compacting to version 3 copies them).
fn used_records_of_v1(dir: &Path) -> Vec<(ckpt_engine::format::Codec, u64)> {
    use ckpt_engine::format::Codec;
    let v = ckpt_engine::read::Version::open(&dir.join("c.ckpt.3")).unwrap();
    let mut found: Vec<(Codec, u64)> = Vec::new();
    for r in v.regions() {
        for e in v.file().index.extents_of(r) {
            let src = &v.files()[e.file as usize];
            if !src.path().ends_with("c.ckpt.1") {
                continue;
            }
            for k in 0..e.page_count as u64 {
                let rec = src.index.records[(e.first_record + k) as usize];
                if !found.iter().any(|(c, _)| *c == rec.codec) {
                    found.push((rec.codec, rec.offset + rec.stored_len as u64 / 2));
                }
            }
        }
    }
    assert_eq!(found.len(), 2, "v3 uses raw and compressed pages of v1");
    found
}

#[test]
fn a_compaction_that_meets_a_damaged_page_names_it_and_changes_nothing() {
    // The chain is built the same way every time: the records found in one copy are at the
    // same offsets in the next.
    let used = {
        let d = tempfile::tempdir().unwrap();
        build(d.path(), "c", 5);
        used_records_of_v1(d.path())
    };
    for (cold, (codec, at)) in [false, true]
        .into_iter()
        .flat_map(|cold| used.iter().map(move |&r| (cold, r)))
    {
        let d = tempfile::tempdir().unwrap();
        let states = build(d.path(), "c", 5);
        let v1 = d.path().join("c.ckpt.1");
        let flip = |path: &Path| {
            let mut bytes = std::fs::read(path).unwrap();
            bytes[at as usize] ^= 0x10;
            std::fs::write(path, bytes).unwrap();
        };
        flip(&v1);
        let files = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
            let mut v: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with("c.ckpt")
                })
                .map(|p| {
                    let b = std::fs::read(&p).unwrap();
                    (p, b)
                })
                .collect();
            v.sort();
            v
        };
        let before = files(d.path());
        if cold {
            for (p, _) in &before {
                common::drop_from_cache(p);
            }
        }
        let store = ckpt_engine::Store::new(d.path(), "c").unwrap();
        let opts = ckpt_engine::compact::CompactOptions {
            keep: 1,
            ..Default::default()
        };
        let e = ckpt_engine::compact::compact(&store, &opts, &mut |_, _| {})
            .expect_err("a compaction copied a damaged page");
        assert!(
            mentions(&e, &v1),
            "{codec:?} page, cold {cold}: the error does not name c.ckpt.1: {e}"
        );
        assert!(
            files(d.path()) == before,
            "{codec:?} page, cold {cold}: a failed compaction changed the store"
        );
        assert!(store.temp_files().unwrap().is_empty(), "temporaries left");
        // Repaired, the same compaction goes through and version 3 is intact.
        flip(&v1);
        let report = ckpt_engine::compact::compact(&store, &opts, &mut |_, _| {}).unwrap();
        assert_eq!(report.kept, vec![3]);
        assert_eq!(restore(d.path(), "c", 3).unwrap(), states[2]);
        verify_version(&d.path().join("c.ckpt.3")).unwrap();
    }
}
