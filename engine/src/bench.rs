//! The `ckpt bench` workload: fill engine-allocated regions with a smooth f64 field plus
//! noise, write a full version, then versions with a random fraction of pages rewritten,
//! restore the newest and the first version and compare them with what was written, and time
//! a raw write plus fsync of the same bytes for reference.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::TrackingKind;
use crate::{Checkpointer, Config, RestoreStats, Snapshot, Tracking};

/// Chain name used by the benchmark.
pub const BENCH_CHAIN: &str = "bench";

/// Parameters of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchParams {
    /// Store directory (must not already hold the `bench` chain).
    pub dir: PathBuf,
    /// State size in MiB.
    pub state_mib: usize,
    /// Fraction of pages rewritten between versions, 0.0..=1.0.
    pub dirty: f64,
    /// Number of versions, at least 2.
    pub versions: u64,
    /// Tracking mode.
    pub tracking: Tracking,
    /// Page size in bytes.
    pub page_size: u32,
    /// zstd level (0: none).
    pub compression_level: i32,
    /// Minimum saving for compression to be used (see [`Config::min_compression_saving`]).
    pub min_compression_saving: f64,
    /// Maximum chain depth.
    pub max_chain_depth: u32,
    /// Seed of the random page choice and noise.
    pub seed: u64,
    /// After the restores, compact the chain keeping this many versions, and time it.
    pub compact_keep: Option<usize>,
    /// Take every version with `checkpoint_async` and this snapshot mechanism, rewriting the
    /// next version's pages in a loop while each flush runs ([`AsyncFigures`]).
    pub asynchronous: Option<Snapshot>,
}

impl Default for BenchParams {
    fn default() -> Self {
        BenchParams {
            dir: PathBuf::from("bench-store"),
            state_mib: 256,
            dirty: 0.01,
            versions: 6,
            tracking: Tracking::Auto,
            page_size: 4096,
            compression_level: 1,
            min_compression_saving: 0.125,
            max_chain_depth: 16,
            seed: 1,
            compact_keep: None,
            asynchronous: None,
        }
    }
}

/// Measured results. Times are seconds, sizes bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Registered state.
    pub state_bytes: u64,
    /// Versions written.
    pub versions: u64,
    /// Fraction of pages rewritten per version.
    pub dirty_fraction: f64,
    /// Pages rewritten per version.
    pub dirty_pages: u64,
    /// Tracking mode actually used.
    pub tracking: String,
    /// Page size.
    pub page_size: u32,
    /// Time to write version 1 (full).
    pub full_secs: f64,
    /// Size of version 1.
    pub full_bytes: u64,
    /// Of `full_secs`, the time spent hashing.
    pub full_scan_secs: f64,
    /// Median time of versions 2..V.
    pub delta_secs: f64,
    /// Median file size of versions 2..V.
    pub delta_bytes: u64,
    /// Median time spent finding dirty pages in versions 2..V.
    pub delta_scan_secs: f64,
    /// The change detection alone, as hash mode does it, over the same state: every page
    /// hashed with the fast hash (in parallel, as the engine's scan) and compared with a
    /// table of remembered hashes; no copy, no integrity hash, no write (median of three).
    pub detect_secs: f64,
    /// Raw write plus fsync of the same state: mean of one run before and one after version 1.
    pub baseline_write_secs: f64,
    /// A tuned streaming write of the same state: 8 MiB writes, each pushed to the disk with
    /// `sync_file_range` write-behind as the next is written, and a final fsync (best of two,
    /// next to the baselines).
    pub tuned_write_secs: f64,
    /// The floor under a delta: `delta_bytes` written to a new file, fsynced, renamed into
    /// place and the directory fsynced (median of three, in this run).
    pub floor_secs: f64,
    /// Restore of the newest version (best of three, alternating with the first). A restore
    /// reads what is not in the page cache with direct I/O, which leaves it uncached: these
    /// are warm only for files the checkpoints left in the cache (deltas written through it).
    pub restore_newest_secs: f64,
    /// Restore of the first version (best of three, alternating with the newest).
    pub restore_first_secs: f64,
    /// A cold sequential read of exactly the bytes the newest version's restore reads (file by
    /// file, range by range, 8 MiB requests), after dropping the store's files from the page
    /// cache (best of three, alternating with the cold restore).
    pub cold_read_secs: f64,
    /// The restore of the newest version from the same cold cache (best of three, alternating
    /// with the cold read).
    pub restore_newest_cold_secs: f64,
    /// Of the bytes that cold restore restored, those read with direct I/O straight into the
    /// regions (no buffer, no copy).
    pub restore_newest_cold_bytes_in_place: u64,
    /// Whether dropping the cache worked (`posix_fadvise(DONTNEED)` on every store file);
    /// when false, the two cold figures above are warm.
    pub cold_cache: bool,
    /// KiB of free memory the guest kernel reported to its host during the run (free page
    /// reporting of a virtio balloon, as on Firecracker VMs: the host takes those pages
    /// back), from `/sys/module/page_reporting/parameters/reported_kib`; `None` where the
    /// kernel has no such counter. Where it is large, memory the run frees and allocates
    /// again (the page cache a delta is written into, fresh regions a restore fills)
    /// faults in from the host, and the times above swing from run to run: on a 2-core
    /// Firecracker VM the same 10.7 MB delta took 9-12 ms in one run and 34-48 ms in the next,
    /// and 10-15 ms in every round once reporting was held back.
    pub free_pages_reported_kib: Option<u64>,
    /// Depth of the newest version.
    pub newest_depth: u32,
    /// Files the newest version's pages were read from.
    pub newest_files_read: usize,
    /// The engine's resident memory beside the state once the versions are written: the
    /// growth of the process's anonymous resident memory over the versions (the fast-hash
    /// table, the parent picture, the tracker's state, worker threads' stacks and buffers,
    /// and the memory glibc's allocator keeps after the write path's transient buffers are
    /// freed), measured from `Anonymous` in `/proc/self/smaps_rollup` after `malloc_trim`
    /// (which gives back the free memory of the main thread's heap, but not the top of a
    /// worker thread's arena). Not counted: the program's code, paged in by the first
    /// checkpoint (shared and file-backed, not memory beside the state), and the staging
    /// buffers kept for the next version, which are marked free for the kernel (`LazyFree`:
    /// it takes them back, without writing them anywhere, when memory runs short).
    pub engine_rss_bytes: u64,
    /// Of `engine_rss_bytes`, what the engine itself holds between checkpoints, counted by
    /// its data structures (`Checkpointer::metadata_bytes`): the fast-hash table (16 bytes a
    /// page), the parent's file table and packed extents, the tracker's pending pages. The
    /// rest is the allocator's and the threads'.
    pub engine_bookkeeping_bytes: u64,
    /// Both restores matched the expected state (and, with compaction, the newest version
    /// restored after it).
    pub verified: bool,
    /// With `compact_keep`: seconds the compaction took. It runs after the cold restores,
    /// which leave the chain's files out of the page cache: it reads them from the disk.
    pub compact_secs: Option<f64>,
    /// With `compact_keep`: bytes the compaction wrote.
    pub compact_bytes_written: Option<u64>,
    /// With `compact_keep`: the floor under the compaction, measured after it from a cold
    /// cache: a plain pipelined copy of the bytes the compacted newest version's restore
    /// reads (as many as the compaction read and wrote, but from one file) into a new file,
    /// 8 MiB direct reads beside 8 MiB direct writes, and an fsync. On
    /// a disk whose reads and writes share one bandwidth, a compaction that copies cannot
    /// beat it by much; only block sharing (reflinks), which the format's unaligned records
    /// rule out, could.
    pub copy_floor_secs: Option<f64>,
    /// With `compact_keep`: of those, stored page bytes copied as they were (never
    /// recompressed).
    pub compact_bytes_copied: Option<u64>,
    /// With `compact_keep`: of those, bytes whose blocks the revision shares with the file
    /// they came from (XFS, btrfs), not written.
    pub compact_bytes_shared: Option<u64>,
    /// The same deltas taken side by side in hash mode and in userfaultfd mode, where the
    /// kernel has userfaultfd write-protection (not in an asynchronous run): two more chains,
    /// each over its own copy of the final state, a full version each, then `versions - 1`
    /// rounds that rewrite the same pages in both and checkpoint both, in alternating order.
    /// Median seconds of the deltas of each.
    #[serde(flatten)]
    pub tracking_compared: Option<TrackingCompared>,
    /// Ratios of the figures above, measured within this run.
    pub ratios: BenchRatios,
    /// With `asynchronous`: what the application was stopped for, against blocking versions.
    #[serde(flatten)]
    pub asynchronous: Option<AsyncFigures>,
}

/// The figures of an asynchronous run (`ckpt bench --async`). In such a run `full_secs` and
/// `delta_secs` are the times from the call until the version is durable, while the bench
/// rewrites the next version's pages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AsyncFigures {
    /// The mechanism asked for.
    pub snapshot: String,
    /// How many versions each mechanism took (`blocked`: no mechanism applied).
    pub snapshots_used: std::collections::BTreeMap<String, u64>,
    /// Median wall time the application was stopped in `checkpoint_async`, over the deltas.
    pub blocked_secs: f64,
    /// The same for the full version.
    pub full_blocked_secs: f64,
    /// A blocking full version of the same state, written in this run (a second chain).
    pub blocking_full_secs: f64,
    /// A blocking delta at the same dirty fraction, written in this run after it.
    pub blocking_delta_secs: f64,
    /// Peak memory above the state while flushes ran (sampled every 20 ms and at the end of
    /// each flush): this process's growth in resident memory plus the private memory of its
    /// flushing child (pages copied on write, buffers).
    pub peak_extra_rss_bytes: u64,
    /// The bench's page rewrites per second while no flush runs (same pages, already written
    /// once, so no fault is taken).
    pub compute_pages_per_sec_idle: f64,
    /// The same while a flush runs, including the first write of each page after the call
    /// (a write-protect fault in userfaultfd mode, a copy-on-write fault after a fork).
    pub compute_pages_per_sec_flushing: f64,
    /// `compute_pages_per_sec_idle / compute_pages_per_sec_flushing`.
    pub compute_slowdown: f64,
    /// `blocked_secs / blocking_delta_secs`.
    pub blocked_over_blocking_delta: f64,
    /// `full_blocked_secs / blocking_full_secs`.
    pub full_blocked_over_blocking_full: f64,
}

/// Hash-mode deltas against userfaultfd-mode deltas of the same pages ([`BenchReport`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrackingCompared {
    /// Median delta time in hash mode (every page's fast hash compared).
    pub compare_hash_delta_secs: f64,
    /// Median delta time in userfaultfd mode (only the reported pages hashed).
    pub compare_uffd_delta_secs: f64,
    /// Rounds taken (deltas per mode).
    pub compare_rounds: u64,
}

/// Ratios of a [`BenchReport`]'s figures (both terms from the same run).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRatios {
    /// Median delta checkpoint time over the commit floor of its bytes (`floor_secs`).
    pub delta_over_floor: f64,
    /// In hash mode: median delta checkpoint time over the commit floor of its bytes plus
    /// the change detection alone (`floor_secs + detect_secs`): what finding and storing the
    /// changed pages costs beyond its two unavoidable parts.
    pub delta_over_floor_plus_detect: Option<f64>,
    /// Compaction time over the full checkpoint's.
    pub compact_over_full_secs: Option<f64>,
    /// Bytes the compaction wrote over the full version's size.
    pub compact_bytes_over_full: Option<f64>,
    /// Compaction time over the plain copy of the same bytes (`copy_floor_secs`).
    pub compact_over_copy_floor: Option<f64>,
    /// Median delta checkpoint time over the full one's.
    pub delta_over_full: f64,
    /// Median delta file size over the state size.
    pub delta_bytes_over_state: f64,
    /// Full checkpoint time over a raw write + fsync of the same bytes.
    pub full_over_baseline: f64,
    /// Full checkpoint time over the tuned streaming write of the same bytes.
    pub full_over_tuned: f64,
    /// Cold restore of the newest version over the cold read of the bytes it reads.
    pub restore_over_cold_read: f64,
    /// Restore time of the newest version over the first's.
    pub restore_newest_over_first: f64,
    /// `engine_rss_bytes` over the state size.
    pub engine_memory_over_state: f64,
    /// `compare_hash_delta_secs / compare_uffd_delta_secs`: what hash mode costs against
    /// userfaultfd mode for the same pages, in the same minutes.
    pub hash_over_uffd: Option<f64>,
}

/// SplitMix64: small, fast, good enough to pick pages and make noise.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Fills `out` with a smooth field plus noise; `base` is the global index of `out[0]`.
pub fn fill_field(out: &mut [f64], base: u64, seed: u64) {
    out.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
        let start = base + (c * 4096) as u64;
        let mut rng = Rng::new(seed ^ start.wrapping_mul(0x2545_F491_4F6C_DD1D));
        for (k, x) in chunk.iter_mut().enumerate() {
            let i = (start + k as u64) as f64;
            *x = (i * 1.0e-4).sin() * 100.0 + (i * 3.7e-6).cos() * 50.0 + rng.next_f64() * 1.0e-3;
        }
    });
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Picks `k` distinct values in 0..n.
fn pick(rng: &mut Rng, n: u64, k: u64) -> Vec<u64> {
    let mut all: Vec<u64> = (0..n).collect();
    let k = k.min(n) as usize;
    for i in 0..k {
        let j = i + rng.below((n as usize - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(k);
    all.sort_unstable();
    all
}

/// Times writing `state` to a new file in `dir` plus fsync, then removes the file.
fn baseline(dir: &std::path::Path, state: &[Vec<u8>]) -> Result<f64> {
    let raw_path = dir.join(".bench-baseline.tmp");
    let t = Instant::now();
    {
        let mut f = crate::store::create_new_file(&raw_path)?;
        for r in state {
            f.write_all(r)
                .map_err(|e| Error::io(&raw_path, "write", e))?;
        }
        f.sync_all().map_err(|e| Error::io(&raw_path, "fsync", e))?;
    }
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&raw_path).map_err(|e| Error::io(&raw_path, "remove", e))?;
    Ok(secs)
}

/// Times a tuned streaming write of `state` to a new file in `dir`: 8 MiB writes, the one
/// before each pushed to the disk with `sync_file_range` (write-behind), and a final fsync;
/// then removes the file.
fn tuned_write(dir: &std::path::Path, state: &[Vec<u8>]) -> Result<f64> {
    const CHUNK: usize = 8 << 20;
    let path = dir.join(".bench-tuned.tmp");
    let t = Instant::now();
    {
        let mut f = crate::store::create_new_file(&path)?;
        let (mut pos, mut pushed) = (0u64, 0u64);
        for r in state {
            for c in r.chunks(CHUNK) {
                f.write_all(c).map_err(|e| Error::io(&path, "write", e))?;
                pos += c.len() as u64;
                // Best effort: push what is written, one chunk behind.
                let _ = crate::sys::start_writeback(&f, pushed, pos - pushed);
                pushed = pos;
            }
        }
        f.sync_all().map_err(|e| Error::io(&path, "fsync", e))?;
    }
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&path).map_err(|e| Error::io(&path, "remove", e))?;
    Ok(secs)
}

/// Drops every file of the store directory from the page cache; whether it worked for all.
fn drop_store_cache(dir: &std::path::Path) -> Result<bool> {
    let mut ok = true;
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, "read directory", e))?;
        if !e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        let p = e.path();
        let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, "open", e))?;
        ok &= crate::sys::drop_cached(&f).is_ok();
    }
    Ok(ok)
}

/// Times a sequential read of `plan` (per file, its byte ranges) in 8 MiB requests.
fn read_plan(files: &[PathBuf], plan: &[Vec<(u64, u64)>]) -> Result<f64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 8 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let t = Instant::now();
    for (path, ranges) in files.iter().zip(plan) {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
        for &(a, b) in ranges {
            let mut at = a;
            while at < b {
                let n = (b - at).min(CHUNK) as usize;
                f.read_exact_at(&mut buf[..n], at)
                    .map_err(|e| Error::io(path, "read", e))?;
                at += n as u64;
            }
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The floor under a compaction: a plain pipelined copy of `plan` (per file, its byte
/// ranges, each widened to 4096-byte boundaries) into one new file in `dir`, with direct I/O
/// where the file system takes it: one thread reads 8 MiB requests, another writes them,
/// then fsync; then the file is removed. Its buffers are allocated and touched before the
/// clock starts. What the disk allows for reading those bytes and writing them again.
fn copy_floor(dir: &std::path::Path, files: &[PathBuf], plan: &[Vec<(u64, u64)>]) -> Result<f64> {
    use crate::iobuf::IoBuf;
    use crate::vfs::DIRECT_ALIGN;
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 8 << 20;
    const BUFFERS: usize = 4;
    let path = dir.join(".bench-copy.tmp");
    let (back_tx, back_rx) = std::sync::mpsc::channel::<IoBuf>();
    for _ in 0..BUFFERS {
        let mut b = IoBuf::new(CHUNK).map_err(|e| Error::io(&path, "allocate", e))?;
        b.bytes_mut().fill(1);
        let _ = back_tx.send(b);
    }
    let dst = crate::store::create_new_file(&path)?;
    // Best effort: without direct I/O the copy goes through the page cache.
    let _ = crate::sys::set_direct(&dst, true);
    let t = Instant::now();
    let copied = std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(IoBuf, usize)>(BUFFERS);
        let path = &path;
        let writer = s.spawn(move || -> Result<()> {
            let mut pos = 0u64;
            for (buf, n) in rx {
                let bytes = &buf.bytes()[..n.next_multiple_of(DIRECT_ALIGN)];
                if let Err(e) = dst.write_all_at(bytes, pos) {
                    // A file system that refuses direct writes: through the cache.
                    if e.raw_os_error() != Some(libc::EINVAL)
                        || crate::sys::set_direct(&dst, false).is_err()
                    {
                        return Err(Error::io(path, "write", e));
                    }
                    dst.write_all_at(bytes, pos)
                        .map_err(|e| Error::io(path, "write", e))?;
                }
                pos += bytes.len() as u64;
                let _ = back_tx.send(buf);
            }
            dst.sync_all().map_err(|e| Error::io(path, "fsync", e))
        });
        let read = (|| -> Result<()> {
            for (src, ranges) in files.iter().zip(plan) {
                let f = std::fs::File::open(src).map_err(|e| Error::io(src, "open", e))?;
                let _ = crate::sys::set_direct(&f, true);
                let size = f.metadata().map_err(|e| Error::io(src, "stat", e))?.len();
                for &(a, b) in ranges {
                    let mut at = a / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
                    while at < b {
                        let n = (b - at).min(CHUNK as u64) as usize;
                        let Ok(mut buf) = back_rx.recv() else {
                            return Ok(()); // the writer stopped: its error says why
                        };
                        let want = n.next_multiple_of(DIRECT_ALIGN);
                        let got = match f.read_at(&mut buf.bytes_mut()[..want], at) {
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                                crate::sys::set_direct(&f, false)
                                    .and_then(|()| f.read_at(&mut buf.bytes_mut()[..want], at))
                            }
                            r => r,
                        }
                        .map_err(|e| Error::io(src, "read", e))?;
                        if got < n.min((size - at) as usize) {
                            return Err(Error::io(
                                src,
                                "read",
                                std::io::ErrorKind::UnexpectedEof.into(),
                            ));
                        }
                        if tx.send((buf, n)).is_err() {
                            return Ok(());
                        }
                        at += n as u64;
                    }
                }
            }
            Ok(())
        })();
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| Error::io(path, "write", std::io::Error::other("writer panicked")))?;
        written.and(read)
    });
    let secs = t.elapsed().as_secs_f64();
    let removed = std::fs::remove_file(&path).map_err(|e| Error::io(&path, "remove", e));
    copied?;
    removed?;
    Ok(secs)
}

/// The floor under a delta checkpoint: write `bytes` (taken from the state) to a new file,
/// fsync it, rename it into place without replacing anything and fsync the directory, as a
/// version's commit does. Median of three.
fn commit_floor(dir: &std::path::Path, state: &[Vec<u8>], bytes: u64) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..3 {
        let tmp = dir.join(format!(".bench-floor.{i}.tmp"));
        let dst = dir.join(format!(".bench-floor.{i}"));
        let t = Instant::now();
        {
            let mut f = crate::store::create_new_file(&tmp)?;
            let mut left = bytes as usize;
            for r in state.iter().cycle() {
                if left == 0 || r.is_empty() {
                    break;
                }
                let n = left.min(r.len());
                f.write_all(&r[..n])
                    .map_err(|e| Error::io(&tmp, "write", e))?;
                left -= n;
            }
            f.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
        }
        crate::store::commit_rename(&tmp, &dst)?;
        times.push(t.elapsed().as_secs_f64());
        std::fs::remove_file(&dst).map_err(|e| Error::io(&dst, "remove", e))?;
    }
    Ok(median(&mut times))
}

/// The change detection alone over `state`: each page's fast hash, computed in parallel in
/// tasks of the engine's size by the engine's own loop, compared with a remembered table.
/// Median of three.
fn detect_only(state: &[Vec<u8>], page_size: usize) -> f64 {
    let per_task = crate::hash::PAGES_PER_TASK;
    let tables: Vec<Vec<crate::hash::Fast>> = state
        .iter()
        .map(|r| vec![0; r.len().div_ceil(page_size)])
        .collect();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let changed: usize = state
            .iter()
            .zip(&tables)
            .map(|(r, table)| {
                r.par_chunks(per_task * page_size)
                    .zip(table.par_chunks(per_task))
                    .map(|(pages, known)| crate::hash::changed_in(pages, page_size, known).count())
                    .sum::<usize>()
            })
            .sum();
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(changed);
    }
    median(&mut times)
}

/// Runs the benchmark. `progress(done, total)` is called after each version.
pub fn run(p: &BenchParams, progress: &mut dyn FnMut(u64, u64)) -> Result<BenchReport> {
    if p.versions < 2 {
        return Err(Error::Config("bench needs at least 2 versions".into()));
    }
    if !(0.0..=1.0).contains(&p.dirty) {
        return Err(Error::Config(format!(
            "dirty fraction {} is not in 0..=1",
            p.dirty
        )));
    }
    if p.state_mib == 0 {
        return Err(Error::Config("state size must be at least 1 MiB".into()));
    }
    let reported_before = free_pages_reported_kib();
    // Before any arithmetic with them: a page size of 0 would divide by zero, and a state
    // size that overflows would silently bench a wrapped-around size.
    crate::format::check_page_size(p.page_size).map_err(Error::Config)?;
    if p.state_mib
        .checked_mul(1 << 20)
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Error::Config(format!(
            "state size {} MiB is larger than this machine can address",
            p.state_mib
        )));
    }
    crate::store::create_dir_durable(&p.dir)?;
    let store = crate::Store::new(&p.dir, BENCH_CHAIN)?;
    if store.latest()?.is_some() {
        return Err(Error::Config(format!(
            "{} already holds a '{BENCH_CHAIN}' chain; give bench an empty directory",
            p.dir.display()
        )));
    }
    let config = Config {
        page_size: p.page_size,
        compression_level: p.compression_level,
        min_compression_saving: p.min_compression_saving,
        max_chain_depth: p.max_chain_depth,
        tracking: p.tracking,
        audit_every: 0,
        keep: None,
        auto_compact: false,
        naming: crate::store::Naming::Ckpt,
        snapshot: p.asynchronous.unwrap_or_default(),
        ..Config::default()
    };
    let state_bytes = (p.state_mib as u64) << 20;
    let nregions: u64 = if p.state_mib >= 4 { 4 } else { 1 };
    let region_elems = (state_bytes / nregions / 8) as usize;
    let ps = p.page_size as u64;
    let pages_per_region = (region_elems as u64 * 8).div_ceil(ps);
    let total_pages = pages_per_region * nregions;
    let dirty_pages = (p.dirty * total_pages as f64).round() as u64;

    let mut ck = Checkpointer::open(&p.dir, BENCH_CHAIN, config.clone())?;
    let mut handles = Vec::new();
    for r in 0..nregions {
        let h = ck.alloc_region::<f64>(r + 1, region_elems)?;
        fill_field(ck.region_mut(&h)?, r * region_elems as u64, p.seed);
        handles.push(h);
    }
    let snapshot = |ck: &Checkpointer| -> Result<Vec<Vec<u8>>> {
        handles
            .iter()
            .map(|h| Ok(bytemuck::cast_slice::<f64, u8>(ck.region(h)?).to_vec()))
            .collect()
    };
    let first_state = snapshot(&ck)?;

    // Reference: the same bytes written raw and fsynced, once before and once after the
    // versions (the disk is shared and noisy; the mean of the two is reported).
    let baseline_before = baseline(&p.dir, &first_state)?;
    let mut rng = Rng::new(p.seed.wrapping_mul(7919) ^ 0x5eed);
    let per_page = (ps / 8) as usize;
    // Rewrites the chosen pages (global page numbers) of regions `hs` with a random bump.
    let bump_in = |ck: &mut Checkpointer,
                   hs: &[crate::RegionHandle<f64>],
                   pages: &[u64],
                   rng: &mut Rng|
     -> Result<()> {
        let bump = rng.next_f64() * 0.01 + 1.0e-6;
        for &gp in pages {
            let (r, page) = (gp / pages_per_region, gp % pages_per_region);
            let data = ck.region_mut(&hs[r as usize])?;
            let start = page as usize * per_page;
            let end = (start + per_page).min(data.len());
            for x in &mut data[start..end] {
                *x += bump;
            }
        }
        Ok(())
    };
    let bump =
        |ck: &mut Checkpointer, pages: &[u64], rng: &mut Rng| bump_in(ck, &handles, pages, rng);
    let mut delta_secs = Vec::new();
    let mut delta_scan = Vec::new();
    let mut delta_bytes = Vec::new();
    let mut full_secs = 0.0;
    let mut first = None;
    let mut last = None;
    let mut last_state = Vec::new();
    let mut asynchronous = p.asynchronous.map(AsyncRun::new);
    let mut pages = Vec::new();
    // The process's memory before any version: the state, the bench's copy of it, the
    // engine without tables yet.
    crate::sys::trim_heap();
    let rss_before_versions = anon_rss_bytes();
    for v in 1..=p.versions {
        if v > 1 && asynchronous.is_none() {
            bump(&mut ck, &pick(&mut rng, total_pages, dirty_pages), &mut rng)?;
        }
        // (Outside the timing: the state's hash, to check the version holds it.)
        let hash = match asynchronous {
            Some(_) => state_hash(&ck, &handles)?,
            None => [0; 32],
        };
        let base_rss = rss_bytes();
        let t = Instant::now();
        let stats = match asynchronous.as_mut() {
            None => ck.checkpoint()?,
            Some(a) => {
                let h = ck.checkpoint_async()?;
                let stopped = t.elapsed().as_secs_f64();
                a.called(h.version(), hash, h.snapshot(), stopped, v == 1);
                // The next version's pages are rewritten while this one flushes (none after
                // the last: its state is the one the restores check).
                if v < p.versions {
                    pages = pick(&mut rng, total_pages, dirty_pages);
                    let tf = Instant::now();
                    let mut sampled = Instant::now();
                    // Memory is sampled every 20 ms (reading a child's smaps_rollup walks its
                    // page tables); the sampling time is not counted as compute time.
                    let mut sampling = 0.0;
                    loop {
                        bump(&mut ck, &pages, &mut rng)?;
                        a.flushing_pages += pages.len() as u64;
                        let done = h.is_done();
                        if sampled.elapsed().as_secs_f64() > 0.02 || done {
                            let ts = Instant::now();
                            let extra =
                                rss_bytes().saturating_sub(base_rss) + children_private_bytes();
                            a.peak_extra_rss = a.peak_extra_rss.max(extra);
                            sampled = Instant::now();
                            sampling += ts.elapsed().as_secs_f64();
                        }
                        if done {
                            break;
                        }
                    }
                    a.flushing_secs += tf.elapsed().as_secs_f64() - sampling;
                }
                let stats = h.wait()?;
                if v < p.versions {
                    // The same rewrites with no flush running, for as long.
                    let span = t.elapsed().as_secs_f64().min(a.flushing_secs.max(1e-3));
                    let ti = Instant::now();
                    while ti.elapsed().as_secs_f64() < span.min(1.0) {
                        bump(&mut ck, &pages, &mut rng)?;
                        a.idle_pages += pages.len() as u64;
                    }
                    a.idle_secs += ti.elapsed().as_secs_f64();
                }
                stats
            }
        };
        let secs = t.elapsed().as_secs_f64();
        // The state the last version holds (nothing rewrites it after the call), copied once
        // the version is written: a copy taken before it made the kernel find a gigabyte of
        // fresh memory just before the version, and the version's own page-cache writes then
        // ran several times slower (1 GiB, 1 %: 512 KiB writes of 2.1-2.9 ms against 0.1-0.4
        // ms in the version before, traced).
        if v == p.versions {
            last_state = snapshot(&ck)?;
        }
        if v == 1 {
            full_secs = secs;
            first = Some(stats.clone());
        } else {
            delta_secs.push(secs);
            delta_scan.push(stats.scan_secs);
            delta_bytes.push(stats.file_bytes as f64);
        }
        last = Some(stats);
        progress(v, p.versions);
    }
    // Beside the state: what the process holds after the versions, less what it held before
    // and the bench's second copy of the state (`last_state`).
    // Memory the allocator holds free (the write path's transient buffers) is given back
    // first: it is not the engine's.
    crate::sys::trim_heap();
    let engine_rss_bytes = anon_rss_bytes().saturating_sub(rss_before_versions + state_bytes);
    let engine_bookkeeping_bytes = ck.metadata_bytes() as u64;
    let (Some(first), Some(last)) = (first, last) else {
        return Err(Error::Config("bench needs at least 2 versions".into()));
    };
    let baseline_after = baseline(&p.dir, &first_state)?;
    let baseline_write_secs = (baseline_before + baseline_after) / 2.0;
    let tuned_write_secs =
        tuned_write(&p.dir, &first_state)?.min(tuned_write(&p.dir, &first_state)?);
    let tracking = last.tracking.as_str().to_string();
    drop(ck);

    // Each restore goes into freshly allocated regions, as in a restarted process, so that
    // both pay the same first-touch page faults.
    let restore = |version: u64, want: &[Vec<u8>]| -> Result<(f64, bool, RestoreStats)> {
        let mut ck = Checkpointer::open(&p.dir, BENCH_CHAIN, config.clone())?;
        let mut hs = Vec::new();
        for r in 0..nregions {
            hs.push(ck.alloc_region::<f64>(r + 1, region_elems)?);
        }
        let t = Instant::now();
        let stats = ck.restore(Some(version))?;
        let secs = t.elapsed().as_secs_f64();
        let mut ok = true;
        for (h, w) in hs.iter().zip(want) {
            ok &= bytemuck::cast_slice::<f64, u8>(ck.region(h)?) == w.as_slice();
        }
        Ok((secs, ok, stats))
    };
    // Alternate newest, first, three times, and keep the best time of each: the machine is
    // shared and noisy, and the first restore of a run also warms caches for the second.
    let (mut restore_newest_secs, mut restore_first_secs) = (f64::MAX, f64::MAX);
    let (mut ok_newest, mut ok_first, mut newest_files_read) = (true, true, 0);
    for _ in 0..3 {
        let (t, ok, stats) = restore(last.version, &last_state)?;
        restore_newest_secs = restore_newest_secs.min(t);
        ok_newest &= ok;
        newest_files_read = stats.files_read;
        let (t, ok, _) = restore(first.version, &first_state)?;
        restore_first_secs = restore_first_secs.min(t);
        ok_first &= ok;
    }

    // Cold cache: the bytes the newest version's restore reads, read plainly; then the
    // restore itself, each after dropping the store's files from the cache.
    let newest_path = store.path_of(last.version);
    let version = crate::read::Version::open(&newest_path)?;
    let plan = version.read_plan();
    let files: Vec<PathBuf> = version
        .files()
        .iter()
        .map(|f| f.path().to_path_buf())
        .collect();
    drop(version);
    // Three times each, alternated, keeping the best of each: one cold read of a GiB varies
    // by a factor of two on a shared disk.
    let (mut cold_cache, mut ok_cold) = (true, true);
    let (mut cold_read_secs, mut restore_newest_cold_secs) = (f64::MAX, f64::MAX);
    let mut restore_newest_cold_bytes_in_place = 0;
    for _ in 0..3 {
        cold_cache &= drop_store_cache(&p.dir)?;
        cold_read_secs = cold_read_secs.min(read_plan(&files, &plan)?);
        cold_cache &= drop_store_cache(&p.dir)?;
        let (t, ok, stats) = restore(last.version, &last_state)?;
        restore_newest_cold_secs = restore_newest_cold_secs.min(t);
        restore_newest_cold_bytes_in_place = stats.bytes_in_place;
        ok_cold &= ok;
    }

    let (mut compact_secs, mut compact_bytes_written, mut ok_compacted) = (None, None, true);
    let (mut compact_bytes_copied, mut compact_bytes_shared, mut copy_floor_secs) =
        (None, None, None);
    if let Some(keep) = p.compact_keep {
        let t = Instant::now();
        let r = crate::compact::compact(
            &store,
            &crate::compact::CompactOptions {
                keep,
                ..crate::compact::CompactOptions::default()
            },
            &mut |_, _| {},
        )?;
        compact_secs = Some(t.elapsed().as_secs_f64());
        compact_bytes_written = Some(r.bytes_written);
        compact_bytes_copied = Some(r.bytes_copied);
        compact_bytes_shared = Some(r.bytes_shared);
        ok_compacted = restore(last.version, &last_state)?.1;
        // The floor: the compacted file's bytes (those the compaction read, in one file),
        // copied plainly from a cold cache.
        let compacted = crate::read::Version::open(&newest_path)?;
        let (files, plan) = (vec![newest_path.clone()], compacted.read_plan());
        drop(compacted);
        cold_cache &= drop_store_cache(&p.dir)?;
        copy_floor_secs = Some(copy_floor(&p.dir, &files, &plan)?);
    }

    // Asynchronous run: every version restores to the state at its call; and the blocking
    // references, on a second chain holding the same state.
    let mut ok_async = true;
    let asynchronous = match asynchronous {
        None => None,
        Some(a) => {
            for (v, want) in &a.at_call {
                let mut ck = Checkpointer::open(&p.dir, BENCH_CHAIN, config.clone())?;
                let mut hs = Vec::new();
                for r in 0..nregions {
                    hs.push(ck.alloc_region::<f64>(r + 1, region_elems)?);
                }
                ck.restore(Some(*v))?;
                ok_async &= state_hash(&ck, &hs)? == *want;
            }
            let ref_dir = p.dir.join("blocking-reference");
            let (full, delta) = {
                let (mut ck, hs) = engine_holding(&ref_dir, config.clone(), &last_state)?;
                let t = Instant::now();
                ck.checkpoint()?;
                let full = t.elapsed().as_secs_f64();
                let chosen = pick(&mut rng, total_pages, dirty_pages);
                bump_in(&mut ck, &hs, &chosen, &mut rng)?;
                let t = Instant::now();
                ck.checkpoint()?;
                (full, t.elapsed().as_secs_f64())
            };
            std::fs::remove_dir_all(&ref_dir).map_err(|e| Error::io(&ref_dir, "remove", e))?;
            Some(a.figures(full, delta))
        }
    };

    let tracking_compared = match (asynchronous.is_none(), crate::uffd_support()) {
        (true, Ok(())) => {
            drop(first_state);
            let mut rng = Rng::new(p.seed ^ 0xc0_ffee);
            let rounds = p.versions - 1;
            let picks: Vec<Vec<u64>> = (0..rounds)
                .map(|_| pick(&mut rng, total_pages, dirty_pages))
                .collect();
            let c = compare_tracking(&p.dir, &config, &last_state, &picks, |ck, hs, pages| {
                bump_in(ck, hs, pages, &mut rng)
            })?;
            Some(c)
        }
        _ => None,
    };

    let delta_secs = median(&mut delta_secs);
    let delta_bytes = median(&mut delta_bytes) as u64;
    let floor_secs = commit_floor(&p.dir, &last_state, delta_bytes)?;
    let detect_secs = detect_only(&last_state, p.page_size as usize);
    let ratios = BenchRatios {
        delta_over_floor: delta_secs / floor_secs,
        delta_over_floor_plus_detect: (tracking == "hash")
            .then(|| delta_secs / (floor_secs + detect_secs)),
        compact_over_full_secs: compact_secs.map(|c| c / full_secs),
        compact_over_copy_floor: compact_secs.zip(copy_floor_secs).map(|(c, f)| c / f),
        compact_bytes_over_full: compact_bytes_written.map(|b| b as f64 / first.file_bytes as f64),
        delta_over_full: delta_secs / full_secs,
        delta_bytes_over_state: delta_bytes as f64 / state_bytes as f64,
        full_over_baseline: full_secs / baseline_write_secs,
        full_over_tuned: full_secs / tuned_write_secs,
        restore_over_cold_read: restore_newest_cold_secs / cold_read_secs,
        restore_newest_over_first: restore_newest_secs / restore_first_secs,
        engine_memory_over_state: engine_rss_bytes as f64 / state_bytes as f64,
        hash_over_uffd: tracking_compared
            .as_ref()
            .map(|c| c.compare_hash_delta_secs / c.compare_uffd_delta_secs),
    };
    Ok(BenchReport {
        state_bytes,
        versions: p.versions,
        dirty_fraction: p.dirty,
        dirty_pages,
        tracking,
        page_size: p.page_size,
        full_secs,
        full_bytes: first.file_bytes,
        full_scan_secs: first.scan_secs,
        delta_secs,
        delta_bytes,
        delta_scan_secs: median(&mut delta_scan),
        detect_secs,
        baseline_write_secs,
        tuned_write_secs,
        floor_secs,
        restore_newest_secs,
        restore_first_secs,
        cold_read_secs,
        restore_newest_cold_secs,
        restore_newest_cold_bytes_in_place,
        cold_cache,
        free_pages_reported_kib: reported_before
            .zip(free_pages_reported_kib())
            .map(|(a, b)| b.saturating_sub(a)),
        newest_depth: last.depth,
        newest_files_read,
        engine_rss_bytes,
        engine_bookkeeping_bytes,
        verified: ok_newest && ok_first && ok_cold && ok_compacted && ok_async,
        compact_secs,
        compact_bytes_written,
        compact_bytes_copied,
        compact_bytes_shared,
        copy_floor_secs,
        tracking_compared,
        ratios,
        asynchronous,
    })
}

/// An engine on chain `bench` in `dir` whose regions (numbered from 1) hold copies of
/// `state`'s, and their handles.
fn engine_holding(
    dir: &std::path::Path,
    config: Config,
    state: &[Vec<u8>],
) -> Result<(Checkpointer, Vec<crate::RegionHandle<f64>>)> {
    let mut ck = Checkpointer::open(dir, BENCH_CHAIN, config)?;
    let mut hs = Vec::new();
    for (r, bytes) in state.iter().enumerate() {
        let h = ck.alloc_region::<f64>(r as u64 + 1, bytes.len() / 8)?;
        bytemuck::cast_slice_mut::<f64, u8>(ck.region_mut(&h)?).copy_from_slice(bytes);
        hs.push(h);
    }
    Ok((ck, hs))
}

/// Two more chains in `dir`, one in hash mode and one in userfaultfd mode, each over its own
/// copy of `state`: a full version each, then for each of `picks` the same pages rewritten in
/// both (`bump`) and a delta of each, the two in alternating order (deltas however deep: the
/// chain depth limit is raised for them). The chains are removed after.
fn compare_tracking(
    dir: &std::path::Path,
    config: &Config,
    state: &[Vec<u8>],
    picks: &[Vec<u64>],
    mut bump: impl FnMut(&mut Checkpointer, &[crate::RegionHandle<f64>], &[u64]) -> Result<()>,
) -> Result<TrackingCompared> {
    let mut chains = Vec::new();
    for (sub, tracking) in [
        ("compare-hash", Tracking::Hash),
        ("compare-uffd", Tracking::Uffd),
    ] {
        let d = dir.join(sub);
        let config = Config {
            tracking,
            max_chain_depth: config
                .max_chain_depth
                .max(u32::try_from(picks.len()).unwrap_or(u32::MAX)),
            ..config.clone()
        };
        let (mut ck, hs) = engine_holding(&d, config, state)?;
        ck.checkpoint()?;
        chains.push((d, ck, hs));
    }
    let (mut times_hash, mut times_uffd) = (Vec::new(), Vec::new());
    for (round, pages) in picks.iter().enumerate() {
        // The same pages in both (the values written differ, which no mode can tell).
        for (_, ck, hs) in chains.iter_mut() {
            bump(ck, hs, pages)?;
        }
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let t = Instant::now();
            let stats = chains[i].1.checkpoint()?;
            let secs = t.elapsed().as_secs_f64();
            let want = [TrackingKind::Hash, TrackingKind::Uffd][i];
            if stats.tracking != want {
                return Err(Error::Config(format!(
                    "{}: the comparison's delta was found by {}, not {}",
                    stats.path.display(),
                    stats.tracking.as_str(),
                    want.as_str()
                )));
            }
            if i == 0 {
                times_hash.push(secs);
            } else {
                times_uffd.push(secs);
            }
        }
    }
    for (d, ck, _) in chains {
        drop(ck);
        std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, "remove", e))?;
    }
    Ok(TrackingCompared {
        compare_hash_delta_secs: median(&mut times_hash),
        compare_uffd_delta_secs: median(&mut times_uffd),
        compare_rounds: picks.len() as u64,
    })
}

/// What an asynchronous run gathers as it goes.
struct AsyncRun {
    snapshot: Snapshot,
    used: std::collections::BTreeMap<String, u64>,
    /// Each version and the hash of the state at its call.
    at_call: Vec<(u64, [u8; 32])>,
    blocked: Vec<f64>,
    full_blocked: f64,
    peak_extra_rss: u64,
    flushing_pages: u64,
    flushing_secs: f64,
    idle_pages: u64,
    idle_secs: f64,
}

impl AsyncRun {
    fn new(snapshot: Snapshot) -> AsyncRun {
        AsyncRun {
            snapshot,
            used: Default::default(),
            at_call: Vec::new(),
            blocked: Vec::new(),
            full_blocked: 0.0,
            peak_extra_rss: 0,
            flushing_pages: 0,
            flushing_secs: 0.0,
            idle_pages: 0,
            idle_secs: 0.0,
        }
    }

    /// Records a call that returned after `stopped` seconds.
    fn called(&mut self, v: u64, hash: [u8; 32], how: Option<Snapshot>, stopped: f64, full: bool) {
        *self
            .used
            .entry(how.map_or("blocked", Snapshot::name).to_string())
            .or_default() += 1;
        self.at_call.push((v, hash));
        if full {
            self.full_blocked = stopped;
        } else {
            self.blocked.push(stopped);
        }
    }

    fn figures(mut self, blocking_full: f64, blocking_delta: f64) -> AsyncFigures {
        let blocked = median(&mut self.blocked);
        let idle = self.idle_pages as f64 / self.idle_secs.max(1e-9);
        let flushing = self.flushing_pages as f64 / self.flushing_secs.max(1e-9);
        AsyncFigures {
            snapshot: self.snapshot.name().to_string(),
            snapshots_used: self.used,
            blocked_secs: blocked,
            full_blocked_secs: self.full_blocked,
            blocking_full_secs: blocking_full,
            blocking_delta_secs: blocking_delta,
            peak_extra_rss_bytes: self.peak_extra_rss,
            compute_pages_per_sec_idle: idle,
            compute_pages_per_sec_flushing: flushing,
            compute_slowdown: idle / flushing.max(1e-9),
            blocked_over_blocking_delta: blocked / blocking_delta,
            full_blocked_over_blocking_full: self.full_blocked / blocking_full,
        }
    }
}

/// blake3 over the blake3 of each MiB of the regions.
fn state_hash(ck: &Checkpointer, handles: &[crate::RegionHandle<f64>]) -> Result<[u8; 32]> {
    let mut all = Vec::new();
    for h in handles {
        let bytes = bytemuck::cast_slice::<f64, u8>(ck.region(h)?);
        let parts: Vec<[u8; 32]> = bytes
            .par_chunks(1 << 20)
            .map(crate::hash::page_hash)
            .collect();
        all.extend(parts.iter().flatten());
    }
    Ok(crate::hash::page_hash(&all))
}

/// This process's resident anonymous memory (its heap, stacks and private maps, not the
/// program's code or mapped files) less what it has marked free for the kernel (`MADV_FREE`:
/// the write buffers kept for the next version, which the kernel takes back without writing
/// them anywhere when memory runs short): `Anonymous` less `LazyFree` in
/// `/proc/self/smaps_rollup`. 0 if unreadable.
fn anon_rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") else {
        return 0;
    };
    rollup_bytes(&s, "Anonymous:").saturating_sub(rollup_bytes(&s, "LazyFree:"))
}

/// The bytes of the fields of `smaps_rollup` text `rollup` whose names start with `prefix`,
/// summed (`Private_` sums `Private_Clean` and `Private_Dirty`).
fn rollup_bytes(rollup: &str, prefix: &str) -> u64 {
    rollup
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

/// KiB of free memory the kernel has reported to the host since it booted (free page
/// reporting, `/sys/module/page_reporting/parameters/reported_kib`), if it keeps that count.
fn free_pages_reported_kib() -> Option<u64> {
    std::fs::read_to_string("/sys/module/page_reporting/parameters/reported_kib")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// This process's resident memory (`/proc/self/statm`), 0 if unreadable.
fn rss_bytes() -> u64 {
    let page = crate::sys::uffd::os_page_size() as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// The private memory of this thread's child processes (a flushing child's copied pages and
/// buffers), from `/proc/<pid>/smaps_rollup`; 0 if unreadable.
fn children_private_bytes() -> u64 {
    let Ok(children) = std::fs::read_to_string("/proc/thread-self/children") else {
        return 0;
    };
    children
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .map(|rollup| rollup_bytes(&rollup, "Private_"))
        .sum()
}
