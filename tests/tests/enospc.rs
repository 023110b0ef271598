//! A full disk (issue 12): on a small tmpfs mounted by the test, a checkpoint, a compaction
//! and a restore that run out of space fail with a clear error naming the file, leave every
//! earlier version intact and no partial version visible, and succeed once space is freed.
//! Skipped, with a message, where the test cannot mount (not root, no tmpfs).

use std::path::{Path, PathBuf};

use ckpt_engine::compact::{self, CompactOptions};
use ckpt_engine::{catalog, Checkpointer, Config, Error, Store};

/// A tmpfs of `mib` MiB, unmounted when dropped.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().to_path_buf();
        let opts = format!("size={}k,mode=0700", mib * 1024);
        match nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        ) {
            Ok(()) => Some(Tmpfs { _dir: dir, path }),
            Err(e) => {
                eprintln!("SKIPPED: cannot mount a tmpfs for the ENOSPC tests ({e}); run as root");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn is_enospc(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
        _ => e.to_string().contains("No space left"),
    }
}

/// Fills `dir` with incompressible state until a checkpoint fails.
fn fill_with_versions(
    ck: &mut Checkpointer,
    h: &ckpt_engine::RegionHandle<u64>,
) -> (Vec<u64>, Error) {
    let mut written = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..1000 {
        for x in ck.region_mut(h).unwrap().iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *x = seed;
        }
        match ck.checkpoint() {
            Ok(s) => written.push(s.version),
            Err(e) => return (written, e),
        }
    }
    panic!("the disk never filled");
}

fn versions_verify(dir: &Path, name: &str, expect: &[u64]) {
    let store = Store::new(dir, name).unwrap();
    assert_eq!(store.versions().unwrap(), expect);
    for &v in expect {
        catalog::verify_version(&store.path_of(v))
            .unwrap_or_else(|e| panic!("version {v} no longer verifies: {e}"));
    }
    assert!(
        store.temp_files().unwrap().is_empty(),
        "a partial version was left: {:?}",
        store.temp_files().unwrap()
    );
}

#[test]
fn checkpoint_compaction_and_restore_on_a_full_disk() {
    let Some(fs) = Tmpfs::mount(8) else { return };
    let dir = fs.path.join("store");
    // 1 MiB of random doubles per version, stored raw: the 8 MiB disk holds a few versions.
    let config = Config::default()
        .with_compression_level(0)
        .with_max_chain_depth(100);
    let mut ck = Checkpointer::open(&dir, "sim", config).unwrap();
    let h = ck.alloc_region::<u64>(1, 128 * 1024).unwrap();
    // Space to give back later.
    let ballast = fs.path.join("ballast");
    std::fs::write(&ballast, vec![1u8; 2560 * 1024]).unwrap();

    let (written, e) = fill_with_versions(&mut ck, &h);
    assert!(written.len() >= 2, "too few versions fit: {written:?}");
    assert!(is_enospc(&e), "not a clear ENOSPC: {e}");
    eprintln!("checkpoint: {} versions fit, then: {e}", written.len());
    let msg = e.to_string();
    assert!(
        msg.contains(dir.to_str().unwrap()),
        "the error names no file: {msg}"
    );
    versions_verify(&dir, "sim", &written);

    // Space freed: the next checkpoint succeeds and restores.
    std::fs::remove_file(&ballast).unwrap();
    let s = ck.checkpoint().expect("checkpoint after freeing space");
    let mut all = written.clone();
    all.push(s.version);
    versions_verify(&dir, "sim", &all);
    // A delta that rewrites half the pages: it references the version before for the rest,
    // so keeping only it means copying those pages (a rewrite that needs space).
    let half = ck.region(&h).unwrap().len() / 2;
    ck.region_mut(&h).unwrap()[..half]
        .iter_mut()
        .for_each(|x| *x = !*x);
    let s = ck.checkpoint().expect("a half delta");
    all.push(s.version);
    let newest: Vec<u64> = ck.region(&h).unwrap().to_vec();
    drop(ck);

    // Compaction that needs space to rewrite (keep 1 of a full-then-deltas chain) on a full
    // disk: it fails cleanly, every version still there and verifying.
    let filler = fs.path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![7u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let store = Store::new(&dir, "sim").unwrap();
    let opts = CompactOptions {
        keep: 1,
        ..CompactOptions::default()
    };
    match compact::compact(&store, &opts, &mut |_, _| {}) {
        Err(e) => {
            assert!(is_enospc(&e), "not a clear ENOSPC: {e}");
            eprintln!("compaction: {e}");
            versions_verify(&dir, "sim", &all);
        }
        Ok(r) => panic!("a compaction that must copy pages succeeded on a full disk: {r:?}"),
    }
    std::fs::remove_file(&filler).unwrap();
    compact::compact(&store, &opts, &mut |_, _| {}).expect("compaction after freeing space");
    let last = *all.last().unwrap();
    versions_verify(&dir, "sim", &[last]);

    // A restore (export) onto a full disk: an error, not SIGBUS, and the earlier good output
    // stays as it was.
    let out = fs.path.join("out");
    catalog::export(&store, None, &out).expect("export with room");
    let good = std::fs::read(out.join("region-1.bin")).unwrap();
    assert_eq!(good.len(), newest.len() * 8);
    let mut f = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let e = catalog::export(&store, None, &out).unwrap_err();
    assert!(is_enospc(&e), "not a clear ENOSPC: {e}");
    eprintln!("restore: {e}");
    assert_eq!(std::fs::read(out.join("region-1.bin")).unwrap(), good);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}
