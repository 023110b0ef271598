//! Shared helpers for ckpt's integration tests: a deterministic workload whose state after
//! any sequence of steps can be recomputed, and hashing of region contents.
//!
//! ```no_run
//! use ckpt_engine::Checkpointer;
//! let dir = std::env::temp_dir().join("ckpt-tests-example");
//! let mut ck = Checkpointer::open(&dir, "w", ckpt_tests::config(4096, 16))?;
//! ckpt_tests::register(&mut ck, 1)?;
//! ckpt_tests::mutate(&mut ck, 1, 7, 1, 10);
//! ck.checkpoint()?;
//! # Ok::<(), ckpt_engine::Error>(())
//! ```

pub mod crashfs;

use ckpt_engine::bench::Rng;
use ckpt_engine::{Checkpointer, Config};

/// Region ids and sizes used by the test workload: one large region and one whose size is not
/// a multiple of any page size.
pub fn regions(mib: usize) -> Vec<(u64, usize)> {
    vec![(1, mib << 20), (7, 10_000 + 123)]
}

/// Registers the workload's regions with `ck`.
pub fn register(ck: &mut Checkpointer, mib: usize) -> Result<(), ckpt_engine::Error> {
    for (id, len) in regions(mib) {
        ck.alloc_region::<u8>(id, len)?;
    }
    Ok(())
}

/// Applies step `step` of the workload seeded with `seed`: rewrites a few ranges of bytes.
pub fn mutate(ck: &mut Checkpointer, mib: usize, seed: u64, step: u64, writes: usize) {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(step));
    for (id, len) in regions(mib) {
        let h = ck.handle::<u8>(id).unwrap();
        let data = ck.region_mut(&h).expect("region registered");
        for _ in 0..writes {
            let at = rng.below(len as u64) as usize;
            let n = (rng.below(300) as usize + 1).min(len - at);
            for b in &mut data[at..at + n] {
                *b = rng.next_u64() as u8;
            }
        }
    }
}

/// blake3 over the blake3 of each region, in id order, as hex.
pub fn state_hash(ck: &Checkpointer) -> String {
    let mut regions = ck.regions();
    regions.sort_unstable();
    let mut all = Vec::new();
    for (id, _) in regions {
        all.extend_from_slice(&ckpt_engine::page_hash(
            ck.region_bytes(id).expect("region"),
        ));
    }
    ckpt_engine::format::hex(&ckpt_engine::page_hash(&all))
}

/// Restores version `v` of the workload's chain into fresh regions and returns its state hash.
pub fn restore_hash(
    dir: &std::path::Path,
    name: &str,
    mib: usize,
    v: u64,
) -> Result<String, ckpt_engine::Error> {
    let mut ck = Checkpointer::open(dir, name, config(4096, 16))?;
    register(&mut ck, mib)?;
    ck.restore(Some(v))?;
    Ok(state_hash(&ck))
}

/// Parses `committed V HASH PAGES` lines.
pub fn committed(lines: &[String]) -> Vec<(u64, String, u64)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "committed").then_some(())?;
            Some((
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// A test configuration: small pages, the given depth limit.
pub fn config(page_size: u32, max_depth: u32) -> Config {
    Config::default()
        .with_page_size(page_size)
        .with_max_chain_depth(max_depth)
}

/// Exports version `v` of chain `name` with the read-only path (no regions needed) and
/// returns a hash of the region files, in id order.
pub fn export_hash(
    dir: &std::path::Path,
    name: &str,
    v: u64,
) -> Result<String, ckpt_engine::Error> {
    let store = ckpt_engine::Store::new(dir, name)?;
    let tmp = tempfile::tempdir().map_err(|e| ckpt_engine::Error::Io {
        path: std::env::temp_dir(),
        op: "create a temporary directory",
        source: e,
    })?;
    let out = tmp.path().join("export");
    let (_, files) = ckpt_engine::catalog::export(&store, Some(v), &out)?;
    let mut all = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| ckpt_engine::Error::Io {
            path: f.clone(),
            op: "read",
            source: e,
        })?;
        all.extend_from_slice(&ckpt_engine::page_hash(&bytes));
    }
    Ok(ckpt_engine::format::hex(&ckpt_engine::page_hash(&all)))
}

/// [`export_hash`] of every version of chain `name` in `dir`, by version number.
pub fn version_hashes(
    dir: &std::path::Path,
    name: &str,
) -> std::collections::BTreeMap<u64, String> {
    let store = ckpt_engine::Store::new(dir, name).expect("chain name");
    store
        .versions()
        .expect("list versions")
        .into_iter()
        .map(|v| (v, export_hash(dir, name, v).expect("export")))
        .collect()
}

/// Copies every file of directory `from` into a fresh directory `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("readdir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// The test workload in-process: opens chain `name` in `dir`, optionally restores (`Some(0)`
/// means the latest version), then runs `steps` steps of mutate + checkpoint. Returns
/// `(version, state hash)` for each checkpoint.
pub fn run_steps(
    dir: &std::path::Path,
    name: &str,
    mib: usize,
    seed: u64,
    steps: u64,
    restore: Option<u64>,
    writes: usize,
) -> Result<Vec<(u64, String)>, ckpt_engine::Error> {
    let mut ck = Checkpointer::open(dir, name, config(4096, 16))?;
    register(&mut ck, mib)?;
    match restore {
        Some(0) => {
            if let Some(v) = ck.latest_version()? {
                ck.restore(Some(v))?;
            }
        }
        Some(v) => {
            ck.restore(Some(v))?;
        }
        None => {}
    }
    let mut out = Vec::new();
    for step in 0..steps {
        mutate(&mut ck, mib, seed, step, writes);
        let s = ck.checkpoint()?;
        out.push((s.version, state_hash(&ck)));
    }
    Ok(out)
}

/// A job store at `dir` written the way the MPI shim writes one, without MPI: `ranks` chains
/// of one 64 KiB region each, versions `1..=versions` committed on every rank, each a delta
/// against the one before: version v writes r * 1000 + v into every fourth 4 KiB page
/// (those with index = v mod 4) of rank r's region.
pub fn job_store(dir: &std::path::Path, name: &str, ranks: u32, versions: u64) {
    use ckpt_engine::job::{CommitRecord, JobStore};
    let job = JobStore::new(dir, name).unwrap();
    if job.meta().unwrap().is_none() {
        job.write_meta(ranks).unwrap();
    }
    let mut engines: Vec<(Checkpointer, ckpt_engine::RegionHandle<u64>)> = (0..ranks)
        .map(|r| {
            let mut ck = Checkpointer::open(job.rank_dir(r), name, Config::default()).unwrap();
            let h = ck.alloc_region::<u64>(1, 8192).unwrap();
            (ck, h)
        })
        .collect();
    let start = job.commits().unwrap().last().copied().unwrap_or(0) + 1;
    for v in start..start + versions {
        let mut ids = Vec::new();
        for (r, (ck, h)) in engines.iter_mut().enumerate() {
            let region = ck.region_mut(h).unwrap();
            for (i, x) in region.iter_mut().enumerate() {
                if (i / 512) % 4 == (v % 4) as usize {
                    *x = r as u64 * 1000 + v;
                }
            }
            ids.push(ck.checkpoint_numbered(v).unwrap().identity);
        }
        job.write_commit(&CommitRecord::new(v, ids)).unwrap();
    }
}
