//! Large versions go to the disk with direct I/O (issue 14): whole aligned blocks straight
//! from the write buffers, the unaligned ends through the page cache. They must restore
//! exactly whatever the mix of compressed and raw pages (so whatever the alignment of each
//! page in the file), and, on a file system that takes `O_DIRECT`, a full version must not be
//! left in the page cache (the point of it: no copy there, no eviction of the application's
//! cached files).

use std::path::Path;

use ckpt_engine::{Checkpointer, Config};

mod common;
use common::drop_from_cache;

/// Deterministic incompressible bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The fraction of `path`'s pages that are in the page cache (`mincore` of a mapping).
fn resident_fraction(path: &Path) -> f64 {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a committed version file, which nothing modifies while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let ps = 4096;
    let pages = map.len().div_ceil(ps);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a live mapping of `map.len()` bytes and `vec` has one byte per page.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            vec.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 == 1).count() as f64 / pages as f64
}

/// Damages the byte at `at` of the file at `path`, on the disk.
fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    f.sync_all().unwrap();
}

/// Whether the file system under `dir` is one known to take `O_DIRECT` writes.
fn takes_direct_io(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC};
    let t = statfs(dir).unwrap().filesystem_type();
    [EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, BTRFS_SUPER_MAGIC].contains(&t)
}

#[test]
fn large_versions_restore_exactly_and_bypass_the_page_cache() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("store");
    let ps = 4096;
    // 72 MiB of noise (raw pages), 3 MiB + 5 bytes where two pages in three compress, and a
    // short region: the stored pages' lengths vary, so blocks straddle pages everywhere.
    let mut big = noise(1, 72 << 20);
    let mut mixed = vec![0u8; (3 << 20) + 5];
    for (i, page) in mixed.chunks_mut(ps).enumerate() {
        if i % 3 == 0 {
            let n = page.len();
            page.copy_from_slice(&noise(i as u64 + 7, n));
        } else {
            page[i % 100] = i as u8;
        }
    }
    let mut small = noise(3, 10_123);

    let mut ck = Checkpointer::open(&dir, "d", Config::default()).unwrap();
    let hb = ck.alloc_region::<u8>(1, big.len()).unwrap();
    let hm = ck.alloc_region::<u8>(2, mixed.len()).unwrap();
    let hs = ck.alloc_region::<u8>(3, small.len()).unwrap();
    let mut states = Vec::new();
    let write = |ck: &mut Checkpointer, b: &[u8], m: &[u8], s: &[u8]| {
        ck.region_mut(&hb).unwrap().copy_from_slice(b);
        ck.region_mut(&hm).unwrap().copy_from_slice(m);
        ck.region_mut(&hs).unwrap().copy_from_slice(s);
    };

    // v1: full.
    write(&mut ck, &big, &mixed, &small);
    let v1 = ck.checkpoint().unwrap();
    states.push((v1.version, big.clone(), mixed.clone(), small.clone()));
    if takes_direct_io(&dir) {
        let r = resident_fraction(&v1.path);
        assert!(
            r < 0.25,
            "{:.0} % of the full version {} is in the page cache: it was not written with direct I/O",
            r * 100.0,
            v1.path.display()
        );
    }

    // v2: a dense delta (nine pages in ten of the big region rewritten: above the direct
    // I/O threshold) that also changes compressible pages.
    for (i, page) in big.chunks_mut(ps).enumerate() {
        if i % 10 != 0 {
            page[i % ps] ^= 0x5a;
        }
    }
    for page in mixed.chunks_mut(ps).skip(1).step_by(5) {
        page[0] ^= 1;
    }
    write(&mut ck, &big, &mixed, &small);
    let v2 = ck.checkpoint().unwrap();
    assert!(v2.pages_stored > (big.len() / ps) as u64 * 8 / 10, "{v2:?}");
    states.push((v2.version, big.clone(), mixed.clone(), small.clone()));

    // v3: a sparse delta (through the page cache).
    big[12_345] ^= 1;
    small[10_000] ^= 1;
    write(&mut ck, &big, &mixed, &small);
    let v3 = ck.checkpoint().unwrap();
    states.push((v3.version, big.clone(), mixed.clone(), small.clone()));
    drop(ck);

    for (v, b, m, s) in &states {
        let mut ck = Checkpointer::open(&dir, "d", Config::default()).unwrap();
        let hb = ck.alloc_region::<u8>(1, b.len()).unwrap();
        let hm = ck.alloc_region::<u8>(2, m.len()).unwrap();
        let hs = ck.alloc_region::<u8>(3, s.len()).unwrap();
        ck.restore(Some(*v)).unwrap();
        assert!(
            ck.region(&hb).unwrap() == b.as_slice(),
            "version {v}: region 1 differs"
        );
        assert!(
            ck.region(&hm).unwrap() == m.as_slice(),
            "version {v}: region 2 differs"
        );
        assert!(
            ck.region(&hs).unwrap() == s.as_slice(),
            "version {v}: region 3 differs"
        );
    }
}

/// A direct write that the file system refuses before writing anything (here: memory that is
/// not aligned as `O_DIRECT` needs, which ext4, XFS and btrfs refuse with `EINVAL`) writes
/// nothing and says so, and the file goes back to the page cache for good: the caller's
/// ordinary write of the same bytes, and every later one, lands where it should. A file
/// system that takes the write anyway (tmpfs) must have written it exactly.
#[test]
fn a_refused_direct_write_falls_back_to_the_page_cache() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("f");
    let vfs = ckpt_engine::vfs::current();
    let mut f = vfs.create_new(&path).unwrap();
    // One block, from memory one byte past an aligned address.
    let backing = vec![0u8; 3 * 4096];
    let skew = (4096 - backing.as_ptr() as usize % 4096) % 4096 + 1;
    let data = noise(7, 4096);
    let mut buf = backing;
    buf[skew..skew + 4096].copy_from_slice(&data);
    let misaligned = &buf[skew..skew + 4096];
    let direct = f.write_direct(misaligned).unwrap();
    eprintln!("direct write taken: {direct}");
    if !direct {
        f.write_all(misaligned).unwrap();
        // Refused once, never tried again; and the file is buffered again, so an unaligned
        // ordinary write works.
        assert!(!f.write_direct(misaligned).unwrap());
    }
    f.write_all(b"tail").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let got = std::fs::read(&path).unwrap();
    assert_eq!(got.len(), 4096 + 4);
    assert!(got[..4096] == data[..], "the block written differs");
    assert_eq!(&got[4096..], b"tail");
}

/// The real file system's copy of a range (`copy_file_range`, which the compactor uses only
/// where the file system copies on its server) appends exactly the bytes asked for, after
/// what the file already holds; and on a local file system it is not chosen (there the
/// compactor writes from memory with direct I/O, which measured faster).
#[test]
fn a_copied_range_is_appended_exactly_and_local_copies_are_not_offloaded() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src_path = dir.path().join("src");
    let data = noise(3, 3 << 20);
    std::fs::write(&src_path, &data).unwrap();
    let src = std::fs::File::open(&src_path).unwrap();
    let vfs = ckpt_engine::vfs::current();
    let dst_path = dir.path().join("dst");
    let mut dst = vfs.create_new(&dst_path).unwrap();
    dst.write_all(b"head").unwrap();
    let (at, len) = (1000u64, (2 << 20) + 5);
    dst.copy_from(&src, at, len).unwrap();
    dst.write_all(b"tail").unwrap();
    dst.sync_all().unwrap();
    let local = {
        // SAFETY: `st` is a plain C struct the call fills; the path is NUL-terminated.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        // SAFETY: as above; `c` outlives the call.
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
        // ext4, XFS, btrfs, tmpfs.
        [0xEF53u32, 0x5846_5342, 0x9123_683E, 0x0102_1994].contains(&(st.f_type as u32))
    };
    if local {
        assert!(
            !dst.copy_offloaded(),
            "a local file system copies through memory"
        );
    }
    drop(dst);
    let got = std::fs::read(&dst_path).unwrap();
    assert_eq!(got.len(), 4 + len as usize + 4);
    assert_eq!(&got[..4], b"head");
    assert!(got[4..4 + len as usize] == data[at as usize..(at + len) as usize]);
    assert_eq!(&got[4 + len as usize..], b"tail");
}

/// A restore from a cold cache reads the files itself, in large requests with direct I/O:
/// it restores exactly (many requests, across two files, raw and compressed pages), it does
/// not fill the page cache with the checkpoint on a file system that takes `O_DIRECT`, and a
/// page damaged on the disk is still caught, naming the file, when it comes through that
/// path; the same restore with the files cached comes through the mapping, equally checked.
#[test]
fn a_cold_restore_reads_around_the_page_cache_and_checks_every_page() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("store");
    let ps = 4096;
    // 40 MiB: with two workers, requests of at most 5 MiB, so several per file.
    let mut data = noise(11, 40 << 20);
    for (i, page) in data.chunks_mut(ps).enumerate() {
        if i % 4 == 1 {
            page.fill(i as u8); // compresses
        }
    }
    let mut ck = Checkpointer::open(&dir, "c", Config::default()).unwrap();
    let h = ck.alloc_region::<u8>(1, data.len()).unwrap();
    ck.region_mut(&h).unwrap().copy_from_slice(&data);
    let v1 = ck.checkpoint().unwrap();
    // v2 rewrites every seventh page: the newest version reads both files.
    for page in data.chunks_mut(ps).step_by(7) {
        page[9] ^= 0xff;
    }
    ck.region_mut(&h).unwrap().copy_from_slice(&data);
    let v2 = ck.checkpoint().unwrap();
    drop(ck);

    let restore = || {
        let mut ck = Checkpointer::open(&dir, "c", Config::default()).unwrap();
        let h = ck.alloc_region::<u8>(1, data.len()).unwrap();
        let r = ck.restore(Some(v2.version));
        r.map(|_| ck.region(&h).unwrap() == data.as_slice())
    };
    for p in [&v1.path, &v2.path] {
        drop_from_cache(p);
    }
    assert!(restore().unwrap(), "the cold restore differs");
    if takes_direct_io(&dir) {
        for p in [&v1.path, &v2.path] {
            let r = resident_fraction(p);
            assert!(
                r < 0.25,
                "{:.0} % of {} is in the page cache after a cold restore: it was not read with direct I/O",
                r * 100.0,
                p.display()
            );
        }
    }
    // Cached: through the mapping, the same bytes.
    for p in [&v1.path, &v2.path] {
        std::fs::read(p).unwrap();
    }
    assert!(restore().unwrap(), "the cached restore differs");

    // One byte of a raw page of v1 that v2 still uses (not rewritten), damaged on the disk;
    // cold and cached, the restore refuses it.
    let at = {
        let file = ckpt_engine::read::VersionFile::open(&v1.path).unwrap();
        let (_, rec) = file
            .index
            .records
            .iter()
            .enumerate()
            .find(|(i, r)| i % 7 != 0 && r.codec == ckpt_engine::format::Codec::Raw)
            .expect("a raw page that v2 still uses");
        rec.offset + 100
    };
    flip_byte(&v1.path, at);
    for cold in [true, false] {
        if cold {
            drop_from_cache(&v1.path);
        } else {
            std::fs::read(&v1.path).unwrap();
        }
        let e = restore().expect_err("a damaged page restored");
        let msg = e.to_string();
        let name = v1.path.file_name().unwrap().to_str().unwrap();
        assert!(
            msg.contains(name) && msg.contains("blake3"),
            "cold {cold}: the error does not name {name} and the hash: {msg}"
        );
    }
}

/// Where one file's raw pages fill most of a megabyte of a region, a cold restore reads that
/// stretch with direct I/O straight into the region, stale copies of replaced pages and all,
/// and writes the newer files' pages over those in a second pass. The newest version of a
/// chain restores exactly; its change-detection hashes are those of the restored bytes (in
/// hash mode the next checkpoint stores nothing); a damaged stale copy, which the version
/// does not use, does not matter; and a damaged page that it uses is caught, naming its file.
#[test]
fn a_direct_stretch_is_read_into_the_region_and_its_holes_filled_after() {
    use ckpt_engine::Tracking;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("store");
    let ps = 4096;
    let mut config = Config::default();
    config.tracking = Tracking::Hash;
    // 8 MiB of noise: eight windows of 256 raw pages, stored back to back by the full version.
    let mut data = noise(21, 8 << 20);
    let mut ck = Checkpointer::open(&dir, "s", config.clone()).unwrap();
    let h = ck.alloc_region::<u8>(1, data.len()).unwrap();
    ck.region_mut(&h).unwrap().copy_from_slice(&data);
    let v1 = ck.checkpoint().unwrap();
    // v2 replaces every fifth page, v3 every eleventh and a run: holes in every window.
    for page in data.chunks_mut(ps).step_by(5) {
        page[1] ^= 0x11;
    }
    ck.region_mut(&h).unwrap().copy_from_slice(&data);
    let v2 = ck.checkpoint().unwrap();
    for (i, page) in data.chunks_mut(ps).enumerate() {
        if i % 11 == 0 || (300..310).contains(&i) {
            page[2] ^= 0x22;
        }
    }
    ck.region_mut(&h).unwrap().copy_from_slice(&data);
    let v3 = ck.checkpoint().unwrap();
    drop(ck);
    let files = [&v1.path, &v2.path, &v3.path];

    let restore = || {
        for p in files {
            drop_from_cache(p);
        }
        let mut ck = Checkpointer::open(&dir, "s", config.clone()).unwrap();
        let h = ck.alloc_region::<u8>(1, data.len()).unwrap();
        let stats = ck.restore(Some(v3.version))?;
        let same = ck.region(&h).unwrap() == data.as_slice();
        Ok::<_, ckpt_engine::Error>((stats, same, ck))
    };
    let (stats, same, mut ck) = restore().unwrap();
    assert!(same, "the restored region differs");
    if takes_direct_io(&dir) {
        // v1 holds 2048 - 410 - 187 + 38 - 9 + 2 = 1482 of the version's pages, all in
        // stretches (the pages it does not hold are holes in them).
        assert_eq!(
            stats.bytes_in_place,
            1482 * ps as u64,
            "the full version's pages were not read straight into the region: {stats:?}"
        );
    }
    let next = ck.checkpoint().unwrap();
    assert_eq!(
        next.pages_stored, 0,
        "the hashes restored are not those of the restored bytes"
    );
    drop(ck);

    let v1_file = ckpt_engine::read::VersionFile::open(&v1.path).unwrap();
    let offset = |page: usize| {
        let rec = v1_file.index.records[page];
        assert_eq!(rec.codec, ckpt_engine::format::Codec::Raw);
        rec.offset
    };
    let flip = |at: u64| flip_byte(&v1.path, at);
    // Page 5's copy in v1 is stale (v2 replaced it): damaged, it changes nothing.
    flip(offset(5) + 7);
    let (_, same, _) = restore().unwrap();
    assert!(same, "a damaged stale page changed the restore");
    // Page 1's is the one the version uses.
    flip(offset(1) + 7);
    let e = restore().map(|_| ()).expect_err("a damaged page restored");
    let msg = e.to_string();
    let name = v1.path.file_name().unwrap().to_str().unwrap();
    assert!(
        msg.contains(name) && msg.contains("blake3"),
        "the error does not name {name} and the hash: {msg}"
    );
}
