//! Block-aligned raw records (format version 2): a raw record of whole blocks starts on a
//! 4096-byte boundary, after zero padding, so that the compactor can share its blocks with
//! the file it copies it into (a reflink, on XFS and btrfs) instead of writing them.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ckpt_engine::catalog::verify_version;
use ckpt_engine::compact::{compact, CompactOptions};
use ckpt_engine::format::{Codec, FORMAT_VERSION, RECORD_ALIGN};
use ckpt_engine::read::VersionFile;
use ckpt_engine::vfs::{copy_through_memory, RealFs, Vfs, VfsFile};
use ckpt_engine::{Checkpointer, Config, Store, Tracking};

const PAGE: usize = 4096;
/// Pages of the first region's compressible head: one batch of a full version (8 MiB).
const HEAD: usize = 2048;
/// Pages of noise after it: several read requests (1 MiB) of them.
const PAGES: usize = 1200;

fn noise(rng: &mut u64, out: &mut [u8]) {
    for b in out {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *b = *rng as u8;
    }
}

/// A checkpointer over two regions: `HEAD` pages of zeros but for the last, noise that ends
/// in 200 zeros (one batch worth compressing: all stored compressed, the last page to a
/// little less than a page, so the raw pages after it need padding), then `PAGES` pages of
/// noise (a batch stored raw); and a region whose last page is short.
fn setup(dir: &Path) -> Checkpointer {
    let mut config = Config::default().with_compression_level(1);
    config.tracking = Tracking::Hash;
    let mut ck = Checkpointer::open(dir, "a", config).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let h = ck.alloc_region::<u8>(1, (HEAD + PAGES) * PAGE).unwrap();
    let r = ck.region_mut(&h).unwrap();
    noise(&mut rng, &mut r[(HEAD - 1) * PAGE..]);
    r[HEAD * PAGE - 200..HEAD * PAGE].fill(0);
    let h = ck.alloc_region::<u8>(2, 3 * PAGE + 100).unwrap();
    noise(&mut rng, ck.region_mut(&h).unwrap());
    ck
}

/// The regions' bytes.
fn state(ck: &Checkpointer) -> Vec<Vec<u8>> {
    [1u64, 2]
        .iter()
        .map(|&id| {
            let h = ck.handle::<u8>(id).unwrap();
            ck.region(&h).unwrap().to_vec()
        })
        .collect()
}

/// Restores version `v` of chain `a` into fresh regions and returns their bytes.
fn restored(dir: &Path, v: u64) -> Vec<Vec<u8>> {
    let mut ck = Checkpointer::open(dir, "a", Config::default()).unwrap();
    ck.alloc_region::<u8>(1, (HEAD + PAGES) * PAGE).unwrap();
    ck.alloc_region::<u8>(2, 3 * PAGE + 100).unwrap();
    ck.restore(Some(v)).unwrap();
    state(&ck)
}

/// Raw records of whole pages start on block boundaries; the padding before them is zeros,
/// which `verify` checks; and a version whose read requests hold padding restores (a run of
/// 256 records once spanned more than one 1 MiB request and was refused).
#[test]
fn raw_pages_start_on_block_boundaries_and_verify_checks_the_padding() {
    let dir = tempfile::tempdir().unwrap();
    let mut ck = setup(dir.path());
    ck.checkpoint().unwrap();
    let want = state(&ck);
    drop(ck);
    let path = dir.path().join("a.ckpt.1");
    let f = VersionFile::open(&path).unwrap();
    assert_eq!(f.header.format_version, FORMAT_VERSION);
    let recs = &f.index.records;
    let last = HEAD - 1;
    assert!(
        recs[..HEAD].iter().all(|r| r.codec == Codec::Zstd),
        "the head should compress"
    );
    // Padding follows the head's last record, which crosses a block boundary: 256 records
    // from it once spanned more than one 1 MiB request.
    let gap = recs[last].offset + recs[last].stored_len as u64;
    assert!(gap < recs[HEAD].offset, "no padding after the head");
    assert_ne!(
        recs[last].offset / RECORD_ALIGN,
        (gap - 1) / RECORD_ALIGN,
        "the head's last record should cross a block boundary"
    );
    let raw: Vec<_> = recs
        .iter()
        .filter(|r| r.codec == Codec::Raw && r.stored_len as usize == PAGE)
        .collect();
    assert!(raw.len() >= PAGES, "{} raw pages", raw.len());
    for r in &raw {
        assert_eq!(r.offset % RECORD_ALIGN, 0, "raw record at {}", r.offset);
    }
    // The padding costs at most one block per record that needed it.
    let padded = recs
        .windows(2)
        .filter(|w| w[0].offset + w[0].stored_len as u64 != w[1].offset)
        .count() as u64;
    let stored: u64 = recs.iter().map(|r| r.stored_len as u64).sum();
    assert!(f.footer.data_len < stored + (padded + 1) * RECORD_ALIGN);
    verify_version(&path).unwrap();
    assert_eq!(restored(dir.path(), 1), want);

    // A non-zero byte in the padding after the compressed head is refused by verify.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[gap as usize] = 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let e = verify_version(&path).expect_err("non-zero padding passed verify");
    let msg = e.to_string();
    assert!(
        msg.contains("a.ckpt.1") && msg.contains(&format!("non-zero byte at offset {gap}")),
        "{msg}"
    );
}

/// A backend whose files "share" blocks by copying them, after checking that every range
/// asked for is block-aligned in both files, and count the bytes; or, with `refuse`,
/// refuse as ext4 does, and count the requests.
#[derive(Clone, Default)]
struct Sharing {
    refuse: bool,
    asked: Arc<AtomicU64>,
    shared: Arc<AtomicU64>,
    misaligned: Arc<Mutex<Vec<String>>>,
}

struct SharingFile {
    inner: Box<dyn VfsFile>,
    len: u64,
    fs: Sharing,
}

impl Write for SharingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl VfsFile for SharingFile {
    fn sync_data(&mut self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn write_direct(&mut self, buf: &[u8]) -> io::Result<bool> {
        let done = self.inner.write_direct(buf)?;
        if done {
            self.len += buf.len() as u64;
        }
        Ok(done)
    }
    fn clone_from(&mut self, src: &File, offset: u64, len: u64) -> io::Result<bool> {
        self.fs.asked.fetch_add(1, Ordering::Relaxed);
        if self.fs.refuse {
            return Ok(false);
        }
        if offset % RECORD_ALIGN != 0 || len % RECORD_ALIGN != 0 || self.len % RECORD_ALIGN != 0 {
            self.fs
                .misaligned
                .lock()
                .unwrap()
                .push(format!("{len} bytes from {offset} to {}", self.len));
        }
        copy_through_memory(&mut self.inner, src, offset, len)?;
        self.len += len;
        self.fs.shared.fetch_add(len, Ordering::Relaxed);
        Ok(true)
    }
}

impl Vfs for Sharing {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        Ok(Box::new(SharingFile {
            inner: RealFs.create_new(path)?,
            len: 0,
            fs: self.clone(),
        }))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        RealFs.open_append(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename_noreplace(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.sync_dir(path)
    }
}

/// A chain of three deltas over a full version, each changing a few scattered pages.
fn chain(dir: &Path) -> Vec<Vec<u8>> {
    let mut ck = setup(dir);
    ck.checkpoint().unwrap();
    let h = ck.handle::<u8>(1).unwrap();
    for v in 0..3usize {
        let r = ck.region_mut(&h).unwrap();
        for p in [HEAD + 7 + v, HEAD + 600 + 3 * v, HEAD + 1150 + v] {
            r[p * PAGE] ^= 0xff;
        }
        ck.checkpoint().unwrap();
    }
    state(&ck)
}

/// Compacts chain `a` in `dir` to its newest version through backend `fs`.
fn compact_with(dir: &Path, fs: &Sharing) -> ckpt_engine::compact::Report {
    let _vfs = ckpt_engine::vfs::install(Arc::new(fs.clone()));
    let store = Store::new(dir, "a").unwrap();
    let opts = CompactOptions {
        keep: 1,
        ..CompactOptions::default()
    };
    compact(&store, &opts, &mut |_, _| {}).unwrap()
}

/// Where the file system shares blocks, the compactor shares the runs of raw pages it
/// copies from older files, whole read requests of them (only block-aligned ranges are asked
/// for), and the revision restores and verifies. Where it refuses, it is asked once, and the
/// pages are written.
#[test]
fn compaction_shares_the_blocks_of_raw_pages_where_the_file_system_can() {
    let dir = tempfile::tempdir().unwrap();
    let want = chain(dir.path());
    let fs = Sharing::default();
    let report = compact_with(dir.path(), &fs);
    assert_eq!(report.removed, vec![1, 2, 3]);
    assert!(
        fs.misaligned.lock().unwrap().is_empty(),
        "{:?}",
        fs.misaligned
    );
    // The runs of unchanged pages between the changed ones hold whole 1 MiB requests, which
    // are shared; the rest (the compressed head, the short region, the pieces of runs
    // cut by a changed page) is written.
    let n = fs.shared.load(Ordering::Relaxed);
    assert_eq!(report.bytes_shared, n);
    assert!(
        n >= (2 << 20) && n <= report.bytes_copied,
        "{n} bytes shared of {} copied",
        report.bytes_copied
    );
    let path = dir.path().join("a.ckpt.4");
    verify_version(&path).unwrap();
    assert_eq!(restored(dir.path(), 4), want);

    let dir = tempfile::tempdir().unwrap();
    let want = chain(dir.path());
    let fs = Sharing {
        refuse: true,
        ..Sharing::default()
    };
    let report = compact_with(dir.path(), &fs);
    assert_eq!(report.bytes_shared, 0);
    assert_eq!(
        fs.asked.load(Ordering::Relaxed),
        1,
        "asked again after a refusal"
    );
    verify_version(&dir.path().join("a.ckpt.4")).unwrap();
    assert_eq!(restored(dir.path(), 4), want);
}
