//! `ckpt`: inspect, verify, restore and benchmark ckpt stores.
//!
//! Every command takes `--json` and then prints exactly one JSON document on stdout (on
//! failure: `{"error": "..."}`, with a non-zero exit status).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ckpt_engine::bench::{self, BenchParams};
use ckpt_engine::catalog;
use ckpt_engine::format::{hex, FLAG_FULL};
use ckpt_engine::job::JobStore;
use ckpt_engine::read::VersionFile;
use ckpt_engine::{Store, Tracking};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "ckpt",
    version,
    about = "Incremental delta checkpoints: inspect, verify, restore, bench"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the committed versions of a chain.
    Ls {
        /// Store directory.
        dir: PathBuf,
        /// Chain name (optional when DIR holds one chain).
        #[arg(long)]
        name: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show a version file's header, parent, regions and page counts.
    Inspect {
        /// A `<name>.ckpt.<N>` file.
        file: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Check every file of a chain (or one version) without restoring; exit 1 if any is bad.
    Verify {
        /// Store directory.
        dir: PathBuf,
        /// Chain name (optional when DIR holds one chain).
        #[arg(long)]
        name: Option<String>,
        /// Check only this version (and the files it references).
        #[arg(long)]
        version: Option<u64>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Write each region of a version to OUTDIR/region-<id>.bin.
    Restore {
        /// Store directory.
        dir: PathBuf,
        /// Chain name (optional when DIR holds one chain).
        #[arg(long)]
        name: Option<String>,
        /// Version to restore (default: the newest).
        #[arg(long)]
        version: Option<u64>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark checkpoint and restore on synthetic state; leaves the files in --dir.
    Bench(BenchArgs),
}

/// Arguments of `ckpt bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Store directory (must not already hold a `bench` chain).
    #[arg(long)]
    dir: PathBuf,
    /// State size in MiB.
    #[arg(long, default_value_t = 256)]
    state_mib: usize,
    /// Fraction of pages rewritten between versions.
    #[arg(long, default_value_t = 0.01)]
    dirty: f64,
    /// Number of versions to write.
    #[arg(long, default_value_t = 6)]
    versions: u64,
    /// Dirty tracking: hash, uffd or auto.
    #[arg(long, default_value = "auto")]
    tracking: String,
    /// Page size in bytes.
    #[arg(long, default_value_t = 4096)]
    page_size: u32,
    /// zstd level (0: no compression).
    #[arg(long, default_value_t = 1)]
    level: i32,
    /// Compress a batch only if a sample shrinks by at least this fraction.
    #[arg(long, default_value_t = 0.125)]
    min_saving: f64,
    /// Maximum chain depth before a full version is written.
    #[arg(long, default_value_t = 16)]
    max_depth: u32,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Afterwards, compact the chain keeping K versions and report its cost.
    #[arg(long)]
    compact_keep: Option<usize>,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

impl Cmd {
    fn json(&self) -> bool {
        match self {
            Cmd::Ls { json, .. }
            | Cmd::Inspect { json, .. }
            | Cmd::Verify { json, .. }
            | Cmd::Restore { json, .. }
            | Cmd::Bench(BenchArgs { json, .. }) => *json,
        }
    }
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

fn print(json_mode: bool, v: &Value, human: impl FnOnce()) {
    if json_mode {
        println!("{v}");
    } else {
        human();
    }
}

/// `ckpt ls` on a job store: its committed versions.
fn ls_job(dir: &std::path::Path, job: &JobStore, world: u32, json_mode: bool) -> Result<bool> {
    let commits = job.commits()?;
    let doc = json!({"name": job.name(), "job": {"world_size": world, "committed": commits}});
    print(json_mode, &doc, || {
        println!(
            "job store {} (chain {}, {world} ranks)",
            dir.display(),
            job.name()
        );
        println!("committed versions: {commits:?}");
        println!(
            "each rank's chain: {}/ranks/<rank / 256>/<rank>",
            dir.display()
        );
    });
    Ok(true)
}

/// `ckpt verify` on a job store: every committed version on every rank.
fn verify_job(
    dir: &std::path::Path,
    job: &JobStore,
    world: u32,
    version: Option<u64>,
    json_mode: bool,
) -> Result<bool> {
    let versions = match version {
        Some(v) => vec![v],
        None => job.commits()?,
    };
    let pb = bar(versions.len() as u64, "verify");
    let mut all_ok = true;
    let mut rows = Vec::new();
    for v in versions {
        let r = job.verify_commit(v, world);
        all_ok &= r.is_ok();
        rows.push((v, r));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let files: Vec<Value> = rows
        .iter()
        .map(|(v, r)| match r {
            Ok(()) => json!({"version": v, "ok": true}),
            Err(e) => json!({"version": v, "ok": false, "error": e.to_string(),
                             "bad_file": e.path().map(|p| p.display().to_string())}),
        })
        .collect();
    let doc =
        json!({"name": job.name(), "job": {"world_size": world}, "ok": all_ok, "versions": files});
    print(json_mode, &doc, || {
        for (v, r) in &rows {
            match r {
                Ok(()) => println!("ok   version {v} on all {world} ranks ({})", dir.display()),
                Err(e) => println!("BAD  version {v}: {e}"),
            }
        }
    });
    Ok(all_ok)
}

fn ls(dir: PathBuf, name: Option<String>, json_mode: bool) -> Result<bool> {
    if let (None, Some((job, meta))) = (&name, JobStore::detect(&dir)?) {
        return ls_job(&dir, &job, meta.world_size, json_mode);
    }
    let store = Store::discover(&dir, name.as_deref())?;
    let list = catalog::list(&store)?;
    let versions: Vec<Value> = list
        .iter()
        .map(|v| {
            json!({"version": v.version, "parent": v.parent, "file": v.file,
                   "bytes": v.bytes, "depth": v.depth, "full": v.full})
        })
        .collect();
    let doc = json!({"name": store.name(), "versions": versions});
    print(json_mode, &doc, || {
        println!("chain {} in {}", store.name(), dir.display());
        println!(
            "{:>8} {:>8} {:>6} {:>14}  file",
            "version", "parent", "depth", "bytes"
        );
        for v in &list {
            let parent = v.parent.map_or("-".to_string(), |p| p.to_string());
            println!(
                "{:>8} {:>8} {:>6} {:>14}  {}",
                v.version, parent, v.depth, v.bytes, v.file
            );
        }
    });
    Ok(true)
}

fn inspect(file: PathBuf, json_mode: bool) -> Result<bool> {
    let f = VersionFile::open(&file)?;
    let h = &f.header;
    let ps = h.page_size as u64;
    let pages_total: u64 = f
        .index
        .regions
        .iter()
        .map(|r| r.page_count(h.page_size))
        .sum();
    let pages_stored = f.index.records.len() as u64;
    let ratio = if f.footer.data_len > 0 {
        f.footer.stored_raw_bytes as f64 / f.footer.data_len as f64
    } else {
        1.0
    };
    let regions: Vec<Value> = f
        .index
        .regions
        .iter()
        .map(|r| {
            json!({"id": r.id, "bytes": r.byte_len, "pages": r.page_count(h.page_size),
                   "extents": r.extent_count})
        })
        .collect();
    let refs: Vec<Value> = f
        .index
        .files
        .iter()
        .skip(1)
        .map(|e| json!({"file": e.name, "version": e.version, "file_id": hex(&e.identity.file_id)}))
        .collect();
    let doc = json!({
        "file": file.display().to_string(),
        "bytes": f.size(),
        "name": h.name,
        "version": h.version,
        "file_id": hex(&h.file_id),
        "parent": h.parent.map(|p| json!({"version": p.version, "file_id": hex(&p.identity.file_id),
                                          "index_checksum": hex(&p.identity.index_checksum)})),
        "full": h.flags & FLAG_FULL != 0,
        "depth": h.depth,
        "page_size": ps,
        "tracking": h.tracking.as_str(),
        "compression_level": h.compression_level,
        "created_unix_nanos": h.created_unix_nanos,
        "regions": regions,
        "pages_total": pages_total,
        "pages_stored": pages_stored,
        "pages_referenced": pages_total - pages_stored.min(pages_total),
        "stored_raw_bytes": f.footer.stored_raw_bytes,
        "data_bytes": f.footer.data_len,
        "index_bytes": f.footer.index_len,
        "compression_ratio": ratio,
        "references": refs,
    });
    print(json_mode, &doc, || {
        println!(
            "{}: version {} of chain {:?}",
            file.display(),
            h.version,
            h.name
        );
        println!("  file id      {}", hex(&h.file_id));
        match &h.parent {
            Some(p) => println!(
                "  parent       version {} (file id {})",
                p.version,
                hex(&p.identity.file_id)
            ),
            None => println!("  parent       none"),
        }
        println!(
            "  kind         {} (depth {})",
            if h.flags & FLAG_FULL != 0 {
                "full"
            } else {
                "delta"
            },
            h.depth
        );
        println!("  page size    {ps}");
        println!("  tracking     {}", h.tracking.as_str());
        println!(
            "  pages        {pages_total} total, {pages_stored} stored here, {} referenced",
            pages_total - pages_stored.min(pages_total)
        );
        println!(
            "  bytes        {} file, {} data, {} index; compression ratio {ratio:.3}",
            f.size(),
            f.footer.data_len,
            f.footer.index_len
        );
        for r in &f.index.regions {
            println!(
                "  region {:>6}  {} bytes, {} pages, {} extents",
                r.id,
                r.byte_len,
                r.page_count(h.page_size),
                r.extent_count
            );
        }
        for e in f.index.files.iter().skip(1) {
            println!("  references   {} (version {})", e.name, e.version);
        }
    });
    Ok(true)
}

fn verify(
    dir: PathBuf,
    name: Option<String>,
    version: Option<u64>,
    json_mode: bool,
) -> Result<bool> {
    if let (None, Some((job, meta))) = (&name, JobStore::detect(&dir)?) {
        return verify_job(&dir, &job, meta.world_size, version, json_mode);
    }
    let store = Store::discover(&dir, name.as_deref())?;
    let versions = match version {
        Some(v) => vec![v],
        None => store.versions()?,
    };
    if versions.is_empty() {
        bail!("{}: no versions of chain {:?}", dir.display(), store.name());
    }
    let pb = bar(versions.len() as u64, "verify");
    let mut results = Vec::new();
    let mut all_ok = true;
    for v in versions {
        let path = store.path_of(v);
        let r = if path.exists() {
            catalog::verify_version(&path)
        } else {
            Err(ckpt_engine::Error::NotFound {
                dir: dir.clone(),
                what: format!("no version {v}"),
            })
        };
        all_ok &= r.is_ok();
        results.push((v, path, r));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let files: Vec<Value> = results
        .iter()
        .map(|(v, p, r)| match r {
            Ok(()) => json!({"version": v, "file": p.display().to_string(), "ok": true}),
            Err(e) => json!({"version": v, "file": p.display().to_string(), "ok": false,
                             "error": e.to_string(),
                             "bad_file": e.path().map(|p| p.display().to_string())}),
        })
        .collect();
    let doc = json!({"name": store.name(), "ok": all_ok, "files": files});
    print(json_mode, &doc, || {
        for (_, p, r) in &results {
            match r {
                Ok(()) => println!("ok   {}", p.display()),
                Err(e) => println!("BAD  {}: {e}", p.display()),
            }
        }
    });
    Ok(all_ok)
}

fn restore(
    dir: PathBuf,
    name: Option<String>,
    version: Option<u64>,
    out: PathBuf,
    json_mode: bool,
) -> Result<bool> {
    let store = Store::discover(&dir, name.as_deref())?;
    let pb = bar(1, "restore");
    let t = Instant::now();
    let (v, files) = catalog::export(&store, version, &out)?;
    let secs = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let doc = json!({"name": store.name(), "version": v, "files": names, "secs": secs});
    print(json_mode, &doc, || {
        println!("restored version {v} of {} in {secs:.3}s:", store.name());
        for f in &names {
            println!("  {f}");
        }
    });
    Ok(true)
}

fn run_bench(a: BenchArgs) -> Result<bool> {
    let json_mode = a.json;
    let params = BenchParams {
        dir: a.dir,
        state_mib: a.state_mib,
        dirty: a.dirty,
        versions: a.versions,
        tracking: a.tracking.parse::<Tracking>()?,
        page_size: a.page_size,
        compression_level: a.level,
        min_compression_saving: a.min_saving,
        max_chain_depth: a.max_depth,
        seed: a.seed,
        compact_keep: a.compact_keep,
    };
    let pb = bar(params.versions, "checkpoint");
    let r = bench::run(&params, &mut |done, _| pb.set_position(done)).context("bench failed")?;
    pb.finish_and_clear();
    let doc = json!({
        "state_bytes": r.state_bytes,
        "versions": r.versions,
        "dirty_fraction": r.dirty_fraction,
        "dirty_pages": r.dirty_pages,
        "tracking": r.tracking,
        "page_size": r.page_size,
        "full_secs": r.full_secs,
        "full_bytes": r.full_bytes,
        "full_scan_secs": r.full_scan_secs,
        "delta_secs": r.delta_secs,
        "delta_scan_secs": r.delta_scan_secs,
        "delta_bytes": r.delta_bytes,
        "baseline_write_secs": r.baseline_write_secs,
        "restore_newest_secs": r.restore_newest_secs,
        "restore_first_secs": r.restore_first_secs,
        "newest_depth": r.newest_depth,
        "newest_files_read": r.newest_files_read,
        "verified": r.verified,
        "compact_secs": r.compact_secs,
        "compact_bytes_written": r.compact_bytes_written,
        "ratios": {
            "compact_over_full_secs": r.compact_secs.map(|c| c / r.full_secs),
            "compact_bytes_over_full": r.compact_bytes_written.map(|b| b as f64 / r.full_bytes as f64),
            "delta_over_full": r.delta_secs / r.full_secs,
            "delta_bytes_over_state": r.delta_bytes as f64 / r.state_bytes as f64,
            "full_over_baseline": r.full_secs / r.baseline_write_secs,
            "restore_newest_over_first": r.restore_newest_secs / r.restore_first_secs,
        },
    });
    print(json_mode, &doc, || {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    });
    Ok(r.verified)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_mode = cli.cmd.json();
    let res = match cli.cmd {
        Cmd::Ls { dir, name, json } => ls(dir, name, json),
        Cmd::Inspect { file, json } => inspect(file, json),
        Cmd::Verify {
            dir,
            name,
            version,
            json,
        } => verify(dir, name, version, json),
        Cmd::Restore {
            dir,
            name,
            version,
            out,
            json,
        } => restore(dir, name, version, out, json),
        Cmd::Bench(args) => run_bench(args),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let msg = format!("{e:#}");
            if json_mode {
                println!("{}", json!({"error": msg}));
            }
            eprintln!("ckpt: error: {msg}");
            ExitCode::from(2)
        }
    }
}
