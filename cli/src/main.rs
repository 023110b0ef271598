//! `ckpt`: inspect, verify, restore and benchmark ckpt stores.
//!
//! Every command takes `--json` (anywhere on the line) and then prints exactly one JSON
//! document on stdout (on failure: `{"error": "..."}`, with a non-zero exit status).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ckpt_cli::{emit, finish, hooks, progress_bar, SnapshotArg, StoreArgs, TrackingArg};
use ckpt_engine::bench::{self, BenchParams};
use ckpt_engine::catalog;
use ckpt_engine::job::JobStore;
use ckpt_engine::Store;
use clap::{Parser, Subcommand};
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
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the committed versions of a chain (or of a job store).
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show a version file's header, parent, regions and page counts.
    Inspect {
        /// A `<name>.ckpt.<N>` file.
        file: PathBuf,
    },
    /// Check every file of a chain (or one version) without restoring; exit 1 if any is bad.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Check only this version (and the files it references).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Write each region of a version to `OUTDIR/region-<id>.bin` (for a job store: a
    /// committed version of every rank, to `OUTDIR/rank-<r>/region-<id>.bin`).
    Restore {
        #[command(flatten)]
        store: StoreArgs,
        /// Version to restore (default: the newest).
        #[arg(long)]
        version: Option<u64>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Benchmark checkpoint and restore on synthetic state; leaves the files in --dir.
    Bench(BenchArgs),
    /// Ask a running MPI job to stop cleanly after its next checkpoint (SCR's halt).
    Halt {
        /// The job store.
        dir: PathBuf,
        /// Withdraw a halt request instead.
        #[arg(long, conflicts_with = "after_next_checkpoint")]
        clear: bool,
        /// Stop after the job's next checkpoint (what a halt request always means; accepted
        /// so that scripts can say so).
        #[arg(long)]
        after_next_checkpoint: bool,
    },
    /// Draw a store for operators: bytes per version (stored / referenced), the chain as a
    /// graph, the compression ratio; one line per rank for a job store.
    Report {
        #[command(flatten)]
        store: StoreArgs,
        /// Write an SVG picture here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Write an HTML page (the picture and a table) here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Start PROGRAM under gdb, restoring version V (default: the newest) at its restart and
    /// stopping right after the restore (breakpoint `ckpt_restored`).
    Debug {
        /// The store the program restarts from (a chain's directory or a job store).
        dir: PathBuf,
        /// Chain name (optional when DIR holds one chain).
        #[arg(long)]
        name: Option<String>,
        /// Version to restore (default: the newest committed).
        #[arg(long)]
        version: Option<u64>,
        /// Run gdb non-interactively: these gdb commands (separated by `;`) run at the
        /// breakpoint, then gdb kills the program and exits.
        #[arg(long)]
        batch: Option<String>,
        /// The program and its arguments (after `--`).
        #[arg(last = true, required = true)]
        program: Vec<String>,
    },
    /// Slurm Prolog: create the job's node-local cache (0700, the job's user) and stage the
    /// newest committed checkpoint in from persistent storage.
    Prolog {
        /// Configuration (default: $CKPT_CONFIG, else /etc/ckpt/ckpt.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Slurm Epilog: copy the cache's committed versions to persistent storage, verify them,
    /// apply retention, then remove the cache. Safe to run twice.
    Epilog {
        /// Configuration (default: $CKPT_CONFIG, else /etc/ckpt/ckpt.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
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
    /// Dirty tracking.
    #[arg(long, value_enum, default_value_t = TrackingArg::Auto)]
    tracking: TrackingArg,
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
    /// Take the versions asynchronously (checkpoint_async), rewriting the next version's
    /// pages while each flush runs, and compare with blocking versions of the same state.
    #[arg(long = "async")]
    asynchronous: bool,
    /// With --async: how the snapshot is taken.
    #[arg(long, value_enum, default_value_t = SnapshotArg::Auto, requires = "asynchronous")]
    snapshot: SnapshotArg,
}

/// `ckpt ls` on a job store: its committed versions.
fn ls_job(dir: &Path, job: &JobStore, world: u32, json_mode: bool) -> Result<bool> {
    let commits = job.commits()?;
    let doc = json!({"name": job.name(), "job": {"world_size": world, "committed": commits}});
    emit(json_mode, &doc, || {
        ckpt_cli::out!(
            "job store {} (chain {}, {world} ranks)",
            dir.display(),
            job.name()
        );
        ckpt_cli::out!("committed versions: {commits:?}");
        ckpt_cli::out!(
            "each rank's chain: {}/ranks/<rank / 256>/<rank>",
            dir.display()
        );
    });
    Ok(true)
}

/// `ckpt verify` on a job store: every committed version on every rank.
fn verify_job(
    dir: &Path,
    job: &JobStore,
    world: u32,
    version: Option<u64>,
    json_mode: bool,
) -> Result<bool> {
    let versions = match version {
        Some(v) => vec![v],
        None => job.commits()?,
    };
    if versions.is_empty() {
        bail!(
            "{}: job store with no committed version: nothing to verify",
            dir.display()
        );
    }
    let pb = progress_bar(versions.len() as u64, "verify", json_mode);
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
    emit(json_mode, &doc, || {
        for (v, r) in &rows {
            match r {
                Ok(()) => {
                    ckpt_cli::out!("ok   version {v} on all {world} ranks ({})", dir.display())
                }
                Err(e) => ckpt_cli::out!("BAD  version {v}: {e}"),
            }
        }
    });
    Ok(all_ok)
}

fn ls(a: StoreArgs, json_mode: bool) -> Result<bool> {
    let StoreArgs { dir, name } = a;
    if let (None, Some((job, meta))) = (&name, JobStore::detect(&dir)?) {
        return ls_job(&dir, &job, meta.world_size, json_mode);
    }
    let store = Store::discover(&dir, name.as_deref())?;
    let list = catalog::list(&store)?;
    let doc = json!({"name": store.name(), "versions": list});
    emit(json_mode, &doc, || {
        ckpt_cli::out!("chain {} in {}", store.name(), dir.display());
        if store.naming() == ckpt_engine::store::Naming::Dat {
            ckpt_cli::out!(
                "(VeloC names: file <chain>-<V>.dat holds ckpt version V + 1, shown below)"
            );
        }
        ckpt_cli::out!(
            "{:>8} {:>8} {:>6} {:>14}  file",
            "version",
            "parent",
            "depth",
            "bytes"
        );
        for v in &list {
            let parent = v.parent.map_or("-".to_string(), |p| p.to_string());
            ckpt_cli::out!(
                "{:>8} {:>8} {:>6} {:>14}  {}",
                v.version,
                parent,
                v.depth,
                v.bytes,
                v.file
            );
        }
    });
    Ok(true)
}

fn inspect(file: PathBuf, json_mode: bool) -> Result<bool> {
    let s = catalog::inspect(&file)?;
    emit(json_mode, &s, || {
        ckpt_cli::out!("{}: version {} of chain {:?}", s.file, s.version, s.name);
        ckpt_cli::out!("  file id      {}", s.file_id);
        match &s.parent {
            Some(p) => ckpt_cli::out!(
                "  parent       version {} (file id {})",
                p.version,
                p.file_id
            ),
            None => ckpt_cli::out!("  parent       none"),
        }
        let kind = if s.full { "full" } else { "delta" };
        ckpt_cli::out!("  kind         {kind} (depth {})", s.depth);
        ckpt_cli::out!("  page size    {}", s.page_size);
        ckpt_cli::out!("  tracking     {}", s.tracking);
        ckpt_cli::out!(
            "  pages        {} total, {} stored here, {} referenced",
            s.pages_total,
            s.pages_stored,
            s.pages_referenced
        );
        ckpt_cli::out!(
            "  bytes        {} file, {} data, {} index; compression ratio {:.3}",
            s.bytes,
            s.data_bytes,
            s.index_bytes,
            s.compression_ratio
        );
        for r in &s.regions {
            ckpt_cli::out!(
                "  region {:>6}  {} bytes, {} pages, {} extents",
                r.id,
                r.bytes,
                r.pages,
                r.extents
            );
        }
        for e in &s.references {
            ckpt_cli::out!("  references   {} (version {})", e.file, e.version);
        }
    });
    Ok(true)
}

fn verify(a: StoreArgs, version: Option<u64>, json_mode: bool) -> Result<bool> {
    let StoreArgs { dir, name } = a;
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
    let pb = progress_bar(versions.len() as u64, "verify", json_mode);
    let mut results = Vec::new();
    let mut all_ok = true;
    for v in versions {
        let path = store.path_of(v);
        let r = if path.exists() {
            store
                .check_member(&path)
                .and_then(|()| catalog::verify_version(&path))
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
    emit(json_mode, &doc, || {
        for (_, p, r) in &results {
            match r {
                Ok(()) => ckpt_cli::out!("ok   {}", p.display()),
                Err(e) => ckpt_cli::out!("BAD  {}: {e}", p.display()),
            }
        }
    });
    Ok(all_ok)
}

fn restore(a: StoreArgs, version: Option<u64>, out: PathBuf, json_mode: bool) -> Result<bool> {
    let StoreArgs { dir, name } = a;
    if let Some((job, meta)) = JobStore::detect(&dir)? {
        return restore_job(&dir, &job, meta.world_size, version, &out, json_mode);
    }
    let store = Store::discover(&dir, name.as_deref())?;
    let pb = progress_bar(1, "restore", json_mode);
    let t = Instant::now();
    let (v, files) = catalog::export(&store, version, &out)?;
    let secs = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let doc = json!({"name": store.name(), "version": v, "files": names, "secs": secs});
    emit(json_mode, &doc, || {
        ckpt_cli::out!("restored version {v} of {} in {secs:.3}s:", store.name());
        for f in &names {
            ckpt_cli::out!("  {f}");
        }
    });
    Ok(true)
}

/// `ckpt restore` on a job store: a committed version (default the newest) of every rank,
/// each checked against the commit record, into `OUT/rank-<r>/region-<id>.bin`.
fn restore_job(
    dir: &Path,
    job: &JobStore,
    world: u32,
    version: Option<u64>,
    out: &Path,
    json_mode: bool,
) -> Result<bool> {
    let commits = job.commits()?;
    let v = match version {
        Some(v) if commits.contains(&v) => v,
        Some(v) => bail!(
            "{}: version {v} was never committed on every rank (committed: {commits:?})",
            dir.display()
        ),
        None => *commits
            .last()
            .with_context(|| format!("{}: job store with no committed version", dir.display()))?,
    };
    let pb = progress_bar(u64::from(world), "restore", json_mode);
    let t = Instant::now();
    let mut names = Vec::new();
    for rank in 0..world {
        job.check_rank(v, rank, world)?;
        let (_, files) = catalog::export(
            &job.rank_store(rank)?,
            Some(v),
            &out.join(format!("rank-{rank}")),
        )?;
        names.extend(files.iter().map(|p| p.display().to_string()));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let doc =
        json!({"name": job.name(), "version": v, "ranks": world, "files": names, "secs": secs});
    emit(json_mode, &doc, || {
        ckpt_cli::out!(
            "restored committed version {v} of job {} ({world} ranks) in {secs:.3}s:",
            job.name()
        );
        for f in &names {
            ckpt_cli::out!("  {f}");
        }
    });
    Ok(true)
}

fn run_bench(a: BenchArgs, json_mode: bool) -> Result<bool> {
    let params = BenchParams {
        dir: a.dir,
        state_mib: a.state_mib,
        dirty: a.dirty,
        versions: a.versions,
        tracking: a.tracking.into(),
        page_size: a.page_size,
        compression_level: a.level,
        min_compression_saving: a.min_saving,
        max_chain_depth: a.max_depth,
        seed: a.seed,
        compact_keep: a.compact_keep,
        asynchronous: a.asynchronous.then(|| a.snapshot.into()),
    };
    let pb = progress_bar(params.versions, "checkpoint", json_mode);
    let r = bench::run(&params, &mut |done, _| pb.set_position(done)).context("bench failed")?;
    pb.finish_and_clear();
    emit(json_mode, &r, || {
        ckpt_cli::out!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    });
    Ok(r.verified)
}

fn halt(dir: &Path, clear: bool, json_mode: bool) -> Result<bool> {
    let Some((job, _)) = JobStore::detect(dir)? else {
        bail!("{}: not a job store (no ckpt-job file)", dir.display());
    };
    if clear {
        job.clear_halt()?;
    } else {
        job.request_halt()?;
    }
    let doc = json!({"dir": dir.display().to_string(), "halt_requested": job.halt_requested()?});
    emit(json_mode, &doc, || {
        if clear {
            ckpt_cli::out!("{}: halt request withdrawn", dir.display());
        } else {
            ckpt_cli::out!(
                "{}: the job will stop after its next checkpoint",
                dir.display()
            );
        }
    });
    Ok(true)
}

fn report(
    store: StoreArgs,
    svg: Option<PathBuf>,
    html: Option<PathBuf>,
    json_mode: bool,
) -> Result<bool> {
    use ckpt_cli::report as rep;
    if svg.is_none() && html.is_none() && !json_mode {
        bail!("say where to write the report: --svg FILE and/or --html FILE (or --json)");
    }
    let r = rep::gather(&store.dir, store.name.as_deref())?;
    if let Some(p) = &svg {
        rep::write(p, &rep::svg(&r)?)?;
    }
    if let Some(p) = &html {
        rep::write(p, &rep::html(&r)?)?;
    }
    emit(json_mode, &serde_json::to_value(&r)?, || {
        let n: usize = r.series.iter().map(|(_, p)| p.len()).sum();
        for p in svg.iter().chain(html.iter()) {
            ckpt_cli::out!(
                "wrote {} ({n} versions of {} chain(s))",
                p.display(),
                r.series.len()
            );
        }
    });
    Ok(true)
}

/// `ckpt debug`: checks that the version exists, then replaces this process with gdb.
fn debug(
    dir: &Path,
    name: Option<String>,
    version: Option<u64>,
    batch: Option<String>,
    program: &[String],
) -> Result<bool> {
    use std::os::unix::process::CommandExt;
    let available = match JobStore::detect(dir)? {
        Some((job, _)) => job.commits()?,
        None => Store::discover(dir, name.as_deref())?.versions()?,
    };
    let version = match version {
        Some(v) if available.contains(&v) => v,
        Some(v) => bail!(
            "{}: no committed version {v} (committed: {available:?})",
            dir.display()
        ),
        None => *available
            .last()
            .with_context(|| format!("{}: no committed version to restore", dir.display()))?,
    };
    let mut gdb = std::process::Command::new("gdb");
    gdb.arg("-q")
        .args(["-ex", "set breakpoint pending on"])
        .args(["-ex", "break ckpt_restored"])
        .args(["-ex", "run"]);
    if let Some(cmds) = &batch {
        gdb.arg("-batch");
        for c in cmds.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            gdb.args(["-ex", c]);
        }
        gdb.args(["-ex", "kill"]);
    }
    gdb.arg("--args")
        .args(program)
        .env(ckpt_engine::RESTORE_VERSION_VAR, version.to_string());
    eprintln!(
        "ckpt debug: {} restores version {version} of {}; gdb stops after the restore (ckpt_restored)",
        program[0],
        dir.display()
    );
    let e = gdb.exec();
    if e.kind() == std::io::ErrorKind::NotFound {
        bail!("gdb is not installed (Debian: apt-get install gdb)");
    }
    Err(e).context("cannot start gdb")
}

fn prolog(config: Option<PathBuf>, json_mode: bool) -> Result<bool> {
    let cfg = hooks::HookConfig::load(config.as_deref())?;
    let job = hooks::SlurmJob::from_env()?;
    let r = hooks::prolog(&cfg, &job)?;
    emit(json_mode, &serde_json::to_value(&r)?, || {
        for s in &r.skipped {
            eprintln!("ckpt prolog: could not stage {s}");
        }
        match r.staged {
            Some(v) => ckpt_cli::out!(
                "ckpt prolog: job {}: staged version {v} into {} ({} files, {} bytes)",
                job.id,
                r.local.display(),
                r.copy.files_copied,
                r.copy.bytes_copied
            ),
            None => ckpt_cli::out!(
                "ckpt prolog: job {}: {} ready; no checkpoint to stage",
                job.id,
                r.local.display()
            ),
        }
    });
    Ok(true)
}

fn epilog(config: Option<PathBuf>, json_mode: bool) -> Result<bool> {
    let cfg = hooks::HookConfig::load(config.as_deref())?;
    let job = hooks::SlurmJob::from_env()?;
    let pb = progress_bar(0, "scavenge", json_mode);
    let r = hooks::epilog(&cfg, &job, &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    });
    pb.finish_and_clear();
    let r = r?;
    emit(json_mode, &serde_json::to_value(&r)?, || {
        ckpt_cli::out!(
            "ckpt epilog: job {}: flushed versions {:?} to {} ({} files, {} bytes; already there: {:?}); retired {:?}; cache {}",
            job.id,
            r.copy.versions,
            r.persistent.display(),
            r.copy.files_copied,
            r.copy.bytes_copied,
            r.copy.already_there,
            r.retired,
            if r.cache_removed { "removed" } else { "kept" }
        );
    });
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let res = match cli.cmd {
        Cmd::Ls { store } => ls(store, json),
        Cmd::Inspect { file } => inspect(file, json),
        Cmd::Verify { store, version } => verify(store, version, json),
        Cmd::Restore {
            store,
            version,
            out,
        } => restore(store, version, out, json),
        Cmd::Bench(args) => run_bench(args, json),
        Cmd::Halt { dir, clear, .. } => halt(&dir, clear, json),
        Cmd::Report { store, svg, html } => report(store, svg, html, json),
        Cmd::Debug {
            dir,
            name,
            version,
            batch,
            program,
        } => debug(&dir, name, version, batch, &program),
        Cmd::Prolog { config } => prolog(config, json),
        Cmd::Epilog { config } => epilog(config, json),
    };
    finish(json, res)
}
