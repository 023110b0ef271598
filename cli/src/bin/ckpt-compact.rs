//! `ckpt-compact`: keep the newest versions of a chain, flatten what they reference, remove
//! the rest — crash-safe at every instant, and safe to run while the application writes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use ckpt_cli::{emit, finish, progress_bar, StoreArgs};
use ckpt_engine::compact::{self, CompactOptions};
use ckpt_engine::job::JobStore;
use ckpt_engine::Store;
use clap::Parser;
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "ckpt-compact",
    version,
    about = "Flatten chains and retire old checkpoint files, crash-safely"
)]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Keep the newest K versions of the newest version's lineage (of a job store: the newest
    /// K committed versions). Default: the whole lineage; abandoned branches, unreferenced
    /// files and temporaries are still removed.
    #[arg(long)]
    keep: Option<usize>,
    /// Rewrite as full any kept version deeper than D.
    #[arg(long)]
    max_depth: Option<u32>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// What a compaction did (or would do), as printed.
#[derive(Serialize)]
struct Summary {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<serde_json::Value>,
    dry_run: bool,
    kept: Vec<u64>,
    rewritten: Vec<u64>,
    removed: Vec<u64>,
    spared: Vec<u64>,
    temporaries: Vec<String>,
    bytes_written: u64,
    /// Of `bytes_written`, stored page bytes copied as they are; nothing is ever
    /// recompressed.
    bytes_copied: u64,
    /// Of `bytes_copied`, bytes whose disk blocks are shared with the file they came from
    /// (XFS, btrfs): not written.
    bytes_shared: u64,
    bytes_freed: u64,
    secs: f64,
}

fn paths(p: &[PathBuf]) -> Vec<String> {
    p.iter().map(|t| t.display().to_string()).collect()
}

fn run(a: &Args) -> ckpt_engine::Result<Summary> {
    if let Some((job, meta)) = JobStore::detect(&a.store.dir)? {
        // A job store: keep the newest K committed versions on every rank.
        let r = job.compact(a.keep.unwrap_or(usize::MAX), a.dry_run)?;
        let ranks = &r.ranks;
        return Ok(Summary {
            name: job.name().to_string(),
            job: Some(serde_json::json!({ "world_size": meta.world_size })),
            dry_run: a.dry_run,
            kept: r.kept.clone(),
            rewritten: ranks
                .iter()
                .flat_map(|x| x.rewritten.iter().copied())
                .collect::<BTreeSet<u64>>()
                .into_iter()
                .collect(),
            removed: r.commits_removed.clone(),
            spared: Vec::new(),
            temporaries: ranks
                .iter()
                .flat_map(|x| paths(&x.temps_removed))
                .chain(paths(&r.commit_temps_removed))
                .collect(),
            bytes_written: ranks.iter().map(|x| x.bytes_written).sum(),
            bytes_copied: ranks.iter().map(|x| x.bytes_copied).sum(),
            bytes_shared: ranks.iter().map(|x| x.bytes_shared).sum(),
            bytes_freed: ranks.iter().map(|x| x.bytes_freed).sum(),
            secs: ranks.iter().map(|x| x.secs).sum(),
        });
    }
    let store = Store::discover(&a.store.dir, a.store.name.as_deref())?;
    let opts = CompactOptions {
        keep: a.keep.unwrap_or(usize::MAX),
        max_depth: a.max_depth,
        dry_run: a.dry_run,
        ..CompactOptions::default()
    };
    let pb = progress_bar(0, "compact", a.json || a.dry_run);
    let r = compact::compact(&store, &opts, &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    Ok(Summary {
        name: store.name().to_string(),
        job: None,
        dry_run: a.dry_run,
        kept: r.plan.kept.clone(),
        rewritten: r.plan.rewrite.clone(),
        removed: r
            .plan
            .remove
            .iter()
            .filter(|v| !r.spared.contains(v))
            .copied()
            .collect(),
        spared: r.spared.clone(),
        temporaries: paths(if a.dry_run {
            &r.plan.temps
        } else {
            &r.temps_removed
        }),
        bytes_written: r.bytes_written,
        bytes_copied: r.bytes_copied,
        bytes_shared: r.bytes_shared,
        bytes_freed: r.bytes_freed,
        secs: r.secs,
    })
}

fn main() -> ExitCode {
    let a = Args::parse();
    let outcome = run(&a).map(|s| {
        emit(a.json, &s, || {
            let verb = if a.dry_run { "would" } else { "did" };
            ckpt_cli::out!("ckpt-compact {} ({verb}):", a.store.dir.display());
            ckpt_cli::out!("  keep     {:?}", s.kept);
            ckpt_cli::out!("  rewrite  {:?}", s.rewritten);
            ckpt_cli::out!("  remove   {:?}", s.removed);
            if !s.spared.is_empty() {
                ckpt_cli::out!(
                    "  spared   {:?} (still referenced by a version committed meanwhile)",
                    s.spared
                );
            }
            ckpt_cli::out!("  temporaries {:?}", s.temporaries);
            if !a.dry_run {
                ckpt_cli::out!(
                    "  wrote {} bytes ({} of them pages copied as they were, {} of those shared \
                     with the files they came from), freed {} bytes in {:.3}s",
                    s.bytes_written,
                    s.bytes_copied,
                    s.bytes_shared,
                    s.bytes_freed,
                    s.secs
                );
            }
        });
        true
    });
    finish(a.json, outcome.map_err(anyhow::Error::from))
}
